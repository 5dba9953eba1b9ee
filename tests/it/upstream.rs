//! Upstream mode end to end (issue 9): two palmgate instances, both the real binary.
//!
//! - **R**, the remote Pass API: keeps the people. Its partner "Gate" has a webhook pointing at
//!   G's `/hooks/upstream` (loopback allowed with `webhooks.allow_networks`).
//! - **G**, the gateway: `[upstream]` points at R with Gate's API key and webhook secret; a site
//!   policy with doors on a simulated Modbus board (in this process) and readers on G's broker.
//!
//! A hand at G's door reader (`trigger`) makes G open an identify session at R; the reader is
//! told to `show` R's page; the palm is captured at R (a simulated reader on R's broker, with
//! the session token from the URL); R's signed webhook reaches G, which decides with its own
//! site policy, records the decision, pulses the coil and tells the reader.

use crate::doors::{Layout, WAIT, new_board, result_cmd, site_doc, until, writes_since};
use crate::fixtures::{ADMIN_TOKEN, Options, TestServer};
use palmgate::config::Config;
use palmgate::core::ReaderId;
use palmgate::core::webhook::seed_signature;
use palmgate::modbus::sim::SimBoard;
use palmgate::mqtt::simulate::{SimOptions, SimReader};
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;
use tokio::time::Instant;

// ---------------------------------------------------------------------------------------------
// Fixture
// ---------------------------------------------------------------------------------------------

struct Pair {
    r: TestServer,
    g: TestServer,
    board: SimBoard,
    /// Gate, R's partner that G is: id, API key, webhook secret.
    partner: String,
    key: String,
    secret: String,
    /// `PALMGATE_HTTP_LISTEN` of G (fixed: R's webhook URL names it).
    g_listen: String,
    _site: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The site: door `main` (reader `lobby-1`, coil 0) for level `standard`; door `side`
/// (reader `side-1`, coil 1) for level `visitor` only.
fn site(board: &SimBoard) -> String {
    site_doc(
        &board.url(),
        &Layout {
            extra: r#"
[[levels]]
name = "visitor"
doors = ["side"]
schedule = "always"

[[doors]]
id = "side"
readers = ["side-1"]
relay = { device = "board-1", coil = 1, pulse_ms = 400 }
"#
            .into(),
            ..Layout::default()
        },
    )
}

/// Starts R, creates Gate with its webhook at G's future address, starts G on `upstream_url`
/// (`None`: R's own URL) with `upstream.timeout = timeout`.
async fn pair_with(upstream_url: Option<&str>, timeout: &str) -> Pair {
    pair_full(upstream_url, timeout, "").await
}

/// As [`pair_with`], with `g_toml` appended to G's configuration.
async fn pair_full(upstream_url: Option<&str>, timeout: &str, g_toml: &str) -> Pair {
    let g_listen = format!("127.0.0.1:{}", free_port());
    let r = TestServer::start_with(
        Options::default().extra_toml("[webhooks]\nallow_networks = [\"127.0.0.0/8\"]"),
    )
    .await;
    let resp = r
        .client
        .post(r.url("/admin/v1/partners"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({
            "name": "Gate",
            "webhook_url": format!("http://{g_listen}/hooks/upstream"),
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let p: Value = resp.json().await.unwrap();
    let s = |k: &str| p[k].as_str().unwrap().to_string();
    let (partner, key, secret) = (s("id"), s("api_key"), s("webhook_secret"));

    let board = new_board().await;
    let dir = tempfile::tempdir().unwrap();
    let site_path = dir.path().join("site.toml");
    std::fs::write(&site_path, site(&board)).unwrap();
    let base = upstream_url.map_or_else(|| r.base_url.clone(), str::to_string);
    let mut g = TestServer::prepare(Options::default().extra_toml(&format!(
        "site = {site:?}\n[upstream]\nbase_url = {base:?}\napi_key = {key:?}\nwebhook_secret = {secret:?}\ntimeout = {timeout:?}\n{g_toml}",
        site = site_path.display().to_string(),
    )));
    g.launch_env(&[("PALMGATE_HTTP_LISTEN", &g_listen)]).await;
    let pair = Pair {
        r,
        g,
        board,
        partner,
        key,
        secret,
        g_listen,
        _site: dir,
    };
    // Every door locked once the board is connected.
    pair.g_event("DeviceStatusChanged", |d| d["up"] == true)
        .await;
    pair
}

async fn pair() -> Pair {
    pair_with(None, "10s").await
}

async fn reader(mqtt: &str, id: &str, palm: &str, seed: u64) -> SimReader {
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
    .unwrap()
}

/// The next command of `action` the reader receives (others are skipped).
async fn command(r: &mut SimReader, action: &str) -> Value {
    let end = Instant::now() + WAIT;
    loop {
        let c = r
            .next_command(end.saturating_duration_since(Instant::now()))
            .await
            .unwrap_or_else(|| panic!("no `{action}` command for the reader"));
        if c["action"] == action {
            return c;
        }
    }
}

async fn events(s: &TestServer) -> Vec<Value> {
    let mut out = vec![];
    let mut after = 0;
    loop {
        let page: Value = s
            .client
            .get(s.url(&format!("/admin/v1/events?after={after}&limit=1000")))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let evs = page["events"].as_array().expect("events").clone();
        if evs.is_empty() {
            return out;
        }
        after = page["next_after"].as_u64().unwrap();
        out.extend(evs);
    }
}

async fn events_of(s: &TestServer, kind: &str) -> Vec<Value> {
    events(s)
        .await
        .into_iter()
        .filter(|e| e["type"] == kind)
        .collect()
}

async fn wait_event(s: &TestServer, kind: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let end = Instant::now() + WAIT;
    loop {
        if let Some(e) = events_of(s, kind)
            .await
            .into_iter()
            .find(|e| pred(&e["data"]))
        {
            return e;
        }
        assert!(
            Instant::now() < end,
            "no {kind} event as expected; the log:\n{}",
            summary(s).await
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn summary(s: &TestServer) -> String {
    events(s)
        .await
        .iter()
        .map(|e| {
            let mut d = e["data"].clone();
            if let Some(m) = d.as_object_mut() {
                m.remove("document");
            }
            format!(
                "{:>4} {} {d}",
                e["position"],
                e["type"].as_str().unwrap_or("?")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

impl Pair {
    async fn g_event(&self, kind: &str, pred: impl Fn(&Value) -> bool) -> Value {
        wait_event(&self.g, kind, pred).await
    }

    /// Enrolls `palm` at R as `external_id` of Gate, through a desk reader on R's broker.
    async fn enroll(&self, external_id: &str, palm: &str, metadata: Value) {
        let a = self
            .r
            .enroll(
                &self.key,
                "",
                &json!({"external_id": external_id, "username": format!("{external_id} user"), "metadata": metadata}),
            )
            .await
            .created();
        let mut desk = reader(&self.r.mqtt_url, "desk-r", palm, 100).await;
        desk.capture(Some(&a.token())).await.unwrap();
        self.wait_remote_session(&a.session_id, "completed").await;
    }

    async fn wait_remote_session(&self, id: &str, state: &str) -> Value {
        let end = Instant::now() + WAIT;
        loop {
            let s = self.r.session(&self.key, id).await.json();
            if s["state"] == state {
                return s;
            }
            assert!(Instant::now() < end, "remote session {id}: {s}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A trigger at G's reader `r`: the `show` URL, and the remote session id G bound.
    async fn trigger(&self, r: &mut SimReader) -> (String, String) {
        let before = events_of(&self.g, "UpstreamIdentifyStarted").await.len();
        r.trigger().await.unwrap();
        let show = command(r, "show").await;
        let url = show["url"].as_str().expect("show url").to_string();
        let started = events_of(&self.g, "UpstreamIdentifyStarted").await;
        assert_eq!(started.len(), before + 1, "one binding per trigger");
        let bound = started.last().unwrap()["data"].clone();
        assert_eq!(bound["reader_id"], "lobby-1");
        (url, bound["session_id"].as_str().unwrap().to_string())
    }

    /// A webhook to G signed with `secret`: (status, body).
    async fn post_hook(&self, secret: &str, body: &str) -> (u16, Value) {
        let resp = self
            .g
            .client
            .post(format!("http://{}/hooks/upstream", self.g_listen))
            .header("content-type", "application/json")
            .header(
                "x-webhook-signature",
                seed_signature(secret, body.as_bytes()),
            )
            .header("x-webhook-id", "msg_test")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }
}

/// The token at the end of a hosted-page URL.
fn token(url: &str) -> String {
    url.rsplit('/').next().unwrap().to_string()
}

fn completed_body(session: &str, external_id: &str, level: &str) -> String {
    json!({
        "event": "completed",
        "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "data": {"session_id": session, "type": "identify", "external_id": external_id,
                 "metadata": {"access_level": level}, "language": "en"},
    })
    .to_string()
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// The whole path: trigger at G → identify at R → `show` → palm at R → R's webhook → G's
/// policy → durable `DoorDecided` → coil pulse → reader `result`; a replay of the webhook opens
/// nothing; the audit re-derives the decision from G's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_enrolled_at_the_remote_opens_the_door_at_the_gateway() {
    let mut p = pair().await;
    p.enroll(
        "alice",
        "alice",
        json!({"access_level": "standard", "department": "R&D"}),
    )
    .await;

    let mut lobby = reader(&p.g.mqtt_url, "lobby-1", "nobody", 1).await;
    let (url, session) = p.trigger(&mut lobby).await;
    assert!(
        url.starts_with(&format!("{}/identify/", p.r.public_url)),
        "the reader shows R's page: {url}"
    );
    // G measured R's clock against its own (same machine: no skew) from R's `Date`.
    let started = p.g_event("UpstreamIdentifyStarted", |_| true).await;
    let skew = started["data"]["clock_skew_s"]
        .as_i64()
        .expect("clock_skew_s");
    assert!(skew.abs() <= 1, "{started}");
    // R knows the session as Gate's identify session.
    let remote = p.wait_remote_session(&session, "pending").await;
    assert_eq!(remote["type"], "identify");

    let since = Instant::now();
    let mut palm_at_r = reader(&p.r.mqtt_url, "kiosk-r", "alice", 7).await;
    palm_at_r.capture(Some(&token(&url))).await.unwrap();

    let r = result_cmd(&mut lobby).await;
    assert_eq!(r["granted"], true, "{r}");
    assert_eq!(r["door"], "main");
    until("coil 0 ON", || {
        writes_since(&p.board, 0, since).iter().any(|(_, on)| *on)
    })
    .await;
    until("coil 0 OFF after the pulse", || !p.board.coil(0)).await;
    assert!(
        writes_since(&p.board, 1, since).is_empty(),
        "another door moved"
    );

    // The log: the session ended, then the decision (same write), then the relay.
    let ended = p
        .g_event("UpstreamSessionEnded", |d| d["session_id"] == session)
        .await;
    let d = &ended["data"];
    assert_eq!(d["outcome"], "completed");
    assert_eq!(d["external_id"], "alice");
    assert_eq!(d["username"], "alice user");
    assert_eq!(
        d["metadata"],
        json!({"access_level": "standard"}),
        "only what the policy reads is kept"
    );
    assert!(d["webhook_id"].as_str().unwrap().starts_with("msg_"));
    let decided = p.g_event("DoorDecided", |_| true).await;
    let dd = &decided["data"];
    assert_eq!(dd["door"], "main");
    assert_eq!(dd["verdict"]["verdict"], "granted");
    assert_eq!(dd["verdict"]["level"], "standard");
    assert_eq!(dd["subject"]["external_id"], "alice");
    assert_eq!(dd["subject"]["partner_name"], "upstream");
    let upstream_partner = dd["subject"]["partner_id"].as_str().unwrap().to_string();
    assert_ne!(upstream_partner, p.partner, "a local identity, not R's id");
    let on = p
        .g_event("RelaySwitched", |d| d["on"] == true && d["door"] == "main")
        .await;
    assert!(
        ended["position"].as_u64() < decided["position"].as_u64()
            && decided["position"].as_u64() < on["position"].as_u64(),
        "the decision is durable before the relay moves:\n{}",
        summary(&p.g).await
    );
    assert_eq!(on["data"]["tag"], dd["capture_id"]);

    // The same webhook again (a retry, or a replay by someone who saw it): nothing happens.
    let replay = completed_body(&session, "alice", "standard");
    let before = Instant::now();
    assert_eq!(
        p.post_hook(&p.secret, &replay).await,
        (200, json!({"status": "duplicate"}))
    );
    // A signed webhook about a session G never opened is ignored, recorded nowhere.
    assert_eq!(
        p.post_hook(&p.secret, &completed_body("not-ours", "alice", "standard"))
            .await,
        (200, json!({"status": "ignored"}))
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        writes_since(&p.board, 0, before).is_empty(),
        "a replay opened the door"
    );
    assert_eq!(events_of(&p.g, "DoorDecided").await.len(), 1);

    // The audit re-derives the decision from G's log alone.
    p.g.kill9();
    let store = palmgate::store::SqliteStore::open(p.g.store_path()).unwrap();
    let report = palmgate::replay::audit::verify(&store).unwrap();
    assert!(report.ok(), "{:?}", report.findings);
    assert_eq!(report.decisions, 1);
}

/// A forged webhook is refused with 401 and changes nothing; then a person whose level lacks
/// the door is identified at R and denied at G: the reason reaches the reader, no coil moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_webhook_is_refused_and_a_person_without_the_door_is_denied() {
    let p = pair().await;
    p.enroll("olga", "olga", json!({"access_level": "visitor"}))
        .await;
    let mut lobby = reader(&p.g.mqtt_url, "lobby-1", "nobody", 2).await;
    let (url, session) = p.trigger(&mut lobby).await;
    let since = Instant::now();

    // Forged: signed with another secret, unsigned, or with a mangled signature.
    let forged = completed_body(&session, "mallory", "standard");
    let (status, body) = p.post_hook("whsec_not-the-secret", &forged).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["message"], "invalid or missing webhook signature");
    let hook = format!("http://{}/hooks/upstream", p.g_listen);
    let unsigned =
        p.g.client
            .post(&hook)
            .body(forged.clone())
            .send()
            .await
            .unwrap();
    assert_eq!(unsigned.status(), 401);
    let mangled =
        p.g.client
            .post(&hook)
            .header(
                "x-webhook-signature",
                seed_signature(&p.secret, forged.as_bytes()).replace("sha256=", "sha1="),
            )
            .body(forged.clone())
            .send()
            .await
            .unwrap();
    assert_eq!(mangled.status(), 401);
    // A stale Standard Webhooks timestamp, even with the right seed signature.
    let stale =
        p.g.client
            .post(&hook)
            .header(
                "x-webhook-signature",
                seed_signature(&p.secret, forged.as_bytes()),
            )
            .header("webhook-id", "msg_old")
            .header(
                "webhook-timestamp",
                (chrono::Utc::now().timestamp() - 3600).to_string(),
            )
            .body(forged.clone())
            .send()
            .await
            .unwrap();
    assert_eq!(stale.status(), 401);
    // Signed garbage is a 400, not a decision.
    assert_eq!(p.post_hook(&p.secret, "{not json").await.0, 400);
    assert_eq!(
        p.post_hook(&p.secret, r#"{"event":"completed"}"#).await.0,
        400
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(events_of(&p.g, "UpstreamSessionEnded").await.is_empty());
    assert!(events_of(&p.g, "DoorDecided").await.is_empty());
    assert!(writes_since(&p.board, 0, since).is_empty());

    // Olga (visitor: side door only) is identified at R: denied at the main door.
    let mut palm_at_r = reader(&p.r.mqtt_url, "kiosk-r", "olga", 9).await;
    palm_at_r.capture(Some(&token(&url))).await.unwrap();
    let r = result_cmd(&mut lobby).await;
    assert_eq!(r["granted"], false, "{r}");
    assert_eq!(r["door"], "main");
    assert_eq!(r["reason"], "door_not_in_level");
    let decided = p.g_event("DoorDecided", |_| true).await;
    assert_eq!(decided["data"]["verdict"]["reason"], "door_not_in_level");
    assert_eq!(decided["data"]["subject"]["external_id"], "olga");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        writes_since(&p.board, 0, since).is_empty(),
        "a denial moved the coil"
    );
}

/// A palm R does not know: R fails the session `no_match`; G records a `no_match` denial at
/// the door and tells the reader. A session R lets expire: the reader is told, nothing opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_palm_is_a_no_match_denial_and_a_cancelled_session_opens_nothing() {
    let p = pair().await;
    p.enroll("alice", "alice", json!({"access_level": "standard"}))
        .await;
    let mut lobby = reader(&p.g.mqtt_url, "lobby-1", "nobody", 3).await;
    let since = Instant::now();

    let (url, _) = p.trigger(&mut lobby).await;
    let mut palm_at_r = reader(&p.r.mqtt_url, "kiosk-r", "stranger", 11).await;
    palm_at_r.capture(Some(&token(&url))).await.unwrap();
    let r = result_cmd(&mut lobby).await;
    assert_eq!(
        (&r["granted"], &r["reason"]),
        (&json!(false), &json!("no_match")),
        "{r}"
    );
    let decided = p.g_event("DoorDecided", |_| true).await;
    assert_eq!(decided["data"]["verdict"]["reason"], "no_match");

    // Cancelled at R (the person pressed Cancel on R's page): a failure result, no decision.
    let (_, session) = p.trigger(&mut lobby).await;
    assert_eq!(p.r.cancel(&p.key, &session).await.status, 200);
    let r = result_cmd(&mut lobby).await;
    assert_eq!(
        (&r["granted"], &r["reason"]),
        (&json!(false), &json!("cancelled")),
        "{r}"
    );
    assert_eq!(r["door"], "main");
    let ended = p
        .g_event("UpstreamSessionEnded", |d| d["session_id"] == session)
        .await;
    assert_eq!(ended["data"]["outcome"], "failed");
    assert_eq!(events_of(&p.g, "DoorDecided").await.len(), 1);
    assert!(writes_since(&p.board, 0, since).is_empty());
}

/// R refusing the call (Gate deactivated: 403) and R down (killed): each trigger is recorded
/// as failed and the reader gets a failure `result`; nothing opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_remote_refuses_or_is_down_the_reader_is_told() {
    let mut p = pair().await;
    let mut lobby = reader(&p.g.mqtt_url, "lobby-1", "nobody", 4).await;
    let since = Instant::now();

    p.r.deactivate(&p.partner).await;
    lobby.trigger().await.unwrap();
    let r = result_cmd(&mut lobby).await;
    assert_eq!(r["granted"], false, "{r}");
    assert_eq!(r["reason"], "upstream_unavailable");
    assert_eq!(r["door"], "main");
    assert!(
        r["message"].as_str().unwrap().contains("unavailable"),
        "{r}"
    );
    let failed = p.g_event("UpstreamIdentifyFailed", |_| true).await;
    assert_eq!(failed["data"]["status_code"], 403);
    assert!(
        failed["data"]["error"]
            .as_str()
            .unwrap()
            .contains("partner account is inactive"),
        "{failed}"
    );

    p.r.kill9();
    lobby.trigger().await.unwrap();
    let r = result_cmd(&mut lobby).await;
    assert_eq!(r["reason"], "upstream_unavailable", "{r}");
    let failed = p
        .g_event("UpstreamIdentifyFailed", |d| d["status_code"].is_null())
        .await;
    assert!(
        failed["data"]["error"]
            .as_str()
            .unwrap()
            .contains("connect"),
        "{failed}"
    );
    assert!(events_of(&p.g, "UpstreamIdentifyStarted").await.is_empty());
    assert!(writes_since(&p.board, 0, since).is_empty());
}

/// A remote that does not answer in time: the reader is told within `upstream.timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_that_hangs_times_out_and_the_reader_is_told() {
    // A listener that accepts and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let hold = tokio::spawn(async move {
        let mut held = vec![];
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let p = pair_with(Some(&url), "3s").await;
    let mut lobby = reader(&p.g.mqtt_url, "lobby-1", "nobody", 5).await;
    let sent = Instant::now();
    lobby.trigger().await.unwrap();
    let r = result_cmd(&mut lobby).await;
    assert_eq!(r["reason"], "upstream_unavailable", "{r}");
    assert!(
        sent.elapsed() >= Duration::from_millis(2900),
        "told before the timeout"
    );
    let failed = p.g_event("UpstreamIdentifyFailed", |_| true).await;
    assert!(
        failed["data"]["error"]
            .as_str()
            .unwrap()
            .contains("no answer from the upstream within 3s"),
        "{failed}"
    );
    hold.abort();
}

/// The reader ↔ remote session binding is in the log: G killed and restarted between the
/// trigger and the palm still decides for the right reader and door.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binding_survives_a_gateway_restart() {
    let mut p = pair().await;
    p.enroll("alice", "alice", json!({"access_level": "standard"}))
        .await;
    let mut lobby = reader(&p.g.mqtt_url, "lobby-1", "nobody", 6).await;
    let (url, _) = p.trigger(&mut lobby).await;

    let restarted = Instant::now();
    p.g.kill9();
    let listen = p.g_listen.clone();
    p.g.launch_env(&[("PALMGATE_HTTP_LISTEN", &listen)]).await;
    let mut lobby = reader(&p.g.mqtt_url, "lobby-1", "nobody", 60).await;
    // The restarted gateway has reconnected to the board (it drives every coil to rest).
    until("the board reconnected", || {
        !writes_since(&p.board, 0, restarted).is_empty()
    })
    .await;
    let since = Instant::now();

    let mut palm_at_r = reader(&p.r.mqtt_url, "kiosk-r", "alice", 13).await;
    palm_at_r.capture(Some(&token(&url))).await.unwrap();
    let r = result_cmd(&mut lobby).await;
    assert_eq!(r["granted"], true, "{r}");
    until("coil 0 ON", || {
        writes_since(&p.board, 0, since).iter().any(|(_, on)| *on)
    })
    .await;
}

/// A trigger whose remote call is in flight when the gateway is killed is not lost: its MQTT
/// message is acknowledged only once the call's outcome is recorded, so the site's broker
/// (Mosquitto here, an independent peer) delivers it again to the restarted gateway, which
/// calls the remote again and shows the reader the page. Peer: Mosquitto.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_in_flight_when_the_gateway_is_killed_is_answered_after_the_restart() {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::{Arc, Mutex};
    let Some(bin) = crate::readers::mosquitto_or_skip() else {
        return;
    };
    let port = crate::readers::free_port();
    let _broker = crate::readers::Mosquitto::start(&bin, port);
    let mqtt = format!("mqtt://127.0.0.1:{port}");
    // The upstream's address: connections are held unanswered until `target` names where to
    // forward them (R, once G has been killed).
    let front = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front_url = format!("http://{}", front.local_addr().unwrap());
    let target: Arc<Mutex<Option<String>>> = Arc::default();
    let calls = Arc::new(AtomicUsize::new(0));
    let proxy = tokio::spawn({
        let (target, calls) = (target.clone(), calls.clone());
        async move {
            let mut held = vec![];
            while let Ok((mut s, _)) = front.accept().await {
                calls.fetch_add(1, SeqCst);
                let to = target.lock().unwrap().clone();
                match to {
                    None => held.push(s),
                    Some(addr) => {
                        tokio::spawn(async move {
                            if let Ok(mut up) = tokio::net::TcpStream::connect(addr).await {
                                let _ = tokio::io::copy_bidirectional(&mut s, &mut up).await;
                            }
                        });
                    }
                }
            }
        }
    });
    let mut p = pair_full(
        Some(&front_url),
        "30s",
        &format!("[mqtt]\nurl = \"{mqtt}\"\n"),
    )
    .await;
    assert_eq!(p.g.mqtt_url, mqtt, "G uses Mosquitto");
    let mut lobby = reader(&mqtt, "lobby-1", "nobody", 8).await;
    lobby.trigger().await.unwrap();
    until("G called the upstream", || {
        calls.load(std::sync::atomic::Ordering::SeqCst) >= 1
    })
    .await;
    p.g.kill9();
    *target.lock().unwrap() = Some(p.r.base_url.trim_start_matches("http://").to_string());
    let listen = p.g_listen.clone();
    p.g.launch_env(&[("PALMGATE_HTTP_LISTEN", &listen)]).await;

    let show = command(&mut lobby, "show").await;
    let url = show["url"].as_str().expect("show url");
    assert!(url.contains("/identify/"), "{show}");
    let started = p.g_event("UpstreamIdentifyStarted", |_| true).await;
    assert_eq!(started["data"]["reader_id"], "lobby-1", "{started}");
    // The page shown is the remote session G bound, open at R.
    let session = started["data"]["session_id"].as_str().unwrap();
    p.wait_remote_session(session, "pending").await;
    assert!(calls.load(SeqCst) >= 2, "called again after the restart");
    proxy.abort();
}

/// A trigger's MQTT acknowledgement waits for its remote call's outcome; the messages G gets
/// meanwhile (a door scan, and, while G subscribed to `palmgate/readers/#`, its own `show` and
/// `result` commands) are acknowledged in the order they came all the same (MQTT 3.1.1
/// [MQTT-4.6.0-2]). G acknowledged them at once, ahead of the held trigger: rumqttd, the
/// embedded broker, drops a client that acknowledges out of order ("out of order ack"), and
/// again on the held acknowledgement sent on the next connection (unsolicited there). Each time
/// G was cut off from its readers for the backoff and what was in flight was delivered again;
/// in the full suite, upstream tests stopped getting G's commands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_after_a_held_trigger_keep_the_gateway_connected() {
    // A remote that accepts and never answers: the trigger's acknowledgement is held for the
    // whole timeout.
    let (url, calls, hold) = silent_remote().await;
    let p = pair_with(Some(&url), "3s").await;
    let mut lobby = reader(&p.g.mqtt_url, "lobby-1", "nobody", 47).await;
    lobby.trigger().await.unwrap();
    until("G called the upstream", || {
        calls.load(std::sync::atomic::Ordering::SeqCst) >= 1
    })
    .await;

    // A door scan while the trigger's call hangs: decided and answered at once.
    let scan = lobby.next_capture(None);
    lobby.send_capture(scan).await.unwrap();
    let r = result_cmd(&mut lobby).await;
    assert_eq!(r["granted"], false, "{r}");
    // The call times out: the reader is told, the trigger acknowledged.
    let r = result_cmd(&mut lobby).await;
    assert_eq!(r["reason"], "upstream_unavailable", "{r}");
    // And G still answers a scan at once.
    let scan = lobby.next_capture(None);
    lobby.send_capture(scan).await.unwrap();
    let r = result_cmd(&mut lobby).await;
    assert_eq!(r["granted"], false, "{r}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    connected_throughout(&p.g).await;
    hold.abort();
}

/// A door scan decided while a trigger's acknowledgement is held is not acknowledged either
/// (acknowledgements go in order). Killed then, G gets both again from Mosquitto's persistent
/// session when it returns, in the backlog. The scan was decided already: it is a redelivery,
/// ignored as a duplicate, not a scan "made while the gateway was away" (before, it was counted
/// `palmgate_mqtt_dropped_total{reason="stale"}` and logged as one the person must make again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_decided_behind_a_held_trigger_is_not_counted_stale_when_delivered_again() {
    use crate::readers::{Mosquitto, free_port, mosquitto_or_skip};
    let Some(bin) = mosquitto_or_skip() else {
        return;
    };
    let port = free_port();
    let _broker = Mosquitto::start(&bin, port);
    let (url, calls, hold) = silent_remote().await;
    let mut p = pair_full(
        Some(&url),
        "30s",
        &format!("[mqtt]\nurl = \"mqtt://127.0.0.1:{port}\"\n"),
    )
    .await;
    let mut lobby = reader(&p.g.mqtt_url, "lobby-1", "nobody", 48).await;
    lobby.trigger().await.unwrap();
    until("G called the upstream", || {
        calls.load(std::sync::atomic::Ordering::SeqCst) >= 1
    })
    .await;
    let scan = lobby.next_capture(None);
    let scan_id = scan["capture_id"].as_str().unwrap().to_string();
    lobby.send_capture(scan).await.unwrap();
    let r = result_cmd(&mut lobby).await;
    assert_eq!(r["granted"], false, "{r}");

    // Killed with both acknowledgements outstanding; back, it gets them again.
    p.g.kill9();
    p.g.launch().await;
    let end = Instant::now() + WAIT;
    while !p
        .g
        .stderr_log()
        .contains("the resumed session's backlog is delivered")
    {
        assert!(
            Instant::now() < end,
            "no backlog mark:\n{}",
            p.g.stderr_log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A fresh scan, handled after the backlog (in order): once it is answered, so was the
    // backlog.
    let fresh = lobby.next_capture(None);
    lobby.send_capture(fresh).await.unwrap();
    let r = result_cmd(&mut lobby).await;
    assert_eq!(r["granted"], false, "{r}");
    let stale = metric(&p.g, "palmgate_mqtt_dropped_total{reason=\"stale\"}").await;
    assert_eq!(stale, 0.0, "the decided scan was counted stale");
    let decided = events(&p.g)
        .await
        .into_iter()
        .filter(|e| e["type"] == "DoorDecided" && e["data"]["capture_id"] == scan_id.as_str())
        .count();
    assert_eq!(decided, 1, "the scan is decided once");
    hold.abort();
}

/// A remote that accepts connections and never answers: its URL, how many connections it took,
/// and the task holding them (abort it to let them go).
async fn silent_remote() -> (
    String,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    tokio::task::JoinHandle<()>,
) {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let hold = tokio::spawn({
        let calls = calls.clone();
        async move {
            let mut held = vec![];
            while let Ok((s, _)) = silent.accept().await {
                calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                held.push(s);
            }
        }
    });
    (url, calls, hold)
}

/// G never lost its connection to its (embedded) broker, which drops a client that
/// acknowledges out of order.
async fn connected_throughout(g: &TestServer) {
    let lost = metric(g, "palmgate_mqtt_disconnects_total").await;
    let log = g.stderr_log();
    let cut: Vec<_> = log
        .lines()
        .filter(|l| l.contains("out of order ack") || l.contains("Unsolicited"))
        .collect();
    assert!(
        lost == 0.0 && cut.is_empty(),
        "G lost its broker {lost} time(s):\n{}",
        cut.join("\n")
    );
}

/// `[upstream]` is validated: all empty is off; a base URL needs the key and the secret and
/// must be http(s); errors name the key.
#[test]
fn upstream_config_is_validated() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("p.toml");
    let load = |body: &str| {
        std::fs::write(&f, format!("[upstream]\n{body}")).unwrap();
        Config::load(Some(Path::new(&f)), &[])
    };
    assert!(!Config::defaults().upstream.enabled());
    let ok = load(
        "base_url = \"https://pass.example.com/\"\napi_key = \"k\"\nwebhook_secret = \"whsec_x\"",
    )
    .unwrap();
    assert!(ok.upstream.enabled());
    for (body, key) in [
        (
            "base_url = \"https://pass.example.com\"\nwebhook_secret = \"s\"",
            "upstream.api_key",
        ),
        (
            "base_url = \"https://pass.example.com\"\napi_key = \"k\"",
            "upstream.webhook_secret",
        ),
        (
            "base_url = \"ftp://pass.example.com\"\napi_key = \"k\"\nwebhook_secret = \"s\"",
            "upstream.base_url",
        ),
        (
            "base_url = \"pass.example.com\"\napi_key = \"k\"\nwebhook_secret = \"s\"",
            "upstream.base_url",
        ),
        ("api_key = \"k\"", "upstream.base_url"),
        (
            "base_url = \"http://h\"\napi_key = \"k\"\nwebhook_secret = \"s\"\ntimeout = \"soon\"",
            "upstream.timeout",
        ),
    ] {
        let e = load(body).unwrap_err().to_string();
        assert!(e.contains(key), "{body}: {e}");
    }
    let env = Config::load(
        None,
        &[
            (
                "PALMGATE_UPSTREAM_BASE_URL".into(),
                "http://10.0.0.5:8080".into(),
            ),
            ("PALMGATE_UPSTREAM_API_KEY".into(), "k".into()),
            ("PALMGATE_UPSTREAM_WEBHOOK_SECRET".into(), "s".into()),
        ],
    )
    .unwrap();
    assert_eq!(env.upstream.base_url, "http://10.0.0.5:8080");
}

/// With upstream mode off, the hook does not exist.
#[tokio::test]
async fn the_hook_is_not_found_when_upstream_mode_is_off() {
    let s = TestServer::start().await;
    let resp = s
        .client
        .post(s.url("/hooks/upstream"))
        .header("x-webhook-signature", "sha256=00")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["message"], "not found");
}

/// The core's rules (pure: given events, when a command, then events and effects).
mod rules;

/// An HTTP proxy in front of R whose answers carry a `Date` `ahead_s` seconds ahead of the real
/// one: R as a remote whose clock runs ahead of the gateway's. Its target is set once R exists.
async fn skewed_proxy(ahead_s: i64) -> (String, std::sync::Arc<std::sync::OnceLock<String>>) {
    use axum::body::Bytes;
    use axum::http::{HeaderMap, Method, StatusCode, Uri};
    let target = std::sync::Arc::new(std::sync::OnceLock::<String>::new());
    let to = target.clone();
    let client = reqwest::Client::new();
    let app = axum::Router::new().fallback(
        move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let (to, client) = (to.clone(), client.clone());
            async move {
                let url = format!("{}{}", to.get().expect("proxy target"), uri);
                let mut req = client.request(method, url).body(body);
                for (k, v) in &headers {
                    if k != "host" && k != "content-length" {
                        req = req.header(k, v);
                    }
                }
                let resp = req.send().await.expect("R answers the proxy");
                let status = StatusCode::from_u16(resp.status().as_u16()).unwrap();
                let mut out = HeaderMap::new();
                for (k, v) in resp.headers() {
                    if k != "date" && k != "content-length" && k != "transfer-encoding" {
                        out.insert(k.clone(), v.clone());
                    }
                }
                let date = (chrono::Utc::now() + chrono::Duration::seconds(ahead_s))
                    .format("%a, %d %b %Y %H:%M:%S GMT")
                    .to_string();
                out.insert("date", date.parse().unwrap());
                (status, out, resp.bytes().await.expect("R's body"))
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, target)
}

/// A remote whose clock runs 10 minutes ahead of the gateway's (a gateway box without NTP):
/// its webhooks carry `webhook-timestamp`s 10 minutes in the gateway's future, and are read
/// on the gateway's clock with the skew measured when the session was opened, as the payload's
/// `timestamp` already was. They were refused as stale (401) every time, so the remote
/// disabled the gateway's webhook and no door opened in upstream mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_with_its_clock_ahead_is_heard_on_the_gateways_clock() {
    const AHEAD: i64 = 600;
    let (proxy, target) = skewed_proxy(AHEAD).await;
    let p = pair_with(Some(&proxy), "10s").await;
    target.set(p.r.base_url.clone()).unwrap();
    let mut lobby = reader(&p.g.mqtt_url, "lobby-1", "nobody", 3).await;
    let (_, session) = p.trigger(&mut lobby).await;
    let started = p.g_event("UpstreamIdentifyStarted", |_| true).await;
    let skew = started["data"]["clock_skew_s"]
        .as_i64()
        .expect("clock_skew_s");
    assert!((skew - AHEAD).abs() <= 2, "{started}");

    // The remote's webhook, stamped on its clock: timestamp and `webhook-timestamp`.
    let post = |at: chrono::DateTime<chrono::Utc>| {
        let body = json!({
            "event": "completed",
            "timestamp": at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "data": {"session_id": session, "type": "identify", "external_id": "alice",
                     "metadata": {"access_level": "standard"}, "language": "en"},
        })
        .to_string();
        p.g.client
            .post(format!("http://{}/hooks/upstream", p.g_listen))
            .header("content-type", "application/json")
            .header(
                "x-webhook-signature",
                seed_signature(&p.secret, body.as_bytes()),
            )
            .header("webhook-id", "msg_skewed")
            .header("webhook-timestamp", at.timestamp().to_string())
            .body(body)
            .send()
    };
    // Stamped with the gateway's own time, the webhook is 10 minutes old on the remote's
    // clock: stale.
    let stale = post(chrono::Utc::now()).await.unwrap();
    assert_eq!(stale.status(), 401);
    let now_at_remote = chrono::Utc::now() + chrono::Duration::seconds(AHEAD);
    let fresh = post(now_at_remote).await.unwrap();
    assert_eq!(fresh.status(), 200);
    assert_eq!(
        fresh.json::<Value>().await.unwrap(),
        json!({"status": "accepted"})
    );
    let r = result_cmd(&mut lobby).await;
    assert_eq!(r["granted"], true, "{r}");
    let ended = p
        .g_event("UpstreamSessionEnded", |d| d["session_id"] == session)
        .await;
    assert_ne!(ended["data"]["late"], true, "{ended}");
}

/// A webhook to G as a palmgate-like remote sends it: seed signature plus the Standard
/// Webhooks headers, `webhook-timestamp` = `at` (the remote's clock).
async fn post_stamped(p: &Pair, body: &str, at: chrono::DateTime<chrono::Utc>) -> (u16, Value) {
    let id = "msg_stamped";
    let mut req =
        p.g.client
            .post(format!("http://{}/hooks/upstream", p.g_listen))
            .header("content-type", "application/json")
            .header(
                "x-webhook-signature",
                seed_signature(&p.secret, body.as_bytes()),
            )
            .header("webhook-id", id)
            .header("webhook-timestamp", at.timestamp().to_string());
    if let Some(sig) =
        palmgate::core::webhook::standard_signature(&p.secret, id, at.timestamp(), body.as_bytes())
    {
        req = req.header("webhook-signature", sig);
    }
    let resp = req.body(body.to_string()).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// The remote's clock 10 minutes ahead (a gateway box without NTP): once the session has ended
/// its binding (and the skew measured with it) is gone, yet the remote's retry of the accepted
/// webhook (its 200 lost), its ping and a webhook about another app's session are answered
/// `duplicate` / `ignored`, not refused 401 as stale on the gateway's raw clock (a remote
/// retries a 401 and then disables the gateway's webhook: every upstream door scan stopped).
/// None of them acts: one session end, one decision, one pulse; a replay an hour old neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_remote_clock_ahead_a_retry_after_the_end_and_a_ping_are_answered() {
    const AHEAD: i64 = 600;
    let (proxy, target) = skewed_proxy(AHEAD).await;
    let p = pair_with(Some(&proxy), "10s").await;
    target.set(p.r.base_url.clone()).unwrap();
    let mut lobby = reader(&p.g.mqtt_url, "lobby-1", "nobody", 21).await;
    let since = Instant::now();
    let (_, session) = p.trigger(&mut lobby).await;
    let remote_now = || chrono::Utc::now() + chrono::Duration::seconds(AHEAD);
    let at_remote = |at: chrono::DateTime<chrono::Utc>, event: &str, session: &str| {
        json!({
            "event": event,
            "timestamp": at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "data": {"session_id": session, "type": "identify", "external_id": "alice",
                     "metadata": {"access_level": "standard"}, "language": "en"},
        })
        .to_string()
    };
    let ended_at = remote_now();
    let body = at_remote(ended_at, "completed", &session);
    assert_eq!(
        post_stamped(&p, &body, remote_now()).await,
        (200, json!({"status": "accepted"}))
    );
    let r = result_cmd(&mut lobby).await;
    assert_eq!(r["granted"], true, "{r}");
    until("coil 0 ON", || {
        writes_since(&p.board, 0, since).iter().any(|(_, on)| *on)
    })
    .await;

    // The same delivery retried (the 200 was lost), stamped anew on the remote's clock.
    assert_eq!(
        post_stamped(&p, &body, remote_now()).await,
        (200, json!({"status": "duplicate"})),
        "a retry after the session ended"
    );
    // The remote's test ping and another app's session: signed, about nothing G opened.
    let ping = json!({
        "event": "ping",
        "timestamp": remote_now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "data": {"message": "palmgate webhook test"},
    })
    .to_string();
    assert_eq!(
        post_stamped(&p, &ping, remote_now()).await,
        (200, json!({"status": "ignored"})),
        "a ping"
    );
    let other = at_remote(remote_now(), "completed", "another-apps-session");
    assert_eq!(
        post_stamped(&p, &other, remote_now()).await,
        (200, json!({"status": "ignored"})),
        "another app's session"
    );
    // A replay of the accepted webhook an hour later (its old stamp): harmless, acts on nothing.
    assert_eq!(
        post_stamped(&p, &body, ended_at - chrono::Duration::hours(1)).await,
        (200, json!({"status": "duplicate"})),
        "an old replay"
    );
    // An unreadable `webhook-timestamp` is still refused, bound or not.
    let status =
        p.g.client
            .post(format!("http://{}/hooks/upstream", p.g_listen))
            .header(
                "x-webhook-signature",
                seed_signature(&p.secret, ping.as_bytes()),
            )
            .header("webhook-id", "msg_x")
            .header("webhook-timestamp", "not-a-time")
            .body(ping.clone())
            .send()
            .await
            .unwrap()
            .status();
    assert_eq!(status, 401, "an unreadable webhook-timestamp");

    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(events_of(&p.g, "UpstreamSessionEnded").await.len(), 1);
    assert_eq!(events_of(&p.g, "DoorDecided").await.len(), 1);
    let ons = writes_since(&p.board, 0, since)
        .iter()
        .filter(|(_, on)| *on)
        .count();
    assert_eq!(ons, 1, "one pulse, for the one accepted webhook");
}
/// A trigger message's payload.
fn trigger_msg(id: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"trigger_id": id})).unwrap()
}

/// The reader's next session-less capture, with the capture id `id`.
fn capture_named(reader: &mut SimReader, id: &str) -> Value {
    let mut c = reader.next_capture(None);
    c["capture_id"] = json!(id);
    c
}

/// Trigger ids and capture ids are remembered apart in upstream mode too (as in local mode):
/// a door scan numbered like an earlier trigger is decided, and a trigger numbered like an
/// earlier door scan is sent to the remote. Both were dropped as silent duplicates: the person
/// at the door was told nothing. The upstream decision's `capture_id` is the trigger's key,
/// which no capture of the reader is taken for, and its pulse carries the same tag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_ids_and_capture_ids_do_not_collide_in_upstream_mode() {
    use palmgate::mqtt::protocol::TopicKind;
    let mut p = pair().await;
    p.enroll("alice", "alice", json!({"access_level": "standard"}))
        .await;
    let mut lobby = reader(&p.g.mqtt_url, "lobby-1", "nobody", 31).await;

    // Trigger `id-1`, then a door scan numbered `id-1`: the scan is decided (nobody G knows).
    lobby
        .publish_raw(TopicKind::Trigger, trigger_msg("id-1"))
        .await
        .unwrap();
    let show = command(&mut lobby, "show").await;
    let url = show["url"].as_str().expect("show url").to_string();
    p.g_event("UpstreamIdentifyStarted", |d| d["trigger_id"] == "id-1")
        .await;
    let mut scan = lobby.next_capture(None);
    scan["capture_id"] = json!("id-1");
    lobby.send_capture(scan).await.unwrap();
    let decided = p
        .g_event("DoorDecided", |d| d["capture_id"] == "id-1")
        .await;
    assert_eq!(decided["data"]["verdict"]["reason"], "no_match");
    let r = result_cmd(&mut lobby).await;
    assert_eq!(r["granted"], false, "{r}");

    // A door scan `id-2`, then trigger `id-2`: the trigger goes to the remote, the reader shows
    // its page.
    let mut scan = lobby.next_capture(None);
    scan["capture_id"] = json!("id-2");
    lobby.send_capture(scan).await.unwrap();
    p.g_event("DoorDecided", |d| d["capture_id"] == "id-2")
        .await;
    result_cmd(&mut lobby).await;
    lobby
        .publish_raw(TopicKind::Trigger, trigger_msg("id-2"))
        .await
        .unwrap();
    let show2 = command(&mut lobby, "show").await;
    assert!(show2["url"].as_str().is_some(), "{show2}");
    p.g_event("UpstreamIdentifyStarted", |d| d["trigger_id"] == "id-2")
        .await;

    // The first remote session completes: its decision names the trigger's key, and the
    // pulse is tagged with it (what `audit` matches); a redelivered trigger is still one call.
    let since = Instant::now();
    let mut palm_at_r = reader(&p.r.mqtt_url, "kiosk-r", "alice", 33).await;
    palm_at_r.capture(Some(&token(&url))).await.unwrap();
    let r = result_cmd(&mut lobby).await;
    assert_eq!(r["granted"], true, "{r}");
    let dd = p
        .g_event("DoorDecided", |d| d["verdict"]["verdict"] == "granted")
        .await;
    assert_eq!(dd["data"]["capture_id"], "trigger:id-1");
    let on = p
        .g_event("RelaySwitched", |d| d["on"] == true && d["door"] == "main")
        .await;
    assert_eq!(on["data"]["tag"], "trigger:id-1");
    until("coil 0 ON", || {
        writes_since(&p.board, 0, since).iter().any(|(_, on)| *on)
    })
    .await;
    lobby
        .publish_raw(TopicKind::Trigger, trigger_msg("id-1"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        events_of(&p.g, "UpstreamIdentifyStarted").await.len(),
        2,
        "{}",
        summary(&p.g).await
    );
    assert_eq!(events_of(&p.g, "DoorDecided").await.len(), 3);
    // Its own commands came back to G (`palmgate/readers/#`) while triggers' acknowledgements
    // were held: acknowledged in order all the same.
    connected_throughout(&p.g).await;

    // The audit verifies G's log: the decisions, and the pulse by its tag.
    p.g.kill9();
    let store = palmgate::store::SqliteStore::open(p.g.store_path()).unwrap();
    let report = palmgate::replay::audit::verify(&store).unwrap();
    assert!(report.ok(), "{:?}", report.findings);
    assert_eq!(report.decisions, 3);
}

/// Local site sessions: a door scan whose capture id reads `trigger:X` and a kiosk trigger `X`
/// at the same reader are different inputs, both handled in either order. (The trigger's
/// memory key was the text `trigger:X`, among the capture ids: a scan `trigger:coll1` made
/// trigger `coll1` a silent duplicate, no `show`; trigger `coll2` made a scan `trigger:coll2`
/// one, no decision, no `result`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_sessions_trigger_and_a_scan_named_like_its_tag_are_both_handled() {
    use palmgate::mqtt::protocol::TopicKind;
    let site = crate::doors::start_site("").await;
    site.enroll("alice", "alice", json!({"access_level": "standard"}))
        .await;
    let mut lobby = site.reader("lobby-1", "alice", 51).await;

    // A door scan `trigger:coll1`, then trigger `coll1`: the kiosk page is shown.
    let c = capture_named(&mut lobby, "trigger:coll1");
    lobby.send_capture(c).await.unwrap();
    let r = result_cmd(&mut lobby).await;
    assert_eq!(r["granted"], true, "{r}");
    lobby
        .publish_raw(TopicKind::Trigger, trigger_msg("coll1"))
        .await
        .unwrap();
    let show = command(&mut lobby, "show").await;
    assert!(show["url"].as_str().is_some(), "{show}");

    // Trigger `coll2`, then a door scan `trigger:coll2`: the scan is decided.
    lobby
        .publish_raw(TopicKind::Trigger, trigger_msg("coll2"))
        .await
        .unwrap();
    command(&mut lobby, "show").await;
    let c = capture_named(&mut lobby, "trigger:coll2");
    lobby.send_capture(c.clone()).await.unwrap();
    let r = result_cmd(&mut lobby).await;
    assert_eq!(r["granted"], true, "{r}");

    // Redeliveries are still duplicates: one session per trigger, one decision per scan.
    lobby.send_capture(c).await.unwrap();
    for id in ["coll1", "coll2"] {
        lobby
            .publish_raw(TopicKind::Trigger, trigger_msg(id))
            .await
            .unwrap();
    }
    if let Some(c) = lobby.next_command(Duration::from_millis(600)).await {
        panic!("a redelivery was handled again: {c}");
    }
    let decided = site.events_of("DoorDecided", |_| true).await;
    let ids: Vec<_> = decided.iter().map(|e| &e["data"]["capture_id"]).collect();
    assert_eq!(ids, ["trigger:coll1", "trigger:coll2"], "{decided:?}");
    let triggered = site
        .events_of("SessionCreated", |d| d["trigger_id"].is_string())
        .await;
    let ids: Vec<_> = triggered.iter().map(|e| &e["data"]["trigger_id"]).collect();
    assert_eq!(ids, ["coll1", "coll2"], "{triggered:?}");
}

/// A capture id may read `trigger:X`, which is also the tag of trigger `X`'s door decision:
/// the duplicate memory keeps them apart all the same, in either order, and after trigger
/// `X`'s decision too. (The trigger's memory key was the text `trigger:X`, among the capture
/// ids: a scan `trigger:coll1` made trigger `coll1` a silent duplicate, no remote call, no
/// `show`; trigger `coll2` made a scan `trigger:coll2` one, no decision, no `result`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_named_like_a_triggers_tag_and_that_trigger_are_both_handled() {
    use palmgate::mqtt::protocol::TopicKind;
    let mut p = pair().await;
    p.enroll("alice", "alice", json!({"access_level": "standard"}))
        .await;
    let mut lobby = reader(&p.g.mqtt_url, "lobby-1", "nobody", 41).await;

    // A door scan `trigger:coll1`, then trigger `coll1`: the trigger goes to the remote.
    let c = capture_named(&mut lobby, "trigger:coll1");
    lobby.send_capture(c).await.unwrap();
    let r = result_cmd(&mut lobby).await;
    assert_eq!(r["granted"], false, "{r}");
    lobby
        .publish_raw(TopicKind::Trigger, trigger_msg("coll1"))
        .await
        .unwrap();
    let show = command(&mut lobby, "show").await;
    assert!(show["url"].as_str().is_some(), "{show}");
    p.g_event("UpstreamIdentifyStarted", |d| d["trigger_id"] == "coll1")
        .await;

    // Trigger `coll2`, then a door scan `trigger:coll2`: the scan is decided.
    lobby
        .publish_raw(TopicKind::Trigger, trigger_msg("coll2"))
        .await
        .unwrap();
    command(&mut lobby, "show").await;
    p.g_event("UpstreamIdentifyStarted", |d| d["trigger_id"] == "coll2")
        .await;
    let c = capture_named(&mut lobby, "trigger:coll2");
    lobby.send_capture(c).await.unwrap();
    let r = result_cmd(&mut lobby).await;
    assert_eq!(r["granted"], false, "{r}");
    let dd = p
        .g_event("DoorDecided", |d| d["capture_id"] == "trigger:coll2")
        .await;
    assert!(dd["data"]["judged"].is_object(), "{dd}");

    // Trigger `coll3` opens the door (its decision is tagged `trigger:coll3`); a door scan
    // `trigger:coll3` afterwards is still a scan of its own, decided.
    lobby
        .publish_raw(TopicKind::Trigger, trigger_msg("coll3"))
        .await
        .unwrap();
    let show = command(&mut lobby, "show").await;
    let url = show["url"].as_str().expect("show url").to_string();
    let mut palm_at_r = reader(&p.r.mqtt_url, "kiosk-r", "alice", 43).await;
    palm_at_r.capture(Some(&token(&url))).await.unwrap();
    let r = result_cmd(&mut lobby).await;
    assert_eq!(r["granted"], true, "{r}");
    p.g_event("DoorDecided", |d| {
        d["capture_id"] == "trigger:coll3" && d["verdict"]["verdict"] == "granted"
    })
    .await;
    let c = capture_named(&mut lobby, "trigger:coll3");
    lobby.send_capture(c.clone()).await.unwrap();
    let r = result_cmd(&mut lobby).await;
    assert_eq!(r["granted"], false, "{r}");

    // Redeliveries are still duplicates: the scan and the trigger `coll3` once each.
    lobby.send_capture(c).await.unwrap();
    lobby
        .publish_raw(TopicKind::Trigger, trigger_msg("coll3"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        events_of(&p.g, "UpstreamIdentifyStarted").await.len(),
        3,
        "{}",
        summary(&p.g).await
    );
    assert_eq!(
        events_of(&p.g, "DoorDecided").await.len(),
        4,
        "{}",
        summary(&p.g).await
    );
    connected_throughout(&p.g).await;

    p.g.kill9();
    let store = palmgate::store::SqliteStore::open(p.g.store_path()).unwrap();
    let report = palmgate::replay::audit::verify(&store).unwrap();
    assert!(report.ok(), "{:?}", report.findings);
    assert_eq!(report.decisions, 4);
}

// ---------------------------------------------------------------------------------------------
// What the reader is told, and when it is told nothing (reader feedback)
// ---------------------------------------------------------------------------------------------

/// A signed SPEC 4 webhook body about `session`: `event` (`expired`, `failed`, `completed`)
/// stamped `at` (the remote's `timestamp`).
fn ending_body(event: &str, session: &str, at: chrono::DateTime<chrono::Utc>) -> String {
    let mut data = json!({"session_id": session, "type": "identify", "language": "en"});
    match event {
        "completed" => {
            data["external_id"] = json!("alice");
            data["metadata"] = json!({"access_level": "standard"});
        }
        "failed" => data["fail_reason"] = json!("cancelled"),
        _ => {}
    }
    json!({
        "event": event,
        "timestamp": at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "data": data,
    })
    .to_string()
}

/// Every command the reader receives within `wait`.
async fn commands_within(r: &mut SimReader, wait: Duration) -> Vec<Value> {
    let end = Instant::now() + wait;
    let mut out = vec![];
    while let Some(c) = r
        .next_command(end.saturating_duration_since(Instant::now()))
        .await
    {
        out.push(c);
    }
    out
}

/// G's `/metrics` value of `name` (the whole line's name, labels included); 0 when absent.
pub(crate) async fn metric(s: &TestServer, name: &str) -> f64 {
    let text = s
        .client
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A trigger `id` at `r` answered with a `show`: the remote session G bound for it.
async fn bound_for(p: &Pair, r: &mut SimReader, id: &str) -> String {
    use palmgate::mqtt::protocol::TopicKind;
    r.publish_raw(
        TopicKind::Trigger,
        serde_json::to_vec(&json!({"trigger_id": id})).unwrap(),
    )
    .await
    .unwrap();
    command(r, "show").await;
    let started = p
        .g_event("UpstreamIdentifyStarted", |d| d["trigger_id"] == id)
        .await;
    started["data"]["session_id"].as_str().unwrap().to_string()
}

/// The reviewer's sequence: trigger `exp-a` at lobby-1 binds S1, trigger `exp-b` binds S2 and
/// the reader shows S2's page. S1's `expired` webhook then told the reader "Access denied"
/// (`session_expired`) while the person worked through S2; a completed webhook 50 minutes late
/// told it `too_late`. Both are recorded and tell the reader nothing now; the newest session's
/// timely ending still does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_ending_tells_a_reader_that_moved_on_nothing() {
    let p = pair().await;
    let mut lobby = reader(&p.g.mqtt_url, "lobby-1", "nobody", 41).await;
    let s1 = bound_for(&p, &mut lobby, "exp-a").await;
    let s2 = bound_for(&p, &mut lobby, "exp-b").await;
    assert_ne!(s1, s2);

    // S1 expires at the remote: recorded, the reader (on S2's page) is told nothing.
    let now = chrono::Utc::now();
    assert_eq!(
        p.post_hook(&p.secret, &ending_body("expired", &s1, now))
            .await,
        (200, json!({"status": "accepted"}))
    );
    p.g_event("UpstreamSessionEnded", |d| d["session_id"] == s1)
        .await;
    let told = commands_within(&mut lobby, Duration::from_millis(800)).await;
    assert!(told.is_empty(), "S1's expiry reached the reader: {told:?}");

    // S2 completes, but its webhook comes 50 minutes late: recorded late, nobody told.
    let then = now - chrono::Duration::minutes(50);
    assert_eq!(
        p.post_hook(&p.secret, &ending_body("completed", &s2, then))
            .await,
        (200, json!({"status": "accepted"}))
    );
    let ended = p
        .g_event("UpstreamSessionEnded", |d| d["session_id"] == s2)
        .await;
    assert_eq!(ended["data"]["late"], true, "{ended}");
    let told = commands_within(&mut lobby, Duration::from_millis(800)).await;
    assert!(
        told.is_empty(),
        "a 50-minute-late webhook reached the reader: {told:?}"
    );

    // The reader's newest session ending on time is still news there.
    let s3 = bound_for(&p, &mut lobby, "exp-c").await;
    assert_eq!(
        p.post_hook(&p.secret, &ending_body("expired", &s3, chrono::Utc::now()))
            .await,
        (200, json!({"status": "accepted"}))
    );
    let r = result_cmd(&mut lobby).await;
    assert_eq!(
        (&r["reason"], &r["granted"], &r["door"]),
        (&json!("session_expired"), &json!(false), &json!("main")),
        "{r}"
    );
    assert!(events_of(&p.g, "DoorDecided").await.is_empty());

    let mut g = p.g;
    g.kill9();
    let store = palmgate::store::SqliteStore::open(g.store_path()).unwrap();
    let report = palmgate::replay::audit::verify(&store).unwrap();
    assert!(report.ok(), "{:?}", report.findings);
}

/// A stand-in remote whose `POST /v1/identify` answers 201 with a new session that expires at
/// `expires_in` from now (on its clock, which is ours) and which never sends a webhook (as if
/// the remote had disabled the gateway's webhook).
async fn webhookless_remote(expires_in: chrono::Duration) -> String {
    let n = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let app = axum::Router::new().route(
        "/v1/identify",
        axum::routing::post(move || {
            let n = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            async move {
                let expires_at = (chrono::Utc::now() + expires_in)
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                (
                    axum::http::StatusCode::CREATED,
                    axum::Json(json!({
                        "session_id": format!("quiet-{n}"),
                        "url": format!("https://pass.example.com/identify/tok-{n}"),
                        "expires_at": expires_at,
                    })),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// The remote never sends the webhook: the binding passed its expiry and was let go of a
/// retention later with no event, log line or metric, and the reader kept a dead page. Now,
/// once the remote has had `LATE_AFTER` past the expiry to speak, the gateway warns once,
/// counts it in `palmgate_upstream_open_past_expiry` and tells the reader `session_expired`;
/// a webhook that finally comes is recorded, tells the reader nothing more, and the gauge
/// drops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_the_remote_never_ends_is_reported_and_the_reader_told() {
    use palmgate::core::upstream::LATE_AFTER;
    // The remote's session expires 2 s before the gateway stops waiting for its webhook
    // (`LATE_AFTER` after the expiry), so the test does not wait a minute.
    let expires_in = chrono::Duration::seconds(2) - LATE_AFTER;
    let url = webhookless_remote(expires_in).await;
    let p = pair_with(Some(&url), "10s").await;
    let mut lobby = reader(&p.g.mqtt_url, "lobby-1", "nobody", 43).await;
    let s = bound_for(&p, &mut lobby, "quiet-trigger").await;
    let expired_at = chrono::Utc::now() + expires_in;

    let r = result_cmd(&mut lobby).await;
    assert_eq!(
        (&r["reason"], &r["granted"], &r["door"]),
        (&json!("session_expired"), &json!(false), &json!("main")),
        "{r}"
    );
    assert_eq!(
        metric(&p.g, "palmgate_upstream_open_past_expiry").await,
        1.0
    );
    let warning = format!("upstream session {s} at reader lobby-1 passed its expiry");
    until("the warning in G's log", || {
        p.g.stderr_log().matches(&warning).count() == 1
    })
    .await;
    let log = p.g.stderr_log();
    assert!(log.contains("/hooks/upstream"), "{log}");
    // Once: the watch keeps looking, the warning and the reader's result are not repeated.
    let told = commands_within(&mut lobby, Duration::from_secs(3)).await;
    assert!(told.is_empty(), "told again: {told:?}");
    assert_eq!(p.g.stderr_log().matches(&warning).count(), 1);

    // The remote's `expired` webhook, late after all: recorded, no second result, gauge 0.
    assert_eq!(
        p.post_hook(&p.secret, &ending_body("expired", &s, expired_at))
            .await,
        (200, json!({"status": "accepted"}))
    );
    p.g_event("UpstreamSessionEnded", |d| d["session_id"] == s)
        .await;
    let told = commands_within(&mut lobby, Duration::from_secs(3)).await;
    assert!(told.is_empty(), "told again: {told:?}");
    assert_eq!(
        metric(&p.g, "palmgate_upstream_open_past_expiry").await,
        0.0
    );
}

/// A full queue of identify calls (16 in flight to a remote that hangs, 256 waiting; one
/// reader's hand sensor firing repeatedly is enough): the trigger was dropped with a log line
/// and a metric, and the person at the reader was told nothing. Now the reader gets the result
/// a failed call gets, at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_dropped_on_a_full_queue_tells_the_reader() {
    use palmgate::mqtt::protocol::TopicKind;
    // A listener that accepts and never answers: every call holds its slot for the timeout.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let hold = tokio::spawn(async move {
        let mut held = vec![];
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let p = pair_with(Some(&url), "120s").await;
    let mut lobby = reader(&p.g.mqtt_url, "lobby-1", "nobody", 45).await;
    // 16 in flight, one taken by the worker waiting for a slot, 256 queued: the next is dropped.
    let n = palmgate::app::upstream::IN_FLIGHT + 1 + 256 + 8;
    for i in 0..n {
        lobby
            .publish_raw(
                TopicKind::Trigger,
                serde_json::to_vec(&json!({"trigger_id": format!("hand-{i}")})).unwrap(),
            )
            .await
            .unwrap();
    }
    let r = result_cmd(&mut lobby).await;
    assert_eq!(
        (&r["reason"], &r["granted"], &r["door"]),
        (
            &json!("upstream_unavailable"),
            &json!(false),
            &json!("main")
        ),
        "{r}"
    );
    assert!(
        r["message"].as_str().unwrap().contains("unavailable"),
        "{r}"
    );
    // Told by the drop, not by a failed call (those wait for the 120 s timeout).
    assert!(events_of(&p.g, "UpstreamIdentifyFailed").await.is_empty());
    assert!(
        metric(
            &p.g,
            "palmgate_upstream_identify_total{outcome=\"dropped\"}"
        )
        .await
            >= 1.0
    );
    hold.abort();
}
