//! Every input to the core, as data. Randomness (ids, token hashes, sealed templates) and
//! matcher results are produced by the shell and passed in, so the same commands always give
//! the same decisions.

use super::event::{Idempotency, SealedTemplate};
use super::ids::*;
use super::matcher::Candidate;
use chrono::{DateTime, Duration, Utc};
use serde_json::Value;

/// The body of a validated `POST /v1/enroll`.
#[derive(Clone, Debug, PartialEq)]
pub struct EnrollRequest {
    pub external_id: ExternalId,
    pub username: Option<String>,
    pub metadata: Option<Value>,
}

/// A palm capture from a reader (SPEC 5), with what the matcher found in its scope.
#[derive(Clone, Debug, PartialEq)]
pub struct Capture {
    pub reader_id: ReaderId,
    pub capture_id: String,
    /// Hash of the `session` token; `None` for a scan at a door.
    pub session: Option<SecretHash>,
    pub quality: f64,
    pub liveness: bool,
    /// The most similar enrolled user in the capture's scope, whatever the score.
    pub best: Option<Candidate>,
    /// For enroll sessions: the template sealed under a fresh data key, kept if it enrolls.
    pub sealed: Option<SealedTemplate>,
}

/// What happened when the shell sent one delivery attempt.
#[derive(Clone, Debug, PartialEq)]
pub struct AttemptResult {
    pub delivery_id: String,
    pub attempt: u32,
    /// The HTTP status, if an answer came.
    pub status_code: Option<u16>,
    /// Why no (timely) answer came: timeout, refused, blocked address...
    pub error: Option<String>,
    pub latency_ms: u64,
    /// The first 2 KB of the answer.
    pub response: String,
    /// The answer's `Retry-After`, if any.
    pub retry_after: Option<Duration>,
}

/// What a relay device reported (the adapter's words, as data).
#[derive(Clone, Debug, PartialEq)]
pub enum RelayReport {
    Up {
        device: String,
    },
    Down {
        device: String,
        error: String,
    },
    Coil {
        device: String,
        coil: u16,
        on: bool,
        tag: String,
    },
    CoilFailed {
        device: String,
        coil: u16,
        on: bool,
        error: String,
        /// The pulse this write served (its grant's capture id, or `exit-request`); empty for
        /// a resting-state drive.
        tag: String,
        /// The write certainly left the door locked: the board refused it (exception 01–03)
        /// or it was never sent (the board was down), and the coil was off before it as far
        /// as the relay task knows. A timeout, a lost link, another exception or a coil that
        /// may be on leaves it unknown (`false`).
        refused: bool,
    },
    Input {
        device: String,
        input: u16,
        on: bool,
    },
    /// A coil left ON by a door a later policy removed, at an address the policy no longer
    /// gives its board, was switched OFF there (`app::relays`, at start-up). Recorded under the
    /// door whose coil the log has there (`DoorState::relay` at that address), if any.
    OrphanOff {
        device: String,
        coil: u16,
        address: String,
    },
}

impl Capture {
    /// How the log names this capture: reader, id, quality, the best similarity (rounded
    /// to 6 decimals so the log holds the number, not f32 widening noise), and how `rules`
    /// judge it.
    pub fn reference(&self, rules: &super::state::Rules) -> super::event::CaptureRef {
        super::event::CaptureRef {
            reader_id: self.reader_id.clone(),
            capture_id: self.capture_id.clone(),
            quality: self.quality,
            similarity: self.best.as_ref().map(|b| rounded(b.similarity)),
            judged: Some(self.judged(rules)),
        }
    }

    /// How `rules` judge this capture, as the log records it.
    pub fn judged(&self, rules: &super::state::Rules) -> super::event::Judged {
        super::event::Judged {
            liveness: self.liveness,
            threshold: rounded(rules.threshold),
            min_quality: rules.min_quality,
            max_retries: Some(rules.max_retries),
        }
    }
}

/// An f32 score as the log holds it: rounded to 6 decimals, without f32 widening noise.
fn rounded(x: f32) -> f64 {
    (f64::from(x) * 1e6).round() / 1e6
}

/// A webhook to configure: as [`Command::SetWebhook`] (the secret arrives encrypted).
#[derive(Clone, Debug, PartialEq)]
pub struct NewWebhook {
    pub url: String,
    pub secret: String,
    pub events: Vec<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    CreatePartner {
        partner_id: PartnerId,
        name: String,
        api_key_hash: SecretHash,
        /// A webhook configured with the partner, in the same atomic append (the admin API's
        /// `webhook_url`): the partner never exists without the webhook asked for with it.
        webhook: Option<NewWebhook>,
    },
    SetPartnerActive {
        partner_id: PartnerId,
        active: bool,
    },
    /// `POST /v1/enroll` (with `enroll`) or `POST /v1/identify` (without).
    CreateSession {
        partner_id: PartnerId,
        session_id: SessionId,
        token_hash: SecretHash,
        kind: SessionKind,
        language: Language,
        enroll: Option<EnrollRequest>,
        idempotency: Option<Idempotency>,
        ttl: Duration,
    },
    /// Cancel by the partner (`partner` set: another partner's session is "not found") or by
    /// the person on the hosted page (`partner` unset; the token already proved access).
    CancelSession {
        partner: Option<PartnerId>,
        session_id: SessionId,
    },
    /// `DELETE /v1/users/{external_id}`.
    EraseUser {
        partner_id: PartnerId,
        external_id: ExternalId,
    },
    /// A reader's retained status message (or its last will).
    ReaderStatus {
        reader_id: ReaderId,
        online: bool,
        model: Option<String>,
        firmware: Option<String>,
    },
    /// A hosted page asks a reader to scan for its session.
    ArmReader {
        session_id: SessionId,
        reader_id: ReaderId,
    },
    Capture(Capture),
    /// A hand at a kiosk reader: open a site identify session bound to it.
    Trigger {
        reader_id: ReaderId,
        trigger_id: String,
        session_id: SessionId,
        token_hash: SecretHash,
        ttl: Duration,
        /// The site's readers' language (`mqtt.reader_language`): the kiosk page's.
        language: Language,
    },
    /// `PUT /v1/webhook` (the secret arrives encrypted; the shell made it).
    SetWebhook {
        partner_id: PartnerId,
        url: String,
        secret: String,
        events: Vec<String>,
    },
    EnableWebhook {
        partner_id: PartnerId,
    },
    RotateWebhookSecret {
        partner_id: PartnerId,
        secret: String,
    },
    /// `POST /v1/webhook/test`: queue a signed `ping`.
    TestWebhook {
        partner_id: PartnerId,
        delivery_id: String,
    },
    RecordAttempt(AttemptResult),
    Redeliver {
        partner_id: PartnerId,
        delivery_id: String,
    },
    /// Redeliver every delivery of the partner queued since `since` and not delivered.
    Recover {
        partner_id: PartnerId,
        since: DateTime<Utc>,
    },
    /// Activate a site policy document (`source`: startup, admin, sighup).
    ActivatePolicy {
        document: String,
        source: String,
    },
    /// Lockdown / emergency unlock on or off (`None`: unchanged).
    SetSiteMode {
        lockdown: Option<bool>,
        emergency: Option<bool>,
    },
    /// Forgive anti-passback in `zone`: one person's presence (`person`), or everyone's.
    ForgiveZone {
        zone: String,
        person: Option<(PartnerId, ExternalId)>,
        reason: Option<String>,
    },
    /// A relay board's report. `at`: when the gateway had it from the board (`None`: now). A
    /// report waits while the log cannot be written (`app::relays`), so the time it is recorded
    /// may be long after the board's write; the events it gives carry `at` (never later than
    /// now), which is what `audit` judges a relay's ON against.
    Relay {
        report: RelayReport,
        at: Option<DateTime<Utc>>,
    },
    /// Time has passed: act on every deadline due at `now`.
    Tick,
    /// Upstream mode: what the remote answered to the `POST /v1/identify` a reader's trigger
    /// caused.
    UpstreamIdentify {
        reader_id: ReaderId,
        trigger_id: String,
        answer: super::upstream::IdentifyAnswer,
    },
    /// Upstream mode: the remote's webhook about an identify session, signature verified.
    UpstreamWebhook(super::upstream::RemoteEnd),
}

impl Command {
    /// A relay board's report, as of now.
    pub fn relay(report: RelayReport) -> Command {
        Command::Relay { report, at: None }
    }
}
