//! The scan-to-unlock path end to end: a simulated reader over the embedded broker, the real
//! server in-process, and a simulated Modbus relay board as the peer.

use palmgate::core::ReaderId;
use palmgate::modbus::sim::SimBoard;
use palmgate::mqtt::simulate::{SimOptions, SimReader};
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;
use tokio::time::Instant;

pub struct Site {
    pub base: String,
    pub mqtt: String,
    pub board: SimBoard,
    pub http: reqwest::Client,
    pub key: String,
    _dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

pub const ADMIN: &str = "Bearer site-admin";

pub fn site_toml(board: &SimBoard, extra: &str) -> String {
    format!(
        r#"timezone = "Asia/Almaty"
partners = ["*"]

[[relay_devices]]
id = "board-1"
modbus = "{}"
unit = 1

[[doors]]
id = "main"
readers = ["lobby-1"]
relay = {{ device = "board-1", coil = 0, pulse_ms = 400 }}
contact = {{ device = "board-1", input = 0, held_open_after_s = 2 }}

[schedules]
always = ["* * * * * *"]

[[levels]]
name = "standard"
doors = ["main"]
schedule = "always"
{extra}"#,
        board.url()
    )
}

pub async fn start_site(extra_site: &str) -> Site {
    let dir = tempfile::tempdir().unwrap();
    let board = SimBoard::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let site = dir.path().join("site.toml");
    std::fs::write(&site, site_toml(&board, extra_site)).unwrap();
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
"#,
            site.display()
        ),
    )
    .unwrap();
    let config = palmgate::config::Config::load(Some(Path::new(&cfg)), &[]).unwrap();
    let server = palmgate::app::start(config).await.unwrap();
    let base = format!("http://{}", server.addr);
    let mqtt = server.mqtt.clone();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.serve(async {
        let _ = rx.await;
    }));
    let http = reqwest::Client::new();
    let p: Value = http
        .post(format!("{base}/admin/v1/partners"))
        .header("authorization", ADMIN)
        .json(&json!({"name": "Acme"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    Site {
        base,
        mqtt,
        board,
        http,
        key: p["api_key"].as_str().unwrap().to_string(),
        _dir: dir,
        _stop: stop,
    }
}

impl Site {
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

    /// Enrolls `palm` as `external_id` with `metadata` through a desk reader.
    pub async fn enroll(&self, external_id: &str, palm: &str, metadata: Value) {
        let r: Value = self
            .http
            .post(format!("{}/v1/enroll", self.base))
            .header("x-api-key", &self.key)
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
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let s: Value = self
                .http
                .get(format!("{}/v1/sessions/{id}", self.base))
                .header("x-api-key", &self.key)
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
}

pub async fn result_cmd(r: &mut SimReader) -> Value {
    let end = Instant::now() + Duration::from_secs(10);
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
    let end = Instant::now() + Duration::from_secs(5);
    while !site.board.coil(0) {
        assert!(Instant::now() < end, "coil never turned on");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(sent.elapsed() < Duration::from_millis(2000));
    let end = Instant::now() + Duration::from_secs(5);
    while site.board.coil(0) {
        assert!(Instant::now() < end, "coil never turned off");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let mut lobby_bob = site.reader("lobby-1", "bob", 2).await;
    lobby_bob.capture(None).await.unwrap();
    let r = result_cmd(&mut lobby_bob).await;
    assert_eq!(r["granted"], false);
    assert_eq!(r["reason"], "no_access_level");

    let doors = site.admin_get("/admin/v1/doors").await;
    assert_eq!(doors[0]["id"], "main");
    assert_eq!(doors[0]["last_decision"]["reason"], "no_access_level");
}
