//! SPEC 3, 5 and 8.3 through real readers: the server runs in-process (`palmgate::app::start`)
//! with its embedded MQTT broker (or Mosquitto as an external peer), and simulated readers
//! (`SimReader`) publish captures, triggers and status exactly as hardware would.
//!
//! Every test has its own server, broker port and temporary directory. Captures are handled
//! asynchronously, so every expectation is polled with a deadline.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use palmgate::app::App;
use palmgate::app::clock::{Clock, ManualClock, OsRng, SystemClock};
use palmgate::core::ReaderId;
use palmgate::mqtt::protocol::{TopicKind, encode_template};
use palmgate::mqtt::simulate::{SimOptions, SimReader};
use palmgate::store::RawEvent;
use palmgate::store::chain::Verifier;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::time::Instant;

const ADMIN: &str = "t";
/// How long a capture may take to change a session (2 shared cores, debug build).
const DEADLINE: Duration = Duration::from_secs(15);
const DIM: usize = 128;

/// One in-process palmgate with its own directory, ports and partner.
struct Gate {
    dir: TempDir,
    base: String,
    mqtt: String,
    app: Arc<App>,
    http: reqwest::Client,
    key: String,
    _stop: oneshot::Sender<()>,
}

impl Gate {
    /// Starts with the embedded broker.
    async fn start() -> Gate {
        Gate::start_with(None).await
    }

    /// Starts with `mqtt_url` as an external broker, or the embedded one when `None`.
    async fn start_with(mqtt_url: Option<&str>) -> Gate {
        Gate::start_full(mqtt_url, Arc::new(SystemClock)).await
    }

    /// Starts with the embedded broker on `clock` (a [`ManualClock`] moves time on demand).
    async fn start_on(clock: Arc<dyn Clock>) -> Gate {
        Gate::start_full(None, clock).await
    }

    async fn start_full(mqtt_url: Option<&str>, clock: Arc<dyn Clock>) -> Gate {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = |name: &str| toml_path(&dir.path().join(name));
        let mqtt = match mqtt_url {
            Some(url) => format!("[mqtt]\nurl = \"{url}\"\n"),
            None => "[mqtt.embedded]\nlisten = \"127.0.0.1:0\"\n".to_string(),
        };
        let toml = format!(
            "[http]\nlisten = \"127.0.0.1:0\"\n\
             [store]\npath = {}\n\
             [secrets]\nkey_file = {}\nkey_store = {}\n\
             {mqtt}\
             [admin]\ntoken = \"{ADMIN}\"\n",
            p("events.db"),
            p("master.key"),
            p("keys.db"),
        );
        let path = dir.path().join("palmgate.toml");
        std::fs::write(&path, toml).expect("write config");
        let config = palmgate::config::Config::load(Some(&path), &[]).expect("config loads");
        let server = palmgate::app::start_with(config, clock, Arc::new(OsRng))
            .await
            .expect("server starts");
        let addr: SocketAddr = server.addr;
        let mqtt = server.mqtt.clone();
        let app = server.app.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(server.serve(async move {
            let _ = stopped.await;
        }));
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("http client");
        let base = format!("http://{addr}");
        let r = http
            .post(format!("{base}/admin/v1/partners"))
            .bearer_auth(ADMIN)
            .json(&json!({"name": "readers-test"}))
            .send()
            .await
            .expect("create partner");
        assert_eq!(r.status(), 201, "partner creation");
        let v: Value = r.json().await.expect("partner json");
        let key = v["api_key"].as_str().expect("api_key").to_string();
        Gate {
            dir,
            base,
            mqtt,
            app,
            http,
            key,
            _stop: stop,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .header("X-API-Key", &self.key)
            .send()
            .await
            .expect("GET");
        let status = r.status().as_u16();
        let text = r.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn page(&self, path: &str) -> (u16, String) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .header("Accept", "text/html")
            .send()
            .await
            .expect("GET page");
        let status = r.status().as_u16();
        (status, r.text().await.expect("page body"))
    }

    /// `POST /v1/enroll`; returns (status, body).
    async fn enroll_raw(&self, query: &str, body: &Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}/v1/enroll{query}", self.base))
            .header("X-API-Key", &self.key)
            .json(body)
            .send()
            .await
            .expect("POST enroll");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// A new enroll session for `external_id`: (session id, token).
    async fn enroll(&self, external_id: &str) -> (String, String) {
        let (status, v) = self
            .enroll_raw("", &json!({"external_id": external_id}))
            .await;
        assert_eq!(status, 201, "enroll {external_id}: {v}");
        created(&v, "enroll")
    }

    /// A second partner (named `name`) and a new enroll session of its for `external_id`:
    /// (its API key, session id, token).
    async fn other_partner_enroll(
        &self,
        name: &str,
        external_id: &str,
    ) -> (String, String, String) {
        let r = self
            .http
            .post(format!("{}/admin/v1/partners", self.base))
            .bearer_auth(ADMIN)
            .json(&json!({"name": name}))
            .send()
            .await
            .expect("create partner");
        assert_eq!(r.status(), 201);
        let other: Value = r.json().await.expect("partner json");
        let key = other["api_key"].as_str().expect("api_key").to_string();
        let r = self
            .http
            .post(format!("{}/v1/enroll", self.base))
            .header("X-API-Key", &key)
            .json(&json!({"external_id": external_id}))
            .send()
            .await
            .expect("POST enroll");
        assert_eq!(r.status(), 201);
        let (id, token) = created(&r.json().await.expect("json"), "enroll");
        (key, id, token)
    }

    /// A new identify session: (session id, token).
    async fn identify(&self, query: &str) -> (String, String) {
        let r = self
            .http
            .post(format!("{}/v1/identify{query}", self.base))
            .header("X-API-Key", &self.key)
            .send()
            .await
            .expect("POST identify");
        assert_eq!(r.status(), 201);
        let v: Value = r.json().await.expect("identify json");
        created(&v, "identify")
    }

    async fn session(&self, id: &str) -> Value {
        let (status, v) = self.get(&format!("/v1/sessions/{id}")).await;
        assert_eq!(status, 200, "GET session {id}: {v}");
        v
    }

    /// Polls the session until it is no longer pending.
    async fn ended(&self, id: &str) -> Value {
        let end = Instant::now() + DEADLINE;
        loop {
            let v = self.session(id).await;
            if v["state"] != "pending" {
                return v;
            }
            assert!(
                Instant::now() < end,
                "session {id} still pending after {DEADLINE:?}: {v}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// `GET /admin/v1/readers`.
    async fn readers(&self) -> Vec<Value> {
        let r = self
            .http
            .get(format!("{}/admin/v1/readers", self.base))
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("GET readers");
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.expect("readers json");
        v.as_array().expect("readers array").clone()
    }

    /// Polls the admin reader list until `reader` is reported with `online`.
    async fn reader_online(&self, reader: &str, online: bool) -> Value {
        let end = Instant::now() + DEADLINE;
        loop {
            let list = self.readers().await;
            if let Some(r) = list
                .iter()
                .find(|r| r["id"] == reader && r["online"] == online)
            {
                return r.clone();
            }
            assert!(
                Instant::now() < end,
                "reader {reader} never reported online={online}: {list:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Connects a simulated reader and waits until the gateway has seen it online (so the
    /// gateway's subscriptions are in place before the first capture).
    async fn reader(&self, id: &str, palm: &str, seed: u64) -> SimReader {
        let r = SimReader::connect(sim_options(&self.mqtt, id, palm, seed))
            .await
            .expect("simulated reader connects");
        self.reader_online(id, true).await;
        r
    }

    async fn metrics(&self) -> String {
        let r = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("GET metrics");
        assert_eq!(r.status(), 200);
        r.text().await.expect("metrics text")
    }

    fn events_count(&self) -> i64 {
        let c = rusqlite::Connection::open(self.path("events.db")).expect("open events.db");
        c.query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .expect("count events")
    }

    /// Data keys in the key store (one per enrolled template).
    fn data_keys(&self) -> i64 {
        let c = rusqlite::Connection::open(self.path("keys.db")).expect("open keys.db");
        c.query_row("SELECT count(*) FROM data_keys", [], |r| r.get::<_, i64>(0))
            .expect("count keys")
    }

    /// Every stored event, in order, exactly as the SQLite file holds it.
    fn raw_events(&self) -> Vec<RawEvent> {
        let c = rusqlite::Connection::open(self.path("events.db")).expect("open events.db");
        let mut st = c
            .prepare(
                "SELECT position, stream, revision, type, version, recorded_at, data, prev_hash, hash \
                 FROM events ORDER BY position",
            )
            .expect("prepare");
        st.query_map([], |r| {
            let prev: Vec<u8> = r.get(7)?;
            let hash: Vec<u8> = r.get(8)?;
            Ok(RawEvent {
                position: r.get::<_, i64>(0)? as u64,
                stream: r.get(1)?,
                revision: r.get::<_, i64>(2)? as u64,
                kind: r.get(3)?,
                version: r.get::<_, i64>(4)? as u32,
                recorded_at: r.get(5)?,
                data: r.get(6)?,
                prev_hash: prev.try_into().expect("32-byte prev_hash"),
                hash: hash.try_into().expect("32-byte hash"),
            })
        })
        .expect("query events")
        .collect::<Result<Vec<_>, _>>()
        .expect("read events")
    }

    /// Enrolls `external_id` with one capture of `reader`'s palm; returns the capture sent.
    async fn enroll_with(&self, reader: &mut SimReader, external_id: &str) -> Value {
        let (id, token) = self.enroll(external_id).await;
        let sent = reader.capture(Some(&token)).await.expect("capture");
        let s = self.ended(&id).await;
        assert_eq!(s["state"], "completed", "enroll of {external_id}: {s}");
        sent
    }
}

fn toml_path(p: &Path) -> String {
    format!(
        "\"{}\"",
        p.display()
            .to_string()
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
    )
}

/// (session id, token) from a 201, checking the URL's shape.
fn created(v: &Value, kind: &str) -> (String, String) {
    let url = v["url"].as_str().expect("url");
    assert!(url.contains(&format!("/{kind}/")), "{url}");
    let token = url.rsplit('/').next().expect("token").to_string();
    let id = v["session_id"].as_str().expect("session_id").to_string();
    assert_ne!(token, id);
    (id, token)
}

fn sim_options(mqtt: &str, reader: &str, palm: &str, seed: u64) -> SimOptions {
    SimOptions {
        mqtt_url: mqtt.to_string(),
        topic_prefix: "palmgate".into(),
        reader: ReaderId(reader.into()),
        palm: palm.into(),
        dim: DIM,
        quality: 0.95,
        liveness: true,
        seed,
    }
}

/// The next command a reader receives, failing the test when none comes.
async fn command(r: &mut SimReader) -> Value {
    r.next_command(DEADLINE)
        .await
        .unwrap_or_else(|| panic!("no reader command within {DEADLINE:?}"))
}

/// `palmgate_mqtt_rejected_total{reason="..."}` from a Prometheus text page (0 when absent).
fn rejected(metrics: &str, reason: &str) -> f64 {
    let label = format!("reason=\"{reason}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with("palmgate_mqtt_rejected_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------

/// 1. Enroll → completed; the user exists; a second enroll is 409; the used link is 410.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_completes_and_the_link_is_used_up() {
    let g = Gate::start().await;
    let mut desk = g.reader("desk-1", "alice", 1).await;
    let body = json!({"external_id": "EMP-1", "username": "Alice A.",
                      "metadata": {"department": "Engineering", "access_level": "standard"}});
    let (status, v) = g.enroll_raw("?language=kk", &body).await;
    assert_eq!(status, 201, "{v}");
    let (id, token) = created(&v, "enroll");
    let (status, _) = g.page(&format!("/enroll/{token}")).await;
    assert_eq!(status, 200, "a pending enroll page is 200");

    desk.capture(Some(&token)).await.expect("capture");
    let s = g.ended(&id).await;
    assert_eq!(s["state"], "completed", "{s}");
    assert_eq!(s["external_id"], "EMP-1");
    assert!(s["fail_reason"].is_null(), "{s}");

    let (status, u) = g.get("/v1/users/EMP-1").await;
    assert_eq!(status, 200, "{u}");
    assert_eq!(u["external_id"], "EMP-1");
    assert_eq!(u["username"], "Alice A.");
    assert_eq!(
        u["metadata"],
        json!({"department": "Engineering", "access_level": "standard"})
    );
    assert!(u["enrolled_at"].is_string(), "{u}");

    let (status, v) = g.enroll_raw("", &body).await;
    assert_eq!(status, 409, "second enroll of EMP-1: {v}");
    assert_eq!(v["message"], "user with this external_id already enrolled");

    let (status, _) = g.page(&format!("/enroll/{token}")).await;
    assert_eq!(status, 410, "a completed enroll link is gone");
}

/// 2. Identify: the enrolled palm matches; a stranger's palm is `no_match`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identify_matches_the_enrolled_palm_only() {
    let g = Gate::start().await;
    let mut desk = g.reader("desk-1", "alice", 1).await;
    g.enroll_with(&mut desk, "EMP-A").await;

    // Another scan of alice (other noise seed) at another reader.
    let mut door = g.reader("door-1", "alice", 1_000).await;
    let (id, token) = g.identify("").await;
    door.capture(Some(&token)).await.expect("capture");
    let s = g.ended(&id).await;
    assert_eq!(s["state"], "completed", "{s}");
    assert_eq!(s["external_id"], "EMP-A", "{s}");

    let mut stranger = g.reader("door-2", "mallory", 2_000).await;
    let (id, token) = g.identify("").await;
    stranger.capture(Some(&token)).await.expect("capture");
    let s = g.ended(&id).await;
    assert_eq!(s["state"], "failed", "{s}");
    assert_eq!(s["fail_reason"], "no_match", "{s}");
    assert!(s["external_id"].is_null(), "{s}");
}

/// 3. A palm already enrolled under another external_id fails `already_enrolled`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolling_a_known_palm_again_fails_already_enrolled() {
    let g = Gate::start().await;
    let mut desk = g.reader("desk-1", "alice", 1).await;
    g.enroll_with(&mut desk, "E1").await;

    let (id, token) = g.enroll("E2").await;
    desk.capture(Some(&token)).await.expect("capture");
    let s = g.ended(&id).await;
    assert_eq!(s["state"], "failed", "{s}");
    assert_eq!(s["fail_reason"], "already_enrolled", "{s}");
    let (status, _) = g.get("/v1/users/E2").await;
    assert_eq!(status, 404, "E2 was not enrolled");
    let (status, _) = g.get("/v1/users/E1").await;
    assert_eq!(status, 200, "E1 is still enrolled");
}

/// 4. `liveness: false` fails the session `liveness_failed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_without_liveness_fails() {
    let g = Gate::start().await;
    let mut opts = sim_options(&g.mqtt, "desk-1", "alice", 1);
    opts.liveness = false;
    let mut fake = SimReader::connect(opts).await.expect("connect");
    g.reader_online("desk-1", true).await;
    let (id, token) = g.enroll("EMP-L").await;
    fake.capture(Some(&token)).await.expect("capture");
    let s = g.ended(&id).await;
    assert_eq!(s["state"], "failed", "{s}");
    assert_eq!(s["fail_reason"], "liveness_failed", "{s}");
    let (status, _) = g.get("/v1/users/EMP-L").await;
    assert_eq!(status, 404, "nobody was enrolled");
}

/// 5. Low quality: three `retry` commands, the fourth low capture fails `low_quality`; a good
/// capture after retries completes the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn low_quality_is_retried_three_times_then_fails() {
    let g = Gate::start().await;
    let mut desk = g.reader("desk-1", "alice", 1).await;
    desk.set_quality(0.3);

    let (id, token) = g.enroll("EMP-Q1").await;
    for attempt in 1..=3 {
        desk.capture(Some(&token)).await.expect("capture");
        let cmd = command(&mut desk).await;
        assert_eq!(
            cmd,
            json!({"action": "retry", "reason": "low_quality"}),
            "attempt {attempt}"
        );
        let s = g.session(&id).await;
        assert_eq!(s["state"], "pending", "after retry {attempt}: {s}");
    }
    desk.capture(Some(&token)).await.expect("capture");
    let s = g.ended(&id).await;
    assert_eq!(s["state"], "failed", "{s}");
    assert_eq!(s["fail_reason"], "low_quality", "{s}");
    if let Some(extra) = desk.next_command(Duration::from_millis(500)).await {
        panic!("no retry after the session failed, got {extra}");
    }

    // Retries, then a good scan: completed.
    let (id, token) = g.enroll("EMP-Q2").await;
    for attempt in 1..=2 {
        desk.capture(Some(&token)).await.expect("capture");
        let cmd = command(&mut desk).await;
        assert_eq!(
            cmd,
            json!({"action": "retry", "reason": "low_quality"}),
            "attempt {attempt}"
        );
    }
    desk.set_quality(0.95);
    desk.capture(Some(&token)).await.expect("capture");
    let s = g.ended(&id).await;
    assert_eq!(s["state"], "completed", "{s}");
    assert_eq!(s["external_id"], "EMP-Q2");
    let (status, _) = g.get("/v1/users/EMP-Q2").await;
    assert_eq!(status, 200);
}

/// 6. A repeated capture_id (QoS 1 redelivery) is ignored: no state change, no event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_capture_id_is_ignored() {
    let g = Gate::start().await;
    let mut desk = g.reader("desk-1", "alice", 1).await;
    let (id, token) = g.enroll("EMP-D").await;
    let sent = desk.capture(Some(&token)).await.expect("capture");
    // The simulator's ids are UUIDs, as SPEC 5 writes them.
    let capture_id = sent["capture_id"].as_str().expect("capture_id");
    assert!(uuid::Uuid::parse_str(capture_id).is_ok(), "{capture_id}");
    assert_eq!(capture_id.len(), 36, "{capture_id}");
    let done = g.ended(&id).await;
    assert_eq!(done["state"], "completed", "{done}");
    let before = g.events_count();

    desk.send_capture(sent.clone()).await.expect("resend");
    // A marker on the same topic, handled after the resend (one message at a time, in
    // order): a session-less capture at a reader with no door is rejected and recorded.
    let marker = desk.capture(None).await.expect("marker capture");
    let marker_id = marker["capture_id"].as_str().expect("capture_id");
    let end = Instant::now() + DEADLINE;
    let events = loop {
        let events = g.raw_events();
        if events
            .iter()
            .skip(before as usize)
            .any(|e| e.data.contains(marker_id))
        {
            break events;
        }
        assert!(
            Instant::now() < end,
            "the marker capture was never recorded"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    // Every event since the resend is the marker's; the resend added none.
    let new: Vec<_> = events.iter().skip(before as usize).collect();
    let unexplained: Vec<_> = new
        .iter()
        .filter(|e| !e.data.contains(marker_id))
        .map(|e| (&e.kind, &e.data))
        .collect();
    assert!(
        unexplained.is_empty(),
        "the resent capture must add no event; it added {unexplained:?}"
    );
    assert!(
        new.iter().any(|e| e.kind == "CaptureRejected"),
        "the door-less marker scan is rejected and recorded: {:?}",
        new.iter().map(|e| &e.kind).collect::<Vec<_>>()
    );
    assert_eq!(g.session(&id).await, done, "the session did not change");
    assert_eq!(g.events_count(), before + new.len() as i64);
}

/// Builds a payload for a session token.
type Payload<'a> = Box<dyn Fn(&str) -> Vec<u8> + 'a>;

/// 7. Malformed payloads are rejected with a counted reason; the same reader keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_payloads_are_counted_and_the_reader_keeps_working() {
    let g = Gate::start().await;
    let mut desk = g.reader("desk-1", "alice", 1).await;
    g.enroll_with(&mut desk, "EMP-M").await;

    let good = encode_template(&palmgate::synthetic::scan("alice", DIM, 99));
    let mut nan = palmgate::synthetic::scan("alice", DIM, 98);
    nan[5] = f32::NAN;
    let nan = encode_template(&nan);
    let short = encode_template(&[0.5, 0.5, 0.5]);
    let capture = |id: &str, token: &str, template: &str| {
        json!({"capture_id": id, "session": token, "template": template,
               "quality": 0.9, "liveness": true})
        .to_string()
        .into_bytes()
    };
    let before = g.metrics().await;

    let cases: Vec<(&str, Payload<'_>)> = vec![
        ("not_json", Box::new(|_: &str| b"{not json".to_vec())),
        ("not_json", Box::new(|_: &str| vec![0xff, 0xfe, 0x00])),
        ("not_object", Box::new(|_: &str| b"[1,2,3]".to_vec())),
        (
            "wrong_type",
            Box::new(|t: &str| {
                json!({"capture_id": 5, "session": t, "template": good, "quality": 0.9, "liveness": true})
                    .to_string()
                    .into_bytes()
            }),
        ),
        (
            "wrong_type",
            Box::new(|t: &str| {
                json!({"capture_id": "m-q", "session": t, "template": good, "quality": "high", "liveness": true})
                    .to_string()
                    .into_bytes()
            }),
        ),
        (
            "bad_base64",
            Box::new(|t: &str| capture("m-b64", t, "@@not base64@@")),
        ),
        (
            "wrong_dimension",
            Box::new(|t: &str| capture("m-dim", t, &short)),
        ),
        (
            "bad_template",
            Box::new(|t: &str| capture("m-nan", t, &nan)),
        ),
        (
            "missing_field",
            Box::new(|t: &str| {
                json!({"capture_id": "m-miss", "session": t, "template": good, "quality": 0.9})
                    .to_string()
                    .into_bytes()
            }),
        ),
    ];
    let mut expected: std::collections::BTreeMap<&str, f64> = Default::default();
    for (label, payload) in &cases {
        let (id, token) = g.identify("").await;
        desk.publish_raw(TopicKind::Capture, payload(&token))
            .await
            .expect("publish malformed");
        *expected.entry(label).or_default() += 1.0;
        // The same reader's next valid capture is handled normally (and after the bad one:
        // one topic, one message at a time).
        desk.capture(Some(&token)).await.expect("capture");
        let s = g.ended(&id).await;
        assert_eq!(s["state"], "completed", "after a {label} payload: {s}");
        assert_eq!(s["external_id"], "EMP-M", "after a {label} payload: {s}");
    }
    let (status, _) = g.get("/v1/users/EMP-M").await;
    assert_eq!(status, 200, "the server still answers");

    let after = g.metrics().await;
    for (label, n) in expected {
        let (b, a) = (rejected(&before, label), rejected(&after, label));
        assert!(
            a >= b + n,
            "palmgate_mqtt_rejected_total{{reason=\"{label}\"}} went from {b} to {a}, expected +{n}\n{after}"
        );
    }
}

/// 8. Reader status: online/offline in the admin list and on the hosted page; `?reader=ID`
/// arms the reader; a session armed on a reader that goes offline (last will or explicit
/// status) fails `reader_offline`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_status_arming_and_reader_offline() {
    let g = Gate::start().await;
    let mut desk = g.reader("desk-1", "alice", 1).await;
    let listed = g.reader_online("desk-1", true).await;
    assert_eq!(listed["model"], "palmgate-sim", "{listed}");

    // The page lists the online reader; `?reader=` arms it.
    let (id, token) = g.identify("?language=ru").await;
    let (status, html) = g.page(&format!("/identify/{token}")).await;
    assert_eq!(status, 200);
    assert!(
        html.contains("?reader=desk-1"),
        "the page lists desk-1:\n{html}"
    );
    let (status, _) = g.page(&format!("/identify/{token}?reader=desk-1")).await;
    assert_eq!(status, 200);
    let cmd = command(&mut desk).await;
    assert_eq!(
        cmd,
        json!({"action": "capture", "session": token, "type": "identify", "language": "ru"})
    );

    // The connection drops: the last will marks it offline and the armed session fails.
    drop(desk);
    g.reader_online("desk-1", false).await;
    let s = g.ended(&id).await;
    assert_eq!(s["state"], "failed", "{s}");
    assert_eq!(s["fail_reason"], "reader_offline", "{s}");

    // Back online (new scans, new capture ids), armed for an enroll, then an explicit offline.
    let mut desk = g.reader("desk-1", "alice", 500).await;
    let (id, token) = g.enroll("EMP-R").await;
    let (status, html) = g.page(&format!("/enroll/{token}?reader=desk-1")).await;
    assert_eq!(status, 200);
    assert!(html.contains("desk-1"), "{html}");
    let cmd = command(&mut desk).await;
    assert_eq!(
        cmd,
        json!({"action": "capture", "session": token, "type": "enroll", "language": "en"})
    );
    let (id2, token2) = g.identify("").await;
    desk.go_offline().await.expect("go offline");
    g.reader_online("desk-1", false).await;
    let s = g.ended(&id).await;
    assert_eq!(s["state"], "failed", "{s}");
    assert_eq!(s["fail_reason"], "reader_offline", "{s}");
    // A session not armed on it is untouched.
    assert_eq!(g.session(&id2).await["state"], "pending");

    // An offline reader is not offered, and cannot be armed.
    let (status, html) = g.page(&format!("/identify/{token2}")).await;
    assert_eq!(status, 200);
    assert!(
        !html.contains("?reader=desk-1"),
        "an offline reader is not offered:\n{html}"
    );
    let (status, _) = g.page(&format!("/identify/{token2}?reader=desk-1")).await;
    assert_eq!(status, 200);
    if let Some(c) = desk.next_command(Duration::from_millis(500)).await {
        panic!("an offline reader must not be armed, got {c}");
    }
    assert_eq!(g.session(&id2).await["state"], "pending");
}

/// A reader armed for one session is not taken by another partner's enrollment: that page says
/// the reader is busy and the reader gets no second `capture`, so the person at the reader
/// cannot be enrolled into the other partner's records. The same partner's new link takes the
/// reader over (an app that started again), and once the first session ends the reader is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_armed_for_one_session_is_not_taken_by_another_link() {
    let g = Gate::start().await;
    let mut desk = g.reader("desk-1", "alice", 1).await;
    g.reader_online("desk-1", true).await;
    let (id_b, token_b) = g.enroll("victim-B").await;
    let (status, _) = g.page(&format!("/enroll/{token_b}?reader=desk-1")).await;
    assert_eq!(status, 200);
    assert_eq!(command(&mut desk).await["session"], token_b.as_str());

    let (_, _, token_a) = g.other_partner_enroll("other-partner", "attacker-A").await;

    let (status, html) = g.page(&format!("/enroll/{token_a}?reader=desk-1")).await;
    assert_eq!(status, 200);
    assert!(html.contains("in use by someone else"), "{html}");
    if let Some(c) = desk.next_command(Duration::from_millis(500)).await {
        panic!("a busy reader must not be armed for another session, got {c}");
    }
    assert_eq!(g.session(&id_b).await["state"], "pending");

    // The same partner's new link takes the reader over.
    let (id_b2, token_b2) = g.enroll("victim-B").await;
    let (status, html) = g.page(&format!("/enroll/{token_b2}?reader=desk-1")).await;
    assert_eq!(status, 200);
    assert!(!html.contains("in use by someone else"), "{html}");
    assert_eq!(command(&mut desk).await["session"], token_b2.as_str());
    let (status, html) = g.page(&format!("/enroll/{token_a}?reader=desk-1")).await;
    assert_eq!(status, 200);
    assert!(html.contains("in use by someone else"), "{html}");

    // Both of B's sessions end: the reader is free for the other link.
    for id in [&id_b, &id_b2] {
        let r = g
            .http
            .post(format!("{}/v1/sessions/{id}/cancel", g.base))
            .header("X-API-Key", &g.key)
            .send()
            .await
            .expect("cancel");
        assert_eq!(r.status(), 200);
    }
    let (status, html) = g.page(&format!("/enroll/{token_a}?reader=desk-1")).await;
    assert_eq!(status, 200);
    assert!(!html.contains("in use by someone else"), "{html}");
    assert_eq!(command(&mut desk).await["session"], token_a.as_str());
}

/// The same, when the two links are opened at the same moment: which session holds a reader is
/// read across streams, so both were armed (and the reader told twice) before arming was
/// decided one at a time. Of two other partners' enrollments opened at once, exactly one gets
/// the reader; and one link opened many times at once is armed once and always answered 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_opened_at_the_same_moment_arm_a_reader_once() {
    let g = Gate::start().await;
    let mut desk = g.reader("desk-9", "alice", 1).await;
    for round in 0..4 {
        let (id_b, token_b) = g.enroll(&format!("b-{round}")).await;
        let (key_a, id_a, token_a) = g
            .other_partner_enroll(&format!("other-{round}"), &format!("a-{round}"))
            .await;
        let (path_a, path_b) = (
            format!("/enroll/{token_a}?reader=desk-9"),
            format!("/enroll/{token_b}?reader=desk-9"),
        );
        let (a, b) = tokio::join!(g.page(&path_a), g.page(&path_b));
        assert_eq!((a.0, b.0), (200, 200));
        let busy = [&a.1, &b.1]
            .iter()
            .filter(|h| h.contains("in use by someone else"))
            .count();
        assert_eq!(busy, 1, "round {round}: one page says busy");
        let first = command(&mut desk).await;
        if let Some(c) = desk.next_command(Duration::from_millis(300)).await {
            panic!("round {round}: the reader was armed twice: {first} then {c}");
        }
        // Free the reader for the next round: end both sessions.
        for (id, key) in [(&id_a, &key_a), (&id_b, &g.key)] {
            let r = g
                .http
                .post(format!("{}/v1/sessions/{id}/cancel", g.base))
                .header("X-API-Key", key)
                .send()
                .await
                .expect("cancel");
            assert_eq!(r.status(), 200);
        }
    }

    let (id, token) = g.enroll("many").await;
    let mut pages = tokio::task::JoinSet::new();
    for _ in 0..12 {
        let (http, url) = (
            g.http.clone(),
            format!("{}/enroll/{token}?reader=desk-9", g.base),
        );
        pages.spawn(async move {
            let r = http.get(url).send().await.expect("GET page");
            (r.status().as_u16(), r.text().await.unwrap_or_default())
        });
    }
    while let Some(page) = pages.join_next().await {
        let (status, html) = page.expect("page task");
        assert_eq!(status, 200, "{html}");
    }
    assert_eq!(command(&mut desk).await["session"], token.as_str());
    if let Some(c) = desk.next_command(Duration::from_millis(300)).await {
        panic!("one session armed twice: {c}");
    }
    let armed = g
        .raw_events()
        .iter()
        .filter(|e| e.kind == "SessionReaderArmed" && e.data.contains(&id))
        .count();
    assert_eq!(armed, 1, "SessionReaderArmed events for one session");
}

/// A hold lapses: a reader armed for one partner's session and left idle refuses another
/// partner's enrollment only for `READER_HOLD` (2 min) after it was armed; from then on the
/// other partner's page takes the reader over and its capture completes that enrollment, while
/// the first session stays pending (it may still finish at another reader, or expire).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_reader_hold_lapses_and_another_partners_enrollment_takes_the_reader() {
    let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
    let g = Gate::start_on(clock.clone()).await;
    let mut desk = g.reader("desk-1", "bob", 7).await;
    let (id_b, token_b) = g.enroll("walked-away-B").await;
    let (status, _) = g.page(&format!("/enroll/{token_b}?reader=desk-1")).await;
    assert_eq!(status, 200);
    assert_eq!(command(&mut desk).await["session"], token_b.as_str());

    let (other_key, id_a, token_a) = g.other_partner_enroll("next-partner", "next-A").await;

    // One second before the hold lapses the reader is still busy.
    clock.advance(palmgate::core::session::READER_HOLD - chrono::Duration::seconds(1));
    let (status, html) = g.page(&format!("/enroll/{token_a}?reader=desk-1")).await;
    assert_eq!(status, 200);
    assert!(html.contains("in use by someone else"), "{html}");
    if let Some(c) = desk.next_command(Duration::from_millis(500)).await {
        panic!("a held reader must not be armed for another partner's session, got {c}");
    }

    // At the hold's end the other partner's page takes the reader over.
    clock.advance(chrono::Duration::seconds(1));
    let (status, html) = g.page(&format!("/enroll/{token_a}?reader=desk-1")).await;
    assert_eq!(status, 200);
    assert!(!html.contains("in use by someone else"), "{html}");
    assert_eq!(command(&mut desk).await["session"], token_a.as_str());
    desk.capture(Some(&token_a)).await.expect("capture");
    let end = Instant::now() + DEADLINE;
    let state = loop {
        let r = g
            .http
            .get(format!("{}/v1/sessions/{id_a}", g.base))
            .header("X-API-Key", &other_key)
            .send()
            .await
            .expect("GET session");
        let state = r.json::<Value>().await.expect("session json")["state"].clone();
        if state != "pending" || Instant::now() >= end {
            break state;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert_eq!(
        state, "completed",
        "the other partner's enrollment completes"
    );
    assert_eq!(
        g.session(&id_b).await["state"],
        "pending",
        "the idle session stays"
    );
}

/// A page reloaded for the reader its session lost asks for it again: refused ("in use") while
/// another partner's session holds it, armed once that hold lapses. A reload by the session
/// that holds the reader sends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_reloaded_for_a_reader_its_session_lost_asks_for_it_again() {
    let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
    let g = Gate::start_on(clock.clone()).await;
    let mut desk = g.reader("desk-1", "bob", 7).await;
    let (_, token_b) = g.enroll("first-B").await;
    let (status, _) = g.page(&format!("/enroll/{token_b}?reader=desk-1")).await;
    assert_eq!(status, 200);
    assert_eq!(command(&mut desk).await["session"], token_b.as_str());
    // The holder's own reload: no second arming.
    let (status, html) = g.page(&format!("/enroll/{token_b}?reader=desk-1")).await;
    assert_eq!(status, 200);
    assert!(!html.contains("in use by someone else"), "{html}");
    if let Some(c) = desk.next_command(Duration::from_millis(500)).await {
        panic!("a reload by the holder must not arm the reader again, got {c}");
    }

    let (_, _, token_a) = g.other_partner_enroll("next-partner", "next-A").await;

    // B's hold lapses; A takes the reader.
    clock.advance(palmgate::core::session::READER_HOLD);
    let (status, _) = g.page(&format!("/enroll/{token_a}?reader=desk-1")).await;
    assert_eq!(status, 200);
    assert_eq!(command(&mut desk).await["session"], token_a.as_str());

    // B's page reloaded: the reader is A's now, and B is told so.
    let (status, html) = g.page(&format!("/enroll/{token_b}?reader=desk-1")).await;
    assert_eq!(status, 200);
    assert!(html.contains("in use by someone else"), "{html}");
    if let Some(c) = desk.next_command(Duration::from_millis(500)).await {
        panic!("the reader is held by another partner's session, got {c}");
    }

    // Once A's hold lapses too, B's reload arms the reader for B again.
    clock.advance(palmgate::core::session::READER_HOLD);
    let (status, html) = g.page(&format!("/enroll/{token_b}?reader=desk-1")).await;
    assert_eq!(status, 200);
    assert!(!html.contains("in use by someone else"), "{html}");
    assert_eq!(command(&mut desk).await["session"], token_b.as_str());
}

/// 9. A trigger opens an identify session bound to the reader and answers `show`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_answers_show_with_a_working_page() {
    let g = Gate::start().await;
    let mut desk = g.reader("desk-1", "alice", 1).await;
    g.enroll_with(&mut desk, "EMP-T").await;

    let mut kiosk = g.reader("kiosk-1", "alice", 300).await;
    kiosk.trigger().await.expect("trigger");
    let cmd = command(&mut kiosk).await;
    assert_eq!(cmd["action"], "show", "{cmd}");
    let url = cmd["url"].as_str().expect("url").to_string();
    let prefix = format!("{}/identify/", g.base);
    assert!(url.starts_with(&prefix), "{url} is a hosted identify page");
    let token = &url[prefix.len()..];
    assert!(token.len() >= 22, "token {token:?} is too short");
    assert_eq!(cmd, json!({"action": "show", "url": url}));

    let r = g.http.get(&url).send().await.expect("GET show url");
    assert_eq!(r.status(), 200, "the shown page works");
    // It offers no other reader: the kiosk's session stays at the kiosk (desk-1 is online).
    let html = r.text().await.unwrap();
    assert!(
        !html.contains("class=\"readers\"") && !html.contains("desk-1"),
        "{html}"
    );
    let (status, _) = g.page(&format!("/identify/{token}?reader=desk-1")).await;
    assert_eq!(status, 200);
    if let Some(c) = desk.next_command(Duration::from_millis(300)).await {
        panic!("a kiosk session was moved to desk-1: {c}");
    }

    // The kiosk's scan completes that session: the link is used up.
    kiosk.capture(Some(token)).await.expect("capture");
    let end = Instant::now() + DEADLINE;
    loop {
        let (status, _) = g.page(&format!("/identify/{token}")).await;
        if status == 410 {
            break;
        }
        assert_eq!(status, 200);
        assert!(Instant::now() < end, "the trigger session never ended");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Reads the SSE body until a `data:` line satisfies `f`; returns that line's JSON.
async fn sse_until(
    resp: &mut reqwest::Response,
    buf: &mut String,
    what: &str,
    f: impl Fn(&Value) -> bool,
) -> Value {
    let end = Instant::now() + DEADLINE;
    loop {
        while let Some(nl) = buf.find('\n') {
            let line: String = buf.drain(..=nl).collect();
            if let Some(data) = line.trim_end().strip_prefix("data:") {
                let v: Value = serde_json::from_str(data.trim()).expect("SSE data is JSON");
                if f(&v) {
                    return v;
                }
            }
        }
        let chunk = tokio::time::timeout_at(end, resp.chunk())
            .await
            .unwrap_or_else(|_| panic!("SSE: {what} not seen within {DEADLINE:?}"))
            .expect("SSE body")
            .unwrap_or_else(|| panic!("SSE stream ended before {what}"));
        buf.push_str(std::str::from_utf8(&chunk).expect("UTF-8"));
    }
}

/// 10. The page's event stream starts with `pending` and reports `completed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_follows_the_session() {
    let g = Gate::start().await;
    let mut desk = g.reader("desk-1", "alice", 1).await;
    let (id, token) = g.enroll("EMP-S").await;
    let mut resp = g
        .http
        .get(format!("{}/enroll/{token}/events", g.base))
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .expect("GET events");
    assert_eq!(resp.status(), 200);
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    let mut buf = String::new();
    let first = sse_until(&mut resp, &mut buf, "the first event", |_| true).await;
    assert_eq!(first["state"], "pending", "{first}");

    desk.capture(Some(&token)).await.expect("capture");
    let last = sse_until(&mut resp, &mut buf, "state completed", |v| {
        v["state"] != "pending"
    })
    .await;
    assert_eq!(last["state"], "completed", "{last}");
    assert_eq!(g.session(&id).await["state"], "completed");

    let (status, _) = g.page(&format!("/identify/{token}/events")).await;
    assert_eq!(status, 404, "an enroll token under /identify is unknown");
}

/// 11. Erasure (SPEC 8.3): the key is destroyed, the palm no longer matches, no clear template
/// is on disk, the chain verifies, and the external_id may enroll again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_shreds_the_template_for_good() {
    let g = Gate::start().await;
    let mut desk = g.reader("desk-1", "alice", 1).await;

    // The exact capture alice's enrollment sends.
    let (id, token) = g.enroll("ALICE").await;
    let sent = desk.next_capture(Some(&token));
    desk.send_capture(sent.clone()).await.expect("capture");
    let s = g.ended(&id).await;
    assert_eq!(s["state"], "completed", "{s}");

    let keys = || g.data_keys();
    assert_eq!(keys(), 1, "one data key while alice is enrolled");

    let r = g
        .http
        .delete(format!("{}/v1/users/ALICE", g.base))
        .header("X-API-Key", &g.key)
        .send()
        .await
        .expect("DELETE user");
    assert_eq!(r.status(), 204);
    let (status, _) = g.get("/v1/users/ALICE").await;
    assert_eq!(status, 404, "an erased user is gone");
    assert_eq!(keys(), 0, "the data key is destroyed");

    // Alice's palm matches nobody now.
    let mut door = g.reader("door-1", "alice", 1_000).await;
    let (id, token) = g.identify("").await;
    door.capture(Some(&token)).await.expect("capture");
    let s = g.ended(&id).await;
    assert_eq!(s["state"], "failed", "{s}");
    assert_eq!(s["fail_reason"], "no_match", "{s}");

    // The log: intact, the ciphertext present, the chain verifying.
    let events = g.raw_events();
    let mut v = Verifier::default();
    for e in &events {
        v.check(e)
            .unwrap_or_else(|b| panic!("chain break after erasure: {b:?}"));
    }
    assert_eq!(v.verified(), events.len() as u64);
    let served = g.app.store.read_raw(0, 100_000).expect("read_raw");
    assert_eq!(served, events, "the store reads back what the file holds");
    let enrolled: Vec<Value> = events
        .iter()
        .filter(|e| e.kind == "UserEnrolled")
        .map(|e| serde_json::from_str(&e.data).expect("event data JSON"))
        .collect();
    assert_eq!(enrolled.len(), 1, "one enrollment");
    let ct = enrolled[0]["template"]["ciphertext"]
        .as_str()
        .unwrap_or_else(|| panic!("sealed template in {}", enrolled[0]));
    assert!(!ct.is_empty());
    assert!(
        events.iter().any(|e| e.kind == "UserErased"),
        "the erasure is an event"
    );

    // No clear template anywhere on disk: raw, normalised, as bytes or base64.
    let raw = STANDARD
        .decode(sent["template"].as_str().expect("template"))
        .expect("base64");
    assert_eq!(raw.len(), DIM * 4);
    let values: Vec<f32> = raw
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let norm = values.iter().map(|x| x * x).sum::<f32>().sqrt();
    let normalised: Vec<u8> = values
        .iter()
        .flat_map(|x| (x / norm).to_le_bytes())
        .collect();
    let mut needles: Vec<(String, Vec<u8>)> = Vec::new();
    for (name, bytes) in [("raw", &raw), ("normalised", &normalised)] {
        needles.push((format!("{name} bytes"), bytes.clone()));
        // Pieces too, in case a page boundary splits the whole.
        for at in [0, 200, 480] {
            needles.push((
                format!("{name} bytes [{at}..+32]"),
                bytes[at..at + 32].to_vec(),
            ));
        }
        let b64 = STANDARD.encode(bytes);
        needles.push((format!("{name} base64"), b64.clone().into_bytes()));
        for at in [0, 400, 640] {
            // Offsets that are multiples of 4 characters encode whole 3-byte groups.
            needles.push((
                format!("{name} base64 [{at}..+40]"),
                b64.as_bytes()[at..at + 40].to_vec(),
            ));
        }
    }
    // A positive control: the search does see what the log holds (the sealed ciphertext).
    let log: Vec<u8> = ["events.db", "events.db-wal"]
        .iter()
        .flat_map(|f| std::fs::read(g.path(f)).unwrap_or_default())
        .collect();
    assert!(
        contains(&log, ct.as_bytes()),
        "the sealed ciphertext is found on disk"
    );
    let mut files = 0;
    for entry in std::fs::read_dir(g.dir.path()).expect("read tempdir") {
        let path = entry.expect("dir entry").path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !(name.starts_with("events.db") || name.starts_with("keys.db")) {
            continue;
        }
        files += 1;
        let bytes = std::fs::read(&path).expect("read file");
        for (what, needle) in &needles {
            assert!(
                !contains(&bytes, needle),
                "the clear template ({what}) is in {name}"
            );
        }
    }
    assert!(files >= 2, "events.db and keys.db were searched");

    // The same external_id may enroll again.
    g.enroll_with(&mut desk, "ALICE").await;
    let (status, _) = g.get("/v1/users/ALICE").await;
    assert_eq!(status, 200, "re-enrolled");
    assert_eq!(keys(), 1, "a fresh data key for the new enrollment");
}

// ---------------------------------------------------------------------------------------------

/// A Mosquitto child process, killed when dropped.
pub(crate) struct Mosquitto {
    child: std::process::Child,
}

impl Mosquitto {
    pub(crate) fn start(bin: &Path, port: u16) -> Mosquitto {
        let child = std::process::Command::new(bin)
            .args(["-p", &port.to_string()])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start mosquitto");
        let m = Mosquitto { child };
        let end = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < end,
                "mosquitto did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        m
    }

    pub(crate) fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Mosquitto for a peer test: its path, or `None` after saying on stdout that the test is
/// skipped; under `PALMGATE_PEERS=required` a missing Mosquitto fails the test instead.
pub(crate) fn mosquitto_or_skip() -> Option<PathBuf> {
    let bin = find_mosquitto();
    if bin.is_none() {
        assert!(
            std::env::var("PALMGATE_PEERS").as_deref() != Ok("required"),
            "mosquitto not found, and PALMGATE_PEERS=required"
        );
        println!("mosquitto not found: skipping");
    }
    bin
}

/// `mosquitto` on PATH, or where Debian installs it (`/usr/sbin` is not on every PATH).
pub(crate) fn find_mosquitto() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|d| d.join("mosquitto"))
        .find(|p| p.is_file())
}

/// A loopback port free now, for a peer (a broker, a gateway) that a test starts on it a moment
/// later. Taken below the kernel's ephemeral range: every `127.0.0.1:0` bind and outgoing
/// connection of the suite takes its port from that range, so a port found free there by binding
/// port 0 could be taken by another test before its peer bound it ("Address already in use":
/// upstream tests failed so). Below the range only this function hands out ports, each once per
/// process (from an offset chosen by the process id, so two suites on one machine rarely meet).
pub(crate) fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .filter(|low| *low >= SPAN + 1024);
    if let Some(low) = low {
        let offset = std::process::id() % SPAN;
        for _ in 0..SPAN {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let port = (low - SPAN + (offset + n) % SPAN) as u16;
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// 12. Mosquitto as an independent broker: enroll + identify through it, then a broker restart
/// the gateway survives (reconnects with backoff and re-subscribes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_mosquitto_and_its_restart() {
    let Some(bin) = mosquitto_or_skip() else {
        return;
    };
    let port = free_port();
    let broker = Mosquitto::start(&bin, port);
    let url = format!("mqtt://127.0.0.1:{port}");
    let g = Gate::start_with(Some(&url)).await;
    assert_eq!(g.mqtt, url, "no embedded broker: readers use Mosquitto");

    let mut desk = g.reader("desk-1", "alice", 1).await;
    g.enroll_with(&mut desk, "EMP-X").await;
    let (id, token) = g.identify("").await;
    desk.capture(Some(&token)).await.expect("capture");
    let s = g.ended(&id).await;
    assert_eq!(s["state"], "completed", "{s}");
    assert_eq!(s["external_id"], "EMP-X");

    // Restart the broker on the same port; palmgate keeps running.
    broker.stop();
    let broker = Mosquitto::start(&bin, port);
    let (id, token) = g.identify("").await;
    let s = capture_until_it_ends(&g, &mut desk, &id, &token).await;
    assert_eq!(s["state"], "completed", "{s}");
    assert_eq!(s["external_id"], "EMP-X");

    // And the other direction: commands reach the reader again (it reconnected and
    // re-subscribed to its `cmd` topic; the gateway still knows it as online).
    let (_, token) = g.identify("").await;
    let (status, _) = g.page(&format!("/identify/{token}?reader=desk-1")).await;
    assert_eq!(status, 200);
    let cmd = command(&mut desk).await;
    assert_eq!(
        cmd,
        json!({"action": "capture", "session": token, "type": "identify", "language": "en"})
    );
    drop(broker);
}

/// The gateway's own link to an external broker (Mosquitto). While it is down, the readers'
/// last statuses say nothing: `/admin/v1/readers`
/// says `broker_up: false` and `presence: unknown` (`online` keeps the last report), a page
/// offers no reader and `?reader=` is refused as for an offline reader (nothing armed). A
/// session armed before the drop keeps waiting (QoS 1 in persistent sessions: the reader's
/// scan arrives when the broker is back) and completes then. `/readyz` stays 200: the API and
/// the log do not need the broker (`faults::broker_down_and_back_then_a_door_scan_works`).
/// Before, the readers stayed online and the page said "ready — place your palm" on a reader
/// the command could not reach.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_broker_link_offers_no_reader_and_marks_presence_unknown() {
    let Some(bin) = mosquitto_or_skip() else {
        return;
    };
    let port = free_port();
    let broker = Mosquitto::start(&bin, port);
    let url = format!("mqtt://127.0.0.1:{port}");
    let g = Gate::start_with(Some(&url)).await;
    let readyz = || async {
        let r = g
            .http
            .get(format!("{}/readyz", g.base))
            .send()
            .await
            .expect("GET /readyz");
        let status = r.status().as_u16();
        (status, r.text().await.unwrap_or_default())
    };
    let mut desk = g.reader("desk-1", "alice", 1).await;
    g.enroll_with(&mut desk, "EMP-LINK").await;
    let (status, body) = readyz().await;
    assert_eq!(status, 200, "{body}");
    let listed = g.reader_online("desk-1", true).await;
    assert_eq!(listed["broker_up"], true, "{listed}");
    assert_eq!(listed["presence"], "online", "{listed}");
    // A session armed on desk-1 before the broker goes.
    let (armed, armed_token) = g.identify("").await;
    let (status, _) = g
        .page(&format!("/identify/{armed_token}?reader=desk-1"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(command(&mut desk).await["action"], "capture");

    broker.stop();
    let end = Instant::now() + DEADLINE;
    let r = loop {
        let list = g.readers().await;
        let r = list
            .iter()
            .find(|r| r["id"] == "desk-1")
            .expect("desk-1")
            .clone();
        if r["broker_up"] == false {
            break r;
        }
        assert!(
            Instant::now() < end,
            "broker_up still true with the broker down: {r}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (status, body) = readyz().await;
    assert_eq!(
        status, 200,
        "the API and the log do not need the broker: {body}"
    );
    assert_eq!(r["broker_up"], false, "{r}");
    assert_eq!(r["presence"], "unknown", "{r}");
    assert_eq!(r["online"], true, "online keeps the last report: {r}");
    // The API still takes sessions; their page offers no reader and arms none.
    let (id, token) = g.identify("").await;
    let (status, html) = g.page(&format!("/identify/{token}")).await;
    assert_eq!(status, 200);
    assert!(
        !html.contains("?reader=desk-1"),
        "no reader is offered while the broker is down:\n{html}"
    );
    let (status, html) = g.page(&format!("/identify/{token}?reader=desk-1")).await;
    assert_eq!(status, 200);
    assert!(
        html.contains("This scanner is offline. Choose another one."),
        "arming is refused as for an offline reader:\n{html}"
    );
    assert!(
        html.contains(r#"data-reader-status="waiting""#) && html.contains("No scanner is online."),
        "{html}"
    );
    let v = g.session(&id).await;
    assert_eq!(v["state"], "pending", "{v}");
    // The session armed before keeps waiting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(g.session(&armed).await["state"], "pending");

    // Back on the same port: ready again, the reader offered and armed, the armed session
    // completes.
    let broker = Mosquitto::start(&bin, port);
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let list = g.readers().await;
        let r = list.iter().find(|r| r["id"] == "desk-1").expect("desk-1");
        if r["broker_up"] == true {
            break;
        }
        assert!(
            Instant::now() < end,
            "broker_up still false 20 s after the broker came back: {r}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let listed = g.reader_online("desk-1", true).await;
    assert_eq!(listed["broker_up"], true, "{listed}");
    assert_eq!(listed["presence"], "online", "{listed}");
    let (status, html) = g.page(&format!("/identify/{token}")).await;
    assert_eq!(status, 200);
    assert!(html.contains("?reader=desk-1"), "offered again:\n{html}");
    let s = capture_until_it_ends(&g, &mut desk, &armed, &armed_token).await;
    assert_eq!(s["state"], "completed", "{s}");
    assert_eq!(s["external_id"], "EMP-LINK", "{s}");
    let (status, _) = g.page(&format!("/identify/{token}?reader=desk-1")).await;
    assert_eq!(status, 200);
    let cmd = command(&mut desk).await;
    assert_eq!(cmd["action"], "capture", "{cmd}");
    assert_eq!(cmd["session"], token.as_str(), "{cmd}");
    drop(broker);
}

/// One oversized reader message (600 KB, through a broker that sets no packet limit) is
/// rejected, counted and acknowledged: it once dropped the gateway's connection before it could
/// be acknowledged, the persistent session redelivered it after every reconnect, and no reader
/// got through again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_reader_message_is_rejected_not_redelivered_for_ever() {
    let Some(bin) = mosquitto_or_skip() else {
        return;
    };
    let port = free_port();
    let broker = Mosquitto::start(&bin, port);
    let url = format!("mqtt://127.0.0.1:{port}");
    let _counting = TOO_LARGE_COUNT.lock().await;
    let g = Gate::start_with(Some(&url)).await;
    let before = rejected(&g.metrics().await, "too_large");

    let mut opts = rumqttc::MqttOptions::new("big-publisher", "127.0.0.1", port);
    opts.set_max_packet_size(4 << 20, 4 << 20);
    let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, 10);
    let big = format!(
        "{{\"capture_id\":\"c-big\",\"session\":null,\"template\":\"{}\",\"quality\":0.9,\"liveness\":true}}",
        "A".repeat(600_000)
    );
    client
        .publish(
            "palmgate/readers/lobby-1/capture",
            rumqttc::QoS::AtLeastOnce,
            false,
            big,
        )
        .await
        .expect("publish");
    let publisher = tokio::spawn(async move {
        loop {
            if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) = eventloop.poll().await
            {
                return;
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), publisher)
        .await
        .expect("the broker took the big message")
        .expect("publisher");

    let end = Instant::now() + Duration::from_secs(10);
    while rejected(&g.metrics().await, "too_large") < before + 1.0 {
        assert!(
            Instant::now() < end,
            "the oversized message was not rejected"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Other readers get through.
    let _desk = g.reader("desk-1", "alice", 1).await;
    g.reader_online("desk-1", true).await;
    let m = g.metrics().await;
    assert_eq!(
        rejected(&m, "too_large"),
        before + 1.0,
        "rejected once, not redelivered:\n{m}"
    );
    drop(broker);
}

/// An erasure that lands while another user's enrollment is being written destroys only the
/// erased user's data key. It once destroyed every key no user in memory referenced, which
/// included the key the enrollment in flight had just stored: the partner got `completed`, and
/// the new user never matched again, even after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erasure_during_an_enrollment_keeps_the_new_users_key() {
    let g = Gate::start().await;
    let keys = || g.data_keys();
    let mut alice_desk = g.reader("desk-1", "alice", 1).await;
    g.enroll_with(&mut alice_desk, "ALICE").await;
    let mut bob_desk = g.reader("desk-2", "bob", 2).await;
    let (bob, token) = g.enroll("BOB").await;

    // Another process holds the log's write lock (well under the 5 s busy timeout): the
    // erasure and then bob's enrollment queue behind it, and land one after the other.
    let lock = rusqlite::Connection::open(g.path("events.db")).expect("open events.db");
    lock.execute_batch("BEGIN IMMEDIATE").expect("lock the log");
    let erase = {
        let http = g.http.clone();
        let url = format!("{}/v1/users/ALICE", g.base);
        let key = g.key.clone();
        tokio::spawn(async move {
            http.delete(url)
                .header("X-API-Key", key)
                .send()
                .await
                .map(|r| r.status().as_u16())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    bob_desk.capture(Some(&token)).await.expect("capture");
    tokio::time::sleep(Duration::from_millis(500)).await;
    lock.execute_batch("ROLLBACK").expect("unlock the log");
    assert_eq!(erase.await.expect("task").expect("DELETE"), 204);
    let s = g.ended(&bob).await;
    assert_eq!(s["state"], "completed", "{s}");
    assert_eq!(keys(), 1, "bob's data key, and only his");

    // Bob's palm still identifies him.
    let mut door = g.reader("door-1", "bob", 1_000).await;
    let (id, token) = g.identify("").await;
    door.capture(Some(&token)).await.expect("capture");
    let s = g.ended(&id).await;
    assert_eq!(s["state"], "completed", "{s}");
    assert_eq!(s["external_id"], "BOB", "{s}");
    drop((alice_desk, lock));
}

/// An erasure while the key store cannot be written (another process holds it, or its disk is
/// full): the erasure is recorded and answered, and the data key is destroyed as soon as the
/// key store can be written again, not left until the next start-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_users_key_is_destroyed_once_the_key_store_is_writable() {
    let g = Gate::start().await;
    let mut desk = g.reader("desk-1", "alice", 1).await;
    g.enroll_with(&mut desk, "ALICE").await;
    let lock = rusqlite::Connection::open(g.path("keys.db")).expect("open keys.db");
    lock.execute_batch("BEGIN EXCLUSIVE")
        .expect("lock the key store");
    let count = |c: &rusqlite::Connection| {
        c.query_row("SELECT count(*) FROM data_keys", [], |r| r.get::<_, i64>(0))
            .expect("count keys")
    };
    let r = g
        .http
        .delete(format!("{}/v1/users/ALICE", g.base))
        .header("X-API-Key", &g.key)
        .send()
        .await
        .expect("DELETE user");
    assert_eq!(r.status(), 204);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        count(&lock),
        1,
        "the key store was locked: the key is still there"
    );
    lock.execute_batch("ROLLBACK")
        .expect("unlock the key store");
    drop(lock);
    let end = Instant::now() + Duration::from_secs(10);
    let c = rusqlite::Connection::open(g.path("keys.db")).expect("open keys.db");
    while count(&c) > 0 {
        assert!(Instant::now() < end, "the data key outlived its erasure");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(desk);
}

/// Rows in `data_keys`, read through `c` (which may be the connection holding the lock).
fn key_rows(c: &rusqlite::Connection) -> i64 {
    c.query_row("SELECT count(*) FROM data_keys", [], |r| r.get::<_, i64>(0))
        .expect("count keys")
}

/// Polls keys.db at `path` until it holds no data key (10 s at most).
async fn keys_gone_within_10s(path: &Path, what: &str) {
    let c = rusqlite::Connection::open(path).expect("open keys.db");
    let end = Instant::now() + Duration::from_secs(10);
    while key_rows(&c) > 0 {
        assert!(Instant::now() < end, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Another SQLite client holds keys.db's write lock (`BEGIN IMMEDIATE`) for ~6 s while three
/// users are erased at once: the erasures answer promptly, `/healthz` too, and every data key
/// is destroyed once the lock is released. The deletions once ran on the runtime's workers,
/// each waiting out the key store's 5 s busy timeout holding its mutex: on 2 workers the
/// erasures answered after 5, 10 and 12 s and `/healthz` after ~10 s (a door's relay pulse
/// stretched the same way).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_key_store_holds_up_neither_erasures_nor_other_requests() {
    let g = Gate::start().await;
    let mut readers = Vec::new();
    for (i, (user, palm)) in [("ALICE", "alice"), ("BOB", "bob"), ("CAROL", "carol")]
        .into_iter()
        .enumerate()
    {
        let mut r = g.reader(&format!("desk-{i}"), palm, i as u64 + 1).await;
        g.enroll_with(&mut r, user).await;
        readers.push(r);
    }
    assert_eq!(g.data_keys(), 3);
    let lock = rusqlite::Connection::open(g.path("keys.db")).expect("open keys.db");
    lock.execute_batch("BEGIN IMMEDIATE")
        .expect("lock the key store");
    let locked_at = Instant::now();
    let erasures: Vec<_> = ["ALICE", "BOB", "CAROL"]
        .into_iter()
        .map(|user| {
            let req = g
                .http
                .delete(format!("{}/v1/users/{user}", g.base))
                .header("X-API-Key", &g.key);
            tokio::spawn(async move {
                let t = Instant::now();
                let status = req.send().await.map(|r| r.status().as_u16());
                (user, status, t.elapsed())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    let health = g
        .http
        .get(format!("{}/healthz", g.base))
        .send()
        .await
        .expect("GET /healthz");
    let health_took = t.elapsed();
    assert_eq!(health.status(), 200);
    for e in erasures {
        let (user, status, took) = e.await.expect("erasure task");
        assert_eq!(status.expect("DELETE"), 204, "erase {user}");
        assert!(
            took < Duration::from_secs(2),
            "DELETE /v1/users/{user} took {took:?} while the key store was locked"
        );
    }
    assert!(
        health_took < Duration::from_secs(2),
        "/healthz took {health_took:?} while erasures waited for the locked key store"
    );
    assert_eq!(
        key_rows(&lock),
        3,
        "the key store was locked: the keys are still there"
    );
    tokio::time::sleep(Duration::from_secs(6).saturating_sub(locked_at.elapsed())).await;
    lock.execute_batch("ROLLBACK")
        .expect("unlock the key store");
    drop(lock);
    keys_gone_within_10s(
        &g.path("keys.db"),
        "erased users' data keys outlived the key store's lock by 10 s",
    )
    .await;
    drop(readers);
}

/// The state a kill -9 leaves between a durable `UserErased` and its key's deletion (the
/// erasure made while keys.db is locked, the process killed before a retry could delete the
/// key), restarted while keys.db is still locked: the start-up sweep cannot delete the key
/// then, and deletes it once the lock is released, without another restart. The sweep once
/// only logged its failure, and the erased user's wrapped key stayed until the next start-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_start_up_sweep_retries_a_key_it_cannot_delete_yet() {
    use crate::fixtures::TestServer;
    let mut s = TestServer::start().await;
    let (_, key) = s.create_partner("sweep").await;
    let mut desk = SimReader::connect(sim_options(&s.mqtt_url, "desk-1", "alice", 1))
        .await
        .expect("desk connects");
    let created = s
        .enroll(&key, "", &json!({"external_id": "ALICE"}))
        .await
        .created();
    // The reader may not be subscribed yet: capture until the session ends.
    let end = Instant::now() + DEADLINE;
    loop {
        desk.capture(Some(&created.token())).await.expect("capture");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let v = s.session(&key, &created.session_id).await.json();
        if v["state"] != "pending" {
            assert_eq!(v["state"], "completed", "enroll of ALICE: {v}");
            break;
        }
        assert!(Instant::now() < end, "the enrollment never ended: {v}");
    }
    let keys = s.dir().join("keys.db");
    let lock = rusqlite::Connection::open(&keys).expect("open keys.db");
    assert_eq!(key_rows(&lock), 1, "alice's data key");
    lock.execute_batch("BEGIN IMMEDIATE")
        .expect("lock the key store");
    let r = s
        .client
        .delete(s.url("/v1/users/ALICE"))
        .header("X-API-Key", &key)
        .send()
        .await
        .expect("DELETE user");
    assert_eq!(r.status(), 204);
    s.kill9();
    drop(desk);
    assert_eq!(
        key_rows(&lock),
        1,
        "killed with keys.db locked: the erased user's key is still there"
    );
    let events = rusqlite::Connection::open(s.store_path()).expect("open events.db");
    let erased: i64 = events
        .query_row(
            "SELECT count(*) FROM events WHERE type = 'UserErased'",
            [],
            |r| r.get(0),
        )
        .expect("count erasures");
    assert_eq!(erased, 1, "the erasure is durable");

    // Restarted with keys.db still locked: the sweep's delete waits out the busy timeout.
    s.launch().await;
    assert_eq!(key_rows(&lock), 1, "keys.db is locked: nothing deleted yet");
    lock.execute_batch("ROLLBACK")
        .expect("unlock the key store");
    drop(lock);
    keys_gone_within_10s(
        &keys,
        "the start-up sweep never retried the erased user's data key",
    )
    .await;
    let log = s.stderr_log();
    assert!(
        log.contains("start-up sweep: cannot destroy data keys yet; retrying"),
        "{log}"
    );
}

/// With the built-in broker, a reader the log had online and that does not reconnect within
/// the grace (`app::READER_GRACE`) after a restart is recorded offline: the broker that held its
/// status and last will died with the gateway. An enrollment armed on it fails
/// `reader_offline`, and it is offered again once it connects. A reader that reconnects at once
/// keeps its armed enrollment. Before, a reader gone during a restart stayed `online` for good
/// (crash-consistency review, session 26).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_gone_while_the_gateway_was_down_is_offline_after_the_restart() {
    use crate::fixtures::TestServer;
    let mut s = TestServer::start().await;
    let (_, key) = s.create_partner("acme").await;
    let presence = async |s: &TestServer, id: &str| -> Value {
        let v = s.admin_json("/admin/v1/readers").await;
        v.as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id)
            .map(|r| r["presence"].clone())
            .unwrap_or(Value::Null)
    };
    let until = async |s: &TestServer, id: &str, want: &str| {
        let end = Instant::now() + DEADLINE;
        loop {
            let p = presence(s, id).await;
            if p == want {
                return;
            }
            assert!(Instant::now() < end, "{id} is {p}, not {want}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    };
    let mut armed = Vec::new();
    let mut readers = Vec::new();
    for (desk, seed) in [("desk-8", 1), ("desk-9", 2)] {
        readers.push(
            SimReader::connect(sim_options(&s.mqtt_url, desk, "alice", seed))
                .await
                .unwrap(),
        );
        until(&s, desk, "online").await;
        let created = s
            .enroll(&key, "", &json!({"external_id": format!("EMP-{desk}")}))
            .await
            .created();
        let r = s
            .get(&format!("/enroll/{}?reader={desk}", created.token()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        armed.push(created.session_id);
    }

    // The gateway dies; desk-8 is unplugged while it is down, desk-9 reconnects at once.
    s.kill9();
    drop(readers);
    s.launch().await;
    let _desk9 = SimReader::connect(sim_options(&s.mqtt_url, "desk-9", "alice", 3))
        .await
        .unwrap();
    // Inside the grace, a page offers desk-9 (heard again) and not desk-8 (the log still has
    // it online), and picking desk-8 says it is offline, arming nothing.
    let page = s.identify(&key, "").await.created();
    let offered = async |s: &TestServer| -> String {
        s.get(&page.path())
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let end = Instant::now() + DEADLINE;
    while !offered(&s).await.contains("?reader=desk-9") {
        assert!(
            Instant::now() < end,
            "desk-9 is not offered after it reconnected"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        presence(&s, "desk-8").await,
        "online",
        "still inside the grace"
    );
    let html = offered(&s).await;
    assert!(
        !html.contains("?reader=desk-8"),
        "desk-8 is offered in the grace: {html}"
    );
    let picked = s
        .get(&format!("{}?reader=desk-8", page.path()))
        .send()
        .await
        .unwrap();
    assert_eq!(picked.status(), 200);
    let html = picked.text().await.unwrap();
    assert!(html.contains("This scanner is offline"), "{html}");
    let armed_here = |s: &TestServer| {
        rusqlite::Connection::open(s.store_path())
            .unwrap()
            .query_row(
                "SELECT count(*) FROM events WHERE type = 'SessionReaderArmed' \
                 AND json_extract(data, '$.session_id') = ?1",
                [&page.session_id],
                |r| r.get::<_, i64>(0),
            )
            .unwrap()
    };
    assert_eq!(armed_here(&s), 0, "nothing armed on desk-8");
    until(&s, "desk-8", "offline").await;
    let state = async |id: &str| -> Value { s.session(&key, id).await.json() };
    let v = state(&armed[0]).await;
    assert_eq!(
        (v["state"].as_str(), v["fail_reason"].as_str()),
        (Some("failed"), Some("reader_offline")),
        "{v}"
    );
    assert_eq!(presence(&s, "desk-9").await, "online");
    let v = state(&armed[1]).await;
    assert_eq!(
        v["state"], "pending",
        "desk-9 came back within the grace: {v}"
    );
    // The count above can see an arming: desk-9 (heard again) is armed for the page.
    let picked = s
        .get(&format!("{}?reader=desk-9", page.path()))
        .send()
        .await
        .unwrap();
    assert_eq!(picked.status(), 200);
    assert_eq!(armed_here(&s), 1, "desk-9 is armed");

    // desk-8 plugged in again: online.
    let _desk8 = SimReader::connect(sim_options(&s.mqtt_url, "desk-8", "alice", 4))
        .await
        .unwrap();
    until(&s, "desk-8", "online").await;
}

/// A raw MQTT 3.1.1 CONNECT as client `id` to the broker at `mqtt` (`mqtt://host:port`). With
/// `reset`, the TCP connection is reset (RST) right after the CONNECT is sent; otherwise the
/// broker's answer is read until it closes the connection or 2 s pass.
async fn raw_connect(mqtt: &str, id: &str, reset: bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = mqtt.strip_prefix("mqtt://").expect("an mqtt:// URL");
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("TCP connect to the broker");
    let mut connect = vec![0x10, (10 + 2 + id.len()) as u8];
    connect.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60]);
    connect.extend_from_slice(&[0, id.len() as u8]);
    connect.extend_from_slice(id.as_bytes());
    s.write_all(&connect).await.expect("send CONNECT");
    if reset {
        s.set_zero_linger().expect("SO_LINGER 0");
        drop(s);
        return;
    }
    let mut buf = [0u8; 64];
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// SPEC 5 ("a malformed message never stops anything"): a reader with a client id MQTT topics
/// cannot carry (`a/b`) connecting twice, and a flaky reader whose connection is reset right
/// after CONNECT and which then reconnects, do not break the embedded broker. rumqttd 0.20
/// panicked on the second connection (a stale will channel, unwrapped while holding a lock) and
/// every later connection failed; vendor/rumqttd carries the fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_client_ids_and_reset_connections_do_not_break_the_embedded_broker() {
    let g = Gate::start().await;
    for _ in 0..2 {
        raw_connect(&g.mqtt, "a/b", false).await;
    }
    for _ in 0..3 {
        raw_connect(&g.mqtt, "flaky-reader", true).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    raw_connect(&g.mqtt, "flaky-reader", false).await;

    // A reader connecting now is seen online and its capture completes an enrollment.
    let mut desk = g.reader("desk-1", "alice", 1).await;
    g.enroll_with(&mut desk, "EMP-AFTER-BAD-CLIENTS").await;
    let r = g
        .http
        .get(format!("{}/readyz", g.base))
        .send()
        .await
        .expect("GET /readyz");
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    drop(desk);
}

/// A page whose session lost its reader stops saying it is ready: partner A's enrollment arms
/// desk-1, then partner B's identification takes the reader over (an identification may). A's
/// page then says the scanner is in use (not "ready", not marked current), and A's live event
/// stream, open before, is told so (`reader_status: busy`) without a change of A's own — else
/// A's person would scan into B's session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_whose_reader_another_session_took_says_busy_and_its_stream_is_told() {
    let g = Gate::start().await;
    let mut desk = g.reader("desk-1", "alice", 1).await;
    g.reader_online("desk-1", true).await;
    let (_, token_a) = g.enroll("EMP-A").await;
    let (status, _) = g.page(&format!("/enroll/{token_a}?reader=desk-1")).await;
    assert_eq!(status, 200);
    assert_eq!(command(&mut desk).await["session"], token_a.as_str());
    let ready = "Scanner desk-1 is ready";
    let (_, html) = g.page(&format!("/enroll/{token_a}")).await;
    assert!(html.contains(ready), "{html}");
    assert!(html.contains("aria-current"), "{html}");

    let mut resp = g
        .http
        .get(format!("{}/enroll/{token_a}/events", g.base))
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .expect("GET events");
    assert_eq!(resp.status(), 200);
    let mut buf = String::new();
    let first = sse_until(&mut resp, &mut buf, "the first event", |_| true).await;
    assert_eq!(first["reader_status"], "ready", "{first}");

    // Partner B's identification takes desk-1.
    let r = g
        .http
        .post(format!("{}/admin/v1/partners", g.base))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "partner-B"}))
        .send()
        .await
        .expect("create partner");
    assert_eq!(r.status(), 201);
    let other: Value = r.json().await.expect("partner json");
    let r = g
        .http
        .post(format!("{}/v1/identify", g.base))
        .header("X-API-Key", other["api_key"].as_str().expect("api_key"))
        .send()
        .await
        .expect("POST identify");
    assert_eq!(r.status(), 201);
    let (_, token_b) = created(&r.json().await.expect("json"), "identify");
    let (status, _) = g.page(&format!("/identify/{token_b}?reader=desk-1")).await;
    assert_eq!(status, 200);
    assert_eq!(command(&mut desk).await["session"], token_b.as_str());

    // A's stream learns of it, and A's page no longer says ready.
    let busy = sse_until(&mut resp, &mut buf, "reader_status busy", |v| {
        v["reader_status"] != "ready"
    })
    .await;
    assert_eq!(busy["reader_status"], "busy", "{busy}");
    assert_eq!(busy["state"], "pending", "{busy}");
    let (status, html) = g.page(&format!("/enroll/{token_a}")).await;
    assert_eq!(status, 200);
    assert!(!html.contains(ready), "A's page still says ready: {html}");
    assert!(html.contains("in use by someone else"), "{html}");
    assert!(!html.contains("aria-current"), "{html}");
}

/// A kiosk's trigger session speaks the readers' language (`mqtt.reader_language`), as upstream
/// mode and the readers' `result` messages do: with `ru`, the page the reader is told to show
/// is in Russian (it was always English).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_session_is_in_the_readers_language() {
    use crate::fixtures::{Options, TestServer};
    let s =
        TestServer::start_with(Options::default().extra_toml("[mqtt]\nreader_language = \"ru\""))
            .await;
    let mut kiosk = crate::crash_suite::reader(&s.mqtt_url, "kiosk-1", "alice", 300)
        .await
        .expect("reader");
    let end = Instant::now() + DEADLINE;
    // A trigger published before the gateway subscribed is lost: trigger again until shown.
    let cmd = loop {
        kiosk.trigger().await.expect("trigger");
        if let Some(c) = kiosk.next_command(Duration::from_secs(2)).await {
            break c;
        }
        assert!(Instant::now() < end, "no answer to a trigger");
    };
    assert_eq!(cmd["action"], "show", "{cmd}");
    let url = cmd["url"].as_str().expect("url");
    let path = &url[url.find("/identify/").expect("an identify page")..];
    let r = s
        .client
        .get(s.url(path))
        .header("Accept", "text/html")
        .send()
        .await
        .expect("GET the shown page");
    assert_eq!(r.status(), 200);
    let html = r.text().await.expect("page");
    assert!(html.contains(r#"<html lang="ru">"#), "{html}");
}

// ---------------------------------------------------------------------------------------------
// Erasure against captures in flight; equal similarities across restarts
// ---------------------------------------------------------------------------------------------

/// `DELETE /v1/users/{external_id}`, which must answer 204.
async fn erase(g: &Gate, external_id: &str) {
    let r = g
        .http
        .delete(format!("{}/v1/users/{external_id}", g.base))
        .header("X-API-Key", &g.key)
        .send()
        .await
        .expect("DELETE user");
    assert_eq!(r.status(), 204, "erase {external_id}");
}

/// A capture whose search ran before the erasure (its best match the erased user) is decided
/// after it: the session fails `no_match`, never completes as the erased user.
#[tokio::test]
async fn a_match_found_before_an_erasure_does_not_complete_the_session() {
    use palmgate::app::secrets::hash_secret;
    use palmgate::core::matcher::Candidate;
    use palmgate::core::{Capture, Command, ExternalId};
    let g = Gate::start().await;
    let mut desk = g.reader("desk-1", "alice", 1).await;
    g.enroll_with(&mut desk, "ALICE").await;
    let partner = g.app.read(|s| s.partners().next().expect("partner").id);
    // What the search answered for alice's palm while she was enrolled.
    let best = Candidate {
        partner_id: partner,
        external_id: ExternalId("ALICE".into()),
        similarity: 0.97,
    };
    erase(&g, "ALICE").await;
    let (id, token) = g.identify("").await;
    g.app
        .execute(Command::Capture(Capture {
            reader_id: ReaderId("desk-1".into()),
            capture_id: "searched-before-the-erasure".into(),
            session: Some(hash_secret(&token)),
            quality: 0.95,
            liveness: true,
            best: Some(best),
            sealed: None,
        }))
        .await
        .expect("capture decided");
    let s = g.ended(&id).await;
    assert_eq!(s["state"], "failed", "{s}");
    assert_eq!(s["fail_reason"], "no_match", "{s}");
    assert!(s.get("external_id").is_none_or(Value::is_null), "{s}");
}

/// Identify captures of alice's palm 2 ms apart, an erasure of alice in their midst: in the
/// log, no session completes as alice after her `UserErased`, and no identify session
/// completes without an identity. (Racy by nature: without the fix it failed most runs; with
/// it, it cannot fail.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_session_completes_as_a_user_after_their_erasure() {
    use palmgate::mqtt::protocol::{CaptureMsg, Inbound};
    let g = Gate::start().await;
    let mut desk = g.reader("desk-1", "alice", 1).await;
    g.enroll_with(&mut desk, "ALICE").await;
    const N: u64 = 40;
    let mut sessions = Vec::new();
    for _ in 0..N {
        sessions.push(g.identify("").await);
    }
    let mut tasks = Vec::new();
    for (i, (_, token)) in sessions.iter().enumerate() {
        let app = g.app.clone();
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(2 * i as u64)).await;
            let msg = CaptureMsg {
                capture_id: format!("race-{i}"),
                session: Some(token),
                template: palmgate::synthetic::scan("alice", DIM, 1_000 + i as u64).into(),
                quality: 0.95,
                liveness: true,
            };
            app.reader_message(ReaderId("desk-1".into()), Inbound::Capture(msg))
                .await
        }));
    }
    tokio::time::sleep(Duration::from_millis(N)).await;
    erase(&g, "ALICE").await;
    for t in tasks {
        t.await.expect("capture task").expect("capture decided");
    }
    let (mut completed, mut failed) = (0, 0);
    for (id, _) in &sessions {
        let s = g.ended(id).await;
        match s["state"].as_str() {
            Some("completed") => completed += 1,
            _ => failed += 1,
        }
    }
    let events = g.raw_events();
    let erased_at = events
        .iter()
        .find(|e| e.kind == "UserErased")
        .expect("the erasure is in the log")
        .position;
    for e in events.iter().filter(|e| e.kind == "SessionCompleted") {
        let data: Value = serde_json::from_str(&e.data).expect("event JSON");
        assert_eq!(
            data["external_id"], "ALICE",
            "a session completed without an identity at {}: {data}",
            e.position
        );
        assert!(
            e.position < erased_at,
            "a session completed as ALICE at {} after her erasure at {erased_at}: {data}",
            e.position
        );
    }
    println!("{completed} completed before the erasure, {failed} failed after it");
}

/// The same palm template enrolled at several partners: a site session's scan gives every one
/// of them the same similarity, and the same user (the smallest partner id's) wins after
/// every restart, whatever order the process's hash maps list the partners in.
#[tokio::test]
async fn equal_similarities_go_to_the_same_user_after_every_restart() {
    use crate::fixtures::{ADMIN_TOKEN, TestServer, send};
    let mut s = TestServer::start().await;
    let online = |s: &TestServer, reader: &'static str| {
        let rb = s.get("/admin/v1/readers").bearer_auth(ADMIN_TOKEN);
        async move {
            let end = Instant::now() + DEADLINE;
            loop {
                let list = send(rb.try_clone().expect("request")).await.json();
                if list
                    .as_array()
                    .is_some_and(|l| l.iter().any(|r| r["id"] == reader && r["online"] == true))
                {
                    return;
                }
                assert!(Instant::now() < end, "{reader} never came online: {list}");
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
    };
    let desk = SimReader::connect(sim_options(&s.mqtt_url, "desk-1", "alice", 1))
        .await
        .expect("desk connects");
    online(&s, "desk-1").await;
    // One template, enrolled as U0..U5 at partners P0..P5.
    let mut template = {
        let mut d = SimReader::connect(sim_options(&s.mqtt_url, "scratch", "alice", 1))
            .await
            .expect("scratch reader connects");
        d.next_capture(None)
    };
    let mut partner_ids = Vec::new();
    for i in 0..6 {
        let (pid, key) = s.create_partner(&format!("P{i}")).await;
        partner_ids.push(pid);
        let c = s
            .enroll(&key, "", &json!({"external_id": format!("U{i}")}))
            .await
            .created();
        template["session"] = json!(c.token());
        template["capture_id"] = json!(format!("enroll-{i}"));
        desk.send_capture(template.clone()).await.expect("capture");
        let end = Instant::now() + DEADLINE;
        loop {
            let v = s.session(&key, &c.session_id).await.json();
            if v["state"] == "completed" {
                break;
            }
            assert_eq!(v["state"], "pending", "enroll of U{i}: {v}");
            assert!(Instant::now() < end, "enroll of U{i} never ended");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    drop(desk);
    // The user a kiosk's site session identifies (its SessionCompleted names them).
    let store = s.store_path();
    let completions = move || -> Vec<String> {
        let c = rusqlite::Connection::open(&store).expect("open events.db");
        let mut st = c
            .prepare("SELECT data FROM events WHERE type = 'SessionCompleted' ORDER BY position")
            .expect("prepare");
        st.query_map([], |r| r.get::<_, String>(0))
            .expect("query")
            .map(|d| {
                let v: Value = serde_json::from_str(&d.expect("row")).expect("json");
                v["external_id"].as_str().unwrap_or("").to_string()
            })
            .collect()
    };
    let mut winners = Vec::new();
    for start in 0..4u64 {
        if start > 0 {
            s.restart().await;
        }
        let mut kiosk = SimReader::connect(sim_options(
            &s.mqtt_url,
            "kiosk-1",
            "alice",
            500 + start * 100,
        ))
        .await
        .expect("kiosk connects");
        online(&s, "kiosk-1").await;
        let before = completions().len();
        kiosk.trigger().await.expect("trigger");
        let cmd = command(&mut kiosk).await;
        let url = cmd["url"].as_str().unwrap_or_else(|| panic!("{cmd}"));
        let token = url.rsplit('/').next().expect("token").to_string();
        kiosk.capture(Some(&token)).await.expect("capture");
        let end = Instant::now() + DEADLINE;
        let winner = loop {
            let all = completions();
            if all.len() > before {
                break all[before].clone();
            }
            assert!(Instant::now() < end, "the site session never completed");
            tokio::time::sleep(Duration::from_millis(25)).await;
        };
        winners.push(winner);
    }
    let smallest = (0..6)
        .min_by_key(|i| {
            uuid::Uuid::parse_str(&partner_ids[*i])
                .expect("uuid")
                .as_u128()
        })
        .expect("a partner");
    assert_eq!(
        winners,
        vec![format!("U{smallest}"); 4],
        "the tie goes to the smallest partner id's user at every start"
    );
}

/// Scans for session `id` (its `token`) at `desk` until the session is no longer pending, and
/// returns it. A capture published before the gateway has re-subscribed after a broker restart
/// is lost by MQTT semantics (no subscriber, not retained): it scans again every 2 s, for at
/// most 20 s.
async fn capture_until_it_ends(g: &Gate, desk: &mut SimReader, id: &str, token: &str) -> Value {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        desk.capture(Some(token)).await.expect("capture");
        let attempt_end = Instant::now() + Duration::from_secs(2);
        let mut v = g.session(id).await;
        while v["state"] == "pending" && Instant::now() < attempt_end {
            tokio::time::sleep(Duration::from_millis(50)).await;
            v = g.session(id).await;
        }
        if v["state"] != "pending" {
            return v;
        }
        assert!(
            Instant::now() < end,
            "session {id} still pending 20 s after the broker came back: {v}"
        );
    }
}

/// A reader as a bare rumqttc client with no packet limit of its own (as a reviewer's tool
/// would be): `{"online": true}` retained once connected, `{"online": false}` as its last will;
/// it receives its `cmd` topic.
struct RawReader {
    id: String,
    client: rumqttc::AsyncClient,
    /// Each PUBACK the broker sends.
    acks: tokio::sync::mpsc::UnboundedReceiver<()>,
    /// Each command received.
    commands: tokio::sync::mpsc::UnboundedReceiver<Value>,
    /// How many times its connection ended.
    drops: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl RawReader {
    async fn connect(mqtt: &str, id: &str) -> RawReader {
        let (host, port) = mqtt
            .strip_prefix("mqtt://")
            .and_then(|a| a.rsplit_once(':'))
            .expect("an mqtt://host:port URL");
        let status = format!("palmgate/readers/{id}/status");
        let mut opts =
            rumqttc::MqttOptions::new(format!("raw-{id}"), host, port.parse().expect("port"));
        opts.set_max_packet_size(4 << 20, 4 << 20);
        opts.set_keep_alive(Duration::from_secs(5));
        opts.set_last_will(rumqttc::LastWill::new(
            status.clone(),
            r#"{"online": false}"#,
            rumqttc::QoS::AtLeastOnce,
            true,
        ));
        let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, 16);
        let (ack_tx, acks) = tokio::sync::mpsc::unbounded_channel();
        let (cmd_tx, commands) = tokio::sync::mpsc::unbounded_channel();
        let (ready_tx, mut ready) = tokio::sync::mpsc::unbounded_channel();
        let drops = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (sub, cmd_topic, dropped) = (
            client.clone(),
            format!("palmgate/readers/{id}/cmd"),
            drops.clone(),
        );
        let task = tokio::spawn(async move {
            use rumqttc::{Event, Packet};
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = sub.try_subscribe(&cmd_topic, rumqttc::QoS::AtLeastOnce);
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = ready_tx.send(());
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        let _ = ack_tx.send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if let Ok(v) = serde_json::from_slice::<Value>(&p.payload) {
                            let _ = cmd_tx.send(v);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => {
                        dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        });
        tokio::time::timeout(DEADLINE, ready.recv())
            .await
            .expect("the raw reader subscribed");
        let mut r = RawReader {
            id: id.to_string(),
            client,
            acks,
            commands,
            drops,
            task,
        };
        r.publish_to(&status, true, br#"{"online": true}"#.to_vec())
            .await;
        r
    }

    /// Publishes at QoS 1 and waits for the broker's PUBACK.
    async fn publish_to(&mut self, topic: &str, retain: bool, payload: Vec<u8>) {
        self.client
            .publish(topic, rumqttc::QoS::AtLeastOnce, retain, payload)
            .await
            .expect("publish");
        tokio::time::timeout(DEADLINE, self.acks.recv())
            .await
            .unwrap_or_else(|_| panic!("no PUBACK for {topic} within {DEADLINE:?}"));
    }

    /// Publishes on its own topic of `kind`.
    async fn publish(&mut self, kind: TopicKind, retain: bool, payload: Vec<u8>) {
        let topic = format!("palmgate/readers/{}/{}", self.id, kind.as_str());
        self.publish_to(&topic, retain, payload).await;
    }

    async fn command(&mut self) -> Value {
        tokio::time::timeout(DEADLINE, self.commands.recv())
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("no reader command within {DEADLINE:?}"))
    }

    fn drops(&self) -> usize {
        self.drops.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for RawReader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A valid capture of `palm` for session `token` (`None`: a door scan).
fn raw_capture(capture_id: &str, token: Option<&str>, palm: &str) -> Vec<u8> {
    let template = encode_template(&palmgate::synthetic::scan(palm, DIM, 7));
    json!({"capture_id": capture_id, "session": token, "template": template,
           "quality": 0.95, "liveness": true})
    .to_string()
    .into_bytes()
}

/// Waits until `palmgate_mqtt_rejected_total{reason}` reaches `at_least`.
async fn rejected_reaches(g: &Gate, reason: &str, at_least: f64) -> String {
    let end = Instant::now() + DEADLINE;
    loop {
        let m = g.metrics().await;
        if rejected(&m, reason) >= at_least {
            return m;
        }
        assert!(
            Instant::now() < end,
            "palmgate_mqtt_rejected_total{{reason=\"{reason}\"}} below {at_least}:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// SPEC 5 ("a malformed message never stops anything"): a ~270 KB capture through the
/// embedded broker is rejected `too_large` by the gateway, and its reader stays connected, its
/// armed session pending, its next capture handled. The broker's packet limit once equalled the
/// parser's: rumqttd dropped the reader (`PayloadSizeLimitExceeded`), its last will marked it
/// offline, the session failed `reader_offline`, and nothing was logged or counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_capture_through_the_embedded_broker_keeps_its_reader_connected() {
    let _counting = TOO_LARGE_COUNT.lock().await;
    let g = Gate::start().await;
    let mut r = RawReader::connect(&g.mqtt, "desk-big").await;
    g.reader_online("desk-big", true).await;
    let (id, token) = g.enroll("EMP-BIG").await;
    let (status, _) = g.page(&format!("/enroll/{token}?reader=desk-big")).await;
    assert_eq!(status, 200);
    assert_eq!(r.command().await["action"], "capture");

    let before = rejected(&g.metrics().await, "too_large");
    let big = json!({"capture_id": "c-big", "session": token, "template": "A".repeat(270_000),
                     "quality": 0.9, "liveness": true});
    r.publish(TopicKind::Capture, false, big.to_string().into_bytes())
        .await;
    rejected_reaches(&g, "too_large", before + 1.0).await;

    assert_eq!(r.drops(), 0, "the broker kept the reader's connection");
    assert_eq!(g.session(&id).await["state"], "pending");
    let listed = g.readers().await;
    assert!(
        listed
            .iter()
            .any(|x| x["id"] == "desk-big" && x["online"] == true),
        "{listed:?}"
    );
    r.publish(
        TopicKind::Capture,
        false,
        raw_capture("c-after-big", Some(&token), "alice"),
    )
    .await;
    let s = g.ended(&id).await;
    assert_eq!(s["state"], "completed", "{s}");
    assert_eq!(r.drops(), 0);
}

/// SPEC 5 (only `status` is retained): a retained capture and a retained trigger, which a
/// broker replays on every new subscription, are rejected `retained`, logged and counted by a
/// gateway that subscribes after they were published (here a second gateway on the first one's
/// embedded broker); the retained status still counts. They were handled as fresh messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_captures_and_triggers_are_rejected() {
    let g = Gate::start().await;
    let mut r = RawReader::connect(&g.mqtt, "kiosk-r").await;
    g.reader_online("kiosk-r", true).await;
    r.publish(
        TopicKind::Capture,
        true,
        raw_capture("c-retained", None, "alice"),
    )
    .await;
    r.publish(
        TopicKind::Trigger,
        true,
        br#"{"trigger_id": "t-retained"}"#.to_vec(),
    )
    .await;
    // Delivered live (the broker clears the flag), the trigger is handled as usual.
    let show = r.command().await;
    assert_eq!(show["action"], "show", "{show}");
    let before = rejected(&g.metrics().await, "retained");

    let second = Gate::start_with(Some(&g.mqtt)).await;
    second.reader_online("kiosk-r", true).await;
    let m = rejected_reaches(&second, "retained", before + 2.0).await;
    assert_eq!(rejected(&m, "retained"), before + 2.0, "{m}");
    if let Ok(Some(c)) = tokio::time::timeout(Duration::from_millis(500), r.commands.recv()).await {
        panic!("a replayed trigger or capture was answered: {c}");
    }
}

/// `reader simulate` beside another client speaking for the same reader id (the demo's own
/// simulated reader): each connects with a client id of its own (the broker dropped the older
/// connection of a shared one, and its last will marked the reader offline), and the one that
/// ends its run leaves the reader online while the other still speaks for it. Alone, a
/// simulator that ends says the reader is offline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulator_beside_another_client_of_the_same_reader_leaves_it_online() {
    let g = Gate::start().await;
    let first = g.reader("desk-5", "alice", 1).await;
    let second = g.reader("desk-5", "bob", 2).await;
    second.close().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = g.reader_online("desk-5", true).await;
    assert_eq!(
        r["online"], true,
        "the first client still speaks for desk-5: {r}"
    );
    first.close().await;
    g.reader_online("desk-5", false).await;
}

/// The servers of these tests share this process's metrics: the two that count `too_large`
/// run one at a time, so each sees only its own.
static TOO_LARGE_COUNT: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// SPEC 5: a message under `palmgate/readers/` on a topic that is not a reader's (an extra
/// level, a reader id with no kind) is rejected `topic`, logged and counted; it was never seen,
/// as the gateway subscribed to the three reader topics only. The gateway's own commands do not
/// come back to it (no filter matches `cmd`), and a third level that is no kind is not seen
/// (known gap, README): neither is counted, and the reader keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_on_topics_that_are_not_a_readers_are_rejected_and_counted() {
    let g = Gate::start().await;
    let mut r = RawReader::connect(&g.mqtt, "desk-t").await;
    g.reader_online("desk-t", true).await;
    let before = rejected(&g.metrics().await, "topic");
    for topic in [
        "palmgate/readers/desk-t/capture/extra",
        "palmgate/readers/x/y/capture",
        "palmgate/readers/desk-t",
    ] {
        r.publish_to(topic, false, raw_capture("c-topic", None, "alice"))
            .await;
    }
    rejected_reaches(&g, "topic", before + 3.0).await;

    let (id, token) = g.enroll("EMP-TOPIC").await;
    let (status, _) = g.page(&format!("/enroll/{token}?reader=desk-t")).await;
    assert_eq!(status, 200);
    assert_eq!(r.command().await["action"], "capture");
    // Published after the command was delivered, in this order: once the last is counted, the
    // ones before it were handled.
    r.publish_to("palmgate/readers/desk-t/foo", false, b"{}".to_vec())
        .await;
    r.publish_to("palmgate/readers/desk-t/status/x", false, b"{}".to_vec())
        .await;
    let m = rejected_reaches(&g, "topic", before + 4.0).await;
    assert_eq!(
        rejected(&m, "topic"),
        before + 4.0,
        "neither the gateway's own command nor the unknown kind is counted:\n{m}"
    );

    r.publish(
        TopicKind::Capture,
        false,
        raw_capture("c-after-topics", Some(&token), "alice"),
    )
    .await;
    let s = g.ended(&id).await;
    assert_eq!(s["state"], "completed", "{s}");
}
