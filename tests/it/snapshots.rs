//! State snapshots (issue 6). Start-up from a snapshot plus the log's tail gives exactly the
//! state a fold of the whole log gives; a snapshot that does not belong to the log (another
//! log, changed bytes, another schema, past the log's end) is ignored and the log folded; and
//! the real server, killed with SIGKILL and restarted after many events, answers as before —
//! sessions, users (the matcher index rebuilt from a snapshot-loaded state) and webhooks.

use crate::fixtures::{ADMIN_TOKEN, Options, TestServer};
use chrono::Duration;
use palmgate::app::snapshot;
use palmgate::core::snapshot::{SCHEMA, decode, encode};
use palmgate::core::{PartnerId, ReaderId, Rules, State, StreamAppend};
use palmgate::mqtt::simulate::{SimOptions, SimReader};
use palmgate::store::{EventStore, SnapshotDir, SqliteStore};
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration as StdDuration;

mod mixed_log;

use mixed_log::{id16, mixed_log, t0};

/// Writes `log` into a fresh SQLite store at `path`.
async fn write_log(path: &Path, log: Vec<Vec<StreamAppend>>) -> SqliteStore {
    let store = SqliteStore::open(path).expect("store opens");
    for (i, batch) in log.into_iter().enumerate() {
        store
            .append(batch, t0() + Duration::seconds(i as i64))
            .await
            .expect("append");
    }
    store
}

/// The fold of events `1..=upto` (the whole log when `None`), snapshots untouched.
fn fold(store: &dyn EventStore, upto: Option<u64>) -> State {
    let mut state = State::new(Rules::default());
    let mut after = 0;
    loop {
        let page = store.read(after, 1000).expect("read");
        let Some(last) = page.last() else { break };
        after = last.position;
        for r in page.iter().filter(|r| upto.is_none_or(|u| r.position <= u)) {
            state.evolve(r);
        }
    }
    state
}

fn head(store: &dyn EventStore) -> u64 {
    fold(store, None).position()
}

fn dir(store: &dyn EventStore) -> &SnapshotDir {
    store.snapshots().expect("the SQLite store keeps snapshots")
}

/// Asserts `a == b` without printing two whole states.
fn assert_same(a: &State, b: &State, what: &str) {
    assert!(a == b, "{what}: the states differ");
    assert_eq!(encode(a), encode(b), "{what}: the encodings differ");
}

#[tokio::test]
async fn snapshot_plus_tail_equals_the_full_fold() {
    let tmp = tempfile::tempdir().unwrap();
    let store = write_log(&tmp.path().join("events.db"), mixed_log(600)).await;
    let full = fold(&store, None);
    let n = full.position();
    assert!(n > 2500, "a long log: {n} events");
    // The generated log reaches every part of the state.
    assert!(full.open_session_ids().len() > 50, "pending sessions");
    assert!(full.users().count() > 5 && full.webhook(PartnerId::from_random(id16(0, 1))).is_some());
    assert!(full.next_deadline().is_some());
    assert!(full.policy.is_some() && full.lockdown);

    // Encoding is canonical and decoding gives the same state back.
    let bytes = encode(&full);
    assert_eq!(
        bytes,
        encode(&fold(&store, None)),
        "equal states, equal bytes"
    );
    assert_same(
        &decode(&bytes, Rules::default()).unwrap(),
        &full,
        "round trip",
    );

    // Without a snapshot, start-up folds everything.
    let loaded = snapshot::load(&store, Rules::default()).unwrap();
    assert_eq!((loaded.snapshot, loaded.folded), (None, n));
    assert_same(&loaded.state, &full, "full fold");

    for cut in [1, 17, n / 3, n / 2 + 1, n - 1, n] {
        let at_cut = fold(&store, Some(cut));
        let info = snapshot::write(&store, &at_cut).unwrap().expect("written");
        assert_eq!((info.position, info.schema), (cut, SCHEMA));
        let loaded = snapshot::load(&store, Rules::default()).unwrap();
        assert_eq!(loaded.snapshot, Some(cut), "the snapshot at {cut} is used");
        assert_eq!(loaded.folded, n - cut);
        assert_same(&loaded.state, &full, &format!("snapshot at {cut} + tail"));
    }
    // Only the newest two are kept.
    assert_eq!(dir(&store).list().unwrap().len(), 2);

    // A snapshot, then more events, then start-up: snapshot + the new tail.
    let more: Vec<Vec<StreamAppend>> = mixed_log(700).into_iter().skip(601).collect();
    for (i, batch) in more.into_iter().enumerate() {
        store
            .append(
                batch,
                t0() + Duration::hours(1) + Duration::seconds(i as i64),
            )
            .await
            .unwrap();
    }
    let loaded = snapshot::load(&store, Rules::default()).unwrap();
    assert_eq!(loaded.snapshot, Some(n));
    assert_same(
        &loaded.state,
        &fold(&store, None),
        "snapshot + a later tail",
    );
}

/// Waits until the newest snapshot is at `position`.
async fn newest_becomes(store: &dyn EventStore, position: u64) {
    let end = std::time::Instant::now() + StdDuration::from_secs(20);
    while dir(store).list().unwrap().first().map(|i| i.position) != Some(position) {
        assert!(std::time::Instant::now() < end, "no snapshot at {position}");
        tokio::time::sleep(StdDuration::from_millis(20)).await;
    }
}

/// The background writer writes the state it is handed, once a snapshot is due and only if
/// the state holds every event up to its position: a state missing an earlier event (appends
/// committed together land in any order) is passed over until the gap is folded. Its snapshot
/// is exactly the fold of the log up to there, and the next is due `every` events later (or as
/// many as the state holds records, up to three times `every`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_writer_snapshots_only_a_due_state_holding_every_event_up_to_it() {
    let tmp = tempfile::tempdir().unwrap();
    let store: std::sync::Arc<SqliteStore> =
        std::sync::Arc::new(write_log(&tmp.path().join("events.db"), mixed_log(300)).await);
    let events = store.read(0, 100_000).unwrap();
    let n = events.len() as u64;
    assert!(n > 600, "a long log: {n} events");
    let writer = snapshot::Snapshotter::start(store.clone(), 100, 0);

    // Not due yet: nothing is handed over.
    let mut state = State::new(Rules::default());
    for r in &events[..99] {
        state.evolve(r);
    }
    assert!(state.is_prefix() && !writer.due_at(state.position()));
    writer.observe(&state);

    // Due, but an event is not folded in yet: passed over. (One whose stream has no later
    // event up to 300, as in the gateway, where appends to one stream land in order.)
    let g = (250..300u64)
        .rev()
        .find(|&g| {
            let stream = &events[g as usize - 1].stream;
            events[g as usize..300].iter().all(|r| &r.stream != stream)
        })
        .expect("an event on its own stream near 300");
    let mut gap = State::new(Rules::default());
    for r in events[..300].iter().filter(|r| r.position != g) {
        gap.evolve(r);
    }
    assert_eq!(gap.position(), 300);
    assert!(!gap.is_prefix());
    writer.observe(&gap);
    tokio::time::sleep(StdDuration::from_millis(300)).await;
    assert!(
        dir(&*store).list().unwrap().is_empty(),
        "no snapshot of a state with a gap"
    );
    assert!(writer.due_at(300), "still due");

    // The gap folded in (out of order): that state is written, and equals the ordered fold.
    gap.evolve(&events[g as usize - 1]);
    assert!(gap.is_prefix());
    writer.observe(&gap);
    newest_becomes(&*store, 300).await;
    let written = |store: &SqliteStore| {
        let newest = dir(store).list().unwrap().remove(0);
        decode(&dir(store).read(&newest).unwrap(), Rules::default()).unwrap()
    };
    assert_same(
        &written(&store),
        &fold(&*store, Some(300)),
        "snapshot at 300",
    );

    // The next is due an interval later, whatever is observed before.
    let end = std::time::Instant::now() + StdDuration::from_secs(20);
    while !writer.due_at(u64::MAX - 1) {
        assert!(std::time::Instant::now() < end, "the writer never finished");
        tokio::time::sleep(StdDuration::from_millis(10)).await;
    }
    let mut next = 301;
    while !writer.due_at(next) {
        next += 1;
    }
    assert!((400..=600).contains(&next), "next due at {next}");
    let mut state = gap;
    for r in &events[300..next as usize - 1] {
        state.evolve(r);
    }
    writer.observe(&state);
    tokio::time::sleep(StdDuration::from_millis(200)).await;
    assert_eq!(dir(&*store).list().unwrap()[0].position, 300, "not due yet");
    state.evolve(&events[next as usize - 1]);
    writer.observe(&state);
    newest_becomes(&*store, next).await;
    assert_same(
        &written(&store),
        &fold(&*store, Some(next)),
        "the next snapshot",
    );
    drop(writer);
}

/// A state that stays due without being the fold of every event up to its position is
/// reported once `every` events have passed since the snapshot fell due, once per such
/// stretch; a state that is such a fold again ends the stretch and is snapshotted.
#[tokio::test]
async fn a_state_that_stays_due_with_a_gap_is_reported_once_per_stretch() {
    let tmp = tempfile::tempdir().unwrap();
    let store: std::sync::Arc<SqliteStore> =
        std::sync::Arc::new(write_log(&tmp.path().join("events.db"), mixed_log(400)).await);
    let events = store.read(0, 100_000).unwrap();
    assert!(events.len() > 420, "a long log: {} events", events.len());
    let writer = snapshot::Snapshotter::start(store.clone(), 100, 0);
    // Event `g` is held back, as a durable event no landing folded in (one whose stream has
    // no later event up to 260, as in the gateway, where appends to one stream land in order).
    let g = (40..100u64)
        .find(|&g| {
            let stream = &events[g as usize - 1].stream;
            events[g as usize..260].iter().all(|r| &r.stream != stream)
        })
        .expect("an event on its own stream");
    let mut state = State::new(Rules::default());
    let fold_to = |state: &mut State, to: usize| {
        for r in &events[state.position() as usize..to] {
            if r.position != g {
                state.evolve(r);
            }
        }
    };
    fold_to(&mut state, 150);
    writer.observe(&state);
    fold_to(&mut state, 199);
    writer.observe(&state);
    assert!(!state.is_prefix() && writer.due_at(199));
    assert_eq!(writer.stalls(), 0, "due for 99 events: not reported yet");
    fold_to(&mut state, 200);
    writer.observe(&state);
    assert_eq!(writer.stalls(), 1, "due for 100 events with a gap");
    fold_to(&mut state, 260);
    writer.observe(&state);
    assert_eq!(writer.stalls(), 1, "once per stretch");
    tokio::time::sleep(StdDuration::from_millis(200)).await;
    assert!(dir(&*store).list().unwrap().is_empty(), "nothing written");

    // The gap folded in: the stretch ends, and the state is snapshotted.
    state.evolve(&events[g as usize - 1]);
    assert!(state.is_prefix());
    writer.observe(&state);
    newest_becomes(&*store, 260).await;
    assert_eq!(writer.stalls(), 1);

    // A later stretch is reported again.
    let end = std::time::Instant::now() + StdDuration::from_secs(20);
    while !writer.due_at(u64::MAX - 1) {
        assert!(std::time::Instant::now() < end, "the writer never finished");
        tokio::time::sleep(StdDuration::from_millis(10)).await;
    }
    let mut due = 261;
    while !writer.due_at(due) {
        due += 1;
    }
    assert!(events.len() >= due as usize + 100, "due at {due}");
    let mut gap = State::new(Rules::default());
    for r in events[..due as usize + 100]
        .iter()
        .filter(|r| r.position != due)
    {
        gap.evolve(r);
    }
    assert!(!gap.is_prefix());
    writer.observe(&gap);
    assert_eq!(writer.stalls(), 2, "a second stretch (due at {due})");
    drop(writer);
}

/// Replaces `len` bytes at `at` in a snapshot file.
fn patch(path: &Path, at: usize, bytes: &[u8]) {
    let mut data = std::fs::read(path).unwrap();
    data[at..at + bytes.len()].copy_from_slice(bytes);
    std::fs::write(path, data).unwrap();
}

#[tokio::test]
async fn a_snapshot_that_does_not_match_the_log_is_ignored() {
    let tmp = tempfile::tempdir().unwrap();
    let store = write_log(&tmp.path().join("events.db"), mixed_log(200)).await;
    let full = fold(&store, None);
    let n = full.position();
    let newest = |store: &SqliteStore| dir(store).list().unwrap().remove(0);

    // Another log, as long as this one, whose snapshot is copied here: the hash at its position
    // is not this log's.
    let other_dir = tempfile::tempdir().unwrap();
    let other = write_log(
        &other_dir.path().join("events.db"),
        mixed_log(230).into_iter().skip(3).collect(),
    )
    .await;
    let at = head(&store).min(head(&other)) - 5;
    let foreign = snapshot::write(&other, &fold(&other, Some(at)))
        .unwrap()
        .unwrap();
    std::fs::create_dir_all(dir(&store).path()).unwrap();
    let copied = dir(&store).path().join(foreign.path().file_name().unwrap());
    std::fs::copy(foreign.path(), &copied).unwrap();
    let loaded = snapshot::load(&store, Rules::default()).unwrap();
    assert_eq!((loaded.snapshot, loaded.folded), (None, n));
    assert_same(&loaded.state, &full, "another log's snapshot");
    std::fs::remove_file(&copied).unwrap();

    // A changed payload byte: the digest no longer matches.
    snapshot::write(&store, &fold(&store, Some(n / 2))).unwrap();
    let info = newest(&store);
    let len = std::fs::metadata(info.path()).unwrap().len() as usize;
    patch(info.path(), len - 10, b"X");
    let loaded = snapshot::load(&store, Rules::default()).unwrap();
    assert_eq!(loaded.snapshot, None);
    assert_same(&loaded.state, &full, "changed payload");

    // A good older snapshot stays the fallback when the newest is bad.
    snapshot::write(&store, &fold(&store, Some(n / 4))).unwrap();
    snapshot::write(&store, &fold(&store, Some(n / 3))).unwrap();
    let bad = newest(&store);
    assert_eq!(bad.position, n / 3);
    patch(bad.path(), 20, &[0xAA; 4]); // the recorded event hash
    let loaded = snapshot::load(&store, Rules::default()).unwrap();
    assert_eq!(loaded.snapshot, Some(n / 4), "the older snapshot is used");
    assert_same(&loaded.state, &full, "older snapshot + tail");

    // Another state schema: ignored.
    std::fs::remove_dir_all(dir(&store).path()).unwrap();
    snapshot::write(&store, &fold(&store, Some(n - 3))).unwrap();
    patch(newest(&store).path(), 8, &(SCHEMA + 1).to_le_bytes());
    let loaded = snapshot::load(&store, Rules::default()).unwrap();
    assert_eq!(loaded.snapshot, None, "another schema");
    assert_same(&loaded.state, &full, "another schema");

    // A snapshot past the log's end (the log was replaced by a shorter one).
    std::fs::remove_dir_all(dir(&store).path()).unwrap();
    let longer_dir = tempfile::tempdir().unwrap();
    let longer = write_log(&longer_dir.path().join("events.db"), mixed_log(260)).await;
    let past = snapshot::write(&longer, &fold(&longer, None))
        .unwrap()
        .unwrap();
    assert!(past.position > n);
    std::fs::create_dir_all(dir(&store).path()).unwrap();
    std::fs::copy(
        past.path(),
        dir(&store).path().join(past.path().file_name().unwrap()),
    )
    .unwrap();
    let loaded = snapshot::load(&store, Rules::default()).unwrap();
    assert_eq!(loaded.snapshot, None, "a snapshot past the end");
    assert_same(&loaded.state, &full, "a snapshot past the end");
    // The next snapshot written here removes it.
    snapshot::write(&store, &full).unwrap();
    let positions: Vec<u64> = dir(&store)
        .list()
        .unwrap()
        .iter()
        .map(|i| i.position)
        .collect();
    assert_eq!(positions, [n]);
}

// ---------------------------------------------------------------------------------------------
// The real server, restarted with SIGKILL
// ---------------------------------------------------------------------------------------------

fn free_port() -> u16 {
    crate::readers::free_port()
}

/// A snapshot every `every` events, and the embedded broker on a known port (the fixture
/// writes both tables, so its config is patched before the first launch).
fn prepare(every: u64) -> (TestServer, String) {
    let s = TestServer::prepare(
        Options::default()
            .per_minute(1_000_000)
            .extra_toml("[webhooks]\nallow_networks = [\"127.0.0.0/8\"]"),
    );
    let port = free_port();
    let text = std::fs::read_to_string(s.config_path()).unwrap();
    let patched = text
        .replacen(
            "[store]\n",
            &format!("[store]\nsnapshot_every = {every}\n"),
            1,
        )
        .replacen(
            "[mqtt.embedded]\nlisten = \"127.0.0.1:0\"",
            &format!("[mqtt.embedded]\nlisten = \"127.0.0.1:{port}\""),
            1,
        );
    assert_ne!(text, patched);
    std::fs::write(s.config_path(), patched).unwrap();
    (s, format!("mqtt://127.0.0.1:{port}"))
}

async fn reader(mqtt: &str, id: &str, palm: &str, seed: u64) -> SimReader {
    SimReader::connect(SimOptions {
        mqtt_url: mqtt.to_string(),
        topic_prefix: "palmgate".into(),
        reader: ReaderId(id.into()),
        palm: palm.into(),
        dim: 128,
        quality: 0.95,
        liveness: true,
        seed,
    })
    .await
    .expect("simulated reader connects")
}

async fn get(s: &TestServer, key: &str, path: &str) -> (u16, Value) {
    let r = s
        .get(path)
        .header("x-api-key", key)
        .send()
        .await
        .expect("GET");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Polls the session until it has ended.
async fn ended(s: &TestServer, key: &str, id: &str) -> Value {
    let end = std::time::Instant::now() + StdDuration::from_secs(20);
    loop {
        let (status, v) = get(s, key, &format!("/v1/sessions/{id}")).await;
        assert_eq!(status, 200, "{v}");
        if v["state"] != "pending" {
            return v;
        }
        assert!(
            std::time::Instant::now() < end,
            "session {id} still pending: {v}"
        );
        tokio::time::sleep(StdDuration::from_millis(25)).await;
    }
}

/// Waits until the admin API lists `reader` online (so captures reach a subscribed gateway).
async fn online(s: &TestServer, reader: &str) {
    let end = std::time::Instant::now() + StdDuration::from_secs(20);
    loop {
        let v: Value = s
            .get("/admin/v1/readers")
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("readers")
            .json()
            .await
            .expect("readers JSON");
        if v.as_array()
            .is_some_and(|l| l.iter().any(|r| r["id"] == reader && r["online"] == true))
        {
            return;
        }
        assert!(
            std::time::Instant::now() < end,
            "{reader} never online: {v}"
        );
        tokio::time::sleep(StdDuration::from_millis(25)).await;
    }
}

/// A session started with `kind` and scanned by `r` (its palm); the ended session.
async fn scan(s: &TestServer, key: &str, r: &mut SimReader, kind: &str, user: &str) -> Value {
    let a = if kind == "enroll" {
        s.enroll(key, "", &json!({ "external_id": user })).await
    } else {
        s.identify(key, "").await
    };
    assert_eq!(a.status, 201, "{}", a.text);
    let v = a.json();
    let token = v["url"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    r.capture(Some(&token)).await.expect("capture");
    ended(s, key, v["session_id"].as_str().unwrap()).await
}

fn snapshot_positions(s: &TestServer) -> Vec<u64> {
    SnapshotDir::beside(&s.store_path())
        .list()
        .unwrap()
        .iter()
        .map(|i| i.position)
        .collect()
}

/// What the API says about `sessions`, `users` and the webhook.
async fn answers(s: &TestServer, key: &str, sessions: &[String], users: &[&str]) -> Vec<Value> {
    let mut out = vec![];
    for id in sessions {
        out.push(get(s, key, &format!("/v1/sessions/{id}")).await.1);
    }
    for u in users {
        let (status, v) = get(s, key, &format!("/v1/users/{u}")).await;
        out.push(json!({ "status": status, "user": v }));
    }
    out.push(get(s, key, "/v1/webhook").await.1);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_restarted_after_many_events_answers_as_before() {
    // A webhook receiver counting deliveries per session.
    use std::sync::{Arc, Mutex};
    type Seen = Arc<Mutex<Vec<Value>>>;
    let seen: Seen = Arc::default();
    let hook_app = axum::Router::new()
        .route(
            "/hook",
            axum::routing::post(
                |axum::extract::State(seen): axum::extract::State<Seen>,
                 body: axum::body::Bytes| async move {
                    seen.lock()
                        .unwrap()
                        .push(serde_json::from_slice(&body).unwrap());
                    axum::http::StatusCode::OK
                },
            ),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, hook_app).await });
    let delivered = |id: &str| {
        seen.lock()
            .unwrap()
            .iter()
            .any(|b| b["data"]["session_id"] == id)
    };

    let (mut s, mqtt) = prepare(40);
    s.launch().await;
    let (_, key) = s.create_partner("acme").await;
    let r = s
        .client
        .put(s.url("/v1/webhook"))
        .header("x-api-key", &key)
        .json(&json!({ "url": hook }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);

    // Three users enrolled by palm, one of them erased; many identify sessions.
    let mut alice = reader(&mqtt, "desk-alice", "alice", 1).await;
    let mut bob = reader(&mqtt, "desk-bob", "bob", 2).await;
    let mut carol = reader(&mqtt, "desk-carol", "carol", 3).await;
    for r in ["desk-alice", "desk-bob", "desk-carol"] {
        online(&s, r).await;
    }
    let mut sessions = vec![];
    for (r, user) in [
        (&mut alice, "alice"),
        (&mut bob, "bob"),
        (&mut carol, "carol"),
    ] {
        let v = scan(&s, &key, r, "enroll", user).await;
        assert_eq!(v["state"], "completed", "{v}");
        sessions.push(v["session_id"].as_str().unwrap().to_string());
    }
    let r = s
        .client
        .delete(s.url("/v1/users/carol"))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    // Enough events that a snapshot past 120 is due whatever positions the earlier ones took
    // (each interval is at most 3 × 40 events): ~250 events.
    for i in 0..160 {
        let a = s.identify(&key, "").await;
        assert_eq!(a.status, 201, "{}", a.text);
        let id = a.json()["session_id"].as_str().unwrap().to_string();
        if i % 2 == 0 {
            assert_eq!(s.cancel(&key, &id).await.status, 200);
        }
        sessions.push(id);
    }
    let v = scan(&s, &key, &mut alice, "identify", "").await;
    assert_eq!(
        (v["state"].as_str(), v["external_id"].as_str()),
        (Some("completed"), Some("alice"))
    );
    sessions.push(v["session_id"].as_str().unwrap().to_string());

    // The background writer has written snapshots, well after the first `every` events.
    let end = std::time::Instant::now() + StdDuration::from_secs(20);
    while snapshot_positions(&s).first().is_none_or(|p| *p < 120) {
        assert!(
            std::time::Instant::now() < end,
            "no snapshot: {:?}",
            snapshot_positions(&s)
        );
        tokio::time::sleep(StdDuration::from_millis(50)).await;
    }
    let users = ["alice", "bob", "carol", "nobody"];
    let before = answers(&s, &key, &sessions, &users).await;
    assert_eq!(before[sessions.len()]["status"], 200);
    assert_eq!(
        before[sessions.len() + 2]["status"],
        404,
        "carol was erased"
    );

    // kill -9, restart: from the newest snapshot plus the tail.
    s.restart().await;
    let log = s.stderr_log();
    let rebuilt: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("projections rebuilt"))
        .collect();
    assert_eq!(rebuilt.len(), 2, "{log}");
    assert!(rebuilt[1].contains("snapshot="), "{}", rebuilt[1]);
    assert!(!log.contains("snapshot ignored"), "{log}");
    assert_eq!(answers(&s, &key, &sessions, &users).await, before);

    // The matcher index was rebuilt from the snapshot-loaded users: alice and bob match,
    // carol (erased) does not. New readers: once one is listed online, the restarted gateway
    // is subscribed.
    drop((alice, bob, carol));
    let mut alice = reader(&mqtt, "kiosk-alice", "alice", 11).await;
    let mut bob = reader(&mqtt, "kiosk-bob", "bob", 12).await;
    let mut carol = reader(&mqtt, "kiosk-carol", "carol", 13).await;
    for r in ["kiosk-alice", "kiosk-bob", "kiosk-carol"] {
        online(&s, r).await;
    }
    let mut outcomes = vec![];
    for r in [&mut alice, &mut bob, &mut carol] {
        let v = scan(&s, &key, r, "identify", "").await;
        outcomes.push((
            v["state"].clone(),
            v["external_id"].clone(),
            v["fail_reason"].clone(),
        ));
        sessions.push(v["session_id"].as_str().unwrap().to_string());
    }
    assert_eq!(
        outcomes,
        [
            (json!("completed"), json!("alice"), Value::Null),
            (json!("completed"), json!("bob"), Value::Null),
            (json!("failed"), Value::Null, json!("no_match")),
        ]
    );
    // Webhooks still go out, for sessions before and after the restart.
    let end = std::time::Instant::now() + StdDuration::from_secs(20);
    while !sessions[sessions.len() - 3..]
        .iter()
        .all(|id| delivered(id))
    {
        assert!(
            std::time::Instant::now() < end,
            "webhooks after the restart"
        );
        tokio::time::sleep(StdDuration::from_millis(50)).await;
    }
    assert!(delivered(&sessions[0]), "the first enrollment's webhook");

    // Every snapshot made unusable: the restart folds the whole log, with a log line, and
    // answers the same.
    let before = answers(&s, &key, &sessions, &users).await;
    s.kill9();
    for info in SnapshotDir::beside(&s.store_path()).list().unwrap() {
        patch(info.path(), 100, b"tampered");
    }
    s.launch().await;
    let log = s.stderr_log();
    assert!(log.contains("snapshot ignored"), "{log}");
    assert!(
        log.contains("no usable snapshot; folding the whole log"),
        "{log}"
    );
    assert_eq!(answers(&s, &key, &sessions, &users).await, before);
}
