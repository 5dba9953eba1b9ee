//! The crash suite (issue 8): mixed load against the real binary, SIGKILLed at seeded random
//! moments — at least 50 times a run — and checked after every restart.
//!
//! The load, per life of the server: two partner clients enrolling and identifying over HTTP
//! (and cancelling some of their sessions), each with a desk reader completing about half of
//! those sessions with a palm capture; a door reader scanning three palms at a door whose coil
//! is on an in-process simulated Modbus board (granted, denied with a level missing, no match);
//! and every session end and door decision about the partner's users sent as a webhook to a
//! receiver in this test, which answers 200 after a short random delay (so some attempts are
//! in flight at a kill) or, for one delivery in eight during the first 30 s, 500 to its first
//! attempt (so sequences of attempts cross kills too).
//!
//! A kill comes after a seeded random delay, or right after the door's coil turned ON (a
//! pulse cut in the middle), or right after a seeded number of 201s. After each restart:
//! - every 201 the clients received names a session the server still knows
//!   (`GET /v1/sessions/{id}` 200), and every cancel answered 200 left it `failed/cancelled`;
//! - every grant a reader was told about (`result`, `granted: true`) is a granted
//!   `DoorDecided` of that capture in the log (`GET /admin/v1/events`);
//! - the log did not lose its tail (the last event read before the kill reads the same), and
//!   `palmgate audit verify` passes (hash chain, every decision re-derived);
//! - the coil reads OFF within the pulse plus the reconnection time.
//!
//! At the end, once the outbox is empty, webhooks are checked against SPEC 4's "exactly once
//! per `X-Webhook-Id` attempt sequence", which here means, for each delivery id:
//! 1. every request carried the same bytes, and the attempt numbers run 1, 2, ... with no gap;
//! 2. an attempt number is sent again only by a later life of the server (the attempt was in
//!    flight, its outcome unrecorded, when the server was killed) — never twice by one life;
//! 3. a request the receiver answered 2xx is followed by another only across a kill (the
//!    documented at-least-once re-send of an attempt whose answer died with the server);
//! 4. the log records each attempt number once, the last one delivered, and it is the
//!    attempt of the receiver's last, 2xx-answered request; nothing arrives afterwards.
//!
//! Also: no coil ON write without a granted decision in the log (each pulse follows a durable
//! grant). `PALMGATE_CRASH_SEED` (default fixed) and `PALMGATE_CRASH_KILLS` (default 50)
//! vary the run; the summary line is printed (`cargo test crash_suite -- --nocapture`).

use crate::doors::{Layout, new_board, site_doc};
use crate::fixtures::{ADMIN_TOKEN, Options, TestServer};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use palmgate::core::ReaderId;
use palmgate::mqtt::simulate::{SimError, SimOptions, SimReader};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::Instant;

const DEFAULT_SEED: u64 = 0x5EED_0008;
const DEFAULT_KILLS: usize = 50;
const PULSE_MS: u32 = 300;
/// The coil must read OFF this long after the restarted server printed its listening line.
const LOCKED_WITHIN: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Helpers shared with the fault suite
// ---------------------------------------------------------------------------------------------

/// `palmgate audit verify --config CONFIG` (the real binary, no `PALMGATE_*` from this
/// process's environment): (exit 0, stdout + stderr).
pub(crate) fn audit_verify(config: &Path) -> (bool, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_palmgate"));
    cmd.args(["audit", "verify", "--config"]).arg(config);
    for (k, _) in std::env::vars() {
        if k.starts_with("PALMGATE_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd.output().expect("run palmgate audit verify");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A simulated reader `id` with palm `palm` on the broker at `mqtt`.
pub(crate) async fn reader(
    mqtt: &str,
    id: &str,
    palm: &str,
    seed: u64,
) -> Result<SimReader, SimError> {
    SimReader::connect(SimOptions {
        mqtt_url: mqtt.to_string(),
        topic_prefix: "palmgate".into(),
        reader: ReaderId(id.into()),
        palm: palm.into(),
        dim: 128,
        quality: 0.93,
        liveness: true,
        seed,
    })
    .await
}

/// The next command `pred` accepts within `within` (others are skipped); `None` on time-out.
pub(crate) async fn next_command_where(
    r: &mut SimReader,
    within: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Option<Value> {
    let end = Instant::now() + within;
    loop {
        let left = end.checked_duration_since(Instant::now())?;
        let c = r.next_command(left).await?;
        if pred(&c) {
            return Some(c);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Seeded randomness
// ---------------------------------------------------------------------------------------------

/// SplitMix64: small, seeded, good enough to pick moments and operations.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo).max(1)
    }
    /// True with probability `percent`/100.
    fn percent(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    let parsed = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={v:?} is not a number")))
}

/// FNV-1a: a stable hash of a delivery id, for the receiver's choices.
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

// ---------------------------------------------------------------------------------------------
// The webhook receiver
// ---------------------------------------------------------------------------------------------

/// One request the receiver got.
#[derive(Clone, Debug)]
struct Receipt {
    id: String,
    attempt: u32,
    body: Vec<u8>,
    /// Which life of the server sent it (the number of restarts begun before the receiver
    /// handled it).
    life: u64,
    /// What the receiver answered (a 2xx may have died with the server).
    answered: u16,
}

struct Hooks {
    receipts: Mutex<Vec<Receipt>>,
    life: AtomicU64,
    /// First attempts of one delivery in eight are answered 500 until then.
    fail_until: Instant,
}

async fn hook(State(h): State<Arc<Hooks>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let id = header("x-webhook-id");
    let attempt: u32 = header("x-webhook-attempt").parse().unwrap_or(0);
    let hash = fnv(&id);
    let answered = if attempt == 1 && hash.is_multiple_of(8) && Instant::now() < h.fail_until {
        500
    } else {
        200
    };
    h.receipts.lock().unwrap().push(Receipt {
        id,
        attempt,
        body: body.to_vec(),
        life: h.life.load(Ordering::SeqCst),
        answered,
    });
    // Up to 120 ms: long enough for some attempts to be in flight when a kill comes.
    let delay = (hash ^ u64::from(attempt).wrapping_mul(0x9E37)) % 120;
    tokio::time::sleep(Duration::from_millis(delay)).await;
    StatusCode::from_u16(answered).unwrap()
}

async fn start_hooks(fail_for: Duration) -> (String, Arc<Hooks>) {
    let hooks = Arc::new(Hooks {
        receipts: Mutex::new(Vec::new()),
        life: AtomicU64::new(0),
        fail_until: Instant::now() + fail_for,
    });
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .with_state(hooks.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, hooks)
}

// ---------------------------------------------------------------------------------------------
// The load
// ---------------------------------------------------------------------------------------------

/// One life of the server, as the load sees it.
struct Life {
    base: String,
    mqtt: String,
    key: String,
    http: reqwest::Client,
    /// Set by the main loop right after the SIGKILL.
    killed: AtomicBool,
    /// 201s received in this life (the "kill after N 201s" moments watch it).
    created: AtomicUsize,
    life: u64,
}

impl Life {
    /// Resolves once the main loop has killed the server.
    async fn until_killed(&self) {
        while !self.killed.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A reader on this life's broker, unless the server is killed first.
    async fn reader(&self, id: &str, palm: &str, seed: u64) -> Option<SimReader> {
        tokio::select! {
            r = reader(&self.mqtt, id, palm, seed) => r.ok(),
            _ = self.until_killed() => None,
        }
    }

    /// A transport error is expected only from a killed server: wait (briefly) for the kill.
    async fn expect_killed(&self, what: &str, e: &str, problems: &mut Vec<String>) {
        let end = Instant::now() + Duration::from_secs(8);
        while !self.killed.load(Ordering::SeqCst) {
            if Instant::now() > end {
                problems.push(format!(
                    "life {}: {what} failed on a live server: {e}",
                    self.life
                ));
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[derive(Default, Debug)]
struct Load {
    /// Session ids of the 201s received, with their kind.
    created: Vec<(String, &'static str)>,
    /// Sessions whose cancel was answered 200.
    cancelled: Vec<String>,
    /// Sessions a desk reader scanned a palm for.
    captured: usize,
    /// Capture ids of the door scans whose `result` said granted.
    grants: Vec<String>,
    denials: usize,
    /// Door scans with no `result` before the kill.
    unanswered: usize,
    transport_errors: usize,
    problems: Vec<String>,
}

/// What a POST answered: a full answer, or the connection failed.
enum Answer {
    Full(u16, String),
    Failed(String),
}

async fn post(http: &reqwest::Client, url: String, key: &str, body: Option<Value>) -> Answer {
    let mut rb = http.post(url).header("x-api-key", key);
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    match rb.send().await {
        Err(e) => Answer::Failed(e.to_string()),
        Ok(r) => {
            let status = r.status().as_u16();
            match r.text().await {
                Ok(t) => Answer::Full(status, t),
                Err(e) => Answer::Failed(e.to_string()),
            }
        }
    }
}

/// A partner client with a desk reader: enroll, identify, cancel, scan for some sessions.
async fn partner_client(life: Arc<Life>, worker: u64, mut rng: Rng) -> Load {
    let mut load = Load::default();
    let seed = life.life * 1_000_000 + worker * 10_000;
    let mut desk = life.reader(&format!("desk-{worker}"), "alice", seed).await;
    let mut open: Vec<String> = Vec::new();
    let mut n = 0u64;
    while !life.killed.load(Ordering::SeqCst) {
        n += 1;
        let roll = rng.range(0, 100);
        if roll < 75 {
            let enroll = roll < 35;
            let (url, body, ext) = if enroll {
                let ext = format!("E{}-{worker}-{n}", life.life);
                let body = json!({
                    "external_id": ext,
                    "username": format!("User {ext}"),
                    "metadata": {"access_level": "standard"},
                });
                (
                    format!("{}/v1/enroll?language=kk", life.base),
                    Some(body),
                    ext,
                )
            } else {
                (
                    format!("{}/v1/identify?language=ru", life.base),
                    None,
                    String::new(),
                )
            };
            match post(&life.http, url, &life.key, body).await {
                Answer::Failed(e) => {
                    load.transport_errors += 1;
                    life.expect_killed("enroll/identify", &e, &mut load.problems)
                        .await;
                    break;
                }
                Answer::Full(201, text) => {
                    let v: Value = serde_json::from_str(&text).expect("201 body is JSON");
                    let id = v["session_id"].as_str().expect("session_id").to_string();
                    let token = v["url"]
                        .as_str()
                        .expect("url")
                        .rsplit('/')
                        .next()
                        .unwrap()
                        .to_string();
                    load.created
                        .push((id.clone(), if enroll { "enroll" } else { "identify" }));
                    life.created.fetch_add(1, Ordering::SeqCst);
                    match desk.as_mut() {
                        Some(d) if rng.percent(55) => {
                            d.set_palm(if enroll { &ext } else { "alice" });
                            if d.capture(Some(&token)).await.is_ok() {
                                load.captured += 1;
                            }
                        }
                        _ => open.push(id),
                    }
                }
                Answer::Full(st, text) => {
                    load.problems
                        .push(format!("life {}: answered {st}: {text}", life.life));
                }
            }
        } else if let Some(id) = open.pop() {
            let url = format!("{}/v1/sessions/{id}/cancel", life.base);
            match post(&life.http, url, &life.key, None).await {
                Answer::Failed(e) => {
                    load.transport_errors += 1;
                    life.expect_killed("cancel", &e, &mut load.problems).await;
                    break;
                }
                Answer::Full(200, _) => load.cancelled.push(id),
                Answer::Full(st, text) => load.problems.push(format!(
                    "life {}: cancel {id} answered {st}: {text}",
                    life.life
                )),
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.range(5, 30))).await;
    }
    load
}

/// The door reader: scans alice (granted), carol (no access level) and a stranger.
async fn door_client(life: Arc<Life>, mut rng: Rng) -> Load {
    let mut load = Load::default();
    let Some(mut lobby) = life
        .reader("lobby-1", "alice", life.life * 1_000_000 + 7)
        .await
    else {
        return load;
    };
    while !life.killed.load(Ordering::SeqCst) {
        let palm = match rng.range(0, 4) {
            0 | 1 => "alice",
            2 => "carol",
            _ => "stranger",
        };
        lobby.set_palm(palm);
        let Ok(sent) = lobby.capture(None).await else {
            break;
        };
        let capture_id = sent["capture_id"].as_str().unwrap().to_string();
        let result = tokio::select! {
            r = next_command_where(&mut lobby, Duration::from_secs(4), |c| {
                c["action"] == "result"
            }) => r,
            _ = life.until_killed() => None,
        };
        match result {
            None => {
                load.unanswered += 1;
                if !life.killed.load(Ordering::SeqCst) {
                    // A live server answers every scan: give the kill a moment, else complain.
                    life.expect_killed("a door scan", "no result in 4 s", &mut load.problems)
                        .await;
                }
                break;
            }
            Some(r) if r["granted"] == true => {
                if palm != "alice" {
                    load.problems.push(format!("{palm} was granted: {r}"));
                }
                load.grants.push(capture_id);
            }
            Some(r) => {
                if palm == "alice" {
                    load.problems.push(format!("alice was denied: {r}"));
                }
                load.denials += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.range(50, 250))).await;
    }
    load
}

// ---------------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------------

async fn admin_json(s: &TestServer, path: &str) -> Value {
    let r = s
        .client
        .get(s.url(path))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(r.status(), 200, "GET {path}");
    r.json().await.unwrap()
}

/// Events after `after`, all pages.
pub(crate) async fn events_after(s: &TestServer, after: u64) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after = after;
    loop {
        let page = admin_json(s, &format!("/admin/v1/events?after={after}&limit=1000")).await;
        let events = page["events"].as_array().unwrap().clone();
        if events.is_empty() {
            return out;
        }
        after = page["next_after"].as_u64().unwrap();
        out.extend(events);
    }
}

/// The log as the checks need it, folded incrementally.
#[derive(Default)]
struct Seen {
    cursor: u64,
    /// The last event read, to check that a restart did not lose or rewrite it.
    last: Option<Value>,
    sessions: HashSet<String>,
    granted: HashSet<String>,
    relay_on_events: usize,
    kinds: BTreeMap<String, usize>,
}

impl Seen {
    async fn catch_up(&mut self, s: &TestServer) {
        if let Some(last) = &self.last {
            let pos = last["position"].as_u64().unwrap();
            let again = admin_json(s, &format!("/admin/v1/events?after={}&limit=1", pos - 1)).await
                ["events"][0]
                .clone();
            assert_eq!(
                &again, last,
                "the event at position {pos} changed across a restart"
            );
        }
        for e in events_after(s, self.cursor).await {
            let d = &e["data"];
            *self
                .kinds
                .entry(e["type"].as_str().unwrap().to_string())
                .or_default() += 1;
            match e["type"].as_str().unwrap() {
                "SessionCreated" => {
                    self.sessions
                        .insert(d["session_id"].as_str().unwrap().to_string());
                }
                "DoorDecided" if d["verdict"]["verdict"] == "granted" => {
                    self.granted
                        .insert(d["capture_id"].as_str().unwrap().to_string());
                }
                "RelaySwitched" if d["on"] == true => self.relay_on_events += 1,
                _ => {}
            }
            self.cursor = e["position"].as_u64().unwrap();
            self.last = Some(e);
        }
    }
}

/// `GET /v1/sessions/{id}` for each, eight at a time: (id, status, body).
async fn sessions(s: &TestServer, key: &str, ids: Vec<String>) -> Vec<(String, u16, Value)> {
    let mut out = Vec::new();
    for chunk in ids.chunks(8) {
        let mut set = JoinSet::new();
        for id in chunk {
            let (http, url, key, id) = (
                s.client.clone(),
                s.url(&format!("/v1/sessions/{id}")),
                key.to_string(),
                id.clone(),
            );
            set.spawn(async move {
                let r = http.get(url).header("x-api-key", key).send().await.unwrap();
                let st = r.status().as_u16();
                (id, st, r.json::<Value>().await.unwrap_or(Value::Null))
            });
        }
        while let Some(r) = set.join_next().await {
            out.push(r.unwrap());
        }
    }
    out
}

/// Enrolls `palm` as `external_id` through the desk reader `desk-0`.
pub(crate) async fn enroll_user(s: &TestServer, key: &str, external_id: &str, metadata: Value) {
    let created = s
        .enroll(
            key,
            "",
            &json!({"external_id": external_id, "metadata": metadata}),
        )
        .await
        .created();
    let mut desk = reader(&s.mqtt_url, "desk-setup", external_id, 99)
        .await
        .unwrap();
    desk.capture(Some(&created.token())).await.unwrap();
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        let v = s.session(key, &created.session_id).await.json();
        if v["state"] == "completed" {
            return;
        }
        assert!(Instant::now() < end, "enrollment of {external_id}: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How a kill is timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Moment {
    /// After a random delay.
    Random,
    /// As soon as the door's coil is ON (in the middle of a pulse).
    MidPulse,
    /// As soon as the client has received N more 201s (requests still in flight).
    After201s,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_mixed_load_loses_nothing_acknowledged() {
    let started = Instant::now();
    let seed = env_u64("PALMGATE_CRASH_SEED").unwrap_or(DEFAULT_SEED);
    let kills = env_u64("PALMGATE_CRASH_KILLS").map_or(DEFAULT_KILLS, |k| k as usize);
    let mut rng = Rng(seed);
    println!("crash suite: seed {seed:#x} (PALMGATE_CRASH_SEED), {kills} kills");

    let board = new_board().await;
    let layout = Layout {
        pulse_ms: PULSE_MS,
        ..Layout::default()
    };
    let site_dir = tempfile::tempdir().unwrap();
    let site = site_dir.path().join("site.toml");
    std::fs::write(&site, site_doc(&board.url(), &layout)).unwrap();
    let (hook_url, hooks) = start_hooks(Duration::from_secs(30)).await;
    let mut s = TestServer::start_with(Options::default().per_minute(1_000_000).extra_toml(
        &format!(
            "site = {:?}\n[webhooks]\nallow_networks = [\"127.0.0.0/8\"]",
            site.display().to_string()
        ),
    ))
    .await;
    let (_, key) = s.create_partner("Crash").await;
    let r = s
        .client
        .put(s.url("/v1/webhook"))
        .header("x-api-key", &key)
        .json(&json!({"url": hook_url, "events": ["session", "access"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    enroll_user(&s, &key, "alice", json!({"access_level": "standard"})).await;
    enroll_user(&s, &key, "carol", json!({"department": "visitors"})).await;

    let mut seen = Seen::default();
    let mut all_created: Vec<(String, &'static str)> = Vec::new();
    let mut all_cancelled: Vec<String> = Vec::new();
    let mut told_granted: Vec<String> = Vec::new();
    let mut totals = Load::default();
    let mut moments: BTreeMap<Moment, usize> = BTreeMap::new();
    let mut coil_on_at_kill = 0;
    let mut locked_after = Duration::ZERO;
    let mut audit_time = Duration::ZERO;
    let mut last_audit = String::new();
    let mut restart_time = Duration::ZERO;

    for k in 0..kills {
        let life = Arc::new(Life {
            base: s.base_url.clone(),
            mqtt: s.mqtt_url.clone(),
            key: key.clone(),
            http: s.client.clone(),
            killed: AtomicBool::new(false),
            created: AtomicUsize::new(0),
            life: k as u64,
        });
        let mut tasks = JoinSet::new();
        for w in 0..2 {
            tasks.spawn(partner_client(life.clone(), w, Rng(rng.next())));
        }
        tasks.spawn(door_client(life.clone(), Rng(rng.next())));

        let moment = match rng.range(0, 10) {
            0..=5 => Moment::Random,
            6 | 7 => Moment::MidPulse,
            _ => Moment::After201s,
        };
        *moments.entry(moment).or_default() += 1;
        match moment {
            Moment::Random => {
                tokio::time::sleep(Duration::from_millis(rng.range(150, 1500))).await;
            }
            Moment::MidPulse => {
                let end = Instant::now() + Duration::from_secs(4);
                while !board.coil(0) && Instant::now() < end {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            Moment::After201s => {
                let n = rng.range(1, 25) as usize;
                let end = Instant::now() + Duration::from_secs(4);
                while life.created.load(Ordering::SeqCst) < n && Instant::now() < end {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
        s.kill9();
        life.killed.store(true, Ordering::SeqCst);
        if board.coil(0) {
            coil_on_at_kill += 1;
        }
        let mut this = Load::default();
        while let Some(r) = tasks.join_next().await {
            let l = r.expect("load task");
            this.created.extend(l.created);
            this.cancelled.extend(l.cancelled);
            this.grants.extend(l.grants);
            this.captured += l.captured;
            this.denials += l.denials;
            this.unanswered += l.unanswered;
            this.transport_errors += l.transport_errors;
            this.problems.extend(l.problems);
        }
        assert!(
            this.problems.is_empty(),
            "life {k}: {:#?}\nserver log tail:\n{}",
            this.problems,
            tail(&s.stderr_log(), 60)
        );

        // The next life starts here, not at the kill: a request the killed server wrote just
        // before it died may reach the receiver's handler some time after the kill (under
        // load, tens of ms), and must still count as the old life's. By now the load tasks
        // have been joined, so the dead server's last requests were handled long ago.
        hooks.life.fetch_add(1, Ordering::SeqCst);
        let t = Instant::now();
        s.launch().await;
        let up = Instant::now();
        restart_time += up - t;

        // No coil left ON once the server is back.
        while board.coil(0) {
            assert!(
                up.elapsed() < LOCKED_WITHIN,
                "life {k}: coil 0 still ON {LOCKED_WITHIN:?} after the restart"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        locked_after = locked_after.max(up.elapsed());

        // Every 201 and every 200 cancel of that life is in the log.
        let ids: Vec<String> = this.created.iter().map(|(id, _)| id.clone()).collect();
        for (id, st, v) in sessions(&s, &key, ids).await {
            assert_eq!(
                st, 200,
                "life {k}: session {id} acknowledged with 201 is lost: {v}"
            );
        }
        for (id, st, v) in sessions(&s, &key, this.cancelled.clone()).await {
            assert_eq!(st, 200, "life {k}: cancelled session {id} lost");
            assert!(
                v["state"] == "failed" && v["fail_reason"] == "cancelled",
                "life {k}: the cancel of {id} was answered 200 but is gone: {v}"
            );
        }

        // Every grant a reader was told about is a granted DoorDecided.
        seen.catch_up(&s).await;
        for (id, _) in &this.created {
            assert!(
                seen.sessions.contains(id),
                "life {k}: no SessionCreated for {id}"
            );
        }
        for c in &this.grants {
            assert!(
                seen.granted.contains(c),
                "life {k}: the reader was told `granted` for {c}, but the log has no granted \
                 DoorDecided for it"
            );
        }

        // The chain verifies.
        let t = Instant::now();
        let (ok, out) = audit_verify(s.config_path());
        audit_time += t.elapsed();
        assert!(ok, "life {k}: audit verify failed:\n{out}");
        last_audit = out.trim().to_string();

        all_created.append(&mut this.created);
        all_cancelled.append(&mut this.cancelled);
        told_granted.append(&mut this.grants);
        totals.captured += this.captured;
        totals.denials += this.denials;
        totals.unanswered += this.unanswered;
        totals.transport_errors += this.transport_errors;
    }
    let load_done = started.elapsed();

    // The outbox drains: every delivery is delivered.
    let deliveries = {
        let end = Instant::now() + Duration::from_secs(120);
        loop {
            // Every page of the list (500 a page, newest first).
            let mut list: Vec<Value> = Vec::new();
            loop {
                let r = s
                    .client
                    .get(s.url(&format!(
                        "/v1/webhook/deliveries?limit=500&offset={}",
                        list.len()
                    )))
                    .header("x-api-key", &key)
                    .send()
                    .await
                    .unwrap();
                let page: Vec<Value> = r.json().await.unwrap();
                let last = page.len() < 500;
                list.extend(page);
                if last {
                    break;
                }
            }
            let open = list.iter().filter(|d| d["status"] != "delivered").count();
            if open == 0 {
                break list;
            }
            assert!(
                Instant::now() < end,
                "{open} deliveries still not delivered 120 s after the load: {:?}",
                list.iter()
                    .filter(|d| d["status"] != "delivered")
                    .take(5)
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    // Nothing more arrives once the log says delivered.
    let settled = hooks.receipts.lock().unwrap().len();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let receipts = hooks.receipts.lock().unwrap().clone();
    assert_eq!(
        receipts.len(),
        settled,
        "requests arrived after every delivery was recorded delivered"
    );
    let webhook = check_webhooks(&deliveries, &receipts);

    // Final pass over the whole log.
    let mut full = Seen::default();
    full.catch_up(&s).await;
    for (id, _) in &all_created {
        assert!(full.sessions.contains(id), "session {id} is not in the log");
    }
    for c in &told_granted {
        assert!(full.granted.contains(c), "grant {c} is not in the log");
    }
    let on_writes = board
        .writes()
        .iter()
        .filter(|(_, coil, on)| *coil == 0 && *on)
        .count();
    assert!(
        on_writes <= full.granted.len(),
        "{on_writes} coil ON writes but only {} granted decisions: a door opened without a \
         durable grant",
        full.granted.len()
    );
    let (ok, out) = audit_verify(s.config_path());
    assert!(ok, "final audit verify:\n{out}");

    let enrolls = all_created.iter().filter(|c| c.1 == "enroll").count();
    println!(
        "crash suite: seed {seed:#x}; {kills} SIGKILLs ({} random, {} mid-pulse, {} right after \
         201s) in {load_done:.1?} of load; restart {:.0?} avg; {} sessions acknowledged \
         ({enrolls} enroll, {} identify), all in the log; {} cancels acknowledged, all kept; \
         {} sessions scanned at desks; door: {} grants told to the reader, all in the log \
         ({} granted decisions in the log, {on_writes} coil ON writes), {} denials, {} scans \
         unanswered at a kill; coil ON at {coil_on_at_kill} kills, locked at most \
         {locked_after:.1?} after the restart; {webhook}; {} requests cut by a kill; audit \
         verify {kills}+1 times ({:.1?} avg): {last_audit}; log: {} events; total {:.1?}",
        moments.get(&Moment::Random).unwrap_or(&0),
        moments.get(&Moment::MidPulse).unwrap_or(&0),
        moments.get(&Moment::After201s).unwrap_or(&0),
        restart_time / kills.max(1) as u32,
        all_created.len(),
        all_created.len() - enrolls,
        all_cancelled.len(),
        totals.captured,
        told_granted.len(),
        full.granted.len(),
        totals.denials,
        totals.unanswered,
        totals.transport_errors,
        audit_time / kills.max(1) as u32,
        full.cursor,
        started.elapsed(),
    );
    println!("crash suite: events by type: {:?}", full.kinds);
}

/// The webhook rules of the module doc; returns a summary.
fn check_webhooks(deliveries: &[Value], receipts: &[Receipt]) -> String {
    let mut by_id: HashMap<&str, Vec<&Receipt>> = HashMap::new();
    for r in receipts {
        by_id.entry(r.id.as_str()).or_default().push(r);
    }
    let known: HashSet<&str> = deliveries
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    for id in by_id.keys() {
        assert!(
            known.contains(id),
            "the receiver got {id}, which is no delivery"
        );
    }
    let (mut resent, mut retried, mut twice_ok) = (0, 0, 0);
    for d in deliveries {
        let id = d["id"].as_str().unwrap();
        let got = by_id.get(id).unwrap_or_else(|| {
            panic!("delivery {id} is delivered but never reached the receiver: {d}")
        });
        let shown = || {
            got.iter()
                .map(|r| {
                    format!(
                        "(attempt {}, life {}, answered {})",
                        r.attempt, r.life, r.answered
                    )
                })
                .collect::<Vec<_>>()
                .join(" ")
        };
        // 1. Same bytes; attempts 1, 2, ... without a gap.
        assert!(
            got.iter().all(|r| r.body == got[0].body),
            "{id}: bodies differ"
        );
        assert_eq!(got[0].attempt, 1, "{id}: {}", shown());
        for w in got.windows(2) {
            let (a, b) = (w[0], w[1]);
            assert!(
                b.attempt == a.attempt || b.attempt == a.attempt + 1,
                "{id}: attempt {} after {}: {}",
                b.attempt,
                a.attempt,
                shown()
            );
            // 2. A repeat only from a later life.
            if b.attempt == a.attempt {
                assert!(
                    b.life > a.life,
                    "{id}: attempt {} sent twice by one life of the server: {}",
                    a.attempt,
                    shown()
                );
                resent += 1;
            } else {
                retried += 1;
            }
            // 3. After a 2xx answer, another request only across a kill.
            if (200..300).contains(&a.answered) {
                assert!(
                    b.life > a.life,
                    "{id}: sent again after a 2xx answer within one life: {}",
                    shown()
                );
                twice_ok += 1;
            }
        }
        // 4. The log: each attempt once, the last delivered, and it is the receiver's last.
        let attempts = d["attempts"].as_array().unwrap();
        let numbers: Vec<u64> = attempts
            .iter()
            .map(|a| a["attempt"].as_u64().unwrap())
            .collect();
        let expected: Vec<u64> = (1..=numbers.len() as u64).collect();
        assert_eq!(numbers, expected, "{id}: attempts in the log: {d}");
        let delivered: Vec<&Value> = attempts.iter().filter(|a| a["delivered"] == true).collect();
        assert_eq!(
            delivered.len(),
            1,
            "{id}: delivered attempts in the log: {d}"
        );
        assert_eq!(attempts.last().unwrap()["delivered"], true, "{id}: {d}");
        let last = got.last().unwrap();
        assert!(
            (200..300).contains(&last.answered),
            "{id}: the receiver's last answer was {}",
            last.answered
        );
        assert_eq!(
            u64::from(last.attempt),
            *numbers.last().unwrap(),
            "{id}: the delivered attempt is not the receiver's last: {} / {d}",
            shown()
        );
    }
    format!(
        "{} webhook deliveries, all delivered ({} requests: {retried} retries after a 500, \
         {resent} re-sends of an attempt cut by a kill, {twice_ok} of them after a 2xx the \
         dead server never recorded)",
        deliveries.len(),
        receipts.len()
    )
}

fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
