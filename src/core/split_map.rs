//! A hash map split into [`SHARDS`] hash maps by a hash of the key.
//!
//! A hash map grows by doubling: the insert that crosses its load factor allocates a table
//! twice the size and moves every entry into it, while whoever holds the map waits. For the
//! maps that grow with every session — the state's stream revisions (under the state lock)
//! and the store writer's stream heads (in the writer, which every append waits for) — that
//! one insert took 12 ms at 115k entries and 29 ms at 229k on the gateway box, and showed as
//! the identify p99 (BENCHMARKS.md §2). Split in [`SHARDS`], each insert moves at most one
//! shard's entries, 1/64 of them, and the shards cross their thresholds at different inserts.
//! Lookups hash the key twice (the shard, then the entry): a few nanoseconds for a stream
//! name, where a `BTreeMap` with `String` keys cost 15–25 % of the identify throughput.
//!
//! The shard of a key is fixed (a seeded hash, not the per-map random state), so two maps with
//! the same entries hold them in the same shards; equality and iteration do not depend on it.
//!
//! The shards are shared on clone and copied on their next write (`Arc::make_mut`): a clone
//! costs [`SHARDS`] reference counts, whatever the map holds, and the first write to each
//! shard afterwards copies that shard only. The store writer hands such a clone of its stream
//! heads to a thread that saves them, and goes on appending without waiting for the encoding
//! and the write (100 ms at 250k streams on the writer, which every append waited for).

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

/// Number of shards (a power of two).
pub const SHARDS: usize = 64;

type Shard<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

#[derive(Clone, Debug)]
pub struct SplitMap<K, V> {
    shards: Box<[Arc<Shard<K, V>>]>,
    len: usize,
}

/// Picks the shard: the top bits of a fixed-seed foldhash (the shard maps use their low bits
/// under their own random seeds, so the two are independent).
fn shard_of<Q: Hash + ?Sized>(key: &Q) -> usize {
    let h = foldhash::fast::FixedState::with_seed(0x7061_6c6d_6761_7465).hash_one(key);
    (h >> (64 - SHARDS.trailing_zeros())) as usize
}

impl<K, V> Default for SplitMap<K, V> {
    fn default() -> Self {
        SplitMap {
            shards: (0..SHARDS).map(|_| Arc::new(Shard::default())).collect(),
            len: 0,
        }
    }
}

impl<K: Hash + Eq, V> SplitMap<K, V> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shards[shard_of(key)].get(key)
    }

    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get(key).is_some()
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.shards.iter().flat_map(|s| s.iter())
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }

    /// Whether a clone still shares a shard with this map (a write to that shard would copy
    /// it).
    pub fn is_shared(&self) -> bool {
        self.shards.iter().any(|s| Arc::strong_count(s) > 1)
    }

    /// Entries the shards have room for without growing.
    pub fn capacity(&self) -> usize {
        self.shards.iter().map(|s| s.capacity()).sum()
    }
}

/// Writes: a shard shared with a clone is copied first (module docs).
impl<K: Hash + Eq + Clone, V: Clone> SplitMap<K, V> {
    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        Arc::make_mut(&mut self.shards[shard_of(key)]).get_mut(key)
    }

    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        let old = Arc::make_mut(&mut self.shards[shard_of(&key)]).insert(key, value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let old = Arc::make_mut(&mut self.shards[shard_of(key)]).remove(key);
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    /// Keeps the entries `keep` says yes to.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &mut V) -> bool) {
        for s in self.shards.iter_mut() {
            Arc::make_mut(s).retain(&mut keep);
        }
        self.len = self.shards.iter().map(|s| s.len()).sum();
    }

    /// Gives back the room of shards that hold less than half of what they could, one shard
    /// at a time (each moves only its own entries).
    pub fn shrink_to_fit(&mut self) {
        for s in self.shards.iter_mut() {
            if s.capacity() > 2 * s.len() + 16 {
                Arc::make_mut(s).shrink_to_fit();
            }
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Extend<(K, V)> for SplitMap<K, V> {
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, items: I) {
        for (k, v) in items {
            self.insert(k, v);
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> FromIterator<(K, V)> for SplitMap<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(items: I) -> Self {
        let mut m = SplitMap::default();
        m.extend(items);
        m
    }
}

/// Same entries (whatever the shards' capacities).
impl<K: Hash + Eq, V: PartialEq> PartialEq for SplitMap<K, V> {
    fn eq(&self, o: &Self) -> bool {
        self.len == o.len && self.iter().all(|(k, v)| o.get(k) == Some(v))
    }
}

/// Reads a map (as `HashMap`'s `Deserialize` does) straight into the shards.
impl<'de, K, V> serde::Deserialize<'de> for SplitMap<K, V>
where
    K: serde::Deserialize<'de> + Hash + Eq + Clone,
    V: serde::Deserialize<'de> + Clone,
{
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entries<K, V>(std::marker::PhantomData<(K, V)>);
        impl<'de, K, V> serde::de::Visitor<'de> for Entries<K, V>
        where
            K: serde::Deserialize<'de> + Hash + Eq + Clone,
            V: serde::Deserialize<'de> + Clone,
        {
            type Value = SplitMap<K, V>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut items: A,
            ) -> Result<Self::Value, A::Error> {
                let mut m = SplitMap::default();
                while let Some((k, v)) = items.next_entry()? {
                    m.insert(k, v);
                }
                Ok(m)
            }
        }
        d.deserialize_map(Entries(std::marker::PhantomData))
    }
}

/// Stream revisions (`SplitMap<String, u64>`) as bytes, one layout for the state snapshot's
/// revisions section and the store's heads checkpoint: the number of streams (`u64`, LE), then
/// for each its name's length (`u32`, LE), the name's bytes and its revision (`u64`, LE).
pub mod revisions {
    use super::SplitMap;

    /// Writes `count` and then `entries`, in the order given (a snapshot sorts them first, to
    /// be canonical), as they come: nothing is gathered in memory. Fails if `out` does, or if
    /// `entries` are not `count` many (nothing that reads the bytes could tell).
    pub fn write<'a>(
        out: &mut impl std::io::Write,
        count: usize,
        entries: impl IntoIterator<Item = (&'a str, u64)>,
    ) -> std::io::Result<()> {
        out.write_all(&(count as u64).to_le_bytes())?;
        let mut written = 0;
        for (stream, revision) in entries {
            out.write_all(&(stream.len() as u32).to_le_bytes())?;
            out.write_all(stream.as_bytes())?;
            out.write_all(&revision.to_le_bytes())?;
            written += 1;
        }
        if written != count {
            return Err(std::io::Error::other(format!(
                "stream revisions: {written} written, {count} announced"
            )));
        }
        Ok(())
    }

    fn take<'b>(b: &mut &'b [u8], n: usize) -> Result<&'b [u8], String> {
        let (head, rest) = b
            .split_at_checked(n)
            .ok_or_else(|| "stream revisions: truncated".to_string())?;
        *b = rest;
        Ok(head)
    }

    /// Reads what [`write`] wrote at the start of `bytes`; returns the map and the bytes after
    /// it. `in_order`: the streams must also be in strictly increasing order. A short or
    /// malformed input, a stream twice or (with `in_order`) out of order is an error saying
    /// which.
    pub fn read<K: for<'s> From<&'s str> + std::hash::Hash + Eq + Clone>(
        bytes: &[u8],
        in_order: bool,
    ) -> Result<(SplitMap<K, u64>, &[u8]), String> {
        let mut b = bytes;
        let count = u64::from_le_bytes(take(&mut b, 8)?.try_into().expect("8 bytes"));
        // Each entry is at least 12 bytes: a count the input cannot hold reserves nothing.
        if count > (b.len() / 12) as u64 {
            return Err("stream revisions: truncated".into());
        }
        let mut map = SplitMap::new();
        let mut last: Option<&str> = None;
        for _ in 0..count {
            let len = u32::from_le_bytes(take(&mut b, 4)?.try_into().expect("4 bytes")) as usize;
            let stream = std::str::from_utf8(take(&mut b, len)?)
                .map_err(|_| "stream revisions: a stream name is not UTF-8".to_string())?;
            let revision = u64::from_le_bytes(take(&mut b, 8)?.try_into().expect("8 bytes"));
            if in_order && last.is_some_and(|l| l >= stream) {
                return Err("stream revisions: a stream out of order".into());
            }
            last = Some(stream);
            if map.insert(K::from(stream), revision).is_some() {
                return Err("stream revisions: a stream appears twice".into());
            }
        }
        Ok((map, b))
    }
}

#[cfg(test)]
mod tests {
    use super::{SHARDS, SplitMap};
    use std::sync::Arc;

    /// A clone shares every shard; a write copies only the shard it touches, and neither map
    /// sees the other's writes.
    #[test]
    fn a_clone_shares_shards_until_one_is_written() {
        let mut m: SplitMap<String, u64> = (0..1000).map(|i| (format!("s-{i}"), i)).collect();
        let frozen = m.clone();
        let shared = |a: &SplitMap<String, u64>, b: &SplitMap<String, u64>| {
            a.shards
                .iter()
                .zip(b.shards.iter())
                .filter(|(x, y)| Arc::ptr_eq(x, y))
                .count()
        };
        assert_eq!(shared(&m, &frozen), SHARDS);
        assert!(m.is_shared() && frozen.is_shared());
        m.insert("s-1".into(), 99);
        *m.get_mut("s-2").unwrap() = 98;
        m.remove("s-3");
        m.insert("new".into(), 1);
        assert!(shared(&m, &frozen) >= SHARDS - 4, "{}", shared(&m, &frozen));
        assert!(shared(&m, &frozen) < SHARDS);
        assert_eq!(
            (
                m.get("s-1"),
                m.get("s-2"),
                m.get("s-3"),
                m.get("new"),
                m.len()
            ),
            (Some(&99), Some(&98), None, Some(&1), 1000)
        );
        assert_eq!(
            (
                frozen.get("s-1"),
                frozen.get("s-2"),
                frozen.get("s-3"),
                frozen.get("new"),
                frozen.len()
            ),
            (Some(&1), Some(&2), Some(&3), None, 1000)
        );
        m.retain(|k, _| k != "s-4");
        assert_eq!(
            (m.get("s-4"), frozen.get("s-4"), m.len()),
            (None, Some(&4), 999)
        );
    }

    #[test]
    fn revisions_bytes_round_trip_and_refuse_what_write_cannot_produce() {
        use super::revisions::{read, write};
        let mut out = b"ahead".to_vec();
        write(
            &mut out,
            3,
            [("partner-1", 3), ("session-2", 0), ("site", 17)],
        )
        .unwrap();
        assert!(
            write(&mut Vec::new(), 2, [("site", 1)]).is_err(),
            "a wrong count"
        );
        out.extend_from_slice(b"after");
        let (map, rest) = read::<String>(&out[5..], true).unwrap();
        assert_eq!(rest, b"after");
        assert_eq!(
            (map.len(), map.get("partner-1"), map.get("site")),
            (3, Some(&3), Some(&17))
        );
        let body = &out[5..out.len() - 5];
        for cut in 0..body.len() {
            assert!(read::<String>(&body[..cut], false).is_err(), "cut at {cut}");
        }
        let mut unsorted = Vec::new();
        write(&mut unsorted, 2, [("site", 1), ("partner-1", 2)]).unwrap();
        assert!(read::<String>(&unsorted, false).is_ok());
        assert!(
            read::<String>(&unsorted, true)
                .unwrap_err()
                .contains("out of order")
        );
        let mut twice = Vec::new();
        write(&mut twice, 2, [("site", 1), ("site", 2)]).unwrap();
        assert!(read::<String>(&twice, false).unwrap_err().contains("twice"));
        assert!(read::<String>(&twice, true).is_err());
        let mut absurd = u64::MAX.to_le_bytes().to_vec();
        absurd.extend_from_slice(&[0; 24]);
        assert!(
            read::<String>(&absurd, false)
                .unwrap_err()
                .contains("truncated")
        );
    }

    use super::*;

    /// A long mixed run of inserts, updates and removals gives the same answers as one
    /// `HashMap`, and the entries spread over every shard.
    #[test]
    fn behaves_like_one_hash_map() {
        let mut split: SplitMap<String, u64> = SplitMap::new();
        let mut one: HashMap<String, u64> = HashMap::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for i in 0..20_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let key = format!("session-{}", x % 5000);
            match x % 4 {
                0 | 1 => assert_eq!(split.insert(key.clone(), i), one.insert(key, i)),
                2 => assert_eq!(split.remove(&key), one.remove(&key)),
                _ => {
                    if let Some(v) = split.get_mut(&key) {
                        *v += 1;
                    }
                    if let Some(v) = one.get_mut(&key) {
                        *v += 1;
                    }
                }
            }
            assert_eq!(split.len(), one.len());
        }
        for (k, v) in &one {
            assert_eq!(split.get(k.as_str()), Some(v));
            assert!(split.contains_key(k.as_str()));
        }
        assert_eq!(split.iter().count(), one.len());
        assert!(
            split.shards.iter().all(|s| !s.is_empty()),
            "every shard used"
        );

        split.retain(|k, _| k.ends_with('7'));
        one.retain(|k, _| k.ends_with('7'));
        assert_eq!(split.len(), one.len());
        let rebuilt: SplitMap<String, u64> = one.clone().into_iter().collect();
        assert!(rebuilt == split);
        split.insert("another".into(), 1);
        assert!(rebuilt != split);
        split.shrink_to_fit();
        assert!(split.capacity() >= split.len());
    }
}
