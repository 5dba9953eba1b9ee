//! The test server: the real `palmgate` binary on port 0 over a temporary directory (config,
//! SQLite log, master key, stderr log), driven over real HTTP.
//!
//! Every test makes its own [`TestServer`], so tests run in parallel without sharing a port,
//! a file or a rate-limit bucket. The child process is killed when the server is dropped.

#![allow(dead_code)]

use palmgate::app::clock::{OsRng, Rng};
use palmgate::app::secrets::{Keys, hash_secret, new_api_key};
use palmgate::core::event::stream;
use palmgate::core::{Event, Expected, ExternalId, PartnerId, SessionId, StreamAppend};
use palmgate::store::{EventStore, SqliteStore};
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tempfile::TempDir;

pub const ADMIN_TOKEN: &str = "test-admin-token";

/// How long the server may take to print its listening line.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Per-test knobs of the generated config.
#[derive(Clone, Debug)]
pub struct Options {
    pub ttl: String,
    /// `sessions.retention`.
    pub session_retention: String,
    pub per_minute: u32,
    pub unauthenticated_per_minute: u32,
    /// `http.public_url`; empty: `http://<bound address>`.
    pub public_url: String,
    /// Extra TOML, added verbatim to the generated config (before its sections, so it may set
    /// root keys such as `site` as well as whole tables the fixture does not write, e.g.
    /// `[webhooks]`, `[matching]`, `[log]`, `[mqtt]`). TOML forbids a table twice: the
    /// fixture's own keys are set through the other fields.
    pub extra_toml: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            ttl: "15m".into(),
            session_retention: "24h".into(),
            per_minute: 100,
            unauthenticated_per_minute: 100,
            public_url: String::new(),
            extra_toml: String::new(),
        }
    }
}

impl Options {
    pub fn ttl(mut self, ttl: &str) -> Self {
        self.ttl = ttl.into();
        self
    }
    pub fn session_retention(mut self, retention: &str) -> Self {
        self.session_retention = retention.into();
        self
    }
    pub fn per_minute(mut self, n: u32) -> Self {
        self.per_minute = n;
        self
    }
    pub fn unauthenticated_per_minute(mut self, n: u32) -> Self {
        self.unauthenticated_per_minute = n;
        self
    }
    pub fn public_url(mut self, url: &str) -> Self {
        self.public_url = url.into();
        self
    }
    pub fn extra_toml(mut self, toml: &str) -> Self {
        self.extra_toml.push('\n');
        self.extra_toml.push_str(toml);
        self
    }
}

/// Quotes a path as a TOML basic string.
fn toml_str(p: &Path) -> String {
    let s = p.display().to_string();
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

pub struct TestServer {
    dir: TempDir,
    config_path: PathBuf,
    stderr_path: PathBuf,
    child: Option<Child>,
    /// `http://ADDR` of the running server (changes on every start).
    pub base_url: String,
    /// The public URL the server announced (base of hosted-page links).
    pub public_url: String,
    /// Where readers connect (`mqtt://ADDR` of the embedded broker), as announced.
    pub mqtt_url: String,
    pub client: reqwest::Client,
    starts: u32,
}

impl TestServer {
    /// A server with the default options, started.
    pub async fn start() -> TestServer {
        Self::start_with(Options::default()).await
    }

    /// A server with `opts`, started.
    pub async fn start_with(opts: Options) -> TestServer {
        let mut s = Self::prepare(opts);
        s.launch().await;
        s
    }

    /// Writes the tempdir and config but does not start the process (so a test can seed the
    /// store first); call [`TestServer::launch`] next.
    pub fn prepare(opts: Options) -> TestServer {
        let dir = tempfile::Builder::new()
            .prefix("palmgate-it-")
            .tempdir()
            .expect("tempdir");
        let config_path = dir.path().join("palmgate.toml");
        let store_path = dir.path().join("events.db");
        let key_path = dir.path().join("master.key");
        let key_store_path = dir.path().join("keys.db");
        let config = format!(
            r#"{extra}

[http]
listen = "127.0.0.1:0"
public_url = "{public_url}"

[store]
path = {store}

[secrets]
key_file = {key}
key_store = {key_store}

[admin]
token = "{ADMIN_TOKEN}"

[sessions]
ttl = "{ttl}"
retention = "{retention}"

[rate_limit]
per_minute = {pm}
unauthenticated_per_minute = {upm}

# Never collide with another test (or a real broker) on the default MQTT port.
[mqtt.embedded]
listen = "127.0.0.1:0"
"#,
            store = toml_str(&store_path),
            key = toml_str(&key_path),
            key_store = toml_str(&key_store_path),
            ttl = opts.ttl,
            retention = opts.session_retention,
            public_url = opts.public_url,
            pm = opts.per_minute,
            upm = opts.unauthenticated_per_minute,
            extra = opts.extra_toml,
        );
        std::fs::write(&config_path, config).expect("write config");
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("http client");
        TestServer {
            stderr_path: dir.path().join("stderr.log"),
            dir,
            config_path,
            child: None,
            base_url: String::new(),
            public_url: String::new(),
            mqtt_url: String::new(),
            client,
            starts: 0,
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn store_path(&self) -> PathBuf {
        self.dir.path().join("events.db")
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Everything the server(s) wrote to stderr so far.
    pub fn stderr_log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Starts the binary on the config and waits for its listening line.
    pub async fn launch(&mut self) {
        self.launch_env(&[]).await
    }

    /// As [`TestServer::launch`], with extra environment variables for the process (e.g.
    /// `RUST_LOG`); they are applied last.
    pub async fn launch_env(&mut self, env: &[(&str, &str)]) {
        assert!(self.child.is_none(), "server already running");
        self.starts += 1;
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr_path)
            .expect("stderr log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_palmgate"));
        cmd.arg("serve")
            .arg("--config")
            .arg(&self.config_path)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr));
        // The config file is the whole truth: no PALMGATE_* from the environment.
        for (k, _) in std::env::vars() {
            if k.starts_with("PALMGATE_") {
                cmd.env_remove(k);
            }
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn palmgate");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = tokio::sync::oneshot::channel::<(String, String, String)>();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let mut mqtt = String::new();
            // Keep draining after the line so the server never blocks on a full pipe.
            while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                if let Some(url) = line.trim_end().strip_prefix("palmgate readers connect to ") {
                    mqtt = url.to_string();
                }
                if let Some((base, public)) = parse_listening(line.trim_end())
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send((base, public, mqtt.clone()));
                }
                line.clear();
            }
        });
        self.child = Some(child);
        match tokio::time::timeout(START_TIMEOUT, rx).await {
            Ok(Ok((base, public, mqtt))) => {
                self.base_url = base;
                self.public_url = public;
                self.mqtt_url = mqtt;
            }
            Ok(Err(_)) => {
                let status = self.child.as_mut().and_then(|c| c.wait().ok());
                self.child = None;
                panic!(
                    "palmgate exited ({status:?}) before printing its listening line; stderr:\n{}",
                    self.stderr_log()
                );
            }
            Err(_) => {
                self.kill9();
                panic!(
                    "palmgate did not print its listening line within {START_TIMEOUT:?}; stderr:\n{}",
                    self.stderr_log()
                );
            }
        }
    }

    /// Sends `signal` to the running server (SIGHUP: `systemctl reload`).
    pub fn signal(&self, signal: i32) {
        let c = self.child.as_ref().expect("server running");
        // SAFETY: kill(2) only reads its integer arguments; the pid is our own child's.
        unsafe {
            libc::kill(c.id() as i32, signal);
        }
    }

    /// SIGTERM, as systemd stops the service: waits up to 15 s for the process to exit and
    /// returns its exit status (SIGKILL after that).
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        // SAFETY: kill(2) only reads its integer arguments; the pid is our own child's.
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let end = std::time::Instant::now() + Duration::from_secs(15);
        while std::time::Instant::now() < end {
            if let Ok(Some(status)) = c.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        None
    }

    /// SIGKILL (std's `Child::kill` on unix): no shutdown code runs.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same directory and config (the port changes).
    pub async fn restart(&mut self) {
        self.kill9();
        self.launch().await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }

    /// Creates a partner through the admin API: `(id, api_key)`.
    pub async fn create_partner(&self, name: &str) -> (String, String) {
        let r = self
            .client
            .post(self.url("/admin/v1/partners"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({ "name": name }))
            .send()
            .await
            .expect("create partner");
        let status = r.status().as_u16();
        let body: Value = r.json().await.expect("partner JSON");
        assert_eq!(status, 201, "create partner: {body}");
        let id = body["id"].as_str().expect("partner id").to_string();
        let key = body["api_key"].as_str().expect("api_key").to_string();
        (id, key)
    }

    async fn set_active(&self, id: &str, active: bool) {
        let verb = if active { "activate" } else { "deactivate" };
        let r = self
            .client
            .post(self.url(&format!("/admin/v1/partners/{id}/{verb}")))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("admin call");
        let status = r.status().as_u16();
        let body: Value = r.json().await.expect("partner JSON");
        assert_eq!(status, 200, "{verb}: {body}");
        assert_eq!(body["active"], json!(active), "{verb}: {body}");
    }

    pub async fn deactivate(&self, id: &str) {
        self.set_active(id, false).await
    }

    pub async fn activate(&self, id: &str) {
        self.set_active(id, true).await
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.get(self.url(path))
    }

    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.post(self.url(path))
    }

    /// `GET path` with the admin token: the JSON answer (a 200 is asserted).
    pub async fn admin_json(&self, path: &str) -> serde_json::Value {
        let r = self
            .get(path)
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "GET {path}");
        r.json().await.unwrap()
    }

    /// `POST /v1/enroll{query}` with a JSON body.
    pub async fn enroll(&self, key: &str, query: &str, body: &Value) -> Answer {
        let r = self
            .client
            .post(self.url(&format!("/v1/enroll{query}")))
            .header("x-api-key", key)
            .json(body)
            .send()
            .await
            .expect("enroll request");
        Answer::read(r).await
    }

    /// `POST /v1/identify{query}` without a body.
    pub async fn identify(&self, key: &str, query: &str) -> Answer {
        let r = self
            .client
            .post(self.url(&format!("/v1/identify{query}")))
            .header("x-api-key", key)
            .send()
            .await
            .expect("identify request");
        Answer::read(r).await
    }

    /// `GET /v1/sessions/{id}`.
    pub async fn session(&self, key: &str, id: &str) -> Answer {
        let r = self
            .client
            .get(self.url(&format!("/v1/sessions/{id}")))
            .header("x-api-key", key)
            .send()
            .await
            .expect("session request");
        Answer::read(r).await
    }

    /// `POST /v1/sessions/{id}/cancel`.
    pub async fn cancel(&self, key: &str, id: &str) -> Answer {
        let r = self
            .client
            .post(self.url(&format!("/v1/sessions/{id}/cancel")))
            .header("x-api-key", key)
            .send()
            .await
            .expect("cancel request");
        Answer::read(r).await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill9();
        // A failing test shows what the server said (the harness prints captured output).
        if std::thread::panicking() {
            let log = self.stderr_log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(200)..];
            eprintln!(
                "---- palmgate stderr ({} lines, last {}) ----\n{}",
                lines.len(),
                tail.len(),
                tail.join("\n")
            );
        }
    }
}

/// `palmgate listening on http://ADDR (public URL URL)` → `(http://ADDR, URL)`.
fn parse_listening(line: &str) -> Option<(String, String)> {
    let rest = line.strip_prefix("palmgate listening on ")?;
    let (base, rest) = rest.split_once(" (public URL ")?;
    let public = rest.strip_suffix(')')?;
    (base.starts_with("http://") || base.starts_with("https://"))
        .then(|| (base.to_string(), public.to_string()))
}

/// A whole HTTP answer: status, headers, body text.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub text: String,
}

/// Sends `rb` and reads the whole answer.
pub async fn send(rb: reqwest::RequestBuilder) -> Answer {
    Answer::read(rb.send().await.expect("request failed")).await
}

impl Answer {
    pub async fn read(r: reqwest::Response) -> Answer {
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.expect("response body");
        Answer {
            status,
            headers,
            text,
        }
    }

    /// The body as JSON (panics with the text when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}), status {}: {}", self.status, self.text))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn content_type(&self) -> &str {
        self.header("content-type").unwrap_or("")
    }

    /// Asserts `status`, a JSON content type and exactly `{"message": message}`.
    #[track_caller]
    pub fn assert_error(&self, status: u16, message: &str) {
        assert_eq!(self.status, status, "body: {}", self.text);
        assert!(
            self.content_type().starts_with("application/json"),
            "Content-Type {:?} for {status}: {}",
            self.content_type(),
            self.text
        );
        assert_eq!(
            self.json(),
            json!({ "message": message }),
            "error body for {status}"
        );
    }

    /// Like [`Answer::assert_error`] when only the message's beginning is fixed.
    #[track_caller]
    pub fn assert_error_prefix(&self, status: u16, prefix: &str) {
        assert_eq!(self.status, status, "body: {}", self.text);
        assert!(
            self.content_type().starts_with("application/json"),
            "Content-Type {:?} for {status}: {}",
            self.content_type(),
            self.text
        );
        let v = self.json();
        let obj = v.as_object().expect("error body is an object");
        assert_eq!(obj.len(), 1, "error body has only `message`: {v}");
        let m = obj["message"].as_str().expect("message is a string");
        assert!(
            m.starts_with(prefix),
            "message {m:?} should start {prefix:?}"
        );
    }

    /// Asserts the three `X-RateLimit-*` headers (SPEC 2): integers, `remaining <= limit`, and
    /// `reset` a Unix time after the request was sent (`sent_ms`) and at most a minute (plus
    /// rounding) from now.
    #[track_caller]
    pub fn assert_rate_headers(&self, sent_ms: i64) -> RateHeaders {
        let num = |name: &str| -> i64 {
            let v = self.header(name).unwrap_or_else(|| {
                panic!(
                    "{name} missing on a {} answer: {:?} {}",
                    self.status, self.headers, self.text
                )
            });
            v.trim()
                .parse()
                .unwrap_or_else(|_| panic!("{name} is not an integer: {v:?}"))
        };
        let limit = num("x-ratelimit-limit");
        let remaining = num("x-ratelimit-remaining");
        let reset = num("x-ratelimit-reset");
        assert!(limit >= 1, "limit {limit}");
        assert!(
            (0..=limit).contains(&remaining),
            "remaining {remaining} of {limit}"
        );
        let now = unix_now_ms();
        assert!(
            reset * 1000 > sent_ms,
            "X-RateLimit-Reset {reset} is not in the future (request sent at {sent_ms} ms)"
        );
        assert!(
            reset * 1000 <= now + 61_000,
            "X-RateLimit-Reset {reset} is more than 60 s away (now {now} ms)"
        );
        RateHeaders {
            limit,
            remaining,
            reset,
        }
    }

    /// `Retry-After` in whole seconds (panics when absent).
    #[track_caller]
    pub fn retry_after(&self) -> i64 {
        let v = self
            .header("retry-after")
            .unwrap_or_else(|| panic!("Retry-After missing on {}: {}", self.status, self.text));
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("Retry-After is not whole seconds: {v:?}"))
    }

    /// The 201 of enroll/identify: `(url, session_id, expires_at)`.
    #[track_caller]
    pub fn created(&self) -> Created {
        assert_eq!(self.status, 201, "expected 201, body: {}", self.text);
        let v = self.json();
        Created {
            url: v["url"].as_str().expect("url").to_string(),
            session_id: v["session_id"].as_str().expect("session_id").to_string(),
            expires_at: v["expires_at"].as_str().expect("expires_at").to_string(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateHeaders {
    pub limit: i64,
    pub remaining: i64,
    pub reset: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Created {
    pub url: String,
    pub session_id: String,
    pub expires_at: String,
}

impl Created {
    /// The last path segment of the hosted-page URL.
    pub fn token(&self) -> String {
        self.url.rsplit('/').next().expect("token").to_string()
    }
    /// The page's path on the server: `/enroll/<token>` or `/identify/<token>`.
    pub fn path(&self) -> String {
        let after_scheme = self.url.split_once("://").expect("absolute url").1;
        let slash = after_scheme.find('/').expect("url has a path");
        after_scheme[slash..].to_string()
    }
}

/// A partner written straight into the log before the server starts.
#[derive(Clone, Debug)]
pub struct SeededPartner {
    pub id: String,
    pub api_key: String,
    pub users: Vec<SeededUser>,
}

/// A user whose enrollment session completed (seeded).
#[derive(Clone, Debug)]
pub struct SeededUser {
    pub external_id: String,
    /// The completed enroll session.
    pub session_id: String,
    /// Its hosted-page path, `/enroll/<token>`.
    pub path: String,
    pub language: String,
}

impl TestServer {
    /// Before [`TestServer::launch`]: appends `PartnerCreated` and, for each external id, a
    /// completed enrollment (`SessionCreated` enroll → `SessionCompleted` + `UserEnrolled`) to
    /// the log, the way a reader would have finished it. Languages cycle en, kk, ru. The
    /// master key file is created here, so the seeded sessions' link tokens are the server's.
    pub async fn seed_partner(&self, name: &str, users: &[&str]) -> SeededPartner {
        assert!(self.child.is_none(), "seed before launch");
        let rng = OsRng;
        let keys = Keys::load_or_create(&self.dir.path().join("master.key"), None, rng.bytes32())
            .expect("master key");
        let partner_id = PartnerId::from_random(rng.bytes16());
        let api_key = new_api_key(rng.bytes32());
        let now = chrono::Utc::now();
        let created = now - chrono::Duration::minutes(1);
        // Events are built from their JSON shape (optional fields default), so seeding keeps
        // working as events grow new optional fields.
        let event = |kind: &str, data: Value| {
            Event::decode(kind, 1, data).unwrap_or_else(|e| panic!("seed event {kind}: {e}"))
        };
        let mut batch = vec![StreamAppend {
            stream: stream::partner(partner_id),
            expected: Expected::NoStream,
            events: vec![event(
                "PartnerCreated",
                json!({
                    "partner_id": partner_id,
                    "name": name,
                    "api_key_hash": hash_secret(&api_key),
                    "at": created,
                }),
            )],
        }];
        let mut seeded = Vec::new();
        for (i, ext) in users.iter().enumerate() {
            let language = ["en", "kk", "ru"][i % 3];
            let session_id = SessionId::from_random(rng.bytes16());
            let token = keys.session_token(session_id);
            batch.push(StreamAppend {
                stream: stream::session(session_id),
                expected: Expected::NoStream,
                events: vec![
                    event(
                        "SessionCreated",
                        json!({
                            "session_id": session_id,
                            "partner_id": partner_id,
                            "kind": "enroll",
                            "language": language,
                            "token_hash": hash_secret(&token),
                            "external_id": ext,
                            "username": format!("User {ext}"),
                            "metadata": { "access_level": "standard" },
                            "created_at": created,
                            "expires_at": created + chrono::Duration::minutes(15),
                        }),
                    ),
                    event(
                        "SessionCompleted",
                        json!({ "session_id": session_id, "external_id": ext, "at": now }),
                    ),
                ],
            });
            let external_id = ExternalId(ext.to_string());
            batch.push(StreamAppend {
                stream: stream::user(partner_id, &external_id),
                expected: Expected::NoStream,
                events: vec![event(
                    "UserEnrolled",
                    json!({
                        "partner_id": partner_id,
                        "external_id": ext,
                        "username": format!("User {ext}"),
                        "metadata": { "access_level": "standard" },
                        "session_id": session_id,
                        "at": now,
                    }),
                )],
            });
            seeded.push(SeededUser {
                external_id: ext.to_string(),
                session_id: session_id.to_string(),
                path: format!("/enroll/{token}"),
                language: language.to_string(),
            });
        }
        let store = SqliteStore::open(self.store_path()).expect("open store");
        store.append(batch, now).await.expect("seed append");
        drop(store); // closes the log: the server opens it next
        SeededPartner {
            id: partner_id.to_string(),
            api_key,
            users: seeded,
        }
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn unix_now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Polls `f` every 100 ms until it returns `Some`, or panics after `deadline`.
pub async fn poll<T, F, Fut>(what: &str, deadline: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The fixture's own contract: extra TOML reaches the server, and a restart keeps the
/// directory (the same log) while the port may change.
#[tokio::test]
async fn fixture_extra_toml_and_restart() {
    let mut s =
        TestServer::start_with(Options::default().extra_toml("[log]\nformat = \"json\"")).await;
    let (_, key) = s.create_partner("Fixture").await;
    let log = s.stderr_log();
    let json_lines = log
        .lines()
        .filter(|l| serde_json::from_str::<Value>(l).is_ok())
        .count();
    assert!(json_lines > 0, "log.format = json was not applied:\n{log}");
    assert_eq!(s.public_url, s.base_url);
    s.restart().await;
    let a = s.identify(&key, "").await;
    a.created();
    assert!(s.store_path().exists());
}
