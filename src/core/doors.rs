//! Doors in the core: door scans, site modes, policy activation, relay and input reports.
//!
//! A door scan is decided here from recorded inputs only — the capture, the matcher's answer,
//! the user projection, the policy in force, the site mode and the zone state — and the
//! `DoorDecided` event carries all of them, so `audit` can re-derive it. A grant's relay pulse
//! and the reader's `result` are effects: they happen only after the decision is durable.

use super::command::{Capture, RelayReport};
use super::decider::{Decision, Effect, ReaderCommand, Rejection, one};
use super::event::{
    CaptureRef, CaptureRejection, DoorSubject, Event, Expected, Judged, StreamAppend, stream,
};
use super::ids::*;
use super::policy::{Door, DoorId, Identified, Policy, Request, SiteMode, Subject};
use super::state::State;
use super::webhook;
use chrono::{DateTime, Duration, SubsecRound, Utc};
use serde::Serialize;
use std::sync::Arc;

/// After a grant or exit request, how long an opening of the door is expected (on top of the
/// pulse) before it counts as forced.
pub const RELEASE_GRACE: Duration = Duration::seconds(10);

/// A relay command for the adapter.
#[derive(Clone, Debug, PartialEq)]
pub enum RelayCommand {
    Pulse {
        coil: u16,
        hold_ms: u32,
        tag: String,
    },
    /// The coil's resting state (true = unlocked); `cut_pulse` ends a pulse in progress
    /// (lockdown: every relay off now).
    Rest {
        coil: u16,
        on: bool,
        cut_pulse: bool,
    },
}

/// The metadata keys a decision depends on.
const DECISION_KEYS: [&str; 3] = ["access_level", "valid_from", "valid_until"];

/// The metadata a decision depends on (kept in the event for audit).
pub(crate) fn decision_metadata(m: Option<&serde_json::Value>) -> Option<serde_json::Value> {
    let m = m?.as_object()?;
    let kept: serde_json::Map<String, serde_json::Value> = DECISION_KEYS
        .iter()
        .filter_map(|k| m.get(*k).map(|v| (k.to_string(), v.clone())))
        .collect();
    (!kept.is_empty()).then_some(serde_json::Value::Object(kept))
}

/// Whether `recorded` is what [`decision_metadata`] makes of `m`, without building it.
fn is_decision_metadata(
    m: Option<&serde_json::Value>,
    recorded: Option<&serde_json::Value>,
) -> bool {
    let m = m.and_then(serde_json::Value::as_object);
    let kept = |k: &str| m.and_then(|m| m.get(k));
    match recorded {
        None => DECISION_KEYS.iter().all(|k| kept(k).is_none()),
        Some(serde_json::Value::Object(r)) => {
            !r.is_empty()
                && r.len() == DECISION_KEYS.iter().filter(|k| kept(k).is_some()).count()
                && r.iter().all(|(k, v)| kept(k) == Some(v))
        }
        Some(_) => false,
    }
}

impl State {
    /// The site mode the policy sees.
    pub fn site_mode(&self) -> SiteMode {
        if self.lockdown {
            SiteMode::Lockdown
        } else if self.emergency {
            SiteMode::EmergencyUnlock
        } else {
            SiteMode::Normal
        }
    }

    /// Whether the state knows `device`'s relay board to be down: a grant at its doors cannot
    /// open them (the reader is told so), and `/metrics` counts it down.
    pub fn device_down(&self, device: &str) -> bool {
        self.device_state(device).is_some_and(|d| !d.up)
    }

    /// The policy in force's warnings, and one for each name in its `partners` that names no
    /// partner the state knows: names are matched exactly, so `acme` admits nobody beside a
    /// partner called `Acme` (its users are not even searched: their scans are `no_match`).
    pub fn policy_warnings(&self) -> Vec<String> {
        let Some(p) = self.policy.as_deref() else {
            return Vec::new();
        };
        let mut out: Vec<String> = p.warnings.iter().map(|w| w.to_string()).collect();
        if let super::policy::Partners::Only { names, .. } = &p.partners {
            for n in names {
                if self.partners().any(|q| q.name == *n) {
                    continue;
                }
                out.push(match super::decider::partner_named(self, n) {
                    Some(q) => format!(
                        "partners: `{n}` names no partner: names are matched exactly, and the \
                         partner is called `{}`",
                        q.name
                    ),
                    None => format!(
                        "partners: `{n}` names no partner (yet): no one is admitted by it until \
                         a partner of exactly that name exists"
                    ),
                });
            }
        }
        out
    }

    /// Whether a door's relay should rest unlocked at `now`.
    pub fn rests_unlocked(&self, door: &DoorId, now: DateTime<Utc>) -> bool {
        rests_unlocked(
            self.policy.as_deref(),
            self.lockdown,
            self.emergency,
            door,
            now,
        )
    }
}

/// Emergency holds every door open (fire safety wins over lockdown); lockdown holds every door
/// locked; otherwise unlock windows decide.
pub fn rests_unlocked(
    policy: Option<&Policy>,
    lockdown: bool,
    emergency: bool,
    door: &DoorId,
    now: DateTime<Utc>,
) -> bool {
    if emergency {
        return true;
    }
    if lockdown {
        return false;
    }
    policy.is_some_and(|p| p.unlocked_by_window(door, now))
}

/// The policy's view of who stood at the reader, from a decision's recorded inputs.
pub fn identified(subject: Option<&DoorSubject>, erased: bool) -> Identified<'_> {
    match subject {
        Some(s) => Identified::User(Subject {
            partner_id: s.partner_id,
            partner_name: &s.partner_name,
            external_id: &s.external_id,
            metadata: s.metadata.as_ref(),
        }),
        None if erased => Identified::Erased,
        None => Identified::NoMatch,
    }
}

/// Re-derives the verdict a `DoorDecided` event records, from its own inputs (what `audit`
/// runs); `None` for any other event.
pub fn rederive(policy: &Policy, e: &Event) -> Option<super::policy::Verdict> {
    let Event::DoorDecided {
        door,
        reader_id,
        subject,
        erased,
        mode,
        last_in_zone,
        at,
        ..
    } = e
    else {
        return None;
    };
    Some(policy.decide(&Request {
        door,
        reader: reader_id,
        who: identified(subject.as_ref(), *erased),
        at: *at,
        mode: *mode,
        last_in_zone: *last_in_zone,
    }))
}

/// The decision's view of an enrolled user.
pub fn subject(state: &State, u: &super::state::User) -> DoorSubject {
    DoorSubject {
        partner_id: u.partner_id,
        partner_name: state
            .partner(u.partner_id)
            .map(|p| p.name.clone())
            .unwrap_or_default(),
        external_id: u.external_id.clone(),
        metadata: decision_metadata(u.metadata.as_ref()),
    }
}

/// Whether `s` is [`subject`]`(state, u)`, without building it (`audit verify` asks this of
/// every matched door decision).
pub fn is_subject(state: &State, u: &super::state::User, s: &DoorSubject) -> bool {
    s.partner_id == u.partner_id
        && s.external_id == u.external_id
        && state.partner(u.partner_id).map_or("", |p| p.name.as_str()) == s.partner_name
        && is_decision_metadata(u.metadata.as_ref(), s.metadata.as_ref())
}

/// A capture with no session: a scan at a door.
pub fn scan(state: &State, c: &Capture, now: DateTime<Utc>) -> Result<Decision, Rejection> {
    let rejected = |reason, judged: Option<Judged>| {
        let s = stream::reader(&c.reader_id);
        Decision::new(vec![one(
            s.clone(),
            state.expected(&s),
            Event::CaptureRejected {
                reader_id: c.reader_id.clone(),
                capture_id: c.capture_id.clone(),
                reason,
                quality: judged.map(|_| c.quality),
                judged,
                at: now,
            },
        )])
    };
    let Some(policy) = state.policy.clone() else {
        return Ok(rejected(CaptureRejection::NoDoor, None));
    };
    let Some(door) = policy.door_of_reader(&c.reader_id) else {
        return Ok(rejected(CaptureRejection::NoDoor, None));
    };
    if c.liveness && c.quality < state.rules.min_quality {
        return Ok(rejected(
            CaptureRejection::LowQuality,
            Some(c.judged(&state.rules).at_door()),
        )
        .with_effect(Effect::Reader {
            reader_id: c.reader_id.clone(),
            command: ReaderCommand::Retry {
                reason: FailReason::LowQuality,
            },
        }));
    }
    // A failed liveness check identifies no one.
    let candidate = c
        .best
        .as_ref()
        .filter(|b| c.liveness && b.similarity >= state.rules.threshold);
    let user = candidate.and_then(|b| state.user(b.partner_id, &b.external_id));
    let subject = user.map(|u| subject(state, u));
    let erased = candidate.is_some() && user.is_none();
    let cref = c.reference(&state.rules);
    Ok(decide_door(
        state, &policy, door, &cref, subject, erased, now,
    ))
}

/// The decision at `door` for `subject` (shared by door scans and trigger sessions).
pub fn decide_door(
    state: &State,
    policy: &Arc<Policy>,
    door: &Door,
    cref: &CaptureRef,
    subject: Option<DoorSubject>,
    erased: bool,
    now: DateTime<Utc>,
) -> Decision {
    let zone = policy.zone_of_reader(&cref.reader_id);
    let last_in_zone = match (&zone, &subject) {
        (Some((z, _)), Some(s)) => state
            .zone_last
            .get(&(z.to_string(), s.partner_id, s.external_id.clone()))
            .copied(),
        _ => None,
    };
    let mode = state.site_mode();
    let verdict = policy.decide(&Request {
        door: &door.id,
        reader: &cref.reader_id,
        who: identified(subject.as_ref(), erased),
        at: now,
        mode,
        last_in_zone,
    });
    let granted = verdict.granted();
    // Granted at a door whose board is down: the reader is told so, and no zone movement is
    // recorded (the person did not pass; hard anti-passback would otherwise refuse their next
    // entry). The board's state is read as a condition below, like the site mode.
    let unopenable = granted && state.device_down(&door.relay.device);
    let door_stream = stream::door(&door.id);
    let mut appends = vec![one(
        door_stream.clone(),
        state.expected(&door_stream),
        Event::DoorDecided {
            door: door.id.clone(),
            reader_id: cref.reader_id.clone(),
            capture_id: cref.capture_id.clone(),
            subject: subject.clone(),
            erased,
            similarity: cref.similarity,
            quality: cref.judged.map(|_| cref.quality),
            judged: cref.judged.map(Judged::at_door),
            policy: policy.sha256.clone(),
            mode,
            last_in_zone,
            movement: zone
                .filter(|_| granted && subject.is_some() && !unopenable)
                .map(|(z, d)| (z.to_string(), d)),
            unopenable,
            verdict: verdict.clone(),
            at: now,
        },
    )];
    // What the verdict read besides the door: the site mode, the policy and the person. Each
    // goes to the store as a condition (no event), so a lockdown, a new policy or an erasure
    // appended after this was decided refuses it, and it is decided again on what is then in
    // force; otherwise a scan decided a moment before a lockdown could open the door after it
    // (and `audit verify` would rightly fail the log).
    let mut read = vec![stream::SITE.to_string(), stream::POLICY.to_string()];
    if let Some(s) = &subject {
        read.push(stream::user(s.partner_id, &s.external_id));
    }
    if granted {
        // Whether the board is down decides `unopenable` and the movement.
        read.push(stream::device(&door.relay.device));
    }
    // An operator's forgive in the zone (`ZonePresenceForgiven`) appended after this was
    // decided has it decided again on the presence it leaves (review, session 26: a scan
    // decided before a forgive and written after it failed `audit verify`).
    if let (Some((z, _)), Some(_)) = (&zone, &subject) {
        read.push(stream::zone(z));
    }
    // The person's last movement in the zone may still be undone by a refused pulse at another
    // door (`DoorState::passages`): a report landing there in between has this decided again.
    if let (Some((z, _)), Some(s)) = (&zone, &subject) {
        let mut held: Vec<&DoorId> = state
            .doors
            .iter()
            .filter(|(id, ds)| {
                **id != door.id
                    && ds
                        .passages
                        .iter()
                        .any(|p| p.is_of(z, s.partner_id, &s.external_id))
            })
            .map(|(id, _)| id)
            .collect();
        held.sort();
        read.extend(held.into_iter().map(stream::door));
    }
    for st in read {
        let expected = state.expected(&st);
        appends.push(StreamAppend {
            stream: st,
            expected,
            events: vec![],
        });
    }
    if let Some(s) = &subject
        && let Some(hook) = state.webhook(s.partner_id).filter(|w| w.wants("access"))
    {
        /// SPEC 4 lists every field: `reason` is null on a grant, `level` null when no level
        /// of the subject's decided it. A grant at a door whose board is down says
        /// `door_unavailable`, as the reader and the metrics do: the person was granted but
        /// not let in (an attendance system must not count an entry).
        #[derive(Serialize)]
        struct Access<'a> {
            door: &'a DoorId,
            external_id: &'a ExternalId,
            granted: bool,
            reason: Option<&'static str>,
            level: Option<&'a str>,
        }
        let data = Access {
            door: &door.id,
            external_id: &s.external_id,
            granted,
            reason: verdict
                .reason()
                .map(|r| r.as_str())
                .or(unopenable.then_some("door_unavailable")),
            level: verdict.level(),
        };
        let id = access_delivery_id(state, &cref.reader_id, &cref.capture_id);
        appends.push(one(
            stream::delivery(&id),
            Expected::NoStream,
            Event::DeliveryQueued {
                delivery_id: id,
                partner_id: s.partner_id,
                event: "access".into(),
                session_id: None,
                body: webhook::body("access", now, &data),
                held: !hook.active,
                at: now,
            },
        ));
    }
    let mut d = Decision::new(appends).with_effect(Effect::Reader {
        reader_id: cref.reader_id.clone(),
        command: ReaderCommand::Result {
            granted,
            door: door.id.clone(),
            reason: verdict.reason(),
            unopenable,
        },
    });
    // A door that cannot open is not pulsed: a board reconnecting a moment later would open
    // it for a grant that recorded no movement (review, session 18).
    if granted && !unopenable {
        d = d.with_effect(Effect::Relay {
            device: door.relay.device.clone(),
            command: RelayCommand::Pulse {
                coil: door.relay.coil,
                hold_ms: door.relay.pulse_ms,
                tag: cref.capture_id.clone(),
            },
        });
    }
    d
}

/// The id of a door decision's `access` delivery: `msg_access_<reader>_<capture>`, or, when the
/// state already holds a delivery (or its stream) of that id, the first free of `…_2`, `…_3`, ….
/// Reader `x_y` with capture `z` and reader `x` with capture `y_z` give the same base, and a
/// reader may reuse a capture id once the duplicate window is over while the old delivery is
/// still kept: the decision must not fail on its webhook's id. Looked up in the state the
/// decision reads, so a replay picks the same id (and a decision that raced another for an id
/// is refused by the store and decided again on the newer state).
fn access_delivery_id(state: &State, reader: &ReaderId, capture: &str) -> String {
    let base = format!("msg_access_{reader}_{capture}");
    let taken = |id: &str| {
        state.delivery(id).is_some() || state.expected(&stream::delivery(id)) != Expected::NoStream
    };
    if !taken(&base) {
        return base;
    }
    (2u64..)
        .map(|n| format!("{base}_{n}"))
        .find(|id| !taken(id))
        .expect("a free id among unboundedly many")
}

/// Resting-state changes due at `now` (unlock windows opening or closing, mode changes), for
/// every door of the policy.
pub fn resting_changes(
    state: &State,
    policy: Option<&Policy>,
    lockdown: bool,
    emergency: bool,
    now: DateTime<Utc>,
    cause: &str,
) -> Decision {
    let Some(policy) = policy else {
        return Decision::new(vec![]);
    };
    let mut d = Decision::new(vec![]);
    for door in &policy.doors {
        let want = rests_unlocked(Some(policy), lockdown, emergency, &door.id, now);
        let had = state
            .doors
            .get(&door.id)
            .is_some_and(|s| s.resting_unlocked);
        if want == had {
            continue;
        }
        d.appends.push(on_door(
            state,
            &door.id,
            Event::DoorRestingChanged {
                door: door.id.clone(),
                unlocked: want,
                cause: cause.to_string(),
                at: now,
            },
        ));
        d = d.with_effect(Effect::Relay {
            device: door.relay.device.clone(),
            command: RelayCommand::Rest {
                coil: door.relay.coil,
                on: want,
                cut_pulse: false,
            },
        });
    }
    d
}

/// Held-open alarms due at `now`.
pub fn held_open(state: &State, now: DateTime<Utc>) -> Vec<StreamAppend> {
    let Some(policy) = &state.policy else {
        return vec![];
    };
    let mut out = vec![];
    for door in &policy.doors {
        let (Some(contact), Some(ds)) = (&door.contact, state.doors.get(&door.id)) else {
            continue;
        };
        if let Some(since) = ds.open_since
            && !ds.held_alarm
            && now >= since + Duration::seconds(i64::from(contact.held_open_after_s))
        {
            out.push(on_door(
                state,
                &door.id,
                Event::DoorHeldOpen {
                    door: door.id.clone(),
                    since,
                    at: now,
                },
            ));
        }
    }
    out
}

/// The next instant the doors need a `Tick`: held-open deadlines and, with unlock windows, the
/// next whole second (cron windows change at most once a second).
pub fn next_deadline(state: &State, now_hint: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    let policy = state.policy.as_ref()?;
    let mut next: Option<DateTime<Utc>> = None;
    for door in &policy.doors {
        if let (Some(c), Some(ds)) = (&door.contact, state.doors.get(&door.id))
            && let Some(since) = ds.open_since
            && !ds.held_alarm
        {
            let t = since + Duration::seconds(i64::from(c.held_open_after_s));
            next = Some(next.map_or(t, |n| n.min(t)));
        }
    }
    if !policy.unlock_windows.is_empty()
        && let Some(now) = now_hint
    {
        // The next whole second: windows open and close on whole seconds, and a tick a
        // fraction after one (a pulse ending at .5) would otherwise keep every later edge late
        // by that fraction.
        let t = now.trunc_subsecs(0) + Duration::seconds(1);
        next = Some(next.map_or(t, |n| n.min(t)));
    }
    next
}

/// One event on a door's stream, expecting the stream's current revision.
fn on_door(state: &State, door: &DoorId, event: Event) -> StreamAppend {
    let s = stream::door(door);
    one(s.clone(), state.expected(&s), event)
}

/// A report from a relay device.
/// `reported`: when the gateway had the report from the board (at most `now`): the time a coil's
/// event carries, so that a report recorded late (the log unwritable a while) still says when
/// the relay moved.
pub fn relay_report(
    state: &State,
    r: &RelayReport,
    now: DateTime<Utc>,
    reported: DateTime<Utc>,
) -> Decision {
    let Some(policy) = state.policy.clone() else {
        return Decision::new(vec![]);
    };
    let door_of_coil = |device: &str, coil: u16| {
        policy
            .doors
            .iter()
            .find(|d| d.relay.device == device && d.relay.coil == coil)
    };
    match r {
        RelayReport::Up { device } | RelayReport::Down { device, .. } => {
            let up = matches!(r, RelayReport::Up { .. });
            if state.devices.get(device).is_some_and(|d| d.up == up) {
                return Decision::new(vec![]);
            }
            let s = stream::device(device);
            Decision::new(vec![one(
                s.clone(),
                state.expected(&s),
                Event::DeviceStatusChanged {
                    device: device.clone(),
                    up,
                    error: match r {
                        RelayReport::Down { error, .. } => Some(error.clone()),
                        _ => None,
                    },
                    at: now,
                },
            )])
        }
        RelayReport::Coil {
            device,
            coil,
            on,
            tag,
        } => {
            // A coil no door of this policy owns, left ON by a door an earlier policy had
            // there: its OFF is recorded under that door, which the log then has locked.
            let door = match door_of_coil(device, *coil) {
                Some(d) => d.id.clone(),
                None => match state.orphan_door(device, *coil).filter(|_| !*on) {
                    Some(id) => id.clone(),
                    None => return Decision::new(vec![]),
                },
            };
            Decision::new(vec![on_door(
                state,
                &door,
                Event::RelaySwitched {
                    door: door.clone(),
                    device: device.clone(),
                    coil: *coil,
                    on: *on,
                    tag: tag.clone(),
                    at: reported,
                },
            )])
        }
        RelayReport::CoilFailed {
            device,
            coil,
            on,
            error,
            tag,
            refused,
        } => {
            let Some(door) = door_of_coil(device, *coil) else {
                return Decision::new(vec![]);
            };
            let off = held_shut(state, door);
            Decision::new(vec![on_door(
                state,
                &door.id,
                Event::RelayFailed {
                    door: door.id.clone(),
                    device: device.clone(),
                    coil: *coil,
                    on: *on,
                    error: error.clone(),
                    tag: tag.clone(),
                    refused: *refused && *on && off,
                    at: reported,
                },
            )])
        }
        RelayReport::OrphanOff {
            device,
            coil,
            address,
        } => {
            let Some(door) = state.orphan_door_at(device, *coil, address) else {
                return Decision::new(vec![]);
            };
            Decision::new(vec![on_door(
                state,
                door,
                Event::RelaySwitched {
                    door: door.clone(),
                    device: device.clone(),
                    coil: *coil,
                    on: false,
                    tag: String::new(),
                    at: reported,
                },
            )])
        }
        RelayReport::Input { device, input, on } => {
            input_changed(state, &policy, device, *input, *on, now, reported)
        }
    }
}

/// Whether the log has `door` shut: its relay off (a refused ON while another pulse or an
/// unlock held it on left it open) and, for a door with a contact, the door closed and its
/// contact's board up (one standing open, or not watched, may have let anyone through). A
/// pulse refused then left the door shut.
pub fn held_shut(state: &State, door: &Door) -> bool {
    state.doors.get(&door.id).is_none_or(|d| d.held_shut())
        && door
            .contact
            .as_ref()
            .is_none_or(|c| !state.device_down(&c.device))
}

/// The tag of an exit button's pulse (a grant's pulse is tagged with its capture id).
pub const EXIT_REQUEST_TAG: &str = "exit-request";

/// How old an exit button's press may be when it is recorded and still pulse the door.
pub const EXIT_REQUEST_STALE: chrono::Duration = chrono::Duration::seconds(10);

/// Whether an exit press at `at`, recorded (decided) at `recorded`, waited too long to pulse.
/// (Both are taken to the microsecond, as the log keeps `recorded_at`, so that the decision and
/// every later fold of its event agree.)
pub fn exit_request_stale(at: DateTime<Utc>, recorded: DateTime<Utc>) -> bool {
    use chrono::SubsecRound;
    recorded.trunc_subsecs(6) - at.trunc_subsecs(6) > EXIT_REQUEST_STALE
}

fn input_changed(
    state: &State,
    policy: &Arc<Policy>,
    device: &str,
    input: u16,
    on: bool,
    now: DateTime<Utc>,
    reported: DateTime<Utc>,
) -> Decision {
    let mut d = Decision::new(vec![]);
    // A contact or button is judged at the time it changed: a report that waited for the log
    // (unwritable a while) is not a forced opening because the door's release ended meanwhile.
    for door in &policy.doors {
        let s = stream::door(&door.id);
        let ds = state.doors.get(&door.id);
        if door
            .contact
            .as_ref()
            .is_some_and(|c| c.device == device && c.input == input)
        {
            let was_open = ds.is_some_and(|x| x.open_since.is_some());
            if was_open == on {
                continue;
            }
            let mut events = vec![Event::DoorContactChanged {
                door: door.id.clone(),
                open: on,
                at: reported,
            }];
            let released = ds.is_some_and(|x| x.released_until.is_some_and(|t| reported <= t))
                || state.rests_unlocked(&door.id, reported);
            if on && !released {
                events.push(Event::DoorForcedOpen {
                    door: door.id.clone(),
                    at: reported,
                });
            }
            d.appends.push(StreamAppend {
                stream: s.clone(),
                expected: state.expected(&s),
                events,
            });
        } else if on
            && door
                .rex
                .as_ref()
                .is_some_and(|r| r.device == device && r.input == input)
        {
            d.appends.push(one(
                s.clone(),
                state.expected(&s),
                Event::DoorExitRequested {
                    door: door.id.clone(),
                    at: reported,
                },
            ));
            // A press that waited for the log longer than [`EXIT_REQUEST_STALE`] is recorded
            // but opens nothing: whoever pressed has gone, or pressed again.
            if exit_request_stale(reported, now) {
                continue;
            }
            d = d.with_effect(Effect::Relay {
                device: door.relay.device.clone(),
                command: RelayCommand::Pulse {
                    coil: door.relay.coil,
                    hold_ms: door.relay.pulse_ms,
                    tag: EXIT_REQUEST_TAG.into(),
                },
            });
        }
    }
    d
}

/// Policy activation: parse, refuse an invalid document (the running policy stays).
pub fn activate(
    state: &State,
    document: &str,
    source: &str,
    now: DateTime<Utc>,
) -> Result<Decision, Rejection> {
    let policy = Policy::parse(document).map_err(|errors| {
        Rejection::InvalidPolicy(errors.iter().map(|e| e.to_string()).collect())
    })?;
    // The document in force already: nothing to record, unless it now comes from the site file
    // for the first time (uploaded through the admin API first): start-up must learn that the
    // file was read, or it would activate the file again after a later upload.
    let first_from_file = super::state::SITE_FILE_SOURCES.contains(&source)
        && state.policy_file_sha256.as_deref() != Some(policy.sha256.as_str());
    if !first_from_file
        && state
            .policy
            .as_ref()
            .is_some_and(|p| p.sha256 == policy.sha256)
    {
        return Ok(Decision::new(vec![]));
    }
    let mut d = Decision::new(vec![one(
        stream::POLICY.to_string(),
        state.expected(stream::POLICY),
        Event::PolicyActivated {
            sha256: policy.sha256.clone(),
            document: document.to_string(),
            source: source.to_string(),
            at: now,
        },
    )]);
    // Resting states under the new policy.
    let rest = resting_changes(
        state,
        Some(&policy),
        state.lockdown,
        state.emergency,
        now,
        "policy",
    );
    d.appends.extend(rest.appends);
    d.effects.extend(rest.effects);
    // A door the new policy removes rests locked from now on (the relay adapter drives every
    // coil the new policy gives to no door OFF).
    let mut removed: Vec<&DoorId> = state
        .doors
        .iter()
        .filter(|(id, ds)| ds.resting_unlocked && policy.door(id).is_none())
        .map(|(id, _)| id)
        .collect();
    removed.sort();
    for door in removed {
        d.appends.push(on_door(
            state,
            door,
            Event::DoorRestingChanged {
                door: door.clone(),
                unlocked: false,
                cause: "policy".into(),
                at: now,
            },
        ));
    }
    Ok(d)
}

/// Lockdown / emergency unlock.
/// Whether forgiving `zone`, for one person (`partner` and `external_id`) or for everyone
/// (both `None`), ends the presence kept under `key` (zone, partner, external id).
pub fn forgives(
    zone: &str,
    partner: Option<PartnerId>,
    external_id: Option<&ExternalId>,
    key: &(String, PartnerId, ExternalId),
) -> bool {
    key.0 == zone && partner.is_none_or(|p| p == key.1) && external_id.is_none_or(|e| *e == key.2)
}

/// An operator forgives anti-passback in `zone` (of the policy in force): one person's
/// presence, or everyone's. Nothing to forgive decides nothing (outcome `Forgiven(0)`).
pub fn forgive(
    state: &State,
    zone: &str,
    person: Option<&(PartnerId, ExternalId)>,
    reason: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Decision, Rejection> {
    let known = state
        .policy
        .as_deref()
        .is_some_and(|p| p.zones.iter().any(|z| z.name == zone));
    if !known {
        return Err(Rejection::NotFound);
    }
    let (partner, external_id) = person.map_or((None, None), |(p, e)| (Some(*p), Some(e)));
    let cleared = match (partner, external_id) {
        (Some(p), Some(e)) => usize::from(state.zone_last.contains_key(&(
            zone.to_string(),
            p,
            e.clone(),
        ))),
        _ => state
            .zone_last
            .keys()
            .filter(|k| forgives(zone, None, None, k))
            .count(),
    };
    let mut d = Decision::new(vec![]);
    if cleared > 0 {
        d.appends.push(one(
            stream::zone(zone),
            Expected::Any,
            Event::ZonePresenceForgiven {
                zone: zone.to_string(),
                partner_id: partner,
                external_id: external_id.cloned(),
                cleared: cleared as u64,
                reason: reason.map(str::to_string),
                at: now,
            },
        ));
    }
    d.outcome = super::decider::Outcome::Forgiven(cleared);
    Ok(d)
}

pub fn set_mode(
    state: &State,
    lockdown: Option<bool>,
    emergency: Option<bool>,
    now: DateTime<Utc>,
) -> Decision {
    let l = lockdown.unwrap_or(state.lockdown);
    let e = emergency.unwrap_or(state.emergency);
    if l == state.lockdown && e == state.emergency {
        return Decision::new(vec![]);
    }
    let mut d = Decision::new(vec![one(
        stream::SITE.to_string(),
        state.expected(stream::SITE),
        Event::SiteModeChanged {
            lockdown: l,
            emergency: e,
            at: now,
        },
    )]);
    let cause = if e {
        "emergency"
    } else if l {
        "lockdown"
    } else {
        "normal"
    };
    let rest = resting_changes(state, state.policy.as_deref(), l, e, now, cause);
    d.appends.extend(rest.appends);
    d.effects.extend(rest.effects);
    // Lockdown means every relay off now, pulses included.
    if l && !state.lockdown
        && !e
        && let Some(policy) = &state.policy
    {
        for door in &policy.doors {
            d.effects.push(Effect::Relay {
                device: door.relay.device.clone(),
                command: RelayCommand::Rest {
                    coil: door.relay.coil,
                    on: false,
                    cut_pulse: true,
                },
            });
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::Recorded;
    use crate::core::policy::Direction;
    use serde_json::json;

    /// Forgiving one person ends their presence in that zone only; forgiving everyone ends the
    /// zone's; nothing to forgive records nothing; a zone the policy does not have is not found.
    #[test]
    fn a_forgive_ends_one_persons_presence_or_the_whole_zones() {
        let policy = Policy::parse(
            r#"timezone = "UTC"
[[relay_devices]]
id = "board-1"
modbus = "tcp://127.0.0.1:5020"
[[doors]]
id = "main"
readers = ["main-in", "main-out", "park-in"]
relay = { device = "board-1", coil = 0 }
[[zones]]
name = "building"
entry_readers = ["main-in"]
exit_readers = ["main-out"]
anti_passback = "hard"
[[zones]]
name = "car-park"
entry_readers = ["park-in"]
anti_passback = "soft"
"#,
        )
        .expect("policy");
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let acme = PartnerId::from_random([1; 16]);
        let key = |z: &str, e: &str| (z.to_string(), acme, ExternalId(e.into()));
        let mut state = State {
            policy: Some(Arc::new(policy)),
            ..State::default()
        };
        for (z, e, d) in [
            ("building", "e-1", Direction::Entry),
            ("building", "e-2", Direction::Exit),
            ("car-park", "e-1", Direction::Entry),
        ] {
            state.zone_last.insert(key(z, e), d);
        }
        let apply = |state: &mut State, d: &Decision| {
            for (i, a) in d.appends.iter().enumerate() {
                for event in &a.events {
                    state.evolve(&Recorded {
                        position: state.position() + 1 + i as u64,
                        stream: a.stream.clone(),
                        revision: 0,
                        recorded_at: now,
                        event: event.clone(),
                        prev_hash: [0; 32],
                        hash: [0; 32],
                    });
                }
            }
        };
        let one = (acme, ExternalId("e-1".into()));
        let d = forgive(&state, "building", Some(&one), Some("fire exit"), now).expect("decided");
        assert!(matches!(
            d.outcome,
            super::super::decider::Outcome::Forgiven(1)
        ));
        assert_eq!(d.appends.len(), 1);
        assert_eq!(d.appends[0].stream, "zone-building");
        assert_eq!(
            d.appends[0].events,
            [Event::ZonePresenceForgiven {
                zone: "building".into(),
                partner_id: Some(acme),
                external_id: Some(ExternalId("e-1".into())),
                cleared: 1,
                reason: Some("fire exit".into()),
                at: now,
            }]
        );
        apply(&mut state, &d);
        assert!(!state.zone_last.contains_key(&key("building", "e-1")));
        assert!(state.zone_last.contains_key(&key("building", "e-2")));
        assert!(
            state.zone_last.contains_key(&key("car-park", "e-1")),
            "another zone keeps the person's presence"
        );
        // Again: nothing to forgive, nothing recorded.
        let d = forgive(&state, "building", Some(&one), None, now).expect("decided");
        assert!(matches!(
            d.outcome,
            super::super::decider::Outcome::Forgiven(0)
        ));
        assert!(d.appends.is_empty());
        // Everyone in the building (the exit counts too: it is a presence as well).
        let d = forgive(&state, "building", None, None, now).expect("decided");
        assert!(matches!(
            d.outcome,
            super::super::decider::Outcome::Forgiven(1)
        ));
        apply(&mut state, &d);
        assert_eq!(state.zone_last.len(), 1);
        assert!(state.zone_last.contains_key(&key("car-park", "e-1")));
        assert_eq!(
            forgive(&state, "lab", None, None, now).unwrap_err(),
            Rejection::NotFound
        );
        let empty = State::default();
        assert_eq!(
            forgive(&empty, "building", None, None, now).unwrap_err(),
            Rejection::NotFound,
            "no policy in force: no zone"
        );
    }

    /// A person's last movement in a zone that a refused pulse at another door may still undo
    /// (a passage held there) is read as a condition on that door's stream: the refusal
    /// landing in between has the decision taken again (review, session 18: otherwise
    /// `audit verify` flagged the genuine log).
    #[test]
    fn a_passage_held_at_another_door_is_a_read_condition() {
        let policy = Arc::new(
            Policy::parse(
                r#"timezone = "UTC"
[[relay_devices]]
id = "board-1"
modbus = "tcp://127.0.0.1:5020"
[[doors]]
id = "main"
readers = ["main-in"]
relay = { device = "board-1", coil = 0 }
[[doors]]
id = "lab"
readers = ["lab-in"]
relay = { device = "board-1", coil = 1 }
[[doors]]
id = "attic"
readers = ["attic-in"]
relay = { device = "board-1", coil = 2 }
[schedules]
always = ["* * * * * *"]
[[levels]]
name = "standard"
doors = ["*"]
schedule = "always"
[[zones]]
name = "building"
entry_readers = ["main-in", "lab-in"]
exit_readers = ["main-out"]
anti_passback = "soft"
"#,
            )
            .expect("policy"),
        );
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let who = |e: &str| DoorSubject {
            partner_id: PartnerId::from_random([1; 16]),
            partner_name: "Acme".into(),
            external_id: ExternalId(e.into()),
            metadata: Some(json!({"access_level": "standard"})),
        };
        let cref = |reader: &str, id: &str| CaptureRef {
            reader_id: ReaderId(reader.into()),
            capture_id: id.into(),
            quality: 0.9,
            similarity: Some(0.9),
            judged: None,
        };
        let mut state = State {
            policy: Some(policy.clone()),
            ..State::default()
        };
        let door = |id: &str| policy.door(&DoorId(id.into())).expect("door").clone();
        // A grant at the lab, its pulse not reported yet.
        let d = decide_door(
            &state,
            &policy,
            &door("lab"),
            &cref("lab-in", "c-1"),
            Some(who("e-1")),
            false,
            now,
        );
        for (i, a) in d.appends.iter().enumerate() {
            for e in &a.events {
                state.evolve(&Recorded {
                    position: i as u64 + 1,
                    stream: a.stream.clone(),
                    revision: 0,
                    recorded_at: now,
                    event: e.clone(),
                    prev_hash: [0; 32],
                    hash: [0; 32],
                });
            }
        }
        let conditions = |d: &Decision| -> Vec<String> {
            d.appends
                .iter()
                .filter(|a| a.events.is_empty())
                .map(|a| a.stream.clone())
                .collect()
        };
        let lab = stream::door(&DoorId("lab".into()));
        // The same person at the main door, in the same zone: the lab's stream is read.
        let d = decide_door(
            &state,
            &policy,
            &door("main"),
            &cref("main-in", "c-2"),
            Some(who("e-1")),
            false,
            now,
        );
        assert!(conditions(&d).contains(&lab), "{:?}", conditions(&d));
        // The zone's own stream too: an operator's forgive landing in between has the scan
        // decided again (review, session 26).
        assert!(
            conditions(&d).contains(&stream::zone("building")),
            "{:?}",
            conditions(&d)
        );
        // Someone else, or a door in no zone: not.
        let d = decide_door(
            &state,
            &policy,
            &door("main"),
            &cref("main-in", "c-3"),
            Some(who("e-2")),
            false,
            now,
        );
        assert!(!conditions(&d).contains(&lab), "{:?}", conditions(&d));
        let d = decide_door(
            &state,
            &policy,
            &door("attic"),
            &cref("attic-in", "c-4"),
            Some(who("e-1")),
            false,
            now,
        );
        assert!(!conditions(&d).contains(&lab), "{:?}", conditions(&d));
        assert!(
            !conditions(&d).contains(&stream::zone("building")),
            "a door in no zone reads no zone: {:?}",
            conditions(&d)
        );
    }

    /// `is_decision_metadata(m, r)` answers exactly `decision_metadata(m) == r`.
    #[test]
    fn comparing_decision_metadata_agrees_with_building_it() {
        let ms = [
            None,
            Some(json!({})),
            Some(json!("text")),
            Some(json!({"department": "x"})),
            Some(json!({"access_level": "a"})),
            Some(json!({"access_level": "a", "department": "x"})),
            Some(json!({"access_level": ["a", "b"], "valid_until": "2026-01-01"})),
        ];
        let mut rs: Vec<Option<serde_json::Value>> = vec![
            None,
            Some(json!({})),
            Some(json!("text")),
            Some(json!({"access_level": "b"})),
            Some(json!({"access_level": "a", "department": "x"})),
            Some(json!({"access_level": ["a", "b"]})),
        ];
        rs.extend(ms.iter().map(|m| decision_metadata(m.as_ref())));
        let mut agreed = 0;
        for m in &ms {
            for r in &rs {
                let built = decision_metadata(m.as_ref());
                assert_eq!(
                    is_decision_metadata(m.as_ref(), r.as_ref()),
                    built.as_ref() == r.as_ref(),
                    "m = {m:?}, recorded = {r:?}"
                );
                agreed += usize::from(built.as_ref() == r.as_ref());
            }
        }
        assert!(agreed >= ms.len(), "every m meets its own metadata");
    }
}
