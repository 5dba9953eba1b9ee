//! Property tests of the core (issue 8, item 3): random command sequences run through
//! `decide` + `State::evolve` with a virtual clock, synchronously, no runtime, no store.
//!
//! (a) No sequence makes an ended session usable again: once completed, failed or expired,
//!     its state and end time never change and no later event completes, fails, expires,
//!     retries or re-arms it.
//! (b) evolve(replay(log)) == live state: folding the recorded log into a fresh `State` gives
//!     the state built while deciding (the snapshot module's field-by-field `PartialEq`), and so
//!     does a snapshot's encode → decode.

use chrono::{DateTime, Duration, TimeZone, Utc};
use palmgate::core::event::{SealedTemplate, stream};
use palmgate::core::matcher::Candidate;
use palmgate::core::session::SessionState;
use palmgate::core::{
    Capture, Command, EnrollRequest, Event, Expected, ExternalId, KeyId, Language, PartnerId,
    ReaderId, Recorded, Rules, SecretHash, SessionId, SessionKind, State, decide,
};
use proptest::prelude::*;
use std::collections::HashMap;
use uuid::Uuid;

const SESSIONS: u128 = 3;
const READERS: [&str; 2] = ["r-1", "r-2"];

fn partner(n: u8) -> PartnerId {
    PartnerId(Uuid::from_u128(
        0x0197a3c2_5e1b_7c4d_9f20_3b8e6d1a4f00 | u128::from(n),
    ))
}

fn sid(n: u8) -> SessionId {
    SessionId(Uuid::from_u128(
        0x0197a3c4_1f22_7a90_b6c3_5d2e8f9a0000 | u128::from(n),
    ))
}

fn token(n: u8) -> SecretHash {
    SecretHash(format!("token-{n}"))
}

fn start() -> DateTime<Utc> {
    Utc.timestamp_opt(1_748_768_400, 0).unwrap()
}

/// One generated step.
#[derive(Clone, Debug)]
enum Op {
    Create {
        s: u8,
        enroll: bool,
        ttl_secs: i64,
    },
    ReaderStatus {
        r: u8,
        online: bool,
    },
    Arm {
        s: u8,
        r: u8,
    },
    Capture {
        s: u8,
        r: u8,
        /// Small, so the same capture id repeats (duplicates) now and then.
        capture: u8,
        quality: f64,
        liveness: bool,
        similarity: Option<f32>,
    },
    Cancel {
        s: u8,
        by_owner: bool,
    },
    Advance(i64),
    Tick,
}

fn op() -> impl Strategy<Value = Op> {
    let s = 0..SESSIONS as u8;
    let r = 0..READERS.len() as u8;
    prop_oneof![
        2 => (s.clone(), any::<bool>(), 1i64..900)
            .prop_map(|(s, enroll, ttl_secs)| Op::Create { s, enroll, ttl_secs }),
        1 => (r.clone(), any::<bool>()).prop_map(|(r, online)| Op::ReaderStatus { r, online }),
        1 => (s.clone(), r.clone()).prop_map(|(s, r)| Op::Arm { s, r }),
        4 => (
            s.clone(),
            r,
            0u8..6,
            prop_oneof![Just(0.2f64), Just(0.9f64), 0.0f64..=1.0],
            prop::bool::weighted(0.85),
            prop::option::of(0.0f32..=1.0),
        )
            .prop_map(|(s, r, capture, quality, liveness, similarity)| Op::Capture {
                s,
                r,
                capture,
                quality,
                liveness,
                similarity,
            }),
        1 => (s, any::<bool>()).prop_map(|(s, by_owner)| Op::Cancel { s, by_owner }),
        2 => (0i64..600).prop_map(Op::Advance),
        2 => Just(Op::Tick),
    ]
}

/// The live side: a state built while deciding, plus the log a store would hold.
struct World {
    state: State,
    heads: HashMap<String, u64>,
    log: Vec<Recorded>,
    now: DateTime<Utc>,
}

impl World {
    fn new() -> World {
        let mut w = World {
            state: State::new(Rules::default()),
            heads: HashMap::new(),
            log: Vec::new(),
            now: start(),
        };
        for p in [1, 2] {
            w.run(&Command::CreatePartner {
                partner_id: partner(p),
                name: format!("partner {p}"),
                api_key_hash: SecretHash(format!("key-{p}")),
                webhook: None,
            });
        }
        w
    }

    /// Decides `cmd` at `now` and appends what it decided; returns the events appended.
    fn run(&mut self, cmd: &Command) -> Vec<Event> {
        let Ok(d) = decide(&self.state, cmd, self.now) else {
            return Vec::new();
        };
        // As the store does: every expected revision holds, or nothing is appended (a
        // conflict; e.g. a `CreateSession` reusing a session id expects a new stream).
        let holds = d.appends.iter().all(|a| {
            let head = self.heads.get(&a.stream).copied();
            match a.expected {
                Expected::NoStream => head.is_none(),
                Expected::Revision(r) => head == Some(r),
                Expected::Any => true,
            }
        });
        if !holds {
            return Vec::new();
        }
        let mut appended = Vec::new();
        for a in &d.appends {
            for e in &a.events {
                let revision = self.heads.get(&a.stream).map_or(0, |r| r + 1);
                self.heads.insert(a.stream.clone(), revision);
                let position = self.log.len() as u64 + 1;
                let rec = Recorded {
                    position,
                    stream: a.stream.clone(),
                    revision,
                    recorded_at: self.now,
                    event: e.clone(),
                    prev_hash: [0; 32],
                    hash: [position as u8; 32],
                };
                self.state.evolve(&rec);
                self.log.push(rec);
                appended.push(e.clone());
            }
        }
        appended
    }

    fn command(&self, op: &Op) -> Option<Command> {
        Some(match *op {
            Op::Create {
                s,
                enroll,
                ttl_secs,
            } => Command::CreateSession {
                partner_id: partner(1 + s % 2),
                session_id: sid(s),
                token_hash: token(s),
                kind: if enroll {
                    SessionKind::Enroll
                } else {
                    SessionKind::Identify
                },
                language: Language::En,
                enroll: enroll.then(|| EnrollRequest {
                    external_id: ExternalId(format!("user-{s}")),
                    username: None,
                    metadata: None,
                }),
                idempotency: None,
                ttl: Duration::seconds(ttl_secs),
            },
            Op::ReaderStatus { r, online } => Command::ReaderStatus {
                reader_id: ReaderId(READERS[r as usize].into()),
                online,
                model: None,
                firmware: None,
            },
            Op::Arm { s, r } => Command::ArmReader {
                session_id: sid(s),
                reader_id: ReaderId(READERS[r as usize].into()),
            },
            Op::Capture {
                s,
                r,
                capture,
                quality,
                liveness,
                similarity,
            } => Command::Capture(Capture {
                reader_id: ReaderId(READERS[r as usize].into()),
                capture_id: format!("c-{capture}"),
                session: Some(token(s)),
                quality,
                liveness,
                best: similarity.map(|similarity| Candidate {
                    partner_id: partner(1 + s % 2),
                    external_id: ExternalId("someone".into()),
                    similarity,
                }),
                sealed: Some(SealedTemplate {
                    key_id: KeyId(Uuid::from_u128(7)),
                    nonce: "AAAAAAAAAAAAAAAA".into(),
                    ciphertext: format!("sealed-{s}-{capture}"),
                }),
            }),
            Op::Cancel { s, by_owner } => Command::CancelSession {
                partner: by_owner.then(|| partner(1 + s % 2)),
                session_id: sid(s),
            },
            Op::Tick => Command::Tick,
            Op::Advance(_) => return None,
        })
    }
}

fn ended(state: SessionState) -> bool {
    state != SessionState::Pending
}

/// Events that would use a session: end it, retry it, arm it.
fn uses(e: &Event, s: SessionId) -> bool {
    let (kind, _, data) = e.encode();
    let on_s = data.get("session_id").and_then(|v| v.as_str()) == Some(&*s.0.to_string());
    on_s && matches!(
        kind,
        "SessionCompleted"
            | "SessionFailed"
            | "SessionExpired"
            | "CaptureRetryRequested"
            | "SessionReaderArmed"
            | "SessionCreated"
    )
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 96,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    /// (a) An ended session never becomes usable again, whatever follows.
    #[test]
    fn an_ended_session_stays_ended(ops in prop::collection::vec(op(), 1..60)) {
        let mut w = World::new();
        // Sessions seen ended: their state and end time when first seen so.
        let mut ends: HashMap<SessionId, (SessionState, Option<DateTime<Utc>>)> = HashMap::new();
        for op in &ops {
            if let Op::Advance(secs) = op {
                w.now += Duration::seconds(*secs);
                continue;
            }
            let cmd = w.command(op).expect("a command");
            let appended = w.run(&cmd);
            for (id, (state, at)) in &ends {
                for e in &appended {
                    prop_assert!(!uses(e, *id), "{op:?} used ended session {id}: {e:?}");
                }
                let s = w.state.session(*id).expect("an ended session stays in state");
                prop_assert_eq!(s.state, *state, "{:?} changed ended session {}", op, id);
                prop_assert_eq!(s.ended_at, *at);
                prop_assert!(!s.is_open(w.now));
            }
            for n in 0..SESSIONS as u8 {
                if let Some(s) = w.state.session(sid(n))
                    && ended(s.state)
                {
                    ends.entry(s.id).or_insert((s.state, s.ended_at));
                }
            }
        }
    }

    /// (b) Replaying the log into a fresh state gives the live state; so does a snapshot.
    #[test]
    fn replay_of_the_log_is_the_live_state(ops in prop::collection::vec(op(), 1..60)) {
        let mut w = World::new();
        for op in &ops {
            if let Op::Advance(secs) = op {
                w.now += Duration::seconds(*secs);
                continue;
            }
            let cmd = w.command(op).expect("a command");
            w.run(&cmd);
        }
        let mut replayed = State::new(Rules::default());
        for rec in &w.log {
            replayed.evolve(rec);
        }
        prop_assert!(replayed == w.state, "replayed state differs from the live state");
        let bytes = palmgate::core::snapshot::encode(&w.state);
        let restored = palmgate::core::snapshot::decode(&bytes, Rules::default())
            .expect("a snapshot decodes");
        prop_assert!(restored == w.state, "snapshot round trip differs from the live state");
        // Every session stream's head is the session's own revision.
        for n in 0..SESSIONS as u8 {
            if let Some(s) = w.state.session(sid(n)) {
                prop_assert_eq!(w.heads.get(&stream::session(s.id)).copied(), Some(s.revision));
            }
        }
    }
}
