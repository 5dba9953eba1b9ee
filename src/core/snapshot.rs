//! State snapshots: the read model as bytes, so start-up folds only the log's tail.
//!
//! A snapshot taken at position `p` is [`encode`] of the state after folding events `1..=p`;
//! [`decode`] gives that state back, and folding events `p+1..` into it gives exactly the state
//! a fold of the whole log gives (`tests/it/snapshots.rs` checks it on a mixed log). The
//! shell decides where snapshots live and when they are trusted (`app::snapshot`); this module
//! is the pure part: the format and the rebuild.
//!
//! Invariants:
//! - `decode(encode(s)) == s` for every state `evolve` builds ([`PartialEq`] for [`State`]
//!   compares every field; the compiled policy by its hash).
//! - `encode` is canonical: maps are written sorted by key, so equal states give equal bytes.
//! - Only what cannot be recomputed is stored. The configuration's [`Rules`] are the caller's;
//!   the site policy is compiled again from its stored document (as `PolicyActivated` does);
//!   indexes that follow from stored records (`session_by_token`, `deadlines`, `due`) are
//!   rebuilt. `partner_by_key` is stored: it is tiny, and a rebuild could not tell which of two
//!   partners with one key hash came last.
//! - Known limit: a number inside free-form metadata (`serde_json::Value`) is written and read
//!   once more than in a full fold; serde_json's default float parsing can differ from the
//!   original in the last bit for some 17-digit values (none of palmgate's own rules read
//!   metadata numbers).
//! - [`SCHEMA`] names both the stored shape and what `evolve` means. Bump it when a stored
//!   field changes or when `evolve` folds any event differently: a snapshot of another schema is
//!   never loaded (start-up folds the whole log instead).
//!
//! The encoding: first the sessions and the stream revisions — the parts that grow with every
//! session — in the binary form of [`binary`], then the rest as JSON (`serde_json`, already
//! the log's encoding), where records whose map key is one of their own fields (users,
//! deliveries, …) are written as sorted lists of records and maps keyed by tuples as lists of
//! tuples (JSON object keys are strings). [`encode_to`] streams: the encoding is never held in
//! memory whole.

use super::chunk_map::{ChunkMap, ChunkSet};
use super::ids::*;
use super::policy::{Direction, DoorId, Policy};
use super::session::{Session, SessionState};
use super::split_map::SplitMap;
use super::state::{
    Delivery, DeliveryStatus, DeviceState, DoorState, IdemEntry, Partner, Reader, Rules, Seen,
    SeenCaptures, State, User, Webhook,
};
use super::state::{Map, Set};
use super::upstream::UpstreamBinding;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::hash::Hash;
use std::sync::Arc;

/// Version of the snapshot's shape and of `evolve`'s meaning (see the module doc).
/// 2: a door's last decision says who, where and by which level.
/// 3: upstream mode's open remote sessions (`upstream`).
/// 4: what has ended is forgotten after its retention (sessions, deliveries, idempotency keys,
///    seen captures in two generations); the retentions folded with are stored.
/// 5: upstream sessions are forgotten a session retention after they ended (`upstream_ended`
///    keeps when) or, never ended, after they expired.
/// 6: a session's instants are `[seconds, nanoseconds]`, not RFC 3339 text.
/// 7: a failed webhook delivery is kept until it is redelivered, not for a retention (so the
///    first start folds the log again and brings back the failed ones an older build forgot).
/// 8: a session keeps when its reader was armed or last active (`reader_armed_at`), for the
///    reader's hold (`session::READER_HOLD`); set by `SessionReaderArmed`, a trigger session's
///    `SessionCreated` and a `CaptureRetryRequested` at that reader.
/// 9: the sha256 of the last policy activated from the site file (`policy_file_sha256`), so
///    start-up knows whether the file changed since.
/// 10: a webhook keeps every rotated-out secret still within its own 24 h (`older`, besides
///    `previous`), not only the last one.
/// 11: the duplicate memory keeps trigger ids apart from capture ids by type (`Seen`), not by
///    a `trigger:` prefix a capture id may also carry; a door decision tagged `trigger:X`
///    without a judged palm marks trigger `X`.
/// 12: a grant's zone movement is held at its door (`DoorState::passage`) until the board
///    confirms the pulse; a pulse the board refused (`RelayFailed` `refused`) undoes it.
/// 13: every unreported grant at a door is held (`DoorState::passages`), and any report of
///    its pulse resolves it (12 held one per door; never released).
/// 14: a door keeps where its relay was last switched ON (`DoorState::relay`, for the coils a
///    later policy orphans); a webhook configured again keeps the replaced secret signing
///    (`previous`) and the last failure's reason; `ZonePresenceForgiven` ends zone presence.
pub const SCHEMA: u32 = 14;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot does not decode: {0}")]
    Decode(String),
    #[error("snapshot is inconsistent: {0}")]
    Inconsistent(String),
}

/// The stored form, borrowing from the state (written).
#[derive(Serialize)]
struct StateRef<'a> {
    position: u64,
    partners: Vec<&'a Partner>,
    partner_by_key: Vec<(&'a SecretHash, &'a PartnerId)>,
    users: Vec<&'a User>,
    erased: Vec<(&'a PartnerId, &'a ExternalId, u64)>,
    idempotency: Vec<(&'a PartnerId, &'a str, &'a IdemEntry)>,
    readers: Vec<&'a Reader>,
    seen: SeenRef<'a>,
    retention_ms: (i64, i64),
    webhooks: Vec<&'a Webhook>,
    deliveries: Vec<&'a Delivery>,
    policy_document: Option<(&'a str, DateTime<Utc>)>,
    policy_file_sha256: Option<&'a str>,
    lockdown: bool,
    emergency: bool,
    zone_last: Vec<(&'a str, &'a PartnerId, &'a ExternalId, Direction)>,
    doors: Vec<(&'a DoorId, &'a DoorState)>,
    devices: Vec<(&'a str, &'a DeviceState)>,
    upstream: Vec<&'a UpstreamBinding>,
    upstream_ended: Vec<&'a (DateTime<Utc>, UpstreamSessionId)>,
}

/// The stored form, owned (read). Same fields, same order as [`StateRef`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StateOwned {
    position: u64,
    partners: Vec<Partner>,
    partner_by_key: Vec<(SecretHash, PartnerId)>,
    users: Vec<User>,
    erased: Vec<(PartnerId, ExternalId, u64)>,
    idempotency: Vec<(PartnerId, String, IdemEntry)>,
    readers: Vec<Reader>,
    seen: SeenOwned,
    retention_ms: (i64, i64),
    webhooks: Vec<Webhook>,
    deliveries: Vec<Delivery>,
    policy_document: Option<(String, DateTime<Utc>)>,
    policy_file_sha256: Option<String>,
    lockdown: bool,
    emergency: bool,
    zone_last: Vec<(String, PartnerId, ExternalId, Direction)>,
    doors: Vec<(DoorId, DoorState)>,
    devices: Vec<(String, DeviceState)>,
    upstream: Vec<UpstreamBinding>,
    upstream_ended: Vec<(DateTime<Utc>, UpstreamSessionId)>,
}

/// The two generations of seen captures, each sorted.
#[derive(Serialize)]
struct SeenRef<'a> {
    current: Vec<&'a (ReaderId, Seen)>,
    previous: Vec<&'a (ReaderId, Seen)>,
    since: Option<DateTime<Utc>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SeenOwned {
    current: Vec<(ReaderId, Seen)>,
    previous: Vec<(ReaderId, Seen)>,
    since: Option<DateTime<Utc>>,
}

fn retention_ms(rules: &Rules) -> (i64, i64) {
    (
        rules.session_retention.num_milliseconds(),
        rules.delivery_retention.num_milliseconds(),
    )
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort_unstable();
    v
}

fn sorted_by_key<T, K: Ord>(mut v: Vec<T>, key: impl Fn(&T) -> K) -> Vec<T> {
    v.sort_unstable_by_key(key);
    v
}

/// The state as snapshot bytes (canonical: equal states give equal bytes).
pub fn encode(state: &State) -> Vec<u8> {
    let mut bytes = Vec::new();
    encode_to(state, &mut bytes).expect("a state has only string map keys and finite numbers");
    bytes
}

/// [`encode`], written to `out` as it is produced (a snapshot file: no copy of the whole
/// encoding is held in memory). Fails only if `out` does.
pub fn encode_to(state: &State, out: impl std::io::Write) -> std::io::Result<()> {
    // Destructured in full: a field added to `State` does not compile here until it is either
    // stored or rebuilt (and `SCHEMA` bumped).
    let State {
        rules,
        partners,
        partner_by_key,
        sessions,
        session_by_token: _,
        users,
        erased,
        idempotency,
        readers,
        seen,
        revisions,
        deadlines: _,
        webhooks,
        deliveries,
        due: _,
        policy: _,
        policy_document,
        policy_file_sha256,
        lockdown,
        emergency,
        zone_last,
        doors,
        devices,
        upstream,
        upstream_by_time,
        position,
        // Equal to `position` in a state worth a snapshot (`State::is_prefix`).
        folded: _,
        // Rebuilt from the records they index.
        ended_sessions: _,
        finished_deliveries: _,
        idempotency_by_time: _,
        forgotten: _,
    } = state;
    let stored = StateRef {
        position: *position,
        partners: sorted_by_key(partners.values().collect(), |p| p.id),
        partner_by_key: sorted(partner_by_key.iter().collect()),
        users: sorted_by_key(users.values().collect(), |u| (u.partner_id, &u.external_id)),
        erased: sorted(erased.iter().map(|((p, e), r)| (p, e, *r)).collect()),
        idempotency: sorted_by_key(
            idempotency
                .iter()
                .map(|((p, k), v)| (p, k.as_str(), v))
                .collect(),
            |(p, k, _)| (**p, *k),
        ),
        readers: sorted_by_key(readers.values().collect(), |r| &r.id),
        seen: SeenRef {
            current: sorted(seen.current.iter().collect()),
            previous: sorted(seen.previous.iter().collect()),
            since: seen.since,
        },
        retention_ms: retention_ms(rules),
        webhooks: sorted_by_key(webhooks.values().collect(), |w| w.partner_id),
        deliveries: sorted_by_key(deliveries.values().collect(), |d| &d.id),
        policy_document: policy_document.as_ref().map(|(d, at)| (&**d, *at)),
        policy_file_sha256: policy_file_sha256.as_deref(),
        lockdown: *lockdown,
        emergency: *emergency,
        zone_last: sorted_by_key(
            zone_last
                .iter()
                .map(|((z, p, e), d)| (z.as_str(), p, e, *d))
                .collect(),
            |(z, p, e, _)| (*z, **p, *e),
        ),
        doors: sorted_by_key(doors.iter().collect(), |(d, _)| *d),
        devices: sorted_by_key(
            devices.iter().map(|(d, s)| (d.as_str(), s)).collect(),
            |(d, _)| *d,
        ),
        upstream: sorted_by_key(upstream.values().collect(), |b| &b.session_id),
        // The open ones' entries follow from their bindings; the set is already sorted.
        upstream_ended: upstream_by_time
            .iter()
            .filter(|(_, id)| !upstream.contains_key(id))
            .collect(),
    };
    let mut out = out;
    binary::write_sessions(&mut out, sessions)?;
    binary::write_revisions(&mut out, revisions)?;
    serde_json::to_writer(out, &stored).map_err(std::io::Error::from)
}

/// Inserts every `(key, value)`; a key twice means the bytes were not written by [`encode`].
fn unique<K: Eq + Hash, V, M: Unique<K, V>>(
    what: &str,
    items: impl ExactSizeIterator<Item = (K, V)>,
) -> Result<M, SnapshotError> {
    let mut map = M::with_capacity(items.len());
    for (k, v) in items {
        if map.put(k, v) {
            return Err(SnapshotError::Inconsistent(format!(
                "a {what} appears twice"
            )));
        }
    }
    Ok(map)
}

/// A map [`unique`] fills: the state's hash maps and split maps.
trait Unique<K, V> {
    fn with_capacity(n: usize) -> Self;
    /// Inserts; true when the key was there already.
    fn put(&mut self, k: K, v: V) -> bool;
}

impl<K: Eq + Hash, V> Unique<K, V> for Map<K, V> {
    fn with_capacity(n: usize) -> Self {
        Map::with_capacity_and_hasher(n, Default::default())
    }
    fn put(&mut self, k: K, v: V) -> bool {
        self.insert(k, v).is_some()
    }
}

impl<K: Eq + Hash + Clone, V: Clone> Unique<K, V> for SplitMap<K, V> {
    fn with_capacity(_: usize) -> Self {
        SplitMap::new()
    }
    fn put(&mut self, k: K, v: V) -> bool {
        self.insert(k, v).is_some()
    }
}

/// Sessions in strictly increasing id order (as [`encode`] writes them) into their map, built
/// in one pass; a session twice or out of order means the bytes were not written by [`encode`].
fn sessions_in_order(
    sessions: Vec<Session>,
) -> Result<ChunkMap<SessionId, Session>, SnapshotError> {
    if sessions.windows(2).any(|w| w[0].id >= w[1].id) {
        return Err(SnapshotError::Inconsistent(
            "a session appears twice, or out of order".into(),
        ));
    }
    Ok(sessions.into_iter().map(|s| (s.id, s)).collect())
}

/// The state stored in `bytes`, with `rules` from the configuration, the site policy compiled
/// again and the derived indexes rebuilt.
pub fn decode(bytes: &[u8], rules: Rules) -> Result<State, SnapshotError> {
    let mut cursor = binary::Cursor::new(bytes);
    let sessions = binary::read_sessions(&mut cursor)?;
    let revisions = binary::read_revisions(&mut cursor)?;
    let o: StateOwned =
        serde_json::from_slice(cursor.rest()).map_err(|e| SnapshotError::Decode(e.to_string()))?;
    let policy = match &o.policy_document {
        None => None,
        // Only a document that compiled was ever stored; one that no longer does cannot be
        // reproduced from the snapshot (a full fold keeps the policy before it).
        Some((document, _)) => Some(Arc::new(Policy::parse(document).map_err(|_| {
            SnapshotError::Inconsistent("the stored site policy no longer compiles".into())
        })?)),
    };
    let mut session_by_token = SplitMap::new();
    let mut deadlines = ChunkSet::new();
    for s in &sessions {
        session_by_token.insert(s.token_hash.clone(), s.id);
        if s.state == SessionState::Pending {
            deadlines.insert((s.expires_at, s.id));
        }
    }
    let due = o
        .deliveries
        .iter()
        .filter_map(|d| Some((d.next_attempt_at?, d.id.clone())))
        .collect();
    if o.retention_ms != retention_ms(&rules) {
        // A fold with other retentions keeps other sessions and deliveries.
        return Err(SnapshotError::Inconsistent(
            "the snapshot was folded with other retention settings".into(),
        ));
    }
    let generation = |v: Vec<(ReaderId, Seen)>| {
        let len = v.len();
        let set: Set<(ReaderId, Seen)> = v.into_iter().collect();
        if set.len() != len {
            return Err(SnapshotError::Inconsistent(
                "a seen capture appears twice".into(),
            ));
        }
        Ok(Arc::new(set))
    };
    let seen = SeenCaptures {
        current: generation(o.seen.current)?,
        previous: generation(o.seen.previous)?,
        since: o.seen.since,
    };
    let ended_sessions = sessions
        .iter()
        .filter_map(|s| Some((s.ended_at?, s.id)))
        .collect();
    let finished_deliveries = o
        .deliveries
        .iter()
        .filter(|d| d.status == DeliveryStatus::Delivered)
        .filter_map(|d| Some((d.attempts.last()?.at, d.id.clone())))
        .collect();
    let idempotency_by_time = o
        .idempotency
        .iter()
        .map(|(p, k, e)| (e.at, *p, k.clone()))
        .collect();
    let upstream: SplitMap<_, _> = unique(
        "upstream session",
        o.upstream.into_iter().map(|b| (b.session_id.clone(), b)),
    )?;
    let mut upstream_by_time: ChunkSet<_> = upstream
        .values()
        .map(|b| (super::upstream::open_until(b), b.session_id.clone()))
        .collect();
    let mut ended = Set::default();
    for (t, id) in o.upstream_ended {
        if upstream.contains_key(&id) || !ended.insert(id.clone()) {
            return Err(SnapshotError::Inconsistent(
                "an upstream session is both open and ended, or ended twice".into(),
            ));
        }
        upstream_by_time.insert((t, id));
    }
    Ok(State {
        rules,
        partners: unique("partner", o.partners.into_iter().map(|p| (p.id, p)))?,
        partner_by_key: unique("API key hash", o.partner_by_key.into_iter())?,
        sessions: sessions_in_order(sessions)?,
        session_by_token,
        users: unique(
            "user",
            o.users
                .into_iter()
                .map(|u| ((u.partner_id, u.external_id.clone()), u)),
        )?,
        erased: unique(
            "erased user",
            o.erased.into_iter().map(|(p, e, r)| ((p, e), r)),
        )?,
        idempotency: unique(
            "idempotency key",
            o.idempotency.into_iter().map(|(p, k, v)| ((p, k), v)),
        )?,
        readers: unique("reader", o.readers.into_iter().map(|r| (r.id.clone(), r)))?,
        seen,
        revisions,
        deadlines,
        webhooks: unique("webhook", o.webhooks.into_iter().map(|w| (w.partner_id, w)))?,
        deliveries: unique(
            "delivery",
            o.deliveries.into_iter().map(|d| (d.id.clone(), d)),
        )?,
        due,
        policy,
        policy_document: o.policy_document.map(|(d, at)| (Arc::from(d), at)),
        policy_file_sha256: o.policy_file_sha256,
        lockdown: o.lockdown,
        emergency: o.emergency,
        zone_last: unique(
            "zone movement",
            o.zone_last.into_iter().map(|(z, p, e, d)| ((z, p, e), d)),
        )?,
        doors: unique("door", o.doors.into_iter())?,
        devices: unique("device", o.devices.into_iter())?,
        upstream,
        upstream_by_time,
        position: o.position,
        folded: o.position,
        ended_sessions,
        finished_deliveries,
        idempotency_by_time,
        forgotten: None,
    })
}

/// Field by field, indexes included; the compiled policy is compared by its hash.
impl PartialEq for State {
    fn eq(&self, o: &State) -> bool {
        let State {
            rules,
            partners,
            partner_by_key,
            sessions,
            session_by_token,
            users,
            erased,
            idempotency,
            readers,
            seen,
            revisions,
            deadlines,
            webhooks,
            deliveries,
            due,
            policy,
            policy_document,
            policy_file_sha256,
            lockdown,
            emergency,
            zone_last,
            doors,
            devices,
            upstream,
            upstream_by_time,
            position,
            // How the state got there, not what it holds.
            folded: _,
            ended_sessions,
            finished_deliveries,
            idempotency_by_time,
            forgotten: _,
        } = self;
        let sha = |p: &Option<Arc<Policy>>| p.as_ref().map(|p| p.sha256.clone());
        *rules == o.rules
            && *partners == o.partners
            && *partner_by_key == o.partner_by_key
            && *sessions == o.sessions
            && *session_by_token == o.session_by_token
            && *users == o.users
            && *erased == o.erased
            && *idempotency == o.idempotency
            && *readers == o.readers
            && *seen == o.seen
            && *revisions == o.revisions
            && *deadlines == o.deadlines
            && *webhooks == o.webhooks
            && *deliveries == o.deliveries
            && *due == o.due
            && sha(policy) == sha(&o.policy)
            && *policy_document == o.policy_document
            && *policy_file_sha256 == o.policy_file_sha256
            && *lockdown == o.lockdown
            && *emergency == o.emergency
            && *zone_last == o.zone_last
            && *doors == o.doors
            && *devices == o.devices
            && *upstream == o.upstream
            && *upstream_by_time == o.upstream_by_time
            && *position == o.position
            && *ended_sessions == o.ended_sessions
            && *finished_deliveries == o.finished_deliveries
            && *idempotency_by_time == o.idempotency_by_time
    }
}

/// The two sections that grow with every session, in a compact binary form ahead of the JSON
/// document: every session, then every stream revision, each in its canonical order. As JSON
/// they were most of a snapshot's bytes, and formatting and parsing their ids, hashes and
/// RFC 3339 instants most of its encode and decode time (BENCHMARKS §2, session 8).
///
/// Integers are little-endian; a string is its `u32` byte length and UTF-8 bytes; an option is
/// a `0`/`1` byte before its value; an instant is `i64` seconds and `u32` nanoseconds since
/// the Unix epoch (exact for every `DateTime<Utc>`). A session's free-form metadata is its
/// JSON text. The revisions use the store's heads-checkpoint layout
/// ([`crate::core::split_map::revisions`]), sorted by stream. Reading checks every length, tag
/// and order, so bytes not written by [`write_sessions`] and [`write_revisions`] are an error,
/// never a panic.
mod binary {
    use super::{ChunkMap, Session, SessionState, SnapshotError, SplitMap};
    use crate::core::ids::*;
    use chrono::{DateTime, Utc};
    use std::io::{self, Write};

    pub fn write_sessions(
        out: &mut impl Write,
        sessions: &ChunkMap<SessionId, Session>,
    ) -> io::Result<()> {
        out.write_all(&(sessions.len() as u64).to_le_bytes())?;
        let mut buf = Vec::with_capacity(512);
        for s in sessions.values() {
            buf.clear();
            session(&mut buf, s);
            out.write_all(&buf)?;
        }
        Ok(())
    }

    pub fn write_revisions(
        out: &mut impl Write,
        revisions: &SplitMap<std::sync::Arc<str>, u64>,
    ) -> io::Result<()> {
        let mut entries: Vec<(&str, u64)> = revisions.iter().map(|(k, v)| (&**k, *v)).collect();
        entries.sort_unstable();
        crate::core::split_map::revisions::write(out, entries.len(), entries)
    }

    fn session(b: &mut Vec<u8>, s: &Session) {
        let Session {
            id,
            partner_id,
            kind,
            language,
            token_hash,
            external_id,
            username,
            metadata,
            state,
            fail_reason,
            reader_id,
            reader_armed_at,
            retries,
            created_at,
            expires_at,
            ended_at,
            revision,
        } = s;
        b.extend_from_slice(id.0.as_bytes());
        match partner_id {
            None => b.push(0),
            Some(p) => {
                b.push(1);
                b.extend_from_slice(p.0.as_bytes());
            }
        }
        b.push(match kind {
            SessionKind::Enroll => 0,
            SessionKind::Identify => 1,
        });
        b.push(match language {
            Language::En => 0,
            Language::Kk => 1,
            Language::Ru => 2,
        });
        text(b, &token_hash.0);
        optional_text(b, external_id.as_ref().map(|e| e.0.as_str()));
        optional_text(b, username.as_deref());
        optional_text(b, metadata.as_ref().map(|m| m.to_string()).as_deref());
        b.push(match state {
            SessionState::Pending => 0,
            SessionState::Completed => 1,
            SessionState::Failed => 2,
            SessionState::Expired => 3,
        });
        b.push(match fail_reason {
            None => 0,
            Some(FailReason::NoMatch) => 1,
            Some(FailReason::AlreadyEnrolled) => 2,
            Some(FailReason::LowQuality) => 3,
            Some(FailReason::LivenessFailed) => 4,
            Some(FailReason::Cancelled) => 5,
            Some(FailReason::ReaderOffline) => 6,
        });
        optional_text(b, reader_id.as_ref().map(|r| r.0.as_str()));
        optional_instant(b, reader_armed_at.as_ref());
        b.extend_from_slice(&retries.to_le_bytes());
        instant(b, created_at);
        instant(b, expires_at);
        optional_instant(b, ended_at.as_ref());
        b.extend_from_slice(&revision.to_le_bytes());
    }

    fn optional_instant(b: &mut Vec<u8>, t: Option<&DateTime<Utc>>) {
        match t {
            None => b.push(0),
            Some(t) => {
                b.push(1);
                instant(b, t);
            }
        }
    }

    fn text(b: &mut Vec<u8>, s: &str) {
        b.extend_from_slice(&(s.len() as u32).to_le_bytes());
        b.extend_from_slice(s.as_bytes());
    }

    fn optional_text(b: &mut Vec<u8>, s: Option<&str>) {
        match s {
            None => b.push(0),
            Some(s) => {
                b.push(1);
                text(b, s);
            }
        }
    }

    fn instant(b: &mut Vec<u8>, t: &DateTime<Utc>) {
        b.extend_from_slice(&t.timestamp().to_le_bytes());
        b.extend_from_slice(&t.timestamp_subsec_nanos().to_le_bytes());
    }

    /// Reads the binary sections, front to back.
    pub struct Cursor<'a> {
        bytes: &'a [u8],
        at: usize,
    }

    fn bad(what: &str) -> SnapshotError {
        SnapshotError::Decode(format!("binary section: {what}"))
    }

    impl<'a> Cursor<'a> {
        pub fn new(bytes: &'a [u8]) -> Self {
            Cursor { bytes, at: 0 }
        }

        /// What follows the binary sections (the JSON document).
        pub fn rest(&self) -> &'a [u8] {
            &self.bytes[self.at..]
        }

        fn take(&mut self, n: usize) -> Result<&'a [u8], SnapshotError> {
            let end = self
                .at
                .checked_add(n)
                .filter(|&e| e <= self.bytes.len())
                .ok_or_else(|| bad("truncated"))?;
            let out = &self.bytes[self.at..end];
            self.at = end;
            Ok(out)
        }

        fn array<const N: usize>(&mut self) -> Result<[u8; N], SnapshotError> {
            Ok(self.take(N)?.try_into().expect("take returns N bytes"))
        }

        fn byte(&mut self) -> Result<u8, SnapshotError> {
            Ok(self.array::<1>()?[0])
        }

        fn u32(&mut self) -> Result<u32, SnapshotError> {
            Ok(u32::from_le_bytes(self.array()?))
        }

        fn u64(&mut self) -> Result<u64, SnapshotError> {
            Ok(u64::from_le_bytes(self.array()?))
        }

        fn flag(&mut self) -> Result<bool, SnapshotError> {
            match self.byte()? {
                0 => Ok(false),
                1 => Ok(true),
                _ => Err(bad("an option tag is neither 0 nor 1")),
            }
        }

        fn text(&mut self) -> Result<String, SnapshotError> {
            let len = self.u32()? as usize;
            std::str::from_utf8(self.take(len)?)
                .map(str::to_string)
                .map_err(|_| bad("a string is not UTF-8"))
        }

        fn optional_text(&mut self) -> Result<Option<String>, SnapshotError> {
            if self.flag()? {
                self.text().map(Some)
            } else {
                Ok(None)
            }
        }

        fn uuid(&mut self) -> Result<uuid::Uuid, SnapshotError> {
            Ok(uuid::Uuid::from_bytes(self.array()?))
        }

        fn instant(&mut self) -> Result<DateTime<Utc>, SnapshotError> {
            let secs = i64::from_le_bytes(self.array()?);
            let nanos = self.u32()?;
            DateTime::from_timestamp(secs, nanos).ok_or_else(|| bad("an instant out of range"))
        }

        /// A count of records, each at least `min` bytes: a count the remaining bytes cannot
        /// hold is refused before anything is reserved for it.
        fn count(&mut self, min: usize) -> Result<usize, SnapshotError> {
            let n = usize::try_from(self.u64()?).map_err(|_| bad("count too large"))?;
            if n.saturating_mul(min) > self.bytes.len() - self.at {
                return Err(bad("truncated"));
            }
            Ok(n)
        }
    }

    /// Smallest encoded session: id, three tags, an empty hash, four absent options, the
    /// state, no arming instant, retries, two instants, no end, the revision.
    const MIN_SESSION: usize = 16 + 1 + 1 + 1 + 4 + 3 + 1 + 1 + 1 + 1 + 4 + 24 + 1 + 8;

    pub fn read_sessions(c: &mut Cursor<'_>) -> Result<Vec<Session>, SnapshotError> {
        let n = c.count(MIN_SESSION)?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(read_session(c)?);
        }
        Ok(out)
    }

    fn read_session(c: &mut Cursor<'_>) -> Result<Session, SnapshotError> {
        let id = SessionId(c.uuid()?);
        let partner_id = if c.flag()? {
            Some(PartnerId(c.uuid()?))
        } else {
            None
        };
        let kind = match c.byte()? {
            0 => SessionKind::Enroll,
            1 => SessionKind::Identify,
            _ => return Err(bad("unknown session kind")),
        };
        let language = match c.byte()? {
            0 => Language::En,
            1 => Language::Kk,
            2 => Language::Ru,
            _ => return Err(bad("unknown language")),
        };
        let token_hash = SecretHash(c.text()?);
        let external_id = c.optional_text()?.map(ExternalId);
        let username = c.optional_text()?;
        let metadata = match c.optional_text()? {
            None => None,
            Some(json) => {
                Some(serde_json::from_str(&json).map_err(|_| bad("session metadata is not JSON"))?)
            }
        };
        let state = match c.byte()? {
            0 => SessionState::Pending,
            1 => SessionState::Completed,
            2 => SessionState::Failed,
            3 => SessionState::Expired,
            _ => return Err(bad("unknown session state")),
        };
        let fail_reason = match c.byte()? {
            0 => None,
            1 => Some(FailReason::NoMatch),
            2 => Some(FailReason::AlreadyEnrolled),
            3 => Some(FailReason::LowQuality),
            4 => Some(FailReason::LivenessFailed),
            5 => Some(FailReason::Cancelled),
            6 => Some(FailReason::ReaderOffline),
            _ => return Err(bad("unknown fail reason")),
        };
        let reader_id = c.optional_text()?.map(ReaderId);
        let reader_armed_at = if c.flag()? { Some(c.instant()?) } else { None };
        let retries = c.u32()?;
        let created_at = c.instant()?;
        let expires_at = c.instant()?;
        let ended_at = if c.flag()? { Some(c.instant()?) } else { None };
        let revision = c.u64()?;
        Ok(Session {
            id,
            partner_id,
            kind,
            language,
            token_hash,
            external_id,
            username,
            metadata,
            state,
            fail_reason,
            reader_id,
            reader_armed_at,
            retries,
            created_at,
            expires_at,
            ended_at,
            revision,
        })
    }

    /// The stream revisions, which must be in strictly increasing stream order.
    pub fn read_revisions(
        c: &mut Cursor<'_>,
    ) -> Result<SplitMap<std::sync::Arc<str>, u64>, SnapshotError> {
        let (map, rest) = crate::core::split_map::revisions::read(c.rest(), true)
            .map_err(SnapshotError::Decode)?;
        c.at = c.bytes.len() - rest.len();
        Ok(map)
    }
}
