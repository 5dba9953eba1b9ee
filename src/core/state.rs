//! The read model every decision is made against, and `evolve`, which folds one stored event
//! into it.
//!
//! Invariants: `evolve` is total (it never fails on an event `decide` could have produced);
//! folding a log gives the same state whether the events arrived live or from a replay; a
//! session that has left `pending` never returns to it.

use super::chunk_map::{ChunkMap, ChunkSet};
use super::event::{Event, Recorded, SealedTemplate};
use super::ids::*;
use super::policy::{Direction, DoorId, Policy};
use super::session::{Session, SessionState};
use super::split_map::SplitMap;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Capture rules from the configuration (SPEC 5).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rules {
    /// Cosine similarity a match needs.
    pub threshold: f32,
    /// Captures below this quality are retried.
    pub min_quality: f64,
    /// Retries asked for before a session fails `low_quality`.
    pub max_retries: u32,
    /// How long an ended session stays in the state (config `sessions.retention`); after it,
    /// the session is forgotten (`GET /v1/sessions/{id}` answers 404; the log keeps it).
    pub session_retention: Duration,
    /// How long a delivered or failed webhook delivery stays (config `webhooks.retention`).
    pub delivery_retention: Duration,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            threshold: 0.80,
            min_quality: 0.5,
            max_retries: 3,
            session_retention: Duration::hours(24),
            delivery_retention: Duration::days(7),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Partner {
    pub id: PartnerId,
    pub name: String,
    pub api_key_hash: SecretHash,
    pub active: bool,
    pub created_at: DateTime<Utc>,
    pub revision: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub partner_id: PartnerId,
    pub external_id: ExternalId,
    pub username: Option<String>,
    pub metadata: Option<Value>,
    pub enrolled_at: DateTime<Utc>,
    pub session_id: SessionId,
    pub template: Option<SealedTemplate>,
    /// Revision of the user's stream.
    pub revision: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reader {
    pub id: ReaderId,
    pub online: bool,
    pub model: Option<String>,
    pub firmware: Option<String>,
    pub since: DateTime<Utc>,
    pub revision: u64,
}

/// A partner's webhook endpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Webhook {
    pub partner_id: PartnerId,
    pub url: String,
    /// The signing secret, encrypted under the master key (the shell decrypts it to sign).
    pub secret: String,
    /// The secret rotated out last and until when it still signs.
    pub previous: Option<(String, DateTime<Utc>)>,
    /// Secrets rotated out before `previous`, newest first, each with until when it still
    /// signs: a second rotation within 24 h does not cut the first old secret's 24 h short
    /// (SPEC 2). Those already expired are dropped at each rotation, so this holds at most the
    /// rotations of the last 24 h.
    pub older: Vec<(String, DateTime<Utc>)>,
    pub events: Vec<String>,
    pub active: bool,
    pub last_failure: Option<DateTime<Utc>>,
    /// What the last failed attempt got: `HTTP 500`, `HTTP 301: redirect …`, or the transport
    /// error (`timed out after 10 s`, `connection failed: …`). Absent from snapshots written
    /// before it was kept.
    #[serde(default)]
    pub last_failure_reason: Option<String>,
    pub revision: u64,
}

impl Webhook {
    /// `secret` replaces the current one, which keeps signing until `until`; those rotated out
    /// before keep their own ends, and the ones already past at `at` are dropped.
    fn rotate(&mut self, secret: String, until: DateTime<Utc>, at: DateTime<Utc>) {
        let old = std::mem::replace(&mut self.secret, secret);
        if let Some(before) = self.previous.replace((old, until)) {
            self.older.insert(0, before);
        }
        self.older.retain(|(_, u)| at < *u);
    }

    pub fn wants(&self, kind: &str) -> bool {
        self.events.iter().any(|e| e == kind)
    }

    /// The secrets that sign a delivery sent at `now` (all encrypted): the current one first,
    /// then every rotated-out one whose own 24 h have not ended, newest first.
    pub fn signing_secrets(&self, now: DateTime<Utc>) -> Vec<&str> {
        std::iter::once(self.secret.as_str())
            .chain(
                self.previous
                    .iter()
                    .chain(&self.older)
                    .filter(|(_, until)| now < *until)
                    .map(|(s, _)| s.as_str()),
            )
            .collect()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeliveryStatus {
    /// Waiting for its next attempt.
    Pending,
    Delivered,
    /// Five attempts failed.
    Failed,
    /// Queued while the webhook was disabled; sent after a redeliver or recover.
    Held,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed => "failed",
            DeliveryStatus::Held => "held",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub attempt: u32,
    pub status_code: Option<u16>,
    pub error: Option<String>,
    pub latency_ms: u64,
    pub response: String,
    pub delivered: bool,
    pub at: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub id: String,
    pub partner_id: PartnerId,
    pub event: String,
    pub session_id: Option<SessionId>,
    pub body: String,
    pub created_at: DateTime<Utc>,
    pub status: DeliveryStatus,
    /// Attempts made in the current sequence (0–5).
    pub attempt: u32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Every attempt ever made, across redeliveries.
    pub attempts: Vec<Attempt>,
    pub revision: u64,
}

/// What is known of a door right now.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DoorState {
    /// The relay's resting state is unlocked (unlock window, emergency).
    pub resting_unlocked: bool,
    /// The relay is on (pulse or resting), as last reported by the board.
    pub relay_on: bool,
    /// The last relay write failed (the board is retrying).
    pub relay_fault: Option<String>,
    /// Contact open since.
    pub open_since: Option<DateTime<Utc>>,
    pub held_alarm: bool,
    pub forced_alarm: bool,
    /// A grant or exit request expects the door to open until then.
    pub released_until: Option<DateTime<Utc>>,
    /// The last decision at this door.
    pub last_decision: Option<LastDecision>,
    /// The zone movements of the grants here whose pulse the board has not yet reported, oldest
    /// first: a pulse the board refused (`RelayFailed` `refused`, with the grant's capture id
    /// as its tag) undoes its grant's movement, since the person did not pass. Each ends with
    /// its pulse's report (ON, refused, or failed without knowing), or when a later movement
    /// of the same person in that zone supersedes it; at most [`MAX_PASSAGES`] are held.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub passages: Vec<Passage>,
    /// Where this door's coil is while it may be ON (from a grant, an exit request, an unlock
    /// or a report of ON, until a report of OFF), under the policy in force then: a coil left
    /// ON by a door a later policy removed or moved (or whose board it dropped or readdressed)
    /// is found here at start-up and driven OFF ([`State::orphan_coils`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<RelayAt>,
}

/// Where a door's relay was switched: device, coil, and the board's address and unit under
/// the policy in force then (the address as the policy writes it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayAt {
    pub device: String,
    pub coil: u16,
    pub address: Option<String>,
    pub unit: u8,
}

impl State {
    /// Coils the log has left ON that the policy in force does not give to the door that
    /// switched them (the door removed, moved to another coil, or its board dropped or
    /// readdressed): where each was switched. Start-up drives them OFF; before, the device
    /// task of a restarted gateway knew none of them and they stayed ON for good.
    pub fn orphan_coils(&self) -> Vec<RelayAt> {
        let policy = self.policy.as_deref();
        let mut out: Vec<RelayAt> = self
            .doors
            .iter()
            .filter_map(|(id, ds)| {
                let at = ds.relay.as_ref()?;
                let still = policy.is_some_and(|p| {
                    p.door(id)
                        .is_some_and(|d| d.relay.device == at.device && d.relay.coil == at.coil)
                        && p.relay_devices.iter().any(|b| {
                            b.id == at.device
                                && b.unit == at.unit
                                && at.address.as_deref() == Some(b.modbus.to_string().as_str())
                        })
                });
                (!still).then(|| at.clone())
            })
            .collect();
        out.sort_by(|a, b| (&a.device, a.coil).cmp(&(&b.device, b.coil)));
        out.dedup();
        out
    }

    /// Where `device`/`coil` is under the policy in force (its board's address and unit).
    fn relay_place(&self, device: &str, coil: u16) -> RelayAt {
        let board = self
            .policy
            .as_deref()
            .and_then(|p| p.relay_devices.iter().find(|b| b.id == device));
        RelayAt {
            device: device.to_string(),
            coil,
            address: board.map(|b| b.modbus.to_string()),
            unit: board.map_or(1, |b| b.unit),
        }
    }

    /// Where `door`'s coil is under the policy in force.
    fn relay_at(&self, door: &DoorId) -> Option<RelayAt> {
        let d = self.policy.as_deref()?.door(door)?;
        Some(self.relay_place(&d.relay.device, d.relay.coil))
    }

    /// `door`'s coil may be ON from now on: where it is is kept ([`DoorState::relay`]).
    fn relay_may_be_on(&mut self, door: &DoorId) {
        let Some(at) = self.relay_at(door) else {
            return;
        };
        let ds = self.doors.entry(door.clone()).or_default();
        if ds.relay.as_ref() != Some(&at) {
            ds.relay = Some(at);
        }
    }

    /// The door whose relay the log has ON at `device`/`coil` although the policy in force
    /// gives that coil to no door: its OFF is recorded under that door (the first by id when
    /// several left it so).
    pub fn orphan_door(&self, device: &str, coil: u16) -> Option<&DoorId> {
        let address = self.relay_place(device, coil).address;
        self.door_left_on(device, coil, address.as_deref())
    }

    /// [`State::orphan_door`] for a coil switched OFF at `address`, an address the policy in
    /// force no longer gives the board.
    pub fn orphan_door_at(&self, device: &str, coil: u16, address: &str) -> Option<&DoorId> {
        self.door_left_on(device, coil, Some(address))
    }

    /// The door (the first by id) whose coil may be ON at `device`/`coil` at `address`.
    fn door_left_on(&self, device: &str, coil: u16, address: Option<&str>) -> Option<&DoorId> {
        self.doors
            .iter()
            .filter(|(_, ds)| {
                ds.relay.as_ref().is_some_and(|r| {
                    r.device == device && r.coil == coil && r.address.as_deref() == address
                })
            })
            .map(|(id, _)| id)
            .min()
    }
}

impl DoorState {
    /// As the log has it: the relay off, not resting unlocked, and the door not reported open
    /// (a door with a contact; see also [`super::doors::held_shut`], which also asks for the
    /// contact's board to be up).
    pub fn held_shut(&self) -> bool {
        !self.relay_on && !self.resting_unlocked && self.open_since.is_none()
    }
}

/// How many unreported passages a door holds at most; the oldest goes first (its pulse's
/// report is long overdue: the board answers within its response timeout, or is reported
/// down).
pub const MAX_PASSAGES: usize = 16;

/// A grant's zone movement, held at its door until the board reports the pulse
/// ([`DoorState::passages`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Passage {
    /// The grant's capture id: the pulse's tag.
    pub capture_id: String,
    pub zone: String,
    pub partner_id: PartnerId,
    pub external_id: ExternalId,
    pub direction: Direction,
    /// The person's last movement in the zone before this one.
    pub before: Option<Direction>,
}

impl Passage {
    /// Whether this is the movement of person (`partner_id`, `external_id`) in `zone`.
    pub fn is_of(&self, zone: &str, partner_id: PartnerId, external_id: &ExternalId) -> bool {
        self.zone == zone && self.partner_id == partner_id && self.external_id == *external_id
    }

    /// The pulse tagged `tag` was reported: the passage of the grant it served, taken out of
    /// its door's `passages` if held there. The exit button's pulses serve no grant.
    pub fn take(passages: &mut Vec<Passage>, tag: &str) -> Option<Passage> {
        if tag == super::doors::EXIT_REQUEST_TAG {
            return None;
        }
        let i = passages.iter().position(|p| p.capture_id == tag)?;
        Some(passages.remove(i))
    }

    /// A later movement of the same person in the same zone: the passages held for the earlier
    /// ones (in any door's `passages`) are dropped, since undoing one would undo this movement.
    pub fn supersede<'a>(&self, all: impl IntoIterator<Item = &'a mut Vec<Passage>>) {
        for held in all {
            held.retain(|p| !p.is_of(&self.zone, self.partner_id, &self.external_id));
        }
    }

    /// Holds this passage in its door's `passages`, after the ones there (at most
    /// [`MAX_PASSAGES`]: the oldest goes). An older one with the same capture id (a reader
    /// reusing ids) goes too: a report with that tag is this grant's pulse.
    pub fn hold(self, passages: &mut Vec<Passage>) {
        passages.retain(|p| p.capture_id != self.capture_id);
        if passages.len() >= MAX_PASSAGES {
            passages.remove(0);
        }
        passages.push(self);
    }

    /// The grant's pulse was refused: the person did not pass, so their last movement in the
    /// zone is the one before, unless something else changed it since (an erasure that
    /// cleared their zones).
    pub fn undo(self, zone_last: &mut SplitMap<(String, PartnerId, ExternalId), Direction>) {
        let key = (self.zone, self.partner_id, self.external_id);
        if zone_last.get(&key) != Some(&self.direction) {
            return;
        }
        match self.before {
            Some(d) => {
                zone_last.insert(key, d);
            }
            None => {
                zone_last.remove(&key);
            }
        }
    }
}

/// A door's last decision, as the operator's door list shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LastDecision {
    pub granted: bool,
    /// The denial reason (SPEC 6), when denied.
    pub reason: Option<String>,
    pub at: DateTime<Utc>,
    pub reader_id: ReaderId,
    /// The level that granted, or that gave the reason.
    pub level: Option<String>,
    /// Who, when the palm matched someone.
    pub subject: Option<crate::core::event::DoorSubject>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceState {
    pub up: bool,
    pub error: Option<String>,
    pub since: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct IdemEntry {
    pub session_id: SessionId,
    pub fingerprint: String,
    pub at: DateTime<Utc>,
}

/// The state's hash maps and sets: foldhash, seeded per map, instead of the standard library's
/// SipHash. The keys are ids the server issued or hashes of secrets, and hashing them was ~10 %
/// of folding the log (`audit verify`, start-up).
pub type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
/// See [`Map`].
pub type Set<T> = HashSet<T, foldhash::fast::RandomState>;

#[derive(Clone, Debug, Default)]
pub struct State {
    pub rules: Rules,
    pub(crate) partners: Map<PartnerId, Partner>,
    pub(super) partner_by_key: Map<SecretHash, PartnerId>,
    pub(crate) sessions: ChunkMap<SessionId, Session>,
    /// Split hash maps, as `revisions`: in a B-tree, each insert compared 64-character hashes
    /// about twenty times (3.7 % of the request workers' samples in `memcmp` alone, BENCHMARKS
    /// §2 session 8).
    pub(super) session_by_token: SplitMap<SecretHash, SessionId>,
    pub(crate) users: SplitMap<(PartnerId, ExternalId), User>,
    /// Revision of erased users' streams (a re-enrollment continues the stream).
    pub(super) erased: SplitMap<(PartnerId, ExternalId), u64>,
    pub(crate) idempotency: SplitMap<(PartnerId, String), IdemEntry>,
    pub(crate) readers: Map<ReaderId, Reader>,
    /// `(reader, capture_id)` and `(reader, trigger_id)` already handled (QoS 1 redelivery).
    pub(crate) seen: SeenCaptures,
    /// Last revision of every stream seen, for expected-revision appends. Split hash maps:
    /// one hash map's resize, under the state lock, was the identify p99 (`split_map`).
    /// Shared names (`Arc<str>`): a shard the snapshot's clone shares is copied on its next
    /// write with reference counts, not a copy of every name.
    pub(super) revisions: SplitMap<Arc<str>, u64>,
    /// Pending sessions by expiry.
    pub(crate) deadlines: ChunkSet<(DateTime<Utc>, SessionId)>,
    pub(crate) webhooks: Map<PartnerId, Webhook>,
    pub(crate) deliveries: SplitMap<String, Delivery>,
    /// Pending deliveries by next attempt time.
    pub(super) due: ChunkSet<(DateTime<Utc>, String)>,
    /// The site policy in force.
    pub policy: Option<Arc<Policy>>,
    /// Its source text and when it was activated.
    pub policy_document: Option<(Arc<str>, DateTime<Utc>)>,
    /// The sha256 of the last policy activated from the site file (source `startup` or
    /// `sighup`): start-up activates the file only when it changed since (`App::start_site_file`),
    /// so a policy activated later through the admin API survives restarts.
    pub policy_file_sha256: Option<String>,
    pub lockdown: bool,
    pub emergency: bool,
    /// Last movement of each user in each anti-passback zone.
    pub(crate) zone_last: SplitMap<(String, PartnerId, ExternalId), Direction>,
    pub(crate) doors: Map<DoorId, DoorState>,
    pub(crate) devices: Map<String, DeviceState>,
    /// Upstream mode: remote identify sessions bound to readers, until their webhook ends them
    /// (an ended one leaves only its stream's revision behind, until `upstream_by_time` lets
    /// it go).
    pub(crate) upstream: SplitMap<UpstreamSessionId, super::upstream::UpstreamBinding>,
    pub(super) position: u64,
    /// How many events were folded in: with `position` (events are numbered from 1 without
    /// gaps), whether the state holds every event up to its position ([`State::is_prefix`]).
    pub(super) folded: u64,
    /// Ended sessions by end time, until `rules.session_retention` has passed.
    pub(super) ended_sessions: ChunkSet<(DateTime<Utc>, SessionId)>,
    /// Delivered or failed deliveries by their last attempt, until `rules.delivery_retention`.
    pub(super) finished_deliveries: ChunkSet<(DateTime<Utc>, String)>,
    /// Idempotency keys by first use, until `IDEMPOTENCY_TTL` has passed.
    pub(super) idempotency_by_time: ChunkSet<(DateTime<Utc>, PartnerId, String)>,
    /// Upstream sessions by the instant their `sessions.retention` starts: when they ended, or,
    /// while open, when they expire on our clock ([`super::upstream::open_until`]). Once the
    /// retention has passed, the binding (if still open) and the stream's revision are let go
    /// of: a webhook for it is then a session palmgate does not know (200 `ignored`).
    pub(crate) upstream_by_time: ChunkSet<(DateTime<Utc>, UpstreamSessionId)>,
    /// When `Some`, the streams whose revision the state let go of (for the store's heads).
    pub(super) forgotten: Option<Vec<String>>,
}

/// How long a handled capture or trigger id is remembered: it is in the state for at least this
/// long and at most twice this long after it was handled.
pub const CAPTURE_MEMORY: Duration = Duration::hours(1);

/// The `PolicyActivated` sources that read the configured site file: start-up and SIGHUP.
pub const SITE_FILE_SOURCES: [&str; 2] = ["startup", "sighup"];

/// True when a `PolicyActivated` of `source` came from the site file ([`SITE_FILE_SOURCES`]).
pub fn from_site_file(source: &str) -> bool {
    SITE_FILE_SOURCES.contains(&source)
}

/// The `capture_id` a trigger's door decision (upstream mode) and its relay pulse are tagged
/// with. Only a tag: the duplicate memory keeps triggers apart from captures by [`Seen`], since
/// a capture id may itself read `trigger:X`.
pub(crate) fn trigger_key(trigger_id: &str) -> String {
    format!("trigger:{trigger_id}")
}

/// An entry of the duplicate memory, for one reader: a capture id and a trigger id are
/// remembered apart, whatever their text (a capture `42` is not a redelivered trigger `42`,
/// nor is a capture `trigger:42`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Seen {
    #[serde(rename = "c")]
    Capture(String),
    #[serde(rename = "t")]
    Trigger(String),
}

impl Seen {
    /// What a `DoorDecided` marks as handled: the trigger it stands for when it is tagged
    /// [`trigger_key`] and read no palm here (no `judged`: upstream mode's decisions), else
    /// the capture that asked. (A capture named `trigger:X` decided before captures recorded
    /// how they were judged reads as trigger `X`, as every such log folded before.)
    pub(crate) fn of_decision(capture_id: String, judged: bool) -> Seen {
        match capture_id.strip_prefix("trigger:") {
            Some(trigger) if !judged => Seen::Trigger(trigger.to_string()),
            _ => Seen::Capture(capture_id),
        }
    }
}

/// Capture and trigger ids already handled, in two generations of [`CAPTURE_MEMORY`] each, so
/// a QoS 1 redelivery is recognised without remembering every scan forever. The generations
/// turn over by the time of the events folded, so a replay gives the same sets.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SeenCaptures {
    pub(super) current: Arc<Set<(ReaderId, Seen)>>,
    pub(super) previous: Arc<Set<(ReaderId, Seen)>>,
    /// When `current` was started.
    pub(super) since: Option<DateTime<Utc>>,
}

impl SeenCaptures {
    pub fn contains(&self, key: &(ReaderId, Seen)) -> bool {
        self.current.contains(key) || self.previous.contains(key)
    }
    pub fn insert(&mut self, key: (ReaderId, Seen)) {
        if !self.previous.contains(&key) {
            Arc::make_mut(&mut self.current).insert(key);
        }
    }
    pub fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Turns the generations over once `CAPTURE_MEMORY` has passed, and only once however long
    /// the log was silent: what was handled just before a pause (a gateway down for hours) is
    /// still remembered for a window after it, which is when a broker redelivers the captures
    /// whose acknowledgement the pause cut off. (Clearing both generations after a long pause
    /// made such a redelivered capture a new scan: a second grant, hours late.)
    fn advance(&mut self, now: DateTime<Utc>) {
        match self.since {
            None => self.since = Some(now),
            Some(since) if now >= since + CAPTURE_MEMORY => {
                self.previous = std::mem::take(&mut self.current);
                self.since = Some(now);
            }
            Some(_) => {}
        }
    }
}

impl State {
    pub fn new(rules: Rules) -> State {
        State {
            rules,
            ..State::default()
        }
    }

    pub fn position(&self) -> u64 {
        self.position
    }

    /// A copy of what a snapshot stores (`core::snapshot::encode`), for the snapshot writer:
    /// the large collections are shared, not copied (`chunk_map`, `split_map`), and the
    /// indexes a snapshot does not store (decoding rebuilds them from the records) are left
    /// empty, so the live state's next writes to them copy nothing.
    pub fn snapshot_copy(&self) -> State {
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
            folded,
            ended_sessions: _,
            finished_deliveries: _,
            idempotency_by_time: _,
            forgotten: _,
        } = self;
        State {
            rules: *rules,
            partners: partners.clone(),
            partner_by_key: partner_by_key.clone(),
            sessions: sessions.clone(),
            users: users.clone(),
            erased: erased.clone(),
            idempotency: idempotency.clone(),
            readers: readers.clone(),
            seen: seen.clone(),
            revisions: revisions.clone(),
            webhooks: webhooks.clone(),
            deliveries: deliveries.clone(),
            policy: policy.clone(),
            policy_document: policy_document.clone(),
            policy_file_sha256: policy_file_sha256.clone(),
            lockdown: *lockdown,
            emergency: *emergency,
            zone_last: zone_last.clone(),
            doors: doors.clone(),
            devices: devices.clone(),
            upstream: upstream.clone(),
            upstream_by_time: upstream_by_time.clone(),
            position: *position,
            folded: *folded,
            ..State::default()
        }
    }

    /// Whether the state is the fold of exactly the events `1..=position` (a log's positions
    /// have no gaps): none missing behind one folded already. The app folds each append as it
    /// lands, and appends committed together land in whichever order their tasks run, so a
    /// state read in between may hold event `p` and not `p - 1`. A snapshot is only taken of a
    /// state for which this holds (`app::snapshot`).
    pub fn is_prefix(&self) -> bool {
        self.folded == self.position
    }

    /// How many events were folded in ([`State::is_prefix`]).
    pub fn folded(&self) -> u64 {
        self.folded
    }

    pub fn revision(&self, stream: &str) -> Option<u64> {
        self.revisions.get(stream).copied()
    }
    pub fn partner(&self, id: PartnerId) -> Option<&Partner> {
        self.partners.get(&id)
    }
    pub fn partners(&self) -> impl Iterator<Item = &Partner> {
        self.partners.values()
    }
    pub fn partner_by_key_hash(&self, hash: &SecretHash) -> Option<&Partner> {
        self.partner_by_key
            .get(hash)
            .and_then(|id| self.partners.get(id))
    }
    pub fn session(&self, id: SessionId) -> Option<&Session> {
        self.sessions.get(&id)
    }
    pub fn session_by_token_hash(&self, hash: &SecretHash) -> Option<&Session> {
        self.session_by_token
            .get(hash)
            .and_then(|id| self.sessions.get(id))
    }
    pub fn user(&self, partner: PartnerId, external_id: &ExternalId) -> Option<&User> {
        self.users.get(&(partner, external_id.clone()))
    }
    pub fn users(&self) -> impl Iterator<Item = &User> {
        self.users.values()
    }
    /// Revision of a user stream, whether the user is enrolled or erased.
    pub fn user_revision(&self, partner: PartnerId, external_id: &ExternalId) -> Option<u64> {
        let key = (partner, external_id.clone());
        self.users
            .get(&key)
            .map(|u| u.revision)
            .or_else(|| self.erased.get(&key).copied())
    }
    pub fn reader(&self, id: &ReaderId) -> Option<&Reader> {
        self.readers.get(id)
    }
    pub fn readers(&self) -> impl Iterator<Item = &Reader> {
        self.readers.values()
    }
    pub fn webhook(&self, partner: PartnerId) -> Option<&Webhook> {
        self.webhooks.get(&partner)
    }
    pub fn delivery(&self, id: &str) -> Option<&Delivery> {
        self.deliveries.get(id)
    }
    pub fn deliveries_of(&self, partner: PartnerId) -> impl Iterator<Item = &Delivery> {
        self.deliveries
            .values()
            .filter(move |d| d.partner_id == partner)
    }
    /// Deliveries whose next attempt is due at `now`, for partners whose webhook is active,
    /// earliest first: `(partner, delivery id, attempt number to send)`.
    /// `skip` filters out ids the caller already handles (before anything is cloned).
    pub fn due_deliveries(
        &self,
        now: DateTime<Utc>,
        skip: impl Fn(&str) -> bool,
    ) -> Vec<(PartnerId, String, u32)> {
        self.due
            .iter()
            .take_while(|(t, _)| *t <= now)
            .filter(|(_, id)| !skip(id))
            .filter_map(|(_, id)| self.deliveries.get(id))
            .filter(|d| self.webhooks.get(&d.partner_id).is_some_and(|w| w.active))
            .map(|d| (d.partner_id, d.id.clone(), d.attempt + 1))
            .collect()
    }
    /// When the next delivery attempt (of an active webhook) is due.
    pub fn next_delivery_due(&self, skip: impl Fn(&str) -> bool) -> Option<DateTime<Utc>> {
        self.due
            .iter()
            .filter(|(_, id)| !skip(id))
            .find(|(_, id)| {
                self.deliveries
                    .get(id)
                    .is_some_and(|d| self.webhooks.get(&d.partner_id).is_some_and(|w| w.active))
            })
            .map(|(t, _)| *t)
    }

    /// The open session that holds `reader` at `now` ([`Session::holds_reader`]): armed for
    /// it from a hosted page, or a trigger session bound to it, less than
    /// [`super::session::READER_HOLD`] ago or since its last activity there. Of several, the
    /// one armed or active there last (the one the reader now serves). Walks the pending
    /// sessions (a few at a site at any time).
    pub fn session_holding_reader(
        &self,
        reader: &ReaderId,
        now: DateTime<Utc>,
    ) -> Option<&Session> {
        self.deadlines
            .iter()
            .rev()
            .take_while(|(t, _)| *t > now)
            .filter_map(|(_, id)| self.sessions.get(id))
            .filter(|s| s.holds_reader(reader, now))
            .max_by_key(|s| (s.reader_armed_at, s.id))
    }

    /// Ids of the sessions still pending.
    pub fn open_session_ids(&self) -> std::collections::HashSet<SessionId> {
        self.deadlines.iter().map(|(_, id)| *id).collect()
    }
    /// The open upstream session `id` (upstream mode).
    pub fn upstream_binding(
        &self,
        id: &UpstreamSessionId,
    ) -> Option<&super::upstream::UpstreamBinding> {
        self.upstream.get(id)
    }
    pub fn door_state(&self, door: &DoorId) -> Option<&DoorState> {
        self.doors.get(door)
    }
    pub fn device_state(&self, device: &str) -> Option<&DeviceState> {
        self.devices.get(device)
    }

    /// The earliest instant at which `Command::Tick` has something to do; `now` lets time-driven
    /// rules (unlock windows) ask for the next second.
    pub fn next_deadline_after(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let sessions = self.deadlines.first().map(|(t, _)| *t);
        let doors = super::doors::next_deadline(self, Some(now));
        match (sessions, doors) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The earliest session expiry.
    pub fn next_deadline(&self) -> Option<DateTime<Utc>> {
        let sessions = self.deadlines.first().map(|(t, _)| *t);
        let doors = super::doors::next_deadline(self, None);
        match (sessions, doors) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Collects, from now on, the streams whose revision the state lets go of (see
    /// [`State::take_forgotten`]).
    pub fn collect_forgotten(&mut self) {
        self.forgotten.get_or_insert_with(Vec::new);
    }

    /// The streams let go of since the last call that the state still does not know (the
    /// store may drop their heads: nothing will append to them expecting a revision).
    pub fn take_forgotten(&mut self) -> Vec<String> {
        match &mut self.forgotten {
            Some(v) if !v.is_empty() => {
                let mut v = std::mem::take(v);
                v.retain(|s| !self.revisions.contains_key(s.as_str()));
                v
            }
            _ => vec![],
        }
    }

    /// Every stream the state knows a revision of.
    pub fn streams(&self) -> impl Iterator<Item = &str> {
        self.revisions.keys().map(|k| &**k)
    }

    /// Forgets what has ended longer ago than its retention, as of `now` (the time of the event
    /// being folded, so a replay forgets exactly what the live state forgot).
    fn forget_ended(&mut self, now: DateTime<Utc>) {
        use super::event::stream;
        self.seen.advance(now);
        let keep = self.rules.session_retention;
        while let Some(&(t, id)) = self.ended_sessions.first()
            && t + keep <= now
        {
            self.ended_sessions.pop_first();
            if let Some(s) = self.sessions.remove(&id) {
                if self.session_by_token.get(&s.token_hash) == Some(&id) {
                    self.session_by_token.remove(&s.token_hash);
                }
                self.forget_stream(stream::session(id));
            }
        }
        let keep = self.rules.delivery_retention;
        while let Some((t, _)) = self.finished_deliveries.first()
            && *t + keep <= now
        {
            let (_, id) = self.finished_deliveries.pop_first().expect("first exists");
            if self.deliveries.remove(&id).is_some() {
                self.forget_stream(stream::delivery(&id));
            }
        }
        while let Some((t, _, _)) = self.idempotency_by_time.first()
            && *t + super::decider::IDEMPOTENCY_TTL <= now
        {
            let (_, partner, key) = self.idempotency_by_time.pop_first().expect("first exists");
            let stream = stream::idempotency(partner, &key);
            self.idempotency.remove(&(partner, key));
            self.forget_stream(stream);
        }
        let keep = self.rules.session_retention;
        while let Some((t, _)) = self.upstream_by_time.first()
            && t.checked_add_signed(keep).is_some_and(|t| t <= now)
        {
            let (_, id) = self.upstream_by_time.pop_first().expect("first exists");
            self.upstream.remove(&id);
            self.forget_stream(stream::upstream(&id));
        }
    }

    fn forget_stream(&mut self, stream: String) {
        self.revisions.remove(stream.as_str());
        if let Some(v) = &mut self.forgotten {
            v.push(stream);
        }
    }

    /// The stream's last revision seen; `stream` is only copied the first time it is seen.
    fn note_revision(&mut self, stream: &str, revision: u64) {
        match self.revisions.get_mut(stream) {
            Some(rev) => *rev = (*rev).max(revision),
            None => {
                self.revisions.insert(Arc::from(stream), revision);
            }
        }
    }

    /// [`State::evolve`] for an event the caller owns (a replay, `audit verify`): the strings
    /// the state keeps from the frequent events (sessions created and ended, door decisions)
    /// are taken out of `rec` instead of copied, and what the state lets go of may be left in
    /// `rec` instead of freed, so `rec` is only good for dropping afterwards (on the thread
    /// that allocated it, ideally). The resulting state is the same as with `evolve`.
    pub fn evolve_take(&mut self, rec: &mut Recorded) {
        use super::policy::Verdict;
        use std::mem::take;
        if !matches!(
            rec.event,
            Event::SessionCreated { .. }
                | Event::SessionCompleted { .. }
                | Event::SessionFailed { .. }
                | Event::DoorDecided { .. }
        ) {
            return self.evolve(rec);
        }
        self.forget_ended(rec.recorded_at);
        self.position = self.position.max(rec.position);
        self.folded += 1;
        let revision = rec.revision;
        match self.revisions.get_mut(rec.stream.as_str()) {
            Some(rev) => *rev = (*rev).max(revision),
            None => {
                self.revisions
                    .insert(Arc::from(rec.stream.as_str()), revision);
            }
        }
        match &mut rec.event {
            Event::SessionCreated {
                session_id,
                partner_id,
                reader_id,
                kind,
                language,
                token_hash,
                external_id,
                username,
                metadata,
                created_at,
                expires_at,
                trigger_id,
            } => {
                if self.sessions.contains_key(session_id) {
                    return; // a session is created once; a repeat can only be a forged log
                }
                if let (Some(reader), Some(trigger)) = (&*reader_id, trigger_id.take()) {
                    // A redelivered trigger (QoS 1) is recognised and ignored.
                    self.seen.insert((reader.clone(), Seen::Trigger(trigger)));
                }
                self.session_by_token
                    .insert(token_hash.clone(), *session_id);
                self.deadlines.insert((*expires_at, *session_id));
                self.sessions.insert(
                    *session_id,
                    Session {
                        id: *session_id,
                        partner_id: *partner_id,
                        kind: *kind,
                        language: *language,
                        token_hash: SecretHash(take(&mut token_hash.0)),
                        external_id: external_id.take(),
                        username: username.take(),
                        metadata: metadata.take(),
                        state: SessionState::Pending,
                        fail_reason: None,
                        reader_armed_at: reader_id.is_some().then_some(*created_at),
                        reader_id: reader_id.take(),
                        retries: 0,
                        created_at: *created_at,
                        expires_at: *expires_at,
                        ended_at: None,
                        revision,
                    },
                );
            }
            Event::SessionCompleted {
                session_id,
                external_id,
                capture,
                at,
            } => {
                self.see_capture_taken(capture);
                self.end_session(*session_id, revision, *at, |s| {
                    s.state = SessionState::Completed;
                    if external_id.is_some() {
                        s.external_id = external_id.take();
                    }
                })
            }
            Event::SessionFailed {
                session_id,
                reason,
                capture,
                at,
            } => {
                self.see_capture_taken(capture);
                self.end_session(*session_id, revision, *at, |s| {
                    s.state = SessionState::Failed;
                    s.fail_reason = Some(*reason);
                })
            }
            Event::DoorDecided {
                door,
                reader_id,
                capture_id,
                subject,
                movement,
                verdict,
                judged,
                at,
                ..
            } => {
                if let (Some(s), Some((zone, dir))) = (&*subject, movement) {
                    self.moved(door, capture_id, take(zone), s, *dir);
                }
                // A redelivered capture (QoS 1) is recognised and ignored.
                self.seen.insert((
                    reader_id.clone(),
                    Seen::of_decision(take(capture_id), judged.is_some()),
                ));
                let granted = verdict.granted();
                if granted {
                    self.relay_may_be_on(door);
                }
                let pulse = self
                    .policy
                    .as_ref()
                    .and_then(|p| p.door(door))
                    .map_or(3000, |d| d.relay.pulse_ms);
                let ds = match self.doors.get_mut(door) {
                    Some(ds) => ds,
                    None => self.doors.entry(DoorId(take(&mut door.0))).or_default(),
                };
                let reason = verdict.reason().map(|r| r.as_str().to_string());
                let mut level = match verdict {
                    Verdict::Granted { level, .. } => Some(take(level)),
                    Verdict::Denied { level, .. } => level.take(),
                };
                match &mut ds.last_decision {
                    // The previous decision's strings are swapped into `rec`, to be freed
                    // wherever `rec` is.
                    Some(last) => {
                        last.granted = granted;
                        last.reason = reason;
                        last.at = *at;
                        std::mem::swap(&mut last.reader_id, reader_id);
                        std::mem::swap(&mut last.level, &mut level);
                        std::mem::swap(&mut last.subject, subject);
                        match verdict {
                            Verdict::Granted { level: slot, .. } => {
                                *slot = level.unwrap_or_default()
                            }
                            Verdict::Denied { level: slot, .. } => *slot = level,
                        }
                    }
                    None => {
                        ds.last_decision = Some(LastDecision {
                            granted,
                            reason,
                            at: *at,
                            reader_id: ReaderId(take(&mut reader_id.0)),
                            level,
                            subject: subject.take(),
                        })
                    }
                }
                if granted {
                    ds.released_until = Some(
                        *at + chrono::Duration::milliseconds(i64::from(pulse))
                            + super::doors::RELEASE_GRACE,
                    );
                }
            }
            _ => unreachable!("only the events matched above reach here"),
        }
    }

    /// Folds one stored event into the state.
    pub fn evolve(&mut self, rec: &Recorded) {
        self.forget_ended(rec.recorded_at);
        self.position = self.position.max(rec.position);
        self.folded += 1;
        self.note_revision(&rec.stream, rec.revision);
        let revision = rec.revision;
        match &rec.event {
            Event::PartnerCreated {
                partner_id,
                name,
                api_key_hash,
                at,
            } => {
                self.partner_by_key
                    .insert(api_key_hash.clone(), *partner_id);
                self.partners.insert(
                    *partner_id,
                    Partner {
                        id: *partner_id,
                        name: name.clone(),
                        api_key_hash: api_key_hash.clone(),
                        active: true,
                        created_at: *at,
                        revision,
                    },
                );
            }
            Event::PartnerActivated { partner_id, .. }
            | Event::PartnerDeactivated { partner_id, .. } => {
                if let Some(p) = self.partners.get_mut(partner_id) {
                    p.active = matches!(rec.event, Event::PartnerActivated { .. });
                    p.revision = revision;
                }
            }
            Event::SessionCreated {
                session_id,
                partner_id,
                reader_id,
                kind,
                language,
                token_hash,
                external_id,
                username,
                metadata,
                created_at,
                expires_at,
                trigger_id,
            } => {
                if self.sessions.contains_key(session_id) {
                    return; // a session is created once; a repeat can only be a forged log
                }
                if let (Some(reader), Some(trigger)) = (reader_id, trigger_id.clone()) {
                    // A redelivered trigger (QoS 1) is recognised and ignored.
                    self.seen.insert((reader.clone(), Seen::Trigger(trigger)));
                }
                self.session_by_token
                    .insert(token_hash.clone(), *session_id);
                self.deadlines.insert((*expires_at, *session_id));
                self.sessions.insert(
                    *session_id,
                    Session {
                        id: *session_id,
                        partner_id: *partner_id,
                        kind: *kind,
                        language: *language,
                        token_hash: token_hash.clone(),
                        external_id: external_id.clone(),
                        username: username.clone(),
                        metadata: metadata.clone(),
                        state: SessionState::Pending,
                        fail_reason: None,
                        reader_id: reader_id.clone(),
                        reader_armed_at: reader_id.is_some().then_some(*created_at),
                        retries: 0,
                        created_at: *created_at,
                        expires_at: *expires_at,
                        ended_at: None,
                        revision,
                    },
                );
            }
            Event::IdempotencyKeyUsed {
                partner_id,
                key,
                fingerprint,
                session_id,
                at,
            } => {
                let old = self.idempotency.insert(
                    (*partner_id, key.clone()),
                    IdemEntry {
                        session_id: *session_id,
                        fingerprint: fingerprint.clone(),
                        at: *at,
                    },
                );
                if let Some(old) = old {
                    self.idempotency_by_time
                        .remove(&(old.at, *partner_id, key.clone()));
                }
                self.idempotency_by_time
                    .insert((*at, *partner_id, key.clone()));
            }
            Event::SessionCompleted {
                session_id,
                external_id,
                capture,
                at,
            } => {
                self.see_capture(capture.as_ref());
                self.end_session(*session_id, revision, *at, |s| {
                    s.state = SessionState::Completed;
                    if external_id.is_some() {
                        s.external_id = external_id.clone();
                    }
                })
            }
            Event::SessionFailed {
                session_id,
                reason,
                capture,
                at,
            } => {
                self.see_capture(capture.as_ref());
                self.end_session(*session_id, revision, *at, |s| {
                    s.state = SessionState::Failed;
                    s.fail_reason = Some(*reason);
                })
            }
            Event::SessionExpired { session_id, at } => {
                self.end_session(*session_id, revision, *at, |s| {
                    s.state = SessionState::Expired;
                })
            }
            Event::SessionReaderArmed {
                session_id,
                reader_id,
                at,
            } => {
                if let Some(s) = self.sessions.get_mut(session_id) {
                    s.reader_id = Some(reader_id.clone());
                    s.reader_armed_at = Some(*at);
                    s.revision = revision;
                }
            }
            Event::CaptureRetryRequested {
                session_id,
                capture,
                attempt,
                at,
            } => {
                self.see_capture(Some(capture));
                if let Some(s) = self.sessions.get_mut(session_id) {
                    s.retries = *attempt;
                    // A capture at the session's reader is activity there: its hold runs anew.
                    if s.reader_id.as_ref() == Some(&capture.reader_id) {
                        s.reader_armed_at = Some(*at);
                    }
                    s.revision = revision;
                }
            }
            Event::CaptureRejected {
                reader_id,
                capture_id,
                ..
            } => {
                self.seen
                    .insert((reader_id.clone(), Seen::Capture(capture_id.clone())));
            }
            Event::ReaderStatusChanged {
                reader_id,
                online,
                model,
                firmware,
                at,
            } => {
                let before = self.readers.get(reader_id);
                let reader = Reader {
                    id: reader_id.clone(),
                    online: *online,
                    // An offline message (the last will) carries no model: keep what we knew.
                    model: model
                        .clone()
                        .or_else(|| before.and_then(|r| r.model.clone())),
                    firmware: firmware
                        .clone()
                        .or_else(|| before.and_then(|r| r.firmware.clone())),
                    since: *at,
                    revision,
                };
                self.readers.insert(reader_id.clone(), reader);
            }
            Event::UserEnrolled {
                partner_id,
                external_id,
                username,
                metadata,
                session_id,
                template,
                at,
            } => {
                let key = (*partner_id, external_id.clone());
                self.erased.remove(&key);
                self.users.insert(
                    key,
                    User {
                        partner_id: *partner_id,
                        external_id: external_id.clone(),
                        username: username.clone(),
                        metadata: metadata.clone(),
                        enrolled_at: *at,
                        session_id: *session_id,
                        template: template.clone(),
                        revision,
                    },
                );
            }
            Event::UserErased {
                partner_id,
                external_id,
                clears_zones,
                ..
            } => {
                let key = (*partner_id, external_id.clone());
                self.users.remove(&key);
                if *clears_zones {
                    self.zone_last
                        .retain(|(_, p, e), _| !(p == partner_id && e == external_id));
                }
                self.erased.insert(key, revision);
            }
            Event::ZonePresenceForgiven {
                zone,
                partner_id,
                external_id,
                ..
            } => {
                self.zone_last.retain(|key, _| {
                    !super::doors::forgives(zone, *partner_id, external_id.as_ref(), key)
                });
            }
            Event::WebhookConfigured {
                partner_id,
                url,
                secret,
                events,
                at,
            } => {
                // A new configuration brings a new secret; the one it replaces keeps signing
                // `webhook-signature` for 24 h, as after `rotate-secret`, so a receiver that has
                // not taken the new secret yet still verifies what is sent meanwhile.
                let mut w = match self.webhooks.remove(partner_id) {
                    Some(mut w) => {
                        w.rotate(secret.clone(), *at + super::decider::ROTATION_OVERLAP, *at);
                        w
                    }
                    None => Webhook {
                        partner_id: *partner_id,
                        url: String::new(),
                        secret: secret.clone(),
                        previous: None,
                        older: Vec::new(),
                        events: Vec::new(),
                        active: true,
                        last_failure: None,
                        last_failure_reason: None,
                        revision,
                    },
                };
                w.url = url.clone();
                w.events = events.clone();
                w.active = true;
                w.last_failure = None;
                w.last_failure_reason = None;
                w.revision = revision;
                self.webhooks.insert(*partner_id, w);
            }
            Event::WebhookSecretRotated {
                partner_id,
                secret,
                previous_until,
                at,
            } => {
                if let Some(w) = self.webhooks.get_mut(partner_id) {
                    w.rotate(secret.clone(), *previous_until, *at);
                    w.revision = revision;
                }
            }
            Event::WebhookEnabled { partner_id, .. } => {
                if let Some(w) = self.webhooks.get_mut(partner_id) {
                    w.active = true;
                    w.revision = revision;
                }
            }
            Event::WebhookDisabled { partner_id, at, .. } => {
                if let Some(w) = self.webhooks.get_mut(partner_id) {
                    w.active = false;
                    w.last_failure = Some(*at);
                    w.revision = revision;
                }
            }
            Event::DeliveryQueued {
                delivery_id,
                partner_id,
                event,
                session_id,
                body,
                held,
                at,
            } => {
                self.deliveries.insert(
                    delivery_id.clone(),
                    Delivery {
                        id: delivery_id.clone(),
                        partner_id: *partner_id,
                        event: event.clone(),
                        session_id: *session_id,
                        body: body.clone(),
                        created_at: *at,
                        status: if *held {
                            DeliveryStatus::Held
                        } else {
                            DeliveryStatus::Pending
                        },
                        attempt: 0,
                        next_attempt_at: None,
                        attempts: vec![],
                        revision,
                    },
                );
                if !*held {
                    self.set_due(delivery_id, Some(*at));
                }
            }
            Event::DeliveryAttempted {
                delivery_id,
                attempt,
                status_code,
                error,
                latency_ms,
                response,
                delivered,
                next_attempt_at,
                at,
            } => {
                self.set_due(delivery_id, *next_attempt_at);
                if let Some(d) = self.deliveries.get_mut(delivery_id) {
                    if matches!(d.status, DeliveryStatus::Delivered | DeliveryStatus::Failed)
                        && let Some(last) = d.attempts.last()
                    {
                        self.finished_deliveries
                            .remove(&(last.at, delivery_id.clone()));
                    }
                    // Only a delivered one is forgotten after its retention: a failed one stays
                    // until it is redelivered (SPEC 4: nothing is ever dropped).
                    if *delivered {
                        self.finished_deliveries.insert((*at, delivery_id.clone()));
                    }
                    d.revision = revision;
                    d.attempt = *attempt;
                    d.status = if *delivered {
                        DeliveryStatus::Delivered
                    } else if next_attempt_at.is_none() {
                        DeliveryStatus::Failed
                    } else {
                        DeliveryStatus::Pending
                    };
                    d.attempts.push(Attempt {
                        attempt: *attempt,
                        status_code: *status_code,
                        error: error.clone(),
                        latency_ms: *latency_ms,
                        response: response.clone(),
                        delivered: *delivered,
                        at: *at,
                    });
                    if !*delivered && let Some(w) = self.webhooks.get_mut(&d.partner_id) {
                        w.last_failure = Some(*at);
                        w.last_failure_reason =
                            Some(super::webhook::failure_text(*status_code, error.as_deref()));
                    }
                }
            }
            Event::DeliveryRescheduled { delivery_id, at } => {
                if let Some(d) = self.deliveries.get_mut(delivery_id) {
                    if matches!(d.status, DeliveryStatus::Delivered | DeliveryStatus::Failed)
                        && let Some(last) = d.attempts.last()
                    {
                        self.finished_deliveries
                            .remove(&(last.at, delivery_id.clone()));
                    }
                    d.revision = revision;
                    d.attempt = 0;
                    d.status = DeliveryStatus::Pending;
                }
                self.set_due(delivery_id, Some(*at));
            }
            // Only a valid document is ever activated; a log that says otherwise is reported by
            // `audit verify`, and the last good policy stays.
            Event::PolicyActivated {
                document,
                at,
                source,
                ..
            } => {
                if let Ok(p) = Policy::parse(document) {
                    if from_site_file(source) {
                        self.policy_file_sha256 = Some(p.sha256.clone());
                    }
                    self.policy = Some(Arc::new(p));
                    self.policy_document = Some((Arc::from(document.as_str()), *at));
                }
            }
            Event::SiteModeChanged {
                lockdown,
                emergency,
                ..
            } => {
                self.lockdown = *lockdown;
                self.emergency = *emergency;
            }
            Event::DoorDecided {
                door,
                reader_id,
                capture_id,
                subject,
                movement,
                verdict,
                judged,
                at,
                ..
            } => {
                // A redelivered capture (QoS 1) is recognised and ignored.
                self.seen.insert((
                    reader_id.clone(),
                    Seen::of_decision(capture_id.clone(), judged.is_some()),
                ));
                let granted = verdict.granted();
                if let (Some(s), Some((zone, dir))) = (subject, movement) {
                    self.moved(door, capture_id, zone.clone(), s, *dir);
                }
                if granted {
                    self.relay_may_be_on(door);
                }
                let pulse = self
                    .policy
                    .as_ref()
                    .and_then(|p| p.door(door))
                    .map_or(3000, |d| d.relay.pulse_ms);
                let ds = self.doors.entry(door.clone()).or_default();
                ds.last_decision = Some(LastDecision {
                    granted,
                    reason: verdict.reason().map(|r| r.as_str().to_string()),
                    at: *at,
                    reader_id: reader_id.clone(),
                    level: verdict.level().map(str::to_string),
                    subject: subject.clone(),
                });
                if granted {
                    ds.released_until = Some(
                        *at + chrono::Duration::milliseconds(i64::from(pulse))
                            + super::doors::RELEASE_GRACE,
                    );
                }
            }
            // A press that waited for the log past `EXIT_REQUEST_STALE` pulsed nothing: it
            // releases nothing either.
            Event::DoorExitRequested { door, at }
                if !super::doors::exit_request_stale(*at, rec.recorded_at) =>
            {
                self.relay_may_be_on(door);
                let pulse = self
                    .policy
                    .as_ref()
                    .and_then(|p| p.door(door))
                    .map_or(3000, |d| d.relay.pulse_ms);
                self.doors.entry(door.clone()).or_default().released_until = Some(
                    *at + chrono::Duration::milliseconds(i64::from(pulse))
                        + super::doors::RELEASE_GRACE,
                );
            }
            Event::DoorExitRequested { .. } => {}
            Event::DoorRestingChanged { door, unlocked, .. } => {
                if *unlocked {
                    self.relay_may_be_on(door);
                }
                self.doors.entry(door.clone()).or_default().resting_unlocked = *unlocked;
            }
            Event::RelaySwitched {
                door,
                device,
                coil,
                on,
                tag,
                ..
            } => {
                let at = on.then(|| self.relay_place(device, *coil));
                let ds = self.doors.entry(door.clone()).or_default();
                // ON: where it is; OFF: nothing left ON to find.
                if ds.relay != at {
                    ds.relay = at;
                }
                ds.relay_on = *on;
                ds.relay_fault = None;
                // The pulse started: the person could pass.
                if *on {
                    Passage::take(&mut ds.passages, tag);
                }
            }
            Event::RelayFailed {
                door,
                error,
                on,
                tag,
                refused,
                ..
            } => {
                let ds = self.doors.entry(door.clone()).or_default();
                ds.relay_fault = Some(error.clone());
                // Refused: the person did not pass. Otherwise unknown: the movement stands.
                if *on
                    && let Some(p) = Passage::take(&mut ds.passages, tag)
                    && *refused
                {
                    p.undo(&mut self.zone_last);
                }
            }
            Event::DeviceStatusChanged {
                device,
                up,
                error,
                at,
            } => {
                self.devices.insert(
                    device.clone(),
                    DeviceState {
                        up: *up,
                        error: error.clone(),
                        since: *at,
                    },
                );
            }
            Event::DoorContactChanged { door, open, at } => {
                let ds = self.doors.entry(door.clone()).or_default();
                if *open {
                    ds.open_since = Some(*at);
                } else {
                    ds.open_since = None;
                    ds.held_alarm = false;
                    ds.forced_alarm = false;
                }
            }
            Event::DoorForcedOpen { door, .. } => {
                self.doors.entry(door.clone()).or_default().forced_alarm = true;
            }
            Event::DoorHeldOpen { door, .. } => {
                self.doors.entry(door.clone()).or_default().held_alarm = true;
            }
            Event::UpstreamIdentifyStarted { .. }
            | Event::UpstreamIdentifyFailed { .. }
            | Event::UpstreamSessionEnded { .. } => super::upstream::evolve(self, rec),
        }
    }

    /// A grant's zone movement: recorded in `zone_last`, and held at the door as a passage
    /// until its pulse is reported. A passage anywhere for the same person and zone is
    /// superseded (undoing it later would undo this movement).
    fn moved(
        &mut self,
        door: &DoorId,
        capture_id: &str,
        zone: String,
        who: &crate::core::event::DoorSubject,
        direction: Direction,
    ) {
        let before = self.zone_last.insert(
            (zone.clone(), who.partner_id, who.external_id.clone()),
            direction,
        );
        let passage = Passage {
            capture_id: capture_id.to_string(),
            zone,
            partner_id: who.partner_id,
            external_id: who.external_id.clone(),
            direction,
            before,
        };
        passage.supersede(self.doors.values_mut().map(|ds| &mut ds.passages));
        match self.doors.get_mut(door) {
            Some(ds) => passage.hold(&mut ds.passages),
            None => {
                self.doors.insert(
                    door.clone(),
                    DoorState {
                        passages: vec![passage],
                        ..DoorState::default()
                    },
                );
            }
        }
    }

    fn set_due(&mut self, id: &str, next: Option<DateTime<Utc>>) {
        if let Some(d) = self.deliveries.get_mut(id) {
            if let Some(t) = d.next_attempt_at {
                self.due.remove(&(t, id.to_string()));
            }
            d.next_attempt_at = next;
            if let Some(t) = next {
                self.due.insert((t, id.to_string()));
            }
        }
    }

    fn see_capture_taken(&mut self, capture: &mut Option<super::event::CaptureRef>) {
        if let Some(c) = capture.take() {
            self.seen.insert((c.reader_id, Seen::Capture(c.capture_id)));
        }
    }

    fn see_capture(&mut self, capture: Option<&super::event::CaptureRef>) {
        if let Some(c) = capture {
            self.seen
                .insert((c.reader_id.clone(), Seen::Capture(c.capture_id.clone())));
        }
    }

    fn end_session(
        &mut self,
        id: SessionId,
        revision: u64,
        at: DateTime<Utc>,
        f: impl FnOnce(&mut Session),
    ) {
        if let Some(s) = self.sessions.get_mut(&id) {
            s.revision = revision;
            if s.state != SessionState::Pending {
                return;
            }
            self.deadlines.remove(&(s.expires_at, id));
            self.ended_sessions.insert((at, id));
            s.ended_at = Some(at);
            f(s);
        }
    }
}

#[cfg(test)]
mod evolve_take_tests {
    use super::*;
    use crate::core::event::{CaptureRef, DoorSubject};
    use crate::core::policy::{DenyReason, SiteMode, Verdict};

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_790_000_000 + s, 0).unwrap()
    }

    /// Every event `evolve_take` handles itself, with the branches that matter (a repeated
    /// creation, an end after an end, a capture, a subject with and without a zone movement),
    /// plus a few it hands to `evolve`.
    fn log() -> Vec<Recorded> {
        let partner = PartnerId::from_random([1; 16]);
        let sid = |n: u8| SessionId::from_random([n; 16]);
        let created = |n: u8| Event::SessionCreated {
            session_id: sid(n),
            partner_id: Some(partner),
            reader_id: (n == 3).then(|| ReaderId("r-3".into())),
            kind: SessionKind::Identify,
            language: Language::En,
            token_hash: SecretHash(format!("{n:064x}")),
            external_id: (n == 2).then(|| ExternalId("e-2".into())),
            username: None,
            metadata: (n == 2).then(|| serde_json::json!({"a": 1})),
            created_at: at(i64::from(n)),
            expires_at: at(900 + i64::from(n)),
            trigger_id: None,
        };
        let capture = |id: &str| CaptureRef {
            reader_id: ReaderId("r-1".into()),
            capture_id: id.into(),
            quality: 0.9,
            similarity: Some(0.95),
            judged: None,
        };
        let subject = |e: &str| DoorSubject {
            partner_id: partner,
            partner_name: "Acme".into(),
            external_id: ExternalId(e.into()),
            metadata: Some(serde_json::json!({"access_level": "standard"})),
        };
        let decided = |n: i64, subj: Option<DoorSubject>, movement, verdict| Event::DoorDecided {
            door: DoorId(if n % 2 == 0 { "main" } else { "lab" }.into()),
            reader_id: ReaderId("lobby-1".into()),
            capture_id: format!("cap-{n}"),
            subject: subj,
            erased: false,
            similarity: Some(0.9),
            quality: None,
            judged: None,
            policy: "p".into(),
            mode: SiteMode::Normal,
            last_in_zone: None,
            movement,
            unopenable: false,
            verdict,
            at: at(n),
        };
        let granted = || Verdict::Granted {
            level: "standard".into(),
            passback_violation: false,
        };
        let events = vec![
            (
                "partner-1",
                Event::PartnerCreated {
                    partner_id: partner,
                    name: "Acme".into(),
                    api_key_hash: SecretHash("00".into()),
                    at: at(0),
                },
            ),
            ("session-1", created(1)),
            ("session-2", created(2)),
            ("session-3", created(3)),
            ("session-1", created(1)),
            (
                "session-1",
                Event::SessionCompleted {
                    session_id: sid(1),
                    external_id: Some(ExternalId("e-1".into())),
                    capture: Some(capture("c-1")),
                    at: at(10),
                },
            ),
            (
                "session-1",
                Event::SessionFailed {
                    session_id: sid(1),
                    reason: FailReason::NoMatch,
                    capture: None,
                    at: at(11),
                },
            ),
            (
                "session-2",
                Event::SessionFailed {
                    session_id: sid(2),
                    reason: FailReason::LowQuality,
                    capture: Some(capture("c-2")),
                    at: at(12),
                },
            ),
            (
                "session-3",
                Event::SessionCompleted {
                    session_id: sid(3),
                    external_id: None,
                    capture: None,
                    at: at(13),
                },
            ),
            (
                "session-9",
                Event::SessionCompleted {
                    session_id: sid(9),
                    external_id: None,
                    capture: None,
                    at: at(14),
                },
            ),
            (
                "door-main",
                decided(
                    20,
                    Some(subject("e-1")),
                    Some(("building".to_string(), Direction::Entry)),
                    granted(),
                ),
            ),
            (
                "door-lab",
                decided(
                    21,
                    Some(subject("e-2")),
                    None,
                    Verdict::Denied {
                        reason: DenyReason::NoAccessLevel,
                        level: Some("office".into()),
                    },
                ),
            ),
            (
                "door-main",
                decided(
                    22,
                    None,
                    None,
                    Verdict::Denied {
                        reason: DenyReason::NoMatch,
                        level: None,
                    },
                ),
            ),
            (
                "door-main",
                decided(
                    24,
                    Some(subject("e-1")),
                    Some(("building".to_string(), Direction::Exit)),
                    granted(),
                ),
            ),
            (
                "door-lab",
                Event::DoorExitRequested {
                    door: DoorId("lab".into()),
                    at: at(30),
                },
            ),
            (
                "session-4",
                Event::SessionExpired {
                    session_id: sid(4),
                    at: at(31),
                },
            ),
        ];
        let mut revisions: HashMap<&str, u64> = HashMap::new();
        events
            .into_iter()
            .enumerate()
            .map(|(i, (stream, event))| {
                let r = revisions.entry(stream).or_insert(0);
                *r += 1;
                Recorded {
                    position: i as u64 + 1,
                    stream: stream.into(),
                    revision: *r - 1,
                    recorded_at: at(i as i64),
                    event,
                    prev_hash: [0; 32],
                    hash: [0; 32],
                }
            })
            .collect()
    }

    #[test]
    fn evolve_take_gives_the_state_evolve_gives() {
        let (mut by_ref, mut owned) = (State::default(), State::default());
        for mut rec in log() {
            by_ref.evolve(&rec);
            owned.evolve_take(&mut rec);
            assert_eq!(
                crate::core::snapshot::encode(&by_ref),
                crate::core::snapshot::encode(&owned)
            );
        }
        assert_eq!(by_ref.deadlines, owned.deadlines);
        assert_eq!(owned.position(), 16);
        assert_eq!(owned.zone_last.len(), 1);
        assert!(owned.doors.values().all(|d| d.last_decision.is_some()));
    }

    /// An erasure ends the person's zone presence only when it says so (`clears_zones`, set by
    /// every erasure decided now); one logged before that folds as it did, so the door
    /// decisions recorded after it still verify.
    #[test]
    fn an_erasure_clears_the_persons_zone_presence_only_when_it_says_so() {
        let erase = |clears_zones| Recorded {
            position: 17,
            stream: "user-e-1".into(),
            revision: 7,
            recorded_at: DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
            event: Event::UserErased {
                partner_id: PartnerId::from_random([1; 16]),
                external_id: ExternalId("e-1".into()),
                at: DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
                clears_zones,
            },
            prev_hash: [0; 32],
            hash: [0; 32],
        };
        for (clears, left) in [(false, 1), (true, 0)] {
            let mut s = State::default();
            for rec in log() {
                s.evolve(&rec);
            }
            assert_eq!(s.zone_last.len(), 1);
            s.evolve(&erase(clears));
            assert_eq!(s.zone_last.len(), left, "clears_zones = {clears}");
        }
    }
}

/// A grant's zone movement held at its door until its pulse is reported, undone when the
/// board refused the pulse (`DoorState::passages`).
#[cfg(test)]
mod passage_tests {
    use super::*;
    use crate::core::event::DoorSubject;
    use crate::core::policy::{SiteMode, Verdict};
    use Direction::{Entry, Exit};

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    fn who(e: &str) -> DoorSubject {
        DoorSubject {
            partner_id: PartnerId::from_random([1; 16]),
            partner_name: "Acme".into(),
            external_id: ExternalId(e.into()),
            metadata: None,
        }
    }

    /// `e-N` granted at `door` (capture `capture`), moving `dir` in zone "building".
    fn grant(door: &str, capture: &str, e: &str, dir: Direction) -> Event {
        Event::DoorDecided {
            door: DoorId(door.into()),
            reader_id: ReaderId(format!("{door}-reader")),
            capture_id: capture.into(),
            subject: Some(who(e)),
            erased: false,
            similarity: Some(0.9),
            quality: None,
            judged: None,
            policy: "p".into(),
            mode: SiteMode::Normal,
            last_in_zone: None,
            movement: Some(("building".into(), dir)),
            unopenable: false,
            verdict: Verdict::Granted {
                level: "standard".into(),
                passback_violation: false,
            },
            at: at(0),
        }
    }

    fn failed(door: &str, tag: &str, on: bool, refused: bool) -> Event {
        Event::RelayFailed {
            door: DoorId(door.into()),
            device: "board-1".into(),
            coil: 0,
            on,
            error: "device exception".into(),
            tag: tag.into(),
            refused,
            at: at(0),
        }
    }

    fn switched(door: &str, tag: &str) -> Event {
        Event::RelaySwitched {
            door: DoorId(door.into()),
            device: "board-1".into(),
            coil: 0,
            on: true,
            tag: tag.into(),
            at: at(0),
        }
    }

    fn erased(e: &str) -> Event {
        Event::UserErased {
            partner_id: who(e).partner_id,
            external_id: who(e).external_id,
            at: at(0),
            clears_zones: true,
        }
    }

    /// Folds `events` into a fresh state by both `evolve` and `evolve_take`, checking after
    /// each that the two agree and that the snapshot gives the state back; after event `i`,
    /// the last movements of `e-1` and `e-2` must be `want[i]`.
    fn fold(events: Vec<Event>, want: &[(Option<Direction>, Option<Direction>)]) {
        assert_eq!(events.len(), want.len());
        let (mut by_ref, mut owned) = (State::default(), State::default());
        for (i, (event, want)) in events.into_iter().zip(want).enumerate() {
            let mut rec = Recorded {
                position: i as u64 + 1,
                stream: format!("s-{i}"),
                revision: 0,
                recorded_at: at(i as i64),
                event,
                prev_hash: [0; 32],
                hash: [0; 32],
            };
            by_ref.evolve(&rec);
            owned.evolve_take(&mut rec);
            let bytes = crate::core::snapshot::encode(&by_ref);
            assert_eq!(bytes, crate::core::snapshot::encode(&owned), "event {i}");
            let back = crate::core::snapshot::decode(&bytes, Rules::default()).expect("decodes");
            assert_eq!(back, by_ref, "event {i}: the snapshot gives the state back");
            let last = |e: &str| {
                let key = (
                    "building".to_string(),
                    who(e).partner_id,
                    who(e).external_id,
                );
                by_ref.zone_last.get(&key).copied()
            };
            assert_eq!((last("e-1"), last("e-2")), *want, "after event {i}");
        }
    }

    #[test]
    fn a_refused_pulse_undoes_its_grants_movement() {
        fold(
            vec![
                grant("main", "c-1", "e-1", Entry),
                // Another pulse's tag, a failed OFF, the exit button's pulse: no undo.
                failed("main", "c-9", true, true),
                failed("main", "c-1", false, true),
                failed("main", "exit-request", true, true),
                // Refused: back to no movement at all.
                failed("main", "c-1", true, true),
                // Confirmed: a later refusal with its tag changes nothing.
                grant("main", "c-2", "e-1", Entry),
                switched("main", "c-2"),
                failed("main", "c-2", true, true),
                // Failed without knowing (a timeout): the movement stands, and a later
                // refusal of the same pulse is no longer matched.
                grant("main", "c-3", "e-1", Exit),
                failed("main", "c-3", true, false),
                failed("main", "c-3", true, true),
                // Refused with a movement before it: back to that one.
                grant("main", "c-4", "e-1", Entry),
                failed("main", "c-4", true, true),
            ],
            &[
                (Some(Entry), None),
                (Some(Entry), None),
                (Some(Entry), None),
                (Some(Entry), None),
                (None, None),
                (Some(Entry), None),
                (Some(Entry), None),
                (Some(Entry), None),
                (Some(Exit), None),
                (Some(Exit), None),
                (Some(Exit), None),
                (Some(Entry), None),
                (Some(Exit), None),
            ],
        );
    }

    /// Two grants at one door before either pulse is reported (review, session 18: one slot
    /// per door lost the first): each refusal undoes its own grant's movement.
    #[test]
    fn every_unreported_grant_at_a_door_is_held() {
        fold(
            vec![
                grant("main", "c-1", "e-1", Entry),
                grant("main", "c-2", "e-2", Entry),
                failed("main", "c-1", true, true),
                failed("main", "c-2", true, true),
            ],
            &[
                (Some(Entry), None),
                (Some(Entry), Some(Entry)),
                (None, Some(Entry)),
                (None, None),
            ],
        );
        // A reader reusing a capture id: the report with that tag is the newest grant's.
        fold(
            vec![
                grant("main", "c-1", "e-1", Entry),
                grant("main", "c-1", "e-2", Entry),
                failed("main", "c-1", true, true),
            ],
            &[
                (Some(Entry), None),
                (Some(Entry), Some(Entry)),
                (Some(Entry), None),
            ],
        );
        // At most MAX_PASSAGES are held: the oldest goes.
        let mut events: Vec<Event> = (0..=MAX_PASSAGES)
            .map(|i| grant("main", &format!("c-{i}"), &format!("p-{i}"), Entry))
            .collect();
        events.push(failed("main", "c-0", true, true));
        let mut s = State::default();
        for (i, event) in events.into_iter().enumerate() {
            s.evolve(&Recorded {
                position: i as u64 + 1,
                stream: format!("s-{i}"),
                revision: 0,
                recorded_at: at(0),
                event,
                prev_hash: [0; 32],
                hash: [0; 32],
            });
        }
        assert_eq!(s.doors[&DoorId("main".into())].passages.len(), MAX_PASSAGES);
        assert_eq!(
            s.zone_last.len(),
            MAX_PASSAGES + 1,
            "c-0 was no longer held"
        );
    }

    #[test]
    fn a_refusal_undoes_nothing_that_came_after_its_grant() {
        fold(
            vec![
                grant("main", "c-1", "e-1", Entry),
                switched("main", "c-1"),
                // A later movement of the same person at another door supersedes the passage
                // (the same direction: soft anti-passback grants one, flagged).
                grant("main", "c-2", "e-1", Exit),
                grant("lab", "c-3", "e-1", Exit),
                failed("main", "c-2", true, true),
                // An erasure that cleared their zones is not undone by a refusal after it.
                grant("main", "c-4", "e-1", Exit),
                erased("e-1"),
                failed("main", "c-4", true, true),
            ],
            &[
                (Some(Entry), None),
                (Some(Entry), None),
                (Some(Exit), None),
                (Some(Exit), None),
                (Some(Exit), None),
                (Some(Exit), None),
                (None, None),
                (None, None),
            ],
        );
    }
}

#[cfg(test)]
mod retention_tests {
    use super::*;
    use crate::core::event::stream;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_790_000_000 + s, 0).unwrap()
    }

    /// Folds events, each recorded at the given second, with consecutive positions.
    struct Log {
        state: State,
        position: u64,
        revisions: HashMap<String, u64>,
    }

    impl Log {
        fn new(rules: Rules) -> Log {
            let mut state = State::new(rules);
            state.collect_forgotten();
            Log {
                state,
                position: 0,
                revisions: HashMap::new(),
            }
        }
        fn fold(&mut self, second: i64, stream: String, event: Event) -> Recorded {
            self.position += 1;
            let r = self.revisions.entry(stream.clone()).or_insert(0);
            let rec = Recorded {
                position: self.position,
                stream,
                revision: *r,
                recorded_at: at(second),
                event,
                prev_hash: [0; 32],
                hash: [0; 32],
            };
            *r += 1;
            self.state.evolve(&rec);
            rec
        }
    }

    fn partner() -> PartnerId {
        PartnerId::from_random([7; 16])
    }
    fn sid(n: u8) -> SessionId {
        SessionId::from_random([n; 16])
    }
    fn created(n: u8, second: i64) -> Event {
        Event::SessionCreated {
            session_id: sid(n),
            partner_id: Some(partner()),
            reader_id: None,
            kind: SessionKind::Identify,
            language: Language::En,
            token_hash: SecretHash(format!("{n:064x}")),
            external_id: None,
            username: None,
            metadata: None,
            created_at: at(second),
            expires_at: at(second + 900),
            trigger_id: None,
        }
    }
    fn cancelled(n: u8, second: i64) -> Event {
        Event::SessionFailed {
            session_id: sid(n),
            reason: FailReason::Cancelled,
            capture: None,
            at: at(second),
        }
    }
    fn rules(sessions: i64, deliveries: i64) -> Rules {
        Rules {
            session_retention: Duration::seconds(sessions),
            delivery_retention: Duration::seconds(deliveries),
            ..Rules::default()
        }
    }
    fn tick(log: &mut Log, second: i64) {
        log.fold(
            second,
            stream::SITE.into(),
            Event::SiteModeChanged {
                lockdown: false,
                emergency: false,
                at: at(second),
            },
        );
    }

    #[test]
    fn every_rotated_out_secret_signs_until_its_own_end() {
        let mut log = Log::new(rules(3600, 3600));
        let st = stream::webhook(partner());
        log.fold(
            0,
            st.clone(),
            Event::WebhookConfigured {
                partner_id: partner(),
                url: "https://example.com/hook".into(),
                secret: "s0".into(),
                events: vec!["failed".into()],
                at: at(0),
            },
        );
        let day = 24 * 3600;
        let rotate = |log: &mut Log, second: i64, secret: &str| {
            log.fold(
                second,
                st.clone(),
                Event::WebhookSecretRotated {
                    partner_id: partner(),
                    secret: secret.into(),
                    previous_until: at(second + day),
                    at: at(second),
                },
            );
        };
        rotate(&mut log, 10, "s1");
        rotate(&mut log, 12, "s2");
        let w = log.state.webhook(partner()).unwrap().clone();
        assert_eq!(w.signing_secrets(at(13)), ["s2", "s1", "s0"]);
        // s0's 24 h end first (it was rotated out at 10 s), then s1's.
        assert_eq!(w.signing_secrets(at(10 + day - 1)), ["s2", "s1", "s0"]);
        assert_eq!(w.signing_secrets(at(10 + day)), ["s2", "s1"]);
        assert_eq!(w.signing_secrets(at(12 + day)), ["s2"]);
        // A snapshot keeps them all.
        let back = crate::core::snapshot::decode(
            &crate::core::snapshot::encode(&log.state),
            rules(3600, 3600),
        )
        .unwrap();
        assert_eq!(back, log.state);
        assert_eq!(
            back.webhook(partner()).unwrap().signing_secrets(at(13)),
            ["s2", "s1", "s0"]
        );
        // A rotation drops what has expired: the state holds at most a day of rotations.
        rotate(&mut log, 11 + day, "s3");
        let w = log.state.webhook(partner()).unwrap();
        assert_eq!(w.previous.as_ref().map(|p| p.0.as_str()), Some("s2"));
        assert_eq!(w.older, [("s1".to_string(), at(12 + day))]);
        assert_eq!(w.signing_secrets(at(11 + day)), ["s3", "s2", "s1"]);
    }

    #[test]
    fn an_ended_session_is_forgotten_once_its_retention_has_passed() {
        let mut log = Log::new(rules(60, 60));
        log.fold(0, stream::session(sid(1)), created(1, 0));
        log.fold(1, stream::session(sid(2)), created(2, 1));
        log.fold(10, stream::session(sid(1)), cancelled(1, 10));
        let token = SecretHash(format!("{:064x}", 1));
        assert!(log.state.session_by_token_hash(&token).is_some());
        // 69 s after the end: still there.
        tick(&mut log, 69);
        assert!(log.state.session(sid(1)).is_some());
        assert!(log.state.take_forgotten().is_empty());
        // 70 s: gone, with its token and its stream's revision; the pending one stays.
        tick(&mut log, 70);
        assert!(log.state.session(sid(1)).is_none());
        assert!(log.state.session_by_token_hash(&token).is_none());
        assert_eq!(log.state.revision(&stream::session(sid(1))), None);
        assert_eq!(log.state.take_forgotten(), vec![stream::session(sid(1))]);
        assert!(log.state.take_forgotten().is_empty(), "taken once");
        assert!(log.state.session(sid(2)).is_some(), "pending sessions stay");
        // It expires later and is forgotten a retention after that.
        log.fold(
            901,
            stream::session(sid(2)),
            Event::SessionExpired {
                session_id: sid(2),
                at: at(901),
            },
        );
        tick(&mut log, 960);
        assert!(log.state.session(sid(2)).is_some());
        tick(&mut log, 961);
        assert!(log.state.session(sid(2)).is_none());
        assert!(log.state.sessions.is_empty() && log.state.session_by_token.is_empty());
    }

    #[test]
    fn delivered_deliveries_go_after_their_retention_failed_and_pending_ones_stay() {
        let mut log = Log::new(rules(3600, 100));
        let queued = |id: &str| Event::DeliveryQueued {
            delivery_id: id.into(),
            partner_id: partner(),
            event: "session.failed".into(),
            session_id: None,
            body: "{}".into(),
            held: false,
            at: at(0),
        };
        let attempted =
            |id: &str, delivered: bool, next: Option<i64>, second: i64| Event::DeliveryAttempted {
                delivery_id: id.into(),
                attempt: 1,
                status_code: Some(if delivered { 204 } else { 500 }),
                error: None,
                latency_ms: 3,
                response: String::new(),
                delivered,
                next_attempt_at: next.map(at),
                at: at(second),
            };
        for id in ["ok", "failed", "pending", "again"] {
            log.fold(0, stream::delivery(id), queued(id));
        }
        log.fold(1, stream::delivery("ok"), attempted("ok", true, None, 1));
        log.fold(
            2,
            stream::delivery("failed"),
            attempted("failed", false, None, 2),
        );
        log.fold(
            3,
            stream::delivery("pending"),
            attempted("pending", false, Some(500), 3),
        );
        log.fold(
            4,
            stream::delivery("again"),
            attempted("again", false, None, 4),
        );
        log.fold(
            50,
            stream::delivery("again"),
            Event::DeliveryRescheduled {
                delivery_id: "again".into(),
                at: at(50),
            },
        );
        tick(&mut log, 102);
        let left: std::collections::BTreeSet<&str> =
            log.state.deliveries.keys().map(String::as_str).collect();
        // The failed one stays, however old, until it is redelivered.
        assert_eq!(
            left,
            std::collections::BTreeSet::from(["again", "failed", "pending"])
        );
        assert_eq!(log.state.take_forgotten(), vec![stream::delivery("ok")]);
        tick(&mut log, 100_000);
        assert!(log.state.delivery("failed").is_some());
        // The redelivered one ends again and is forgotten a retention after its new end.
        log.fold(
            60,
            stream::delivery("again"),
            attempted("again", true, None, 60),
        );
        tick(&mut log, 159);
        assert!(log.state.delivery("again").is_some());
        tick(&mut log, 160);
        assert!(log.state.delivery("again").is_none());
        assert!(log.state.delivery("pending").is_some());
    }

    #[test]
    fn upstream_sessions_go_a_retention_after_they_end_or_expire() {
        use crate::core::event::UpstreamOutcome;
        use crate::core::upstream::{RemoteEnd, ended};
        let mut log = Log::new(rules(3600, 60));
        let id = |n: u8| UpstreamSessionId(format!("remote-{n}"));
        let started =
            |n: u8, expires: Option<i64>, skew: Option<i64>| Event::UpstreamIdentifyStarted {
                session_id: id(n),
                reader_id: ReaderId("lobby-1".into()),
                trigger_id: format!("trg-{n}"),
                expires_at: expires.map(at),
                clock_skew_s: skew,
                at: at(0),
            };
        let webhook = |n: u8| RemoteEnd {
            session_id: id(n),
            webhook_id: format!("msg_{n}"),
            outcome: UpstreamOutcome::Completed,
            external_id: None,
            username: None,
            metadata: None,
            fail_reason: None,
            ended_at: at(100),
            partner_id: PartnerId::from_random([9; 16]),
            partner_name: "upstream".into(),
        };
        // 1 ends at 100 s; 2 never ends and expires at 900 s on a remote clock 60 s ahead of
        // ours (840 s here); 3 never ends and its remote gave no expiry (one hour assumed).
        log.fold(0, stream::upstream(&id(1)), started(1, Some(900), None));
        log.fold(0, stream::upstream(&id(2)), started(2, Some(900), Some(60)));
        log.fold(0, stream::upstream(&id(3)), started(3, None, None));
        log.fold(
            100,
            stream::upstream(&id(1)),
            Event::UpstreamSessionEnded {
                session_id: id(1),
                reader_id: ReaderId("lobby-1".into()),
                outcome: UpstreamOutcome::Completed,
                webhook_id: "msg_1".into(),
                external_id: None,
                username: None,
                metadata: None,
                fail_reason: None,
                ended_at: at(100),
                late: false,
                at: at(100),
            },
        );
        assert!(log.state.upstream_binding(&id(1)).is_none());
        // A snapshot in between keeps when each one goes.
        let bytes = crate::core::snapshot::encode(&log.state);
        let mut decoded = crate::core::snapshot::decode(&bytes, log.state.rules).unwrap();
        assert!(decoded == log.state);
        decoded.collect_forgotten();
        log.state = decoded;

        // Within the retention, a repeated webhook is still a duplicate (a 2xx to the remote).
        tick(&mut log, 3699);
        assert_eq!(log.state.revision(&stream::upstream(&id(1))), Some(1));
        let again = ended(&log.state, &webhook(1), at(3699)).unwrap();
        assert_eq!(again.outcome, crate::core::decider::Outcome::Duplicate);
        tick(&mut log, 3700);
        assert_eq!(log.state.revision(&stream::upstream(&id(1))), None);
        assert_eq!(log.state.take_forgotten(), vec![stream::upstream(&id(1))]);
        assert_eq!(
            ended(&log.state, &webhook(1), at(3700)).unwrap_err(),
            crate::core::decider::Rejection::NotFound
        );

        tick(&mut log, 840 + 3599);
        assert!(log.state.upstream_binding(&id(2)).is_some());
        tick(&mut log, 840 + 3600);
        assert!(log.state.upstream_binding(&id(2)).is_none());
        assert_eq!(log.state.take_forgotten(), vec![stream::upstream(&id(2))]);

        tick(&mut log, 3600 + 3599);
        assert!(log.state.upstream_binding(&id(3)).is_some());
        tick(&mut log, 3600 + 3600);
        assert!(log.state.upstream.is_empty() && log.state.upstream_by_time.is_empty());
        assert_eq!(log.state.take_forgotten(), vec![stream::upstream(&id(3))]);
    }

    /// Sessions and stream revisions travel in the snapshot's binary sections: every field
    /// comes back (optionals set and unset, a nanosecond instant, an ended session), and damaged
    /// bytes are an error, never a panic.
    #[test]
    fn snapshot_binary_sections_round_trip_and_refuse_damage() {
        let mut log = Log::new(rules(3600, 3600));
        log.fold(
            1,
            stream::session(sid(1)),
            Event::SessionCreated {
                session_id: sid(1),
                partner_id: Some(partner()),
                reader_id: Some(ReaderId("lobby-1".into())),
                kind: SessionKind::Enroll,
                language: Language::Kk,
                token_hash: SecretHash(format!("{:064x}", 1)),
                external_id: Some(ExternalId("емп-42".into())),
                username: Some("Aigerim".into()),
                metadata: Some(serde_json::json!({"floor": 3, "tags": ["a", 1.5, null]})),
                created_at: at(1) + Duration::nanoseconds(123_456_789),
                expires_at: at(901),
                trigger_id: None,
            },
        );
        log.fold(2, stream::session(sid(2)), created(2, 2));
        log.fold(3, stream::session(sid(2)), cancelled(2, 3));
        let bytes = crate::core::snapshot::encode(&log.state);
        let decoded = crate::core::snapshot::decode(&bytes, log.state.rules).unwrap();
        assert!(decoded == log.state);
        let one = decoded.session(sid(1)).unwrap();
        assert_eq!(one.created_at.timestamp_subsec_nanos(), 123_456_789);
        assert_eq!(
            one.reader_armed_at,
            Some(one.created_at),
            "a bound reader's hold"
        );
        assert_eq!(decoded.session(sid(2)).unwrap().reader_armed_at, None);
        assert_eq!(
            one.metadata,
            Some(serde_json::json!({"floor": 3, "tags": ["a", 1.5, null]}))
        );
        assert_eq!(
            decoded.session(sid(2)).unwrap().fail_reason,
            Some(FailReason::Cancelled)
        );

        for cut in 0..bytes.len() {
            assert!(
                crate::core::snapshot::decode(&bytes[..cut], log.state.rules).is_err(),
                "a snapshot cut at byte {cut} of {} decoded",
                bytes.len()
            );
        }
        // The first session's kind: after the count (8), its id (16) and its partner (1 + 16).
        let mut damaged = bytes.clone();
        damaged[41] = 9;
        let err = crate::core::snapshot::decode(&damaged, log.state.rules)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("unknown session kind"), "{err}");
        // A count larger than the bytes could hold is refused before anything is reserved.
        let mut damaged = bytes.clone();
        damaged[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(crate::core::snapshot::decode(&damaged, log.state.rules).is_err());
    }

    #[test]
    fn idempotency_keys_go_after_24_hours_and_their_stream_with_them() {
        let mut log = Log::new(rules(48 * 3600, 60));
        let used = |second: i64| Event::IdempotencyKeyUsed {
            partner_id: partner(),
            key: "k-1".into(),
            fingerprint: "f".into(),
            session_id: sid(1),
            at: at(second),
        };
        let key_stream = stream::idempotency(partner(), "k-1");
        log.fold(0, stream::session(sid(1)), created(1, 0));
        log.fold(0, key_stream.clone(), used(0));
        tick(&mut log, 86_399);
        assert!(
            log.state
                .idempotency
                .contains_key(&(partner(), "k-1".into()))
        );
        assert_eq!(log.state.revision(&key_stream), Some(0));
        tick(&mut log, 86_400);
        assert!(log.state.idempotency.is_empty() && log.state.idempotency_by_time.is_empty());
        assert_eq!(log.state.take_forgotten(), vec![key_stream.clone()]);
        // A reuse starts the stream again, and its revision is kept (not reported forgotten).
        log.revisions.remove(&key_stream);
        log.fold(90_000, key_stream.clone(), used(90_000));
        assert_eq!(log.state.revision(&key_stream), Some(0));
        assert!(log.state.take_forgotten().is_empty());
    }

    #[test]
    fn a_stream_forgotten_and_seen_again_in_the_same_fold_is_not_reported() {
        let mut log = Log::new(rules(10, 10));
        log.fold(0, stream::session(sid(1)), created(1, 0));
        log.fold(1, stream::session(sid(1)), cancelled(1, 1));
        // The event that makes the state forget session 1 is itself on session 1's stream (a
        // forged or late event): the stream is known again, so the store must keep its head.
        log.fold(
            20,
            stream::session(sid(1)),
            Event::SessionExpired {
                session_id: sid(1),
                at: at(20),
            },
        );
        assert!(log.state.session(sid(1)).is_none());
        assert_eq!(log.state.revision(&stream::session(sid(1))), Some(2));
        assert!(log.state.take_forgotten().is_empty());
    }

    #[test]
    fn seen_captures_are_remembered_for_one_to_two_windows_and_across_a_pause() {
        let mut log = Log::new(Rules::default());
        let key = |id: &str| (ReaderId("r-1".into()), Seen::Capture(id.to_string()));
        let rejected = |id: &str, second: i64| Event::CaptureRejected {
            reader_id: ReaderId("r-1".into()),
            capture_id: id.into(),
            reason: crate::core::event::CaptureRejection::NoDoor,
            quality: None,
            judged: None,
            at: at(second),
        };
        let w = CAPTURE_MEMORY.num_seconds();
        log.fold(0, "reader-r-1".into(), rejected("a", 0));
        log.fold(w - 1, "reader-r-1".into(), rejected("b", w - 1));
        assert!(log.state.seen.contains(&key("a")) && log.state.seen.contains(&key("b")));
        // One window on: both still remembered (the previous generation).
        log.fold(w, "reader-r-1".into(), rejected("c", w));
        assert!(log.state.seen.contains(&key("a")) && log.state.seen.contains(&key("c")));
        // Two windows on: the first generation is gone.
        log.fold(2 * w, "reader-r-1".into(), rejected("d", 2 * w));
        assert!(!log.state.seen.contains(&key("a")) && !log.state.seen.contains(&key("b")));
        assert!(log.state.seen.contains(&key("c")) && log.state.seen.contains(&key("d")));
        // A long silence (the gateway down for hours) turns the generations over once: what
        // was handled last before it is still known for a window after it, when the broker
        // redelivers what the outage left unacknowledged.
        tick(&mut log, 10 * w);
        assert!(!log.state.seen.contains(&key("c")));
        assert!(
            log.state.seen.contains(&key("d")),
            "the last ids before the pause"
        );
        tick(&mut log, 11 * w);
        assert!(log.state.seen.is_empty());
    }

    #[test]
    fn a_snapshot_taken_between_ends_and_forgetting_folds_on_to_the_same_state() {
        use crate::core::snapshot::{decode, encode};
        let r = rules(30, 30);
        let mut full = Log::new(r);
        let mut recs = vec![];
        for n in 1..=6u8 {
            let s = i64::from(n) * 10;
            recs.push(full.fold(s, stream::session(sid(n)), created(n, s)));
            recs.push(full.fold(s + 5, stream::session(sid(n)), cancelled(n, s + 5)));
        }
        for cut in 0..recs.len() {
            let mut part = State::new(r);
            for rec in &recs[..cut] {
                part.evolve(rec);
            }
            let mut restored = decode(&encode(&part), r).unwrap();
            assert!(restored == part, "decode(encode) at {cut}");
            for rec in &recs[cut..] {
                restored.evolve(rec);
            }
            let mut expected = full.state.clone();
            expected.forgotten = None;
            assert!(restored == expected, "snapshot at {cut} then the tail");
        }
        // Another retention: the snapshot is refused (a full fold keeps other sessions).
        assert!(decode(&encode(&full.state), rules(31, 30)).is_err());
    }

    /// The last policy activated from the site file (start-up, SIGHUP) is remembered through
    /// later activations from elsewhere, and through a snapshot.
    #[test]
    fn the_last_site_file_policy_is_remembered_across_other_activations_and_snapshots() {
        use crate::core::snapshot::{decode, encode};
        let doc = |level: &str| {
            format!(
                "timezone = \"UTC\"\npartners = [\"*\"]\n[schedules]\nalways = [\"* * * * * *\"]\n\
                 [[levels]]\nname = \"{level}\"\ndoors = []\nschedule = \"always\"\n"
            )
        };
        let sha = |d: &str| Policy::parse(d).unwrap().sha256;
        let mut log = Log::new(Rules::default());
        let mut activate = |second: i64, d: &str, source: &str| {
            log.fold(
                second,
                stream::POLICY.into(),
                Event::PolicyActivated {
                    sha256: sha(d),
                    document: d.to_string(),
                    source: source.into(),
                    at: at(second),
                },
            );
        };
        let (a, b, c) = (doc("a"), doc("b"), doc("c"));
        activate(1, &a, "startup");
        activate(2, &b, "admin");
        activate(3, &c, "scenario");
        let state = log.state.clone();
        assert_eq!(state.policy_file_sha256, Some(sha(&a)));
        assert_eq!(
            state.policy.as_ref().map(|p| p.sha256.clone()),
            Some(sha(&c))
        );
        let restored = decode(&encode(&state), Rules::default()).unwrap();
        assert_eq!(restored.policy_file_sha256, Some(sha(&a)));
        assert!(restored == state);
        log.fold(
            4,
            stream::POLICY.into(),
            Event::PolicyActivated {
                sha256: sha(&b),
                document: b.clone(),
                source: "sighup".into(),
                at: at(4),
            },
        );
        assert_eq!(log.state.policy_file_sha256, Some(sha(&b)));
    }
}

/// The duplicate memory keeps trigger ids apart from capture ids, whatever their text: a
/// capture may be named `trigger:X`, the tag of trigger `X`'s door decision.
#[cfg(test)]
mod seen_tests {
    use super::*;
    use crate::core::command::{Capture, Command};
    use crate::core::decider::{Decision, Outcome, decide};
    use crate::core::event::{Judged, stream};
    use crate::core::policy::{DenyReason, SiteMode, Verdict};
    use crate::core::upstream::{IdentifyAnswer, identify};

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_790_000_000 + s, 0).unwrap()
    }
    fn reader() -> ReaderId {
        ReaderId("r2".into())
    }

    /// Folds with `evolve` and with `evolve_take`, and checks that both, and a snapshot of
    /// them, remember the same.
    #[derive(Default)]
    struct Log {
        by_ref: State,
        owned: State,
        position: u64,
    }

    impl Log {
        fn fold(&mut self, stream: String, event: Event, second: i64) {
            self.position += 1;
            let revision = self.by_ref.revision(&stream).map_or(0, |r| r + 1);
            let mut rec = Recorded {
                position: self.position,
                stream,
                revision,
                recorded_at: at(second),
                event,
                prev_hash: [0; 32],
                hash: [0; 32],
            };
            self.by_ref.evolve(&rec);
            self.owned.evolve_take(&mut rec);
            assert_eq!(self.by_ref.seen, self.owned.seen);
            let bytes = crate::core::snapshot::encode(&self.by_ref);
            let restored = crate::core::snapshot::decode(&bytes, self.by_ref.rules).unwrap();
            assert_eq!(restored.seen, self.by_ref.seen);
        }
        /// Folds what `d` appends; true when `d` found its input already handled.
        fn apply(&mut self, d: Decision, second: i64) -> bool {
            if d.outcome == Outcome::Duplicate {
                return true;
            }
            for a in d.appends {
                for e in a.events {
                    self.fold(a.stream.clone(), e, second);
                }
            }
            false
        }
        /// A door scan (no session) `capture_id` at r2: true when it is a duplicate.
        fn capture(&mut self, capture_id: &str, second: i64) -> bool {
            let cmd = Command::Capture(Capture {
                reader_id: reader(),
                capture_id: capture_id.into(),
                session: None,
                quality: 0.9,
                liveness: true,
                best: None,
                sealed: None,
            });
            let d = decide(&self.by_ref, &cmd, at(second)).unwrap();
            self.apply(d, second)
        }
        /// A site session's trigger at r2: true when it is a duplicate.
        fn trigger(&mut self, trigger_id: &str, second: i64) -> bool {
            let n = self.position + 1;
            let cmd = Command::Trigger {
                reader_id: reader(),
                trigger_id: trigger_id.into(),
                session_id: SessionId::from_random([n as u8; 16]),
                token_hash: SecretHash(format!("{n:064x}")),
                ttl: Duration::minutes(5),
                language: Language::En,
            };
            let d = decide(&self.by_ref, &cmd, at(second)).unwrap();
            self.apply(d, second)
        }
        /// An upstream mode trigger whose remote call failed: true when it is a duplicate.
        fn upstream_trigger(&mut self, trigger_id: &str, second: i64) -> bool {
            let answer = IdentifyAnswer::Failed {
                status_code: Some(503),
                error: "down".into(),
            };
            let d = identify(&self.by_ref, &reader(), trigger_id, &answer, at(second)).unwrap();
            self.apply(d, second)
        }
        fn decided(&mut self, capture_id: &str, judged: Option<Judged>, second: i64) {
            let door = crate::core::policy::DoorId("main".into());
            let e = Event::DoorDecided {
                door: door.clone(),
                reader_id: reader(),
                capture_id: capture_id.into(),
                subject: None,
                erased: false,
                similarity: None,
                quality: judged.map(|_| 0.9),
                judged,
                policy: "p".into(),
                mode: SiteMode::Normal,
                last_in_zone: None,
                movement: None,
                unopenable: false,
                verdict: Verdict::Denied {
                    reason: DenyReason::NoMatch,
                    level: None,
                },
                at: at(second),
            };
            self.fold(stream::door(&door), e, second);
        }
    }

    #[test]
    fn a_capture_named_trigger_x_then_trigger_x_are_both_handled() {
        let mut log = Log::default();
        assert!(!log.capture("trigger:coll1", 1), "the scan is new");
        assert!(log.capture("trigger:coll1", 2), "its redelivery is not");
        assert!(!log.trigger("coll1", 3), "trigger coll1 is not the scan");
        assert!(log.trigger("coll1", 4), "its redelivery is a duplicate");
        assert!(!log.upstream_trigger("coll1b", 5));
        assert!(!log.capture("trigger:coll1c", 6));
        assert!(!log.upstream_trigger("coll1c", 7), "upstream: not the scan");
        assert!(log.upstream_trigger("coll1c", 8));
    }

    #[test]
    fn trigger_x_then_a_capture_named_trigger_x_are_both_handled() {
        let mut log = Log::default();
        assert!(!log.trigger("coll2", 1));
        assert!(
            !log.capture("trigger:coll2", 2),
            "the scan is not trigger coll2"
        );
        assert!(
            log.capture("trigger:coll2", 3),
            "its redelivery is a duplicate"
        );
        assert!(log.trigger("coll2", 4));
        assert!(!log.upstream_trigger("coll2b", 5));
        assert!(
            !log.capture("trigger:coll2b", 6),
            "upstream: not the trigger"
        );
        assert!(log.upstream_trigger("coll2b", 7));
    }

    /// A door decision tagged `trigger:X` with no palm judged here is trigger `X`'s (upstream
    /// mode, old logs included); one that judged a palm is the capture's of that name.
    #[test]
    fn a_door_decision_marks_the_trigger_or_the_capture_it_was_for() {
        let mut log = Log::default();
        log.decided("trigger:up1", None, 1);
        assert!(log.trigger("up1", 2) && log.upstream_trigger("up1", 2));
        assert!(!log.capture("trigger:up1", 3));
        let judged = Judged {
            liveness: true,
            threshold: 0.8,
            min_quality: 0.5,
            max_retries: None,
        };
        log.decided("trigger:scan1", Some(judged), 4);
        assert!(log.capture("trigger:scan1", 5));
        assert!(!log.trigger("scan1", 6));
        log.decided("cap-7", None, 7);
        assert!(log.capture("cap-7", 8));
    }
}
