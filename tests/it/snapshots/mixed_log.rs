//! A generated log for the snapshot tests: deterministic, and touching every part of the
//! state `evolve` builds (see [`mixed_log`]).

use chrono::{DateTime, Duration, Utc};
use palmgate::core::event::{CaptureRef, CaptureRejection, DoorSubject, SealedTemplate, stream};
use palmgate::core::policy::{DenyReason, Direction, DoorId, Policy, SiteMode, Verdict};
use palmgate::core::{
    Event, Expected, ExternalId, FailReason, KeyId, Language, PartnerId, ReaderId, SecretHash,
    SessionId, SessionKind, StreamAppend,
};
use serde_json::json;

const SITE: &str = include_str!("../../../config/site.toml");

pub fn id16(n: u64, tag: u8) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&n.to_le_bytes());
    b[15] = tag;
    b
}

pub fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-03-02T06:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

fn one(stream: String, event: Event) -> StreamAppend {
    StreamAppend {
        stream,
        expected: Expected::Any,
        events: vec![event],
    }
}

/// A deterministic log touching every part of the state: partners (one deactivated and
/// reactivated), sessions in every state (some still pending), idempotency keys, readers,
/// enrolled, erased and re-enrolled users, webhooks (rotated, disabled, enabled), deliveries
/// (held, failed, delivered, rescheduled, still due), two policies, site modes, door decisions
/// with zone movements, relays, devices, contacts and alarms. One `Vec` per append.
pub fn mixed_log(rounds: u64) -> Vec<Vec<StreamAppend>> {
    let policy = Policy::parse(SITE).expect("example site parses");
    let partners: Vec<PartnerId> = (0..3).map(|i| PartnerId::from_random(id16(i, 1))).collect();
    let at = |n: u64| t0() + Duration::seconds(n as i64 * 7);
    let mut log = vec![];
    let mut head = vec![];
    for (i, p) in partners.iter().enumerate() {
        head.push(one(
            stream::partner(*p),
            Event::PartnerCreated {
                partner_id: *p,
                name: format!("partner {i}"),
                api_key_hash: SecretHash(format!("{i:064x}")),
                at: at(0),
            },
        ));
    }
    head.push(one(
        "policy".into(),
        Event::PolicyActivated {
            sha256: policy.sha256.clone(),
            document: SITE.into(),
            source: "test".into(),
            at: at(0),
        },
    ));
    log.push(head);
    for n in 1..=rounds {
        let p = partners[(n % 3) as usize];
        let sid = SessionId::from_random(id16(n, 2));
        let user = ExternalId(format!("user-{}", n % 17));
        let reader = ReaderId(format!("reader-{}", n % 4));
        let capture = CaptureRef {
            reader_id: reader.clone(),
            capture_id: format!("cap-{n}"),
            quality: 0.9,
            similarity: Some(0.91),
            judged: None,
        };
        let mut batch = vec![StreamAppend {
            stream: stream::session(sid),
            expected: Expected::Any,
            events: vec![Event::SessionCreated {
                session_id: sid,
                partner_id: Some(p),
                reader_id: None,
                kind: if n % 2 == 0 {
                    SessionKind::Enroll
                } else {
                    SessionKind::Identify
                },
                language: [Language::En, Language::Kk, Language::Ru][(n % 3) as usize],
                token_hash: SecretHash(format!("{:064x}", n * 31)),
                external_id: (n % 2 == 0).then(|| user.clone()),
                username: (n % 4 == 0).then(|| format!("User {n}")),
                metadata: (n % 4 == 0).then(|| json!({"access_level": "standard", "n": n})),
                created_at: at(n),
                expires_at: at(n) + Duration::minutes(15),
                trigger_id: None,
            }],
        }];
        let end = match n % 6 {
            0 => Some(Event::SessionCompleted {
                session_id: sid,
                external_id: Some(user.clone()),
                capture: Some(capture.clone()),
                at: at(n) + Duration::seconds(2),
            }),
            1 => Some(Event::SessionFailed {
                session_id: sid,
                reason: FailReason::NoMatch,
                capture: Some(capture.clone()),
                at: at(n) + Duration::seconds(2),
            }),
            2 => Some(Event::SessionExpired {
                session_id: sid,
                at: at(n) + Duration::minutes(15),
            }),
            3 => Some(Event::SessionReaderArmed {
                session_id: sid,
                reader_id: reader.clone(),
                at: at(n) + Duration::seconds(1),
            }),
            4 => Some(Event::CaptureRetryRequested {
                session_id: sid,
                capture: capture.clone(),
                attempt: 1,
                at: at(n) + Duration::seconds(1),
            }),
            _ => None, // still pending
        };
        batch[0].events.extend(end);
        if n % 12 == 3 {
            // A low-quality scan at the armed reader: the reader's hold starts again.
            batch[0].events.push(Event::CaptureRetryRequested {
                session_id: sid,
                capture: capture.clone(),
                attempt: 1,
                at: at(n) + Duration::seconds(3),
            });
        }
        if n % 5 == 0 {
            let key = format!("idem-{n}");
            batch.push(one(
                stream::idempotency(p, &key),
                Event::IdempotencyKeyUsed {
                    partner_id: p,
                    key,
                    fingerprint: format!("{n:064x}"),
                    session_id: sid,
                    at: at(n),
                },
            ));
        }
        if n % 6 == 0 {
            batch.push(one(
                stream::user(p, &user),
                Event::UserEnrolled {
                    partner_id: p,
                    external_id: user.clone(),
                    username: Some(format!("User {n}")),
                    metadata: Some(json!({"access_level": ["standard", "admin"]})),
                    session_id: sid,
                    template: Some(SealedTemplate {
                        key_id: KeyId::from_random(id16(n, 3)),
                        nonce: format!("nonce-{n}"),
                        ciphertext: format!("ciphertext-{n}"),
                    }),
                    at: at(n) + Duration::seconds(2),
                },
            ));
        }
        if n % 11 == 0 {
            batch.push(one(
                stream::user(p, &user),
                Event::UserErased {
                    partner_id: p,
                    external_id: user.clone(),
                    at: at(n),
                    clears_zones: true,
                },
            ));
        }
        if n % 7 == 0 {
            batch.push(one(
                stream::reader(&reader),
                Event::ReaderStatusChanged {
                    reader_id: reader.clone(),
                    online: n % 14 == 0,
                    model: (n % 14 == 0).then(|| "PV-1".to_string()),
                    firmware: (n % 14 == 0).then(|| format!("1.{n}")),
                    at: at(n),
                },
            ));
            batch.push(one(
                stream::reader(&reader),
                Event::CaptureRejected {
                    reader_id: reader.clone(),
                    capture_id: format!("rej-{n}"),
                    reason: CaptureRejection::UnknownSession,
                    quality: None,
                    judged: None,
                    at: at(n),
                },
            ));
        }
        match n % 40 {
            3 => batch.push(one(
                stream::webhook(p),
                Event::WebhookConfigured {
                    partner_id: p,
                    url: format!("https://hooks.example/{n}"),
                    secret: format!("sealed-{n}"),
                    events: vec!["session".into()],
                    at: at(n),
                },
            )),
            13 => batch.push(one(
                stream::webhook(p),
                Event::WebhookSecretRotated {
                    partner_id: p,
                    secret: format!("sealed-{n}"),
                    previous_until: at(n) + Duration::hours(24),
                    at: at(n),
                },
            )),
            23 => batch.push(one(
                stream::webhook(p),
                Event::WebhookDisabled {
                    partner_id: p,
                    delivery_id: format!("msg_{}", n - 1),
                    at: at(n),
                },
            )),
            33 => batch.push(one(
                stream::webhook(p),
                Event::WebhookEnabled {
                    partner_id: p,
                    at: at(n),
                },
            )),
            20 => batch.push(one(
                stream::partner(p),
                Event::PartnerDeactivated {
                    partner_id: p,
                    at: at(n),
                },
            )),
            30 => batch.push(one(
                stream::partner(p),
                Event::PartnerActivated {
                    partner_id: p,
                    at: at(n),
                },
            )),
            _ => {}
        }
        if n % 3 == 0 {
            let d = format!("msg_{n}");
            let mut events = vec![Event::DeliveryQueued {
                delivery_id: d.clone(),
                partner_id: p,
                event: "completed".into(),
                session_id: Some(sid),
                body: format!("{{\"n\":{n}}}"),
                held: n % 9 == 0,
                at: at(n),
            }];
            for a in 1..=(n % 4) {
                let last = a == n % 4;
                events.push(Event::DeliveryAttempted {
                    delivery_id: d.clone(),
                    attempt: a as u32,
                    status_code: Some(if last && n % 8 == 0 { 200 } else { 503 }),
                    error: None,
                    latency_ms: 12,
                    response: "busy".into(),
                    delivered: last && n % 8 == 0,
                    next_attempt_at: (!(last && n % 8 == 0) && a < 3)
                        .then(|| at(n) + Duration::seconds(30 * a as i64)),
                    at: at(n) + Duration::seconds(a as i64),
                });
            }
            if n % 27 == 0 {
                events.push(Event::DeliveryRescheduled {
                    delivery_id: d.clone(),
                    at: at(n) + Duration::minutes(5),
                });
            }
            batch.push(StreamAppend {
                stream: stream::delivery(&d),
                expected: Expected::Any,
                events,
            });
        }
        let door =
            DoorId(["main-entrance", "floor-2", "server-room"][(n % 3) as usize].to_string());
        let door_stream = stream::door(&door);
        let granted = n % 4 != 1;
        let mut door_events = vec![Event::DoorDecided {
            door: door.clone(),
            reader_id: ReaderId("lobby-1".into()),
            capture_id: format!("door-{n}"),
            subject: (n % 5 != 0).then(|| DoorSubject {
                partner_id: p,
                partner_name: "partner".into(),
                external_id: user.clone(),
                metadata: Some(json!({"access_level": "admin"})),
            }),
            erased: false,
            similarity: Some(0.9),
            quality: None,
            judged: None,
            policy: policy.sha256.clone(),
            mode: SiteMode::Normal,
            last_in_zone: None,
            movement: (granted && n % 5 != 0).then(|| {
                (
                    "building".to_string(),
                    if n % 2 == 0 {
                        Direction::Entry
                    } else {
                        Direction::Exit
                    },
                )
            }),
            unopenable: false,
            verdict: if granted {
                Verdict::Granted {
                    level: "admin".into(),
                    passback_violation: false,
                }
            } else {
                Verdict::Denied {
                    reason: DenyReason::OutsideSchedule,
                    level: Some("standard".into()),
                }
            },
            at: at(n),
        }];
        match n % 10 {
            0 => door_events.push(Event::DoorExitRequested {
                door: door.clone(),
                at: at(n),
            }),
            1 => door_events.push(Event::DoorRestingChanged {
                door: door.clone(),
                unlocked: n % 20 == 1,
                cause: "unlock_window".into(),
                at: at(n),
            }),
            2 => door_events.push(Event::RelaySwitched {
                door: door.clone(),
                device: "board-1".into(),
                coil: 0,
                on: true,
                tag: format!("door-{n}"),
                at: at(n),
            }),
            // Every other one refuses the grant's pulse (undoing its zone movement).
            3 => door_events.push(Event::RelayFailed {
                door: door.clone(),
                device: "board-1".into(),
                coil: 1,
                on: n % 20 == 3,
                error: "timeout".into(),
                tag: format!("door-{n}"),
                refused: n % 20 == 3,
                at: at(n),
            }),
            4 => door_events.push(Event::DoorContactChanged {
                door: door.clone(),
                open: n % 20 == 4,
                at: at(n),
            }),
            5 => door_events.push(Event::DoorForcedOpen {
                door: door.clone(),
                at: at(n),
            }),
            6 => door_events.push(Event::DoorHeldOpen {
                door: door.clone(),
                since: at(n) - Duration::seconds(40),
                at: at(n),
            }),
            _ => {}
        }
        batch.push(StreamAppend {
            stream: door_stream,
            expected: Expected::Any,
            events: door_events,
        });
        if n % 25 == 0 {
            batch.push(one(
                stream::device("board-1"),
                Event::DeviceStatusChanged {
                    device: "board-1".into(),
                    up: n % 50 == 0,
                    error: (n % 50 != 0).then(|| "connection refused".to_string()),
                    at: at(n),
                },
            ));
            batch.push(one(
                "site".into(),
                Event::SiteModeChanged {
                    lockdown: n % 75 == 0,
                    emergency: false,
                    at: at(n),
                },
            ));
        }
        if n == rounds / 2 {
            let doc = SITE.replace("pulse_ms = 2000", "pulse_ms = 2500");
            batch.push(one(
                "policy".into(),
                Event::PolicyActivated {
                    sha256: Policy::parse(&doc).expect("variant parses").sha256,
                    document: doc,
                    source: "test".into(),
                    at: at(n),
                },
            ));
        }
        // Upstream mode: remote sessions bound to a reader, some ended, some still open.
        let up = |k: u64| palmgate::core::UpstreamSessionId(format!("remote-{k}"));
        if n % 7 == 0 {
            batch.push(one(
                stream::upstream(&up(n)),
                Event::UpstreamIdentifyStarted {
                    session_id: up(n),
                    reader_id: ReaderId("lobby-1".into()),
                    trigger_id: format!("trg-{n}"),
                    expires_at: (n % 2 == 0).then(|| at(n) + Duration::minutes(15)),
                    clock_skew_s: (n % 3 == 0).then_some(-2),
                    at: at(n),
                },
            ));
        }
        if n % 14 == 0 && n >= 7 {
            batch.push(one(
                stream::upstream(&up(n - 7)),
                Event::UpstreamSessionEnded {
                    session_id: up(n - 7),
                    reader_id: ReaderId("lobby-1".into()),
                    outcome: palmgate::core::event::UpstreamOutcome::Completed,
                    webhook_id: format!("msg_{n}"),
                    external_id: Some(ExternalId(format!("u{n}"))),
                    username: None,
                    metadata: Some(json!({"access_level": "staff"})),
                    fail_reason: None,
                    ended_at: at(n),
                    late: false,
                    at: at(n),
                },
            ));
        }
        if n % 11 == 0 {
            batch.push(one(
                stream::reader(&ReaderId("lobby-1".into())),
                Event::UpstreamIdentifyFailed {
                    reader_id: ReaderId("lobby-1".into()),
                    trigger_id: format!("trg-f{n}"),
                    status_code: (n % 2 == 0).then_some(503),
                    error: "the upstream answered 503".into(),
                    at: at(n),
                },
            ));
        }
        log.push(batch);
    }
    log
}
