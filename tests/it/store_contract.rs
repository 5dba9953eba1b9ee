//! The `EventStore` contract (SPEC 8.1–8.2), written once over `&dyn EventStore` and run
//! against every backend.
//!
//! [`contract`] holds backend-neutral checks: positions, revisions, expected-revision conflicts,
//! atomic multi-stream batches, group commit under concurrency, the hash chain, durability
//! across a reopen and exact decoding. Each takes a fresh, empty store. [`sqlite`] runs them
//! against `SqliteStore` on a temporary file and adds what only a file can show: tampering
//! with rows behind the store's back, and a write that fails.
//!
//! [`kurrentdb`] runs the same contract against `KurrentStore` (cargo feature `kurrentdb`)
//! when `PALMGATE_KURRENTDB_URL` names a server, each test on a fresh KurrentDB stream, and
//! adds what only a shared log can show: two gateways (two stores on one stream) appending
//! against each other and following each other's events. Start a throwaway server with the
//! vendor's container and run them:
//!
//! ```text
//! docker run --rm -d --name kurrentdb -p 2113:2113 -e KURRENTDB_INSECURE=true \
//!     -e KURRENTDB_RUN_PROJECTIONS=None docker.kurrent.io/kurrent-latest/kurrentdb:latest
//! PALMGATE_KURRENTDB_URL='esdb://localhost:2113?tls=false' \
//!     cargo test --features kurrentdb --test it store_contract
//! ```

use chrono::{DateTime, TimeZone, Utc};
use palmgate::core::event::stream;
use palmgate::core::{
    Event, Expected, ExternalId, FailReason, Language, PartnerId, Recorded, SecretHash, SessionId,
    SessionKind, StreamAppend,
};
use palmgate::store::chain::{ChainBreak, Verifier};
use palmgate::store::{EventStore, RawEvent, StoreError};
use std::sync::Arc;
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// Sample data
// ---------------------------------------------------------------------------------------------

/// 2025-06-01T09:00:00Z plus `secs`.
pub(crate) fn at(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_748_768_400 + secs, 0).unwrap()
}

fn partner(n: u128) -> PartnerId {
    PartnerId(Uuid::from_u128(
        0x0197_2a6c_0000_7000_8000_0000_0000_0000 | n,
    ))
}

fn session(n: u128) -> SessionId {
    SessionId(Uuid::from_u128(
        0x0197_2a6d_0000_7000_8000_0000_0000_0000 | n,
    ))
}

fn hash_hex(n: u8) -> SecretHash {
    SecretHash(format!("{n:02x}").repeat(32))
}

/// A small, varied event; `n` makes it distinct.
fn sample(n: u32) -> Event {
    let p = partner(u128::from(n));
    match n % 4 {
        0 => Event::PartnerCreated {
            partner_id: p,
            name: format!("Partner №{n} — Алматы"),
            api_key_hash: hash_hex(n as u8),
            at: at(i64::from(n)),
        },
        1 => Event::PartnerDeactivated {
            partner_id: p,
            at: at(i64::from(n)),
        },
        2 => Event::SessionFailed {
            session_id: session(u128::from(n)),
            reason: FailReason::Cancelled,
            capture: None,
            at: at(i64::from(n)),
        },
        _ => Event::UserErased {
            partner_id: p,
            external_id: ExternalId(format!("EMP-{n:05}")),
            at: at(i64::from(n)),
            clears_zones: true,
        },
    }
}

fn append(stream: &str, expected: Expected, events: Vec<Event>) -> StreamAppend {
    StreamAppend {
        stream: stream.to_string(),
        expected,
        events,
    }
}

fn one(stream: &str, expected: Expected, n: u32) -> Vec<StreamAppend> {
    vec![append(stream, expected, vec![sample(n)])]
}

fn read_all(store: &dyn EventStore) -> Vec<Recorded> {
    store.read(0, usize::MAX >> 1).expect("read the whole log")
}

fn read_all_raw(store: &dyn EventStore) -> Vec<RawEvent> {
    store
        .read_raw(0, usize::MAX >> 1)
        .expect("read the whole log")
}

/// Runs the chain verifier over `events`; the first break, if any.
pub(crate) fn verify(events: &[RawEvent]) -> Result<u64, ChainBreak> {
    let mut v = Verifier::default();
    for e in events {
        v.check(e)?;
    }
    Ok(v.verified())
}

fn positions(recs: &[Recorded]) -> Vec<u64> {
    recs.iter().map(|r| r.position).collect()
}

#[track_caller]
fn assert_conflict(
    r: Result<Vec<Recorded>, StoreError>,
    stream: &str,
    expected: Expected,
    actual: Option<u64>,
) {
    match r {
        Err(StoreError::Conflict {
            stream: s,
            expected: e,
            actual: a,
        }) => {
            assert_eq!(s, stream, "conflicting stream");
            assert_eq!(e, expected, "expected revision in the conflict");
            assert_eq!(a, actual, "actual revision in the conflict");
        }
        other => panic!("expected a conflict on {stream}, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The contract: every function takes a fresh, empty store
// ---------------------------------------------------------------------------------------------

pub mod contract {
    use super::*;

    /// Positions are global, 1-based and gapless; revisions count per stream from 0;
    /// `recorded_at` is the one given; reads return exactly what the append returned.
    pub async fn positions_revisions_and_reads(store: &dyn EventStore) {
        let t1 = at(10) + chrono::Duration::microseconds(123_456);
        let first = store
            .append(
                vec![append(
                    "s-a",
                    Expected::NoStream,
                    vec![sample(0), sample(1)],
                )],
                t1,
            )
            .await
            .expect("first append");
        assert_eq!(positions(&first), [1, 2]);
        assert!(first.iter().all(|r| r.stream == "s-a"));
        assert_eq!(first.iter().map(|r| r.revision).collect::<Vec<_>>(), [0, 1]);
        assert!(first.iter().all(|r| r.recorded_at == t1), "{first:?}");
        assert_eq!(first[0].event, sample(0));
        assert_eq!(first[1].event, sample(1));

        let t2 = at(20);
        let second = store
            .append(
                vec![
                    append("s-b", Expected::NoStream, vec![sample(2)]),
                    append("s-a", Expected::Revision(1), vec![sample(3)]),
                    append("s-c", Expected::Any, vec![sample(4)]),
                ],
                t2,
            )
            .await
            .expect("multi-stream append");
        assert_eq!(positions(&second), [3, 4, 5]);
        let shape: Vec<(&str, u64)> = second
            .iter()
            .map(|r| (r.stream.as_str(), r.revision))
            .collect();
        assert_eq!(shape, [("s-b", 0), ("s-a", 2), ("s-c", 0)]);
        assert!(second.iter().all(|r| r.recorded_at == t2));

        let any = store
            .append(one("s-c", Expected::Any, 5), at(30))
            .await
            .expect("Any on an existing stream");
        assert_eq!((any[0].position, any[0].revision), (6, 1));

        let all: Vec<Recorded> = first.iter().chain(&second).chain(&any).cloned().collect();
        assert_eq!(read_all(store), all, "read returns what append returned");

        let raw = read_all_raw(store);
        assert_eq!(raw.len(), 6);
        for (r, rec) in raw.iter().zip(&all) {
            assert_eq!(r.position, rec.position);
            assert_eq!(r.stream, rec.stream);
            assert_eq!(r.revision, rec.revision);
            assert_eq!(r.kind, rec.event.kind());
            assert_eq!(r.version, rec.event.version());
            assert_eq!(r.hash, rec.hash);
            assert_eq!(r.prev_hash, rec.prev_hash);
            assert_eq!(&r.decode().expect("decode raw"), rec);
        }
        assert!(store.healthy());
    }

    /// `after` is exclusive, `limit` caps the page, paging walks the whole log once.
    pub async fn paging(store: &dyn EventStore) {
        for n in 0..10 {
            store
                .append(
                    one(&format!("page-{n}"), Expected::NoStream, n),
                    at(i64::from(n)),
                )
                .await
                .expect("append");
        }
        assert_eq!(positions(&store.read(0, 3).unwrap()), [1, 2, 3]);
        assert_eq!(positions(&store.read(3, 3).unwrap()), [4, 5, 6]);
        assert_eq!(positions(&store.read(8, 5).unwrap()), [9, 10]);
        assert!(store.read(10, 5).unwrap().is_empty());
        assert!(store.read(99, 5).unwrap().is_empty());
        assert!(store.read(0, 0).unwrap().is_empty());
        let raw_page: Vec<Recorded> = store
            .read_raw(5, 1)
            .unwrap()
            .iter()
            .map(|r| r.decode().expect("decode"))
            .collect();
        assert_eq!(positions(&raw_page), [6]);

        let mut walked = Vec::new();
        let mut after = 0;
        loop {
            let page = store.read(after, 4).unwrap();
            if page.is_empty() {
                break;
            }
            assert!(page.len() <= 4);
            after = page.last().unwrap().position;
            walked.extend(page);
        }
        assert_eq!(walked, read_all(store));
        assert_eq!(positions(&walked), (1..=10).collect::<Vec<_>>());
    }

    /// Optimistic concurrency: NoStream, Revision(n) and Any, with the actual revision
    /// reported on a conflict. A refused append writes nothing and leaves the store healthy.
    pub async fn expected_revision(store: &dyn EventStore) {
        store
            .append(one("acc", Expected::NoStream, 0), at(0))
            .await
            .expect("create");

        let r = store.append(one("acc", Expected::NoStream, 1), at(1)).await;
        assert_conflict(r, "acc", Expected::NoStream, Some(0));

        let r = store
            .append(one("acc", Expected::Revision(5), 1), at(1))
            .await;
        assert_conflict(r, "acc", Expected::Revision(5), Some(0));

        let r = store
            .append(one("missing", Expected::Revision(0), 1), at(1))
            .await;
        assert_conflict(r, "missing", Expected::Revision(0), None);

        let ok = store
            .append(one("acc", Expected::Revision(0), 2), at(2))
            .await
            .expect("right revision");
        assert_eq!((ok[0].position, ok[0].revision), (2, 1));

        // The old revision is now stale.
        let r = store
            .append(one("acc", Expected::Revision(0), 3), at(3))
            .await;
        assert_conflict(r, "acc", Expected::Revision(0), Some(1));

        let ok = store
            .append(one("acc", Expected::Any, 3), at(3))
            .await
            .expect("Any on an existing stream");
        assert_eq!((ok[0].position, ok[0].revision), (3, 2));
        let ok = store
            .append(one("fresh", Expected::Any, 4), at(4))
            .await
            .expect("Any on a new stream");
        assert_eq!((ok[0].position, ok[0].revision), (4, 0));

        let all = read_all(store);
        assert_eq!(
            positions(&all),
            [1, 2, 3, 4],
            "refused appends left no trace"
        );
        assert!(store.healthy(), "a conflict is not a storage failure");
        verify(&read_all_raw(store)).expect("chain");
    }

    /// A batch over several streams is all-or-nothing: one conflicting stream, nothing written.
    pub async fn atomic_batches(store: &dyn EventStore) {
        store
            .append(one("taken", Expected::NoStream, 0), at(0))
            .await
            .expect("create");

        // The conflicting stream last: the streams before it must not be written.
        let r = store
            .append(
                vec![
                    append("new-1", Expected::NoStream, vec![sample(1), sample(2)]),
                    append("taken", Expected::NoStream, vec![sample(3)]),
                ],
                at(1),
            )
            .await;
        assert_conflict(r, "taken", Expected::NoStream, Some(0));
        // The conflicting stream first: the streams after it must not be written either.
        let r = store
            .append(
                vec![
                    append("taken", Expected::Revision(7), vec![sample(4)]),
                    append("new-2", Expected::NoStream, vec![sample(5)]),
                ],
                at(2),
            )
            .await;
        assert_conflict(r, "taken", Expected::Revision(7), Some(0));

        assert_eq!(
            positions(&read_all(store)),
            [1],
            "nothing of a refused batch"
        );

        // The streams of the refused batches are still new, and positions have no gap.
        let ok = store
            .append(
                vec![
                    append("new-1", Expected::NoStream, vec![sample(6)]),
                    append("new-2", Expected::NoStream, vec![sample(7)]),
                ],
                at(3),
            )
            .await
            .expect("the same streams, now without the conflict");
        assert_eq!(positions(&ok), [2, 3]);
        assert_eq!(ok[0].revision, 0);
        assert_eq!(ok[1].revision, 0);
        verify(&read_all_raw(store)).expect("chain");
    }

    /// Group commit: 64 concurrent appends to distinct streams all succeed, and their
    /// positions are exactly 1..=64.
    pub async fn concurrent_distinct_streams(store: Arc<dyn EventStore>) {
        let barrier = Arc::new(tokio::sync::Barrier::new(64));
        let tasks: Vec<_> = (0..64u32)
            .map(|n| {
                let store = store.clone();
                let barrier = barrier.clone();
                tokio::spawn(async move {
                    barrier.wait().await;
                    store
                        .append(one(&format!("conc-{n}"), Expected::NoStream, n), at(0))
                        .await
                })
            })
            .collect();
        let mut got = Vec::new();
        for t in tasks {
            let recs = t.await.expect("task").expect("append");
            assert_eq!(recs.len(), 1);
            assert_eq!(recs[0].revision, 0);
            got.push(recs[0].position);
        }
        got.sort_unstable();
        assert_eq!(got, (1..=64).collect::<Vec<u64>>());

        let all = read_all(store.as_ref());
        assert_eq!(positions(&all), (1..=64).collect::<Vec<u64>>());
        assert_eq!(verify(&read_all_raw(store.as_ref())), Ok(64));
    }

    /// Two appends race for one stream with NoStream: exactly one wins, and the loser's whole
    /// batch (it also wrote its own stream) is refused. Repeated, amid unrelated appends.
    pub async fn concurrent_race_for_one_stream(store: Arc<dyn EventStore>) {
        const ROUNDS: u32 = 20;
        for round in 0..ROUNDS {
            let barrier = Arc::new(tokio::sync::Barrier::new(6));
            let race = format!("race-{round}");
            let mut tasks = Vec::new();
            for who in 0..2u32 {
                let (store, barrier, race) = (store.clone(), barrier.clone(), race.clone());
                tasks.push(tokio::spawn(async move {
                    barrier.wait().await;
                    let own = format!("own-{round}-{who}");
                    let r = store
                        .append(
                            vec![
                                append(&own, Expected::NoStream, vec![sample(who)]),
                                append(&race, Expected::NoStream, vec![sample(who + 10)]),
                            ],
                            at(i64::from(round)),
                        )
                        .await;
                    (who, r)
                }));
            }
            let noise: Vec<_> = (0..4u32)
                .map(|k| {
                    let (store, barrier) = (store.clone(), barrier.clone());
                    tokio::spawn(async move {
                        barrier.wait().await;
                        store
                            .append(
                                one(&format!("noise-{round}-{k}"), Expected::NoStream, k),
                                at(0),
                            )
                            .await
                    })
                })
                .collect();
            let mut winners = Vec::new();
            let mut losers = Vec::new();
            for t in tasks {
                match t.await.expect("task") {
                    (who, Ok(recs)) => winners.push((who, recs)),
                    (who, Err(e)) => losers.push((who, e)),
                }
            }
            for n in noise {
                n.await.expect("task").expect("unrelated append");
            }
            assert_eq!(winners.len(), 1, "round {round}: exactly one winner");
            assert_eq!(losers.len(), 1, "round {round}: exactly one loser");
            let (winner, recs) = &winners[0];
            assert_eq!(recs[1].stream, race);
            assert_eq!(recs[1].event, sample(winner + 10));
            match &losers[0].1 {
                StoreError::Conflict { stream, actual, .. } => {
                    assert_eq!(stream, &race);
                    assert_eq!(*actual, Some(0));
                }
                e => panic!("round {round}: loser got {e:?}, not a conflict"),
            }
            let loser_stream = format!("own-{round}-{}", losers[0].0);
            assert!(
                read_all(store.as_ref())
                    .iter()
                    .all(|r| r.stream != loser_stream),
                "round {round}: the loser's own stream was written"
            );
        }
        let all = read_all(store.as_ref());
        // Per round: winner's 2 events + 4 noise events.
        let n = u64::from(ROUNDS) * 6;
        assert_eq!(positions(&all), (1..=n).collect::<Vec<u64>>());
        assert_eq!(verify(&read_all_raw(store.as_ref())), Ok(n));
    }

    /// Every event links to the one before; the first links to 32 zero bytes; the verifier
    /// accepts the whole log; `Recorded` carries the stored hashes.
    pub async fn hash_chain(store: &dyn EventStore) {
        let mut returned = Vec::new();
        for n in 0..8u32 {
            returned.extend(
                store
                    .append(
                        vec![
                            append(&format!("chain-{}", n % 3), Expected::Any, vec![sample(n)]),
                            append("chain-x", Expected::Any, vec![sample(n + 100)]),
                        ],
                        at(i64::from(n)),
                    )
                    .await
                    .expect("append"),
            );
        }
        let raw = read_all_raw(store);
        assert_eq!(raw.len(), 16);
        assert_eq!(raw[0].prev_hash, [0u8; 32], "the chain starts at zero");
        for w in raw.windows(2) {
            assert_eq!(w[1].prev_hash, w[0].hash, "link at {}", w[1].position);
        }
        for (r, rec) in raw.iter().zip(&returned) {
            assert_eq!(r.hash, r.computed_hash(), "hash of {}", r.position);
            assert_eq!((r.prev_hash, r.hash), (rec.prev_hash, rec.hash));
        }
        let distinct: std::collections::HashSet<_> = raw.iter().map(|r| r.hash).collect();
        assert_eq!(distinct.len(), raw.len(), "hashes are distinct");
        assert_eq!(verify(&raw), Ok(16));
    }

    /// Every event comes back exactly as appended: all types (from the golden fixtures),
    /// optional fields set and unset, Unicode, nested metadata, odd stream names.
    pub async fn decode_exact(store: &dyn EventStore) {
        let mut events: Vec<Event> = crate::events_golden::fixture_events()
            .into_iter()
            .map(|(_, e)| e)
            .collect();
        events.push(Event::SessionCreated {
            session_id: session(7),
            partner_id: Some(partner(7)),
            reader_id: None,
            kind: SessionKind::Enroll,
            language: Language::Kk,
            token_hash: hash_hex(7),
            external_id: Some(ExternalId("Әсел-😀 \"quoted\" \\ back".into())),
            username: Some("Әсел Нұрланқызы".into()),
            metadata: Some(serde_json::json!({
                "z": [1, 2.5, -3e-7, null, true],
                "a": {"nested": {"deep": "значение"}},
                "big": 9_007_199_254_740_993u64,
                "empty": {}
            })),
            created_at: at(5),
            expires_at: at(905),
            trigger_id: None,
        });
        let streams = [
            "plain".to_string(),
            "with space and ünïcödé ✓".to_string(),
            stream::idempotency(partner(1), "key/with:odd|chars \"'"),
            stream::user(partner(2), &ExternalId("EMP-1".into())),
        ];
        let mut appended = Vec::new();
        for (i, e) in events.iter().enumerate() {
            let s = &streams[i % streams.len()];
            let recs = store
                .append(
                    vec![append(s, Expected::Any, vec![e.clone()])],
                    at(i as i64),
                )
                .await
                .expect("append");
            assert_eq!(&recs[0].event, e, "append returns the event as given");
            assert_eq!(&recs[0].stream, s);
            appended.push((s.clone(), e.clone()));
        }
        let back = read_all(store);
        assert_eq!(back.len(), appended.len());
        for (rec, (s, e)) in back.iter().zip(&appended) {
            assert_eq!(&rec.stream, s, "stream at {}", rec.position);
            assert_eq!(&rec.event, e, "event at {}", rec.position);
        }
        verify(&read_all_raw(store)).expect("chain");
    }

    /// Append, close, reopen: everything is there, the stream heads and the chain head are
    /// restored, and the chain continues across the restart.
    pub async fn durable_across_reopen<F>(open: F)
    where
        F: Fn() -> Arc<dyn EventStore>,
    {
        let before = {
            let store = open();
            store
                .append(
                    vec![
                        append("dur-a", Expected::NoStream, vec![sample(0), sample(1)]),
                        append("dur-b", Expected::NoStream, vec![sample(2)]),
                    ],
                    at(0),
                )
                .await
                .expect("append");
            store
                .append(one("dur-a", Expected::Revision(1), 3), at(1))
                .await
                .expect("append");
            read_all(store.as_ref())
            // dropped (closed) here
        };
        assert_eq!(before.len(), 4);

        let store = open();
        assert!(store.healthy());
        assert_eq!(
            read_all(store.as_ref()),
            before,
            "everything survives a reopen"
        );

        let r = store
            .append(one("dur-a", Expected::NoStream, 9), at(2))
            .await;
        assert_conflict(r, "dur-a", Expected::NoStream, Some(2));
        let r = store
            .append(one("dur-b", Expected::Revision(5), 9), at(2))
            .await;
        assert_conflict(r, "dur-b", Expected::Revision(5), Some(0));

        let next = store
            .append(one("dur-a", Expected::Revision(2), 4), at(3))
            .await
            .expect("Revision(last) after a reopen");
        assert_eq!((next[0].position, next[0].revision), (5, 3));
        assert_eq!(next[0].prev_hash, before[3].hash, "the chain continues");
        let fresh = store
            .append(one("dur-c", Expected::NoStream, 5), at(4))
            .await
            .expect("new stream after a reopen");
        assert_eq!((fresh[0].position, fresh[0].revision), (6, 0));
        assert_eq!(verify(&read_all_raw(store.as_ref())), Ok(6));
        drop(store);

        // And once more, to be sure the continuation itself was durable.
        let store = open();
        assert_eq!(verify(&read_all_raw(store.as_ref())), Ok(6));
    }

    /// `forget_streams` / `retain_streams`: the heads of streams the app let go of are dropped
    /// (an append expecting no stream succeeds and continues the chain), the others are still
    /// checked, and a `retain` made as of an older position is ignored.
    pub async fn forgotten_streams(store: &dyn EventStore) {
        for s in ["gone", "kept", "other"] {
            store
                .append(one(s, Expected::NoStream, 0), at(0))
                .await
                .expect("append");
        }
        store.forget_streams(vec!["gone".into()]);
        let again = store
            .append(one("gone", Expected::NoStream, 1), at(1))
            .await
            .expect("a forgotten stream starts again");
        assert_eq!((again[0].position, again[0].revision), (4, 0));
        let r = store
            .append(one("kept", Expected::NoStream, 2), at(2))
            .await;
        assert_conflict(r, "kept", Expected::NoStream, Some(0));

        // A retain as of a position the log has moved past: nothing dropped.
        store.retain_streams([("kept".to_string(), 0)].into(), 3);
        let r = store
            .append(one("other", Expected::NoStream, 3), at(3))
            .await;
        assert_conflict(r, "other", Expected::NoStream, Some(0));
        // As of the current position: only `kept` stays checked.
        store.retain_streams([("kept".to_string(), 0)].into(), 4);
        let r = store
            .append(one("kept", Expected::NoStream, 4), at(4))
            .await;
        assert_conflict(r, "kept", Expected::NoStream, Some(0));
        for s in ["gone", "other"] {
            let recs = store
                .append(one(s, Expected::NoStream, 5), at(5))
                .await
                .expect("dropped by the retain");
            assert_eq!(recs[0].revision, 0);
        }
        assert_eq!(verify(&read_all_raw(store)), Ok(6));

        // A head the store no longer has (forgotten by an earlier run with a shorter
        // retention) but the state knows again (a longer one brought it back): the retain
        // restores it, so the stream takes appends at its revision and no other.
        store.forget_streams(vec!["kept".into()]);
        let state: std::collections::HashMap<String, u64> =
            [("kept", 0), ("gone", 0), ("other", 0)]
                .map(|(s, r)| (s.to_string(), r))
                .into();
        store.retain_streams(state, 6);
        let r = store
            .append(one("kept", Expected::NoStream, 6), at(6))
            .await;
        assert_conflict(r, "kept", Expected::NoStream, Some(0));
        let recs = store
            .append(one("kept", Expected::Revision(0), 7), at(7))
            .await
            .expect("the restored head takes the next revision");
        assert_eq!((recs[0].position, recs[0].revision), (7, 1));
        assert_eq!(verify(&read_all_raw(store)), Ok(7));
    }
}

// ---------------------------------------------------------------------------------------------
// The embedded backend
// ---------------------------------------------------------------------------------------------

mod sqlite {
    use super::*;
    use palmgate::store::SqliteStore;
    use palmgate::store::chain::event_hash;
    use palmgate::store::sqlite::PROBE_EVERY;
    use rusqlite::{Connection, params};
    use std::path::{Path, PathBuf};
    use tempfile::TempDir;

    fn temp() -> (TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("events.db");
        (dir, path)
    }

    fn open(path: &Path) -> Arc<dyn EventStore> {
        Arc::new(SqliteStore::open(path).expect("open store"))
    }

    #[tokio::test]
    async fn positions_revisions_and_reads() {
        let (_d, p) = temp();
        contract::positions_revisions_and_reads(open(&p).as_ref()).await;
    }

    #[tokio::test]
    async fn paging() {
        let (_d, p) = temp();
        contract::paging(open(&p).as_ref()).await;
    }

    #[tokio::test]
    async fn expected_revision() {
        let (_d, p) = temp();
        contract::expected_revision(open(&p).as_ref()).await;
    }

    #[tokio::test]
    async fn atomic_batches() {
        let (_d, p) = temp();
        contract::atomic_batches(open(&p).as_ref()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_distinct_streams() {
        let (_d, p) = temp();
        contract::concurrent_distinct_streams(open(&p)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_race_for_one_stream() {
        let (_d, p) = temp();
        contract::concurrent_race_for_one_stream(open(&p)).await;
    }

    #[tokio::test]
    async fn hash_chain() {
        let (_d, p) = temp();
        contract::hash_chain(open(&p).as_ref()).await;
    }

    #[tokio::test]
    async fn decode_exact() {
        let (_d, p) = temp();
        contract::decode_exact(open(&p).as_ref()).await;
    }

    #[tokio::test]
    async fn durable_across_reopen() {
        let (_d, p) = temp();
        contract::durable_across_reopen(|| open(&p)).await;
    }

    #[tokio::test]
    async fn forgotten_streams() {
        let (_d, p) = temp();
        contract::forgotten_streams(open(&p).as_ref()).await;
    }

    // --- tampering behind the store's back --------------------------------------------------

    /// A closed log of 6 events over 3 streams, for tampering.
    async fn closed_log() -> (TempDir, PathBuf) {
        let (d, p) = temp();
        let store = SqliteStore::open(&p).expect("open");
        for n in 0..6u32 {
            store
                .append(
                    one(&format!("t-{}", n % 3), Expected::Any, n),
                    at(i64::from(n)),
                )
                .await
                .expect("append");
        }
        store.close();
        drop(store);
        (d, p)
    }

    fn tamper(path: &Path, sql: &str, args: impl rusqlite::Params) {
        let conn = Connection::open(path).expect("open with rusqlite");
        let changed = conn.execute(sql, args).expect("tamper");
        assert!(changed > 0, "the tampering changed nothing: {sql}");
    }

    fn data_at(path: &Path, position: i64) -> String {
        let conn = Connection::open(path).expect("open with rusqlite");
        conn.query_row(
            "SELECT data FROM events WHERE position = ?1",
            params![position],
            |r| r.get(0),
        )
        .expect("row")
    }

    /// Reopens the store and runs the verifier over everything it reads.
    fn verify_file(path: &Path) -> Result<u64, ChainBreak> {
        let store = SqliteStore::open(path).expect("reopen");
        let raw = store.read_raw(0, 1 << 20).expect("read");
        verify(&raw)
    }

    #[tokio::test]
    async fn untouched_file_verifies() {
        let (_d, p) = closed_log().await;
        assert_eq!(verify_file(&p), Ok(6));
    }

    #[tokio::test]
    async fn flipped_byte_in_data_is_reported_at_its_position() {
        let (_d, p) = closed_log().await;
        let mut data = data_at(&p, 3).into_bytes();
        // Flip the lowest bit of the first digit: the text stays valid JSON, and even a
        // valid event, so only the chain can tell.
        let i = data
            .iter()
            .position(u8::is_ascii_digit)
            .expect("a digit in the data");
        data[i] ^= 1;
        let data = String::from_utf8(data).unwrap();
        tamper(
            &p,
            "UPDATE events SET data = ?1 WHERE position = 3",
            params![data],
        );

        let brk = verify_file(&p).expect_err("a flipped byte must break the chain");
        assert_eq!(brk.position, 3, "{brk:?}");
    }

    #[tokio::test]
    async fn deleted_event_is_reported_at_the_next_position() {
        let (_d, p) = closed_log().await;
        tamper(&p, "DELETE FROM events WHERE position = 3", params![]);
        let brk = verify_file(&p).expect_err("a missing event must break the chain");
        assert_eq!(brk.position, 4, "{brk:?}");
    }

    #[tokio::test]
    async fn swapped_events_are_reported() {
        let (_d, p) = closed_log().await;
        let (d2, d5) = (data_at(&p, 2), data_at(&p, 5));
        assert_ne!(d2, d5);
        tamper(
            &p,
            "UPDATE events SET data = ?1 WHERE position = 2",
            params![d5],
        );
        tamper(
            &p,
            "UPDATE events SET data = ?1 WHERE position = 5",
            params![d2],
        );
        let brk = verify_file(&p).expect_err("a reorder must break the chain");
        assert_eq!(brk.position, 2, "{brk:?}");
    }

    #[tokio::test]
    async fn rewritten_event_with_recomputed_hash_is_reported_at_the_next_link() {
        let (_d, p) = closed_log().await;
        let store = SqliteStore::open(&p).expect("open");
        let row = store.read_raw(2, 1).expect("read").remove(0);
        drop(store);
        assert_eq!(row.position, 3);
        // Position 3 is a `SessionFailed`; the forgery is still a valid event.
        let forged = data_at(&p, 3).replacen("cancelled", "no_match", 1);
        assert_ne!(forged, row.data);
        let hash = event_hash(
            &row.prev_hash,
            row.position,
            &row.stream,
            row.revision,
            &row.kind,
            row.version,
            &row.recorded_at,
            &forged,
        );
        tamper(
            &p,
            "UPDATE events SET data = ?1, hash = ?2 WHERE position = 3",
            params![forged, &hash[..]],
        );
        let brk = verify_file(&p).expect_err("the next event no longer links");
        assert_eq!(brk.position, 4, "{brk:?}");
    }

    // --- a failing disk ---------------------------------------------------------------------

    const FAIL_INSERTS: &str = "CREATE TRIGGER fail_inserts BEFORE INSERT ON events \
                                BEGIN SELECT RAISE(ABORT, 'simulated disk failure'); END;";

    /// A store with one event, and a rusqlite connection that has just made every further
    /// insert fail: a trigger that aborts stands in for a failing disk, since the writer's
    /// transaction then fails exactly as it would on an I/O error.
    async fn store_on_a_failing_disk() -> (TempDir, PathBuf, SqliteStore, Connection) {
        let (d, p) = temp();
        let store = SqliteStore::open(&p).expect("open");
        store
            .append(one("ok", Expected::NoStream, 0), at(0))
            .await
            .expect("a healthy append");
        assert!(store.healthy());
        let conn = Connection::open(&p).expect("rusqlite");
        conn.execute_batch(FAIL_INSERTS).expect("create trigger");
        (d, p, store, conn)
    }

    #[tokio::test]
    async fn failed_write_errs_and_refuses_work_until_the_disk_recovers() {
        let (_d, p, store, conn) = store_on_a_failing_disk().await;
        let r = store
            .append(one("doomed", Expected::NoStream, 1), at(1))
            .await;
        assert!(matches!(r, Err(StoreError::Io(_))), "got {r:?}");
        // (Whether the flag is already down when the caller sees the error is the next
        // test's business; here, give the writer a moment.)
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while store.healthy() && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert!(!store.healthy(), "a failed write marks the store unhealthy");

        // While the disk still fails, the store's probes fail too: it stays unhealthy and
        // refuses new work (several probe periods).
        tokio::time::sleep(PROBE_EVERY * 3).await;
        let r = store
            .append(one("refused", Expected::NoStream, 2), at(2))
            .await;
        assert!(
            r.is_err(),
            "an unhealthy store must refuse appends, got {r:?}"
        );
        assert!(!store.healthy());
        assert_eq!(
            positions(&store.read(0, 100).unwrap()),
            [1],
            "nothing half-written"
        );

        // Once the disk is "fixed", a probe succeeds: healthy again without a restart, and
        // the chain continues from the same heads.
        conn.execute_batch("DROP TRIGGER fail_inserts;")
            .expect("drop trigger");
        let deadline = std::time::Instant::now() + PROBE_EVERY * 10;
        while !store.healthy() && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(store.healthy(), "the store recovers once it can write");
        let recs = store
            .append(one("doomed", Expected::NoStream, 1), at(3))
            .await
            .expect("append after recovery");
        assert_eq!(recs[0].position, 2);
        assert_eq!(verify(&store.read_raw(0, 100).unwrap()), Ok(2));
        drop(store);

        // A restart sees the same log.
        let store = SqliteStore::open(&p).expect("reopen");
        assert!(store.healthy());
        let recs = store
            .append(one("after", Expected::NoStream, 4), at(4))
            .await
            .expect("append after restart");
        assert_eq!(recs[0].position, 3);
        assert_eq!(verify(&store.read_raw(0, 100).unwrap()), Ok(3));
    }

    /// `healthy()` is "false after a write failed": a caller that has its error in hand and
    /// asks must already see `false`. Repeated, because getting this wrong is a race.
    #[tokio::test]
    async fn unhealthy_before_the_caller_sees_the_error() {
        let mut raced = 0;
        for round in 0..20 {
            let (_d, _p, store, _conn) = store_on_a_failing_disk().await;
            let r = store
                .append(one("doomed", Expected::NoStream, round), at(1))
                .await;
            assert!(r.is_err(), "got {r:?}");
            if store.healthy() {
                raced += 1;
            }
        }
        assert_eq!(
            raced, 0,
            "in {raced} of 20 rounds healthy() was still true after append returned its error"
        );
    }

    #[tokio::test]
    async fn closed_store_refuses_appends() {
        let (_d, p) = temp();
        let store = SqliteStore::open(&p).expect("open");
        store.close();
        let r = store.append(one("x", Expected::NoStream, 0), at(0)).await;
        assert!(matches!(r, Err(StoreError::Closed)), "got {r:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// The KurrentDB backend
// ---------------------------------------------------------------------------------------------

/// `PALMGATE_KURRENTDB_URL`, or `None` after saying the KurrentDB tests are skipped. They skip
/// even under `PALMGATE_PEERS=required`: KurrentDB is not a peer CI can install (no Debian or
/// PyPI package; the vendor ships a container image, and CI runs no container daemon), so CI
/// compiles and lints the backend (`cargo clippy --features kurrentdb`) and these tests run
/// wherever a server is at hand.
fn kurrentdb_url(test: &str) -> Option<String> {
    match std::env::var("PALMGATE_KURRENTDB_URL") {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            println!("{test}: skipped: PALMGATE_KURRENTDB_URL not set");
            None
        }
    }
}

/// A KurrentDB server named but no backend compiled in is a mistake, not a skip.
#[cfg(not(feature = "kurrentdb"))]
#[test]
fn kurrentdb_contract_needs_the_feature() {
    if kurrentdb_url("kurrentdb_contract_needs_the_feature").is_some() {
        panic!(
            "PALMGATE_KURRENTDB_URL is set but this test binary has no KurrentDB backend: run \
             cargo test --features kurrentdb --test it store_contract"
        );
    }
}

/// Without the feature, `store.url` stops start-up with an error naming the feature.
#[cfg(not(feature = "kurrentdb"))]
#[test]
fn store_url_without_the_feature_is_refused_naming_it() {
    let env = [(
        "PALMGATE_STORE_URL".to_string(),
        "esdb://localhost:2113?tls=false".to_string(),
    )];
    let config = palmgate::config::Config::load(None, &env).expect("a valid configuration");
    let err = match palmgate::app::open_store(&config.store) {
        Ok(_) => panic!("store.url opened a store in a build without the kurrentdb feature"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("`kurrentdb` feature"), "{err}");
}

#[test]
fn store_url_must_be_a_kurrentdb_url() {
    for (url, ok) in [
        ("esdb://localhost:2113?tls=false", true),
        ("esdb+discover://cluster.example:2113", true),
        ("kurrentdb://admin:changeit@localhost:2113", true),
        ("postgres://localhost/palmgate", false),
        ("localhost:2113", false),
    ] {
        let env = [("PALMGATE_STORE_URL".to_string(), url.to_string())];
        let loaded = palmgate::config::Config::load(None, &env);
        assert_eq!(loaded.is_ok(), ok, "{url}: {:?}", loaded.err());
    }
}

#[cfg(feature = "kurrentdb")]
mod kurrentdb {
    use super::*;
    use palmgate::store::KurrentStore;

    /// A fresh, empty log: a KurrentDB stream no test used before.
    fn fresh_stream() -> String {
        format!("palmgate-test-{}", Uuid::new_v4().simple())
    }

    fn open(url: &str, stream: &str) -> Arc<dyn EventStore> {
        Arc::new(KurrentStore::open(url, stream).expect("open the KurrentDB store"))
    }

    /// `Some((url, fresh stream))`, or `None` (skipped) without a server.
    fn server(test: &str) -> Option<(String, String)> {
        kurrentdb_url(test).map(|u| (u, fresh_stream()))
    }

    #[tokio::test]
    async fn positions_revisions_and_reads() {
        let Some((u, s)) = server("positions_revisions_and_reads") else {
            return;
        };
        contract::positions_revisions_and_reads(open(&u, &s).as_ref()).await;
    }

    #[tokio::test]
    async fn paging() {
        let Some((u, s)) = server("paging") else {
            return;
        };
        contract::paging(open(&u, &s).as_ref()).await;
    }

    #[tokio::test]
    async fn expected_revision() {
        let Some((u, s)) = server("expected_revision") else {
            return;
        };
        contract::expected_revision(open(&u, &s).as_ref()).await;
    }

    #[tokio::test]
    async fn atomic_batches() {
        let Some((u, s)) = server("atomic_batches") else {
            return;
        };
        contract::atomic_batches(open(&u, &s).as_ref()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_distinct_streams() {
        let Some((u, s)) = server("concurrent_distinct_streams") else {
            return;
        };
        contract::concurrent_distinct_streams(open(&u, &s)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_race_for_one_stream() {
        let Some((u, s)) = server("concurrent_race_for_one_stream") else {
            return;
        };
        contract::concurrent_race_for_one_stream(open(&u, &s)).await;
    }

    #[tokio::test]
    async fn hash_chain() {
        let Some((u, s)) = server("hash_chain") else {
            return;
        };
        contract::hash_chain(open(&u, &s).as_ref()).await;
    }

    #[tokio::test]
    async fn decode_exact() {
        let Some((u, s)) = server("decode_exact") else {
            return;
        };
        contract::decode_exact(open(&u, &s).as_ref()).await;
    }

    #[tokio::test]
    async fn durable_across_reopen() {
        let Some((u, s)) = server("durable_across_reopen") else {
            return;
        };
        contract::durable_across_reopen(|| open(&u, &s)).await;
    }

    #[tokio::test]
    async fn forgotten_streams() {
        let Some((u, s)) = server("forgotten_streams") else {
            return;
        };
        contract::forgotten_streams(open(&u, &s).as_ref()).await;
    }

    /// No server at the URL: `open` fails with an error (no panic, in or outside a runtime) —
    /// needs no KurrentDB, so it always runs with the feature.
    #[tokio::test]
    async fn unreachable_server_is_an_error_at_open() {
        let started = std::time::Instant::now();
        // Plain and TLS (the TLS client config is built with the process's rustls provider).
        for url in [
            "esdb://127.0.0.1:9?tls=false&maxDiscoverAttempts=2&discoveryInterval=50",
            "esdb://127.0.0.1:9?maxDiscoverAttempts=2&discoveryInterval=50",
        ] {
            match KurrentStore::open(url, &fresh_stream()) {
                Err(StoreError::Io(e)) => {
                    println!("{url}: {e}");
                    assert!(e.contains("KurrentDB"), "{e}");
                }
                Err(e) => panic!("expected an I/O error, got {e:?}"),
                Ok(_) => panic!("opened a store with no server"),
            }
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(30));
        let bad = KurrentStore::open("esdb://", &fresh_stream());
        assert!(
            matches!(bad, Err(StoreError::Io(_))),
            "a malformed URL is refused"
        );
    }

    // --- two gateways on one log ------------------------------------------------------------

    /// The next batch `feed` delivers, within 10 s.
    async fn next_batch(
        feed: &mut tokio::sync::mpsc::UnboundedReceiver<Vec<Recorded>>,
    ) -> Vec<Recorded> {
        tokio::time::timeout(std::time::Duration::from_secs(10), feed.recv())
            .await
            .expect("the other gateway's events arrive within 10 s")
            .expect("the feed is open")
    }

    /// Gateway B follows what gateway A appends (catch-up subscription), never its own
    /// appends; an append by B after A's is positioned after them, links to them, and sees
    /// their stream heads (a stale expectation is a conflict with A's revision).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_gateways_follow_each_other() {
        let Some((u, s)) = server("two_gateways_follow_each_other") else {
            return;
        };
        let a = open(&u, &s);
        let b = open(&u, &s);
        let mut b_feed = b.follow_others(0).expect("a shared log has a feed");

        let from_a = a
            .append(one("user-1", Expected::NoStream, 0), at(0))
            .await
            .expect("A appends");
        assert_eq!(next_batch(&mut b_feed).await, from_a, "B follows A");

        // B's own append is not fed back to B; its stale expectation on user-1 conflicts.
        let r = b.append(one("user-1", Expected::NoStream, 1), at(1)).await;
        assert_conflict(r, "user-1", Expected::NoStream, Some(0));
        let from_b = b
            .append(one("user-1", Expected::Revision(0), 2), at(2))
            .await
            .expect("B appends after A");
        assert_eq!((from_b[0].position, from_b[0].revision), (2, 1));
        assert_eq!(
            from_b[0].prev_hash, from_a[0].hash,
            "one chain across gateways"
        );

        // A appends without having heard of B's event (its subscription may lag): the log's
        // head moved, so A catches up, re-seals after B's event and retries.
        let again = a
            .append(one("door-1", Expected::Any, 3), at(3))
            .await
            .expect("A appends after B");
        assert_eq!(again[0].position, 3);
        assert_eq!(again[0].prev_hash, from_b[0].hash);
        assert_eq!(next_batch(&mut b_feed).await, again, "B follows A again");

        assert_eq!(verify(&read_all_raw(a.as_ref())), Ok(3));
        assert_eq!(read_all(a.as_ref()), read_all(b.as_ref()));
    }

    /// Two gateways racing for one stream with NoStream: exactly one wins, across gateways.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_gateways_race_for_one_stream() {
        let Some((u, s)) = server("two_gateways_race_for_one_stream") else {
            return;
        };
        let gateways = [open(&u, &s), open(&u, &s)];
        for round in 0..10u32 {
            let race = format!("race-{round}");
            let tasks: Vec<_> = gateways
                .iter()
                .enumerate()
                .map(|(who, g)| {
                    let (g, race) = (g.clone(), race.clone());
                    tokio::spawn(async move {
                        g.append(one(&race, Expected::NoStream, who as u32), at(0))
                            .await
                    })
                })
                .collect();
            let mut won = 0;
            for t in tasks {
                match t.await.expect("task") {
                    Ok(_) => won += 1,
                    Err(StoreError::Conflict { stream, actual, .. }) => {
                        assert_eq!((stream, actual), (race.clone(), Some(0)));
                    }
                    Err(e) => panic!("round {round}: {e:?}"),
                }
            }
            assert_eq!(won, 1, "round {round}: exactly one gateway wins");
        }
        let n = read_all(gateways[0].as_ref()).len() as u64;
        assert_eq!(n, 10);
        assert_eq!(verify(&read_all_raw(gateways[1].as_ref())), Ok(n));
    }

    /// A follower registered late gets what it has not seen (after its position), except the
    /// events this store appended itself.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn follower_backfills_other_gateways_events() {
        let Some((u, s)) = server("follower_backfills_other_gateways_events") else {
            return;
        };
        let a = open(&u, &s);
        let b = open(&u, &s);
        let first = a
            .append(one("x", Expected::NoStream, 0), at(0))
            .await
            .expect("A");
        b.append(one("y", Expected::Any, 1), at(1))
            .await
            .expect("B, its own");
        let second = a
            .append(one("x", Expected::Revision(0), 2), at(2))
            .await
            .expect("A again");
        // B's state was rebuilt at 0 and it has appended position 2 itself.
        let mut feed = b.follow_others(0).expect("feed");
        let mut got = Vec::new();
        while got.len() < 2 {
            got.extend(next_batch(&mut feed).await);
        }
        assert_eq!(got, [first[0].clone(), second[0].clone()]);
    }
}
