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
//! The encoding is JSON (`serde_json`, already the log's encoding): records whose map key is
//! one of their own fields (sessions, users, deliveries, …) are written as sorted lists of
//! records, maps keyed by tuples as lists of tuples (JSON object keys are strings), and
//! sessions — most of a long log's state — as arrays rather than objects.

use super::ids::*;
use super::policy::{Direction, DoorId, Policy};
use super::session::{Session, SessionState};
use super::split_map::SplitMap;
use super::state::{
    Delivery, DeliveryStatus, DeviceState, DoorState, IdemEntry, Partner, Reader, Rules,
    SeenCaptures, State, User, Webhook,
};
use super::state::{Map, Set};
use super::upstream::UpstreamBinding;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;
use std::collections::BTreeSet;
use std::hash::Hash;
use std::sync::Arc;

/// Version of the snapshot's shape and of `evolve`'s meaning (see the module doc).
/// 2: a door's last decision says who, where and by which level.
/// 3: upstream mode's open remote sessions (`upstream`).
/// 4: what has ended is forgotten after its retention (sessions, deliveries, idempotency keys,
///    seen captures in two generations); the retentions folded with are stored.
/// 5: upstream sessions are forgotten a session retention after they ended (`upstream_ended`
///    keeps when) or, never ended, after they expired.
pub const SCHEMA: u32 = 5;

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
    sessions: Vec<SessionRef<'a>>,
    users: Vec<&'a User>,
    erased: Vec<(&'a PartnerId, &'a ExternalId, u64)>,
    idempotency: Vec<(&'a PartnerId, &'a str, &'a IdemEntry)>,
    readers: Vec<&'a Reader>,
    seen: SeenRef<'a>,
    retention_ms: (i64, i64),
    #[serde(serialize_with = "sorted_map")]
    revisions: &'a SplitMap<String, u64>,
    webhooks: Vec<&'a Webhook>,
    deliveries: Vec<&'a Delivery>,
    policy_document: Option<(&'a str, DateTime<Utc>)>,
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
    sessions: Vec<SessionRow>,
    users: Vec<User>,
    erased: Vec<(PartnerId, ExternalId, u64)>,
    idempotency: Vec<(PartnerId, String, IdemEntry)>,
    readers: Vec<Reader>,
    seen: SeenOwned,
    retention_ms: (i64, i64),
    revisions: SplitMap<String, u64>,
    webhooks: Vec<Webhook>,
    deliveries: Vec<Delivery>,
    policy_document: Option<(String, DateTime<Utc>)>,
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
    current: Vec<&'a (ReaderId, String)>,
    previous: Vec<&'a (ReaderId, String)>,
    since: Option<DateTime<Utc>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SeenOwned {
    current: Vec<(ReaderId, String)>,
    previous: Vec<(ReaderId, String)>,
    since: Option<DateTime<Utc>>,
}

fn retention_ms(rules: &Rules) -> (i64, i64) {
    (
        rules.session_retention.num_milliseconds(),
        rules.delivery_retention.num_milliseconds(),
    )
}

/// A session as a JSON array, not an object: sessions are most of a long log's state, and
/// field names would be a third of their bytes.
#[derive(Serialize)]
struct SessionRef<'a>(
    SessionId,
    Option<PartnerId>,
    SessionKind,
    Language,
    &'a SecretHash,
    &'a Option<ExternalId>,
    &'a Option<String>,
    &'a Option<Value>,
    SessionState,
    Option<FailReason>,
    &'a Option<ReaderId>,
    u32,
    DateTime<Utc>,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    u64,
);

impl<'a> From<&'a Session> for SessionRef<'a> {
    fn from(s: &'a Session) -> Self {
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
            retries,
            created_at,
            expires_at,
            ended_at,
            revision,
        } = s;
        SessionRef(
            *id,
            *partner_id,
            *kind,
            *language,
            token_hash,
            external_id,
            username,
            metadata,
            *state,
            *fail_reason,
            reader_id,
            *retries,
            *created_at,
            *expires_at,
            *ended_at,
            *revision,
        )
    }
}

/// [`SessionRef`], read back.
#[derive(Deserialize)]
struct SessionRow(
    SessionId,
    Option<PartnerId>,
    SessionKind,
    Language,
    SecretHash,
    Option<ExternalId>,
    Option<String>,
    Option<Value>,
    SessionState,
    Option<FailReason>,
    Option<ReaderId>,
    u32,
    DateTime<Utc>,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    u64,
);

impl From<SessionRow> for Session {
    fn from(r: SessionRow) -> Session {
        let SessionRow(
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
            retries,
            created_at,
            expires_at,
            ended_at,
            revision,
        ) = r;
        Session {
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
            retries,
            created_at,
            expires_at,
            ended_at,
            revision,
        }
    }
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort_unstable();
    v
}

fn sorted_by_key<T, K: Ord>(mut v: Vec<T>, key: impl Fn(&T) -> K) -> Vec<T> {
    v.sort_unstable_by_key(key);
    v
}

fn sorted_map<S: Serializer>(m: &&SplitMap<String, u64>, s: S) -> Result<S::Ok, S::Error> {
    let mut entries: Vec<(&str, u64)> = m.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    entries.sort_unstable();
    s.collect_map(entries)
}

/// The state as snapshot bytes (canonical: equal states give equal bytes).
pub fn encode(state: &State) -> Vec<u8> {
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
        lockdown,
        emergency,
        zone_last,
        doors,
        devices,
        upstream,
        upstream_by_time,
        position,
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
        sessions: sorted_by_key(sessions.values().collect(), |s| s.id)
            .into_iter()
            .map(SessionRef::from)
            .collect(),
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
        revisions,
        webhooks: sorted_by_key(webhooks.values().collect(), |w| w.partner_id),
        deliveries: sorted_by_key(deliveries.values().collect(), |d| &d.id),
        policy_document: policy_document.as_ref().map(|(d, at)| (&**d, *at)),
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
    serde_json::to_vec(&stored).expect("a state has only string map keys and finite numbers")
}

/// Inserts every `(key, value)`; a key twice means the bytes were not written by [`encode`].
fn unique<K: Eq + Hash, V>(
    what: &str,
    items: impl ExactSizeIterator<Item = (K, V)>,
) -> Result<Map<K, V>, SnapshotError> {
    let mut map = Map::with_capacity_and_hasher(items.len(), Default::default());
    for (k, v) in items {
        if map.insert(k, v).is_some() {
            return Err(SnapshotError::Inconsistent(format!(
                "a {what} appears twice"
            )));
        }
    }
    Ok(map)
}

/// [`unique`] into a `BTreeMap`.
fn unique_sorted<K: Ord, V>(
    what: &str,
    items: impl Iterator<Item = (K, V)>,
) -> Result<std::collections::BTreeMap<K, V>, SnapshotError> {
    let mut map = std::collections::BTreeMap::new();
    for (k, v) in items {
        if map.insert(k, v).is_some() {
            return Err(SnapshotError::Inconsistent(format!(
                "a {what} appears twice"
            )));
        }
    }
    Ok(map)
}

/// The state stored in `bytes`, with `rules` from the configuration, the site policy compiled
/// again and the derived indexes rebuilt.
pub fn decode(bytes: &[u8], rules: Rules) -> Result<State, SnapshotError> {
    let o: StateOwned =
        serde_json::from_slice(bytes).map_err(|e| SnapshotError::Decode(e.to_string()))?;
    let sessions: Vec<Session> = o.sessions.into_iter().map(Session::from).collect();
    let policy = match &o.policy_document {
        None => None,
        // Only a document that compiled was ever stored; one that no longer does cannot be
        // reproduced from the snapshot (a full fold keeps the policy before it).
        Some((document, _)) => Some(Arc::new(Policy::parse(document).map_err(|_| {
            SnapshotError::Inconsistent("the stored site policy no longer compiles".into())
        })?)),
    };
    let mut session_by_token = std::collections::BTreeMap::new();
    let mut deadlines = BTreeSet::new();
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
    let generation = |v: Vec<(ReaderId, String)>| {
        let len = v.len();
        let set: Set<(ReaderId, String)> = v.into_iter().collect();
        if set.len() != len {
            return Err(SnapshotError::Inconsistent(
                "a seen capture appears twice".into(),
            ));
        }
        Ok(set)
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
        .filter(|d| matches!(d.status, DeliveryStatus::Delivered | DeliveryStatus::Failed))
        .filter_map(|d| Some((d.attempts.last()?.at, d.id.clone())))
        .collect();
    let idempotency_by_time = o
        .idempotency
        .iter()
        .map(|(p, k, e)| (e.at, *p, k.clone()))
        .collect();
    let upstream = unique(
        "upstream session",
        o.upstream.into_iter().map(|b| (b.session_id.clone(), b)),
    )?;
    let mut upstream_by_time: BTreeSet<_> = upstream
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
        sessions: unique_sorted("session", sessions.into_iter().map(|s| (s.id, s)))?,
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
        revisions: o.revisions,
        deadlines,
        webhooks: unique("webhook", o.webhooks.into_iter().map(|w| (w.partner_id, w)))?,
        deliveries: unique(
            "delivery",
            o.deliveries.into_iter().map(|d| (d.id.clone(), d)),
        )?,
        due,
        policy,
        policy_document: o.policy_document.map(|(d, at)| (Arc::from(d), at)),
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
            lockdown,
            emergency,
            zone_last,
            doors,
            devices,
            upstream,
            upstream_by_time,
            position,
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
