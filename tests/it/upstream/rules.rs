//! Upstream mode's rules in the core, given/when/then (house rule 8): the events so far, a
//! command at an instant, the events and effects that follow. Synchronous, no runtime.

use chrono::{DateTime, Duration, TimeZone, Utc};
use palmgate::core::doors::{RelayCommand, rederive};
use palmgate::core::event::{Recorded, UpstreamOutcome, stream};
use palmgate::core::policy::{DenyReason, Policy};
use palmgate::core::upstream::{IdentifyAnswer, LATE_AFTER, RemoteEnd, Unidentified};
use palmgate::core::{
    Command, Decision, Effect, Event, ExternalId, Outcome, PartnerId, ReaderCommand, ReaderId,
    Rejection, State, StreamAppend, UpstreamSessionId, decide,
};
use serde_json::json;
use std::collections::HashMap;

fn t(s: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 2, 6, 0, 0).unwrap() + Duration::seconds(s)
}

/// A state built the way the store builds one: positions and per-stream revisions.
struct World {
    state: State,
    heads: HashMap<String, u64>,
    position: u64,
}

impl World {
    fn new() -> World {
        let doc = super::site_doc("tcp://127.0.0.1:1", &super::Layout::default());
        let sha256 = Policy::parse(&doc).unwrap().sha256;
        let mut w = World {
            state: State::default(),
            heads: HashMap::new(),
            position: 0,
        };
        w.record(
            "policy".into(),
            Event::PolicyActivated {
                sha256,
                document: doc,
                source: "test".into(),
                at: t(0),
            },
        );
        w
    }

    fn record(&mut self, stream: String, event: Event) {
        let revision = self.heads.get(&stream).map_or(0, |r| r + 1);
        self.heads.insert(stream.clone(), revision);
        self.position += 1;
        self.state.evolve(&Recorded {
            position: self.position,
            stream,
            revision,
            recorded_at: t(0),
            event,
            prev_hash: [0; 32],
            hash: [0; 32],
        });
    }

    fn apply(&mut self, appends: &[StreamAppend]) {
        for a in appends {
            for e in &a.events {
                self.record(a.stream.clone(), e.clone());
            }
        }
    }

    /// Decides and, when it succeeds, folds the events in.
    fn run(&mut self, cmd: Command, now: DateTime<Utc>) -> Result<Decision, Rejection> {
        let d = decide(&self.state, &cmd, now)?;
        self.apply(&d.appends);
        Ok(d)
    }

    /// A trigger at `reader` answered by the remote with session `id`.
    fn bound(&mut self, reader: &str, trigger: &str, id: &str) -> Decision {
        self.bound_skewed(reader, trigger, id, None)
    }

    /// As [`World::bound`], the remote's clock `skew` seconds ahead of ours.
    fn bound_skewed(
        &mut self,
        reader: &str,
        trigger: &str,
        id: &str,
        skew: Option<i64>,
    ) -> Decision {
        self.run(
            Command::UpstreamIdentify {
                reader_id: ReaderId(reader.into()),
                trigger_id: trigger.into(),
                answer: IdentifyAnswer::Started {
                    session_id: UpstreamSessionId(id.into()),
                    url: format!("https://pass.example.com/identify/tok-{id}"),
                    expires_at: Some(t(900)),
                    clock_skew_s: skew,
                },
            },
            t(1),
        )
        .unwrap()
    }
}

fn partner() -> PartnerId {
    palmgate::app::upstream::partner_id("https://pass.example.com")
}

fn end(id: &str, outcome: UpstreamOutcome, level: &str, ended_at: DateTime<Utc>) -> Command {
    Command::UpstreamWebhook(RemoteEnd {
        session_id: UpstreamSessionId(id.into()),
        webhook_id: format!("msg_{id}"),
        outcome,
        external_id: (outcome == UpstreamOutcome::Completed).then(|| ExternalId("alice".into())),
        username: Some("Alice".into()),
        metadata: Some(json!({"access_level": level, "salary": 100})),
        fail_reason: (outcome == UpstreamOutcome::Failed).then(|| "no_match".to_string()),
        ended_at,
        partner_id: partner(),
        partner_name: "upstream".into(),
    })
}

fn kinds(d: &Decision) -> Vec<&'static str> {
    d.events().map(Event::kind).collect()
}

#[test]
fn a_trigger_binds_the_remote_session_and_shows_its_page() {
    let mut w = World::new();
    let d = w.bound("lobby-1", "trg-1", "s-1");
    assert_eq!(kinds(&d), ["UpstreamIdentifyStarted"]);
    assert_eq!(d.appends[0].stream, "upstream-s-1");
    assert_eq!(
        d.effects,
        [Effect::Reader {
            reader_id: ReaderId("lobby-1".into()),
            command: ReaderCommand::ShowUrl {
                url: "https://pass.example.com/identify/tok-s-1".into()
            },
        }]
    );
    let b = w
        .state
        .upstream_binding(&UpstreamSessionId("s-1".into()))
        .unwrap();
    assert_eq!(
        (b.reader_id.as_str(), b.trigger_id.as_str()),
        ("lobby-1", "trg-1")
    );
    // The same trigger again (a redelivery), or another trigger answered with a session
    // already bound (an Idempotency-Key replay at the remote): nothing new.
    let again = w.bound("lobby-1", "trg-1", "s-1");
    assert_eq!(
        (again.appends.len(), again.outcome),
        (0, Outcome::Duplicate)
    );
    let replayed = w.bound("lobby-1", "trg-2", "s-1");
    assert_eq!(
        (replayed.appends.len(), replayed.outcome),
        (0, Outcome::Duplicate)
    );
}

#[test]
fn a_failed_call_is_recorded_and_the_reader_told_once() {
    let mut w = World::new();
    let cmd = Command::UpstreamIdentify {
        reader_id: ReaderId("lobby-1".into()),
        trigger_id: "trg-9".into(),
        answer: IdentifyAnswer::Failed {
            status_code: Some(502),
            error: "the upstream answered 502".into(),
        },
    };
    let d = w.run(cmd.clone(), t(1)).unwrap();
    assert_eq!(kinds(&d), ["UpstreamIdentifyFailed"]);
    assert_eq!(
        d.effects,
        [Effect::Reader {
            reader_id: ReaderId("lobby-1".into()),
            command: ReaderCommand::NotIdentified {
                door: Some(palmgate::core::policy::DoorId("main".into())),
                why: Unidentified::Unavailable,
            },
        }]
    );
    assert_eq!(w.run(cmd, t(2)).unwrap().outcome, Outcome::Duplicate);
}

#[test]
fn a_completed_session_is_decided_like_a_door_scan_and_once() {
    let mut w = World::new();
    w.bound("lobby-1", "trg-1", "s-1");
    let d = w
        .run(
            end("s-1", UpstreamOutcome::Completed, "standard", t(20)),
            t(21),
        )
        .unwrap();
    assert_eq!(kinds(&d), ["UpstreamSessionEnded", "DoorDecided"]);
    assert_eq!(
        d.appends[0].expected,
        palmgate::core::Expected::Revision(0),
        "on the binding's stream, after its start"
    );
    let decided = d.events().nth(1).unwrap().clone();
    let Event::DoorDecided {
        subject,
        verdict,
        capture_id,
        ..
    } = &decided
    else {
        unreachable!()
    };
    assert!(verdict.granted(), "{verdict:?}");
    assert_eq!(
        capture_id, "trigger:trg-1",
        "the trigger's key, apart from capture ids"
    );
    let s = subject.as_ref().unwrap();
    assert_eq!(
        (s.partner_id, s.partner_name.as_str()),
        (partner(), "upstream")
    );
    assert_eq!(
        s.metadata,
        Some(json!({"access_level": "standard"})),
        "only what the policy reads"
    );
    assert!(
        d.effects.iter().any(|e| matches!(e,
        Effect::Relay { command: RelayCommand::Pulse { coil: 0, tag, .. }, .. } if tag == "trigger:trg-1"))
    );
    assert!(d.effects.iter().any(|e| matches!(
        e,
        Effect::Reader {
            command: ReaderCommand::Result { granted: true, .. },
            ..
        }
    )));
    // The audit's re-derivation gives the same verdict from the event alone.
    let policy = w.state.policy.clone().unwrap();
    assert_eq!(rederive(&policy, &decided).as_ref(), Some(verdict));
    // A repeated webhook (retry or replay): nothing, not even a reader message.
    let again = w
        .run(
            end("s-1", UpstreamOutcome::Completed, "standard", t(20)),
            t(22),
        )
        .unwrap();
    assert_eq!((again.appends.len(), again.effects.len()), (0, 0));
    assert_eq!(again.outcome, Outcome::Duplicate);
    // A session palmgate never opened.
    assert_eq!(
        w.run(
            end("s-x", UpstreamOutcome::Completed, "standard", t(20)),
            t(22)
        )
        .unwrap_err(),
        Rejection::NotFound
    );
}

#[test]
fn a_webhook_too_late_opens_nothing() {
    let mut w = World::new();
    w.bound("lobby-1", "trg-1", "s-1");
    let ended = t(20);
    let d = w
        .run(
            end("s-1", UpstreamOutcome::Completed, "standard", ended),
            ended + LATE_AFTER + Duration::seconds(1),
        )
        .unwrap();
    assert_eq!(kinds(&d), ["UpstreamSessionEnded"]);
    assert!(matches!(
        d.events().next(),
        Some(Event::UpstreamSessionEnded { late: true, .. })
    ));
    assert!(matches!(
        &d.effects[..],
        [Effect::Reader {
            command: ReaderCommand::NotIdentified {
                why: Unidentified::TooLate,
                ..
            },
            ..
        }]
    ));
}

#[test]
fn lateness_is_judged_on_our_clock_whatever_the_remote_clock_says() {
    let mut w = World::new();
    // The remote's clock runs 5 minutes behind ours, then 2 minutes ahead.
    w.bound_skewed("lobby-1", "trg-1", "s-1", Some(-300));
    w.bound_skewed("lobby-1", "trg-2", "s-2", Some(120));
    w.bound_skewed("lobby-1", "trg-3", "s-3", Some(120));
    let on_time = |d: &Decision| kinds(d) == ["UpstreamSessionEnded", "DoorDecided"];
    let behind = w
        .run(
            end("s-1", UpstreamOutcome::Completed, "standard", t(20 - 300)),
            t(21),
        )
        .unwrap();
    assert!(on_time(&behind), "{:?}", kinds(&behind));
    let ahead = w
        .run(
            end("s-2", UpstreamOutcome::Completed, "standard", t(20 + 120)),
            t(21),
        )
        .unwrap();
    assert!(on_time(&ahead), "{:?}", kinds(&ahead));
    // 90 s late on our clock, although the remote's timestamp looks 30 s old.
    let late = w
        .run(
            end("s-3", UpstreamOutcome::Completed, "standard", t(20 + 120)),
            t(20 + 90),
        )
        .unwrap();
    assert_eq!(kinds(&late), ["UpstreamSessionEnded"]);
}

#[test]
fn the_site_policy_in_force_decides_lockdown_and_levels_included() {
    let mut w = World::new();
    w.record(
        stream::SITE.into(),
        Event::SiteModeChanged {
            lockdown: true,
            emergency: false,
            at: t(0),
        },
    );
    w.bound("lobby-1", "trg-1", "s-1");
    let d = w
        .run(
            end("s-1", UpstreamOutcome::Completed, "standard", t(20)),
            t(21),
        )
        .unwrap();
    let Some(Event::DoorDecided { verdict, .. }) = d.events().nth(1) else {
        panic!("{:?}", kinds(&d))
    };
    assert_eq!(verdict.reason(), Some(DenyReason::Lockdown));
    assert!(!d.effects.iter().any(|e| matches!(e, Effect::Relay { .. })));
}

#[test]
fn failures_and_expiry_tell_the_reader_and_only_no_match_is_a_door_decision() {
    let mut w = World::new();
    w.bound("lobby-1", "trg-1", "s-1");
    w.bound("lobby-1", "trg-2", "s-2");
    w.bound("desk-9", "trg-3", "s-3");
    let d = w
        .run(end("s-1", UpstreamOutcome::Failed, "", t(20)), t(21))
        .unwrap();
    assert_eq!(kinds(&d), ["UpstreamSessionEnded", "DoorDecided"]);
    assert!(d.effects.iter().any(|e| matches!(
        e,
        Effect::Reader {
            command: ReaderCommand::Result {
                granted: false,
                reason: Some(DenyReason::NoMatch),
                ..
            },
            ..
        }
    )));
    let d = w
        .run(end("s-2", UpstreamOutcome::Expired, "", t(900)), t(901))
        .unwrap();
    assert_eq!(kinds(&d), ["UpstreamSessionEnded"]);
    assert!(matches!(
        &d.effects[..],
        [Effect::Reader {
            command: ReaderCommand::NotIdentified {
                why: Unidentified::Expired,
                ..
            },
            ..
        }]
    ));
    // A reader that belongs to no door: the end is recorded, no decision.
    let d = w
        .run(
            end("s-3", UpstreamOutcome::Completed, "standard", t(20)),
            t(21),
        )
        .unwrap();
    assert_eq!(kinds(&d), ["UpstreamSessionEnded"]);
    assert!(matches!(
        &d.effects[..],
        [Effect::Reader {
            command: ReaderCommand::NotIdentified {
                door: None,
                why: Unidentified::NoDoor
            },
            ..
        }]
    ));
}

fn failed(id: &str, reason: &str, ended_at: DateTime<Utc>) -> Command {
    let Command::UpstreamWebhook(mut e) = end(id, UpstreamOutcome::Failed, "", ended_at) else {
        unreachable!()
    };
    e.fail_reason = Some(reason.into());
    Command::UpstreamWebhook(e)
}

fn told(d: &Decision) -> Vec<Unidentified> {
    d.effects
        .iter()
        .filter_map(|e| match e {
            Effect::Reader {
                command: ReaderCommand::NotIdentified { why, .. },
                ..
            } => Some(why.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn an_ending_tells_the_reader_only_while_it_is_news_there() {
    let mut w = World::new();
    // Given S1 then S2 bound at lobby-1 (the reader shows S2's page) …
    w.bound("lobby-1", "exp-a", "s-1");
    w.bound("lobby-1", "exp-b", "s-2");
    // … S1's expiry, on time, is recorded and tells the reader nothing.
    let d = w
        .run(end("s-1", UpstreamOutcome::Expired, "", t(900)), t(901))
        .unwrap();
    assert_eq!(kinds(&d), ["UpstreamSessionEnded"]);
    assert_eq!(told(&d), []);
    // S2 (the newest there) fails on time: told.
    let d = w.run(failed("s-2", "cancelled", t(30)), t(31)).unwrap();
    assert_eq!(told(&d), [Unidentified::Failed("cancelled".into())]);
    // A failure a remote reports on recovering from an outage, two hours on: recorded only.
    w.bound("lobby-1", "exp-c", "s-3");
    let d = w
        .run(failed("s-3", "cancelled", t(40)), t(40 + 7200))
        .unwrap();
    assert_eq!(kinds(&d), ["UpstreamSessionEnded"]);
    assert_eq!(told(&d), []);
    // A completion 50 minutes late: recorded late, nobody told; 90 s late: `too_late` told
    // (within `LATE_AFTER` of becoming too late).
    w.bound("lobby-1", "exp-d", "s-4");
    let d = w
        .run(
            end("s-4", UpstreamOutcome::Completed, "standard", t(20)),
            t(20 + 3000),
        )
        .unwrap();
    assert!(matches!(
        d.events().next(),
        Some(Event::UpstreamSessionEnded { late: true, .. })
    ));
    assert_eq!(told(&d), []);
    w.bound("lobby-1", "exp-e", "s-5");
    let d = w
        .run(
            end("s-5", UpstreamOutcome::Completed, "standard", t(20)),
            t(20 + 90),
        )
        .unwrap();
    assert_eq!(told(&d), [Unidentified::TooLate]);
    // A no_match is a door decision, whichever session the reader shows.
    w.bound("lobby-1", "exp-f", "s-6");
    w.bound("lobby-1", "exp-g", "s-7");
    let d = w
        .run(end("s-6", UpstreamOutcome::Failed, "", t(30)), t(31))
        .unwrap();
    assert_eq!(kinds(&d), ["UpstreamSessionEnded", "DoorDecided"]);
    // Another reader's later trigger supersedes nothing here.
    w.bound("side-1", "exp-h", "s-8");
    let d = w
        .run(end("s-7", UpstreamOutcome::Expired, "", t(900)), t(905))
        .unwrap();
    assert_eq!(told(&d), [Unidentified::Expired]);
}

#[test]
fn a_binding_the_remote_never_ends_is_unheard_after_its_expiry_and_told_once_in_time() {
    use palmgate::core::upstream::{unheard, unheard_after, unheard_notice};
    let mut w = World::new();
    w.bound("lobby-1", "trg-1", "s-1");
    w.bound("lobby-1", "trg-2", "s-2");
    let b1 = w
        .state
        .upstream_binding(&UpstreamSessionId("s-1".into()))
        .unwrap();
    assert!(b1.superseded);
    // Expired at t(900); the remote has `LATE_AFTER` more to send its webhook.
    let due = t(900) + LATE_AFTER;
    assert_eq!(unheard_after(b1), due);
    let (past, next) = unheard(&w.state, due - Duration::seconds(1));
    assert!(past.is_empty());
    assert_eq!(next, Some(due));
    let (past, next) = unheard(&w.state, due);
    let mut ids: Vec<_> = past.iter().map(|b| b.session_id.0.as_str()).collect();
    ids.sort();
    assert_eq!((ids, next), (vec!["s-1", "s-2"], None));
    // Only the reader's newest is told, and only within `LATE_AFTER` of that instant.
    let notice = |id: &str, now| {
        let b = w
            .state
            .upstream_binding(&UpstreamSessionId(id.into()))
            .unwrap();
        unheard_notice(&w.state, b, now)
    };
    assert_eq!(notice("s-1", due), None);
    assert!(matches!(
        notice("s-2", due),
        Some(Effect::Reader {
            command: ReaderCommand::NotIdentified {
                why: Unidentified::Expired,
                ..
            },
            ..
        })
    ));
    assert_eq!(notice("s-2", due + LATE_AFTER + Duration::seconds(1)), None);
}
