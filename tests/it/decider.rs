//! Decider tests that read like the spec (house rule 8): given the events so far, when a
//! command arrives at an instant, then these events are appended (with these expected
//! revisions) — or the command is refused. Synchronous, no runtime, no store.
//!
//! [`given`] folds hand-built `Recorded` events into a `State`, numbering positions and
//! per-stream revisions as a store would. [`Then::and`] appends a decision's events the same
//! way (checking each expected revision first), so a story can go on command after command.

use chrono::{DateTime, Duration, TimeZone, Utc};
use palmgate::core::decider::IDEMPOTENCY_TTL;
use palmgate::core::event::{Idempotency, stream};
use palmgate::core::session::{PageView, Session, SessionState};
use palmgate::core::{
    Command, Decision, EnrollRequest, Event, Expected, ExternalId, FailReason, Language, Outcome,
    PartnerId, Recorded, Rejection, SecretHash, SessionId, SessionKind, State, StreamAppend,
};
use serde_json::json;
use std::collections::HashMap;
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// given / when / then
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
struct Given {
    state: State,
    heads: HashMap<String, u64>,
    position: u64,
}

/// The state after `events`, each on the stream `decide` would have put it on.
fn given(events: impl IntoIterator<Item = Event>) -> Given {
    let mut g = Given {
        state: State::default(),
        heads: HashMap::new(),
        position: 0,
    };
    for e in events {
        let s = stream_of(&e);
        g.record(s, e);
    }
    g
}

/// The stream an event lives on (SPEC 8.1), read off its data so this helper does not need
/// to change with every new event type.
fn stream_of(e: &Event) -> String {
    let (kind, _, data) = e.encode();
    let uuid = |field: &str| {
        Uuid::parse_str(
            data[field]
                .as_str()
                .unwrap_or_else(|| panic!("{kind}.{field}")),
        )
        .unwrap()
    };
    let text = |field: &str| data[field].as_str().unwrap().to_string();
    if kind.starts_with("Partner") {
        stream::partner(PartnerId(uuid("partner_id")))
    } else if kind == "IdempotencyKeyUsed" {
        stream::idempotency(PartnerId(uuid("partner_id")), &text("key"))
    } else if kind.starts_with("User") {
        stream::user(
            PartnerId(uuid("partner_id")),
            &ExternalId(text("external_id")),
        )
    } else if kind.starts_with("Webhook") {
        stream::webhook(PartnerId(uuid("partner_id")))
    } else if kind.starts_with("Delivery") {
        stream::delivery(&text("delivery_id"))
    } else if data.get("session_id").is_some() {
        stream::session(SessionId(uuid("session_id")))
    } else if data.get("reader_id").is_some() {
        stream::reader(&palmgate::core::ReaderId(text("reader_id")))
    } else {
        panic!("decider tests: no stream rule for {kind}")
    }
}

impl Given {
    fn record(&mut self, stream: String, event: Event) -> Recorded {
        let revision = self.heads.get(&stream).map_or(0, |r| r + 1);
        self.heads.insert(stream.clone(), revision);
        self.position += 1;
        let rec = Recorded {
            position: self.position,
            stream,
            revision,
            recorded_at: t(0),
            event,
            prev_hash: [0; 32],
            hash: [self.position as u8; 32],
        };
        self.state.evolve(&rec);
        rec
    }

    /// More events, after the ones already given.
    fn and(mut self, events: impl IntoIterator<Item = Event>) -> Given {
        for e in events {
            let s = stream_of(&e);
            self.record(s, e);
        }
        self
    }

    fn when(&self, cmd: Command, now: DateTime<Utc>) -> Then {
        Then {
            given: self.clone(),
            result: palmgate::core::decide(&self.state, &cmd, now),
        }
    }

    fn session(&self, id: SessionId) -> &Session {
        self.state.session(id).expect("session in state")
    }
}

struct Then {
    given: Given,
    result: Result<Decision, Rejection>,
}

impl Then {
    #[track_caller]
    fn decision(&self) -> &Decision {
        match &self.result {
            Ok(d) => d,
            Err(r) => panic!("expected a decision, got rejection {r:?}"),
        }
    }

    /// Exactly these appends, in any order of streams.
    #[track_caller]
    fn then(&self, expected: Vec<StreamAppend>) -> &Self {
        let key = |a: &StreamAppend| a.stream.clone();
        let mut got = self.decision().appends.clone();
        let mut want = expected;
        got.sort_by_key(key);
        want.sort_by_key(key);
        assert_eq!(got, want, "appends");
        self
    }

    /// As `then`, for a session created for partner `p`: the decision also holds the condition
    /// that `p`'s stream is unchanged (a deactivation landing meanwhile refuses it).
    #[track_caller]
    fn then_created(&self, p: PartnerId, mut expected: Vec<StreamAppend>) -> &Self {
        expected.push(StreamAppend {
            stream: stream::partner(p),
            expected: Expected::Revision(0),
            events: vec![],
        });
        self.then(expected)
    }

    #[track_caller]
    fn then_nothing(&self) -> &Self {
        assert_eq!(self.decision().appends, vec![], "no events");
        self
    }

    #[track_caller]
    fn then_rejected(&self, r: Rejection) {
        match &self.result {
            Err(got) => assert_eq!(got, &r),
            Ok(d) => panic!("expected rejection {r:?}, got {d:?}"),
        }
    }

    #[track_caller]
    fn outcome(&self, o: Outcome) -> &Self {
        assert_eq!(self.decision().outcome, o, "outcome");
        self
    }

    /// Appends the decision's events as a store would, checking each stream's expected
    /// revision against what has been appended so far, and goes on from there.
    #[track_caller]
    fn and(&self) -> Given {
        let mut g = self.given.clone();
        for a in &self.decision().appends {
            let head = g.heads.get(&a.stream).copied();
            match a.expected {
                Expected::NoStream => assert_eq!(head, None, "{} must be new", a.stream),
                Expected::Revision(r) => assert_eq!(head, Some(r), "{} revision", a.stream),
                Expected::Any => {}
            }
            for e in &a.events {
                g.record(a.stream.clone(), e.clone());
            }
        }
        g
    }
}

fn one(stream: String, expected: Expected, event: Event) -> StreamAppend {
    StreamAppend {
        stream,
        expected,
        events: vec![event],
    }
}

// ---------------------------------------------------------------------------------------------
// Sample values
// ---------------------------------------------------------------------------------------------

/// 2025-06-01T09:00:00Z plus `secs`.
fn t(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_748_768_400 + secs, 0).unwrap()
}

const TTL: Duration = Duration::minutes(15);
const P1: PartnerId = PartnerId(Uuid::from_u128(0x0197a3c2_5e1b_7c4d_9f20_3b8e6d1a4f01));
const P2: PartnerId = PartnerId(Uuid::from_u128(0x0197a3c2_5e1b_7c4d_9f20_3b8e6d1a4f02));

fn sid(n: u128) -> SessionId {
    SessionId(Uuid::from_u128(0x0197a3c4_1f22_7a90_b6c3_5d2e8f9a0000 | n))
}

fn token(s: SessionId) -> SecretHash {
    SecretHash(format!("token-of-{s}"))
}

fn ext(s: &str) -> ExternalId {
    ExternalId(s.to_string())
}

fn partner_created(p: PartnerId) -> Event {
    Event::PartnerCreated {
        partner_id: p,
        name: format!("partner {p}"),
        api_key_hash: SecretHash(format!("key-of-{p}")),
        at: t(-3600),
    }
}

fn enroll_created(s: SessionId, p: PartnerId, external_id: &str, at: DateTime<Utc>) -> Event {
    Event::SessionCreated {
        session_id: s,
        partner_id: Some(p),
        reader_id: None,
        kind: SessionKind::Enroll,
        language: Language::En,
        token_hash: token(s),
        external_id: Some(ext(external_id)),
        username: None,
        metadata: None,
        created_at: at,
        expires_at: at + TTL,
        trigger_id: None,
    }
}

fn identify_created(s: SessionId, p: PartnerId, at: DateTime<Utc>) -> Event {
    Event::SessionCreated {
        session_id: s,
        partner_id: Some(p),
        reader_id: None,
        kind: SessionKind::Identify,
        language: Language::Ru,
        token_hash: token(s),
        external_id: None,
        username: None,
        metadata: None,
        created_at: at,
        expires_at: at + TTL,
        trigger_id: None,
    }
}

fn completed(s: SessionId, at: DateTime<Utc>) -> Event {
    Event::SessionCompleted {
        session_id: s,
        external_id: None,
        capture: None,
        at,
    }
}

fn failed(s: SessionId, reason: FailReason, at: DateTime<Utc>) -> Event {
    Event::SessionFailed {
        session_id: s,
        reason,
        capture: None,
        at,
    }
}

fn expired(s: SessionId, at: DateTime<Utc>) -> Event {
    Event::SessionExpired { session_id: s, at }
}

fn enrolled(p: PartnerId, external_id: &str, s: SessionId) -> Event {
    Event::UserEnrolled {
        partner_id: p,
        external_id: ext(external_id),
        username: Some("John Doe".into()),
        metadata: None,
        session_id: s,
        template: None,
        at: t(60),
    }
}

fn erased(p: PartnerId, external_id: &str, at: DateTime<Utc>) -> Event {
    Event::UserErased {
        partner_id: p,
        external_id: ext(external_id),
        at,
        clears_zones: true,
    }
}

fn key_used(p: PartnerId, key: &str, fp: &str, s: SessionId, at: DateTime<Utc>) -> Event {
    Event::IdempotencyKeyUsed {
        partner_id: p,
        key: key.into(),
        fingerprint: fp.into(),
        session_id: s,
        at,
    }
}

fn create_enroll(p: PartnerId, s: SessionId, external_id: &str) -> Command {
    Command::CreateSession {
        partner_id: p,
        session_id: s,
        token_hash: token(s),
        kind: SessionKind::Enroll,
        language: Language::En,
        enroll: Some(EnrollRequest {
            external_id: ext(external_id),
            username: None,
            metadata: None,
        }),
        idempotency: None,
        ttl: TTL,
    }
}

fn create_identify(p: PartnerId, s: SessionId) -> Command {
    Command::CreateSession {
        partner_id: p,
        session_id: s,
        token_hash: token(s),
        kind: SessionKind::Identify,
        language: Language::Ru,
        enroll: None,
        idempotency: None,
        ttl: TTL,
    }
}

/// `cmd` (a `CreateSession`) with an `Idempotency-Key`.
fn with_key(cmd: Command, key: &str, fp: &str) -> Command {
    match cmd {
        Command::CreateSession {
            partner_id,
            session_id,
            token_hash,
            kind,
            language,
            enroll,
            ttl,
            ..
        } => Command::CreateSession {
            partner_id,
            session_id,
            token_hash,
            kind,
            language,
            enroll,
            idempotency: Some(Idempotency {
                key: key.into(),
                fingerprint: fp.into(),
            }),
            ttl,
        },
        other => panic!("not a CreateSession: {other:?}"),
    }
}

fn cancel(partner: Option<PartnerId>, s: SessionId) -> Command {
    Command::CancelSession {
        partner,
        session_id: s,
    }
}

fn session_stream(s: SessionId) -> String {
    stream::session(s)
}

// ---------------------------------------------------------------------------------------------
// Partners
// ---------------------------------------------------------------------------------------------

#[test]
fn create_partner() {
    let then = given([]).when(
        Command::CreatePartner {
            partner_id: P1,
            name: "Acme".into(),
            api_key_hash: SecretHash("abc".into()),
            webhook: None,
        },
        t(5),
    );
    then.then(vec![one(
        stream::partner(P1),
        Expected::NoStream,
        Event::PartnerCreated {
            partner_id: P1,
            name: "Acme".into(),
            api_key_hash: SecretHash("abc".into()),
            at: t(5),
        },
    )])
    .outcome(Outcome::Done);

    let g = then.and();
    let p = g.state.partner(P1).expect("partner");
    assert!(p.active, "a new partner is active");
    assert_eq!(p.name, "Acme");
    assert_eq!(p.created_at, t(5));
    assert_eq!(
        g.state
            .partner_by_key_hash(&SecretHash("abc".into()))
            .map(|p| p.id),
        Some(P1)
    );
}

/// With the admin API's `webhook_url`: the partner and its webhook in one decision, so in one
/// atomic append.
#[test]
fn create_partner_with_a_webhook_is_one_decision() {
    let then = given([]).when(
        Command::CreatePartner {
            partner_id: P1,
            name: "Acme".into(),
            api_key_hash: SecretHash("abc".into()),
            webhook: Some(palmgate::core::NewWebhook {
                url: "https://acme.example/hook".into(),
                secret: "sealed".into(),
                events: vec!["session".into()],
            }),
        },
        t(5),
    );
    then.then(vec![
        one(
            stream::partner(P1),
            Expected::NoStream,
            Event::PartnerCreated {
                partner_id: P1,
                name: "Acme".into(),
                api_key_hash: SecretHash("abc".into()),
                at: t(5),
            },
        ),
        one(
            stream::webhook(P1),
            Expected::NoStream,
            Event::WebhookConfigured {
                partner_id: P1,
                url: "https://acme.example/hook".into(),
                secret: "sealed".into(),
                events: vec!["session".into()],
                at: t(5),
            },
        ),
    ])
    .outcome(Outcome::Done);
    let g = then.and();
    let w = g.state.webhook(P1).expect("webhook");
    assert!(w.active);
}

#[test]
fn create_partner_twice_is_refused() {
    given([partner_created(P1)])
        .when(
            Command::CreatePartner {
                partner_id: P1,
                name: "Again".into(),
                api_key_hash: SecretHash("other".into()),
                webhook: None,
            },
            t(0),
        )
        .then_rejected(Rejection::PartnerExists);
}

#[test]
fn set_partner_active_toggles() {
    let off = given([partner_created(P1)]).when(
        Command::SetPartnerActive {
            partner_id: P1,
            active: false,
        },
        t(10),
    );
    off.then(vec![one(
        stream::partner(P1),
        Expected::Revision(0),
        Event::PartnerDeactivated {
            partner_id: P1,
            at: t(10),
        },
    )]);
    let g = off.and();
    assert!(!g.state.partner(P1).unwrap().active);
    // An inactive partner's request that passed the gate before the deactivation (a slow
    // body) makes no session.
    g.when(create_identify(P1, sid(9)), t(11))
        .then_rejected(Rejection::PartnerInactive);

    let on = g.when(
        Command::SetPartnerActive {
            partner_id: P1,
            active: true,
        },
        t(20),
    );
    on.then(vec![one(
        stream::partner(P1),
        Expected::Revision(1),
        Event::PartnerActivated {
            partner_id: P1,
            at: t(20),
        },
    )]);
    assert!(on.and().state.partner(P1).unwrap().active);
}

#[test]
fn set_partner_active_to_its_current_state_is_a_no_op() {
    given([partner_created(P1)])
        .when(
            Command::SetPartnerActive {
                partner_id: P1,
                active: true,
            },
            t(0),
        )
        .then_nothing()
        .outcome(Outcome::Done);
    given([
        partner_created(P1),
        Event::PartnerDeactivated {
            partner_id: P1,
            at: t(0),
        },
    ])
    .when(
        Command::SetPartnerActive {
            partner_id: P1,
            active: false,
        },
        t(1),
    )
    .then_nothing();
}

#[test]
fn set_partner_active_of_an_unknown_partner_is_not_found() {
    given([partner_created(P1)])
        .when(
            Command::SetPartnerActive {
                partner_id: P2,
                active: false,
            },
            t(0),
        )
        .then_rejected(Rejection::NotFound);
}

// ---------------------------------------------------------------------------------------------
// Creating sessions
// ---------------------------------------------------------------------------------------------

#[test]
fn create_enroll_session() {
    let s = sid(1);
    let cmd = Command::CreateSession {
        partner_id: P1,
        session_id: s,
        token_hash: token(s),
        kind: SessionKind::Enroll,
        language: Language::Kk,
        enroll: Some(EnrollRequest {
            external_id: ext("EMP-12345"),
            username: Some("John Doe".into()),
            metadata: Some(json!({"access_level": "standard"})),
        }),
        idempotency: None,
        ttl: TTL,
    };
    let then = given([partner_created(P1)]).when(cmd, t(100));
    then.then_created(
        P1,
        vec![one(
            session_stream(s),
            Expected::NoStream,
            Event::SessionCreated {
                session_id: s,
                partner_id: Some(P1),
                reader_id: None,
                kind: SessionKind::Enroll,
                language: Language::Kk,
                token_hash: token(s),
                external_id: Some(ext("EMP-12345")),
                username: Some("John Doe".into()),
                metadata: Some(json!({"access_level": "standard"})),
                created_at: t(100),
                expires_at: t(100) + TTL,
                trigger_id: None,
            },
        )],
    )
    .outcome(Outcome::Session {
        id: s,
        replayed: false,
    });
    assert!(then.decision().effects.is_empty());

    let g = then.and();
    let sess = g.session(s);
    assert_eq!(sess.state, SessionState::Pending);
    assert_eq!(sess.expires_at, t(100) + TTL);
    assert_eq!(
        g.state.session_by_token_hash(&token(s)).map(|x| x.id),
        Some(s)
    );
    assert_eq!(g.state.next_deadline(), Some(t(100) + TTL));
}

#[test]
fn create_identify_session() {
    let s = sid(2);
    let ttl = Duration::seconds(90);
    let mut cmd = create_identify(P1, s);
    if let Command::CreateSession { ttl: x, .. } = &mut cmd {
        *x = ttl;
    }
    given([partner_created(P1)])
        .when(cmd, t(7))
        .then_created(
            P1,
            vec![one(
                session_stream(s),
                Expected::NoStream,
                Event::SessionCreated {
                    session_id: s,
                    partner_id: Some(P1),
                    reader_id: None,
                    kind: SessionKind::Identify,
                    language: Language::Ru,
                    token_hash: token(s),
                    external_id: None,
                    username: None,
                    metadata: None,
                    created_at: t(7),
                    expires_at: t(97),
                    trigger_id: None,
                },
            )],
        )
        .outcome(Outcome::Session {
            id: s,
            replayed: false,
        });
}

#[test]
fn enroll_of_an_enrolled_external_id_is_refused() {
    let g = given([
        partner_created(P1),
        partner_created(P2),
        enroll_created(sid(1), P1, "EMP-1", t(0)),
        completed(sid(1), t(30)),
        enrolled(P1, "EMP-1", sid(1)),
    ]);
    g.when(create_enroll(P1, sid(2), "EMP-1"), t(60))
        .then_rejected(Rejection::AlreadyEnrolled);
    // Another external_id, another partner's user with the same id, or an identify: fine.
    g.when(create_enroll(P1, sid(2), "EMP-2"), t(60))
        .outcome(Outcome::Session {
            id: sid(2),
            replayed: false,
        });
    g.when(create_enroll(P2, sid(3), "EMP-1"), t(60))
        .outcome(Outcome::Session {
            id: sid(3),
            replayed: false,
        });
    g.when(create_identify(P1, sid(4)), t(60))
        .outcome(Outcome::Session {
            id: sid(4),
            replayed: false,
        });
}

#[test]
fn a_pending_enrollment_does_not_block_another() {
    // SPEC 2: 409 only for a *completed* enrollment.
    given([
        partner_created(P1),
        enroll_created(sid(1), P1, "EMP-1", t(0)),
    ])
    .when(create_enroll(P1, sid(2), "EMP-1"), t(10))
    .outcome(Outcome::Session {
        id: sid(2),
        replayed: false,
    });
}

#[test]
fn enroll_is_allowed_again_after_erasure() {
    given([
        partner_created(P1),
        enroll_created(sid(1), P1, "EMP-1", t(0)),
        completed(sid(1), t(30)),
        enrolled(P1, "EMP-1", sid(1)),
        erased(P1, "EMP-1", t(100)),
    ])
    .when(create_enroll(P1, sid(2), "EMP-1"), t(200))
    .then_created(
        P1,
        vec![one(
            session_stream(sid(2)),
            Expected::NoStream,
            enroll_created(sid(2), P1, "EMP-1", t(200)),
        )],
    );
}

#[test]
fn erase_user() {
    let g = given([
        partner_created(P1),
        enroll_created(sid(1), P1, "EMP-1", t(0)),
        completed(sid(1), t(30)),
        enrolled(P1, "EMP-1", sid(1)),
    ]);
    let then = g.when(
        Command::EraseUser {
            partner_id: P1,
            external_id: ext("EMP-1"),
        },
        t(100),
    );
    then.then(vec![one(
        stream::user(P1, &ext("EMP-1")),
        Expected::Revision(0),
        erased(P1, "EMP-1", t(100)),
    )]);
    let g = then.and();
    assert!(g.state.user(P1, &ext("EMP-1")).is_none());
    // Erasing again, or another partner's user: not found.
    g.when(
        Command::EraseUser {
            partner_id: P1,
            external_id: ext("EMP-1"),
        },
        t(101),
    )
    .then_rejected(Rejection::NotFound);
    given([partner_created(P1), enrolled(P1, "EMP-1", sid(1))])
        .when(
            Command::EraseUser {
                partner_id: P2,
                external_id: ext("EMP-1"),
            },
            t(0),
        )
        .then_rejected(Rejection::NotFound);
}

// ---------------------------------------------------------------------------------------------
// Idempotency-Key
// ---------------------------------------------------------------------------------------------

#[test]
fn first_use_of_an_idempotency_key_claims_it() {
    let s = sid(1);
    let then =
        given([partner_created(P1)]).when(with_key(create_identify(P1, s), "k-1", "fp-a"), t(0));
    then.then_created(
        P1,
        vec![
            one(
                session_stream(s),
                Expected::NoStream,
                identify_created(s, P1, t(0)),
            ),
            one(
                stream::idempotency(P1, "k-1"),
                Expected::NoStream,
                key_used(P1, "k-1", "fp-a", s, t(0)),
            ),
        ],
    )
    .outcome(Outcome::Session {
        id: s,
        replayed: false,
    });
}

fn key_claimed_at_zero() -> Given {
    given([
        partner_created(P1),
        identify_created(sid(1), P1, t(0)),
        key_used(P1, "k-1", "fp-a", sid(1), t(0)),
    ])
}

#[test]
fn same_key_and_request_within_24h_replays_the_first_session() {
    let g = key_claimed_at_zero();
    for now in [t(1), t(3600), t(0) + IDEMPOTENCY_TTL - Duration::seconds(1)] {
        g.when(with_key(create_identify(P1, sid(2)), "k-1", "fp-a"), now)
            .then_nothing()
            .outcome(Outcome::Session {
                id: sid(1),
                replayed: true,
            });
    }
    // Even once the first session has ended: the first answer is what is kept.
    g.clone()
        .and([expired(sid(1), t(0) + TTL)])
        .when(
            with_key(create_identify(P1, sid(2)), "k-1", "fp-a"),
            t(7200),
        )
        .then_nothing()
        .outcome(Outcome::Session {
            id: sid(1),
            replayed: true,
        });
}

#[test]
fn same_key_with_another_request_is_a_mismatch() {
    key_claimed_at_zero()
        .when(with_key(create_identify(P1, sid(2)), "k-1", "fp-b"), t(10))
        .then_rejected(Rejection::IdempotencyMismatch);
}

#[test]
fn an_idempotency_key_is_usable_again_after_24h() {
    let g = key_claimed_at_zero();
    let later = t(0) + IDEMPOTENCY_TTL;
    let then = g.when(with_key(create_identify(P1, sid(2)), "k-1", "fp-b"), later);
    then.then_created(
        P1,
        vec![
            one(
                session_stream(sid(2)),
                Expected::NoStream,
                identify_created(sid(2), P1, later),
            ),
            one(
                stream::idempotency(P1, "k-1"),
                Expected::Revision(0),
                key_used(P1, "k-1", "fp-b", sid(2), later),
            ),
        ],
    )
    .outcome(Outcome::Session {
        id: sid(2),
        replayed: false,
    });

    // The new claim holds for its own 24 h, and the one after expects revision 1.
    let g = then.and();
    g.when(
        with_key(create_identify(P1, sid(3)), "k-1", "fp-b"),
        later + Duration::hours(1),
    )
    .then_nothing()
    .outcome(Outcome::Session {
        id: sid(2),
        replayed: true,
    });
    g.when(
        with_key(create_identify(P1, sid(3)), "k-1", "fp-a"),
        later + Duration::hours(1),
    )
    .then_rejected(Rejection::IdempotencyMismatch);
    let much_later = later + IDEMPOTENCY_TTL;
    let third = g.when(
        with_key(create_identify(P1, sid(3)), "k-1", "fp-a"),
        much_later,
    );
    let key_append = third
        .decision()
        .appends
        .iter()
        .find(|a| a.stream == stream::idempotency(P1, "k-1"))
        .expect("claims the key");
    assert_eq!(key_append.expected, Expected::Revision(1));
}

#[test]
fn idempotency_keys_are_per_partner() {
    key_claimed_at_zero()
        .and([partner_created(P2)])
        .when(with_key(create_identify(P2, sid(2)), "k-1", "fp-b"), t(5))
        .then_created(
            P2,
            vec![
                one(
                    session_stream(sid(2)),
                    Expected::NoStream,
                    identify_created(sid(2), P2, t(5)),
                ),
                one(
                    stream::idempotency(P2, "k-1"),
                    Expected::NoStream,
                    key_used(P2, "k-1", "fp-b", sid(2), t(5)),
                ),
            ],
        );
}

/// A partner whose network dropped the 201 retries with the same key; meanwhile the person
/// already enrolled through that very session. SPEC 2: the first answer is kept for 24 h and
/// returned again — the retry must not turn into a 409.
#[test]
fn replay_wins_over_already_enrolled_for_the_same_key() {
    let g = given([
        partner_created(P1),
        enroll_created(sid(1), P1, "EMP-1", t(0)),
        key_used(P1, "k-1", "fp-a", sid(1), t(0)),
        completed(sid(1), t(30)),
        enrolled(P1, "EMP-1", sid(1)),
    ]);
    g.when(
        with_key(create_enroll(P1, sid(2), "EMP-1"), "k-1", "fp-a"),
        t(60),
    )
    .then_nothing()
    .outcome(Outcome::Session {
        id: sid(1),
        replayed: true,
    });
}

// ---------------------------------------------------------------------------------------------
// Cancelling
// ---------------------------------------------------------------------------------------------

fn one_pending() -> Given {
    given([partner_created(P1), identify_created(sid(1), P1, t(0))])
}

#[test]
fn cancel_by_the_owner_fails_the_session() {
    let then = one_pending().when(cancel(Some(P1), sid(1)), t(60));
    then.then(vec![one(
        session_stream(sid(1)),
        Expected::Revision(0),
        failed(sid(1), FailReason::Cancelled, t(60)),
    )])
    .outcome(Outcome::Done);
    let g = then.and();
    let s = g.session(sid(1));
    assert_eq!(s.state, SessionState::Failed);
    assert_eq!(s.fail_reason, Some(FailReason::Cancelled));
    assert_eq!(s.ended_at, Some(t(60)));
    assert_eq!(g.state.next_deadline(), None);
}

#[test]
fn cancel_from_the_hosted_page() {
    one_pending()
        .when(cancel(None, sid(1)), t(60))
        .then(vec![one(
            session_stream(sid(1)),
            Expected::Revision(0),
            failed(sid(1), FailReason::Cancelled, t(60)),
        )]);
}

#[test]
fn cancel_expects_the_sessions_current_revision() {
    one_pending()
        .and([Event::SessionReaderArmed {
            session_id: sid(1),
            reader_id: palmgate::core::ReaderId("desk-1".into()),
            at: t(5),
        }])
        .when(cancel(Some(P1), sid(1)), t(60))
        .then(vec![one(
            session_stream(sid(1)),
            Expected::Revision(1),
            failed(sid(1), FailReason::Cancelled, t(60)),
        )]);
}

#[test]
fn cancel_of_another_partners_or_an_unknown_session_is_not_found() {
    let g = one_pending().and([partner_created(P2)]);
    g.when(cancel(Some(P2), sid(1)), t(60))
        .then_rejected(Rejection::NotFound);
    g.when(cancel(Some(P1), sid(9)), t(60))
        .then_rejected(Rejection::NotFound);
    g.when(cancel(None, sid(9)), t(60))
        .then_rejected(Rejection::NotFound);
}

#[test]
fn cancel_of_an_ended_session_is_refused() {
    for end in [
        completed(sid(1), t(30)),
        failed(sid(1), FailReason::NoMatch, t(30)),
        expired(sid(1), t(0) + TTL),
    ] {
        let kind = end.kind();
        let g = one_pending().and([end]);
        let then = g.when(cancel(Some(P1), sid(1)), t(60));
        assert_eq!(
            then.result,
            Err(Rejection::SessionNotPending),
            "cancel after {kind}"
        );
    }
}

#[test]
fn cancel_of_a_pending_session_past_its_deadline_is_refused() {
    // The tick has not run yet: the session is still pending in the state, but it is over.
    let g = one_pending();
    g.when(cancel(Some(P1), sid(1)), t(0) + TTL)
        .then_rejected(Rejection::SessionNotPending);
    g.when(cancel(Some(P1), sid(1)), t(0) + TTL + Duration::seconds(1))
        .then_rejected(Rejection::SessionNotPending);
    // One second before, it still works.
    g.when(cancel(Some(P1), sid(1)), t(0) + TTL - Duration::seconds(1))
        .outcome(Outcome::Done);
}

// ---------------------------------------------------------------------------------------------
// Time: Tick and next_deadline
// ---------------------------------------------------------------------------------------------

/// Four sessions: 1 expires at +10 min, 2 at +20, 3 at +30, 4 at +5 but was cancelled.
fn four_sessions() -> Given {
    let min = |m| t(0) + Duration::minutes(m) - TTL;
    given([
        partner_created(P1),
        identify_created(sid(1), P1, min(10)),
        enroll_created(sid(2), P1, "EMP-2", min(20)),
        identify_created(sid(3), P1, min(30)),
        identify_created(sid(4), P1, min(5)),
        failed(sid(4), FailReason::Cancelled, minutes(1)),
    ])
}

fn minutes(m: i64) -> DateTime<Utc> {
    t(0) + Duration::minutes(m)
}

#[test]
fn tick_before_any_deadline_does_nothing() {
    let g = four_sessions();
    g.when(Command::Tick, minutes(10) - Duration::seconds(1))
        .then_nothing();
    given([]).when(Command::Tick, t(0)).then_nothing();
}

#[test]
fn tick_expires_exactly_the_due_sessions_at_their_deadline() {
    let g = four_sessions();
    g.when(Command::Tick, minutes(10)).then(vec![one(
        session_stream(sid(1)),
        Expected::Revision(0),
        expired(sid(1), minutes(10)),
    )]);
    let then = g.when(Command::Tick, minutes(25));
    then.then(vec![
        one(
            session_stream(sid(1)),
            Expected::Revision(0),
            expired(sid(1), minutes(10)),
        ),
        one(
            session_stream(sid(2)),
            Expected::Revision(0),
            expired(sid(2), minutes(20)),
        ),
    ]);
    // Once those are appended, the same tick has nothing left to do.
    then.and().when(Command::Tick, minutes(25)).then_nothing();
}

/// After a backlog, a tick expires a bounded batch, earliest first; the next ticks take the
/// rest, and each session expires once, at its own deadline.
#[test]
fn tick_expires_a_backlog_in_bounded_batches_earliest_first() {
    use palmgate::core::decider::MAX_EXPIRIES_PER_TICK as MAX;
    let n = MAX + 44;
    let mut events = vec![partner_created(P1)];
    // Created in reverse so that creation order is not deadline order.
    for i in (0..n).rev() {
        events.push(identify_created(sid(i as u128 + 1), P1, t(i as i64) - TTL));
    }
    let mut g = given(events);
    let now = t(n as i64 + 10);
    let mut expired_ids: Vec<u128> = Vec::new();
    for round in 0..4 {
        let then = g.when(Command::Tick, now);
        let appends = &then.decision().appends;
        let want = (n - expired_ids.len()).min(MAX);
        assert_eq!(appends.len(), want, "round {round}");
        for a in appends {
            match a.events.as_slice() {
                [Event::SessionExpired { session_id, at }] => {
                    let i = (0..n as u128)
                        .find(|i| sid(i + 1) == *session_id)
                        .expect("a known session");
                    assert_eq!(*at, t(i as i64), "expired at its own deadline");
                    expired_ids.push(i);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        g = then.and();
        if want == 0 {
            break;
        }
    }
    assert_eq!(expired_ids.len(), n);
    // Earliest first: the first batch is exactly the MAX earliest deadlines.
    let mut first: Vec<u128> = expired_ids[..MAX].to_vec();
    first.sort();
    assert_eq!(first, (0..MAX as u128).collect::<Vec<_>>());
    g.when(Command::Tick, now).then_nothing();
}

#[test]
fn tick_expects_the_sessions_current_revision() {
    one_pending()
        .and([Event::SessionReaderArmed {
            session_id: sid(1),
            reader_id: palmgate::core::ReaderId("desk-1".into()),
            at: t(5),
        }])
        .when(Command::Tick, t(0) + TTL)
        .then(vec![one(
            session_stream(sid(1)),
            Expected::Revision(1),
            expired(sid(1), t(0) + TTL),
        )]);
}

#[test]
fn next_deadline_is_the_earliest_pending_expiry() {
    let g = four_sessions();
    // Session 4 (+5 min) was cancelled: it has no deadline any more.
    assert_eq!(g.state.next_deadline(), Some(minutes(10)));

    let g = g.when(Command::Tick, minutes(10)).and();
    assert_eq!(
        g.state.next_deadline(),
        Some(minutes(20)),
        "moves on after expiry"
    );

    let g = g.when(cancel(Some(P1), sid(2)), minutes(11)).and();
    assert_eq!(
        g.state.next_deadline(),
        Some(minutes(30)),
        "moves on after cancel"
    );

    let g = g.and([completed(sid(3), minutes(12))]);
    assert_eq!(g.state.next_deadline(), None, "nothing pending");
    g.when(Command::Tick, minutes(60)).then_nothing();
}

// ---------------------------------------------------------------------------------------------
// evolve
// ---------------------------------------------------------------------------------------------

#[test]
fn evolve_session_transitions() {
    let g = one_pending();
    let s = g.session(sid(1));
    assert_eq!(s.state, SessionState::Pending);
    assert_eq!(
        (s.created_at, s.expires_at, s.ended_at),
        (t(0), t(0) + TTL, None)
    );
    assert_eq!(s.partner_id, Some(P1));
    assert_eq!(s.revision, 0);

    let done = g.clone().and([Event::SessionCompleted {
        session_id: sid(1),
        external_id: Some(ext("EMP-7")),
        capture: None,
        at: t(40),
    }]);
    let s = done.session(sid(1));
    assert_eq!(s.state, SessionState::Completed);
    assert_eq!(s.ended_at, Some(t(40)));
    assert_eq!(
        s.external_id,
        Some(ext("EMP-7")),
        "identify learns who it was"
    );
    assert_eq!(s.revision, 1);

    let bad = g
        .clone()
        .and([failed(sid(1), FailReason::LivenessFailed, t(41))]);
    let s = bad.session(sid(1));
    assert_eq!(s.state, SessionState::Failed);
    assert_eq!(s.fail_reason, Some(FailReason::LivenessFailed));
    assert_eq!(s.ended_at, Some(t(41)));

    let gone = g.clone().and([expired(sid(1), t(0) + TTL)]);
    let s = gone.session(sid(1));
    assert_eq!(s.state, SessionState::Expired);
    assert_eq!(s.fail_reason, None);
    assert_eq!(s.ended_at, Some(t(0) + TTL));

    assert_eq!(gone.state.position(), 3);
    assert_eq!(gone.state.revision(&session_stream(sid(1))), Some(1));
}

#[test]
fn page_view_at_various_instants() {
    let g = one_pending();
    let deadline = t(0) + TTL;
    let s = g.session(sid(1));
    assert_eq!(s.page_view(t(0)), PageView::Open);
    assert_eq!(
        s.page_view(deadline - Duration::milliseconds(1)),
        PageView::Open
    );
    assert!(s.is_open(deadline - Duration::milliseconds(1)));
    assert_eq!(
        s.page_view(deadline),
        PageView::Expired,
        "pending at its deadline"
    );
    assert!(!s.is_open(deadline));
    assert_eq!(s.page_view(deadline + Duration::days(3)), PageView::Expired);

    let cases = [
        (expired(sid(1), deadline), PageView::Expired),
        (completed(sid(1), t(30)), PageView::Gone),
        (failed(sid(1), FailReason::Cancelled, t(30)), PageView::Gone),
        (failed(sid(1), FailReason::NoMatch, t(30)), PageView::Gone),
    ];
    for (end, view) in cases {
        let kind = end.kind();
        let g = one_pending().and([end]);
        let s = g.session(sid(1));
        // Whatever the instant, before or after the deadline.
        for now in [
            t(31),
            deadline - Duration::seconds(1),
            deadline,
            deadline + TTL,
        ] {
            assert_eq!(s.page_view(now), view, "after {kind} at {now}");
            assert!(!s.is_open(now), "after {kind} at {now}");
        }
    }
}

#[test]
fn a_terminal_session_stays_terminal_whatever_follows() {
    let late = [
        completed(sid(1), t(0) + TTL + Duration::seconds(5)),
        failed(
            sid(1),
            FailReason::NoMatch,
            t(0) + TTL + Duration::seconds(6),
        ),
        expired(sid(1), t(0) + TTL),
    ];
    let ends = [
        (expired(sid(1), t(0) + TTL), SessionState::Expired),
        (completed(sid(1), t(30)), SessionState::Completed),
        (
            failed(sid(1), FailReason::Cancelled, t(30)),
            SessionState::Failed,
        ),
    ];
    for (end, state) in ends {
        let g = one_pending().and([end.clone()]);
        let ended_at = g.session(sid(1)).ended_at;
        let g = g.and(late.clone());
        let s = g.session(sid(1));
        assert_ne!(s.state, SessionState::Pending, "after {end:?}");
        assert_eq!(s.state, state, "the first end stands after {end:?}");
        assert_eq!(s.ended_at, ended_at, "after {end:?}");
        assert_eq!(
            g.state.next_deadline(),
            None,
            "no deadline comes back after {end:?}"
        );
        assert_eq!(s.revision, 4, "the stream's revision still advances");
        g.when(Command::Tick, t(0) + TTL * 2).then_nothing();
    }
}

/// Even a second `SessionCreated` for an ended session (a forged or corrupt log — the store's
/// NoStream check keeps `decide` from ever producing one) must not reopen it.
#[test]
fn a_repeated_session_created_does_not_reopen_an_ended_session() {
    let g = one_pending()
        .and([completed(sid(1), t(30))])
        .and([identify_created(sid(1), P1, t(40))]);
    let s = g.session(sid(1));
    assert_ne!(s.state, SessionState::Pending);
    assert_eq!(g.state.next_deadline(), None);
    g.when(cancel(Some(P1), sid(1)), t(50))
        .then_rejected(Rejection::SessionNotPending);
}

// ---------------------------------------------------------------------------------------------
// Webhook attempt results
// ---------------------------------------------------------------------------------------------

/// A partner whose webhook was disabled (another delivery's 5th failure) while one attempt of
/// delivery `d-2` was out.
fn attempt_out_when_disabled() -> Given {
    given([
        partner_created(P1),
        Event::WebhookConfigured {
            partner_id: P1,
            url: "https://acme.example/hook".into(),
            secret: "sealed".into(),
            events: vec!["session".into()],
            at: t(1),
        },
        Event::DeliveryQueued {
            delivery_id: "d-2".into(),
            partner_id: P1,
            event: "completed".into(),
            session_id: None,
            body: "{}".into(),
            held: false,
            at: t(2),
        },
        Event::WebhookDisabled {
            partner_id: P1,
            delivery_id: "d-1".into(),
            at: t(3),
        },
    ])
}

fn result(status: u16) -> Command {
    Command::RecordAttempt(palmgate::core::command::AttemptResult {
        delivery_id: "d-2".into(),
        attempt: 1,
        status_code: Some(status),
        error: None,
        latency_ms: 5,
        response: String::new(),
        retry_after: None,
    })
}

/// The attempt's failure is not recorded (re-enabling sends it again, and it must not count
/// towards the delivery's five), but a 2xx is: the receiver has the event.
#[test]
fn an_attempt_out_when_the_webhook_was_disabled_records_a_success_not_a_failure() {
    let g = attempt_out_when_disabled();
    assert!(!g.state.webhook(P1).unwrap().active);
    g.when(result(500), t(4)).then_rejected(Rejection::Invalid(
        "webhook attempt result refused: the webhook is disabled",
    ));
    let then = g.when(result(200), t(4));
    let appends = &then.decision().appends;
    assert_eq!(appends.len(), 1, "{appends:?}");
    match &appends[0].events[..] {
        [Event::DeliveryAttempted { delivered, .. }] => assert!(*delivered),
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Captures against an erased user, unique partner names
// ---------------------------------------------------------------------------------------------

/// A capture for session `s`, with the matcher's best candidate `best` at similarity 0.95.
fn capture_for(s: SessionId, best: Option<(PartnerId, &str)>) -> Command {
    Command::Capture(palmgate::core::Capture {
        reader_id: palmgate::core::ReaderId("r1".into()),
        capture_id: format!("cap-{s}"),
        session: Some(token(s)),
        quality: 0.9,
        liveness: true,
        best: best.map(|(p, e)| palmgate::core::matcher::Candidate {
            partner_id: p,
            external_id: ext(e),
            similarity: 0.95,
        }),
        sealed: None,
    })
}

fn ends_of(d: &Decision) -> Vec<&Event> {
    d.appends
        .iter()
        .flat_map(|a| &a.events)
        .filter(|e| {
            matches!(
                e,
                Event::SessionCompleted { .. } | Event::SessionFailed { .. }
            )
        })
        .collect()
}

/// The read condition (an append without events) a decision puts on `stream`, if any.
fn condition_on(d: &Decision, stream: &str) -> Option<Expected> {
    d.appends
        .iter()
        .find(|a| a.stream == stream && a.events.is_empty())
        .map(|a| a.expected)
}

#[test]
fn an_identify_capture_is_refused_by_an_erasure_appended_after_it_was_decided() {
    let g = given([
        partner_created(P1),
        enroll_created(sid(1), P1, "a1", t(0)),
        enrolled(P1, "a1", sid(1)),
        identify_created(sid(2), P1, t(100)),
    ]);
    let then = g.when(capture_for(sid(2), Some((P1, "a1"))), t(110));
    let d = then.decision();
    assert!(
        matches!(ends_of(d)[..], [Event::SessionCompleted { external_id: Some(e), .. }] if *e == ext("a1"))
    );
    // It read a1's stream at its revision: the erasure appended meanwhile moves that stream
    // on, so the store refuses the whole write (no completion as a1 after the erasure).
    let user_stream = stream::user(P1, &ext("a1"));
    let read = condition_on(d, &user_stream).expect("a condition on the matched user's stream");
    assert_eq!(read, Expected::Revision(0));
    let after = g.clone().and([erased(P1, "a1", t(105))]);
    assert_eq!(
        after.heads.get(&user_stream),
        Some(&1),
        "the erasure moved the stream on"
    );
    // Decided again (as the shell does after the conflict) with the same stale match: the
    // matched user is gone, so the session fails no_match and carries no identity.
    let again = after.when(capture_for(sid(2), Some((P1, "a1"))), t(111));
    let d = again.decision();
    assert!(
        matches!(
            ends_of(d)[..],
            [Event::SessionFailed {
                reason: FailReason::NoMatch,
                ..
            }]
        ),
        "{:?}",
        ends_of(d)
    );
    assert!(
        d.appends
            .iter()
            .flat_map(|a| &a.events)
            .all(|e| !matches!(e, Event::SessionCompleted { .. }))
    );
}

#[test]
fn an_enroll_capture_whose_palm_belongs_to_an_erased_user_enrolls() {
    let g = given([
        partner_created(P1),
        enroll_created(sid(1), P1, "a1", t(0)),
        enrolled(P1, "a1", sid(1)),
        enroll_created(sid(2), P1, "b2", t(100)),
    ]);
    let sealed = palmgate::core::event::SealedTemplate {
        key_id: palmgate::core::KeyId(Uuid::from_u128(7)),
        nonce: "bm9uY2U=".into(),
        ciphertext: "Y2lwaGVy".into(),
    };
    let with_sealed = |cmd: Command| match cmd {
        Command::Capture(mut c) => {
            c.sealed = Some(sealed.clone());
            Command::Capture(c)
        }
        other => other,
    };
    // The palm is a1's: already_enrolled, reading a1's stream.
    let then = g.when(with_sealed(capture_for(sid(2), Some((P1, "a1")))), t(110));
    let d = then.decision();
    assert!(matches!(
        ends_of(d)[..],
        [Event::SessionFailed {
            reason: FailReason::AlreadyEnrolled,
            ..
        }]
    ));
    assert_eq!(
        condition_on(d, &stream::user(P1, &ext("a1"))),
        Some(Expected::Revision(0))
    );
    // a1 erased: the palm is no one's any more, and b2 enrolls with it.
    let after = g.and([erased(P1, "a1", t(105))]);
    let then = after.when(with_sealed(capture_for(sid(2), Some((P1, "a1")))), t(111));
    let d = then.decision();
    assert!(matches!(ends_of(d)[..], [Event::SessionCompleted { .. }]));
    assert!(d.appends.iter().flat_map(|a| &a.events).any(
        |e| matches!(e, Event::UserEnrolled { external_id, .. } if *external_id == ext("b2"))
    ));
}

#[test]
fn a_partner_name_taken_ignoring_case_and_spaces_is_refused() {
    let g = given([Event::PartnerCreated {
        partner_id: P1,
        name: "Acme".into(),
        api_key_hash: SecretHash("k1".into()),
        at: t(0),
    }]);
    for name in ["Acme", " acme ", "ACME"] {
        g.when(
            Command::CreatePartner {
                partner_id: P2,
                name: name.into(),
                api_key_hash: SecretHash("k2".into()),
                webhook: None,
            },
            t(5),
        )
        .then_rejected(Rejection::PartnerExists);
    }
    g.when(
        Command::CreatePartner {
            partner_id: P2,
            name: "Acme 2".into(),
            api_key_hash: SecretHash("k2".into()),
            webhook: None,
        },
        t(5),
    )
    .outcome(Outcome::Done);
}
