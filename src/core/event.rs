//! The events of the log: every fact palmgate knows, versioned from day one.
//!
//! An event is stored as `(type, version, data)`. [`Event::encode`] writes the current version;
//! [`Event::decode`] reads any version ever written and upcasts old shapes, so the log is never
//! rewritten. [`Recorded`] is an event as the store returns it: position, stream, revision,
//! time and chain hashes included.

use super::ids::*;
use super::policy::{Direction, DoorId, SiteMode, Verdict};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The UTC time written as `YYYY-MM-DDTHH:MM:SS[.fraction]Z` (1–9 fraction digits) — the form
/// chrono writes for a `DateTime<Utc>` and the store writes for `recorded_at` — read without
/// chrono's general RFC 3339 parser, which was a few per cent of folding the log. `None` for
/// anything else (another offset, a leap second, an invalid date): leave it to that parser.
pub fn parse_utc(s: &str) -> Option<DateTime<Utc>> {
    let b = s.as_bytes();
    if b.len() < 20 || b[b.len() - 1] != b'Z' {
        return None;
    }
    for (i, sep) in [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')] {
        if b[i] != sep {
            return None;
        }
    }
    let num = |digits: &[u8]| -> Option<u32> {
        digits.iter().try_fold(0u32, |n, &d| {
            d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0'))
        })
    };
    let nanos = match &b[19..b.len() - 1] {
        [] => 0,
        [b'.', fraction @ ..] if (1..=9).contains(&fraction.len()) => {
            num(fraction)? * 10u32.pow(9 - fraction.len() as u32)
        }
        _ => return None,
    };
    let date = chrono::NaiveDate::from_ymd_opt(
        i32::try_from(num(&b[0..4])?).ok()?,
        num(&b[5..7])?,
        num(&b[8..10])?,
    )?;
    let (h, m, sec) = (num(&b[11..13])?, num(&b[14..16])?, num(&b[17..19])?);
    if sec > 59 {
        return None;
    }
    Some(date.and_hms_nano_opt(h, m, sec, nanos)?.and_utc())
}

/// `deserialize_with` for the events' times: [`parse_utc`] first, then exactly what chrono's
/// own `Deserialize` does (so every text chrono accepted before still reads the same).
mod utc {
    use chrono::{DateTime, FixedOffset, Utc};
    use serde::Deserializer;
    use serde::de::{Error, Visitor};

    struct Utc3339;

    impl Visitor<'_> for Utc3339 {
        type Value = DateTime<Utc>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an RFC 3339 formatted date and time string")
        }

        fn visit_str<E: Error>(self, v: &str) -> Result<DateTime<Utc>, E> {
            match super::parse_utc(v) {
                Some(t) => Ok(t),
                None => v
                    .parse::<DateTime<FixedOffset>>()
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(E::custom),
            }
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        d.deserialize_str(Utc3339)
    }
}

/// Who asked for an idempotent request, and what they asked (SPEC 2, Idempotency).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Idempotency {
    /// The partner's `Idempotency-Key` header, verbatim (≤ 255 chars).
    pub key: String,
    /// Hex SHA-256 over the request's kind, language and body.
    pub fingerprint: String,
}

/// A palm template encrypted with its user's data key (SPEC 8.3). The key lives in the key
/// store, never in the log; deleting it makes these bytes noise.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SealedTemplate {
    pub key_id: KeyId,
    /// Base64 of the 12-byte AEAD nonce.
    pub nonce: String,
    /// Base64 of the ChaCha20-Poly1305 ciphertext of the little-endian f32 values.
    pub ciphertext: String,
}

/// Why a reader's capture was refused without touching a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaptureRejection {
    /// The `session` token names no session.
    UnknownSession,
    /// The session has ended or expired.
    SessionNotPending,
    /// A session-less capture at a reader that belongs to no door (or no site policy).
    NoDoor,
    /// A door scan below `min_quality`: the reader was asked to try again.
    LowQuality,
    /// A capture for a session from a reader the session is not armed at (a reader armed for
    /// it before it moved to another one): the palm of whoever stands there is not the
    /// session's.
    WrongReader,
}

/// Every fact in the log. The serde tag is the event type written in the envelope.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum Event {
    PartnerCreated {
        partner_id: PartnerId,
        name: String,
        api_key_hash: SecretHash,
        #[serde(deserialize_with = "utc::deserialize")]
        at: DateTime<Utc>,
    },
    PartnerActivated {
        partner_id: PartnerId,
        #[serde(deserialize_with = "utc::deserialize")]
        at: DateTime<Utc>,
    },
    PartnerDeactivated {
        partner_id: PartnerId,
        #[serde(deserialize_with = "utc::deserialize")]
        at: DateTime<Utc>,
    },
    SessionCreated {
        session_id: SessionId,
        /// The partner that asked; `None` for a site session opened by a reader's trigger.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        partner_id: Option<PartnerId>,
        /// The reader a trigger session is bound to.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reader_id: Option<ReaderId>,
        kind: SessionKind,
        language: Language,
        token_hash: SecretHash,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        external_id: Option<ExternalId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        username: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        metadata: Option<Value>,
        #[serde(deserialize_with = "utc::deserialize")]
        created_at: DateTime<Utc>,
        #[serde(deserialize_with = "utc::deserialize")]
        expires_at: DateTime<Utc>,
        /// The reader's `trigger_id` of a site session, so that a redelivered trigger (QoS 1)
        /// is recognised and opens no second session. Absent in logs before it was recorded.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        trigger_id: Option<String>,
    },
    /// The `Idempotency-Key` claim, in its own stream so two concurrent requests with one key
    /// collide at the store's expected-revision check.
    IdempotencyKeyUsed {
        partner_id: PartnerId,
        key: String,
        fingerprint: String,
        session_id: SessionId,
        #[serde(deserialize_with = "utc::deserialize")]
        at: DateTime<Utc>,
    },
    SessionCompleted {
        session_id: SessionId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        external_id: Option<ExternalId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        capture: Option<CaptureRef>,
        #[serde(deserialize_with = "utc::deserialize")]
        at: DateTime<Utc>,
    },
    SessionFailed {
        session_id: SessionId,
        reason: FailReason,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        capture: Option<CaptureRef>,
        #[serde(deserialize_with = "utc::deserialize")]
        at: DateTime<Utc>,
    },
    /// A hosted page armed a reader for this session.
    SessionReaderArmed {
        session_id: SessionId,
        reader_id: ReaderId,
        #[serde(deserialize_with = "utc::deserialize")]
        at: DateTime<Utc>,
    },
    /// A capture was below `min_quality`; the reader was asked to try again.
    CaptureRetryRequested {
        session_id: SessionId,
        capture: CaptureRef,
        attempt: u32,
        #[serde(deserialize_with = "utc::deserialize")]
        at: DateTime<Utc>,
    },
    CaptureRejected {
        reader_id: ReaderId,
        capture_id: String,
        reason: CaptureRejection,
        /// `low_quality` at a door: the capture's quality and how it was judged.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        quality: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        judged: Option<Judged>,
        #[serde(deserialize_with = "utc::deserialize")]
        at: DateTime<Utc>,
    },
    ReaderStatusChanged {
        reader_id: ReaderId,
        online: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        firmware: Option<String>,
        #[serde(deserialize_with = "utc::deserialize")]
        at: DateTime<Utc>,
    },
    SessionExpired {
        session_id: SessionId,
        #[serde(deserialize_with = "utc::deserialize")]
        at: DateTime<Utc>,
    },
    UserEnrolled {
        partner_id: PartnerId,
        external_id: ExternalId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        username: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        metadata: Option<Value>,
        session_id: SessionId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        template: Option<SealedTemplate>,
        #[serde(deserialize_with = "utc::deserialize")]
        at: DateTime<Utc>,
    },
    UserErased {
        partner_id: PartnerId,
        external_id: ExternalId,
        #[serde(deserialize_with = "utc::deserialize")]
        at: DateTime<Utc>,
        /// The erasure also ends the person's anti-passback presence (their last movement in
        /// every zone), so a later enrollment of the same `external_id` starts with none.
        /// Absent (false) in erasures logged before this was decided: those logs fold, and
        /// their door decisions verify, as they were made.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        clears_zones: bool,
    },
    /// `PUT /v1/webhook`: the URL and a new secret (encrypted under the master key).
    WebhookConfigured {
        partner_id: PartnerId,
        url: String,
        secret: String,
        events: Vec<String>,
        #[serde(deserialize_with = "utc::deserialize")]
        at: DateTime<Utc>,
    },
    /// A new secret; the previous one keeps signing until `previous_until`.
    WebhookSecretRotated {
        partner_id: PartnerId,
        secret: String,
        #[serde(deserialize_with = "utc::deserialize")]
        previous_until: DateTime<Utc>,
        #[serde(deserialize_with = "utc::deserialize")]
        at: DateTime<Utc>,
    },
    WebhookEnabled {
        partner_id: PartnerId,
        #[serde(deserialize_with = "utc::deserialize")]
        at: DateTime<Utc>,
    },
    /// The 5th failed attempt of `delivery_id` disabled the webhook.
    WebhookDisabled {
        partner_id: PartnerId,
        delivery_id: String,
        #[serde(deserialize_with = "utc::deserialize")]
        at: DateTime<Utc>,
    },
    /// The outbox: a webhook to send, with its exact body. `held` when the partner's webhook
    /// was disabled at the time (sent only after a redeliver or recover).
    DeliveryQueued {
        delivery_id: String,
        partner_id: PartnerId,
        event: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session_id: Option<SessionId>,
        body: String,
        held: bool,
        #[serde(deserialize_with = "utc::deserialize")]
        at: DateTime<Utc>,
    },
    DeliveryAttempted {
        delivery_id: String,
        attempt: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status_code: Option<u16>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        latency_ms: u64,
        /// The first 2 KB of the answer.
        response: String,
        delivered: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next_attempt_at: Option<DateTime<Utc>>,
        #[serde(deserialize_with = "utc::deserialize")]
        at: DateTime<Utc>,
    },
    /// Redeliver / recover: a fresh sequence of attempts, starting now.
    DeliveryRescheduled {
        delivery_id: String,
        #[serde(deserialize_with = "utc::deserialize")]
        at: DateTime<Utc>,
    },
    /// A site policy became the one in force (start-up, admin API, SIGHUP): the whole document,
    /// so every later decision can be re-derived from the log alone.
    PolicyActivated {
        sha256: String,
        document: String,
        source: String,
        #[serde(deserialize_with = "utc::deserialize")]
        at: DateTime<Utc>,
    },
    /// Lockdown and emergency unlock, both explicit to set and to revert.
    SiteModeChanged {
        lockdown: bool,
        emergency: bool,
        #[serde(deserialize_with = "utc::deserialize")]
        at: DateTime<Utc>,
    },
    /// A door decision with every input it was derived from.
    DoorDecided {
        door: DoorId,
        reader_id: ReaderId,
        /// The capture (or trigger session) that asked.
        capture_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        subject: Option<DoorSubject>,
        /// The palm matched a user whose record was erased in the meantime.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        erased: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        similarity: Option<f64>,
        /// The capture's quality, when the palm was read here.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        quality: Option<f64>,
        /// How the capture was judged (see [`CaptureRef::judged`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        judged: Option<Judged>,
        /// SHA-256 of the policy in force.
        policy: String,
        mode: SiteMode,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last_in_zone: Option<Direction>,
        /// The zone movement this decision makes, when the reader is a zone reader: none for a
        /// grant at a door that cannot open (`unopenable`): the person did not pass.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        movement: Option<(String, Direction)>,
        /// Granted at a door whose relay board the log had down: the reader was told the door
        /// cannot open, and no zone movement is recorded (absent in logs from before this
        /// field, whose grants there recorded one).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        unopenable: bool,
        verdict: Verdict,
        #[serde(deserialize_with = "utc::deserialize")]
        at: DateTime<Utc>,
    },
    /// A door's resting relay state changed (unlock window, emergency, lockdown).
    DoorRestingChanged {
        door: DoorId,
        unlocked: bool,
        cause: String,
        #[serde(deserialize_with = "utc::deserialize")]
        at: DateTime<Utc>,
    },
    /// A relay coil was written and (for OFF) read back.
    RelaySwitched {
        door: DoorId,
        device: String,
        coil: u16,
        on: bool,
        /// The capture whose grant this pulse serves; empty for a resting-state drive.
        tag: String,
        #[serde(deserialize_with = "utc::deserialize")]
        at: DateTime<Utc>,
    },
    RelayFailed {
        door: DoorId,
        device: String,
        coil: u16,
        on: bool,
        error: String,
        /// The pulse the write served (as `RelaySwitched`'s `tag`): a grant's capture id.
        /// Absent for resting drives, and in logs from before it was recorded.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        tag: String,
        /// The door certainly stayed locked: the board refused the write (exception 01–03) or it
        /// was never sent, and the coil was off before it as the relay task and the log both
        /// have it. A pulse's ON refused undoes the zone movement of the grant it served, whose
        /// person did not pass (`DoorState::passages`). Absent when unknown (a timeout, a lost
        /// link, another exception, the door already open) and in logs from before it was
        /// recorded.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        refused: bool,
        #[serde(deserialize_with = "utc::deserialize")]
        at: DateTime<Utc>,
    },
    DeviceStatusChanged {
        device: String,
        up: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        #[serde(deserialize_with = "utc::deserialize")]
        at: DateTime<Utc>,
    },
    /// A door contact opened or closed.
    DoorContactChanged {
        door: DoorId,
        open: bool,
        #[serde(deserialize_with = "utc::deserialize")]
        at: DateTime<Utc>,
    },
    /// The request-to-exit button released the door.
    DoorExitRequested {
        door: DoorId,
        #[serde(deserialize_with = "utc::deserialize")]
        at: DateTime<Utc>,
    },
    /// Opened with no grant, exit request, unlock window or emergency.
    DoorForcedOpen {
        door: DoorId,
        #[serde(deserialize_with = "utc::deserialize")]
        at: DateTime<Utc>,
    },
    /// Open longer than `held_open_after_s`.
    DoorHeldOpen {
        door: DoorId,
        #[serde(deserialize_with = "utc::deserialize")]
        since: DateTime<Utc>,
        #[serde(deserialize_with = "utc::deserialize")]
        at: DateTime<Utc>,
    },
    /// An operator forgave anti-passback in `zone`: the presence of one person (`partner_id`
    /// and `external_id`), or of everyone when both are absent, is ended, so their next scan
    /// there is judged as a first movement (a person who left without scanning out, a reader
    /// that was down). `cleared`: how many people's presence it ended.
    ZonePresenceForgiven {
        zone: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        partner_id: Option<PartnerId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        external_id: Option<ExternalId>,
        cleared: u64,
        /// The operator's words, for the audit trail.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        #[serde(deserialize_with = "utc::deserialize")]
        at: DateTime<Utc>,
    },
    /// Upstream mode: a reader's trigger opened an identify session at the remote Pass API,
    /// now bound to the reader: the remote's webhook for it decides at the reader's door. The
    /// session's URL (a bearer link) is shown on the reader, never written here.
    UpstreamIdentifyStarted {
        session_id: UpstreamSessionId,
        reader_id: ReaderId,
        trigger_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at: Option<DateTime<Utc>>,
        /// How many seconds the remote's clock was ahead of ours (from the `Date` of its
        /// answer), so its webhook `timestamp` can be read on our clock.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        clock_skew_s: Option<i64>,
        #[serde(deserialize_with = "utc::deserialize")]
        at: DateTime<Utc>,
    },
    /// Upstream mode: the remote `POST /v1/identify` for a reader's trigger failed (no answer
    /// in time, refused, a 4xx/5xx or an unreadable answer); the reader was told.
    UpstreamIdentifyFailed {
        reader_id: ReaderId,
        trigger_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status_code: Option<u16>,
        error: String,
        #[serde(deserialize_with = "utc::deserialize")]
        at: DateTime<Utc>,
    },
    /// Upstream mode: the remote's signed webhook ended a bound session. The `DoorDecided` it
    /// leads to (a completed session, or a `no_match` failure, at a door's reader, not late)
    /// is in the same write.
    UpstreamSessionEnded {
        session_id: UpstreamSessionId,
        reader_id: ReaderId,
        outcome: UpstreamOutcome,
        /// `X-Webhook-Id` of the delivery (empty when the remote sent none).
        webhook_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        external_id: Option<ExternalId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        username: Option<String>,
        /// Only the metadata a door decision reads (`access_level`, `valid_from`,
        /// `valid_until`); the rest of the person's record stays at the remote.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        metadata: Option<Value>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fail_reason: Option<String>,
        /// The payload's `timestamp`: when the remote ended the session.
        #[serde(deserialize_with = "utc::deserialize")]
        ended_at: DateTime<Utc>,
        /// Arrived too long after the remote ended the session to open a door.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        late: bool,
        #[serde(deserialize_with = "utc::deserialize")]
        at: DateTime<Utc>,
    },
}

/// How a remote identify session ended (the webhook's `event`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamOutcome {
    Completed,
    Failed,
    Expired,
}

/// Who a door decision was about, with the metadata it was decided on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DoorSubject {
    pub partner_id: PartnerId,
    pub partner_name: String,
    pub external_id: ExternalId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
}

/// Which capture decided something, and how similar the best template was.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CaptureRef {
    pub reader_id: ReaderId,
    pub capture_id: String,
    /// As the reader reported it.
    pub quality: f64,
    /// Rounded to 6 decimals, so the log holds the number, not f32 widening noise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub similarity: Option<f64>,
    /// How the capture was judged (absent in logs written before it was recorded, and for
    /// outcomes reported by an upstream Pass API): `audit verify` re-derives the outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judged: Option<Judged>,
}

/// What judging a capture read besides its quality and similarity: the reader's liveness
/// result and the matching rules in force (config `matching.*`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Judged {
    /// Written only when the check failed (`false`): most captures are live, and every byte
    /// of a door decision is read again by each `audit verify`.
    #[serde(default = "live", skip_serializing_if = "is_live")]
    pub liveness: bool,
    /// A match needs `similarity >= threshold` (the configured f32, rounded to 6 decimals as
    /// similarities are, so the log holds `0.8`, not `0.800000011920929`).
    pub threshold: f64,
    /// A capture below it is retried (a door scan: rejected).
    pub min_quality: f64,
    /// Retries a session asks for before it fails `low_quality`; absent at doors, where a
    /// scan is never a session's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
}

fn live() -> bool {
    true
}

fn is_live(liveness: &bool) -> bool {
    *liveness
}

impl Judged {
    /// As a door's events record it: without the session rule.
    pub fn at_door(self) -> Judged {
        Judged {
            max_retries: None,
            ..self
        }
    }

    /// Whether a capture of `similarity` identifies someone under these rules: `None` when the
    /// recorded similarity (rounded to 6 decimals) is too close to the threshold to tell.
    pub fn matches(&self, similarity: Option<f64>) -> Option<bool> {
        let Some(s) = similarity else {
            return Some(false);
        };
        let t = self.threshold;
        if (s - t).abs() <= SIMILARITY_ROUNDING {
            return None;
        }
        Some(s >= t)
    }
}

/// The most the recorded similarity and threshold can be off the f32s the matcher compared:
/// each is rounded to 6 decimals (±5·10⁻⁷), plus the f32s' own precision near 1 (~6·10⁻⁸).
pub const SIMILARITY_ROUNDING: f64 = 2e-6;

/// Error reading an event back from its stored parts.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown event type `{0}`")]
    UnknownType(String),
    #[error("event type `{kind}` has no schema version {version}")]
    UnknownVersion { kind: String, version: u32 },
    #[error("event `{kind}` v{version} does not match its schema: {source}")]
    Shape {
        kind: String,
        version: u32,
        source: serde_json::Error,
    },
}

impl Event {
    /// The type name written in the envelope.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::PartnerCreated { .. } => "PartnerCreated",
            Event::PartnerActivated { .. } => "PartnerActivated",
            Event::PartnerDeactivated { .. } => "PartnerDeactivated",
            Event::SessionCreated { .. } => "SessionCreated",
            Event::IdempotencyKeyUsed { .. } => "IdempotencyKeyUsed",
            Event::SessionCompleted { .. } => "SessionCompleted",
            Event::SessionFailed { .. } => "SessionFailed",
            Event::SessionExpired { .. } => "SessionExpired",
            Event::UserEnrolled { .. } => "UserEnrolled",
            Event::UserErased { .. } => "UserErased",
            Event::SessionReaderArmed { .. } => "SessionReaderArmed",
            Event::CaptureRetryRequested { .. } => "CaptureRetryRequested",
            Event::CaptureRejected { .. } => "CaptureRejected",
            Event::ReaderStatusChanged { .. } => "ReaderStatusChanged",
            Event::WebhookConfigured { .. } => "WebhookConfigured",
            Event::WebhookSecretRotated { .. } => "WebhookSecretRotated",
            Event::WebhookEnabled { .. } => "WebhookEnabled",
            Event::WebhookDisabled { .. } => "WebhookDisabled",
            Event::DeliveryQueued { .. } => "DeliveryQueued",
            Event::DeliveryAttempted { .. } => "DeliveryAttempted",
            Event::DeliveryRescheduled { .. } => "DeliveryRescheduled",
            Event::PolicyActivated { .. } => "PolicyActivated",
            Event::SiteModeChanged { .. } => "SiteModeChanged",
            Event::DoorDecided { .. } => "DoorDecided",
            Event::DoorRestingChanged { .. } => "DoorRestingChanged",
            Event::RelaySwitched { .. } => "RelaySwitched",
            Event::RelayFailed { .. } => "RelayFailed",
            Event::DeviceStatusChanged { .. } => "DeviceStatusChanged",
            Event::DoorContactChanged { .. } => "DoorContactChanged",
            Event::DoorExitRequested { .. } => "DoorExitRequested",
            Event::DoorForcedOpen { .. } => "DoorForcedOpen",
            Event::DoorHeldOpen { .. } => "DoorHeldOpen",
            Event::ZonePresenceForgiven { .. } => "ZonePresenceForgiven",
            Event::UpstreamIdentifyStarted { .. } => "UpstreamIdentifyStarted",
            Event::UpstreamIdentifyFailed { .. } => "UpstreamIdentifyFailed",
            Event::UpstreamSessionEnded { .. } => "UpstreamSessionEnded",
        }
    }

    /// Current schema version of this event's type. Bump it when a shape changes and teach
    /// [`Event::decode`] to upcast the old one.
    pub fn version(&self) -> u32 {
        1
    }

    /// `(type, version, data)` for the envelope.
    pub fn encode(&self) -> (&'static str, u32, Value) {
        let tagged = serde_json::to_value(self).expect("events always serialize");
        let data = match tagged {
            Value::Object(mut m) => m.remove("data").unwrap_or(Value::Null),
            _ => Value::Null,
        };
        (self.kind(), self.version(), data)
    }

    /// The stored text of `data`: compact JSON, object keys sorted at every depth (the hash
    /// chain's canonical form), exactly `serde_json::to_string(&self.encode().2)`.
    /// `SessionCreated`, one per identify or enroll request, is written field by field in key
    /// order instead of through a `Value` tree (whose keys, strings and map nodes were ~5 % of
    /// the request workers' samples, BENCHMARKS §2 session 18); `metadata` is already a
    /// `Value`, whose maps serialize sorted.
    pub fn data_text(&self) -> String {
        match self {
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
                let mut out = SortedObject::with_capacity(384);
                out.field("created_at", created_at);
                out.field("expires_at", expires_at);
                out.optional("external_id", external_id.as_ref());
                out.field("kind", kind);
                out.field("language", language);
                out.optional("metadata", metadata.as_ref());
                out.optional("partner_id", partner_id.as_ref());
                out.optional("reader_id", reader_id.as_ref());
                out.field("session_id", session_id);
                out.field("token_hash", token_hash);
                out.optional("trigger_id", trigger_id.as_ref());
                out.optional("username", username.as_ref());
                out.finish()
            }
            _ => serde_json::to_string(&self.encode().2).expect("JSON values always serialize"),
        }
    }
}

/// A JSON object written one field at a time; the caller passes the keys in sorted order
/// (plain ASCII, nothing to escape). Each value is written by the same serializer `Value`
/// would use, so the bytes are the same.
struct SortedObject(Vec<u8>);

impl SortedObject {
    fn with_capacity(n: usize) -> Self {
        let mut v = Vec::with_capacity(n);
        v.push(b'{');
        SortedObject(v)
    }

    fn field<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) {
        if self.0.len() > 1 {
            self.0.push(b',');
        }
        self.0.push(b'"');
        self.0.extend_from_slice(key.as_bytes());
        self.0.extend_from_slice(b"\":");
        serde_json::to_writer(&mut self.0, value).expect("event fields always serialize");
    }

    fn optional<T: Serialize + ?Sized>(&mut self, key: &str, value: Option<&T>) {
        if let Some(v) = value {
            self.field(key, v);
        }
    }

    fn finish(mut self) -> String {
        self.0.push(b'}');
        String::from_utf8(self.0).expect("serde_json writes UTF-8")
    }
}

impl Event {
    /// Reads an event of any known version, upcasting old shapes to the current one.
    /// As [`Event::decode`], straight from the stored JSON text of `data`: serde is handed the
    /// envelope `{"type": kind, "data": <data>}` as a map whose `data` value is read from the
    /// stored text itself, so the variant's fields are parsed in one pass (no intermediate
    /// `Value`, no buffered content, no copy of the text). The log's read path.
    pub fn decode_text(kind: &str, version: u32, data: &str) -> Result<Event, DecodeError> {
        if !KNOWN_TYPES.contains(&kind) {
            return Err(DecodeError::UnknownType(kind.to_string()));
        }
        if version != 1 {
            return Err(DecodeError::UnknownVersion {
                kind: kind.to_string(),
                version,
            });
        }
        let shape = |source| DecodeError::Shape {
            kind: kind.to_string(),
            version,
            source,
        };
        // `data` is read at its own depth (the envelope adds no nesting), so whatever
        // serde_json wrote, up to its recursion limit, reads back.
        let mut de = serde_json::Deserializer::from_str(data);
        let event = Event::deserialize(serde::de::value::MapAccessDeserializer::new(Envelope {
            kind,
            data: &mut de,
            next: 0,
        }))
        .map_err(shape)?;
        // `data` must be exactly one JSON value: nothing may follow it but whitespace.
        de.end().map_err(shape)?;
        Ok(event)
    }

    pub fn decode(kind: &str, version: u32, data: Value) -> Result<Event, DecodeError> {
        if !KNOWN_TYPES.contains(&kind) {
            return Err(DecodeError::UnknownType(kind.to_string()));
        }
        if version != 1 {
            return Err(DecodeError::UnknownVersion {
                kind: kind.to_string(),
                version,
            });
        }
        let tagged = serde_json::json!({ "type": kind, "data": data });
        serde_json::from_value(tagged).map_err(|source| DecodeError::Shape {
            kind: kind.to_string(),
            version,
            source,
        })
    }
}

/// Every type name ever written. Never remove one.
pub const KNOWN_TYPES: &[&str] = &[
    "PartnerCreated",
    "PartnerActivated",
    "PartnerDeactivated",
    "SessionCreated",
    "IdempotencyKeyUsed",
    "SessionCompleted",
    "SessionFailed",
    "SessionExpired",
    "UserEnrolled",
    "UserErased",
    "SessionReaderArmed",
    "CaptureRetryRequested",
    "CaptureRejected",
    "ReaderStatusChanged",
    "WebhookConfigured",
    "WebhookSecretRotated",
    "WebhookEnabled",
    "WebhookDisabled",
    "DeliveryQueued",
    "DeliveryAttempted",
    "DeliveryRescheduled",
    "PolicyActivated",
    "SiteModeChanged",
    "DoorDecided",
    "DoorRestingChanged",
    "RelaySwitched",
    "RelayFailed",
    "DeviceStatusChanged",
    "DoorContactChanged",
    "DoorExitRequested",
    "DoorForcedOpen",
    "DoorHeldOpen",
    "UpstreamIdentifyStarted",
    "UpstreamIdentifyFailed",
    "UpstreamSessionEnded",
    "ZonePresenceForgiven",
];

/// The envelope `{"type": kind, "data": …}` as a serde map, for [`Event::decode_text`]: the
/// tag is `kind` and the content is read straight from the stored text.
struct Envelope<'a, 'de> {
    kind: &'a str,
    data: &'a mut serde_json::Deserializer<serde_json::de::StrRead<'de>>,
    /// 0: the tag is next; 1: the content; 2: done.
    next: u8,
}

impl<'de> serde::de::MapAccess<'de> for Envelope<'_, 'de> {
    type Error = serde_json::Error;

    fn next_key_seed<K: serde::de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        use serde::de::IntoDeserializer;
        let key = match self.next {
            0 => "type",
            1 => "data",
            _ => return Ok(None),
        };
        seed.deserialize(key.into_deserializer()).map(Some)
    }

    fn next_value_seed<V: serde::de::DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        use serde::de::IntoDeserializer;
        self.next += 1;
        if self.next == 1 {
            seed.deserialize(self.kind.into_deserializer())
        } else {
            seed.deserialize(&mut *self.data)
        }
    }
}

/// Stream names (SPEC 8.1).
pub mod stream {
    use super::*;

    pub fn partner(id: PartnerId) -> String {
        format!("partner-{id}")
    }
    pub fn session(id: SessionId) -> String {
        format!("session-{id}")
    }
    pub fn user(partner: PartnerId, external_id: &ExternalId) -> String {
        format!("user-{partner}-{external_id}")
    }
    pub fn webhook(partner: PartnerId) -> String {
        format!("webhook-{partner}")
    }
    pub fn delivery(id: &str) -> String {
        format!("delivery-{id}")
    }
    pub fn door(id: &DoorId) -> String {
        format!("door-{id}")
    }
    pub fn device(id: &str) -> String {
        format!("device-{id}")
    }
    pub const POLICY: &str = "policy";
    pub const SITE: &str = "site";
    pub fn reader(id: &ReaderId) -> String {
        format!("reader-{id}")
    }
    /// An anti-passback zone's operator actions (forgiving presence).
    pub fn zone(name: &str) -> String {
        format!("zone-{name}")
    }
    /// A remote identify session bound to a reader (upstream mode).
    pub fn upstream(id: &UpstreamSessionId) -> String {
        format!("upstream-{id}")
    }
    /// The key is kept verbatim: stream names are opaque text to every backend.
    pub fn idempotency(partner: PartnerId, key: &str) -> String {
        format!("idem-{partner}-{key}")
    }
}

/// An event as read from (or just written to) the log.
#[derive(Clone, Debug, PartialEq)]
pub struct Recorded {
    /// Global position, 1-based, gapless.
    pub position: u64,
    pub stream: String,
    /// Revision within the stream, 0-based.
    pub revision: u64,
    pub recorded_at: DateTime<Utc>,
    pub event: Event,
    pub prev_hash: [u8; 32],
    pub hash: [u8; 32],
}

/// Expected state of a stream for an optimistic append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expected {
    /// The stream must not exist yet.
    NoStream,
    /// The stream's last revision must be exactly this.
    Revision(u64),
    /// No check.
    Any,
}

/// Events to append to one stream, with the concurrency expectation.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamAppend {
    pub stream: String,
    pub expected: Expected,
    pub events: Vec<Event>,
}

#[cfg(test)]
mod decode_text_tests {
    use super::*;

    #[test]
    fn text_decoding_equals_value_decoding_and_rejects_splices() {
        let e = Event::PartnerActivated {
            partner_id: PartnerId::from_random([7; 16]),
            at: DateTime::parse_from_rfc3339("2026-11-26T03:00:00Z")
                .unwrap()
                .with_timezone(&Utc),
        };
        let (kind, version, data) = e.encode();
        let text = data.to_string();
        assert_eq!(Event::decode_text(kind, version, &text).unwrap(), e);
        assert_eq!(Event::decode(kind, version, data).unwrap(), e);
        // Text that is more than one value cannot reach the envelope.
        for bad in [
            format!("{text},\"type\":\"PartnerDeactivated\""),
            format!("{text}}}"),
            "".to_string(),
        ] {
            assert!(Event::decode_text(kind, version, &bad).is_err(), "{bad}");
        }
        assert!(Event::decode_text("NoSuchEvent", 1, &text).is_err());
        assert!(Event::decode_text(kind, 2, &text).is_err());
    }

    #[test]
    fn text_decoding_reads_data_nested_up_to_the_recursion_limit() {
        let nested =
            |depth: usize| -> Value { (0..depth).fold(Value::Null, |v, _| Value::Array(vec![v])) };
        let event = |depth| Event::UserEnrolled {
            partner_id: PartnerId::from_random([7; 16]),
            external_id: ExternalId("e".into()),
            username: None,
            metadata: Some(nested(depth)),
            session_id: SessionId::from_random([8; 16]),
            template: None,
            at: DateTime::parse_from_rfc3339("2026-11-26T03:00:00Z")
                .unwrap()
                .with_timezone(&Utc),
        };
        // The data object is one level, its metadata the other 126: serde_json reads at most
        // 127 nested arrays and objects.
        let e = event(126);
        let (kind, version, data) = e.encode();
        let text = serde_json::to_string(&data).unwrap();
        assert_eq!(Event::decode_text(kind, version, &text).unwrap(), e);
        let (kind, version, data) = event(127).encode();
        let text = serde_json::to_string(&data).unwrap();
        let err = Event::decode_text(kind, version, &text).unwrap_err();
        assert!(err.to_string().contains("recursion limit"), "{err}");
    }
}

#[cfg(test)]
mod judged_tests {
    use super::*;

    #[test]
    fn a_recorded_similarity_matches_by_the_threshold_except_within_the_rounding() {
        let j = Judged {
            liveness: true,
            threshold: 0.8,
            min_quality: 0.5,
            max_retries: Some(3),
        };
        assert_eq!(j.matches(Some(0.93)), Some(true));
        assert_eq!(j.matches(Some(0.8021)), Some(true));
        assert_eq!(j.matches(Some(0.31)), Some(false));
        assert_eq!(j.matches(Some(0.7979)), Some(false));
        assert_eq!(j.matches(None), Some(false));
        // 0.79999995 (an f32 just under 0.8) is recorded as 0.8: too close to tell.
        assert_eq!(j.matches(Some(0.8)), None);
        assert_eq!(j.matches(Some(0.799999)), None);
        assert_eq!(j.matches(Some(0.800001)), None);
    }

    #[test]
    fn a_capture_reference_records_the_rules_rounded() {
        let c = crate::core::Capture {
            reader_id: ReaderId("r".into()),
            capture_id: "c".into(),
            session: None,
            quality: 0.7,
            liveness: false,
            best: None,
            sealed: None,
        };
        let rules = crate::core::Rules {
            threshold: 0.85,
            ..Default::default()
        };
        let j = c.reference(&rules).judged.unwrap();
        assert_eq!(j.threshold, 0.85);
        assert!(!j.liveness);
        assert_eq!(j.min_quality, rules.min_quality);
        assert_eq!(j.max_retries, Some(rules.max_retries));
        let text = serde_json::to_string(&j).unwrap();
        assert!(text.contains("\"threshold\":0.85"), "{text}");
        assert!(text.contains("\"liveness\":false"), "{text}");
        // A live capture at a door: neither the liveness nor the session rule is written, and
        // both read back.
        let door = Judged {
            liveness: true,
            ..j
        }
        .at_door();
        let text = serde_json::to_string(&door).unwrap();
        assert_eq!(text, r#"{"threshold":0.85,"min_quality":0.5}"#);
        assert_eq!(serde_json::from_str::<Judged>(&text).unwrap(), door);
    }
}
