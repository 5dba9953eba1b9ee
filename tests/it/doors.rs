//! The scan-to-unlock path end to end: a simulated reader over the embedded broker, the real
//! server in-process, and a simulated Modbus relay board as the peer (SPEC 5, 6, 7, 10) — plus
//! one test against an independent Modbus peer (pymodbus) so the relay protocol is not only
//! checked against our own simulator.
//!
//! Every test starts its own server, store, broker and board(s) on free ports. Waits poll with
//! deadlines; the only fixed waits are short ones that check that something does NOT happen.

use chrono::Timelike;
use palmgate::app::clock::{Clock, ManualClock, OsRng, SystemClock};
use palmgate::core::ReaderId;
use palmgate::modbus::sim::SimBoard;
use palmgate::mqtt::protocol::encode_template;
use palmgate::mqtt::simulate::{SimOptions, SimReader};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

// ---------------------------------------------------------------------------------------------
// Fixture
// ---------------------------------------------------------------------------------------------

pub struct Site {
    pub base: String,
    pub mqtt: String,
    /// `board-1` of the site document (in the pymodbus test: a board nothing talks to).
    pub board: SimBoard,
    /// Further simulated boards the site document names (`board-2`, ...).
    pub boards: Vec<SimBoard>,
    pub http: reqwest::Client,
    pub key: String,
    _dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

pub const ADMIN: &str = "Bearer site-admin";

/// Generous upper bound for anything that should happen "soon" on a loaded 2-core box.
pub const WAIT: Duration = Duration::from_secs(10);

/// The parts of the site document a test may change; the rest is the fixture's site: one door
/// `main` (reader `lobby-1`, coil 0 of `board-1`, contact on input 0 held-open after 2 s), a
/// schedule `always`, a level `standard`.
#[derive(Clone, Debug)]
pub struct Layout {
    /// Top-level keys (before any table).
    pub head: String,
    pub pulse_ms: u32,
    /// Extra lines inside `[[doors]] main` (e.g. `rex = {...}`).
    pub main_door: String,
    /// Extra lines inside `[schedules]`.
    pub schedules: String,
    /// The `doors` of level `standard`, as TOML array items.
    pub standard_doors: String,
    /// The schedule of level `standard`.
    pub standard_schedule: String,
    /// Appended at the end (more doors, devices, levels, zones, unlock windows).
    pub extra: String,
}

impl Default for Layout {
    fn default() -> Self {
        Layout {
            head: r#"partners = ["*"]"#.into(),
            pulse_ms: 400,
            main_door: String::new(),
            schedules: String::new(),
            standard_doors: r#""main""#.into(),
            standard_schedule: "always".into(),
            extra: String::new(),
        }
    }
}

/// The site document for `layout` with `board-1` at `board_url`.
pub fn site_doc(board_url: &str, l: &Layout) -> String {
    format!(
        r#"timezone = "Asia/Almaty"
{head}

[[relay_devices]]
id = "board-1"
modbus = "{board_url}"
unit = 1

[[doors]]
id = "main"
readers = ["lobby-1"]
relay = {{ device = "board-1", coil = 0, pulse_ms = {pulse} }}
contact = {{ device = "board-1", input = 0, held_open_after_s = 2 }}
{main_door}

[schedules]
always = ["* * * * * *"]
{schedules}

[[levels]]
name = "standard"
doors = [{doors}]
schedule = "{schedule}"
{extra}"#,
        head = l.head,
        pulse = l.pulse_ms,
        main_door = l.main_door,
        schedules = l.schedules,
        doors = l.standard_doors,
        schedule = l.standard_schedule,
        extra = l.extra,
    )
}

pub fn site_toml(board: &SimBoard, extra: &str) -> String {
    site_doc(
        &board.url(),
        &Layout {
            extra: extra.into(),
            ..Layout::default()
        },
    )
}

/// A second door `side` (reader `side-1`) on `device`/`coil`.
fn side_door(device: &str, coil: u16) -> String {
    format!(
        r#"
[[doors]]
id = "side"
readers = ["side-1"]
relay = {{ device = "{device}", coil = {coil}, pulse_ms = 400 }}
"#
    )
}

pub async fn new_board() -> SimBoard {
    SimBoard::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

pub async fn start_site(extra_site: &str) -> Site {
    let board = new_board().await;
    let doc = site_toml(&board, extra_site);
    start_with(board, vec![], &doc).await
}

/// Starts a server on `doc`; `board` and `others` are kept alive with the site.
pub async fn start_with(board: SimBoard, others: Vec<SimBoard>, doc: &str) -> Site {
    start_on(board, others, doc, Arc::new(SystemClock)).await
}

/// [`start_with`] on `clock`.
pub async fn start_on(
    board: SimBoard,
    others: Vec<SimBoard>,
    doc: &str,
    clock: Arc<dyn Clock>,
) -> Site {
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("site.toml");
    std::fs::write(&site, doc).unwrap();
    let cfg = dir.path().join("p.toml");
    let d = dir.path().display();
    std::fs::write(
        &cfg,
        format!(
            r#"site = "{}"
[http]
listen = "127.0.0.1:0"
[store]
path = "{d}/events.db"
[secrets]
key_file = "{d}/master.key"
key_store = "{d}/keys.db"
[mqtt.embedded]
listen = "127.0.0.1:0"
[admin]
token = "site-admin"
[rate_limit]
per_minute = 100000
[webhooks]
allow_networks = ["127.0.0.0/8"]
"#,
            site.display()
        ),
    )
    .unwrap();
    let config = palmgate::config::Config::load(Some(Path::new(&cfg)), &[]).unwrap();
    let server = palmgate::app::start_with(config, clock, Arc::new(OsRng))
        .await
        .unwrap();
    let base = format!("http://{}", server.addr);
    let mqtt = server.mqtt.clone();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.serve(async {
        let _ = rx.await;
    }));
    let http = reqwest::Client::new();
    let mut s = Site {
        base,
        mqtt,
        board,
        boards: others,
        http,
        key: String::new(),
        _dir: dir,
        _stop: stop,
    };
    s.key = s.create_partner("Acme").await;
    s
}

impl Site {
    /// The site's event log.
    pub fn store_path(&self) -> PathBuf {
        self._dir.path().join("events.db")
    }

    pub async fn reader(&self, id: &str, palm: &str, seed: u64) -> SimReader {
        SimReader::connect(SimOptions {
            mqtt_url: self.mqtt.clone(),
            topic_prefix: "palmgate".into(),
            reader: ReaderId(id.into()),
            palm: palm.into(),
            dim: 128,
            quality: 0.93,
            liveness: true,
            seed,
        })
        .await
        .unwrap()
    }

    /// Creates a partner; returns its API key.
    pub async fn create_partner(&self, name: &str) -> String {
        let r = self
            .admin_post("/admin/v1/partners", json!({ "name": name }))
            .await;
        assert_eq!(r.status(), 201);
        let p: Value = r.json().await.unwrap();
        p["api_key"].as_str().unwrap().to_string()
    }

    /// Enrolls `palm` as `external_id` with `metadata` through a desk reader.
    pub async fn enroll(&self, external_id: &str, palm: &str, metadata: Value) {
        self.enroll_for(&self.key, external_id, palm, metadata)
            .await
    }

    /// As [`Site::enroll`], for the partner with API key `key`.
    pub async fn enroll_for(&self, key: &str, external_id: &str, palm: &str, metadata: Value) {
        let r: Value = self
            .http
            .post(format!("{}/v1/enroll", self.base))
            .header("x-api-key", key)
            .json(&json!({"external_id": external_id, "metadata": metadata}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let token = r["url"]
            .as_str()
            .unwrap()
            .rsplit('/')
            .next()
            .unwrap()
            .to_string();
        let id = r["session_id"].as_str().unwrap().to_string();
        let mut desk = self.reader("desk-1", palm, 1000).await;
        desk.capture(Some(&token)).await.unwrap();
        let end = Instant::now() + WAIT;
        loop {
            let s: Value = self
                .http
                .get(format!("{}/v1/sessions/{id}", self.base))
                .header("x-api-key", key)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if s["state"] == "completed" {
                return;
            }
            assert!(
                s["state"] == "pending" && Instant::now() < end,
                "enroll: {s}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn admin_get(&self, path: &str) -> Value {
        self.http
            .get(format!("{}{path}", self.base))
            .header("authorization", ADMIN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn admin_post(&self, path: &str, body: Value) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.base))
            .header("authorization", ADMIN)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// `PUT /admin/v1/policy`: (status, body).
    pub async fn put_policy(&self, doc: &str) -> (u16, Value) {
        let r = self
            .http
            .put(format!("{}/admin/v1/policy", self.base))
            .header("authorization", ADMIN)
            .header("content-type", "application/toml")
            .body(doc.to_string())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// `POST /admin/v1/{lockdown|emergency-unlock}` `{"on": on}`; the mode it answers.
    pub async fn set_mode(&self, which: &str, on: bool) -> Value {
        let r = self
            .admin_post(&format!("/admin/v1/{which}"), json!({ "on": on }))
            .await;
        assert_eq!(r.status(), 200, "{which} {on}");
        r.json().await.unwrap()
    }

    /// Every event of the log, oldest first.
    pub async fn events(&self) -> Vec<Value> {
        let mut out = vec![];
        let mut after = 0;
        loop {
            let page = self
                .admin_get(&format!("/admin/v1/events?after={after}&limit=1000"))
                .await;
            let events = page["events"].as_array().expect("events page").clone();
            if events.is_empty() {
                return out;
            }
            after = page["next_after"].as_u64().unwrap();
            out.extend(events);
        }
    }

    /// Events of `kind` matching `pred`.
    pub async fn events_of(&self, kind: &str, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        self.events()
            .await
            .into_iter()
            .filter(|e| e["type"] == kind && pred(&e["data"]))
            .collect()
    }

    /// The first event of `kind` whose data matches `pred`, waiting for it.
    pub async fn wait_event(&self, kind: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait_event_after(0, kind, pred).await
    }

    /// The first event of `kind` after log position `after` whose data matches `pred`.
    pub async fn wait_event_after(
        &self,
        after: u64,
        kind: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let end = Instant::now() + WAIT;
        loop {
            let found = self.events_of(kind, &pred).await;
            if let Some(e) = found.into_iter().find(|e| pos(e) > after) {
                return e;
            }
            assert!(
                Instant::now() < end,
                "no {kind} event as expected; the log:\n{}",
                self.log_summary().await
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// One line per event (policy documents left out), for failure messages.
    pub async fn log_summary(&self) -> String {
        self.events()
            .await
            .iter()
            .map(|e| {
                let mut d = e["data"].clone();
                if let Some(m) = d.as_object_mut() {
                    m.remove("document");
                }
                format!("{:>4} {} {d}", pos(e), e["type"].as_str().unwrap_or("?"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `GET /admin/v1/doors`, the door `id`.
    pub async fn door(&self, id: &str) -> Value {
        let doors = self.admin_get("/admin/v1/doors").await;
        doors
            .as_array()
            .expect("doors")
            .iter()
            .find(|d| d["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("no door {id} in {doors}"))
    }

    /// Waits until the door `id` satisfies `pred`.
    pub async fn wait_door(&self, id: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let end = Instant::now() + WAIT;
        loop {
            let d = self.door(id).await;
            if pred(&d) {
                return d;
            }
            assert!(Instant::now() < end, "door {id}: {what}; it is {d}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The sha256 of the policy in force.
    pub async fn policy_sha(&self) -> String {
        self.admin_get("/admin/v1/policy").await["sha256"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

pub async fn result_cmd(r: &mut SimReader) -> Value {
    let end = Instant::now() + WAIT;
    loop {
        let c = r
            .next_command(end - Instant::now())
            .await
            .expect("a command from the gateway");
        if c["action"] == "result" {
            return c;
        }
    }
}

static SCANS: AtomicU64 = AtomicU64::new(0);

/// Scans `palm` at reader `r` (a door scan, any palm through one reader connection) and waits
/// for the reader's `result`. Returns (capture id, result).
pub async fn scan(r: &mut SimReader, palm: &str) -> (String, Value) {
    let n = SCANS.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let capture_id = format!("scan-{n}-{nanos}");
    let values = palmgate::synthetic::scan(palm, 128, 5000 + n);
    r.send_capture(json!({
        "capture_id": capture_id,
        "session": null,
        "template": encode_template(&values),
        "quality": 0.93,
        "liveness": true,
    }))
    .await
    .unwrap();
    (capture_id, result_cmd(r).await)
}

/// Power-cycles `board` (see [`SimBoard::restart`]). `SimBoard::stop` only aborts the listener
/// task, so binding the port again right away can find the old listener still open
/// (`AddrInUse`) until the runtime has dropped it: retry that briefly.
pub async fn power_cycle(board: &SimBoard, reset: bool) {
    let end = Instant::now() + Duration::from_secs(2);
    loop {
        match board.restart(reset).await {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < end => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(e) => panic!("board restart: {e}"),
        }
    }
}

/// Polls `cond` until it holds (deadline [`WAIT`]).
pub async fn until(what: &str, cond: impl Fn() -> bool) {
    let end = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// How many `RelaySwitched` of `door` to `on` the log file at `log` holds (read directly,
/// so it can be asked while the server is down).
pub fn relay_switched(log: &std::path::Path, door: &str, on: bool) -> i64 {
    let c = rusqlite::Connection::open(log).unwrap();
    c.query_row(
        "SELECT count(*) FROM events WHERE type = 'RelaySwitched' \
         AND json_extract(data, '$.door') = ?1 AND json_extract(data, '$.on') = ?2",
        rusqlite::params![door, on],
        |r| r.get(0),
    )
    .unwrap()
}

/// Writes to `coil` at or after `since`: (when, value).
pub fn writes_since(board: &SimBoard, coil: u16, since: Instant) -> Vec<(Instant, bool)> {
    board
        .writes()
        .into_iter()
        .filter(|(t, c, _)| *c == coil && *t >= since)
        .map(|(t, _, on)| (t, on))
        .collect()
}

/// Waits for a pulse of `coil` that starts at or after `since`: (ON write, first OFF after).
pub async fn wait_pulse(board: &SimBoard, coil: u16, since: Instant) -> (Instant, Instant) {
    let end = Instant::now() + WAIT;
    loop {
        let w = writes_since(board, coil, since);
        if let Some(i) = w.iter().position(|(_, on)| *on)
            && let Some((off, _)) = w[i..].iter().find(|(_, on)| !*on)
        {
            return (w[i].0, *off);
        }
        assert!(
            Instant::now() < end,
            "no ON-then-OFF pulse of coil {coil}; writes since: {w:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn data(e: &Value) -> &Value {
    &e["data"]
}

fn pos(e: &Value) -> u64 {
    e["position"].as_u64().expect("position")
}

/// The site's wall clock now.
fn almaty_now() -> chrono::DateTime<chrono_tz::Tz> {
    chrono::Utc::now().with_timezone(&chrono_tz::Asia::Almaty)
}

// ---------------------------------------------------------------------------------------------
// 0. The original smoke test
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_granted_scan_pulses_the_coil_and_a_denied_one_says_why() {
    let site = start_site("").await;
    site.enroll("alice", "alice", json!({"access_level": "standard"}))
        .await;
    site.enroll("bob", "bob", json!({"department": "none"}))
        .await;

    let mut lobby = site.reader("lobby-1", "alice", 1).await;
    let sent = Instant::now();
    lobby.capture(None).await.unwrap();
    let r = result_cmd(&mut lobby).await;
    assert_eq!(r["granted"], true, "{r}");
    assert_eq!(r["door"], "main");
    until("coil 0 ON", || site.board.coil(0)).await;
    assert!(sent.elapsed() < Duration::from_millis(2000));
    until("coil 0 OFF", || !site.board.coil(0)).await;

    let (_, r) = scan(&mut lobby, "bob").await;
    assert_eq!(r["granted"], false);
    assert_eq!(r["reason"], "no_access_level");

    let doors = site.admin_get("/admin/v1/doors").await;
    assert_eq!(doors[0]["id"], "main");
    assert_eq!(doors[0]["last_decision"]["reason"], "no_access_level");
}

// ---------------------------------------------------------------------------------------------
// 1. Grant: timing, reader feedback, decision durable before the relay moves
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_unlocks_within_500ms_for_pulse_ms_after_a_durable_decision() {
    let site = start_site("").await;
    site.enroll("alice", "alice", json!({"access_level": "standard"}))
        .await;
    let mut lobby = site.reader("lobby-1", "alice", 1).await;

    let t0 = Instant::now();
    let sent = lobby.capture(None).await.unwrap();
    let capture_id = sent["capture_id"].as_str().unwrap().to_string();
    let r = result_cmd(&mut lobby).await;
    assert_eq!(r["action"], "result");
    assert_eq!(r["granted"], true, "{r}");
    assert_eq!(r["door"], "main");
    assert!(
        r["message"].as_str().is_some_and(|m| !m.trim().is_empty()),
        "a localized message: {r}"
    );
    assert!(r.get("reason").is_none(), "a grant has no reason: {r}");

    let (on, off) = wait_pulse(&site.board, 0, t0).await;
    let latency = on.duration_since(t0);
    assert!(
        latency < Duration::from_millis(500),
        "coil ON {latency:?} after the capture was published (want < 500 ms)"
    );
    let held = off.duration_since(on);
    assert!(
        held >= Duration::from_millis(380) && held <= Duration::from_millis(1000),
        "pulse_ms = 400 but the coil was ON for {held:?}"
    );
    assert!(!site.board.coil(0), "the door ends locked");

    // The log: the decision, then the relay ON, then the relay OFF, all naming the capture.
    let decided = site
        .wait_event("DoorDecided", |d| d["capture_id"] == capture_id)
        .await;
    let d = data(&decided);
    assert_eq!(d["door"], "main");
    assert_eq!(d["reader_id"], "lobby-1");
    assert_eq!(d["verdict"]["verdict"], "granted", "{d}");
    assert_eq!(d["verdict"]["level"], "standard");
    assert_eq!(d["subject"]["external_id"], "alice");
    assert_eq!(d["policy"], site.policy_sha().await);
    let switched_on = site
        .wait_event("RelaySwitched", |d| {
            d["tag"] == capture_id && d["on"] == true
        })
        .await;
    let switched_off = site
        .wait_event("RelaySwitched", |d| {
            d["tag"] == capture_id && d["on"] == false
        })
        .await;
    assert_eq!(data(&switched_on)["door"], "main");
    assert_eq!(data(&switched_on)["device"], "board-1");
    assert_eq!(data(&switched_on)["coil"], 0);
    assert!(
        pos(&decided) < pos(&switched_on) && pos(&switched_on) < pos(&switched_off),
        "DoorDecided @{} must precede RelaySwitched on @{} and off @{}",
        pos(&decided),
        pos(&switched_on),
        pos(&switched_off)
    );

    let door = site.door("main").await;
    assert_eq!(door["last_decision"]["granted"], true, "{door}");
    assert_eq!(door["state"], "locked", "{door}");
}

// ---------------------------------------------------------------------------------------------
// 2. Denials, each with its reason; no coil ever moves
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_denial_reaches_the_reader_with_its_reason_and_no_coil_moves() {
    let board = new_board().await;
    let now = almaty_now();
    let today = now.date_naive();
    let tomorrow = today.succ_opt().unwrap();
    // A window open only 12 hours away from now: never open during this test.
    let closed_hour = (now.hour() + 12) % 24;
    let layout = Layout {
        // Only Acme's users may open doors here; holidays today and tomorrow (site time) so the
        // test cannot straddle midnight.
        head: format!("partners = [\"Acme\"]\nholidays = [\"{today}\", \"{tomorrow}\"]"),
        schedules: format!("closed = [\"* * {closed_hour} * * *\"]"),
        extra: format!(
            r#"
[[levels]]
name = "closed"
doors = ["main"]
schedule = "closed"

[[levels]]
name = "holiday-aware"
doors = ["main"]
schedule = "always"
respect_holidays = true
{}"#,
            side_door("board-1", 1)
        ),
        ..Layout::default()
    };
    let doc = site_doc(&board.url(), &layout);
    let site = start_with(board, vec![], &doc).await;
    let t0 = Instant::now();

    site.enroll("alice", "alice", json!({"access_level": "standard"}))
        .await;
    site.enroll("bob", "bob", json!({"department": "none"}))
        .await;
    site.enroll("carol", "carol", json!({"access_level": "ghost"}))
        .await;
    site.enroll("dave", "dave", json!({"access_level": "closed"}))
        .await;
    site.enroll("erin", "erin", json!({"access_level": "holiday-aware"}))
        .await;
    site.enroll(
        "frank",
        "frank",
        json!({"access_level": "standard", "valid_until": "2020-01-01T00:00:00Z"}),
    )
    .await;
    site.enroll(
        "grace",
        "grace",
        json!({"access_level": "standard", "valid_from": "2999-01-01"}),
    )
    .await;
    // A user of a partner the site does not admit.
    let other = site.create_partner("Other").await;
    site.enroll_for(
        &other,
        "oscar",
        "oscar",
        json!({"access_level": "standard"}),
    )
    .await;

    let mut lobby = site.reader("lobby-1", "alice", 1).await;
    let mut side = site.reader("side-1", "alice", 2).await;
    let cases = [
        ("main", "zed", "no_match"), // never enrolled
        ("main", "bob", "no_access_level"),
        ("main", "carol", "unknown_access_level"),
        ("side", "alice", "door_not_in_level"),
        ("main", "dave", "outside_schedule"),
        ("main", "erin", "holiday"),
        ("main", "frank", "expired"),
        ("main", "grace", "not_yet_valid"),
        // `partner_not_allowed` cannot come out of a door scan when the site restricts its
        // partners: a door scan only searches the users of the partners the site admits
        // (SPEC 5), so a user of another partner is not identified at all and the decision is
        // `no_match`. The reason stays reachable through the policy itself (a partner removed
        // from `partners` between identification and decision, or audit re-derivation).
        ("main", "oscar", "no_match"),
    ];
    for (door, palm, reason) in cases {
        let reader = if door == "main" {
            &mut lobby
        } else {
            &mut side
        };
        let (capture_id, r) = scan(reader, palm).await;
        assert_eq!(r["action"], "result");
        assert_eq!(r["granted"], false, "{palm}: {r}");
        assert_eq!(r["door"], door, "{palm}: {r}");
        assert_eq!(r["reason"], reason, "{palm}: {r}");
        assert!(r["message"].as_str().is_some_and(|m| !m.is_empty()), "{r}");
        let e = site
            .wait_event("DoorDecided", |d| d["capture_id"] == capture_id)
            .await;
        assert_eq!(data(&e)["verdict"]["verdict"], "denied", "{palm}: {e}");
        assert_eq!(data(&e)["verdict"]["reason"], reason, "{palm}: {e}");
        if palm == "oscar" || palm == "zed" {
            assert!(
                data(&e).get("subject").is_none(),
                "{palm} was identified: {e}"
            );
        }
        let d = site.door(door).await;
        assert_eq!(d["last_decision"]["granted"], false, "{d}");
        assert_eq!(d["last_decision"]["reason"], reason, "{d}");
    }

    // Not a single coil was switched ON by any of these decisions.
    let on: Vec<_> = site
        .board
        .writes()
        .into_iter()
        .filter(|(t, _, on)| *t >= t0 && *on)
        .collect();
    assert!(on.is_empty(), "a denial switched a coil ON: {on:?}");
    assert!(!site.board.coil(0) && !site.board.coil(1));
    assert!(
        site.events_of("RelaySwitched", |d| d["on"] == true)
            .await
            .is_empty(),
        "a RelaySwitched ON was recorded for a denial"
    );

    // The same site grants a valid user at the same door: the denials above were decisions.
    let t1 = Instant::now();
    let (_, r) = scan(&mut lobby, "alice").await;
    assert_eq!(r["granted"], true, "{r}");
    wait_pulse(&site.board, 0, t1).await;
}

/// A kiosk (site) session at a door's reader that fails tells the reader (SPEC 7: a `result`
/// follows the door's outcome), in the same shape whichever way it fails. A failed liveness
/// check is a denied door decision (`no_match`: it identifies no one); running out of retries
/// on low-quality scans is answered `low_quality`, with no door decision (nobody was judged at
/// the door, as a low-quality door scan is only a retry). Before, the low-quality failure sent
/// the reader nothing after its last `retry`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kiosk_session_failing_low_quality_at_a_door_tells_the_reader_as_liveness_does() {
    let site = start_site("").await;
    site.enroll("alice", "alice", json!({"access_level": "standard"}))
        .await;
    let mut lobby = site.reader("lobby-1", "alice", 1).await;
    let capture = |n: &str, token: &str, quality: f64, liveness: bool| {
        let k = SCANS.fetch_add(1, Ordering::Relaxed);
        let values = palmgate::synthetic::scan("alice", 128, 5000 + k);
        json!({
            "capture_id": format!("kiosk-{n}-{k}-{}", std::process::id()),
            "session": token,
            "template": encode_template(&values),
            "quality": quality,
            "liveness": liveness,
        })
    };

    // A failed liveness check: the door decides (denied), the reader is told.
    let token = kiosk_session(&mut lobby).await;
    lobby
        .send_capture(capture("live", &token, 0.93, false))
        .await
        .unwrap();
    let live = result_cmd(&mut lobby).await;
    assert_eq!(live["granted"], false, "{live}");
    assert_eq!(live["reason"], "no_match", "{live}");

    // Low-quality scans: `retry` each time until the retries are spent, then a `result`.
    let token = kiosk_session(&mut lobby).await;
    for attempt in 1..=3 {
        lobby
            .send_capture(capture("low", &token, 0.1, true))
            .await
            .unwrap();
        let c = lobby.next_command(WAIT).await.expect("a command");
        assert_eq!(c["action"], "retry", "attempt {attempt}: {c}");
        assert_eq!(c["reason"], "low_quality", "attempt {attempt}: {c}");
    }
    lobby
        .send_capture(capture("low", &token, 0.1, true))
        .await
        .unwrap();
    let low = lobby
        .next_command(WAIT)
        .await
        .expect("a result after the last low-quality scan");
    assert_eq!(low["action"], "result", "{low}");
    assert_eq!(low["granted"], false, "{low}");
    assert_eq!(low["door"], "main", "{low}");
    assert_eq!(low["reason"], "low_quality", "{low}");
    assert_eq!(low["message"], live["message"], "{low} vs {live}");
    let keys = |v: &Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&low), keys(&live), "{low} vs {live}");
    let failed = site
        .wait_event("SessionFailed", |d| d["reason"] == "low_quality")
        .await;
    let capture_id = data(&failed)["capture"]["capture_id"].clone();
    assert!(
        site.events_of("DoorDecided", |d| d["capture_id"] == capture_id)
            .await
            .is_empty(),
        "a low-quality capture was decided at the door"
    );
    assert!(!site.board.coil(0));
}

/// Triggers a kiosk (site) session at `r` and returns its token (from the `show` URL).
async fn kiosk_session(r: &mut SimReader) -> String {
    r.trigger().await.expect("trigger");
    let end = Instant::now() + WAIT;
    loop {
        let c = r
            .next_command(end - Instant::now())
            .await
            .expect("a show command");
        if c["action"] == "show" {
            let url = c["url"].as_str().expect("url");
            return url.rsplit('/').next().expect("token").to_string();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Site modes
// ---------------------------------------------------------------------------------------------

/// An unlock window opens and closes on its schedule while the gateway runs (here: every even
/// minute, on a manual clock): the relay follows it, and each change is recorded. Before, the
/// deadline loop looked its "next second" deadline up again after sleeping for it, found it a
/// second later again, and never ticked: a window kept the state it had at start-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlock_window_opens_and_closes_on_schedule_while_the_gateway_runs() {
    let (site, clock) = even_window_site().await;
    clock.advance(chrono::Duration::seconds(60));
    until("the window closes at 11:01: coil 1 OFF", || {
        !site.board.coil(1)
    })
    .await;
    clock.advance(chrono::Duration::seconds(60));
    until("the window opens again at 11:02: coil 1 ON", || {
        site.board.coil(1)
    })
    .await;
    let changes: Vec<bool> = site
        .events_of("DoorRestingChanged", |d| d["door"] == "side")
        .await
        .iter()
        .map(|d| d["data"]["unlocked"] == true)
        .collect();
    assert_eq!(changes, [true, false, true], "policy, then schedule twice");
}

/// The `access` webhook carries every field SPEC 4 lists — `door`, `external_id`, `granted`,
/// `reason`, `level` — with null for what a decision has none of (a grant's reason, the level
/// of a user who has none); a grant at a door that could not open says `door_unavailable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_access_webhook_has_every_field_of_spec_4() {
    use crate::webhooks::{Receiver, Reply};
    let site = start_site("").await;
    let receiver = Receiver::start(Reply::status(200)).await;
    let r = site
        .http
        .put(format!("{}/v1/webhook", site.base))
        .header("x-api-key", &site.key)
        .json(&json!({"url": receiver.url, "events": ["access"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    site.enroll("alice", "alice", json!({"access_level": "standard"}))
        .await;
    site.enroll("bob", "bob", json!({})).await;
    let mut lobby = site.reader("lobby-1", "alice", 1).await;
    let (_, r) = scan(&mut lobby, "alice").await;
    assert_eq!(r["granted"], true, "{r}");
    let (_, r) = scan(&mut lobby, "bob").await;
    assert_eq!(r["granted"], false, "{r}");
    let hits = receiver.wait_for(2, WAIT, "two access webhooks").await;
    let mut data: Vec<Value> = hits
        .iter()
        .map(|h| serde_json::from_slice::<Value>(&h.body).unwrap()["data"].clone())
        .collect();
    data.sort_by_key(|d| d["external_id"].as_str().unwrap_or_default().to_string());
    assert_eq!(
        data,
        [
            json!({"door": "main", "external_id": "alice", "granted": true, "reason": null,
                   "level": "standard"}),
            json!({"door": "main", "external_id": "bob", "granted": false,
                   "reason": "no_access_level", "level": null}),
        ]
    );
    // A grant at a door whose board is down lets nobody in: the webhook says so, as the
    // reader is told (an attendance system must not count an entry).
    site.board.stop();
    site.wait_door("main", "device_down", |d| d["state"] == "device_down")
        .await;
    let (_, r) = scan(&mut lobby, "alice").await;
    assert_eq!(r["reason"], "door_unavailable", "{r}");
    let hits = receiver.wait_for(3, WAIT, "the third access webhook").await;
    let third = hits
        .iter()
        .map(|h| serde_json::from_slice::<Value>(&h.body).unwrap()["data"].clone())
        .find(|d| d["reason"] == "door_unavailable")
        .unwrap_or_else(|| panic!("no door_unavailable webhook: {hits:?}"));
    assert_eq!(
        third,
        json!({"door": "main", "external_id": "alice", "granted": true,
               "reason": "door_unavailable", "level": "standard"})
    );
    drop(lobby);
}

/// A site whose door `side` (coil 1) rests unlocked in even minutes, on a manual clock at
/// 11:00:10 in Almaty (an even minute: the window open), once the window holds coil 1 ON.
async fn even_window_site() -> (Site, Arc<ManualClock>) {
    use chrono::TimeZone;
    let board = new_board().await;
    let doc = site_doc(
        &board.url(),
        &Layout {
            schedules: "even = [\"* */2 * * * *\"]".into(),
            extra: format!(
                "{}\n[[unlock_windows]]\ndoor = \"side\"\nschedule = \"even\"\n",
                side_door("board-1", 1)
            ),
            ..Layout::default()
        },
    );
    let start = chrono::Utc
        .with_ymd_and_hms(2026, 11, 27, 6, 0, 10)
        .unwrap();
    let clock = Arc::new(ManualClock::new(start));
    let site = start_on(board, vec![], &doc, clock.clone()).await;
    until("the window holds coil 1 ON", || site.board.coil(1)).await;
    (site, clock)
}

/// [`even_window_site`] with the log's write lock held by another process (the writer then
/// refuses after its 5 s busy timeout).
async fn even_window_site_with_a_locked_log() -> (Site, Arc<ManualClock>, rusqlite::Connection) {
    let (site, clock) = even_window_site().await;
    let lock = rusqlite::Connection::open(site.store_path()).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    (site, clock, lock)
}

/// Waits (20 s at most, past the writer's busy timeout) until coil 1 is `on`.
async fn side_coil_becomes(site: &Site, on: bool, what: &str) {
    let end = Instant::now() + Duration::from_secs(20);
    while site.board.coil(1) != on {
        assert!(Instant::now() < end, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An unlock window that closes while the log cannot be written still locks its door: SPEC 7,
/// a door is never left unlocked by a failure. The lock cannot be recorded then; the deadline
/// loop records it once the log is writable again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_closing_while_the_log_is_unwritable_still_locks_the_door() {
    let (site, clock, lock) = even_window_site_with_a_locked_log().await;
    // 11:01:10: the window has closed; its Tick waits out the busy timeout and fails.
    clock.advance(chrono::Duration::seconds(60));
    side_coil_becomes(
        &site,
        false,
        "the door stayed unlocked while the log was locked",
    )
    .await;
    lock.execute_batch("ROLLBACK").unwrap();
    drop(lock);
    // The deadline loop retries a second later (on this clock) and records the lock.
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        clock.advance(chrono::Duration::seconds(1));
        let changes: Vec<bool> = site
            .events_of("DoorRestingChanged", |d| d["door"] == "side")
            .await
            .iter()
            .map(|d| d["data"]["unlocked"] == true)
            .collect();
        if changes == [true, false] {
            break;
        }
        assert!(
            Instant::now() < end,
            "the lock was not recorded: {changes:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(!site.board.coil(1), "still locked");
}

/// The window locked unrecorded opens again before the log is writable: the log still says
/// the door rests unlocked, and the window says so again, so nothing is recorded — the door
/// goes back to what the log holds (unlocked) instead of staying locked through the window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_door_locked_unrecorded_follows_the_log_again_when_its_window_reopens() {
    let (site, clock, lock) = even_window_site_with_a_locked_log().await;
    clock.advance(chrono::Duration::seconds(60));
    side_coil_becomes(
        &site,
        false,
        "the door stayed unlocked while the log was locked",
    )
    .await;
    // 11:02:10, the log still locked: the window is open again (the deadline loop ticks each
    // second of this clock).
    clock.advance(chrono::Duration::seconds(60));
    let end = Instant::now() + Duration::from_secs(20);
    while !site.board.coil(1) {
        assert!(
            Instant::now() < end,
            "the door stayed locked through its window"
        );
        clock.advance(chrono::Duration::seconds(1));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    lock.execute_batch("ROLLBACK").unwrap();
    let changes: Vec<bool> = site
        .events_of("DoorRestingChanged", |d| d["door"] == "side")
        .await
        .iter()
        .map(|d| d["data"]["unlocked"] == true)
        .collect();
    assert_eq!(
        changes,
        [true],
        "nothing to record: the log's state is the window's"
    );
}

/// The fixture's site with a door `side` (coil 1) that an unlock window always rests unlocked,
/// once the window holds coil 1 ON.
async fn side_always_unlocked_site() -> Site {
    let extra = format!(
        "{}\n[[unlock_windows]]\ndoor = \"side\"\nschedule = \"always\"\n",
        side_door("board-1", 1)
    );
    let site = start_site(&extra).await;
    until("the unlock window holds coil 1 ON", || site.board.coil(1)).await;
    site
}

/// A lockdown the log cannot record (its write lock held by another process) still locks
/// every door, a door resting unlocked by its window included, before the operator hears the
/// error: an operator locking down must not find the doors open because the disk failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lockdown_the_log_cannot_record_still_locks_every_door() {
    let site = side_always_unlocked_site().await;
    let lock = rusqlite::Connection::open(site.store_path()).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    let r = site
        .admin_post("/admin/v1/lockdown", json!({"on": true}))
        .await;
    assert_eq!(r.status(), 500, "the lockdown could not be recorded");
    // Sent to the relays before the answer; the board's write follows.
    until("the door locked", || {
        !site.board.coil(1) && !site.board.coil(0)
    })
    .await;
    lock.execute_batch("ROLLBACK").unwrap();
    drop(lock);
    // Unrecorded: the log has no lockdown, and the door stays locked until a recorded change.
    let mode = site.admin_get("/admin/v1/mode").await;
    assert_eq!(mode["lockdown"], false, "{mode}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !site.board.coil(1),
        "not unlocked again by the deadline loop"
    );
    // Once the log can be written, the operator's lockdown is recorded.
    let end = Instant::now() + WAIT;
    loop {
        let r = site
            .admin_post("/admin/v1/lockdown", json!({"on": true}))
            .await;
        if r.status() == 200 {
            break;
        }
        assert!(
            Instant::now() < end,
            "lockdown still refused: {}",
            r.status()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(site.events_of("SiteModeChanged", |_| true).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lockdown_denies_every_grant_and_holds_every_relay_off_until_lifted() {
    // `side` rests unlocked by an unlock window: lockdown must lock it too.
    let site = side_always_unlocked_site().await;
    site.enroll("alice", "alice", json!({"access_level": "standard"}))
        .await;
    let mut lobby = site.reader("lobby-1", "alice", 1).await;

    let mode = site.set_mode("lockdown", true).await;
    assert_eq!(mode, json!({"lockdown": true, "emergency": false}));
    until("lockdown switches the unlock window's coil OFF", || {
        !site.board.coil(1)
    })
    .await;
    let t0 = Instant::now();
    let (_, r) = scan(&mut lobby, "alice").await;
    assert_eq!(r["granted"], false, "{r}");
    assert_eq!(r["reason"], "lockdown");
    let side = site.door("side").await;
    assert_eq!(side["state"], "locked", "{side}");
    assert_eq!(side["resting_unlocked"], false, "{side}");
    // A little while (more than a pulse and a couple of unlock-window ticks): nothing turns ON.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for coil in [0, 1] {
        let on: Vec<_> = writes_since(&site.board, coil, t0)
            .into_iter()
            .filter(|(_, on)| *on)
            .collect();
        assert!(on.is_empty(), "coil {coil} switched ON during lockdown");
        assert!(!site.board.coil(coil), "coil {coil} is ON during lockdown");
    }

    let mode = site.set_mode("lockdown", false).await;
    assert_eq!(mode, json!({"lockdown": false, "emergency": false}));
    until("the unlock window holds coil 1 ON again", || {
        site.board.coil(1)
    })
    .await;
    let t1 = Instant::now();
    let (_, r) = scan(&mut lobby, "alice").await;
    assert_eq!(r["granted"], true, "{r}");
    wait_pulse(&site.board, 0, t1).await;

    let modes = site.events_of("SiteModeChanged", |_| true).await;
    let flags: Vec<_> = modes
        .iter()
        .map(|e| (data(e)["lockdown"].clone(), data(e)["emergency"].clone()))
        .collect();
    assert_eq!(
        flags,
        vec![(json!(true), json!(false)), (json!(false), json!(false))]
    );
}

/// Lockdown means every relay off (SPEC 6): a door unlocked by a grant's pulse when lockdown
/// starts is locked at once, not at the end of its pulse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lockdown_relocks_a_door_in_the_middle_of_a_pulse() {
    let board = new_board().await;
    let layout = Layout {
        pulse_ms: 5000,
        ..Layout::default()
    };
    let doc = site_doc(&board.url(), &layout);
    let site = start_with(board, vec![], &doc).await;
    site.enroll("alice", "alice", json!({"access_level": "standard"}))
        .await;
    let mut lobby = site.reader("lobby-1", "alice", 1).await;
    let (_, r) = scan(&mut lobby, "alice").await;
    assert_eq!(r["granted"], true, "{r}");
    until("coil 0 ON", || site.board.coil(0)).await;
    let t0 = Instant::now();
    site.set_mode("lockdown", true).await;
    let end = t0 + Duration::from_millis(1500);
    while site.board.coil(0) {
        assert!(
            Instant::now() < end,
            "lockdown left the door unlocked for the rest of its 5 s pulse"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emergency_unlock_holds_every_door_open_through_grants_until_lifted() {
    let site = start_site(&side_door("board-1", 1)).await;
    site.enroll("alice", "alice", json!({"access_level": "standard"}))
        .await;
    let mut lobby = site.reader("lobby-1", "alice", 1).await;
    site.wait_door("main", "device up", |d| d["device_up"] == true)
        .await;

    let t0 = Instant::now();
    let mode = site.set_mode("emergency-unlock", true).await;
    assert_eq!(mode, json!({"lockdown": false, "emergency": true}));
    until("every door coil ON", || {
        site.board.coil(0) && site.board.coil(1)
    })
    .await;
    for id in ["main", "side"] {
        let d = site
            .wait_door(id, "unlocked by the emergency", |d| {
                d["state"] == "unlocked"
            })
            .await;
        assert_eq!(d["resting_unlocked"], true, "{d}");
    }

    // A grant during the emergency: its pulse ends, the door stays unlocked.
    let (_, r) = scan(&mut lobby, "alice").await;
    assert_eq!(r["granted"], true, "{r}");
    tokio::time::sleep(Duration::from_millis(1000)).await; // > pulse_ms (400)
    assert!(site.board.coil(0) && site.board.coil(1));
    for coil in [0, 1] {
        let off: Vec<_> = writes_since(&site.board, coil, t0)
            .into_iter()
            .filter(|(_, on)| !*on)
            .collect();
        assert!(
            off.is_empty(),
            "coil {coil} switched OFF during the emergency"
        );
    }

    let mode = site.set_mode("emergency-unlock", false).await;
    assert_eq!(mode, json!({"lockdown": false, "emergency": false}));
    until("every door coil OFF", || {
        !site.board.coil(0) && !site.board.coil(1)
    })
    .await;
    site.wait_door("main", "locked again", |d| d["state"] == "locked")
        .await;

    let modes = site.events_of("SiteModeChanged", |_| true).await;
    let flags: Vec<_> = modes
        .iter()
        .map(|e| (data(e)["lockdown"].clone(), data(e)["emergency"].clone()))
        .collect();
    assert_eq!(
        flags,
        vec![(json!(false), json!(true)), (json!(false), json!(false))]
    );
}

// ---------------------------------------------------------------------------------------------
// 4-6. Relay boards that die, restart, or come up with a coil ON
// ---------------------------------------------------------------------------------------------

/// A site with doors `main` on board-1 and `side` on board-2 (coil 0), both in level
/// `standard`, plus `extra` policy text.
async fn two_board_site(extra: &str) -> Site {
    let board = new_board().await;
    let board2 = new_board().await;
    let layout = Layout {
        standard_doors: r#""main", "side""#.into(),
        extra: format!(
            "\n[[relay_devices]]\nid = \"board-2\"\nmodbus = \"{}\"\nunit = 1\n{}{extra}",
            board2.url(),
            side_door("board-2", 0)
        ),
        ..Layout::default()
    };
    let doc = site_doc(&board.url(), &layout);
    start_with(board, vec![board2], &doc).await
}

/// A board with no contact input (nothing to poll) that dies while idle is reported down by
/// itself within a few seconds, so the first scan after it is told the door cannot open. Before,
/// nothing read it until the grant's write failed: the board showed up, and the first person
/// was welcomed at a door that stayed locked (review, session 24).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_board_with_no_inputs_that_dies_while_idle_is_reported_down() {
    let board = new_board().await;
    let contact = "contact = { device = \"board-1\", input = 0, held_open_after_s = 2 }\n";
    let doc = site_doc(&board.url(), &Layout::default());
    assert!(doc.contains(contact));
    let site = start_with(board, vec![], &doc.replace(contact, "")).await;
    site.enroll("alice", "alice", json!({"access_level": "standard"}))
        .await;
    let mut lobby = site.reader("lobby-1", "alice", 1).await;
    site.wait_door("main", "its board up", |d| {
        d["device_up"] == true && d["state"] == "locked"
    })
    .await;
    site.board.stop();
    site.wait_door("main", "device_down with no scan", |d| {
        d["state"] == "device_down"
    })
    .await;
    let (_, r) = scan(&mut lobby, "alice").await;
    assert_eq!(r["granted"], true, "{r}");
    assert_eq!(r["reason"], "door_unavailable", "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_board_is_reported_decisions_go_on_and_other_boards_keep_working() {
    let site = two_board_site("").await;
    let board2 = &site.boards[0];
    site.enroll("alice", "alice", json!({"access_level": "standard"}))
        .await;
    let mut lobby = site.reader("lobby-1", "alice", 1).await;
    let mut side = site.reader("side-1", "alice", 2).await;
    for id in ["main", "side"] {
        site.wait_door(id, "its board up", |d| {
            d["device_up"] == true && d["state"] == "locked"
        })
        .await;
    }

    site.board.stop();
    site.wait_door("main", "device_down", |d| d["state"] == "device_down")
        .await;
    let down = site
        .wait_event("DeviceStatusChanged", |d| {
            d["device"] == "board-1" && d["up"] == false
        })
        .await;
    let side_door_now = site.door("side").await;
    assert_eq!(side_door_now["state"], "locked", "{side_door_now}");
    assert_eq!(side_door_now["device_up"], true);

    // The scan at the unreachable door is still decided and answered: granted, but the person
    // is told the door cannot open now (not welcomed at a door that stays locked).
    let (capture_id, r) = scan(&mut lobby, "alice").await;
    assert_eq!(r["granted"], true, "{r}");
    assert_eq!(r["door"], "main");
    assert_eq!(r["reason"], "door_unavailable", "{r}");
    assert_eq!(
        r["message"],
        "Access granted, but the door cannot be opened right now. Please contact security.",
        "{r}"
    );
    let decided = site
        .wait_event("DoorDecided", |d| d["capture_id"] == capture_id)
        .await;
    assert_eq!(data(&decided)["verdict"]["verdict"], "granted");
    let main = site.door("main").await;
    assert_eq!(main["last_decision"]["granted"], true, "{main}");
    assert_eq!(main["state"], "device_down", "{main}");

    // The other board's door works as usual.
    let t0 = Instant::now();
    let (_, r) = scan(&mut side, "alice").await;
    assert_eq!(r["granted"], true, "{r}");
    assert_eq!(r["door"], "side");
    assert_eq!(r["message"], "Access granted. Welcome!", "{r}");
    assert!(r.get("reason").is_none(), "{r}");
    wait_pulse(board2, 0, t0).await;
    assert!(!board2.coil(0));

    // Power comes back with the relay latched ON: the gateway reconnects and locks the door,
    // and the grant made while the board was down is not replayed late.
    site.board.force_coil(0, true);
    let t1 = Instant::now();
    power_cycle(&site.board, false).await;
    site.wait_event_after(pos(&down), "DeviceStatusChanged", |d| {
        d["device"] == "board-1" && d["up"] == true
    })
    .await;
    until("coil 0 driven OFF after the reconnect", || {
        !site.board.coil(0)
    })
    .await;
    site.wait_door("main", "locked with its board up", |d| {
        d["state"] == "locked" && d["device_up"] == true
    })
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await; // longer than pulse_ms
    let late_on: Vec<_> = writes_since(&site.board, 0, t1)
        .into_iter()
        .filter(|(_, on)| *on)
        .collect();
    assert!(
        late_on.is_empty(),
        "a stale pulse was replayed: {late_on:?}"
    );
    assert!(!site.board.coil(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_board_restarting_mid_pulse_is_locked_on_reconnect_not_at_pulse_end() {
    let board = new_board().await;
    let layout = Layout {
        pulse_ms: 5000,
        ..Layout::default()
    };
    let doc = site_doc(&board.url(), &layout);
    let site = start_with(board, vec![], &doc).await;
    site.enroll("alice", "alice", json!({"access_level": "standard"}))
        .await;
    let mut lobby = site.reader("lobby-1", "alice", 1).await;
    site.wait_door("main", "device up", |d| d["device_up"] == true)
        .await;

    let t0 = Instant::now();
    let (_, r) = scan(&mut lobby, "alice").await;
    assert_eq!(r["granted"], true, "{r}");
    until("coil 0 ON", || site.board.coil(0)).await;
    let on = writes_since(&site.board, 0, t0)
        .into_iter()
        .find(|(_, on)| *on)
        .unwrap()
        .0;

    // Power-cycle of a latching board: the relay stays ON through the restart.
    power_cycle(&site.board, false).await;
    assert!(site.board.coil(0));
    until("coil 0 OFF after the reconnect", || !site.board.coil(0)).await;
    let off = writes_since(&site.board, 0, on)
        .into_iter()
        .find(|(_, on)| !*on)
        .unwrap()
        .0;
    assert!(
        off.duration_since(on) < Duration::from_millis(3500),
        "locked {:?} after ON; the pulse is 5 s, the reconnect should lock it well before",
        off.duration_since(on)
    );
    let down = site
        .wait_event("DeviceStatusChanged", |d| {
            d["device"] == "board-1" && d["up"] == false
        })
        .await;
    let locked = site
        .wait_event_after(pos(&down), "RelaySwitched", |d| {
            d["door"] == "main" && d["on"] == false
        })
        .await;
    assert_eq!(
        data(&locked)["tag"],
        "",
        "the reconnect's resting drive: {locked}"
    );
    site.wait_door("main", "locked", |d| {
        d["state"] == "locked" && d["relay_on"] == false
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coil_found_on_at_start_up_is_driven_off() {
    let board = new_board().await;
    board.force_coil(0, true);
    let doc = site_toml(&board, "");
    let site = start_with(board, vec![], &doc).await;
    until("coil 0 driven OFF at start-up", || !site.board.coil(0)).await;
    let e = site
        .wait_event("RelaySwitched", |d| d["door"] == "main" && d["on"] == false)
        .await;
    assert_eq!(data(&e)["tag"], "", "a resting-state drive: {e}");
    site.wait_door("main", "locked", |d| {
        d["state"] == "locked" && d["relay_on"] == false
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 7. Policy hot reload
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_put_changes_decisions_and_an_invalid_one_changes_nothing() {
    let site = start_site("").await;
    site.enroll("alice", "alice", json!({"access_level": "standard"}))
        .await;
    let mut lobby = site.reader("lobby-1", "alice", 1).await;
    let mut side = site.reader("side-1", "alice", 2).await;
    let (_, r) = scan(&mut lobby, "alice").await;
    assert_eq!(r["granted"], true, "{r}");

    let before = site.admin_get("/admin/v1/policy").await;
    let doc0 = before["document"].as_str().unwrap().to_string();
    let sha0 = before["sha256"].as_str().unwrap().to_string();
    assert_eq!(sha0, hex::encode(Sha256::digest(doc0.as_bytes())));

    // 1. Level `standard` now follows a window that is never open during the test.
    let closed_hour = (almaty_now().hour() + 12) % 24;
    let board_url = site.board.url();
    let closed = Layout {
        schedules: format!("closed = [\"* * {closed_hour} * * *\"]"),
        standard_schedule: "closed".into(),
        ..Layout::default()
    };
    let doc1 = site_doc(&board_url, &closed);
    assert_ne!(doc1, doc0);
    let (status, body) = site.put_policy(&doc1).await;
    assert_eq!(status, 200, "{body}");
    let sha1 = hex::encode(Sha256::digest(doc1.as_bytes()));
    assert_eq!(body["sha256"], sha1.as_str());
    assert_eq!(body["warnings"], json!([]), "{body}");
    let now = site.admin_get("/admin/v1/policy").await;
    assert_eq!(now["sha256"], sha1.as_str());
    assert_eq!(now["document"], doc1.as_str());
    let (capture_id, r) = scan(&mut lobby, "alice").await;
    assert_eq!(r["granted"], false, "{r}");
    assert_eq!(r["reason"], "outside_schedule");
    let e = site
        .wait_event("DoorDecided", |d| d["capture_id"] == capture_id)
        .await;
    assert_eq!(
        data(&e)["policy"],
        sha1.as_str(),
        "names its policy version"
    );

    // 2. Invalid documents: 400 naming the key / line; the policy in force stays.
    let unknown_schedule = doc1.replace("schedule = \"closed\"", "schedule = \"nope\"");
    let line = unknown_schedule
        .lines()
        .position(|l| l.contains("\"nope\""))
        .unwrap()
        + 1;
    let bad_cron = doc1.replace(
        &format!("closed = [\"* * {closed_hour} * * *\"]"),
        "closed = [\"* * 25 * * *\"]",
    );
    let syntax = format!("{doc1}\n[[doors]\nid = ");
    let syntax_line = syntax.lines().count() - 1;
    // A level on a schedule that never opens again (its year is past): refused.
    let past = doc1.replace(
        &format!("closed = [\"* * {closed_hour} * * *\"]"),
        "closed = [\"* * 8-17 * * Mon-Fri 2025\"]",
    );
    let cases = [
        (
            past.as_str(),
            vec![
                "schedules.closed".to_string(),
                "opens after".into(),
                "level `standard`".into(),
            ],
        ),
        (
            unknown_schedule.as_str(),
            vec![
                "levels[0].schedule".to_string(),
                format!("line {line}"),
                "nope".into(),
            ],
        ),
        (bad_cron.as_str(), vec!["schedules.closed".to_string()]),
        (syntax.as_str(), vec![format!("line {syntax_line}")]),
    ];
    for (doc, needles) in &cases {
        let (status, body) = site.put_policy(doc).await;
        assert_eq!(status, 400, "{body}");
        let msg = body["message"].as_str().unwrap_or_default();
        for n in needles {
            assert!(msg.contains(n.as_str()), "`{n}` not in the message: {msg}");
        }
        assert_eq!(site.policy_sha().await, sha1, "the policy in force stays");
    }
    let (_, r) = scan(&mut lobby, "alice").await;
    assert_eq!(r["reason"], "outside_schedule", "decisions unchanged: {r}");

    // A number in a window's day of week is accepted, with a warning (cron counts Sunday = 1).
    let numeric = doc1.replace(
        &format!("\"* * {closed_hour} * * *\""),
        &format!("\"* * {closed_hour} * * 1-7\""),
    );
    assert_ne!(numeric, doc1);
    let (status, body) = site.put_policy(&numeric).await;
    assert_eq!(status, 200, "{body}");
    let warnings = body["warnings"].as_array().cloned().unwrap_or_default();
    assert_eq!(warnings.len(), 1, "{body}");
    let w = warnings[0].as_str().unwrap_or_default();
    assert!(
        w.contains("schedules.closed") && w.contains("Sunday = 1"),
        "{w}"
    );
    assert_eq!(
        site.admin_get("/admin/v1/policy").await["warnings"],
        body["warnings"]
    );

    // 3. A new door, and `standard` open again for both doors.
    let open = Layout {
        standard_doors: r#""main", "side""#.into(),
        extra: side_door("board-1", 1),
        ..Layout::default()
    };
    let doc2 = site_doc(&board_url, &open);
    let (status, body) = site.put_policy(&doc2).await;
    assert_eq!(status, 200, "{body}");
    let sha2 = hex::encode(Sha256::digest(doc2.as_bytes()));
    assert_eq!(body["sha256"], sha2.as_str());
    let t0 = Instant::now();
    let (_, r) = scan(&mut side, "alice").await;
    assert_eq!(r["granted"], true, "{r}");
    assert_eq!(r["door"], "side");
    wait_pulse(&site.board, 1, t0).await;
    let (_, r) = scan(&mut lobby, "alice").await;
    assert_eq!(r["granted"], true, "{r}");

    // Re-putting the document in force is accepted and activates nothing new.
    let (status, _) = site.put_policy(&doc2).await;
    assert_eq!(status, 200);

    let activated = site.events_of("PolicyActivated", |_| true).await;
    let got: Vec<_> = activated
        .iter()
        .map(|e| {
            (
                data(e)["sha256"].as_str().unwrap().to_string(),
                data(e)["document"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (sha0, doc0),
            (sha1, doc1),
            (hex::encode(Sha256::digest(numeric.as_bytes())), numeric),
            (sha2, doc2)
        ],
        "one PolicyActivated per accepted document, carrying it and its sha256"
    );
}

/// An unlock window with `lock_on_stop = true` has its door locked when the gateway stops
/// (SIGTERM), and unlocked again by the next start while the window is open; a window without
/// it leaves the door as it rests (decision: the default keeps the behaviour sites had).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_with_lock_on_stop_locks_its_door_when_the_gateway_stops() {
    use crate::fixtures::{Options, TestServer};
    let board = new_board().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("site.toml");
    let file_name = file.display().to_string();
    let doc = site_doc(
        &board.url(),
        &Layout {
            extra: format!(
                "{}{SIDE_ALWAYS_OPEN}lock_on_stop = true\n",
                side_door("board-1", 1)
            ),
            ..Layout::default()
        },
    );
    std::fs::write(&file, &doc).unwrap();
    let mut s =
        TestServer::start_with(Options::default().extra_toml(&format!("site = {file_name:?}")))
            .await;
    let until = async |coil: u16, want: bool, what: &str| {
        let end = Instant::now() + WAIT;
        while board.coil(coil) != want {
            assert!(Instant::now() < end, "{what}: coil {coil} is not {want}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    until(1, true, "the window holds the side door").await;
    let status = s.terminate();
    assert!(
        status.is_some_and(|st| st.success()),
        "a clean stop: {status:?}"
    );
    assert!(
        !board.coil(1),
        "stopped: the side door is locked (lock_on_stop); log:\n{}",
        s.stderr_log()
    );
    s.launch().await;
    until(1, true, "started again inside the window").await;
    // Without the key: left as it rests.
    s.terminate();
    std::fs::write(&file, doc.replace("lock_on_stop = true\n", "")).unwrap();
    s.launch().await;
    until(1, true, "the window again").await;
    s.terminate();
    assert!(board.coil(1), "no lock_on_stop: the door rests unlocked");
}

/// A coil an unlock window held ON whose door is gone from the site file after a restart
/// (removed, moved to another coil, or its board moved to another address) is driven OFF at
/// start-up, and the log records it locked. Before, a restarted gateway's device task knew
/// nothing of it: the coil stayed ON for good while the log and the doors page showed nothing
/// (crash-consistency review, session 26).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coil_left_on_by_a_door_the_restart_removed_is_locked() {
    use crate::fixtures::{Options, TestServer};
    let board = new_board().await;
    let moved_to = new_board().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("site.toml");
    let file_name = file.display().to_string();
    let with_side = |url: &str, coil: u16| {
        site_doc(
            url,
            &Layout {
                extra: format!("{}{SIDE_ALWAYS_OPEN}", side_door("board-1", coil)),
                ..Layout::default()
            },
        )
    };
    async fn on_within(b: &SimBoard, coil: u16, want: bool, what: &str) {
        let end = Instant::now() + WAIT;
        while b.coil(coil) != want {
            assert!(Instant::now() < end, "{what}: coil {coil} is not {want}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    std::fs::write(&file, with_side(&board.url(), 1)).unwrap();
    let mut s =
        TestServer::start_with(Options::default().extra_toml(&format!("site = {file_name:?}")))
            .await;
    on_within(&board, 1, true, "the window holds the side door").await;
    let log = s.store_path();
    let side_offs = || relay_switched(&log, "side", false);

    // Removed: a stop, the door gone from the file, a start.
    s.terminate();
    assert!(
        board.coil(1),
        "a clean stop leaves the window's door as it rests"
    );
    let offs = side_offs();
    std::fs::write(&file, site_doc(&board.url(), &Layout::default())).unwrap();
    s.launch().await;
    on_within(&board, 1, false, "the removed door's coil at start-up").await;
    let end = Instant::now() + WAIT;
    while side_offs() == offs {
        assert!(
            Instant::now() < end,
            "the OFF of the removed door is not recorded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Moved to another coil across a restart: the old coil goes OFF, the new one ON.
    std::fs::write(&file, with_side(&board.url(), 1)).unwrap();
    s.terminate();
    s.launch().await;
    on_within(&board, 1, true, "the window again").await;
    s.terminate();
    std::fs::write(&file, with_side(&board.url(), 2)).unwrap();
    s.launch().await;
    on_within(&board, 2, true, "the moved door's new coil").await;
    on_within(&board, 1, false, "the moved door's old coil").await;

    // Its board moved to another address across a restart: OFF at the old one.
    s.terminate();
    std::fs::write(&file, with_side(&moved_to.url(), 2)).unwrap();
    s.launch().await;
    on_within(&moved_to, 2, true, "the door at the board's new address").await;
    on_within(&board, 2, false, "the coil at the board's old address").await;

    // The board renamed, at the same address: its coils are its own task's, so no second
    // connection switches the window's door OFF (review, session 26).
    s.terminate();
    std::fs::write(
        &file,
        with_side(&moved_to.url(), 2).replace("board-1", "board-a"),
    )
    .unwrap();
    s.launch().await;
    let end = Instant::now() + Duration::from_secs(2);
    while Instant::now() < end {
        assert!(
            moved_to.coil(2),
            "the renamed board's door went OFF at start-up"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    s.terminate();
    let (ok, out) = crate::crash_suite::audit_verify(s.config_path());
    assert!(ok, "{out}");
}

/// A policy activated through the admin API stays in force across restarts (SIGTERM and
/// SIGKILL): start-up activates the site file only when it changed since the gateway last read
/// it, and warns when the policy in force differs from the unchanged file. SIGHUP still
/// activates the file, and an edited file is activated at the next start-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_put_survives_restarts_and_an_edited_site_file_is_activated_at_start_up() {
    use crate::fixtures::{ADMIN_TOKEN, Options, TestServer};
    let board = new_board().await;
    let board_url = board.url();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("site.toml");
    let file_name = file.display().to_string();
    let doc0 = site_doc(&board_url, &Layout::default());
    std::fs::write(&file, &doc0).unwrap();
    let sha = |doc: &str| hex::encode(Sha256::digest(doc.as_bytes()));
    let mut s =
        TestServer::start_with(Options::default().extra_toml(&format!("site = {file_name:?}")))
            .await;
    let (_, key) = s.create_partner("Acme").await;
    let reader = |s: &TestServer, id: &str, seed: u64| {
        SimReader::connect(SimOptions {
            mqtt_url: s.mqtt_url.clone(),
            topic_prefix: "palmgate".into(),
            reader: ReaderId(id.into()),
            palm: "alice".into(),
            dim: 128,
            quality: 0.93,
            liveness: true,
            seed,
        })
    };
    let created = s
        .enroll(
            &key,
            "",
            &json!({"external_id": "alice", "metadata": {"access_level": "standard"}}),
        )
        .await
        .created();
    let mut desk = reader(&s, "desk-1", 100).await.unwrap();
    desk.capture(Some(&created.token())).await.unwrap();
    let end = Instant::now() + WAIT;
    loop {
        let v: Value = s.session(&key, &created.session_id).await.json();
        if v["state"] == "completed" {
            break;
        }
        assert!(Instant::now() < end, "enrollment did not complete: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let admin_get = async |s: &TestServer, path: &str| -> Value {
        s.get(path)
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    };
    let policy_sha = async |s: &TestServer| -> String {
        admin_get(s, "/admin/v1/policy").await["sha256"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    // A scan at the lobby after (re)connecting to the gateway now running.
    let lobby_scan = async |s: &TestServer| -> Value {
        let mut lobby = reader(s, "lobby-1", 1).await.unwrap();
        scan(&mut lobby, "alice").await.1
    };
    assert_eq!(policy_sha(&s).await, sha(&doc0));
    let r = lobby_scan(&s).await;
    assert_eq!(r["granted"], true, "{r}");

    // The admin API revokes `standard`'s access (a window never open during the test).
    let closed_hour = (almaty_now().hour() + 12) % 24;
    let doc1 = site_doc(
        &board_url,
        &Layout {
            schedules: format!("closed = [\"* * {closed_hour} * * *\"]"),
            standard_schedule: "closed".into(),
            ..Layout::default()
        },
    );
    let put = |s: &TestServer, doc: &str| {
        s.client
            .put(s.url("/admin/v1/policy"))
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", "application/toml")
            .body(doc.to_string())
            .send()
    };
    let r = put(&s, &doc1).await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    let r = lobby_scan(&s).await;
    assert_eq!(r["reason"], "outside_schedule", "{r}");

    // A clean stop and a start: the PUT policy is in force and decides; a warning names it and
    // the unchanged file.
    s.terminate();
    s.launch().await;
    assert_eq!(
        policy_sha(&s).await,
        sha(&doc1),
        "the admin API's policy survives a restart"
    );
    let r = lobby_scan(&s).await;
    assert_eq!(r["granted"], false, "{r}");
    assert_eq!(r["reason"], "outside_schedule", "{r}");
    let log = s.stderr_log();
    let warned = log.lines().any(|l| {
        l.contains("WARN")
            && l.contains("differs from the site file")
            && l.contains(&file_name)
            && l.contains(&sha(&doc1))
    });
    assert!(
        warned,
        "a warning names the policy in force and the file:\n{log}"
    );
    // A crash (SIGKILL) and a start: the same.
    s.restart().await;
    assert_eq!(policy_sha(&s).await, sha(&doc1), "after SIGKILL");

    // SIGHUP is the operator asking for the file: it is activated.
    let config = s.config_path().display().to_string();
    let pid = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                String::from_utf8_lossy(&c)
                    .split('\0')
                    .any(|arg| arg == config)
            })
        })
        .expect("the gateway's process");
    // SAFETY: kill(2) only reads its integer arguments; the pid is the gateway we started.
    unsafe {
        libc::kill(pid, libc::SIGHUP);
    }
    let end = Instant::now() + WAIT;
    while policy_sha(&s).await != sha(&doc0) {
        assert!(
            Instant::now() < end,
            "SIGHUP did not activate the site file"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The admin API again, and a restart: SIGHUP's read of the file counts as the last one.
    let r = put(&s, &doc1).await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    s.restart().await;
    assert_eq!(
        policy_sha(&s).await,
        sha(&doc1),
        "after SIGHUP, a PUT, a restart"
    );

    // The file itself is edited: the next start-up activates it, and decisions follow it.
    let doc2 = site_doc(
        &board_url,
        &Layout {
            pulse_ms: 500,
            ..Layout::default()
        },
    );
    std::fs::write(&file, &doc2).unwrap();
    s.restart().await;
    assert_eq!(
        policy_sha(&s).await,
        sha(&doc2),
        "an edited site file is activated at start-up"
    );
    let r = lobby_scan(&s).await;
    assert_eq!(r["granted"], true, "{r}");

    let events = admin_get(&s, "/admin/v1/events?after=0&limit=1000").await;
    let activations: Vec<(String, String)> = events["events"]
        .as_array()
        .expect("events page")
        .iter()
        .filter(|e| e["type"] == "PolicyActivated")
        .map(|e| {
            (
                e["data"]["source"].as_str().unwrap_or_default().to_string(),
                e["data"]["sha256"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let want = |source: &str, doc: &str| (source.to_string(), sha(doc));
    assert_eq!(
        activations,
        vec![
            want("startup", &doc0),
            want("admin", &doc1),
            want("sighup", &doc0),
            want("admin", &doc1),
            want("startup", &doc2),
        ],
        "no restart activated the unchanged file"
    );
    drop(desk);
}

/// A relay board that a hot-reloaded policy adds is connected right away: its status is
/// reported, its coil is driven to the resting state, and its contact is watched — without
/// waiting for a first grant to need it (SPEC 7; `app/relays.rs` promises the same).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_board_added_by_a_policy_put_is_connected_locked_and_watched() {
    let site = start_site("").await;
    site.wait_door("main", "device up", |d| d["device_up"] == true)
        .await;
    let board2 = new_board().await;
    board2.force_coil(0, true); // a relay found ON
    let layout = Layout {
        standard_doors: r#""main", "side""#.into(),
        extra: format!(
            "\n[[relay_devices]]\nid = \"board-2\"\nmodbus = \"{}\"\nunit = 1\n{}\
             contact = {{ device = \"board-2\", input = 0, held_open_after_s = 2 }}\n",
            board2.url(),
            side_door("board-2", 0)
        ),
        ..Layout::default()
    };
    let (status, body) = site.put_policy(&site_doc(&site.board.url(), &layout)).await;
    assert_eq!(status, 200, "{body}");
    site.wait_door("side", "its new board reported up", |d| {
        d["device_up"] == true
    })
    .await;
    until("the new board's coil driven OFF", || !board2.coil(0)).await;
    board2.set_input(0, true);
    site.wait_event("DoorForcedOpen", |d| d["door"] == "side")
        .await;
}

/// A door that a hot-reloaded policy adds on a board already in use is part of that board's
/// "every door coil" from then on: after the board reconnects, its coil is driven locked too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_door_added_by_a_policy_put_is_locked_after_its_board_reconnects() {
    let site = start_site("").await;
    site.wait_door("main", "device up", |d| d["device_up"] == true)
        .await;
    let layout = Layout {
        standard_doors: r#""main", "side""#.into(),
        extra: side_door("board-1", 1),
        ..Layout::default()
    };
    let (status, body) = site.put_policy(&site_doc(&site.board.url(), &layout)).await;
    assert_eq!(status, 200, "{body}");
    let down_before = site
        .events_of("DeviceStatusChanged", |d| d["up"] == false)
        .await
        .len();
    assert_eq!(down_before, 0);
    // The board power-cycles with the new door's relay latched ON.
    relatched_coil_is_locked_after_a_power_cycle(&site, 1, "side").await;
}

/// A door contact that a hot-reloaded policy adds on a board already in use is watched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contact_added_by_a_policy_put_on_a_board_in_use_is_watched() {
    let site = start_site("").await;
    site.wait_door("main", "device up", |d| d["device_up"] == true)
        .await;
    let layout = Layout {
        standard_doors: r#""main", "side""#.into(),
        extra: format!(
            "{}contact = {{ device = \"board-1\", input = 2, held_open_after_s = 2 }}\n",
            side_door("board-1", 1)
        ),
        ..Layout::default()
    };
    let (status, body) = site.put_policy(&site_doc(&site.board.url(), &layout)).await;
    assert_eq!(status, 200, "{body}");
    site.board.set_input(2, true);
    site.wait_event("DoorForcedOpen", |d| d["door"] == "side")
        .await;
    let d = site.door("side").await;
    assert_eq!(d["state"], "alarm", "{d}");
}

/// An unlock window `always` on door `side`.
const SIDE_ALWAYS_OPEN: &str = "\n[[unlock_windows]]\ndoor = \"side\"\nschedule = \"always\"\n";

/// A door that a hot-reloaded policy removes while its relay rests unlocked (an unlock window)
/// is locked: its coil is driven OFF, stays OFF after its board restarts with the relay
/// latched ON, and the door's log says it no longer rests unlocked (SPEC 7).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_door_a_policy_put_removes_while_it_rests_unlocked_is_locked() {
    let site = start_site(&format!("{}{SIDE_ALWAYS_OPEN}", side_door("board-1", 1))).await;
    site.wait_door("side", "resting unlocked", |d| {
        d["device_up"] == true && d["resting_unlocked"] == true
    })
    .await;
    until("coil 1 (door side, unlock window) ON", || {
        site.board.coil(1)
    })
    .await;

    let (status, body) = site.put_policy(&site_toml(&site.board, "")).await;
    assert_eq!(status, 200, "{body}");
    until("coil 1 of the removed door driven OFF", || {
        !site.board.coil(1)
    })
    .await;
    site.wait_event("DoorRestingChanged", |d| {
        d["door"] == "side" && d["unlocked"] == false && d["cause"] == "policy"
    })
    .await;

    // The board power-cycles with the old relay latched ON: the reconnect locks it again.
    relatched_coil_is_locked_after_a_power_cycle(&site, 1, "main").await;
}

/// board-1 goes down, comes back with `coil` latched ON; once `door` sees its board up again,
/// the reconnect must drive `coil` OFF (and coil 0 stays OFF).
async fn relatched_coil_is_locked_after_a_power_cycle(site: &Site, coil: u16, door: &str) {
    site.board.stop();
    site.wait_event("DeviceStatusChanged", |d| {
        d["device"] == "board-1" && d["up"] == false
    })
    .await;
    site.board.force_coil(coil, true);
    power_cycle(&site.board, false).await;
    site.wait_door(door, "board up again", |d| d["device_up"] == true)
        .await;
    until("the latched coil driven OFF after the reconnect", || {
        !site.board.coil(coil)
    })
    .await;
    assert!(!site.board.coil(0));
}

/// A door whose relay a hot-reloaded policy moves to another coil during an emergency unlock:
/// the new coil is held ON, the old one is driven OFF (SPEC 7).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_door_a_policy_put_moves_to_another_coil_leaves_its_old_coil_locked() {
    let site = start_site(&side_door("board-1", 1)).await;
    site.wait_door("side", "device up", |d| d["device_up"] == true)
        .await;
    let mode = site.set_mode("emergency-unlock", true).await;
    assert_eq!(mode, json!({"lockdown": false, "emergency": true}));
    until("coils 0 and 1 ON", || {
        site.board.coil(0) && site.board.coil(1)
    })
    .await;

    let (status, body) = site
        .put_policy(&site_toml(&site.board, &side_door("board-1", 2)))
        .await;
    assert_eq!(status, 200, "{body}");
    until(
        "the moved door's new coil 2 ON and its old coil 1 OFF",
        || site.board.coil(2) && !site.board.coil(1),
    )
    .await;
    assert!(site.board.coil(0), "door main stays unlocked");
}

/// A hot-reloaded policy gives a board another address: the coil it held ON at the old address
/// is driven OFF there, and the door's resting state is driven at the new one (SPEC 7).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_board_a_policy_put_moves_to_another_address_is_followed_and_its_old_coils_locked() {
    let old = new_board().await;
    let new = new_board().await;
    let extra = format!("{}{SIDE_ALWAYS_OPEN}", side_door("board-1", 1));
    let doc = site_toml(&old, &extra);
    let site = start_with(old, vec![new], &doc).await;
    let new = &site.boards[0];
    until(
        "coil 1 (door side, unlock window) ON at the old address",
        || site.board.coil(1),
    )
    .await;
    assert!(!new.coil(1));

    let (status, body) = site.put_policy(&site_toml(new, &extra)).await;
    assert_eq!(status, 200, "{body}");
    until(
        "coil 1 ON at the new address and OFF at the old one",
        || new.coil(1) && !site.board.coil(1),
    )
    .await;
}

/// A relay board that a hot-reloaded policy drops, with a door coil resting unlocked on it:
/// the coil is driven OFF (SPEC 7).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_board_a_policy_put_drops_has_its_unlocked_coil_locked() {
    let site = two_board_site(SIDE_ALWAYS_OPEN).await;
    let board2 = &site.boards[0];
    until("board-2 coil 0 (door side, unlock window) ON", || {
        board2.coil(0)
    })
    .await;

    let (status, body) = site.put_policy(&site_toml(&site.board, "")).await;
    assert_eq!(status, 200, "{body}");
    until("coil 0 of the dropped board driven OFF", || !board2.coil(0)).await;
    assert!(!site.board.coil(0));
}

// ---------------------------------------------------------------------------------------------
// 8. Anti-passback
// ---------------------------------------------------------------------------------------------

fn zone_site(mode: &str) -> Layout {
    Layout {
        standard_doors: r#""main", "exit""#.into(),
        extra: format!(
            r#"
[[doors]]
id = "exit"
readers = ["lobby-exit-1"]
relay = {{ device = "board-1", coil = 1, pulse_ms = 400 }}

[[zones]]
name = "building"
entry_readers = ["lobby-1"]
exit_readers = ["lobby-exit-1"]
anti_passback = "{mode}"
"#
        ),
        ..Layout::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_anti_passback_denies_a_second_entry_until_an_exit() {
    let board = new_board().await;
    let doc = site_doc(&board.url(), &zone_site("hard"));
    let site = start_with(board, vec![], &doc).await;
    site.enroll("alice", "alice", json!({"access_level": "standard"}))
        .await;
    let mut entry = site.reader("lobby-1", "alice", 1).await;
    let mut exit = site.reader("lobby-exit-1", "alice", 2).await;

    let (_, r) = scan(&mut entry, "alice").await;
    assert_eq!(r["granted"], true, "first entry: {r}");
    let t0 = Instant::now();
    let (id, r) = scan(&mut entry, "alice").await;
    assert_eq!(r["granted"], false, "second entry: {r}");
    assert_eq!(r["reason"], "anti_passback");
    let e = site
        .wait_event("DoorDecided", |d| d["capture_id"] == id)
        .await;
    assert_eq!(data(&e)["last_in_zone"], "entry", "{e}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        writes_since(&site.board, 0, t0).iter().all(|(_, on)| !on),
        "a denied entry moved the coil"
    );
    let (_, r) = scan(&mut exit, "alice").await;
    assert_eq!(r["granted"], true, "exit: {r}");
    assert_eq!(r["door"], "exit");
    let (_, r) = scan(&mut entry, "alice").await;
    assert_eq!(r["granted"], true, "entry after the exit: {r}");
}

/// A grant whose pulse the board refuses (an exception that says the write was not done, with
/// the coil off before it) is no entry: `RelayFailed` names the grant's capture and says
/// `refused`, the movement is undone, and the person is let in at another entrance. Before,
/// the movement stood and hard anti-passback refused them there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_whose_pulse_the_board_refused_is_no_entry() {
    let board = new_board().await;
    let mut layout = zone_site("hard");
    layout.standard_doors = r#""main", "exit", "side""#.into();
    layout.extra = layout
        .extra
        .replace(
            r#"entry_readers = ["lobby-1"]"#,
            r#"entry_readers = ["lobby-1", "side-1"]"#,
        )
        .replace(
            "[[zones]]",
            "[[doors]]\nid = \"side\"\nreaders = [\"side-1\"]\nrelay = { device = \"board-1\", coil = 5, pulse_ms = 400 }\n\n[[zones]]",
        );
    let doc = site_doc(&board.url(), &layout);
    let site = start_with(board, vec![], &doc).await;
    site.enroll("alice", "alice", json!({"access_level": "standard"}))
        .await;
    // Locked at start-up, then the board starts refusing that coil's writes.
    site.wait_event("RelaySwitched", |d| d["door"] == "side" && d["on"] == false)
        .await;
    site.board
        .answer_writes(5, Some(tokio_modbus::ExceptionCode::IllegalDataValue));
    let mut side = site.reader("side-1", "alice", 1).await;
    let mut entry = site.reader("lobby-1", "alice", 2).await;

    let (id, r) = scan(&mut side, "alice").await;
    assert_eq!(r["granted"], true, "at the side door: {r}");
    let e = site
        .wait_event("RelayFailed", |d| d["tag"] == id.as_str())
        .await;
    assert_eq!(data(&e)["on"], true, "{e}");
    assert_eq!(data(&e)["refused"], true, "{e}");
    let (id, r) = scan(&mut entry, "alice").await;
    assert_eq!(r["granted"], true, "at the main entrance: {r}");
    let e = site
        .wait_event("DoorDecided", |d| d["capture_id"] == id.as_str())
        .await;
    assert!(data(&e).get("last_in_zone").is_none(), "{e}");
    assert_eq!(data(&e)["movement"], json!(["building", "entry"]), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_anti_passback_grants_a_second_entry_but_records_the_violation() {
    let board = new_board().await;
    let doc = site_doc(&board.url(), &zone_site("soft"));
    let site = start_with(board, vec![], &doc).await;
    site.enroll("alice", "alice", json!({"access_level": "standard"}))
        .await;
    let mut entry = site.reader("lobby-1", "alice", 1).await;
    let mut exit = site.reader("lobby-exit-1", "alice", 2).await;

    let (first, r) = scan(&mut entry, "alice").await;
    assert_eq!(r["granted"], true, "{r}");
    let (second, r) = scan(&mut entry, "alice").await;
    assert_eq!(r["granted"], true, "soft: the second entry is granted: {r}");
    let (_, r) = scan(&mut exit, "alice").await;
    assert_eq!(r["granted"], true, "{r}");
    let (third, r) = scan(&mut entry, "alice").await;
    assert_eq!(r["granted"], true, "{r}");

    for (id, violation) in [(first, false), (second, true), (third, false)] {
        let e = site
            .wait_event("DoorDecided", |d| d["capture_id"] == id)
            .await;
        assert_eq!(data(&e)["verdict"]["verdict"], "granted", "{e}");
        assert_eq!(
            data(&e)["verdict"]["passback_violation"],
            violation,
            "{id}: {e}"
        );
    }
}

/// Erasing a user ends their presence in every zone: the same `external_id` enrolled again
/// (another person, another palm) enters without an exit first (SPEC 2: a later enroll of the
/// same `external_id` is allowed; README "Hard anti-passback": a person with no movement yet
/// passes). Before, the new enrollment inherited the erased person's `entry` and was denied
/// `anti_passback`. The log verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_users_zone_presence_is_not_inherited_by_a_new_enrollment() {
    let board = new_board().await;
    let doc = site_doc(&board.url(), &zone_site("hard"));
    let site = start_with(board, vec![], &doc).await;
    site.enroll("emp-1", "alice", json!({"access_level": "standard"}))
        .await;
    let mut alice = site.reader("lobby-1", "alice", 1).await;
    let (_, r) = scan(&mut alice, "alice").await;
    assert_eq!(r["granted"], true, "first entry: {r}");
    let (_, r) = scan(&mut alice, "alice").await;
    assert_eq!(r["reason"], "anti_passback", "{r}");
    drop(alice);

    let status = site
        .http
        .delete(format!("{}/v1/users/emp-1", site.base))
        .header("x-api-key", &site.key)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 204);
    let erased = site.wait_event("UserErased", |_| true).await;
    assert_eq!(data(&erased)["clears_zones"], true, "{erased}");
    site.enroll("emp-1", "bob", json!({"access_level": "standard"}))
        .await;
    let mut bob = site.reader("lobby-1", "bob", 3).await;
    let (id, r) = scan(&mut bob, "bob").await;
    assert_eq!(r["granted"], true, "the new enrollment's first entry: {r}");
    let e = site
        .wait_event("DoorDecided", |d| d["capture_id"] == id)
        .await;
    assert_eq!(data(&e)["last_in_zone"], Value::Null, "{e}");
    let (_, r) = scan(&mut bob, "bob").await;
    assert_eq!(
        r["reason"], "anti_passback",
        "and then the zone rule holds: {r}"
    );

    let store = palmgate::store::SqliteStore::open_read_only(site.store_path())
        .unwrap()
        .unwrap();
    let report = palmgate::replay::audit::verify(&store).unwrap();
    assert!(report.ok(), "{:?}", report.findings);
}

// ---------------------------------------------------------------------------------------------
// 9. Door contact and request-to-exit
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_door_contact_raises_forced_and_held_open_alarms() {
    let site = start_site("").await;
    site.enroll("alice", "alice", json!({"access_level": "standard"}))
        .await;
    let mut lobby = site.reader("lobby-1", "alice", 1).await;
    site.wait_door("main", "contact read, closed", |d| d["open"] == false)
        .await;

    // Opened with no grant: forced open.
    site.board.set_input(0, true);
    site.wait_event("DoorForcedOpen", |d| d["door"] == "main")
        .await;
    let d = site
        .wait_door("main", "in alarm", |d| d["state"] == "alarm")
        .await;
    assert_eq!(d["alarm"], "forced", "{d}");
    assert_eq!(d["open"], true, "{d}");
    site.board.set_input(0, false);
    let d = site
        .wait_door("main", "alarm cleared when closed", |d| d["open"] == false)
        .await;
    assert_eq!(d["state"], "locked", "{d}");
    assert!(d["alarm"].is_null(), "{d}");

    // Opened within a grant's pulse: not forced. Left open > 2 s: held open.
    let closed = site
        .wait_event("DoorContactChanged", |d| d["open"] == false)
        .await;
    let (_, r) = scan(&mut lobby, "alice").await;
    assert_eq!(r["granted"], true, "{r}");
    until("coil 0 ON", || site.board.coil(0)).await;
    site.board.set_input(0, true);
    let opened = site
        .wait_event_after(pos(&closed), "DoorContactChanged", |d| d["open"] == true)
        .await;
    let held = site
        .wait_event_after(pos(&opened), "DoorHeldOpen", |d| d["door"] == "main")
        .await;
    let forced = site
        .events_of("DoorForcedOpen", |d| d["door"] == "main")
        .await;
    assert_eq!(
        forced.len(),
        1,
        "opening within a grant is not forced: {forced:?}"
    );
    let d = site.door("main").await;
    assert_eq!(d["state"], "alarm", "{d}");
    assert_eq!(d["alarm"], "held", "{d}");
    // Held open after `held_open_after_s` = 2 s, measured from the opening.
    let since =
        chrono::DateTime::parse_from_rfc3339(data(&held)["since"].as_str().unwrap()).unwrap();
    let at = chrono::DateTime::parse_from_rfc3339(data(&held)["at"].as_str().unwrap()).unwrap();
    let after = (at - since).num_milliseconds();
    assert!(
        (2000..3500).contains(&after),
        "held-open raised {after} ms after opening (held_open_after_s = 2)"
    );
    site.board.set_input(0, false);
    site.wait_door("main", "alarm cleared", |d| {
        d["state"] == "locked" && d["alarm"].is_null()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_to_exit_pulses_the_door_and_is_recorded() {
    let board = new_board().await;
    let layout = Layout {
        main_door: r#"rex = { device = "board-1", input = 1 }"#.into(),
        ..Layout::default()
    };
    let doc = site_doc(&board.url(), &layout);
    let site = start_with(board, vec![], &doc).await;
    site.wait_door("main", "contact read", |d| {
        d["open"] == false && d["device_up"] == true
    })
    .await;

    let t0 = Instant::now();
    site.board.set_input(1, true);
    site.wait_event("DoorExitRequested", |d| d["door"] == "main")
        .await;
    site.board.set_input(1, false);
    let (on, off) = wait_pulse(&site.board, 0, t0).await;
    assert!(
        off.duration_since(on) >= Duration::from_millis(380),
        "pulse_ms = 400"
    );
    site.wait_event("RelaySwitched", |d| {
        d["tag"] == "exit-request" && d["on"] == true
    })
    .await;

    // Walking out through the released door is not a forced opening.
    site.board.set_input(0, true);
    site.wait_event("DoorContactChanged", |d| d["open"] == true)
        .await;
    site.board.set_input(0, false);
    site.wait_event("DoorContactChanged", |d| d["open"] == false)
        .await;
    assert!(
        site.events_of("DoorForcedOpen", |_| true).await.is_empty(),
        "an exit through a REX release is not forced"
    );
}

// ---------------------------------------------------------------------------------------------
// 10. An independent Modbus peer: pymodbus
// ---------------------------------------------------------------------------------------------

fn peers_required() -> bool {
    std::env::var("PALMGATE_PEERS").is_ok_and(|v| v == "required")
}

fn free_port() -> u16 {
    crate::readers::free_port()
}

/// The pymodbus board process: its JSON stdout lines arrive on `lines`.
struct PyBoard {
    child: std::process::Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<Value>,
    seen: Vec<Value>,
    stderr: std::path::PathBuf,
}

impl Drop for PyBoard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl PyBoard {
    /// Starts the fixture; `Err(why)` when python3, pymodbus (3.8+) or, for `--serial`,
    /// pyserial is not available.
    async fn start(args: &[&str], dir: &Path) -> Result<PyBoard, String> {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/fixtures/pymodbus_board.py");
        let stderr = dir.join("pymodbus.stderr");
        let mut child = std::process::Command::new("python3")
            .arg(&script)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(&stderr).map_err(|e| e.to_string())?)
            .spawn()
            .map_err(|e| format!("python3: {e}"))?;
        let out = child.stdout.take().expect("piped stdout");
        let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                // pymodbus may print its own notices; only our JSON lines count.
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && tx.send(v).is_err()
                {
                    return;
                }
            }
        });
        let first = tokio::time::timeout(Duration::from_secs(20), lines.recv())
            .await
            .ok()
            .flatten();
        let b = PyBoard {
            child,
            lines,
            seen: vec![],
            stderr,
        };
        match first {
            Some(v) if v["ready"] == true => {
                println!("pymodbus {} board started", v["pymodbus"]);
                Ok(b)
            }
            Some(v) if v["error"].is_string() => Err(v["error"].as_str().unwrap().to_string()),
            other => Err(format!(
                "the board did not start: {other:?}; stderr: {}",
                b.stderr_text()
            )),
        }
    }

    fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn send(&mut self, line: &str) {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{line}").expect("write to the pymodbus board");
        stdin.flush().unwrap();
    }

    /// Waits until the lines seen so far satisfy `done`.
    async fn wait(&mut self, what: &str, done: impl Fn(&[Value]) -> bool) {
        let end = Instant::now() + WAIT;
        while !done(&self.seen) {
            match tokio::time::timeout_at(end, self.lines.recv()).await {
                Ok(Some(v)) => self.seen.push(v),
                _ => panic!(
                    "pymodbus board: {what}; lines: {:?}; stderr: {}",
                    self.seen,
                    self.stderr_text()
                ),
            }
        }
    }
}

fn coil_writes(lines: &[Value], coil: u64) -> Vec<(f64, bool)> {
    lines
        .iter()
        .filter(|v| v["address"].as_u64() == Some(coil))
        .map(|v| {
            (
                v["time"].as_f64().unwrap_or_default(),
                v["value"].as_bool().unwrap_or_default(),
            )
        })
        .collect()
}

/// The door `main` of `site` is on the pymodbus board `py`: once the board is up, a grant
/// shows on the board as coil 0 ON, then OFF after `pulse_ms`, and discrete input 0 is the
/// door contact.
async fn pulse_through_pymodbus(site: &Site, py: &mut PyBoard) {
    // Up means: connected, coil 0 driven to its resting state, discrete input 0 read.
    site.wait_door("main", "pymodbus board up, contact read", |d| {
        d["device_up"] == true && d["open"] == false
    })
    .await;
    py.wait("the start-up drive of coil 0 to OFF", |l| {
        coil_writes(l, 0).iter().any(|(_, on)| !on)
    })
    .await;
    let start_writes = coil_writes(&py.seen, 0).len();

    site.enroll("alice", "alice", json!({"access_level": "standard"}))
        .await;
    let mut lobby = site.reader("lobby-1", "alice", 1).await;
    let (capture_id, r) = scan(&mut lobby, "alice").await;
    assert_eq!(r["granted"], true, "{r}");
    py.wait("coil 0 ON then OFF", |l| {
        let w = coil_writes(l, 0);
        let w = &w[start_writes.min(w.len())..];
        w.iter()
            .position(|(_, on)| *on)
            .is_some_and(|i| w[i..].iter().any(|(_, on)| !on))
    })
    .await;
    let w = coil_writes(&py.seen, 0)[start_writes..].to_vec();
    assert_eq!(
        w.iter().map(|(_, on)| *on).collect::<Vec<_>>(),
        vec![true, false],
        "exactly one pulse: {w:?}"
    );
    let held = w[1].0 - w[0].0;
    assert!(
        (0.38..1.5).contains(&held),
        "pulse_ms = 400 but pymodbus saw the coil ON for {held:.3} s"
    );
    // The OFF was read back from pymodbus: the relay report names the capture.
    site.wait_event("RelaySwitched", |d| {
        d["tag"] == capture_id && d["on"] == false
    })
    .await;
    assert!(
        coil_writes(&py.seen, 1).is_empty(),
        "only coil 0 was written: {:?}",
        py.seen
    );

    // Discrete input 0 is read from pymodbus: the door contact follows it.
    py.send("input 0 1");
    site.wait_event("DoorContactChanged", |d| d["open"] == true)
        .await;
    py.send("input 0 0");
    site.wait_event("DoorContactChanged", |d| d["open"] == false)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_pulses_coil_0_of_an_independent_pymodbus_board() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let port_arg = port.to_string();
    let mut py = match PyBoard::start(&["--port", &port_arg], dir.path()).await {
        Ok(py) => py,
        Err(why) => {
            assert!(
                !peers_required(),
                "pymodbus is not available ({why}) and PALMGATE_PEERS=required \
                 (python3 -m pip install 'pymodbus<4')"
            );
            println!("pymodbus not available: skipping ({why})");
            return;
        }
    };
    // Listening before the gateway connects (it would retry anyway, with backoff).
    let end = Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < end,
            "pymodbus board not listening: {}",
            py.stderr_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let unused = new_board().await;
    let doc = site_doc(&format!("tcp://127.0.0.1:{port}"), &Layout::default());
    let site = start_with(unused, vec![], &doc).await;
    pulse_through_pymodbus(&site, &mut py).await;
}

/// `socat` joining two pseudo-terminals: a null-modem cable for Modbus RTU.
struct Socat(std::process::Child);

impl Drop for Socat {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `socat` pty pair with pymodbus's serial server (`pymodbus_board.py --serial … extra`) at
/// one end: the socat process, the board and the gateway's end. `None` (said on stdout) when
/// socat or pyserial is missing (optional peers, even with PALMGATE_PEERS=required); a missing
/// pymodbus is handled as in the TCP test.
async fn rtu_line(dir: &Path, extra: &[&str]) -> Option<(Socat, PyBoard, PathBuf)> {
    let board_end = dir.join("board");
    let gateway_end = dir.join("gateway");
    let socat_log = dir.join("socat.stderr");
    let spawned = std::process::Command::new("socat")
        .arg("-d")
        .arg("-d")
        .arg(format!("pty,raw,echo=0,link={}", board_end.display()))
        .arg(format!("pty,raw,echo=0,link={}", gateway_end.display()))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&socat_log).unwrap())
        .spawn();
    let socat = match spawned {
        Ok(child) => Socat(child),
        Err(e) => {
            println!("socat not available ({e}): skipping");
            return None;
        }
    };
    let end = Instant::now() + WAIT;
    while !(board_end.exists() && gateway_end.exists()) {
        assert!(
            Instant::now() < end,
            "socat made no pty pair: {}",
            std::fs::read_to_string(&socat_log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let board_arg = board_end.display().to_string();
    let mut args = vec!["--serial", board_arg.as_str(), "--baud", "9600"];
    args.extend_from_slice(extra);
    match PyBoard::start(&args, dir).await {
        Ok(py) => Some((socat, py, gateway_end)),
        Err(why) if why.contains("pyserial") => {
            println!("pymodbus serial support not available ({why}): skipping");
            None
        }
        Err(why) => {
            assert!(
                !peers_required(),
                "pymodbus is not available ({why}) and PALMGATE_PEERS=required"
            );
            println!("pymodbus not available: skipping ({why})");
            None
        }
    }
}

/// Modbus RTU over a `socat` pty pair, pymodbus's serial server at the other end. Optional
/// peers: without socat or pyserial the test says so and skips (even with
/// PALMGATE_PEERS=required); without pymodbus it behaves as the TCP test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_pulses_coil_0_of_a_pymodbus_board_over_modbus_rtu() {
    let dir = tempfile::tempdir().unwrap();
    let Some((_socat, mut py, gateway_end)) = rtu_line(dir.path(), &[]).await else {
        return;
    };
    let unused = new_board().await;
    let doc = site_doc(
        &format!("rtu://{}?baud=9600", gateway_end.display()),
        &Layout::default(),
    );
    let site = start_with(unused, vec![], &doc).await;
    pulse_through_pymodbus(&site, &mut py).await;
}

/// Two boards on one RS-485 line (units 1 and 2 behind one serial port, as `deploy/README.md`
/// wires them): the gateway opens the port once and addresses each board by its unit, so both
/// come up and a grant at each door pulses its own board. Before, each device opened the port
/// for itself, and the second could never open it (a serial port opens exclusively).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_boards_on_one_rs485_line_each_pulse_their_own_door() {
    let dir = tempfile::tempdir().unwrap();
    let Some((_socat, mut py, gateway_end)) = rtu_line(dir.path(), &["--units", "1,2"]).await
    else {
        return;
    };
    let line = format!("rtu://{}?baud=9600", gateway_end.display());
    let layout = Layout {
        standard_doors: r#""main", "side""#.into(),
        extra: format!(
            "\n[[relay_devices]]\nid = \"board-2\"\nmodbus = \"{line}\"\nunit = 2\n{}",
            side_door("board-2", 0)
        ),
        ..Layout::default()
    };
    let site = start_with(new_board().await, vec![], &site_doc(&line, &layout)).await;
    for door in ["main", "side"] {
        site.wait_door(door, "its board up on the shared line", |d| {
            d["device_up"] == true
        })
        .await;
    }
    site.enroll("alice", "alice", json!({"access_level": "standard"}))
        .await;
    let unit_writes = |lines: &[Value], unit: u64| -> Vec<bool> {
        lines
            .iter()
            .filter(|v| v["unit"].as_u64() == Some(unit) && v["address"].as_u64() == Some(0))
            .map(|v| v["value"].as_bool().unwrap_or_default())
            .collect()
    };
    for (reader, unit) in [("lobby-1", 1), ("side-1", 2)] {
        let mut r = site.reader(reader, "alice", unit).await;
        let before = unit_writes(&py.seen, unit).len();
        let (_, answer) = scan(&mut r, "alice").await;
        assert_eq!(answer["granted"], true, "{reader}: {answer}");
        py.wait(&format!("unit {unit}'s coil 0 ON then OFF"), |l| {
            let w = unit_writes(l, unit);
            let w = &w[before.min(w.len())..];
            w.iter()
                .position(|on| *on)
                .is_some_and(|i| w[i..].iter().any(|on| !on))
        })
        .await;
    }
    // Each door's grant reached its own board only: unit 1 was pulsed once, unit 2 once.
    for unit in [1, 2] {
        let ons = unit_writes(&py.seen, unit).iter().filter(|on| **on).count();
        assert_eq!(ons, 1, "unit {unit}: {:?}", py.seen);
    }
}

/// A partner's enrollment page never offers a door's reader and never arms it, even when the
/// link asks for it by name: armed for an enrollment, the door's reader would enroll whoever
/// scans to get in. The door keeps deciding scans there; a desk reader is offered and armed.
/// (desk-7: `Site::enroll` connects and drops a desk-1 of its own, whose going offline could
/// land after this test's desk-1 came online.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enrollment_page_neither_offers_nor_arms_a_doors_reader() {
    let site = start_site("").await;
    site.enroll("alice", "alice", json!({"access_level": "standard"}))
        .await;
    let mut lobby = site.reader("lobby-1", "alice", 1).await;
    let mut desk = site.reader("desk-7", "mallory", 2).await;
    let end = Instant::now() + WAIT;
    loop {
        let readers = site.admin_get("/admin/v1/readers").await;
        let online = |id: &str| {
            readers
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["id"] == id && r["online"] == true)
        };
        if online("lobby-1") && online("desk-7") {
            break;
        }
        assert!(Instant::now() < end, "readers never online: {readers}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r: Value = site
        .http
        .post(format!("{}/v1/enroll", site.base))
        .header("x-api-key", &site.key)
        .json(&json!({"external_id": "mallory"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = r["url"].as_str().unwrap().to_string();
    let path = format!("/enroll/{}", url.rsplit('/').next().unwrap());
    let page = |q: &'static str| {
        let (http, url) = (site.http.clone(), format!("{}{path}{q}", site.base));
        async move {
            let r = http.get(url).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (status, html) = page("").await;
    assert_eq!(status, 200);
    assert!(
        html.contains("desk-7") && !html.contains("lobby-1"),
        "{html}"
    );
    let (status, _) = page("?reader=lobby-1").await;
    assert_eq!(status, 200);
    if let Some(c) = lobby.next_command(Duration::from_millis(500)).await {
        panic!("a door's reader was armed for an enrollment: {c}");
    }
    let (_, r) = scan(&mut lobby, "alice").await;
    assert_eq!(r["granted"], true, "the door still decides scans: {r}");
    let (status, _) = page("?reader=desk-7").await;
    assert_eq!(status, 200);
    let c = desk
        .next_command(WAIT)
        .await
        .expect("the desk reader is armed");
    assert_eq!(c["action"], "capture", "{c}");
}

// ---------------------------------------------------------------------------------------------
// `/metrics`: what the operator watches
// ---------------------------------------------------------------------------------------------

/// `GET /metrics` of the site as the operator (admin token), as text.
async fn scrape(site: &Site) -> String {
    scrape_as(site, Some(ADMIN)).await.1
}

/// `GET /metrics` with `authorization` (none: as an anonymous scraper): status and text.
async fn scrape_as(site: &Site, authorization: Option<&str>) -> (u16, String) {
    let mut req = site.http.get(format!("{}/metrics", site.base));
    if let Some(a) = authorization {
        req = req.header("authorization", a);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// The value of series `name` with exactly the labels `labels` (in any order) in `text`.
fn series(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut want: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    want.sort();
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (head, value) = l.rsplit_once(' ')?;
        let (n, got) = match head.split_once('{') {
            Some((n, rest)) => {
                let mut got: Vec<String> = rest
                    .strip_suffix('}')?
                    .split(',')
                    .filter(|p| !p.is_empty())
                    .map(str::to_string)
                    .collect();
                got.sort();
                (n, got)
            }
            None => (head, vec![]),
        };
        (n == name && got == want).then(|| value.parse().ok())?
    })
}

/// Scrapes until series `name{labels}` satisfies `pred`; its value then.
async fn wait_series(
    site: &Site,
    name: &str,
    labels: &[(&str, &str)],
    pred: impl Fn(f64) -> bool,
) -> f64 {
    let end = Instant::now() + WAIT;
    loop {
        let text = scrape(site).await;
        match series(&text, name, labels) {
            Some(v) if pred(v) => return v,
            got => assert!(
                Instant::now() < end,
                "{name}{labels:?} is {got:?}, not as expected; /metrics:\n{text}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A granted and a denied scan move `palmgate_door_decisions_total` by their result and
/// reason, and the grant's pulse moves `palmgate_relay_writes_total{outcome="ok"}`. The
/// counters are process-wide and other tests scan at the same time: each must grow by at
/// least what this test caused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_door_decisions_and_relay_writes_as_they_land() {
    let site = start_site("").await;
    site.enroll("alice", "alice", json!({"access_level": "standard"}))
        .await;
    site.enroll("bob", "bob", json!({"department": "none"}))
        .await;
    let mut lobby = site.reader("lobby-1", "alice", 1).await;
    site.wait_door("main", "its board up", |d| d["device_up"] == true)
        .await;

    let granted = [("result", "granted"), ("reason", "none")];
    let denied = [("result", "denied"), ("reason", "no_access_level")];
    let ok = [("outcome", "ok")];
    let before = scrape(&site).await;
    let count = |labels: &[(&str, &str)], name: &str| {
        series(&before, name, labels)
            .unwrap_or_else(|| panic!("{name}{labels:?} not listed before any scan:\n{before}"))
    };
    let granted_0 = count(&granted, "palmgate_door_decisions_total");
    let denied_0 = count(&denied, "palmgate_door_decisions_total");
    let ok_0 = count(&ok, "palmgate_relay_writes_total");
    assert!(
        series(
            &before,
            "palmgate_relay_writes_total",
            &[("outcome", "failed")]
        )
        .is_some(),
        "{before}"
    );

    let t0 = Instant::now();
    let (_, r) = scan(&mut lobby, "alice").await;
    assert_eq!(r["granted"], true, "{r}");
    wait_pulse(&site.board, 0, t0).await;
    let (_, r) = scan(&mut lobby, "bob").await;
    assert_eq!(r["reason"], "no_access_level", "{r}");

    let name = "palmgate_door_decisions_total";
    wait_series(&site, name, &granted, |v| v >= granted_0 + 1.0).await;
    wait_series(&site, name, &denied, |v| v >= denied_0 + 1.0).await;
    // The pulse's ON and OFF writes, both confirmed by the board.
    wait_series(&site, "palmgate_relay_writes_total", &ok, |v| {
        v >= ok_0 + 2.0
    })
    .await;
}

/// The door gauges are this server's state at scrape time: readers by presence, relay boards
/// up or down (as a grant judges them), doors by site mode, sessions pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_this_servers_readers_boards_doors_and_pending_sessions() {
    let site = two_board_site("").await;
    let _lobby = site.reader("lobby-1", "alice", 1).await;
    let online = [("presence", "online")];
    wait_series(&site, "palmgate_readers", &online, |v| v == 1.0).await;
    let text = scrape(&site).await;
    for (presence, n) in [("offline", 0.0), ("unknown", 0.0)] {
        let got = series(&text, "palmgate_readers", &[("presence", presence)]);
        assert_eq!(got, Some(n), "{presence}:\n{text}");
    }
    for id in ["main", "side"] {
        site.wait_door(id, "its board up", |d| d["device_up"] == true)
            .await;
    }
    let text = scrape(&site).await;
    let boards = |state: &str| series(&text, "palmgate_relay_boards", &[("state", state)]);
    assert_eq!(
        (boards("up"), boards("down")),
        (Some(2.0), Some(0.0)),
        "{text}"
    );
    let doors = |text: &str, mode: &str| series(text, "palmgate_doors", &[("mode", mode)]);
    assert_eq!(doors(&text, "normal"), Some(2.0), "{text}");
    assert_eq!(doors(&text, "lockdown"), Some(0.0), "{text}");
    let mode = series(&text, "palmgate_site_mode", &[("mode", "normal")]);
    assert_eq!(mode, Some(1.0), "{text}");
    assert_eq!(series(&text, "palmgate_sessions_pending", &[]), Some(0.0));

    // A board that goes away is down, by name; the other stays up.
    site.board.stop();
    site.wait_door("main", "device_down", |d| d["state"] == "device_down")
        .await;
    let text = scrape(&site).await;
    let boards = |state: &str| series(&text, "palmgate_relay_boards", &[("state", state)]);
    assert_eq!(
        (boards("up"), boards("down")),
        (Some(1.0), Some(1.0)),
        "{text}"
    );
    let board = |id: &str| series(&text, "palmgate_relay_board_up", &[("board", id)]);
    assert_eq!(
        (board("board-1"), board("board-2")),
        (Some(0.0), Some(1.0)),
        "{text}"
    );

    // Lockdown holds both doors; a session asked for is pending.
    site.set_mode("lockdown", true).await;
    let r = site
        .http
        .post(format!("{}/v1/enroll", site.base))
        .header("x-api-key", &site.key)
        .json(&json!({"external_id": "carol"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let text = scrape(&site).await;
    assert_eq!(doors(&text, "lockdown"), Some(2.0), "{text}");
    assert_eq!(doors(&text, "normal"), Some(0.0), "{text}");
    assert_eq!(
        series(&text, "palmgate_sessions_pending", &[]),
        Some(1.0),
        "{text}"
    );
}

/// The site's series are the operator's: a scrape without the admin token (anyone who can
/// reach the public pages shares the listener) gets the process's series but none of the
/// doors, readers, boards, site mode or door decisions, and is charged nothing; a wrong token
/// is a 401 as on the admin API; the operator's token gets them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sites_metrics_are_for_the_operator_only() {
    let site = two_board_site("").await;
    let _lobby = site.reader("lobby-1", "alice", 1).await;
    wait_series(&site, "palmgate_readers", &[("presence", "online")], |v| {
        v == 1.0
    })
    .await;
    let site_series = [
        "palmgate_readers",
        "palmgate_relay_board",
        "palmgate_site_mode",
        "palmgate_doors",
        "palmgate_sessions_pending",
        "palmgate_door_decisions_total",
        "palmgate_relay_writes_total",
    ];
    // More than the unauthenticated budget: a plain scraper is never throttled.
    for _ in 0..120 {
        let (status, text) = scrape_as(&site, None).await;
        assert_eq!(status, 200, "{text}");
        if let Some(l) = text
            .lines()
            .find(|l| site_series.iter().any(|s| l.contains(s)))
        {
            panic!("an anonymous scrape shows the site: {l}\n{text}");
        }
        assert!(text.contains("palmgate_mqtt_connected"), "{text}");
    }
    let (status, text) = scrape_as(&site, Some("Bearer wrong")).await;
    assert_eq!(status, 401, "{text}");
    let (status, text) = scrape_as(&site, Some(ADMIN)).await;
    assert_eq!(status, 200, "{text}");
    // The scheme is case-insensitive (RFC 9110 §11.1).
    for scheme in ["bearer", "BEARER"] {
        let token = ADMIN.replacen("Bearer", scheme, 1);
        let (status, text) = scrape_as(&site, Some(&token)).await;
        assert_eq!(status, 200, "{scheme}: {text}");
        assert!(text.contains(site_series[0]), "{scheme}: {text}");
    }
    for s in site_series {
        assert!(text.contains(s), "{s} missing for the operator:\n{text}");
    }
}

/// A policy's `partners` names partners exactly: a name that matches no partner is accepted
/// (the partner may come later) with a warning, on `PUT` and `GET /admin/v1/policy`, and one that
/// differs from a partner's only in case or spaces says which partner it probably meant; that
/// partner's people are then not admitted (their scans are `no_match`: not even searched).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partner_names_that_match_no_partner_are_warned_about() {
    let site = start_site("").await;
    site.enroll("alice", "alice", json!({"access_level": "standard"}))
        .await;
    let doc = site.admin_get("/admin/v1/policy").await["document"]
        .as_str()
        .unwrap()
        .to_string();
    // The site's own `partners` line replaced.
    let with = |names: &str| {
        doc.lines()
            .map(|l| {
                if l.trim_start().starts_with("partners") {
                    format!("partners = [{names}]")
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(doc.lines().any(|l| l.starts_with("partners")), "{doc}");
    let (status, body) = site.put_policy(&with(r#""acme", "Nobody Yet""#)).await;
    assert_eq!(status, 200, "{body}");
    let warnings: Vec<String> = body["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap().to_string())
        .collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("`acme` names no partner") && w.contains("called `Acme`")),
        "{warnings:?}"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("`Nobody Yet` names no partner (yet)")),
        "{warnings:?}"
    );
    assert_eq!(
        site.admin_get("/admin/v1/policy").await["warnings"],
        body["warnings"]
    );
    let mut lobby = site.reader("lobby-1", "alice", 1).await;
    let (_, r) = scan(&mut lobby, "alice").await;
    assert_eq!(r["reason"], "no_match", "{r}");
    // The exact name: no warning, and alice is let in.
    let (status, body) = site.put_policy(&with(r#""Acme""#)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["warnings"], json!([]), "{body}");
    let (_, r) = scan(&mut lobby, "alice").await;
    assert_eq!(r["granted"], true, "{r}");
}

/// The metrics recorder is installed before start-up writes anything: the commit of the
/// policy activated from the site file at start-up is counted, as is the relay board's status
/// recorded after it (it was installed with the HTTP router, and the first commit went to no
/// recorder: one commit counted for two).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_start_up_policy_activation_is_counted_in_the_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("site.toml");
    // A board where nothing listens: its status (down) is recorded once the relays start.
    let board = format!("tcp://127.0.0.1:{}", free_port());
    std::fs::write(&site, site_doc(&board, &Layout::default())).unwrap();
    use crate::fixtures::{Options, TestServer};
    let s = TestServer::start_with(
        Options::default().extra_toml(&format!("site = {:?}", site.display().to_string())),
    )
    .await;
    let end = tokio::time::Instant::now() + WAIT;
    let kinds = loop {
        let kinds: Vec<String> = crate::crash_suite::events_after(&s, 0)
            .await
            .iter()
            .map(|e| e["type"].as_str().unwrap_or_default().to_string())
            .collect();
        if kinds.iter().any(|k| k == "DeviceStatusChanged") {
            break kinds;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "no board status: {kinds:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(kinds[0], "PolicyActivated", "{kinds:?}");
    let commits = crate::upstream::metric(&s, "palmgate_store_commit_seconds_count").await;
    assert!(
        commits >= 2.0,
        "the activation and the board's status are two commits, {commits} counted ({kinds:?})"
    );
}
