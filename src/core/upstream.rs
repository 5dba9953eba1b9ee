//! Upstream mode in the core: palmgate as a partner of a remote Pass API, running the doors
//! for people enrolled at the remote.
//!
//! A reader's `trigger` makes the shell call the remote `POST /v1/identify`; what the remote
//! answered arrives here as [`Command::UpstreamIdentify`](super::Command::UpstreamIdentify)
//! and is recorded: the remote session bound to the reader (`UpstreamIdentifyStarted`; the
//! reader is told to show the remote's page) or the failure (`UpstreamIdentifyFailed`; the
//! reader gets a failure `result`). The remote's verified webhook arrives as
//! [`Command::UpstreamWebhook`](super::Command::UpstreamWebhook): it ends the binding
//! (`UpstreamSessionEnded`) and, for a person identified at a door's reader, runs the very same
//! door decision as a local scan ([`doors::decide_door`]) — the person as a subject of the
//! upstream's local partner identity, with the metadata the policy reads — in the same write,
//! so the grant is durable before the relay pulses and `audit` re-derives it from the
//! `DoorDecided` alone.
//!
//! Invariants: a trigger is handled once (remembered apart from capture ids, as
//! `state::Seen::Trigger`; its `trigger_key` is the `capture_id` of the decision it leads to
//! and the relay pulse's tag); a remote session ends
//! once (a repeated webhook is a duplicate, whatever its id); a webhook about a session
//! palmgate did not open is refused (`NotFound`) and recorded nowhere; no door opens for a
//! webhook that arrives more than [`LATE_AFTER`] after the remote ended the session (the person
//! has walked away) — read on our clock, corrected by the skew measured when the session was
//! opened; an ending that decides nothing (an expiry, a failure other than `no_match`, a
//! webhook too late) tells the reader only while it is news there — the reader still shows
//! that session's page (no later trigger there bound another) and the webhook came within
//! [`LATE_AFTER`] — and is recorded only otherwise, judged from the log's times alone.

use super::decider::{Decision, Effect, ReaderCommand, Rejection, one};
use super::doors;
use super::event::{CaptureRef, DoorSubject, Event, Expected, Recorded, UpstreamOutcome, stream};
use super::ids::*;
use super::policy::DoorId;
use super::state::{Seen, State, trigger_key};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A webhook that arrives later than this after the remote ended the session opens nothing.
pub const LATE_AFTER: Duration = Duration::seconds(60);

/// A remote identify session opened for a reader's trigger and not ended yet (state).
/// How long a remote session whose 201 gave no `expires_at` is assumed to stay open.
pub const ASSUMED_REMOTE_TTL: Duration = Duration::hours(1);

/// When an open binding's remote session expires on our clock (its `expires_at` less the
/// remote clock's skew; [`ASSUMED_REMOTE_TTL`] after it started when the remote gave none).
/// `sessions.retention` after that, a binding whose end never arrived is let go of
/// ([`State`]'s `upstream_by_time`): the remote's webhook retries (the last ~2 h 36 min after
/// the first attempt) have long run out by then.
pub fn open_until(b: &UpstreamBinding) -> DateTime<Utc> {
    match b.expires_at {
        Some(e) => b.on_our_clock(e),
        None => b
            .started_at
            .checked_add_signed(ASSUMED_REMOTE_TTL)
            .unwrap_or(b.started_at),
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpstreamBinding {
    pub session_id: UpstreamSessionId,
    pub reader_id: ReaderId,
    pub trigger_id: String,
    pub started_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    /// Seconds the remote's clock was ahead of ours when it answered.
    pub clock_skew_s: Option<i64>,
    /// Revision of the binding's stream.
    pub revision: u64,
    /// A later trigger at the same reader bound another remote session: the reader shows that
    /// one's page, so this one's ending (an expiry, a failure, a webhook too late) tells the
    /// reader nothing. Set when that later `UpstreamIdentifyStarted` is folded.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub superseded: bool,
}

/// Folds an upstream event into the state (called by [`State::evolve`]): a trigger is seen
/// once recorded, a binding lives from its start to its end.
impl UpstreamBinding {
    /// An instant of the remote's clock on ours (less the skew measured when the binding was
    /// made). Checked: the remote's timestamps could sit at the edge of the representable range.
    pub fn on_our_clock(&self, remote: DateTime<Utc>) -> DateTime<Utc> {
        Duration::try_seconds(self.clock_skew_s.unwrap_or(0))
            .and_then(|skew| remote.checked_sub_signed(skew))
            .unwrap_or(remote)
    }
}

pub(crate) fn evolve(state: &mut State, rec: &Recorded) {
    match &rec.event {
        Event::UpstreamIdentifyStarted {
            session_id,
            reader_id,
            trigger_id,
            expires_at,
            clock_skew_s,
            at,
        } => {
            // Remembered apart from capture ids, as a site session's trigger is.
            state
                .seen
                .insert((reader_id.clone(), Seen::Trigger(trigger_id.clone())));
            let b = UpstreamBinding {
                session_id: session_id.clone(),
                reader_id: reader_id.clone(),
                trigger_id: trigger_id.clone(),
                started_at: *at,
                expires_at: *expires_at,
                clock_skew_s: *clock_skew_s,
                revision: rec.revision,
                superseded: false,
            };
            // The reader now shows this session's page: the earlier ones still open there no
            // longer speak to it (scans the open bindings: few, ended by their webhooks).
            // (Written only where it changes: a shard the snapshot's copy shares is copied on
            // write.)
            let earlier: Vec<UpstreamSessionId> = state
                .upstream
                .values()
                .filter(|o| o.reader_id == *reader_id && !o.superseded)
                .map(|o| o.session_id.clone())
                .collect();
            for id in earlier {
                if let Some(other) = state.upstream.get_mut(&id) {
                    other.superseded = true;
                }
            }
            state
                .upstream_by_time
                .insert((open_until(&b), session_id.clone()));
            if let Some(old) = state.upstream.insert(session_id.clone(), b) {
                // Not from `decide` (a stream starts once); keep the index exact all the same.
                state
                    .upstream_by_time
                    .remove(&(open_until(&old), session_id.clone()));
            }
        }
        Event::UpstreamIdentifyFailed {
            reader_id,
            trigger_id,
            ..
        } => {
            state
                .seen
                .insert((reader_id.clone(), Seen::Trigger(trigger_id.clone())));
        }
        Event::UpstreamSessionEnded { session_id, at, .. } => {
            if let Some(b) = state.upstream.remove(session_id) {
                state
                    .upstream_by_time
                    .remove(&(open_until(&b), session_id.clone()));
                state.upstream_by_time.insert((*at, session_id.clone()));
            }
        }
        _ => {}
    }
}

/// What the remote answered to `POST /v1/identify` (the shell's words, as data).
#[derive(Clone, Debug, PartialEq)]
pub enum IdentifyAnswer {
    /// 2xx with a usable `{url, session_id, expires_at?}`. The URL goes to the reader only.
    Started {
        session_id: UpstreamSessionId,
        url: String,
        expires_at: Option<DateTime<Utc>>,
        /// Seconds the remote's clock is ahead of ours (its answer's `Date` minus our clock).
        clock_skew_s: Option<i64>,
    },
    /// No answer in time, refused, a 4xx/5xx, or an answer that could not be used.
    Failed {
        status_code: Option<u16>,
        error: String,
    },
}

/// A verified webhook of the remote about an identify session (SPEC 4 payload).
#[derive(Clone, Debug, PartialEq)]
pub struct RemoteEnd {
    pub session_id: UpstreamSessionId,
    /// `X-Webhook-Id` (empty when absent).
    pub webhook_id: String,
    pub outcome: UpstreamOutcome,
    pub external_id: Option<ExternalId>,
    pub username: Option<String>,
    pub metadata: Option<Value>,
    pub fail_reason: Option<String>,
    /// The payload's `timestamp`.
    pub ended_at: DateTime<Utc>,
    /// The local identity of the upstream's people, as the site policy sees them.
    pub partner_id: PartnerId,
    pub partner_name: String,
}

/// Why the person at a reader got no door decision (upstream mode; and a kiosk's site session
/// at a door's reader that failed `low_quality`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unidentified {
    /// The remote could not be reached, or refused the identify call.
    Unavailable,
    /// The remote session failed with this `fail_reason` (or a kiosk's site session at a door's
    /// reader failed `low_quality`).
    Failed(String),
    /// The remote session expired.
    Expired,
    /// The webhook came more than [`LATE_AFTER`] after the session ended.
    TooLate,
    /// The reader belongs to no door.
    NoDoor,
}

impl Unidentified {
    /// The `reason` readers receive.
    pub fn code(&self) -> &str {
        match self {
            Unidentified::Unavailable => "upstream_unavailable",
            Unidentified::Failed(r) => r,
            Unidentified::Expired => "session_expired",
            Unidentified::TooLate => "too_late",
            Unidentified::NoDoor => "no_door",
        }
    }
}

fn door_of(state: &State, reader: &ReaderId) -> Option<DoorId> {
    state
        .policy
        .as_ref()
        .and_then(|p| p.door_of_reader(reader))
        .map(|d| d.id.clone())
}

fn not_identified(state: &State, reader: &ReaderId, why: Unidentified) -> Effect {
    Effect::Reader {
        reader_id: reader.clone(),
        command: ReaderCommand::NotIdentified {
            door: door_of(state, reader),
            why,
        },
    }
}

/// Records what the remote answered to the identify call a reader's trigger caused.
pub fn identify(
    state: &State,
    reader_id: &ReaderId,
    trigger_id: &str,
    answer: &IdentifyAnswer,
    now: DateTime<Utc>,
) -> Result<Decision, Rejection> {
    if state
        .seen
        .contains(&(reader_id.clone(), Seen::Trigger(trigger_id.to_string())))
    {
        return Ok(Decision::duplicate());
    }
    match answer {
        IdentifyAnswer::Started {
            session_id,
            url,
            expires_at,
            clock_skew_s,
        } => {
            let s = stream::upstream(session_id);
            // An `Idempotency-Key` retry answered with a session already bound.
            if state.revision(&s).is_some() {
                return Ok(Decision::duplicate());
            }
            Ok(Decision::new(vec![one(
                s,
                Expected::NoStream,
                Event::UpstreamIdentifyStarted {
                    session_id: session_id.clone(),
                    reader_id: reader_id.clone(),
                    trigger_id: trigger_id.to_string(),
                    expires_at: *expires_at,
                    clock_skew_s: *clock_skew_s,
                    at: now,
                },
            )])
            .with_effect(Effect::Reader {
                reader_id: reader_id.clone(),
                command: ReaderCommand::ShowUrl { url: url.clone() },
            }))
        }
        IdentifyAnswer::Failed { status_code, error } => {
            let s = stream::reader(reader_id);
            Ok(Decision::new(vec![one(
                s.clone(),
                state.expected(&s),
                Event::UpstreamIdentifyFailed {
                    reader_id: reader_id.clone(),
                    trigger_id: trigger_id.to_string(),
                    status_code: *status_code,
                    error: error.clone(),
                    at: now,
                },
            )])
            .with_effect(not_identified(state, reader_id, Unidentified::Unavailable)))
        }
    }
}

/// The remote's webhook ends a bound session; a person identified at a door's reader gets the
/// door decision a local scan would.
pub fn ended(state: &State, e: &RemoteEnd, now: DateTime<Utc>) -> Result<Decision, Rejection> {
    let s = stream::upstream(&e.session_id);
    let Some(b) = state.upstream.get(&e.session_id) else {
        return if state.revision(&s).is_some() {
            Ok(Decision::duplicate())
        } else {
            Err(Rejection::NotFound)
        };
    };
    // The remote's `timestamp`, on our clock.
    let ended_here = b.on_our_clock(e.ended_at);
    let late = ended_here
        .checked_add_signed(LATE_AFTER)
        .is_some_and(|t| now > t);
    let metadata = doors::decision_metadata(e.metadata.as_ref());
    let mut d = Decision::new(vec![one(
        s,
        Expected::Revision(b.revision),
        Event::UpstreamSessionEnded {
            session_id: e.session_id.clone(),
            reader_id: b.reader_id.clone(),
            outcome: e.outcome,
            webhook_id: e.webhook_id.clone(),
            external_id: e.external_id.clone(),
            username: e.username.clone(),
            metadata: metadata.clone(),
            fail_reason: e.fail_reason.clone(),
            ended_at: e.ended_at,
            late,
            at: now,
        },
    )]);
    // Who stood at the reader: a person, or nobody the remote knows (`no_match`), as a door
    // decision sees it; `None` when the session ended without a scan that decides anything.
    let who: Option<Option<DoorSubject>> = match (e.outcome, &e.external_id) {
        (UpstreamOutcome::Completed, Some(x)) => Some(Some(DoorSubject {
            partner_id: e.partner_id,
            partner_name: e.partner_name.clone(),
            external_id: x.clone(),
            metadata,
        })),
        (UpstreamOutcome::Completed, None) => Some(None),
        (UpstreamOutcome::Failed, _) if e.fail_reason.as_deref() == Some("no_match") => Some(None),
        _ => None,
    };
    let policy = state.policy.clone();
    let door = policy.as_ref().and_then(|p| p.door_of_reader(&b.reader_id));
    let why = match (who, door, &policy) {
        (Some(subject), Some(door), Some(policy)) if !late => {
            // No reader capture: the trigger's key stands for it (the relay pulse's tag, which
            // `audit` matches to this decision), so no capture of the reader is taken for it.
            let cref = CaptureRef {
                reader_id: b.reader_id.clone(),
                capture_id: trigger_key(&b.trigger_id),
                quality: 0.0,
                similarity: None,
                judged: None,
            };
            let dd = doors::decide_door(state, policy, door, &cref, subject, false, now);
            d.appends.extend(dd.appends);
            d.effects.extend(dd.effects);
            return Ok(d);
        }
        (Some(_), Some(_), _) => Unidentified::TooLate,
        (Some(_), None, _) => Unidentified::NoDoor,
        (None, ..) => match e.outcome {
            UpstreamOutcome::Expired => Unidentified::Expired,
            _ => Unidentified::Failed(e.fail_reason.clone().unwrap_or_else(|| "failed".into())),
        },
    };
    // An ending that decides nothing tells the reader only while it is news there: the reader
    // still shows this session's page, and the webhook came within [`LATE_AFTER`] of what it
    // tells (the end; for `too_late`, the instant the end became too late). A stale one (a
    // reader that moved on to a later trigger's session, a webhook long after, a remote's
    // recovery after an outage) is recorded only, as a local session's expiry is. Judged from
    // the binding and the webhook's times alone, so a replay decides the same.
    // (A reader at no door is the site's configuration, told whenever it happens.)
    let news = match &why {
        Unidentified::NoDoor => true,
        Unidentified::TooLate => !b.superseded && within_late_after(ended_here, 2, now),
        _ => !b.superseded && within_late_after(ended_here, 1, now),
    };
    if news {
        d = d.with_effect(not_identified(state, &b.reader_id, why));
    }
    Ok(d)
}

/// `now` is no later than `times` × [`LATE_AFTER`] after `t` (checked).
fn within_late_after(t: DateTime<Utc>, times: i32, now: DateTime<Utc>) -> bool {
    t.checked_add_signed(LATE_AFTER * times)
        .is_some_and(|end| now <= end)
}

/// When the remote has had its say about an open binding: [`LATE_AFTER`] after its session
/// expired on our clock ([`open_until`]). A binding still open then heard no webhook (the
/// remote's ending of a session comes at its expiry at the latest; a completion later than
/// that would be too late to open anything).
pub fn unheard_after(b: &UpstreamBinding) -> DateTime<Utc> {
    let until = open_until(b);
    until.checked_add_signed(LATE_AFTER).unwrap_or(until)
}

/// The open bindings whose remote session expired with no webhook ([`unheard_after`] passed at
/// `now`), and the next instant another will (if any).
pub fn unheard(
    state: &State,
    now: DateTime<Utc>,
) -> (Vec<&UpstreamBinding>, Option<DateTime<Utc>>) {
    let mut past = vec![];
    let mut next: Option<DateTime<Utc>> = None;
    for b in state.upstream.values() {
        let t = unheard_after(b);
        if t <= now {
            past.push(b);
        } else {
            next = Some(next.map_or(t, |n| n.min(t)));
        }
    }
    (past, next)
}

/// What the reader of an unheard binding (see [`unheard`]) is told: that the session expired,
/// when it still shows that session's page and the silence is news (no more than
/// [`LATE_AFTER`] after [`unheard_after`]: a gateway restarted hours later tells no one).
pub fn unheard_notice(state: &State, b: &UpstreamBinding, now: DateTime<Utc>) -> Option<Effect> {
    let news = within_late_after(unheard_after(b), 1, now);
    (news && !b.superseded).then(|| not_identified(state, &b.reader_id, Unidentified::Expired))
}

/// The reader's answer to a trigger no identify call was made for (the gateway's queue of
/// calls was full): the one a failed call gets.
pub fn unavailable(state: &State, reader: &ReaderId) -> Effect {
    not_identified(state, reader, Unidentified::Unavailable)
}
