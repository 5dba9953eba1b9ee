//! An ordered map in chunks of at most [`CHUNK`] entries, each shared on clone and copied on
//! its next write (`Arc::make_mut`), as [`super::split_map::SplitMap`] does for hash maps.
//!
//! The snapshot thread takes a clone of the live state (`app::snapshot`): the clone costs one
//! reference count per chunk, whatever the map holds, and afterwards the first write to a
//! chunk copies that chunk only. Sessions are keyed by time-ordered ids and the time-ordered
//! sets (expiry, retention) by instants, so the writes after a snapshot land in the last
//! chunk (new keys) and the first (the oldest let go of): a snapshot costs the request path
//! a few chunk copies, not a copy of the state.
//!
//! The chunks are kept in a `BTreeMap` by their lower bound: the chunk under bound `b` holds
//! the keys from `b` up to the next chunk's bound. Iteration is in key order. A chunk that
//! grows past [`CHUNK`] is split (at the new key when it was appended at the end of the last
//! chunk, so a map filled in order keeps full chunks; in halves otherwise); an emptied chunk is
//! removed, and a small one merged into its successor when they fit in one.

use std::collections::BTreeMap;
use std::sync::Arc;

/// Most entries in a chunk (a copy after a snapshot moves at most this many).
pub const CHUNK: usize = 1024;

type Chunk<K, V> = BTreeMap<K, V>;

#[derive(Clone)]
pub struct ChunkMap<K, V> {
    chunks: BTreeMap<K, Arc<Chunk<K, V>>>,
    len: usize,
}

impl<K, V> Default for ChunkMap<K, V> {
    fn default() -> Self {
        ChunkMap {
            chunks: BTreeMap::new(),
            len: 0,
        }
    }
}

impl<K: Ord + Clone, V: Clone> ChunkMap<K, V> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of chunks (what a clone costs).
    pub fn chunks(&self) -> usize {
        self.chunks.len()
    }

    /// The chunk `key` belongs in, if any: the last one with a bound at or below it. Keys are
    /// mostly new (time-ordered ids and instants), so the last chunk is looked at first.
    fn chunk_of(&self, key: &K) -> Option<&Arc<Chunk<K, V>>> {
        match self.chunks.last_key_value() {
            Some((b, c)) if b <= key => Some(c),
            _ => self.chunks.range(..=key).next_back().map(|(_, c)| c),
        }
    }

    /// As [`ChunkMap::chunk_of`], for writing, with the chunk's bound.
    fn chunk_of_mut(&mut self, key: &K) -> Option<(&K, &mut Arc<Chunk<K, V>>)> {
        if self.chunks.last_key_value().is_some_and(|(b, _)| b <= key) {
            return self.chunks.iter_mut().next_back();
        }
        self.chunks.range_mut(..=key).next_back()
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        self.chunk_of(key)?.get(key)
    }

    pub fn contains_key(&self, key: &K) -> bool {
        self.get(key).is_some()
    }

    /// The entry, its chunk copied first if a clone shares it (only when the key is there).
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let (_, chunk) = self.chunk_of_mut(key)?;
        if !chunk.contains_key(key) {
            return None;
        }
        Arc::make_mut(chunk).get_mut(key)
    }

    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self.chunks.first_key_value() {
            None => {
                self.chunks
                    .insert(key.clone(), Arc::new(Chunk::from([(key, value)])));
                self.len = 1;
                return None;
            }
            // A key below every bound lowers the first chunk's bound.
            Some((b, _)) if key < *b => {
                let (_, chunk) = self.chunks.pop_first().expect("there is a first");
                self.chunks.insert(key.clone(), chunk);
            }
            Some(_) => {}
        }
        let last = self.chunks.last_key_value().is_some_and(|(b, _)| *b <= key);
        let (_, chunk) = self
            .chunk_of_mut(&key)
            .expect("a bound at or below the key");
        let chunk = Arc::make_mut(chunk);
        let appended = last && chunk.last_key_value().is_none_or(|(k, _)| *k < key);
        let old = chunk.insert(key, value);
        // A full chunk splits: off the new last key when it was appended to the last chunk (a
        // map filled in order keeps full chunks), in halves otherwise.
        let upper = (chunk.len() > CHUNK).then(|| {
            if appended {
                let (k, v) = chunk.pop_last().expect("a full chunk has a last");
                (k.clone(), Chunk::from([(k, v)]))
            } else {
                let at = chunk
                    .keys()
                    .nth(chunk.len() / 2)
                    .cloned()
                    .expect("a full chunk has a middle");
                let upper = chunk.split_off(&at);
                (at, upper)
            }
        });
        if old.is_none() {
            self.len += 1;
        }
        if let Some((at, upper)) = upper {
            self.chunks.insert(at, Arc::new(upper));
        }
        old
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        let (bound, chunk) = self.chunk_of_mut(key)?;
        if !chunk.contains_key(key) {
            return None;
        }
        let bound = bound.clone();
        let old = Arc::make_mut(chunk).remove(key);
        self.len -= 1;
        self.tidy(bound);
        old
    }

    /// After a removal from the chunk under `bound`: drops it when empty, merges it into its
    /// successor when the two fit in one chunk and it is down to a quarter.
    fn tidy(&mut self, bound: K) {
        let len = self.chunks[&bound].len();
        if len == 0 {
            self.chunks.remove(&bound);
            return;
        }
        if len > CHUNK / 4 {
            return;
        }
        let next = match self.chunks.range(&bound..).nth(1) {
            Some((b, c)) if c.len() + len <= CHUNK => b.clone(),
            _ => return,
        };
        let upper = self.chunks.remove(&next).expect("just found");
        let chunk = Arc::make_mut(self.chunks.get_mut(&bound).expect("still there"));
        chunk.extend(Arc::unwrap_or_clone(upper));
    }

    pub fn first_key_value(&self) -> Option<(&K, &V)> {
        self.chunks.first_key_value()?.1.first_key_value()
    }

    pub fn pop_first(&mut self) -> Option<(K, V)> {
        let mut first = self.chunks.first_entry()?;
        let popped = Arc::make_mut(first.get_mut()).pop_first();
        if first.get().is_empty() {
            first.remove();
        }
        if popped.is_some() {
            self.len -= 1;
        }
        popped
    }

    /// Every entry, in key order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&K, &V)> {
        self.chunks.values().flat_map(|c| c.iter())
    }

    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &K> {
        self.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl DoubleEndedIterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }

    /// Whether a clone still shares a chunk with this map.
    pub fn is_shared(&self) -> bool {
        self.chunks.values().any(|c| Arc::strong_count(c) > 1)
    }
}

impl<K: Ord + Clone, V: Clone> Extend<(K, V)> for ChunkMap<K, V> {
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, items: I) {
        for (k, v) in items {
            self.insert(k, v);
        }
    }
}

impl<K: Ord + Clone, V: Clone> FromIterator<(K, V)> for ChunkMap<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(items: I) -> Self {
        let mut m = ChunkMap::default();
        m.extend(items);
        m
    }
}

/// Same entries (whatever the chunks).
impl<K: Ord + Clone, V: Clone + PartialEq> PartialEq for ChunkMap<K, V> {
    fn eq(&self, o: &Self) -> bool {
        self.len == o.len && self.iter().eq(o.iter())
    }
}

impl<K: Ord + Clone + std::fmt::Debug, V: Clone + std::fmt::Debug> std::fmt::Debug
    for ChunkMap<K, V>
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// An ordered set on a [`ChunkMap`]: the same sharing on clone.
#[derive(Clone)]
pub struct ChunkSet<T>(ChunkMap<T, ()>);

impl<T> Default for ChunkSet<T> {
    fn default() -> Self {
        ChunkSet(ChunkMap::default())
    }
}

impl<T: Ord + Clone> ChunkSet<T> {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// True when it was not there.
    pub fn insert(&mut self, item: T) -> bool {
        self.0.insert(item, ()).is_none()
    }
    /// True when it was there.
    pub fn remove(&mut self, item: &T) -> bool {
        self.0.remove(item).is_some()
    }
    pub fn first(&self) -> Option<&T> {
        self.0.first_key_value().map(|(k, _)| k)
    }
    pub fn pop_first(&mut self) -> Option<T> {
        self.0.pop_first().map(|(k, _)| k)
    }
    /// In order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &T> {
        self.0.keys()
    }
}

impl<T: Ord + Clone> PartialEq for ChunkSet<T> {
    fn eq(&self, o: &Self) -> bool {
        self.0 == o.0
    }
}

impl<T: Ord + Clone> Extend<T> for ChunkSet<T> {
    fn extend<I: IntoIterator<Item = T>>(&mut self, items: I) {
        self.0.extend(items.into_iter().map(|t| (t, ())));
    }
}

impl<T: Ord + Clone> FromIterator<T> for ChunkSet<T> {
    fn from_iter<I: IntoIterator<Item = T>>(items: I) -> Self {
        let mut s = ChunkSet::default();
        s.extend(items);
        s
    }
}

impl<T: Ord + Clone + std::fmt::Debug> std::fmt::Debug for ChunkSet<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    /// A small deterministic generator (no IO, no clock under `core`).
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 33
        }
    }

    fn check(m: &ChunkMap<u64, u64>, model: &BTreeMap<u64, u64>) {
        assert_eq!(m.len(), model.len());
        assert!(
            m.iter()
                .map(|(k, v)| (*k, *v))
                .eq(model.iter().map(|(k, v)| (*k, *v)))
        );
        assert_eq!(m.first_key_value(), model.first_key_value());
        for (b, c) in &m.chunks {
            assert!(!c.is_empty() && c.len() <= CHUNK, "chunk sizes");
            assert!(c.keys().all(|k| k >= b), "keys at or above their bound");
        }
    }

    #[test]
    fn it_behaves_as_a_btree_map_under_random_inserts_removals_and_pops() {
        for keys in [100u64, 5_000, 1 << 40] {
            let mut rng = Lcg(keys);
            let mut m = ChunkMap::new();
            let mut model = BTreeMap::new();
            for step in 0..40_000u64 {
                let k = rng.next() % keys;
                match rng.next() % 10 {
                    0..=5 => assert_eq!(m.insert(k, step), model.insert(k, step)),
                    6..=7 => assert_eq!(m.remove(&k), model.remove(&k)),
                    8 => {
                        if let Some(v) = m.get_mut(&k) {
                            *v += 1;
                        }
                        if let Some(v) = model.get_mut(&k) {
                            *v += 1;
                        }
                    }
                    _ => assert_eq!(m.pop_first(), model.pop_first()),
                }
                assert_eq!(m.get(&k), model.get(&k));
                if step % 997 == 0 {
                    check(&m, &model);
                }
            }
            check(&m, &model);
        }
    }

    #[test]
    fn keys_appended_in_order_fill_whole_chunks_and_popping_them_frees_the_chunks() {
        let mut m: ChunkMap<u64, u64> = (0..10 * CHUNK as u64).map(|k| (k, k)).collect();
        assert_eq!(m.chunks(), 10, "full chunks when filled in order");
        for k in 0..5 * CHUNK as u64 {
            assert_eq!(m.pop_first(), Some((k, k)));
        }
        assert_eq!(m.chunks(), 5);
        assert_eq!(
            m.first_key_value(),
            Some((&(5 * CHUNK as u64), &(5 * CHUNK as u64)))
        );
    }

    #[test]
    fn a_clone_shares_its_chunks_until_a_write_copies_one() {
        let mut m: ChunkMap<u64, String> =
            (0..4 * CHUNK as u64).map(|k| (k, k.to_string())).collect();
        let snapshot = m.clone();
        assert!(m.is_shared());
        // One write copies one chunk: the clone keeps the old value.
        m.insert(5, "five".into());
        let shared = m
            .chunks
            .values()
            .filter(|c| Arc::strong_count(c) > 1)
            .count();
        assert_eq!(shared, 3, "only the written chunk was copied");
        assert_eq!(snapshot.get(&5).map(String::as_str), Some("5"));
        assert_eq!(m.get(&5).map(String::as_str), Some("five"));
        // A removal of a missing key copies nothing.
        assert_eq!(m.remove(&(10 * CHUNK as u64)), None);
        assert_eq!(m.get_mut(&(10 * CHUNK as u64)), None);
        let shared = m
            .chunks
            .values()
            .filter(|c| Arc::strong_count(c) > 1)
            .count();
        assert_eq!(shared, 3);
        drop(snapshot);
        assert!(!m.is_shared());
    }

    #[test]
    fn a_key_below_every_bound_lowers_the_first_bound() {
        let mut m: ChunkMap<i32, ()> = (10..20).map(|k| (k, ())).collect();
        m.insert(3, ());
        assert_eq!(m.get(&3), Some(&()));
        assert_eq!(m.keys().next(), Some(&3));
        assert_eq!(m.chunks.keys().next(), Some(&3));
    }

    #[test]
    fn the_set_is_ordered_and_equal_to_its_model() {
        let mut rng = Lcg(7);
        let mut s = ChunkSet::new();
        let mut model = BTreeSet::new();
        for _ in 0..20_000 {
            let k = rng.next() % 3000;
            if rng.next().is_multiple_of(3) {
                assert_eq!(s.remove(&k), model.remove(&k));
            } else {
                assert_eq!(s.insert(k), model.insert(k));
            }
        }
        assert!(s.iter().eq(model.iter()));
        assert_eq!(s.first(), model.first());
        assert_eq!(s.len(), model.len());
        let t: ChunkSet<u64> = model.iter().copied().collect();
        assert_eq!(s, t);
        while let Some(k) = s.pop_first() {
            assert_eq!(Some(k), model.pop_first());
        }
        assert!(s.is_empty() && model.is_empty());
    }
}
