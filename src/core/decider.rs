//! `decide`: what a command means, given the state and the time.
//!
//! `decide(&State, &Command, now)` returns the events to append (with each stream's expected
//! revision), the effects to perform once they are durable, and what to answer — or why the
//! command is refused. It never changes anything, reads no clock and draws no randomness.

use super::command::{AttemptResult, Capture, Command, EnrollRequest};
use super::doors::{self, RelayCommand};
use super::event::{
    CaptureRef, CaptureRejection, Event, Expected, Idempotency, StreamAppend, stream,
};
use super::ids::*;
use super::policy::{DenyReason, DoorId};
use super::session::Session;
use super::state::{DeliveryStatus, State};
use super::webhook;
use chrono::{DateTime, Duration, Utc};

pub use super::state::{Partner, Reader, Rules, User};

/// How long an `Idempotency-Key` answer is kept (SPEC 2).
pub const IDEMPOTENCY_TTL: Duration = Duration::hours(24);

/// Why a command is refused. Each maps to exactly one API answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("not found")]
    NotFound,
    #[error("user with this external_id already enrolled")]
    AlreadyEnrolled,
    #[error("session is not pending")]
    SessionNotPending,
    #[error("Idempotency-Key was already used with a different request")]
    IdempotencyMismatch,
    #[error("partner already exists")]
    PartnerExists,
    #[error("reader is offline")]
    ReaderOffline,
    /// Another open session holds the reader (armed for it, or a trigger session bound to it).
    #[error("reader is busy with another session")]
    ReaderBusy,
    /// A partner's session asked for a door's reader: door readers decide doors only.
    #[error("reader belongs to a door")]
    ReaderAtDoor,
    /// A test ping asked of a disabled webhook.
    #[error("webhook is disabled: enable it (POST /v1/webhook/enable), then send the test")]
    WebhookDisabled,
    /// The partner was deactivated (after its request passed the gate: its body was slow).
    #[error("partner account is inactive")]
    PartnerInactive,
    #[error("{0}")]
    Invalid(&'static str),
    #[error("invalid site policy: {}", .0.join("; "))]
    InvalidPolicy(Vec<String>),
}

/// A command for a reader (SPEC 5, `cmd` topic). Tokens and URLs are filled in by the shell.
#[derive(Clone, Debug, PartialEq)]
pub enum ReaderCommand {
    /// Arm for a hosted-page session.
    Capture {
        session_id: SessionId,
        kind: SessionKind,
        language: Language,
    },
    /// Show a hosted page's URL (trigger flow).
    Show { session_id: SessionId },
    /// Show a URL made elsewhere (upstream mode: the remote's identify page).
    ShowUrl { url: String },
    /// No door decision for the person at the reader (upstream mode: the remote failed, expired,
    /// answered too late or could not be reached; a kiosk's site session at a door's reader:
    /// it failed `low_quality`); sent as a denied `result`, the shell localizes the message.
    NotIdentified {
        door: Option<DoorId>,
        why: super::upstream::Unidentified,
    },
    /// Ask for another scan.
    Retry { reason: FailReason },
    /// The outcome of a door decision (the shell localizes the message).
    Result {
        granted: bool,
        door: DoorId,
        reason: Option<DenyReason>,
        /// Granted at a door whose relay board the state knows to be down: the pulse will be
        /// dropped, so the person is told the door cannot open now (not welcomed).
        unopenable: bool,
    },
}

/// Something to do once the decision's events are durable.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    Reader {
        reader_id: ReaderId,
        command: ReaderCommand,
    },
    Relay {
        device: String,
        command: RelayCommand,
    },
}

/// What a command produced.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub appends: Vec<StreamAppend>,
    pub effects: Vec<Effect>,
    pub outcome: Outcome,
}

/// What the caller should answer, beyond "it happened".
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// A session exists for this request: new, or the one an `Idempotency-Key` already made.
    Session {
        id: SessionId,
        replayed: bool,
    },
    /// The input was already handled (a repeated `capture_id` or `trigger_id`).
    Duplicate,
    /// How many deliveries a recover rescheduled.
    Rescheduled(usize),
    /// How many people's zone presence an operator's forgive ended.
    Forgiven(usize),
}

impl Decision {
    pub(crate) fn new(appends: Vec<StreamAppend>) -> Self {
        Self {
            appends,
            effects: vec![],
            outcome: Outcome::Done,
        }
    }
    pub(crate) fn with_effect(mut self, e: Effect) -> Self {
        self.effects.push(e);
        self
    }
    pub(crate) fn duplicate() -> Self {
        Self {
            outcome: Outcome::Duplicate,
            ..Self::new(vec![])
        }
    }
    pub fn events(&self) -> impl Iterator<Item = &Event> {
        self.appends.iter().flat_map(|a| a.events.iter())
    }
}

pub(crate) fn one(stream: String, expected: Expected, event: Event) -> StreamAppend {
    StreamAppend {
        stream,
        expected,
        events: vec![event],
    }
}

impl State {
    pub(crate) fn expected(&self, stream: &str) -> Expected {
        match self.revision(stream) {
            Some(r) => Expected::Revision(r),
            None => Expected::NoStream,
        }
    }
}

/// Most sessions one `Tick` expires (the earliest due first).
pub const MAX_EXPIRIES_PER_TICK: usize = 256;

/// Decides what `cmd` means given `state` at `now`. Pure: no IO, no clock, no randomness.
pub fn decide(state: &State, cmd: &Command, now: DateTime<Utc>) -> Result<Decision, Rejection> {
    let mut d = decide_parts(state, cmd, now)?;
    merge_streams(&mut d.appends);
    Ok(d)
}

/// Joins appends to one stream into the first of them. Each part of a decision expects its
/// stream's revision in `state`, so a second part on the same stream (a `Tick` that both ends
/// a door's unlock window and raises its held-open alarm) would expect a revision the first
/// part has just passed: the store refuses it as a conflict every time, and the command is
/// retried until it gives up. Parts that expect different things are left for the store to
/// judge.
pub(crate) fn merge_streams(appends: &mut Vec<StreamAppend>) {
    if appends.len() < 2 {
        return;
    }
    let mut merged: Vec<StreamAppend> = Vec::with_capacity(appends.len());
    for a in appends.drain(..) {
        match merged
            .iter_mut()
            .find(|m| m.stream == a.stream && m.expected == a.expected)
        {
            Some(m) => m.events.extend(a.events),
            None => merged.push(a),
        }
    }
    *appends = merged;
}

fn decide_parts(state: &State, cmd: &Command, now: DateTime<Utc>) -> Result<Decision, Rejection> {
    match cmd {
        Command::CreatePartner {
            partner_id,
            name,
            api_key_hash,
            webhook,
        } => {
            if state.partners.contains_key(partner_id) {
                return Err(Rejection::PartnerExists);
            }
            // Names are unique (trimmed, case-insensitive): a site policy's `partners` admits
            // partners by name, so a second "A" would be admitted wherever the first is. Logs
            // written before this rule keep their duplicates (the fold does not check).
            if partner_named(state, name).is_some() {
                return Err(Rejection::PartnerExists);
            }
            let mut appends = vec![one(
                stream::partner(*partner_id),
                Expected::NoStream,
                Event::PartnerCreated {
                    partner_id: *partner_id,
                    name: name.clone(),
                    api_key_hash: api_key_hash.clone(),
                    at: now,
                },
            )];
            if let Some(w) = webhook {
                let st = stream::webhook(*partner_id);
                appends.push(one(
                    st.clone(),
                    state.expected(&st),
                    Event::WebhookConfigured {
                        partner_id: *partner_id,
                        url: w.url.clone(),
                        secret: w.secret.clone(),
                        events: w.events.clone(),
                        at: now,
                    },
                ));
            }
            Ok(Decision::new(appends))
        }
        Command::SetPartnerActive { partner_id, active } => {
            let p = state.partners.get(partner_id).ok_or(Rejection::NotFound)?;
            if p.active == *active {
                return Ok(Decision::new(vec![]));
            }
            let (partner_id, at) = (*partner_id, now);
            let event = if *active {
                Event::PartnerActivated { partner_id, at }
            } else {
                Event::PartnerDeactivated { partner_id, at }
            };
            Ok(Decision::new(vec![one(
                stream::partner(partner_id),
                Expected::Revision(p.revision),
                event,
            )]))
        }
        Command::CreateSession {
            partner_id,
            session_id,
            token_hash,
            kind,
            language,
            enroll,
            idempotency,
            ttl,
        } => create_session(
            state,
            now,
            NewSession {
                partner_id: *partner_id,
                session_id: *session_id,
                token_hash,
                kind: *kind,
                language: *language,
                enroll: enroll.as_ref(),
                idempotency: idempotency.as_ref(),
                ttl: *ttl,
            },
        ),
        Command::CancelSession {
            partner,
            session_id,
        } => {
            let s = state.sessions.get(session_id).ok_or(Rejection::NotFound)?;
            if partner.is_some() && *partner != s.partner_id {
                return Err(Rejection::NotFound);
            }
            if !s.is_open(now) {
                return Err(Rejection::SessionNotPending);
            }
            Ok(Decision::new(end(
                state,
                s,
                End::Failed(FailReason::Cancelled),
                None,
                now,
            )))
        }
        Command::EraseUser {
            partner_id,
            external_id,
        } => {
            let u = state
                .user(*partner_id, external_id)
                .ok_or(Rejection::NotFound)?;
            Ok(Decision::new(vec![one(
                stream::user(*partner_id, external_id),
                Expected::Revision(u.revision),
                Event::UserErased {
                    partner_id: *partner_id,
                    external_id: external_id.clone(),
                    at: now,
                    clears_zones: true,
                },
            )]))
        }
        Command::ReaderStatus {
            reader_id,
            online,
            model,
            firmware,
        } => Ok(reader_status(
            state, reader_id, *online, model, firmware, now,
        )),
        Command::ArmReader {
            session_id,
            reader_id,
        } => {
            let s = state.sessions.get(session_id).ok_or(Rejection::NotFound)?;
            if !s.is_open(now) {
                return Err(Rejection::SessionNotPending);
            }
            if !state.readers.get(reader_id).is_some_and(|r| r.online) {
                return Err(Rejection::ReaderOffline);
            }
            // Armed there already, and still holding it (a page opened twice at once): nothing
            // to record, and the reader is not told again.
            if state
                .session_holding_reader(reader_id, now)
                .is_some_and(|h| h.id == s.id)
            {
                return Ok(Decision::new(vec![]));
            }
            // A kiosk's site session stays at the reader whose trigger started it: moved to a
            // desk, its door would never get the decision, and the door's reader could no
            // longer speak for it.
            if s.partner_id.is_none() && s.reader_id.as_ref() != Some(reader_id) {
                return Err(Rejection::Invalid(
                    "a kiosk session stays at the reader that started it",
                ));
            }
            // A door's reader serves the door (SPEC 5: a session-less scan there decides the
            // door): armed for a partner's enrollment, the next person scanning to get in would
            // be enrolled into that partner's records, and no door decision would follow. Only
            // a site session (a trigger at that reader) runs there.
            if s.partner_id.is_some()
                && state
                    .policy
                    .as_ref()
                    .is_some_and(|p| p.door_of_reader(reader_id).is_some())
            {
                return Err(Rejection::ReaderAtDoor);
            }
            // An enrollment must not take over a reader that another partner's session (or a
            // kiosk's site session) holds: the palm of the person standing there would be
            // enrolled into the other partner's records. The same partner's new link takes the
            // reader over (an app that started again), and so does an identification, which
            // only searches its own partner's users. A hold lapses `READER_HOLD` after the
            // reader was armed or last active for that session, so an abandoned page does not
            // block a desk's reader for the whole TTL (that session stays pending).
            if s.kind == SessionKind::Enroll
                && state
                    .session_holding_reader(reader_id, now)
                    .is_some_and(|other| {
                        other.id != s.id
                            && !(other.partner_id.is_some() && other.partner_id == s.partner_id)
                    })
            {
                return Err(Rejection::ReaderBusy);
            }
            Ok(Decision::new(vec![one(
                stream::session(s.id),
                Expected::Revision(s.revision),
                Event::SessionReaderArmed {
                    session_id: s.id,
                    reader_id: reader_id.clone(),
                    at: now,
                },
            )])
            .with_effect(Effect::Reader {
                reader_id: reader_id.clone(),
                command: ReaderCommand::Capture {
                    session_id: s.id,
                    kind: s.kind,
                    language: s.language,
                },
            }))
        }
        Command::Capture(c) => capture(state, c, now),
        Command::Trigger {
            reader_id,
            trigger_id,
            session_id,
            token_hash,
            ttl,
            language,
        } => {
            if state.seen.contains(&(
                reader_id.clone(),
                super::state::Seen::Trigger(trigger_id.clone()),
            )) {
                return Ok(Decision::duplicate());
            }
            let created = Event::SessionCreated {
                session_id: *session_id,
                partner_id: None,
                reader_id: Some(reader_id.clone()),
                kind: SessionKind::Identify,
                language: *language,
                token_hash: token_hash.clone(),
                external_id: None,
                username: None,
                metadata: None,
                created_at: now,
                expires_at: whole_seconds(now + *ttl),
                trigger_id: Some(trigger_id.clone()),
            };
            let mut d = Decision::new(vec![one(
                stream::session(*session_id),
                Expected::NoStream,
                created,
            )])
            .with_effect(Effect::Reader {
                reader_id: reader_id.clone(),
                command: ReaderCommand::Show {
                    session_id: *session_id,
                },
            });
            d.outcome = Outcome::Session {
                id: *session_id,
                replayed: false,
            };
            Ok(d)
        }
        Command::Tick => {
            let mut d = doors::resting_changes(
                state,
                state.policy.as_deref(),
                state.lockdown,
                state.emergency,
                now,
                "schedule",
            );
            d.appends.extend(doors::held_open(state, now));
            d.appends.extend(
                state
                    .deadlines
                    .iter()
                    .take_while(|(t, _)| *t <= now)
                    // A bounded batch: after a backlog (a stalled disk, a restart after hours)
                    // one append of every due session is huge and conflicts with any write to
                    // any of them; the shell ticks again while expiries are still due.
                    .take(MAX_EXPIRIES_PER_TICK)
                    .filter_map(|(_, id)| state.sessions.get(id))
                    .flat_map(|s| end(state, s, End::Expired, None, s.expires_at)),
            );
            Ok(d)
        }
        Command::ActivatePolicy { document, source } => {
            // The rules added since the first policies were logged refuse a new activation.
            if let Err(errors) = super::policy::Policy::parse_new_at(document, now) {
                return Err(Rejection::InvalidPolicy(
                    errors.iter().map(|e| e.to_string()).collect(),
                ));
            }
            doors::activate(state, document, source, now)
        }
        Command::SetSiteMode {
            lockdown,
            emergency,
        } => Ok(doors::set_mode(state, *lockdown, *emergency, now)),
        Command::ForgiveZone {
            zone,
            person,
            reason,
        } => doors::forgive(state, zone, person.as_ref(), reason.as_deref(), now),
        Command::Relay { report, at } => Ok(doors::relay_report(
            state,
            report,
            now,
            at.map_or(now, |t| t.min(now)),
        )),
        Command::UpstreamIdentify {
            reader_id,
            trigger_id,
            answer,
        } => super::upstream::identify(state, reader_id, trigger_id, answer, now),
        Command::UpstreamWebhook(e) => super::upstream::ended(state, e, now),
        Command::SetWebhook {
            partner_id,
            url,
            secret,
            events,
        } => {
            let st = stream::webhook(*partner_id);
            Ok(Decision::new(vec![one(
                st.clone(),
                state.expected(&st),
                Event::WebhookConfigured {
                    partner_id: *partner_id,
                    url: url.clone(),
                    secret: secret.clone(),
                    events: events.clone(),
                    at: now,
                },
            )]))
        }
        Command::EnableWebhook { partner_id } => {
            let w = state.webhook(*partner_id).ok_or(Rejection::NotFound)?;
            if w.active {
                return Ok(Decision::new(vec![]));
            }
            Ok(Decision::new(vec![one(
                stream::webhook(*partner_id),
                Expected::Revision(w.revision),
                Event::WebhookEnabled {
                    partner_id: *partner_id,
                    at: now,
                },
            )]))
        }
        Command::RotateWebhookSecret { partner_id, secret } => {
            let w = state.webhook(*partner_id).ok_or(Rejection::NotFound)?;
            Ok(Decision::new(vec![one(
                stream::webhook(*partner_id),
                Expected::Revision(w.revision),
                Event::WebhookSecretRotated {
                    partner_id: *partner_id,
                    secret: secret.clone(),
                    previous_until: now + ROTATION_OVERLAP,
                    at: now,
                },
            )]))
        }
        Command::TestWebhook {
            partner_id,
            delivery_id,
        } => {
            let w = state.webhook(*partner_id).ok_or(Rejection::NotFound)?;
            // A disabled webhook sends nothing: the ping would wait, held, for a `recover`,
            // long after it was asked for.
            if !w.active {
                return Err(Rejection::WebhookDisabled);
            }
            let data = serde_json::json!({ "message": "palmgate webhook test" });
            Ok(Decision::new(vec![one(
                stream::delivery(delivery_id),
                Expected::NoStream,
                Event::DeliveryQueued {
                    delivery_id: delivery_id.clone(),
                    partner_id: *partner_id,
                    event: "ping".into(),
                    session_id: None,
                    body: webhook::body("ping", now, &data),
                    held: false,
                    at: now,
                },
            )]))
        }
        Command::RecordAttempt(r) => record_attempt(state, r, now),
        Command::Redeliver {
            partner_id,
            delivery_id,
        } => {
            let d = state
                .delivery(delivery_id)
                .filter(|d| d.partner_id == *partner_id)
                .ok_or(Rejection::NotFound)?;
            Ok(Decision::new(vec![reschedule(d, now)]))
        }
        Command::Recover { partner_id, since } => {
            let mut ds: Vec<_> = state
                .deliveries_of(*partner_id)
                .filter(|d| d.created_at >= *since && d.status != DeliveryStatus::Delivered)
                .filter(|d| d.status != DeliveryStatus::Pending || d.attempt > 0)
                .collect();
            ds.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
            let appends: Vec<StreamAppend> = ds.into_iter().map(|d| reschedule(d, now)).collect();
            Ok(Decision {
                outcome: Outcome::Rescheduled(appends.len()),
                ..Decision::new(appends)
            })
        }
    }
}

/// How long a rotated-out webhook secret keeps signing.
pub const ROTATION_OVERLAP: Duration = Duration::hours(24);

fn reschedule(d: &super::state::Delivery, now: DateTime<Utc>) -> StreamAppend {
    one(
        stream::delivery(&d.id),
        Expected::Revision(d.revision),
        Event::DeliveryRescheduled {
            delivery_id: d.id.clone(),
            at: now,
        },
    )
}

/// Records one attempt; schedules the next, or fails the delivery and disables the webhook.
fn record_attempt(
    state: &State,
    r: &AttemptResult,
    now: DateTime<Utc>,
) -> Result<Decision, Rejection> {
    let d = state.delivery(&r.delivery_id).ok_or(Rejection::NotFound)?;
    // A result that no longer matches is refused and nothing is recorded: the sequence moved
    // on (a redeliver, or this attempt was already recorded), or the webhook was disabled
    // while the request was out and the attempt failed (re-enabling then sends the same
    // attempt again; recorded, a 5th failure would have failed a delivery the disabled webhook
    // should only hold). A success is a fact whatever the webhook's state: recorded.
    let delivered = r.status_code.is_some_and(webhook::is_success) && r.error.is_none();
    if d.status != DeliveryStatus::Pending {
        return Err(Rejection::Invalid(
            "webhook attempt result refused: the delivery is no longer pending",
        ));
    }
    if r.attempt != d.attempt + 1 {
        return Err(Rejection::Invalid(
            "webhook attempt result refused: its attempt number is not the delivery's next",
        ));
    }
    if !delivered && !state.webhook(d.partner_id).is_some_and(|w| w.active) {
        return Err(Rejection::Invalid(
            "webhook attempt result refused: the webhook is disabled",
        ));
    }
    let next = if delivered {
        None
    } else {
        webhook::next_attempt_at(r.attempt, now, r.retry_after)
    };
    let mut appends = vec![one(
        stream::delivery(&d.id),
        Expected::Revision(d.revision),
        Event::DeliveryAttempted {
            delivery_id: d.id.clone(),
            attempt: r.attempt,
            status_code: r.status_code,
            error: r.error.clone(),
            latency_ms: r.latency_ms,
            response: r.response.clone(),
            delivered,
            next_attempt_at: next,
            at: now,
        },
    )];
    if !delivered
        && next.is_none()
        && let Some(w) = state.webhook(d.partner_id).filter(|w| w.active)
    {
        appends.push(one(
            stream::webhook(d.partner_id),
            Expected::Revision(w.revision),
            Event::WebhookDisabled {
                partner_id: d.partner_id,
                delivery_id: d.id.clone(),
                at: now,
            },
        ));
    }
    Ok(Decision::new(appends))
}

/// How a session ends.
enum End {
    Completed(ExternalId),
    Failed(FailReason),
    Expired,
}

/// The events ending session `s`: its terminal event and, in the same write (the outbox), the
/// webhook delivery announcing it when its partner has a webhook.
fn end(
    state: &State,
    s: &Session,
    how: End,
    capture: Option<CaptureRef>,
    now: DateTime<Utc>,
) -> Vec<StreamAppend> {
    let (event, name) = match &how {
        End::Completed(external_id) => (
            Event::SessionCompleted {
                session_id: s.id,
                external_id: Some(external_id.clone()),
                capture,
                at: now,
            },
            "completed",
        ),
        End::Failed(reason) => (
            Event::SessionFailed {
                session_id: s.id,
                reason: *reason,
                capture,
                at: now,
            },
            "failed",
        ),
        End::Expired => (
            Event::SessionExpired {
                session_id: s.id,
                at: now,
            },
            "expired",
        ),
    };
    let mut out = vec![one(
        stream::session(s.id),
        Expected::Revision(s.revision),
        event,
    )];
    let Some(partner) = s.partner_id else {
        return out;
    };
    let Some(hook) = state.webhook(partner).filter(|w| w.wants("session")) else {
        return out;
    };
    // Who the session was about: the enrollee, or the identified user.
    let matched = match &how {
        End::Completed(e) if s.kind == SessionKind::Identify => state.user(partner, e),
        _ => None,
    };
    let (external_id, username, metadata) = match (s.kind, matched) {
        (SessionKind::Enroll, _) => (
            s.external_id.as_ref(),
            s.username.as_deref(),
            s.metadata.as_ref(),
        ),
        (SessionKind::Identify, Some(u)) => (
            Some(&u.external_id),
            u.username.as_deref(),
            u.metadata.as_ref(),
        ),
        (SessionKind::Identify, None) => (None, None, None),
    };
    let data = webhook::SessionData {
        session_id: s.id,
        kind: s.kind,
        external_id,
        username,
        metadata,
        fail_reason: match how {
            End::Failed(r) => Some(r),
            _ => None,
        },
        language: s.language,
    };
    let delivery_id = webhook::session_delivery_id(s.id);
    out.push(one(
        stream::delivery(&delivery_id),
        Expected::NoStream,
        Event::DeliveryQueued {
            delivery_id,
            partner_id: partner,
            event: name.into(),
            session_id: Some(s.id),
            body: webhook::body(name, now, &data),
            held: !hook.active,
            at: now,
        },
    ));
    out
}

fn reader_status(
    state: &State,
    reader_id: &ReaderId,
    online: bool,
    model: &Option<String>,
    firmware: &Option<String>,
    now: DateTime<Utc>,
) -> Decision {
    let known = state.readers.get(reader_id);
    let unchanged = known.is_some_and(|r| {
        r.online == online && (!online || (r.model == *model && r.firmware == *firmware))
    });
    if unchanged {
        return Decision::new(vec![]);
    }
    let s = stream::reader(reader_id);
    let mut appends = vec![one(
        s.clone(),
        state.expected(&s),
        Event::ReaderStatusChanged {
            reader_id: reader_id.clone(),
            online,
            model: model.clone(),
            firmware: firmware.clone(),
            at: now,
        },
    )];
    if !online {
        // Sessions waiting on this reader cannot finish: they fail `reader_offline`.
        let mut waiting: Vec<&Session> = state
            .sessions
            .values()
            .filter(|s| s.reader_id.as_ref() == Some(reader_id) && s.is_open(now))
            .collect();
        waiting.sort_by_key(|s| s.id);
        for s in waiting {
            appends.extend(end(
                state,
                s,
                End::Failed(FailReason::ReaderOffline),
                None,
                now,
            ));
        }
    }
    Decision::new(appends)
}

fn capture(state: &State, c: &Capture, now: DateTime<Utc>) -> Result<Decision, Rejection> {
    if state.seen.contains(&(
        c.reader_id.clone(),
        super::state::Seen::Capture(c.capture_id.clone()),
    )) {
        return Ok(Decision::duplicate());
    }
    let rejected = |reason| {
        let s = stream::reader(&c.reader_id);
        Ok(Decision::new(vec![one(
            s.clone(),
            state.expected(&s),
            Event::CaptureRejected {
                reader_id: c.reader_id.clone(),
                capture_id: c.capture_id.clone(),
                reason,
                quality: None,
                judged: None,
                at: now,
            },
        )]))
    };
    let Some(token) = &c.session else {
        return doors::scan(state, c, now);
    };
    let Some(s) = state.session_by_token_hash(token) else {
        return rejected(CaptureRejection::UnknownSession);
    };
    if !s.is_open(now) {
        return rejected(CaptureRejection::SessionNotPending);
    }
    // Only the reader the session is armed at speaks for it: one armed before the session
    // moved on still holds its token. A session armed nowhere takes a capture from a reader
    // that serves no door (anyone holding its link could arm that reader anyway), but never
    // from a door's reader, which no partner's session may be armed at: one that learnt the
    // token some other way would enroll or identify whoever scans there to get in. A site
    // session is bound to its reader from the trigger on.
    let at_door_reader = || {
        state
            .policy
            .as_ref()
            .is_some_and(|p| p.door_of_reader(&c.reader_id).is_some())
    };
    let speaks = match &s.reader_id {
        Some(r) => *r == c.reader_id,
        None => s.partner_id.is_none() || !at_door_reader(),
    };
    if !speaks {
        return rejected(CaptureRejection::WrongReader);
    }
    let rules = state.rules;
    let matched = c.best.as_ref().filter(|b| b.similarity >= rules.threshold);
    let cref = c.reference(&rules);
    // A site session (a reader's trigger) at a door's reader: that door and its policy.
    let site_door = || {
        let policy = state.policy.as_ref().filter(|_| s.partner_id.is_none())?;
        Some((policy, policy.door_of_reader(&c.reader_id)?))
    };
    // A site session at a door's reader: the door decision follows its end, as for a
    // session-less capture at that door (SPEC 5, SPEC 7: a `result` follows).
    let at_door =
        |d: &mut Decision, cref: &CaptureRef, matched: Option<&super::matcher::Candidate>| {
            if let Some((policy, door)) = site_door() {
                let user = matched.and_then(|m| state.user(m.partner_id, &m.external_id));
                let subject = user.map(|u| doors::subject(state, u));
                let erased = matched.is_some() && user.is_none();
                let door_d = doors::decide_door(state, policy, door, cref, subject, erased, now);
                d.appends.extend(door_d.appends);
                d.effects.extend(door_d.effects);
            }
        };
    if !c.liveness {
        // A failed liveness check identifies no one: denied at a door, as a door scan is.
        let mut d = Decision::new(end(
            state,
            s,
            End::Failed(FailReason::LivenessFailed),
            Some(cref.clone()),
            now,
        ));
        at_door(&mut d, &cref, None);
        return Ok(d);
    }
    if c.quality < rules.min_quality {
        if s.retries >= rules.max_retries {
            let mut d = Decision::new(end(
                state,
                s,
                End::Failed(FailReason::LowQuality),
                Some(cref),
                now,
            ));
            // At a door's reader the person is told, in the shape of a denial (SPEC 7), with
            // no door decision: a capture too poor to judge decides no door (a door scan of
            // that quality is only a retry, and `audit verify` finds a decision on one).
            if let Some((_, door)) = site_door() {
                d = d.with_effect(Effect::Reader {
                    reader_id: c.reader_id.clone(),
                    command: ReaderCommand::NotIdentified {
                        door: Some(door.id.clone()),
                        why: super::upstream::Unidentified::Failed(
                            FailReason::LowQuality.as_str().into(),
                        ),
                    },
                });
            }
            return Ok(d);
        }
        return Ok(Decision::new(vec![one(
            stream::session(s.id),
            Expected::Revision(s.revision),
            Event::CaptureRetryRequested {
                session_id: s.id,
                capture: cref,
                attempt: s.retries + 1,
                at: now,
            },
        )])
        .with_effect(Effect::Reader {
            reader_id: c.reader_id.clone(),
            command: ReaderCommand::Retry {
                reason: FailReason::LowQuality,
            },
        }));
    }
    // The matched user as the state has it now. The search ran before this decision: a user
    // erased since is no longer a match (the shell searches again when it retries).
    let known = matched.filter(|m| state.user(m.partner_id, &m.external_id).is_some());
    match s.kind {
        SessionKind::Identify => {
            let mut d = match known {
                Some(m) => {
                    let mut appends = end(
                        state,
                        s,
                        End::Completed(m.external_id.clone()),
                        Some(cref.clone()),
                        now,
                    );
                    // A condition on the user's stream (no event): an erasure appended after
                    // this was decided refuses it, and it is decided again without that user.
                    appends.push(read_condition(
                        state,
                        stream::user(m.partner_id, &m.external_id),
                    ));
                    Decision::new(appends)
                }
                None => Decision::new(end(
                    state,
                    s,
                    End::Failed(FailReason::NoMatch),
                    Some(cref.clone()),
                    now,
                )),
            };
            at_door(&mut d, &cref, matched);
            Ok(d)
        }
        SessionKind::Enroll => enroll_capture(state, s, c, cref, known, now),
    }
}

/// An append without events: a condition that `stream` is still at the revision `state` has
/// (the store refuses the whole write otherwise).
fn read_condition(state: &State, stream: String) -> StreamAppend {
    StreamAppend {
        expected: state.expected(&stream),
        stream,
        events: vec![],
    }
}

/// The partner named `name`, trimmed and compared case-insensitively (partner names are
/// unique that way).
pub fn partner_named<'a>(state: &'a State, name: &str) -> Option<&'a Partner> {
    let wanted = name.trim().to_lowercase();
    state
        .partners()
        .find(|p| p.name.trim().to_lowercase() == wanted)
}

fn enroll_capture(
    state: &State,
    s: &Session,
    c: &Capture,
    cref: CaptureRef,
    palm_known: Option<&super::matcher::Candidate>,
    now: DateTime<Utc>,
) -> Result<Decision, Rejection> {
    let (Some(partner_id), Some(external_id)) = (s.partner_id, s.external_id.clone()) else {
        return Err(Rejection::Invalid(
            "enroll session without partner or external_id",
        ));
    };
    let taken = state.user(partner_id, &external_id).is_some();
    if palm_known.is_some() || taken {
        let mut appends = end(
            state,
            s,
            End::Failed(FailReason::AlreadyEnrolled),
            Some(cref),
            now,
        );
        // The palm's owner was read: their erasure appended after this refuses it.
        if let Some(m) = palm_known {
            appends.push(read_condition(
                state,
                stream::user(m.partner_id, &m.external_id),
            ));
        }
        return Ok(Decision::new(appends));
    }
    let Some(sealed) = c.sealed.clone() else {
        return Err(Rejection::Invalid(
            "enroll capture without a sealed template",
        ));
    };
    let user_stream = stream::user(partner_id, &external_id);
    let user_expected = match state.user_revision(partner_id, &external_id) {
        Some(r) => Expected::Revision(r),
        None => Expected::NoStream,
    };
    let mut appends = end(
        state,
        s,
        End::Completed(external_id.clone()),
        Some(cref),
        now,
    );
    appends.push(one(
        user_stream,
        user_expected,
        Event::UserEnrolled {
            partner_id,
            external_id,
            username: s.username.clone(),
            metadata: s.metadata.clone(),
            session_id: s.id,
            template: Some(sealed),
            at: now,
        },
    ));
    Ok(Decision::new(appends))
}

struct NewSession<'a> {
    partner_id: PartnerId,
    session_id: SessionId,
    token_hash: &'a SecretHash,
    kind: SessionKind,
    language: Language,
    enroll: Option<&'a EnrollRequest>,
    idempotency: Option<&'a Idempotency>,
    ttl: Duration,
}

fn create_session(
    state: &State,
    now: DateTime<Utc>,
    n: NewSession<'_>,
) -> Result<Decision, Rejection> {
    // The gate checked the partner before the body was read; it may have been deactivated
    // since. The condition on its stream refuses a deactivation that lands meanwhile, and the
    // decision taken again says 403.
    if !state.partners.get(&n.partner_id).is_some_and(|p| p.active) {
        return Err(Rejection::PartnerInactive);
    }
    let mut appends = Vec::with_capacity(3);
    if let Some(idem) = n.idempotency {
        let live = state
            .idempotency
            .get(&(n.partner_id, idem.key.clone()))
            // A key whose session the state has forgotten (`sessions.retention` shorter than
            // the key's 24 h) cannot be answered again: it starts a new session.
            .filter(|e| now < e.at + IDEMPOTENCY_TTL && state.sessions.contains_key(&e.session_id));
        if let Some(entry) = live {
            if entry.fingerprint != idem.fingerprint {
                return Err(Rejection::IdempotencyMismatch);
            }
            return Ok(Decision {
                appends: vec![],
                effects: vec![],
                outcome: Outcome::Session {
                    id: entry.session_id,
                    replayed: true,
                },
            });
        }
    }
    // After the idempotency lookup: a retry whose first answer was lost gets that answer,
    // even if the person has enrolled since.
    if let Some(e) = n.enroll
        && state
            .users
            .contains_key(&(n.partner_id, e.external_id.clone()))
    {
        return Err(Rejection::AlreadyEnrolled);
    }
    appends.push(one(
        stream::session(n.session_id),
        Expected::NoStream,
        Event::SessionCreated {
            session_id: n.session_id,
            partner_id: Some(n.partner_id),
            reader_id: None,
            kind: n.kind,
            language: n.language,
            token_hash: n.token_hash.clone(),
            external_id: n.enroll.map(|e| e.external_id.clone()),
            username: n.enroll.and_then(|e| e.username.clone()),
            metadata: n.enroll.and_then(|e| e.metadata.clone()),
            created_at: now,
            expires_at: whole_seconds(now + n.ttl),
            trigger_id: None,
        },
    ));
    if let Some(idem) = n.idempotency {
        let key_stream = stream::idempotency(n.partner_id, &idem.key);
        appends.push(one(
            key_stream.clone(),
            state.expected(&key_stream),
            Event::IdempotencyKeyUsed {
                partner_id: n.partner_id,
                key: idem.key.clone(),
                fingerprint: idem.fingerprint.clone(),
                session_id: n.session_id,
                at: now,
            },
        ));
    }
    appends.push(read_condition(state, stream::partner(n.partner_id)));
    Ok(Decision {
        appends,
        effects: vec![],
        outcome: Outcome::Session {
            id: n.session_id,
            replayed: false,
        },
    })
}

/// A session's deadline in whole seconds: the API and the page show `expires_at` to the second,
/// and a session must not stay open past the instant it was said to end.
fn whole_seconds(t: DateTime<Utc>) -> DateTime<Utc> {
    use chrono::SubsecRound;
    t.trunc_subsecs(0)
}

#[cfg(test)]
mod merge_tests {
    use super::*;

    fn ping(n: u8) -> Event {
        Event::PartnerActivated {
            partner_id: PartnerId(uuid::Uuid::from_u128(n.into())),
            at: DateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn appends_to_one_stream_expecting_the_same_revision_become_one() {
        let mut appends = vec![
            one("door-a".into(), Expected::Revision(4), ping(1)),
            one("session-x".into(), Expected::NoStream, ping(2)),
            one("door-a".into(), Expected::Revision(4), ping(3)),
            one("door-a".into(), Expected::Revision(9), ping(4)),
        ];
        merge_streams(&mut appends);
        let shape: Vec<(&str, Expected, usize)> = appends
            .iter()
            .map(|a| (a.stream.as_str(), a.expected, a.events.len()))
            .collect();
        assert_eq!(
            shape,
            vec![
                ("door-a", Expected::Revision(4), 2),
                ("session-x", Expected::NoStream, 1),
                ("door-a", Expected::Revision(9), 1),
            ]
        );
        assert_eq!(appends[0].events, vec![ping(1), ping(3)]);
    }
}

#[cfg(test)]
mod reader_hold_tests {
    use super::*;
    use crate::core::event::{CaptureRef, Recorded, stream};
    use crate::core::session::READER_HOLD;

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_790_000_000, 0).unwrap()
    }
    fn partner(n: u8) -> PartnerId {
        PartnerId::from_random([n; 16])
    }
    fn sid(n: u8) -> SessionId {
        SessionId::from_random([n; 16])
    }
    fn desk() -> ReaderId {
        ReaderId("desk-1".into())
    }

    /// A state folded from a log as the store would record it.
    struct Log {
        state: State,
        position: u64,
    }

    impl Log {
        fn fold(&mut self, stream: String, event: Event, at: DateTime<Utc>) {
            self.position += 1;
            let revision = self.state.revision(&stream).map_or(0, |r| r + 1);
            self.state.evolve(&Recorded {
                position: self.position,
                stream,
                revision,
                recorded_at: at,
                event,
                prev_hash: [0; 32],
                hash: [0; 32],
            });
        }
        fn apply(&mut self, d: Decision, at: DateTime<Utc>) {
            for a in d.appends {
                for e in a.events {
                    self.fold(a.stream.clone(), e, at);
                }
            }
        }
        /// Partner `p`'s pending enroll session `n`.
        fn enroll(&mut self, n: u8, p: u8) {
            let event = Event::SessionCreated {
                session_id: sid(n),
                partner_id: Some(partner(p)),
                reader_id: None,
                kind: SessionKind::Enroll,
                language: Language::En,
                token_hash: SecretHash(format!("{n:064x}")),
                external_id: Some(ExternalId(format!("EMP-{n}"))),
                username: None,
                metadata: None,
                created_at: t0(),
                expires_at: t0() + Duration::minutes(15),
                trigger_id: None,
            };
            self.fold(stream::session(sid(n)), event, t0());
        }
        fn arm(&self, n: u8, now: DateTime<Utc>) -> Result<Decision, Rejection> {
            let cmd = Command::ArmReader {
                session_id: sid(n),
                reader_id: desk(),
            };
            decide(&self.state, &cmd, now)
        }
    }

    /// Partner 1's session 1 armed desk-1 at t0; partner 2's session 2 is pending.
    fn armed() -> Log {
        let mut log = Log {
            state: State::new(Rules::default()),
            position: 0,
        };
        let online = Event::ReaderStatusChanged {
            reader_id: desk(),
            online: true,
            model: None,
            firmware: None,
            at: t0(),
        };
        log.fold(stream::reader(&desk()), online, t0());
        log.enroll(1, 1);
        log.enroll(2, 2);
        let d = log.arm(1, t0()).expect("a free reader is armed");
        log.apply(d, t0());
        log
    }

    #[test]
    fn another_partners_enrollment_takes_the_reader_exactly_when_the_hold_lapses() {
        let log = armed();
        let just_before = t0() + READER_HOLD - Duration::nanoseconds(1);
        assert_eq!(log.arm(2, just_before).err(), Some(Rejection::ReaderBusy));
        let d = log.arm(2, t0() + READER_HOLD).expect("the hold has lapsed");
        assert!(matches!(
            &d.appends[0].events[..],
            [Event::SessionReaderArmed { session_id, .. }] if *session_id == sid(2)
        ));
        // The first session stays pending and holds nothing any more.
        let first = log.state.session(sid(1)).unwrap();
        assert!(first.is_open(t0() + READER_HOLD));
        assert!(!first.holds_reader(&desk(), t0() + READER_HOLD));
    }

    #[test]
    fn a_capture_at_the_reader_starts_the_hold_again_and_one_elsewhere_does_not() {
        let mut log = armed();
        let retry = |reader: &str, attempt: u32, at: DateTime<Utc>| Event::CaptureRetryRequested {
            session_id: sid(1),
            capture: CaptureRef {
                reader_id: ReaderId(reader.into()),
                capture_id: format!("cap-{attempt}"),
                quality: 0.2,
                similarity: None,
                judged: None,
            },
            attempt,
            at,
        };
        // A low-quality scan at another reader is no activity at desk-1.
        let at = t0() + Duration::seconds(30);
        log.fold(stream::session(sid(1)), retry("desk-2", 1, at), at);
        let at = t0() + Duration::seconds(90);
        log.fold(stream::session(sid(1)), retry("desk-1", 2, at), at);
        assert_eq!(
            log.arm(2, t0() + READER_HOLD).err(),
            Some(Rejection::ReaderBusy),
            "the retry at desk-1 renewed the hold"
        );
        let lapses = at + READER_HOLD;
        assert_eq!(
            log.arm(2, lapses - Duration::nanoseconds(1)).err(),
            Some(Rejection::ReaderBusy)
        );
        assert!(log.arm(2, lapses).is_ok());
    }

    /// A door's reader is never armed for a partner's session: the next person scanning to get
    /// in would be enrolled into that partner's records, with no door decision. A desk reader
    /// (in no door) is.
    #[test]
    fn a_partners_session_cannot_arm_a_doors_reader() {
        let mut log = armed();
        let doc = "timezone = \"Asia/Almaty\"\n\n[[relay_devices]]\nid = \"b\"\nmodbus = \"tcp://127.0.0.1:9\"\n\n\
             [[doors]]\nid = \"main\"\nreaders = [\"lobby-1\"]\nrelay = { device = \"b\", coil = 0 }\n\n\
             [schedules]\nalways = [\"* * * * * *\"]\n\n[[levels]]\nname = \"l\"\ndoors = [\"main\"]\nschedule = \"always\"\n";
        let cmd = Command::ActivatePolicy {
            document: doc.into(),
            source: "startup".into(),
        };
        let d = decide(&log.state, &cmd, t0()).unwrap();
        log.apply(d, t0());
        let lobby = ReaderId("lobby-1".into());
        let online = Event::ReaderStatusChanged {
            reader_id: lobby.clone(),
            online: true,
            model: None,
            firmware: None,
            at: t0(),
        };
        log.fold(stream::reader(&lobby), online, t0());
        let arm = |reader: &ReaderId| Command::ArmReader {
            session_id: sid(2),
            reader_id: reader.clone(),
        };
        assert_eq!(
            decide(&log.state, &arm(&lobby), t0()).err(),
            Some(Rejection::ReaderAtDoor)
        );
        let at = t0() + READER_HOLD;
        assert!(decide(&log.state, &arm(&desk()), at).is_ok());
    }

    /// A kiosk's site session (a trigger at lobby-1) stays at its reader: a page cannot move it
    /// to a desk, where its door would never get the decision.
    #[test]
    fn a_kiosk_session_is_not_armed_at_another_reader() {
        let mut log = armed();
        let lobby = ReaderId("lobby-1".into());
        for r in [&lobby, &ReaderId("desk-2".into())] {
            let online = Event::ReaderStatusChanged {
                reader_id: r.clone(),
                online: true,
                model: None,
                firmware: None,
                at: t0(),
            };
            log.fold(stream::reader(r), online, t0());
        }
        let kiosk = Event::SessionCreated {
            session_id: sid(9),
            partner_id: None,
            reader_id: Some(lobby.clone()),
            kind: SessionKind::Identify,
            language: Language::En,
            token_hash: SecretHash(format!("{:064x}", 9)),
            external_id: None,
            username: None,
            metadata: None,
            created_at: t0(),
            expires_at: t0() + Duration::minutes(15),
            trigger_id: Some("trg-9".into()),
        };
        log.fold(stream::session(sid(9)), kiosk, t0());
        let arm = |reader: &ReaderId| Command::ArmReader {
            session_id: sid(9),
            reader_id: reader.clone(),
        };
        assert_eq!(
            decide(&log.state, &arm(&ReaderId("desk-2".into())), t0()).err(),
            Some(Rejection::Invalid(
                "a kiosk session stays at the reader that started it"
            ))
        );
        assert!(decide(&log.state, &arm(&lobby), t0()).is_ok());
    }

    /// A capture for a session counts only from the reader it is armed at: one armed for it
    /// before it moved to another reader still holds its token.
    #[test]
    fn a_capture_from_a_reader_the_session_is_not_armed_at_is_rejected() {
        let log = armed();
        let capture = |reader: &str| {
            Command::Capture(Capture {
                reader_id: ReaderId(reader.into()),
                capture_id: format!("c-{reader}"),
                session: Some(SecretHash(format!("{:064x}", 1))),
                quality: 0.9,
                liveness: true,
                best: None,
                sealed: None,
            })
        };
        let wrong = |d: &Decision| {
            d.appends.iter().flat_map(|a| &a.events).any(|e| {
                matches!(
                    e,
                    Event::CaptureRejected {
                        reason: CaptureRejection::WrongReader,
                        ..
                    }
                )
            })
        };
        let at = t0() + Duration::seconds(5);
        let d = decide(&log.state, &capture("desk-2"), at).unwrap();
        assert!(wrong(&d), "{:?}", d.appends);
        assert!(
            d.appends
                .iter()
                .all(|a| a.stream != stream::session(sid(1))),
            "the session is untouched: {:?}",
            d.appends
        );
        // At desk-1 the capture reaches the enrollment (which wants a sealed template).
        assert_eq!(
            decide(&log.state, &capture("desk-1"), at).err(),
            Some(Rejection::Invalid(
                "enroll capture without a sealed template"
            ))
        );
    }
}

#[cfg(test)]
mod site_file_tests {
    use super::*;
    use crate::core::event::Recorded;

    fn doc(coil: u16) -> String {
        format!(
            "timezone = \"Asia/Almaty\"\n\n[[relay_devices]]\nid = \"b\"\nmodbus = \"tcp://127.0.0.1:9\"\n\n\
             [[doors]]\nid = \"main\"\nreaders = [\"r\"]\nrelay = {{ device = \"b\", coil = {coil} }}\n\n\
             [schedules]\nalways = [\"* * * * * *\"]\n\n[[levels]]\nname = \"l\"\ndoors = [\"main\"]\nschedule = \"always\"\n"
        )
    }

    fn activate(state: &mut State, position: &mut u64, document: &str, source: &str) -> usize {
        let at = DateTime::from_timestamp(1_790_000_000, 0).unwrap();
        let d = decide(
            state,
            &Command::ActivatePolicy {
                document: document.into(),
                source: source.into(),
            },
            at,
        )
        .unwrap();
        let mut n = 0;
        for a in d.appends {
            for event in a.events {
                *position += 1;
                n += 1;
                let revision = state.revision(&a.stream).map_or(0, |r| r + 1);
                state.evolve(&Recorded {
                    position: *position,
                    stream: a.stream.clone(),
                    revision,
                    recorded_at: at,
                    event,
                    prev_hash: [0; 32],
                    hash: [0; 32],
                });
            }
        }
        n
    }

    /// The site file's document, already in force through the admin API, read from the file
    /// for the first time: recorded, so start-up knows the file was read and does not activate
    /// it again over a later upload. Read again, or uploaded again: nothing recorded.
    #[test]
    fn the_document_in_force_is_recorded_when_it_first_comes_from_the_site_file() {
        let (mut state, mut pos) = (State::default(), 0);
        assert_eq!(activate(&mut state, &mut pos, &doc(0), "startup"), 1);
        assert_eq!(activate(&mut state, &mut pos, &doc(1), "admin"), 1);
        let file = state.policy_file_sha256.clone();
        assert_eq!(activate(&mut state, &mut pos, &doc(1), "sighup"), 1);
        assert_ne!(state.policy_file_sha256, file);
        assert_eq!(
            state.policy_file_sha256.as_deref(),
            state.policy.as_ref().map(|p| p.sha256.as_str())
        );
        assert_eq!(activate(&mut state, &mut pos, &doc(1), "startup"), 0);
        assert_eq!(activate(&mut state, &mut pos, &doc(1), "admin"), 0);
    }
}

#[cfg(test)]
mod relay_time_tests {
    use super::*;
    use crate::core::command::RelayReport;
    use crate::core::event::Recorded;

    const DOC: &str = "timezone = \"Asia/Almaty\"\n\n[[relay_devices]]\nid = \"b\"\nmodbus = \"tcp://127.0.0.1:9\"\n\n\
        [[doors]]\nid = \"main\"\nreaders = [\"r\"]\nrelay = { device = \"b\", coil = 0, pulse_ms = 3000 }\n\
        contact = { device = \"b\", input = 0 }\nrex = { device = \"b\", input = 1 }\n\n\
        [schedules]\nalways = [\"* * * * * *\"]\n\n[[levels]]\nname = \"l\"\ndoors = [\"main\"]\nschedule = \"always\"\n";

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_790_000_000 + s, 0).unwrap()
    }

    /// Decides `cmd` at `now` and folds what it records; returns the decision.
    fn run(state: &mut State, position: &mut u64, cmd: Command, now: DateTime<Utc>) -> Decision {
        let d = decide(state, &cmd, now).unwrap();
        for a in &d.appends {
            for event in &a.events {
                *position += 1;
                let revision = state.revision(&a.stream).map_or(0, |r| r + 1);
                state.evolve(&Recorded {
                    position: *position,
                    stream: a.stream.clone(),
                    revision,
                    recorded_at: now,
                    event: event.clone(),
                    prev_hash: [0; 32],
                    hash: [0; 32],
                });
            }
        }
        d
    }

    fn input(n: u16, on: bool, at: DateTime<Utc>) -> Command {
        Command::Relay {
            report: RelayReport::Input {
                device: "b".into(),
                input: n,
                on,
            },
            at: Some(at),
        }
    }

    fn events(d: &Decision) -> Vec<&Event> {
        d.appends.iter().flat_map(|a| &a.events).collect()
    }

    /// Contacts and exit buttons are judged at the time the board reported them, not when a
    /// log outage let them be recorded: the door opened within its exit request's release is
    /// no forced opening a minute later, and its contact keeps the time it opened. A press
    /// that waited longer than `EXIT_REQUEST_STALE` is recorded but pulses nothing.
    #[test]
    fn contacts_and_exit_buttons_keep_the_time_the_board_reported_them() {
        let (mut state, mut pos) = (State::default(), 0);
        run(
            &mut state,
            &mut pos,
            Command::ActivatePolicy {
                document: DOC.into(),
                source: "startup".into(),
            },
            t(0),
        );
        // The exit button, pressed and recorded at once: the door is released and pulsed.
        let d = run(&mut state, &mut pos, input(1, true, t(10)), t(10));
        assert_eq!(d.effects.len(), 1, "{:?}", d.effects);
        // The door opens a second later; the log takes the report a minute later.
        let d = run(&mut state, &mut pos, input(0, true, t(11)), t(71));
        let evs = events(&d);
        assert!(
            matches!(evs.as_slice(), [Event::DoorContactChanged { open: true, at, .. }] if *at == t(11)),
            "{evs:?}"
        );
        run(&mut state, &mut pos, input(0, false, t(15)), t(72));
        run(&mut state, &mut pos, input(1, false, t(15)), t(72));
        // A press recorded 20 s after it happened: recorded, with its time, and no pulse.
        let d = run(&mut state, &mut pos, input(1, true, t(100)), t(120));
        assert!(d.effects.is_empty(), "{:?}", d.effects);
        let evs = events(&d);
        assert!(
            matches!(evs.as_slice(), [Event::DoorExitRequested { at, .. }] if *at == t(100)),
            "{evs:?}"
        );
        // It released nothing either: the door opening now is forced.
        run(&mut state, &mut pos, input(1, false, t(121)), t(121));
        let d = run(&mut state, &mut pos, input(0, true, t(122)), t(122));
        assert!(
            events(&d)
                .iter()
                .any(|e| matches!(e, Event::DoorForcedOpen { .. })),
            "{:?}",
            events(&d)
        );
    }
}
