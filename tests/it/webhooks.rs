//! Webhooks (SPEC 4, and the `/v1/webhook` endpoints of SPEC 2) end to end.
//!
//! Each test runs palmgate in-process ([`palmgate::app::start_with`]) on a [`ManualClock`], so
//! retry schedules of hours take milliseconds, and points its webhook at a real HTTP receiver
//! written here ([`Receiver`]): it records every request (headers, raw body bytes, arrival
//! order) and answers from a script of replies (status, `Retry-After`, body, delay, redirect).
//! Everything crosses real sockets; only time is virtual. HTTP timeouts (the 10 s webhook
//! timeout) stay real.
//!
//! Signatures are checked three ways: an HMAC computed here, the seed's own Python and
//! JavaScript verifiers (run with `python3` and `node`), and the `standardwebhooks` PyPI
//! library. A missing peer tool is reported and skipped, unless `PALMGATE_PEERS=required`.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, Duration as Span, SecondsFormat, SubsecRound, Utc};
use hmac::{Hmac, Mac};
use palmgate::app::App;
use palmgate::app::clock::{ManualClock, OsRng};
use palmgate::config::Config;
use palmgate::core::ReaderId;
use palmgate::mqtt::simulate::{SimOptions, SimReader};
use reqwest::Method;
use serde_json::{Value, json};
use sha2::Sha256;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const ADMIN: &str = "t";
const USER_AGENT: &str = concat!("palmgate/", env!("CARGO_PKG_VERSION"));
/// How long a "nothing more arrives" check watches the receiver (real time).
pub(crate) const QUIET: Duration = Duration::from_millis(400);
/// Deadline for something that should happen at once.
pub(crate) const SOON: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// The receiver
// ---------------------------------------------------------------------------------------------

/// One request as the receiver got it.
#[derive(Clone, Debug)]
pub(crate) struct Hit {
    pub(crate) path: String,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Vec<u8>,
    pub(crate) at: Instant,
}

impl Hit {
    pub(crate) fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("header {name} missing; headers: {:?}", self.headers))
            .to_str()
            .expect("ASCII header")
            .to_string()
    }
    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("webhook body is JSON")
    }
    pub(crate) fn attempt(&self) -> u32 {
        self.header("x-webhook-attempt")
            .parse()
            .expect("attempt number")
    }
    pub(crate) fn id(&self) -> String {
        self.header("x-webhook-id")
    }
}

/// One scripted answer.
#[derive(Clone, Debug)]
pub(crate) struct Reply {
    status: u16,
    retry_after: Option<String>,
    body: String,
    delay: Duration,
    location: Option<String>,
}

impl Reply {
    pub(crate) fn status(status: u16) -> Reply {
        Reply {
            status,
            retry_after: None,
            body: String::new(),
            delay: Duration::ZERO,
            location: None,
        }
    }
    pub(crate) fn retry_after(mut self, v: &str) -> Reply {
        self.retry_after = Some(v.into());
        self
    }
    pub(crate) fn body(mut self, b: impl Into<String>) -> Reply {
        self.body = b.into();
        self
    }
    pub(crate) fn delay(mut self, d: Duration) -> Reply {
        self.delay = d;
        self
    }
    pub(crate) fn location(mut self, url: &str) -> Reply {
        self.location = Some(url.into());
        self
    }
}

struct Inbox {
    hits: Mutex<Vec<Hit>>,
    script: Mutex<VecDeque<Reply>>,
    default: Mutex<Reply>,
}

async fn receive(
    State(inbox): State<Arc<Inbox>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    inbox.hits.lock().unwrap().push(Hit {
        path: uri.path().to_string(),
        headers,
        body: body.to_vec(),
        at: Instant::now(),
    });
    let reply = inbox
        .script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or_else(|| inbox.default.lock().unwrap().clone());
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let mut resp = (StatusCode::from_u16(reply.status).unwrap(), reply.body).into_response();
    if let Some(ra) = reply.retry_after {
        resp.headers_mut()
            .insert("retry-after", ra.parse().unwrap());
    }
    if let Some(loc) = reply.location {
        resp.headers_mut().insert("location", loc.parse().unwrap());
    }
    resp
}

/// A recording webhook endpoint on 127.0.0.1 (port 0).
pub(crate) struct Receiver {
    pub(crate) url: String,
    inbox: Arc<Inbox>,
    task: JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    /// Answers `default` to every request not covered by a scripted reply.
    pub(crate) async fn start(default: Reply) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Receiver::serve(listener, default)
    }

    /// As [`Receiver::start`], on `addr` (an endpoint that comes back on its old port).
    pub(crate) async fn start_on(addr: std::net::SocketAddr, default: Reply) -> Receiver {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        Receiver::serve(listener, default)
    }

    fn serve(listener: tokio::net::TcpListener, default: Reply) -> Receiver {
        let inbox = Arc::new(Inbox {
            hits: Mutex::new(Vec::new()),
            script: Mutex::new(VecDeque::new()),
            default: Mutex::new(default),
        });
        let router = axum::Router::new()
            .fallback(receive)
            .with_state(inbox.clone());
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Receiver {
            url: format!("http://{addr}/hook"),
            inbox,
            task,
        }
    }

    /// Queues replies for the next requests, in order.
    pub(crate) fn then(&self, replies: impl IntoIterator<Item = Reply>) {
        self.inbox.script.lock().unwrap().extend(replies);
    }

    pub(crate) fn set_default(&self, reply: Reply) {
        *self.inbox.default.lock().unwrap() = reply;
    }

    pub(crate) fn hits(&self) -> Vec<Hit> {
        self.inbox.hits.lock().unwrap().clone()
    }

    pub(crate) fn count(&self) -> usize {
        self.inbox.hits.lock().unwrap().len()
    }

    /// Waits until at least `n` requests arrived; fails after `within` (real time).
    pub(crate) async fn wait_for(&self, n: usize, within: Duration, what: &str) -> Vec<Hit> {
        let deadline = Instant::now() + within;
        loop {
            let hits = self.hits();
            if hits.len() >= n {
                return hits;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: expected {n} request(s) at the receiver within {within:?}, got {}",
                hits.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Asserts that the receiver still has exactly `n` requests after watching for [`QUIET`].
    pub(crate) async fn stays(&self, n: usize, what: &str) {
        let deadline = Instant::now() + QUIET;
        while Instant::now() < deadline {
            assert_eq!(
                self.count(),
                n,
                "{what}: the receiver got an unexpected request"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(self.count(), n, "{what}");
    }
}

// ---------------------------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------------------------

fn toml_path(p: PathBuf) -> String {
    format!("\"{}\"", p.display().to_string().replace('\\', "\\\\"))
}

/// The config of the brief, on the files of `dir`; loopback allowed or not.
fn config(dir: &Path, allow_loopback: bool) -> Config {
    let allow = if allow_loopback {
        "allow_networks = [\"127.0.0.0/8\"]"
    } else {
        "allow_networks = []"
    };
    let text = format!(
        "site = \"\"\n[http]\nlisten = \"127.0.0.1:0\"\n\
         [store]\npath = {store}\n\
         [secrets]\nkey_file = {key}\nkey_store = {keys}\n\
         [mqtt.embedded]\nlisten = \"127.0.0.1:0\"\n\
         [webhooks]\n{allow}\n\
         [admin]\ntoken = \"{ADMIN}\"\n\
         [rate_limit]\nper_minute = 1000000\nunauthenticated_per_minute = 1000000\n",
        store = toml_path(dir.join("events.db")),
        key = toml_path(dir.join("master.key")),
        keys = toml_path(dir.join("keys.db")),
    );
    let path = dir.join(if allow_loopback {
        "palmgate-allow.toml"
    } else {
        "palmgate-strict.toml"
    });
    std::fs::write(&path, text).unwrap();
    Config::load(Some(&path), &[]).expect("config loads")
}

/// palmgate in-process, served until [`Gate::stop`] (or drop).
pub(crate) struct Gate {
    pub(crate) base: String,
    mqtt: String,
    app: Option<Arc<App>>,
    http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    served: Option<JoinHandle<std::io::Result<()>>>,
}

impl Gate {
    pub(crate) async fn start(dir: &Path, allow_loopback: bool, clock: Arc<ManualClock>) -> Gate {
        let server = palmgate::app::start_with(config(dir, allow_loopback), clock, Arc::new(OsRng))
            .await
            .expect("palmgate starts");
        let base = format!("http://{}", server.addr);
        let mqtt = server.mqtt.clone();
        let app = server.app.clone();
        let (tx, rx) = oneshot::channel::<()>();
        let served = tokio::spawn(server.serve(async move {
            let _ = rx.await;
        }));
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let gate = Gate {
            base,
            mqtt,
            app: Some(app),
            http,
            stop: Some(tx),
            served: Some(served),
        };
        let deadline = Instant::now() + SOON;
        loop {
            let ok = gate
                .http
                .get(format!("{}/healthz", gate.base))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                break;
            }
            assert!(Instant::now() < deadline, "palmgate never became healthy");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        gate
    }

    /// Fires the shutdown, waits for `serve` to end and lets go of the app.
    pub(crate) async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.served.take() {
            // The server waits up to `webhooks::STOP_WAIT` for attempts already sent.
            tokio::time::timeout(Duration::from_secs(30), h)
                .await
                .expect("serve ends after shutdown")
                .expect("serve task")
                .expect("serve ends cleanly");
        }
        self.app.take();
    }

    pub(crate) async fn send(
        &self,
        method: Method,
        path: &str,
        auth: Auth<'_>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        req = match auth {
            Auth::Admin => req.bearer_auth(ADMIN),
            Auth::Key(k) => req.header("x-api-key", k),
        };
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request to palmgate");
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.expect("response body");
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        (status, v)
    }

    pub(crate) async fn v1(
        &self,
        method: Method,
        path: &str,
        key: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.send(method, path, Auth::Key(key), body).await
    }

    /// Creates a partner; returns its API key and webhook secret (if a URL was given).
    pub(crate) async fn partner(
        &self,
        name: &str,
        webhook_url: Option<&str>,
    ) -> (String, Option<String>) {
        let mut body = json!({ "name": name });
        if let Some(u) = webhook_url {
            body["webhook_url"] = json!(u);
        }
        let (status, v) = self
            .send(Method::POST, "/admin/v1/partners", Auth::Admin, Some(body))
            .await;
        assert_eq!(status, 201, "partner creation: {v}");
        let key = v["api_key"].as_str().expect("api_key").to_string();
        let secret = v["webhook_secret"].as_str().map(str::to_string);
        (key, secret)
    }

    /// A new identify session; returns its id.
    pub(crate) async fn identify(&self, key: &str) -> String {
        self.identify_in(key, "en").await.0
    }

    /// A new identify session in `language`; returns its id and its token.
    async fn identify_in(&self, key: &str, language: &str) -> (String, String) {
        let (status, v) = self
            .v1(
                Method::POST,
                &format!("/v1/identify?language={language}"),
                key,
                None,
            )
            .await;
        assert_eq!(status, 201, "identify: {v}");
        let token = v["url"].as_str().unwrap().rsplit('/').next().unwrap();
        (
            v["session_id"].as_str().unwrap().to_string(),
            token.to_string(),
        )
    }

    /// Waits until the server has seen reader `id` online.
    async fn wait_reader_online(&self, id: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, readers) = self
                .send(Method::GET, "/admin/v1/readers", Auth::Admin, None)
                .await;
            let online = readers
                .as_array()
                .is_some_and(|l| l.iter().any(|r| r["id"] == id && r["online"] == true));
            if online {
                return;
            }
            assert!(Instant::now() < deadline, "reader {id} never came online");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// A new enroll session; returns its id and its token (the URL's last segment).
    async fn enroll(&self, key: &str, language: &str, body: Value) -> (String, String) {
        let (status, v) = self
            .v1(
                Method::POST,
                &format!("/v1/enroll?language={language}"),
                key,
                Some(body),
            )
            .await;
        assert_eq!(status, 201, "enroll: {v}");
        let url = v["url"].as_str().unwrap();
        let token = url.rsplit('/').next().unwrap().to_string();
        (v["session_id"].as_str().unwrap().to_string(), token)
    }

    pub(crate) async fn cancel(&self, key: &str, session: &str) {
        let (status, v) = self
            .v1(
                Method::POST,
                &format!("/v1/sessions/{session}/cancel"),
                key,
                None,
            )
            .await;
        assert_eq!(status, 200, "cancel: {v}");
        assert_eq!(v["state"], "failed", "cancel: {v}");
    }

    /// A session that is created and cancelled at once: one `failed` webhook.
    pub(crate) async fn end_one(&self, key: &str) -> String {
        let id = self.identify(key).await;
        self.cancel(key, &id).await;
        id
    }

    pub(crate) async fn deliveries(&self, key: &str, status: Option<&str>) -> Vec<Value> {
        let path = match status {
            Some(s) => format!("/v1/webhook/deliveries?status={s}&limit=500"),
            None => "/v1/webhook/deliveries?limit=500".to_string(),
        };
        let (code, v) = self.v1(Method::GET, &path, key, None).await;
        assert_eq!(code, 200, "deliveries: {v}");
        v.as_array().expect("a list of deliveries").clone()
    }

    pub(crate) async fn delivery(&self, key: &str, id: &str) -> Option<Value> {
        self.deliveries(key, None)
            .await
            .into_iter()
            .find(|d| d["id"] == id)
    }

    /// Polls delivery `id` until `pred` holds; fails after `within`.
    pub(crate) async fn wait_delivery(
        &self,
        key: &str,
        id: &str,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + SOON;
        loop {
            let d = self.delivery(key, id).await;
            if let Some(d) = &d
                && pred(d)
            {
                return d.clone();
            }
            assert!(
                Instant::now() < deadline,
                "{what}: delivery {id} never got there; last seen: {d:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until delivery `id` has `n` recorded attempts.
    pub(crate) async fn wait_attempts(&self, key: &str, id: &str, n: usize) -> Value {
        self.wait_delivery(key, id, &format!("{n} attempts recorded"), |d| {
            d["attempts"].as_array().map_or(0, Vec::len) >= n
        })
        .await
    }

    pub(crate) async fn webhook(&self, key: &str) -> Value {
        let (code, v) = self.v1(Method::GET, "/v1/webhook", key, None).await;
        assert_eq!(code, 200, "GET /v1/webhook: {v}");
        v
    }

    /// `POST /v1/webhook/test`; returns the ping's delivery id.
    async fn ping(&self, key: &str) -> String {
        let (code, v) = self.v1(Method::POST, "/v1/webhook/test", key, None).await;
        assert!(code == 200 || code == 202, "webhook test: {code} {v}");
        v["delivery_id"].as_str().expect("delivery_id").to_string()
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

pub(crate) enum Auth<'a> {
    Admin,
    Key(&'a str),
}

pub(crate) fn tempdir() -> TempDir {
    tempfile::Builder::new()
        .prefix("palmgate-webhooks-")
        .tempdir()
        .unwrap()
}

/// A whole-second instant near the wall clock (Standard Webhooks libraries refuse timestamps
/// more than 5 minutes away from their own clock).
pub(crate) fn now_secs() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(0)
}

pub(crate) fn text(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

pub(crate) fn session_delivery_id(session: &str) -> String {
    format!("msg_{}", session.replace('-', ""))
}

// ---------------------------------------------------------------------------------------------
// Signatures, computed here (independently of palmgate's code)
// ---------------------------------------------------------------------------------------------

fn hmac256(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).unwrap();
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().to_vec()
}

fn seed_signature(secret: &str, body: &[u8]) -> String {
    format!(
        "sha256={}",
        hex::encode(hmac256(secret.as_bytes(), &[body]))
    )
}

fn standard_signature(secret: &str, id: &str, ts: &str, body: &[u8]) -> String {
    let key = B64
        .decode(secret.strip_prefix("whsec_").expect("whsec_ prefix"))
        .expect("base64 secret");
    let sig = hmac256(&key, &[id.as_bytes(), b".", ts.as_bytes(), b".", body]);
    format!("v1,{}", B64.encode(sig))
}

fn assert_secret_shape(secret: &str) {
    let raw = secret
        .strip_prefix("whsec_")
        .unwrap_or_else(|| panic!("secret {secret:?} does not start with whsec_"));
    assert_eq!(
        B64.decode(raw).expect("secret is base64").len(),
        32,
        "secret {secret:?} is not 32 bytes"
    );
}

/// The `v1,` signatures of a delivery's `webhook-signature` header.
fn standard_signatures(hit: &Hit) -> Vec<String> {
    hit.header("webhook-signature")
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Checks both signature schemes of `hit` with the secrets that should sign it (current first).
fn assert_signed(hit: &Hit, secrets: &[&str]) {
    assert_eq!(
        hit.header("x-webhook-signature"),
        seed_signature(secrets[0], &hit.body),
        "X-Webhook-Signature is not HMAC-SHA256(current secret, raw body)"
    );
    let id = hit.header("webhook-id");
    let ts = hit.header("webhook-timestamp");
    let expected: Vec<String> = secrets
        .iter()
        .map(|s| standard_signature(s, &id, &ts, &hit.body))
        .collect();
    assert_eq!(
        standard_signatures(hit),
        expected,
        "webhook-signature must hold one v1 signature per active secret"
    );
}

// ---------------------------------------------------------------------------------------------
// Peer verifiers: the seed's own code and an independent Standard Webhooks library
// ---------------------------------------------------------------------------------------------

/// The seed's Python verifier, verbatim, plus a command line.
const SEED_PY: &str = r#"import hmac
import hashlib
import sys

def verify_webhook(payload: bytes, signature: str, secret: str) -> bool:
    expected = 'sha256=' + hmac.new(
        secret.encode(),
        payload,
        hashlib.sha256
    ).hexdigest()
    return hmac.compare_digest(signature, expected)

body = open(sys.argv[1], 'rb').read()
ok = verify_webhook(body, sys.argv[2], sys.argv[3])
print('valid' if ok else 'invalid')
sys.exit(0 if ok else 1)
"#;

/// The seed's JavaScript verifier, verbatim, plus a command line.
const SEED_JS: &str = r#"const crypto = require('crypto');
const fs = require('fs');

function verifyWebhook(payload, signature, secret) {
  const expectedSignature = 'sha256=' + crypto
    .createHmac('sha256', secret)
    .update(payload, 'utf8')
    .digest('hex');

  return crypto.timingSafeEqual(
    Buffer.from(signature),
    Buffer.from(expectedSignature)
  );
}

const payload = fs.readFileSync(process.argv[2], 'utf8');
let ok = false;
try { ok = verifyWebhook(payload, process.argv[3], process.argv[4]); } catch (e) { console.log(e.message); }
console.log(ok ? 'valid' : 'invalid');
process.exit(ok ? 0 : 1);
"#;

/// Standard Webhooks' reference Python library.
const STANDARD_PY: &str = r#"import json
import sys
from standardwebhooks import Webhook

body = open(sys.argv[1], 'rb').read()
headers = json.loads(sys.argv[2])
try:
    Webhook(sys.argv[3]).verify(body, headers)
except Exception as e:
    print('invalid:', type(e).__name__, e)
    sys.exit(1)
print('valid')
"#;

fn peers_required() -> bool {
    std::env::var("PALMGATE_PEERS").is_ok_and(|v| v == "required")
}

fn skip_peer(what: &str) {
    assert!(
        !peers_required(),
        "{what} is not available and PALMGATE_PEERS=required"
    );
    eprintln!("SKIPPED: {what} is not available; that peer check did not run");
}

/// Runs a program; `None` if it cannot be started; else (exit 0, stdout + stderr).
async fn run(program: &str, args: Vec<String>) -> Option<(bool, String)> {
    let program = program.to_string();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(&program)
            .args(&args)
            .output()
            .ok()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Some((out.status.success(), text))
    })
    .await
    .unwrap()
}

fn has_program(program: &str) -> bool {
    std::process::Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Whether `standardwebhooks` can be imported, installing it once if needed.
fn standardwebhooks_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        let importable = || {
            std::process::Command::new("python3")
                .args(["-c", "import standardwebhooks"])
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if importable() {
            return true;
        }
        let _ = std::process::Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "standardwebhooks"])
            .output();
        importable()
    })
}

/// Verifies `hit` with the seed's Python and JavaScript verifiers and, for each entry of
/// `standard` (a secret and the `webhook-signature` value to present), the Standard Webhooks
/// library. Each verifier must also refuse a tampered body, so none of them passes vacuously.
async fn peers_verify(dir: &Path, hit: &Hit, seed_secret: &str, standard: &[(&str, String)]) {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let body = dir.join(format!("body-{n}.json"));
    std::fs::write(&body, &hit.body).unwrap();
    let mut tampered_bytes = hit.body.clone();
    let last = tampered_bytes.len() - 2;
    tampered_bytes[last] ^= 0x01;
    let tampered = dir.join(format!("tampered-{n}.json"));
    std::fs::write(&tampered, &tampered_bytes).unwrap();
    let path = |p: &Path| p.display().to_string();
    let signature = hit.header("x-webhook-signature");

    if has_program("python3") {
        let script = dir.join("seed_verify.py");
        std::fs::write(&script, SEED_PY).unwrap();
        let (ok, out) = run(
            "python3",
            vec![
                path(&script),
                path(&body),
                signature.clone(),
                seed_secret.into(),
            ],
        )
        .await
        .expect("python3 runs");
        assert!(ok, "the seed's Python verify_webhook refused: {out}");
        let (ok, _) = run(
            "python3",
            vec![
                path(&script),
                path(&tampered),
                signature.clone(),
                seed_secret.into(),
            ],
        )
        .await
        .unwrap();
        assert!(!ok, "the seed's Python verifier accepted a tampered body");
    } else {
        skip_peer("python3 (the seed's Python verifier)");
    }

    if has_program("node") {
        let script = dir.join("seed_verify.js");
        std::fs::write(&script, SEED_JS).unwrap();
        let (ok, out) = run(
            "node",
            vec![
                path(&script),
                path(&body),
                signature.clone(),
                seed_secret.into(),
            ],
        )
        .await
        .expect("node runs");
        assert!(ok, "the seed's JavaScript verifyWebhook refused: {out}");
        let (ok, _) = run(
            "node",
            vec![
                path(&script),
                path(&tampered),
                signature.clone(),
                seed_secret.into(),
            ],
        )
        .await
        .unwrap();
        assert!(
            !ok,
            "the seed's JavaScript verifier accepted a tampered body"
        );
    } else {
        eprintln!("SKIPPED: node is not installed; the seed's JavaScript verifier did not run");
    }

    if !standard.is_empty() {
        if has_program("python3") && standardwebhooks_available() {
            let script = dir.join("standard_verify.py");
            std::fs::write(&script, STANDARD_PY).unwrap();
            for (secret, signature) in standard {
                let headers = json!({
                    "webhook-id": hit.header("webhook-id"),
                    "webhook-timestamp": hit.header("webhook-timestamp"),
                    "webhook-signature": signature,
                })
                .to_string();
                let (ok, out) = run(
                    "python3",
                    vec![
                        path(&script),
                        path(&body),
                        headers.clone(),
                        secret.to_string(),
                    ],
                )
                .await
                .unwrap();
                assert!(
                    ok,
                    "standardwebhooks refused signature {signature:?} with its secret: {out}"
                );
                let (ok, _) = run(
                    "python3",
                    vec![path(&script), path(&tampered), headers, secret.to_string()],
                )
                .await
                .unwrap();
                assert!(!ok, "standardwebhooks accepted a tampered body");
            }
        } else {
            skip_peer("the standardwebhooks Python library");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Payload and headers
// ---------------------------------------------------------------------------------------------

fn assert_common_headers(hit: &Hit, delivery_id: &str, attempt: u32) {
    assert_eq!(hit.path, "/hook", "posted to the configured URL's path");
    assert_eq!(hit.id(), delivery_id, "X-Webhook-Id");
    assert_eq!(
        hit.header("webhook-id"),
        delivery_id,
        "webhook-id equals X-Webhook-Id"
    );
    assert_eq!(hit.attempt(), attempt, "X-Webhook-Attempt");
    assert_eq!(hit.header("user-agent"), USER_AGENT);
    assert!(
        hit.header("content-type").starts_with("application/json"),
        "Content-Type: {}",
        hit.header("content-type")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_end_posts_the_seed_payload_signed_for_every_verifier() {
    let rx = Receiver::start(Reply::status(200)).await;
    let dir = tempdir();
    let t0 = now_secs();
    let clock = Arc::new(ManualClock::new(t0));
    let gate = Gate::start(dir.path(), true, clock.clone()).await;
    let (key, secret) = gate.partner("Acme", Some(&rx.url)).await;
    let secret = secret.expect("the webhook secret is shown at partner creation");
    assert_secret_shape(&secret);

    // A cancelled enrollment: a `failed` webhook with everything the session knew.
    let (sid, _) = gate
        .enroll(
            &key,
            "kk",
            json!({"external_id": "EMP-12345", "username": "Айгерим", "metadata": {"department": "Engineering"}}),
        )
        .await;
    clock.advance(Span::seconds(7));
    let ended = t0 + Span::seconds(7);
    gate.cancel(&key, &sid).await;
    let hit = rx.wait_for(1, SOON, "the cancel's webhook").await.remove(0);
    let body = std::str::from_utf8(&hit.body).expect("UTF-8 body");
    assert!(
        body.starts_with(r#"{"event":"failed","timestamp":""#),
        "the seed's field order and compact JSON: {body}"
    );
    assert_eq!(
        hit.json(),
        json!({
            "event": "failed",
            "timestamp": text(ended),
            "data": {
                "session_id": sid,
                "type": "enroll",
                "external_id": "EMP-12345",
                "username": "Айгерим",
                "metadata": {"department": "Engineering"},
                "fail_reason": "cancelled",
                "language": "kk",
            }
        })
    );
    assert!(
        hit.json()["timestamp"].as_str().unwrap().ends_with('Z')
            && hit.json()["timestamp"].as_str().unwrap().len() == 20,
        "timestamp in whole UTC seconds with Z"
    );
    let id = session_delivery_id(&sid);
    assert_common_headers(&hit, &id, 1);
    assert_eq!(
        hit.header("webhook-timestamp"),
        ended.timestamp().to_string(),
        "webhook-timestamp is the attempt's Unix time"
    );
    assert_signed(&hit, &[&secret]);
    let sigs = standard_signatures(&hit);
    peers_verify(dir.path(), &hit, &secret, &[(&secret, sigs[0].clone())]).await;

    // Exactly one delivery, recorded as delivered.
    let d = gate
        .wait_delivery(&key, &id, "delivered", |d| d["status"] == "delivered")
        .await;
    assert_eq!(d["event"], "failed");
    assert_eq!(d["session_id"], sid);
    let attempts = d["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "{d}");
    assert_eq!(attempts[0]["status_code"], 200);
    assert_eq!(attempts[0]["delivered"], true);
    assert_eq!(gate.deliveries(&key, None).await.len(), 1);
    assert_eq!(
        gate.deliveries(&key, Some("delivered")).await.len(),
        1,
        "?status=delivered lists it"
    );
    assert!(gate.deliveries(&key, Some("failed")).await.is_empty());
    rx.stays(1, "one session end, one request").await;

    // An enrollment completed by a palm on a (simulated) reader: a `completed` webhook.
    let (sid2, token) = gate
        .enroll(
            &key,
            "en",
            json!({"external_id": "EMP-2", "username": "Alice", "metadata": {"access_level": "standard"}}),
        )
        .await;
    let mut reader = SimReader::connect(SimOptions {
        mqtt_url: gate.mqtt.clone(),
        topic_prefix: "palmgate".into(),
        reader: ReaderId("desk-1".into()),
        palm: "alice".into(),
        dim: 128,
        quality: 0.93,
        liveness: true,
        seed: 1,
    })
    .await
    .expect("the simulated reader connects");
    gate.wait_reader_online("desk-1").await;
    reader.capture(Some(&token)).await.expect("capture sent");
    let hit = rx
        .wait_for(2, Duration::from_secs(10), "the enrollment's webhook")
        .await
        .remove(1);
    assert_eq!(
        hit.json(),
        json!({
            "event": "completed",
            "timestamp": text(ended),
            "data": {
                "session_id": sid2,
                "type": "enroll",
                "external_id": "EMP-2",
                "username": "Alice",
                "metadata": {"access_level": "standard"},
                "language": "en",
            }
        })
    );
    assert_common_headers(&hit, &session_delivery_id(&sid2), 1);
    assert_signed(&hit, &[&secret]);
    let sigs = standard_signatures(&hit);
    peers_verify(dir.path(), &hit, &secret, &[(&secret, sigs[0].clone())]).await;
    rx.stays(2, "the completed enrollment sends one request")
        .await;

    // An identify that matches carries the matched user's fields.
    let (sid3, token) = gate.identify_in(&key, "ru").await;
    reader.capture(Some(&token)).await.expect("capture sent");
    let hit = rx
        .wait_for(3, Duration::from_secs(10), "the matched identify's webhook")
        .await
        .remove(2);
    assert_eq!(
        hit.json(),
        json!({
            "event": "completed",
            "timestamp": text(ended),
            "data": {
                "session_id": sid3,
                "type": "identify",
                "external_id": "EMP-2",
                "username": "Alice",
                "metadata": {"access_level": "standard"},
                "language": "ru",
            }
        })
    );
    assert_common_headers(&hit, &session_delivery_id(&sid3), 1);
    assert_signed(&hit, &[&secret]);

    // An identify that matches nobody: `no_match`, and no user fields.
    let mut stranger = SimReader::connect(SimOptions {
        mqtt_url: gate.mqtt.clone(),
        topic_prefix: "palmgate".into(),
        reader: ReaderId("desk-2".into()),
        palm: "bob".into(),
        dim: 128,
        quality: 0.93,
        liveness: true,
        seed: 7,
    })
    .await
    .expect("the second simulated reader connects");
    gate.wait_reader_online("desk-2").await;
    let (sid4, token) = gate.identify_in(&key, "en").await;
    stranger.capture(Some(&token)).await.expect("capture sent");
    let hit = rx
        .wait_for(
            4,
            Duration::from_secs(10),
            "the unmatched identify's webhook",
        )
        .await
        .remove(3);
    assert_eq!(
        hit.json(),
        json!({
            "event": "failed",
            "timestamp": text(ended),
            "data": {
                "session_id": sid4,
                "type": "identify",
                "fail_reason": "no_match",
                "language": "en",
            }
        })
    );
    assert_signed(&hit, &[&secret]);
    rx.stays(4, "one request per session end").await;
    drop(stranger);
    drop(reader);
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_session_sends_an_expired_webhook_at_its_deadline() {
    let rx = Receiver::start(Reply::status(200)).await;
    let dir = tempdir();
    let t0 = now_secs();
    let clock = Arc::new(ManualClock::new(t0));
    let gate = Gate::start(dir.path(), true, clock.clone()).await;
    let (key, secret) = gate.partner("Acme", Some(&rx.url)).await;
    let secret = secret.unwrap();
    let (sid, _) = gate
        .enroll(&key, "ru", json!({"external_id": "EMP-9"}))
        .await;
    let expires = t0 + Span::minutes(15);
    let hit = step_to(&clock, &rx, expires, 1).await;
    assert_eq!(
        hit.json(),
        json!({
            "event": "expired",
            "timestamp": text(expires),
            "data": {
                "session_id": sid,
                "type": "enroll",
                "external_id": "EMP-9",
                "language": "ru",
            }
        })
    );
    assert_common_headers(&hit, &session_delivery_id(&sid), 1);
    assert_signed(&hit, &[&secret]);
    clock.advance(Span::hours(1));
    rx.stays(1, "one expiry, one webhook").await;
    gate.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 2. Retries on the virtual clock, disable, enable, redeliver, recover
// ---------------------------------------------------------------------------------------------

/// Advances the clock to just before `due`, checks nothing is sent, then to `due` and waits
/// for request number `n`.
pub(crate) async fn step_to(
    clock: &ManualClock,
    rx: &Receiver,
    due: DateTime<Utc>,
    n: usize,
) -> Hit {
    let now = palmgate::app::clock::Clock::now(clock);
    assert!(due > now, "due {due} is not after now {now}");
    clock.advance(due - now - Span::seconds(1));
    rx.stays(n - 1, &format!("attempt {n} must not come before {due}"))
        .await;
    clock.advance(Span::seconds(1));
    rx.wait_for(n, SOON, &format!("attempt {n} at {due}"))
        .await
        .remove(n - 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_retry_on_the_seed_schedule_then_disable_until_recovered() {
    let rx = Receiver::start(Reply::status(500).body("down")).await;
    let big = "x".repeat(5000);
    rx.then([
        Reply::status(500).body("first"),
        Reply::status(502),
        Reply::status(500).body(big),
        Reply::status(503),
        Reply::status(500).body("last"),
    ]);
    let dir = tempdir();
    let t0 = now_secs();
    let clock = Arc::new(ManualClock::new(t0));
    let gate = Gate::start(dir.path(), true, clock.clone()).await;
    let (key, _) = gate.partner("Acme", Some(&rx.url)).await;

    let s1 = gate.end_one(&key).await;
    let id = session_delivery_id(&s1);
    let first = rx.wait_for(1, SOON, "attempt 1 at once").await.remove(0);
    // Each failure at F schedules the next attempt at F + 1 min, 5 min, 30 min, 2 h.
    let mut due = t0;
    let mut hits = vec![first];
    for (n, delay) in [(2usize, 1i64), (3, 5), (4, 30), (5, 120)] {
        let d = gate.wait_attempts(&key, &id, n - 1).await;
        due += Span::minutes(delay);
        assert_eq!(d["status"], "pending", "{d}");
        assert_eq!(
            d["next_attempt_at"],
            text(due),
            "next attempt after failure {}",
            n - 1
        );
        hits.push(step_to(&clock, &rx, due, n).await);
    }
    for (i, hit) in hits.iter().enumerate() {
        assert_eq!(hit.id(), id, "X-Webhook-Id is stable across retries");
        assert_eq!(hit.attempt(), i as u32 + 1, "X-Webhook-Attempt");
        assert_eq!(hit.body, hits[0].body, "every attempt sends the same bytes");
    }

    // After the fifth failure: failed, with every attempt, and the webhook disabled.
    let d = gate
        .wait_delivery(&key, &id, "failed after 5", |d| d["status"] == "failed")
        .await;
    let failed = gate.deliveries(&key, Some("failed")).await;
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["id"], id);
    assert_eq!(failed[0]["event"], "failed");
    assert_eq!(failed[0]["session_id"], s1);
    assert!(failed[0]["next_attempt_at"].is_null(), "{d}");
    let attempts = d["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 5, "{d}");
    let codes: Vec<_> = attempts.iter().map(|a| a["status_code"].clone()).collect();
    assert_eq!(
        codes,
        [json!(500), json!(502), json!(500), json!(503), json!(500)]
    );
    let ats: Vec<_> = attempts.iter().map(|a| a["at"].clone()).collect();
    let expected_ats: Vec<_> = [0, 1, 6, 36, 156]
        .iter()
        .map(|m| json!(text(t0 + Span::minutes(*m))))
        .collect();
    assert_eq!(ats, expected_ats, "attempt times");
    for (i, a) in attempts.iter().enumerate() {
        assert_eq!(a["attempt"], i + 1);
        assert_eq!(a["delivered"], false);
        assert!(a["latency_ms"].is_u64(), "latency_ms: {a}");
    }
    assert_eq!(attempts[0]["response"], "first");
    assert_eq!(attempts[4]["response"], "last");
    let kept = attempts[2]["response"].as_str().unwrap();
    assert_eq!(kept.len(), 2048, "the first 2 KB of a long answer");
    assert!(kept.bytes().all(|b| b == b'x'));
    let w = gate.webhook(&key).await;
    assert_eq!(w["status"], "disabled", "{w}");
    assert_eq!(w["url"], rx.url.as_str());
    assert_eq!(
        w["last_failure"],
        text(t0 + Span::minutes(156)),
        "last failure: {w}"
    );
    assert_eq!(w["last_failure_reason"], "HTTP 500", "{w}");

    // A session ending now is kept, not sent.
    rx.set_default(Reply::status(200));
    let s2 = gate.end_one(&key).await;
    let held_id = session_delivery_id(&s2);
    let held = gate
        .wait_delivery(&key, &held_id, "queued as held", |d| d["status"] == "held")
        .await;
    assert!(held["attempts"].as_array().unwrap().is_empty(), "{held}");
    let pending = gate.deliveries(&key, Some("pending")).await;
    assert!(
        pending.iter().any(|d| d["id"] == held_id),
        "?status=pending lists the held delivery: {pending:?}"
    );
    clock.advance(Span::hours(3));
    rx.stays(5, "nothing is sent while the webhook is disabled")
        .await;
    // A test ping is refused while disabled (it would wait, held, for a recover).
    let (code, v) = gate.v1(Method::POST, "/v1/webhook/test", &key, None).await;
    assert_eq!(code, 409, "{v}");
    assert_eq!(
        v["message"],
        "webhook is disabled: enable it (POST /v1/webhook/enable), then send the test"
    );

    // Enable: active again; the held one waits for a redeliver or recover.
    let (code, v) = gate
        .v1(Method::POST, "/v1/webhook/enable", &key, None)
        .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["status"], "active");
    assert_eq!(gate.webhook(&key).await["status"], "active");

    // Redeliver the failed one: a new sequence, attempt 1, the same id and bytes.
    let (code, v) = gate
        .v1(
            Method::POST,
            &format!("/v1/webhook/deliveries/{id}/redeliver"),
            &key,
            None,
        )
        .await;
    assert!(code == 200 || code == 202, "redeliver: {code} {v}");
    let hit = rx.wait_for(6, SOON, "the redelivery").await.remove(5);
    assert_eq!(hit.id(), id);
    assert_eq!(hit.attempt(), 1, "a redelivery starts again at attempt 1");
    assert_eq!(hit.body, hits[0].body);
    let d = gate
        .wait_delivery(&key, &id, "redelivered", |d| d["status"] == "delivered")
        .await;
    assert_eq!(d["attempts"].as_array().unwrap().len(), 6, "{d}");
    assert_eq!(
        gate.delivery(&key, &held_id).await.unwrap()["status"],
        "held",
        "the held delivery is sent by recover (or its own redeliver), not by enable"
    );
    rx.stays(6, "only the redelivered one was sent").await;

    let (code, v) = gate
        .v1(
            Method::POST,
            "/v1/webhook/deliveries/msg_nope/redeliver",
            &key,
            None,
        )
        .await;
    assert_eq!(code, 404, "redeliver of an unknown id: {v}");

    // Recover since t0: the held one goes out; the delivered ones do not.
    let (code, v) = gate
        .v1(
            Method::POST,
            "/v1/webhook/recover",
            &key,
            Some(json!({"since": text(t0)})),
        )
        .await;
    assert_eq!(code, 200, "recover: {v}");
    assert_eq!(v["redelivering"], 1, "{v}");
    let hit = rx
        .wait_for(7, SOON, "the recovered delivery")
        .await
        .remove(6);
    assert_eq!(hit.id(), held_id);
    assert_eq!(hit.attempt(), 1);
    assert_eq!(hit.json()["event"], "failed");
    assert_eq!(hit.json()["data"]["session_id"], s2);
    assert_eq!(
        hit.json()["timestamp"],
        text(t0 + Span::minutes(156)),
        "the body was built when the session ended, not when it was sent"
    );
    gate.wait_delivery(&key, &held_id, "recovered", |d| d["status"] == "delivered")
        .await;
    let (_, v) = gate
        .v1(
            Method::POST,
            "/v1/webhook/recover",
            &key,
            Some(json!({"since": text(t0)})),
        )
        .await;
    assert_eq!(v["redelivering"], 0, "nothing left to recover: {v}");
    rx.stays(7, "recover resends nothing delivered").await;
    let (code, _) = gate
        .v1(
            Method::POST,
            "/v1/webhook/recover",
            &key,
            Some(json!({"since": "yesterday"})),
        )
        .await;
    assert_eq!(code, 400, "since must be RFC 3339");
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_delays_an_attempt_but_never_hastens_it() {
    let rx = Receiver::start(Reply::status(200)).await;
    rx.then([
        Reply::status(503).retry_after("600"),
        Reply::status(200),
        Reply::status(503).retry_after("5"),
        Reply::status(200),
    ]);
    let dir = tempdir();
    let t0 = now_secs();
    let clock = Arc::new(ManualClock::new(t0));
    let gate = Gate::start(dir.path(), true, clock.clone()).await;
    let (key, _) = gate.partner("Acme", Some(&rx.url)).await;

    // Retry-After: 600 → attempt 2 at +10 min, not +1 min.
    let p1 = gate.ping(&key).await;
    rx.wait_for(1, SOON, "ping 1 attempt 1").await;
    let d = gate.wait_attempts(&key, &p1, 1).await;
    assert_eq!(d["next_attempt_at"], text(t0 + Span::minutes(10)), "{d}");
    clock.advance(Span::minutes(1));
    rx.stays(1, "Retry-After: 600 must delay past the 1 min schedule")
        .await;
    let hit = step_to(&clock, &rx, t0 + Span::minutes(10), 2).await;
    assert_eq!(hit.id(), p1);
    assert_eq!(hit.attempt(), 2);
    gate.wait_delivery(&key, &p1, "delivered", |d| d["status"] == "delivered")
        .await;

    // Retry-After: 5 → still +1 min.
    let t1 = t0 + Span::minutes(10);
    let p2 = gate.ping(&key).await;
    rx.wait_for(3, SOON, "ping 2 attempt 1").await;
    let d = gate.wait_attempts(&key, &p2, 1).await;
    assert_eq!(d["next_attempt_at"], text(t1 + Span::minutes(1)), "{d}");
    clock.advance(Span::seconds(5));
    rx.stays(3, "Retry-After: 5 must not bring attempt 2 forward")
        .await;
    let hit = step_to(&clock, &rx, t1 + Span::minutes(1), 4).await;
    assert_eq!(hit.id(), p2);
    assert_eq!(hit.attempt(), 2);
    gate.stop().await;
}

/// A server stopped while a receiver is still answering an attempt waits for the answer and
/// records it: after the restart the receiver is not sent the same delivery again. Before,
/// the stop cut the attempt off unrecorded and it went out again as attempt 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_waits_for_an_attempt_in_flight() {
    let rx = Receiver::start(Reply::status(200)).await;
    rx.then([Reply::status(200).delay(Duration::from_secs(2))]);
    let dir = tempdir();
    let clock = Arc::new(ManualClock::new(now_secs()));
    let gate = Gate::start(dir.path(), true, clock.clone()).await;
    let (key, _) = gate.partner("Acme", Some(&rx.url)).await;
    let p1 = gate.ping(&key).await;
    rx.wait_for(1, SOON, "the attempt reached the receiver")
        .await;
    gate.stop().await;
    let gate = Gate::start(dir.path(), true, clock.clone()).await;
    gate.wait_delivery(&key, &p1, "delivered before the stop", |d| {
        d["status"] == "delivered"
    })
    .await;
    rx.stays(1, "the delivery was sent again after the restart")
        .await;
    gate.stop().await;
}

/// A `Retry-After` too large for a duration (seconds past `i64::MAX / 1000`) is capped at 24 h
/// like any other: attempt 1 is recorded as failed and attempt 2 is due 24 h later, and a
/// redelivery goes out at once. Before, converting it panicked inside the attempt, which left
/// the delivery pending with no attempt recorded and never tried again until a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurd_retry_after_is_capped_and_the_delivery_goes_on() {
    let rx = Receiver::start(Reply::status(200)).await;
    rx.then([Reply::status(503).retry_after("9223372036854776")]);
    let dir = tempdir();
    let t0 = now_secs();
    let clock = Arc::new(ManualClock::new(t0));
    let gate = Gate::start(dir.path(), true, clock.clone()).await;
    let (key, _) = gate.partner("Acme", Some(&rx.url)).await;
    let p1 = gate.ping(&key).await;
    rx.wait_for(1, SOON, "attempt 1").await;
    let d = gate.wait_attempts(&key, &p1, 1).await;
    assert_eq!(d["next_attempt_at"], text(t0 + Span::hours(24)), "{d}");
    let hit = step_to(&clock, &rx, t0 + Span::hours(24), 2).await;
    assert_eq!((hit.id(), hit.attempt()), (p1.clone(), 2));
    gate.wait_delivery(&key, &p1, "delivered", |d| d["status"] == "delivered")
        .await;
    gate.stop().await;
}

/// `Retry-After` given as an HTTP date (RFC 9110) delays the next attempt to that date, read
/// against the gateway's clock; before, only whole seconds were read and a date was ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_date_delays_the_next_attempt_to_that_date() {
    let rx = Receiver::start(Reply::status(200)).await;
    let dir = tempdir();
    let t0 = now_secs();
    let at = t0 + Span::minutes(20);
    rx.then([Reply::status(503).retry_after(&at.format("%a, %d %b %Y %H:%M:%S GMT").to_string())]);
    let clock = Arc::new(ManualClock::new(t0));
    let gate = Gate::start(dir.path(), true, clock.clone()).await;
    let (key, _) = gate.partner("Acme", Some(&rx.url)).await;
    let p1 = gate.ping(&key).await;
    rx.wait_for(1, SOON, "attempt 1").await;
    let d = gate.wait_attempts(&key, &p1, 1).await;
    assert_eq!(d["next_attempt_at"], text(at), "{d}");
    clock.advance(Span::minutes(1));
    rx.stays(1, "the date must delay past the 1 min schedule")
        .await;
    let hit = step_to(&clock, &rx, at, 2).await;
    assert_eq!((hit.id(), hit.attempt()), (p1.clone(), 2));
    let w = gate.webhook(&key).await;
    assert_eq!(w["last_failure_reason"], "HTTP 503", "{w}");
    gate.stop().await;
}

/// The deliveries list is paged like the other lists: newest first, `limit`/`offset`,
/// `X-Total-Count`, `q` on the id, event and session id, together with `status`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deliveries_list_is_paged_and_searchable() {
    let rx = Receiver::start(Reply::status(200)).await;
    let dir = tempdir();
    let t0 = now_secs();
    let clock = Arc::new(ManualClock::new(t0));
    let gate = Gate::start(dir.path(), true, clock.clone()).await;
    let (key, _) = gate.partner("Acme", Some(&rx.url)).await;
    let mut pings = Vec::new();
    for _ in 0..3 {
        pings.push(gate.ping(&key).await);
        clock.advance(Span::seconds(1));
    }
    rx.wait_for(3, SOON, "three pings").await;
    for p in &pings {
        gate.wait_delivery(&key, p, "delivered", |d| d["status"] == "delivered")
            .await;
    }
    let page = |query: &'static str| {
        let gate = &gate;
        let key = &key;
        async move {
            let r = gate
                .http
                .get(format!("{}/v1/webhook/deliveries{query}", gate.base))
                .header("x-api-key", key.as_str())
                .send()
                .await
                .expect("request to palmgate");
            let code = r.status().as_u16();
            let total = r
                .headers()
                .get("x-total-count")
                .map(|v| v.to_str().unwrap().to_string());
            let v: Value = r.json().await.expect("JSON");
            (code, total, v)
        }
    };
    let ids = |v: &Value| -> Vec<String> {
        v.as_array()
            .expect("a list")
            .iter()
            .map(|d| d["id"].as_str().unwrap().to_string())
            .collect()
    };
    let (code, total, v) = page("?limit=2").await;
    assert_eq!((code, total.as_deref()), (200, Some("3")), "{v}");
    assert_eq!(
        ids(&v),
        [pings[2].clone(), pings[1].clone()],
        "newest first"
    );
    let (_, total, v) = page("?limit=2&offset=2&status=delivered").await;
    assert_eq!(total.as_deref(), Some("3"));
    assert_eq!(ids(&v), [pings[0].clone()]);
    let (_, total, v) = page("?status=failed").await;
    assert_eq!((total.as_deref(), ids(&v).len()), (Some("0"), 0));
    let q = format!("?q={}", &pings[1][4..16].to_uppercase());
    let q: &'static str = Box::leak(q.into_boxed_str());
    let (_, total, v) = page(q).await;
    assert_eq!(
        total.as_deref(),
        Some("1"),
        "q matches the id, ignoring case: {v}"
    );
    assert_eq!(ids(&v), [pings[1].clone()]);
    for bad in ["?limit=0", "?limit=501", "?offset=-1", "?status=lost"] {
        let (code, _, v) = page(bad).await;
        assert_eq!(code, 400, "{bad}: {v}");
        assert!(v["message"].is_string(), "{bad}: {v}");
    }
    gate.stop().await;
}

/// A new configuration (`PUT /v1/webhook`, here to change `events` only) brings a new secret
/// and the one it replaces keeps signing `webhook-signature` for 24 h, as after
/// `rotate-secret`: a receiver that has not switched yet still verifies what is sent. Before,
/// the old secret stopped signing at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_configuration_keeps_the_old_secret_signing_for_24_hours() {
    let rx = Receiver::start(Reply::status(200)).await;
    let dir = tempdir();
    let t0 = now_secs();
    let clock = Arc::new(ManualClock::new(t0));
    let gate = Gate::start(dir.path(), true, clock.clone()).await;
    let (key, _) = gate.partner("Acme", None).await;
    let put = |events: Value| {
        let gate = &gate;
        let key = &key;
        let url = rx.url.clone();
        async move {
            let (code, v) = gate
                .v1(
                    Method::PUT,
                    "/v1/webhook",
                    key,
                    Some(json!({"url": url, "events": events})),
                )
                .await;
            assert_eq!(code, 200, "PUT /v1/webhook: {v}");
            v["secret"].as_str().expect("secret shown once").to_string()
        }
    };
    let s0 = put(json!(["session"])).await;
    assert!(gate.webhook(&key).await["previous_secret_valid_until"].is_null());
    clock.advance(Span::hours(1));
    let s1 = put(json!(["session", "access"])).await;
    assert_ne!(s0, s1);
    let w = gate.webhook(&key).await;
    assert_eq!(
        w["previous_secret_valid_until"],
        text(t0 + Span::hours(25)),
        "{w}"
    );
    assert_eq!(w["events"], json!(["session", "access"]));

    gate.ping(&key).await;
    let hit = rx.wait_for(1, SOON, "ping after the PUT").await.remove(0);
    assert_eq!(
        standard_signatures(&hit).len(),
        2,
        "{:?}",
        standard_signatures(&hit)
    );
    assert_signed(&hit, &[&s1, &s0]);

    // 24 h after the PUT: the new secret alone.
    clock.advance(Span::hours(24));
    gate.ping(&key).await;
    let hit = rx.wait_for(2, SOON, "ping 24 h later").await.remove(1);
    assert_signed(&hit, &[&s1]);
    assert_eq!(standard_signatures(&hit).len(), 1);
    gate.stop().await;
}

/// A partner's 32 slots full when another delivery's 5th failure disables the webhook: the
/// attempt still waiting for a slot is not sent, the results of those already out are not
/// recorded, and re-enabling sends each of them as the attempt it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_waiting_for_a_slot_are_not_sent_once_the_webhook_is_disabled() {
    // Real time: X's 5th attempt is answered after X_WAIT, the others after Y_WAIT.
    const X_WAIT: Duration = Duration::from_secs(5);
    const Y_WAIT: Duration = Duration::from_secs(8);
    let slots = palmgate::webhooks::PER_PARTNER;
    let rx = Receiver::start(Reply::status(500).delay(Y_WAIT)).await;
    rx.then([
        Reply::status(500),
        Reply::status(500),
        Reply::status(500),
        Reply::status(500),
        Reply::status(500).delay(X_WAIT),
    ]);
    let dir = tempdir();
    let t0 = now_secs();
    let clock = Arc::new(ManualClock::new(t0));
    let gate = Gate::start(dir.path(), true, clock.clone()).await;
    let (key, _) = gate.partner("Acme", Some(&rx.url)).await;

    // X fails four times on the schedule; its 5th attempt goes out and hangs for X_WAIT.
    let x = session_delivery_id(&gate.end_one(&key).await);
    rx.wait_for(1, SOON, "X's attempt 1").await;
    let mut due = t0;
    for (n, delay) in [(2usize, 1i64), (3, 5), (4, 30), (5, 120)] {
        gate.wait_attempts(&key, &x, n - 1).await;
        due += Span::minutes(delay);
        step_to(&clock, &rx, due, n).await;
    }
    let x_sent = Instant::now();

    // 32 more deliveries: 31 take the slots left, one waits for a slot.
    let mut ys = Vec::new();
    for _ in 0..slots {
        ys.push(session_delivery_id(&gate.end_one(&key).await));
    }
    let sent = 5 + slots - 1;
    rx.wait_for(sent, SOON, "the deliveries that got a slot")
        .await;
    assert!(
        x_sent.elapsed() < X_WAIT - Duration::from_millis(500),
        "the test's set-up took longer than X's answer: it proves nothing on this machine"
    );
    assert_eq!(gate.webhook(&key).await["status"], "active");
    rx.stays(sent, "one delivery waits for a slot").await;
    let waiting: Vec<&String> = {
        let got: Vec<String> = rx.hits().iter().map(Hit::id).collect();
        ys.iter().filter(|y| !got.contains(y)).collect()
    };
    assert_eq!(waiting.len(), 1, "exactly one waits: {waiting:?}");
    let waiting = waiting[0].clone();

    // X's 5th failure disables the webhook and frees its slot: the waiting attempt is not sent.
    gate.wait_delivery(&key, &x, "X failed", |d| d["status"] == "failed")
        .await;
    assert_eq!(gate.webhook(&key).await["status"], "disabled");
    // The 31 requests out end (500 after Y_WAIT) while the webhook is disabled.
    let last_out = rx.hits().last().unwrap().at;
    while last_out.elapsed() < Y_WAIT + Duration::from_secs(1) {
        assert_eq!(
            rx.count(),
            sent,
            "an attempt was sent to the disabled webhook"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    rx.stays(sent, "nothing is sent while the webhook is disabled")
        .await;
    for y in &ys {
        let d = gate.delivery(&key, y).await.expect("the delivery");
        assert_eq!(d["status"], "pending", "{d}");
        assert!(
            d["attempts"].as_array().unwrap().is_empty(),
            "an attempt answered after the webhook was disabled is not recorded: {d}"
        );
    }

    // Re-enabled: each of them is sent again as attempt 1, the waiting one included.
    rx.set_default(Reply::status(200));
    let (code, v) = gate
        .v1(Method::POST, "/v1/webhook/enable", &key, None)
        .await;
    assert_eq!(code, 200, "{v}");
    let hits = rx
        .wait_for(sent + slots, SOON, "the deliveries after enable")
        .await;
    let again: Vec<(String, u32)> = hits[sent..].iter().map(|h| (h.id(), h.attempt())).collect();
    for y in &ys {
        assert!(
            again.contains(&(y.clone(), 1)),
            "{y} not sent as attempt 1: {again:?}"
        );
        gate.wait_delivery(&key, y, "delivered after enable", |d| {
            d["status"] == "delivered" && d["attempts"].as_array().unwrap().len() == 1
        })
        .await;
    }
    assert!(again.iter().any(|(id, _)| *id == waiting));
    assert_eq!(
        gate.delivery(&key, &x).await.unwrap()["status"],
        "failed",
        "X waits for a redeliver"
    );
    drop(gate);
}

// ---------------------------------------------------------------------------------------------
// 3. Test ping and secret rotation
// ---------------------------------------------------------------------------------------------

/// Every answer that carries a secret shown once (a new partner's API key and webhook secret, a
/// webhook secret set or rotated) is sent `Cache-Control: no-store`, so no browser or proxy
/// cache keeps a copy; an answer without a secret is not marked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_carrying_a_secret_are_sent_no_store() {
    let rx = Receiver::start(Reply::status(200)).await;
    let dir = tempdir();
    let gate = Gate::start(dir.path(), true, Arc::new(ManualClock::new(now_secs()))).await;
    let call = |method: Method, path: &str, auth: Auth<'_>, body: Option<Value>| {
        let mut req = gate.http.request(method, format!("{}{path}", gate.base));
        req = match auth {
            Auth::Admin => req.bearer_auth(ADMIN),
            Auth::Key(k) => req.header("x-api-key", k),
        };
        if let Some(b) = body {
            req = req.json(&b);
        }
        async move {
            let r = req.send().await.expect("request to palmgate");
            let status = r.status().as_u16();
            let cache = r
                .headers()
                .get("cache-control")
                .map(|v| v.to_str().unwrap().to_string());
            let v: Value = r.json().await.expect("JSON answer");
            (status, cache, v)
        }
    };
    let no_store = Some("no-store".to_string());
    let (code, cache, v) = call(
        Method::POST,
        "/admin/v1/partners",
        Auth::Admin,
        Some(json!({"name": "A"})),
    )
    .await;
    assert_eq!((code, &cache), (201, &no_store), "create partner: {v}");
    let key = v["api_key"].as_str().unwrap().to_string();
    let (code, cache, v) = call(
        Method::POST,
        "/admin/v1/partners",
        Auth::Admin,
        Some(json!({"name": "B", "webhook_url": rx.url})),
    )
    .await;
    assert_eq!((code, &cache), (201, &no_store), "create with webhook: {v}");
    assert!(v["webhook_secret"].is_string(), "{v}");

    let (code, cache, v) = call(
        Method::PUT,
        "/v1/webhook",
        Auth::Key(&key),
        Some(json!({"url": rx.url})),
    )
    .await;
    assert_eq!((code, &cache), (200, &no_store), "PUT /v1/webhook: {v}");
    assert!(v["secret"].is_string(), "{v}");
    let (code, cache, v) = call(
        Method::POST,
        "/v1/webhook/rotate-secret",
        Auth::Key(&key),
        None,
    )
    .await;
    assert_eq!((code, &cache), (200, &no_store), "rotate-secret: {v}");
    assert!(v["secret"].is_string(), "{v}");

    let (code, cache, v) = call(Method::GET, "/v1/webhook", Auth::Key(&key), None).await;
    assert_eq!(
        (code, cache),
        (200, None),
        "GET /v1/webhook shows no secret: {v}"
    );
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_pings_are_signed_and_a_rotated_secret_signs_alongside_for_24_hours() {
    let rx = Receiver::start(Reply::status(200)).await;
    let dir = tempdir();
    let t0 = now_secs();
    let clock = Arc::new(ManualClock::new(t0));
    let gate = Gate::start(dir.path(), true, clock.clone()).await;
    let (key, _) = gate.partner("Acme", None).await;
    let (code, v) = gate
        .v1(
            Method::PUT,
            "/v1/webhook",
            &key,
            Some(json!({"url": rx.url})),
        )
        .await;
    assert_eq!(code, 200, "PUT /v1/webhook: {v}");
    let old = v["secret"].as_str().expect("secret shown once").to_string();
    assert_secret_shape(&old);
    let w = gate.webhook(&key).await;
    assert_eq!(w["url"], rx.url.as_str());
    assert_eq!(w["status"], "active");
    assert!(
        !w.to_string().contains(&old),
        "GET /v1/webhook must not show the secret again: {w}"
    );

    let ping = gate.ping(&key).await;
    let hit = rx.wait_for(1, SOON, "the test ping").await.remove(0);
    assert_common_headers(&hit, &ping, 1);
    let body = hit.json();
    assert_eq!(body["event"], "ping", "{body}");
    assert_eq!(body["timestamp"], text(t0));
    assert_signed(&hit, &[&old]);
    let sigs = standard_signatures(&hit);
    peers_verify(dir.path(), &hit, &old, &[(&old, sigs[0].clone())]).await;

    // Rotation: a new secret, shown once; both sign for 24 h.
    let (code, v) = gate
        .v1(Method::POST, "/v1/webhook/rotate-secret", &key, None)
        .await;
    assert_eq!(code, 200, "rotate-secret: {v}");
    let new = v["secret"].as_str().expect("new secret shown").to_string();
    assert_secret_shape(&new);
    assert_ne!(new, old);
    let w = gate.webhook(&key).await;
    assert!(
        !w.to_string().contains(&new) && !w.to_string().contains(&old),
        "{w}"
    );
    assert_eq!(w["previous_secret_valid_until"], text(t0 + Span::hours(24)));

    let ping = gate.ping(&key).await;
    let hit = rx.wait_for(2, SOON, "ping after rotation").await.remove(1);
    assert_eq!(hit.id(), ping);
    let sigs = standard_signatures(&hit);
    assert_eq!(
        sigs.len(),
        2,
        "two v1 signatures during the overlap: {sigs:?}"
    );
    assert!(sigs.iter().all(|s| s.starts_with("v1,")));
    // The seed header is signed with the new secret; each v1 signature with its own secret.
    assert_signed(&hit, &[&new, &old]);
    assert_ne!(
        hit.header("x-webhook-signature"),
        seed_signature(&old, &hit.body)
    );
    let full = hit.header("webhook-signature");
    peers_verify(
        dir.path(),
        &hit,
        &new,
        &[
            (&new, sigs[0].clone()),
            (&old, sigs[1].clone()),
            (&new, full.clone()),
            (&old, full),
        ],
    )
    .await;

    // Just before the overlap ends: still two. At 24 h: only the new one.
    clock.advance(Span::hours(24) - Span::seconds(1));
    gate.ping(&key).await;
    let hit = rx.wait_for(3, SOON, "ping at 23:59:59").await.remove(2);
    assert_signed(&hit, &[&new, &old]);
    clock.advance(Span::seconds(1));
    gate.ping(&key).await;
    let hit = rx.wait_for(4, SOON, "ping at 24 h").await.remove(3);
    assert_eq!(
        standard_signatures(&hit).len(),
        1,
        "only the new secret signs after 24 h"
    );
    assert_signed(&hit, &[&new]);
    assert!(gate.webhook(&key).await["previous_secret_valid_until"].is_null());
    gate.stop().await;
}

/// Rotates the webhook secret; returns the new one.
async fn rotate(gate: &Gate, key: &str) -> String {
    let (code, v) = gate
        .v1(Method::POST, "/v1/webhook/rotate-secret", key, None)
        .await;
    assert_eq!(code, 200, "rotate-secret: {v}");
    v["secret"].as_str().expect("new secret shown").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_rotation_within_24_hours_keeps_the_first_old_secret_signing_for_its_24_hours() {
    let rx = Receiver::start(Reply::status(200)).await;
    let dir = tempdir();
    let t0 = now_secs();
    let clock = Arc::new(ManualClock::new(t0));
    let gate = Gate::start(dir.path(), true, clock.clone()).await;
    let (key, _) = gate.partner("Acme", None).await;
    let (code, v) = gate
        .v1(
            Method::PUT,
            "/v1/webhook",
            &key,
            Some(json!({"url": rx.url})),
        )
        .await;
    assert_eq!(code, 200, "PUT /v1/webhook: {v}");
    let s0 = v["secret"].as_str().expect("secret shown once").to_string();

    // s0 → s1, and 2 s later s1 → s2: s0 and s1 each sign for 24 h from their own rotation.
    let s1 = rotate(&gate, &key).await;
    clock.advance(Span::seconds(2));
    let s2 = rotate(&gate, &key).await;
    assert_eq!(
        gate.webhook(&key).await["previous_secret_valid_until"],
        text(t0 + Span::seconds(2) + Span::hours(24))
    );
    gate.ping(&key).await;
    let hit = rx
        .wait_for(1, SOON, "ping after two rotations")
        .await
        .remove(0);
    // The seed header with the current secret only; one v1 signature per live secret.
    assert_signed(&hit, &[&s2, &s1, &s0]);

    // Just before s0's 24 h end: all three. At its end: s0 no longer signs; then s1 neither.
    clock.advance(Span::hours(24) - Span::seconds(3));
    gate.ping(&key).await;
    let hit = rx
        .wait_for(2, SOON, "ping at s0's 23:59:59")
        .await
        .remove(1);
    assert_signed(&hit, &[&s2, &s1, &s0]);
    clock.advance(Span::seconds(1));
    gate.ping(&key).await;
    let hit = rx.wait_for(3, SOON, "ping at s0's 24 h").await.remove(2);
    assert_signed(&hit, &[&s2, &s1]);

    // A restart (snapshot or full fold) keeps the same secrets.
    gate.stop().await;
    let gate = Gate::start(dir.path(), true, clock.clone()).await;
    gate.ping(&key).await;
    let hit = rx.wait_for(4, SOON, "ping after a restart").await.remove(3);
    assert_signed(&hit, &[&s2, &s1]);
    clock.advance(Span::seconds(2));
    gate.ping(&key).await;
    let hit = rx.wait_for(5, SOON, "ping at s1's 24 h").await.remove(4);
    assert_signed(&hit, &[&s2]);
    assert!(gate.webhook(&key).await["previous_secret_valid_until"].is_null());
    gate.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 4. Isolation between partners
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_endpoint_never_delays_another_partners_deliveries() {
    let started = Instant::now();
    let hangs = Receiver::start(Reply::status(200).delay(Duration::from_secs(30))).await;
    let healthy = Receiver::start(Reply::status(200)).await;
    healthy.then([Reply::status(500)]);
    let dir = tempdir();
    let t0 = now_secs();
    let clock = Arc::new(ManualClock::new(t0));
    let gate = Gate::start(dir.path(), true, clock.clone()).await;
    let (key_a, _) = gate.partner("A", Some(&hangs.url)).await;
    let (key_b, _) = gate.partner("B", Some(&healthy.url)).await;

    // B has a delivery waiting for its retry (+1 min).
    let b0 = session_delivery_id(&gate.end_one(&key_b).await);
    healthy.wait_for(1, SOON, "B's first delivery").await;
    gate.wait_attempts(&key_b, &b0, 1).await;

    // A's endpoint takes every request and never answers in time.
    let mut a_ids = Vec::new();
    for _ in 0..5 {
        a_ids.push(session_delivery_id(&gate.end_one(&key_a).await));
    }
    let a_hits = hangs
        .wait_for(1, SOON, "A's requests reach its endpoint")
        .await;
    let a_first = a_hits[0].at;

    // B's five new deliveries arrive at once.
    let mut b_ids = Vec::new();
    for _ in 0..5 {
        b_ids.push(session_delivery_id(&gate.end_one(&key_b).await));
    }
    let hits = healthy
        .wait_for(6, Duration::from_secs(2), "B's deliveries while A hangs")
        .await;
    let got: Vec<String> = hits[1..].iter().map(Hit::id).collect();
    for id in &b_ids {
        assert!(got.contains(id), "B's {id} did not arrive: {got:?}");
    }
    for id in &b_ids {
        gate.wait_delivery(&key_b, id, "B's delivery recorded", |d| {
            d["status"] == "delivered"
        })
        .await;
    }
    // B's retry, due on the virtual clock, is not held up by A's requests in flight.
    clock.advance(Span::minutes(1));
    let hit = healthy
        .wait_for(
            7,
            Duration::from_secs(2),
            "B's retry (due after a clock advance) while A's requests hang",
        )
        .await
        .remove(6);
    assert_eq!(hit.id(), b0);
    assert_eq!(hit.attempt(), 2);
    for id in &a_ids {
        let d = gate.delivery(&key_a, id).await.expect("A's delivery");
        assert!(
            d["attempts"].as_array().unwrap().is_empty(),
            "A's request is still hanging: {d}"
        );
    }
    assert!(
        a_first.elapsed() < Duration::from_secs(8),
        "B's deliveries went out while A's were stuck"
    );

    // A's attempts end as 10 s time-outs (real time), recorded as failures.
    let deadline = a_first + Duration::from_secs(14);
    loop {
        let ds = gate.deliveries(&key_a, None).await;
        let timed_out: Vec<&Value> = ds
            .iter()
            .filter_map(|d| d["attempts"].as_array()?.first())
            .collect();
        if !timed_out.is_empty() {
            for a in &timed_out {
                assert!(a["status_code"].is_null(), "{a}");
                assert_eq!(a["delivered"], false);
                let err = a["error"].as_str().unwrap_or_default();
                assert!(err.contains("timed out"), "error: {a}");
                assert!(a["latency_ms"].as_u64().unwrap() >= 9_500, "{a}");
            }
            assert!(
                a_first.elapsed() >= Duration::from_millis(9_500),
                "recorded before the 10 s timeout"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "A's hanging attempts were never recorded as timed out"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("isolation test took {:?}", started.elapsed());
    drop(gate);
}

/// A receiver written on a bare socket, to answer in ways an HTTP framework will not: each
/// connection reads one request, writes `heads[i]` (status line, headers and the start of a
/// body) at once, then keeps the connection open without finishing the body (`hold`) or
/// closes it mid-body. Returns the URL and the number of requests read so far.
async fn raw_receiver(
    heads: Vec<(&'static str, bool)>,
) -> (String, Arc<std::sync::atomic::AtomicUsize>, JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = seen.clone();
    let task = tokio::spawn(async move {
        for (head, hold) in heads {
            let (mut sock, _) = listener.accept().await.unwrap();
            let counter = counter.clone();
            tokio::spawn(async move {
                // The whole request: headers, then Content-Length bytes.
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = sock.read(&mut chunk).await.unwrap();
                    assert!(n > 0, "the request ended early");
                    buf.extend_from_slice(&chunk[..n]);
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let request = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let len: usize = request
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    if buf.len() >= end + 4 + len {
                        break;
                    }
                }
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                sock.write_all(head.as_bytes()).await.unwrap();
                sock.flush().await.unwrap();
                if hold {
                    // The rest of the body never comes while palmgate waits.
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
            });
        }
    });
    (url, seen, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_answered_at_once_counts_even_when_its_body_is_slow_or_cut() {
    // SPEC 4: "Success is any 2xx answered within 10 s." The status line comes at once; the
    // body promises 100 bytes and sends 2, then nothing (held) or closes (cut).
    let (url, seen, server) = raw_receiver(vec![
        (
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\nok",
            true,
        ),
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\nok",
            false,
        ),
        (
            "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 100\r\n\r\ndown",
            true,
        ),
    ])
    .await;
    let dir = tempdir();
    let t0 = now_secs();
    let clock = Arc::new(ManualClock::new(t0));
    let gate = Gate::start(dir.path(), true, clock.clone()).await;
    let (key, _) = gate.partner("Acme", Some(&url)).await;

    // A 200 whose body never finishes: delivered, with the status and the excerpt that came.
    let started = Instant::now();
    let id = session_delivery_id(&gate.end_one(&key).await);
    let d = gate
        .wait_delivery(&key, &id, "a 200 with a slow body", |d| {
            d["attempts"].as_array().is_some_and(|a| !a.is_empty())
        })
        .await;
    let a = &d["attempts"][0];
    assert_eq!(d["status"], "delivered", "{d}");
    assert_eq!(a["status_code"], 200, "{d}");
    assert_eq!(a["delivered"], true, "{d}");
    assert!(a["error"].is_null(), "{d}");
    let response = a["response"].as_str().unwrap();
    assert!(response.starts_with("ok"), "the excerpt that came: {d}");
    assert!(
        response.contains("not received in full"),
        "the cut body is noted: {d}"
    );
    assert!(d["next_attempt_at"].is_null(), "no retry: {d}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "recorded without waiting for the body: {:?}",
        started.elapsed()
    );

    // A 200 whose connection closes mid-body: delivered too.
    let id = session_delivery_id(&gate.end_one(&key).await);
    let d = gate
        .wait_delivery(&key, &id, "a 200 with a body broken off", |d| {
            d["attempts"].as_array().is_some_and(|a| !a.is_empty())
        })
        .await;
    let a = &d["attempts"][0];
    assert_eq!(d["status"], "delivered", "{d}");
    assert_eq!(a["status_code"], 200, "{d}");
    assert!(a["error"].is_null(), "{d}");
    let response = a["response"].as_str().unwrap();
    assert!(response.starts_with("ok"), "{d}");
    assert!(
        response.contains("broken off"),
        "the cut body is noted: {d}"
    );

    // A 500 with a slow body keeps its status code; it is a failure, retried on schedule.
    let id = session_delivery_id(&gate.end_one(&key).await);
    let d = gate
        .wait_delivery(&key, &id, "a 500 with a slow body", |d| {
            d["attempts"].as_array().is_some_and(|a| !a.is_empty())
        })
        .await;
    let a = &d["attempts"][0];
    assert_eq!(a["status_code"], 500, "{d}");
    assert_eq!(a["delivered"], false, "{d}");
    assert_eq!(d["status"], "pending", "{d}");
    assert_eq!(d["next_attempt_at"], text(t0 + Span::minutes(1)), "{d}");
    assert!(a["response"].as_str().unwrap().starts_with("down"), "{d}");
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 3);
    server.abort();
    drop(gate);
}

// ---------------------------------------------------------------------------------------------
// 5. SSRF guard and redirects
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_urls_into_private_networks_are_refused_and_redirects_not_followed() {
    // Without allow_networks: loopback, private, link-local and metadata addresses are refused.
    let dir = tempdir();
    let t0 = now_secs();
    let clock = Arc::new(ManualClock::new(t0));
    let gate = Gate::start(dir.path(), false, clock.clone()).await;
    let (key, _) = gate.partner("Acme", None).await;
    for (url, names) in [
        ("http://10.0.0.1/x", &["10.0.0.1"][..]),
        ("http://169.254.169.254/", &["169.254.169.254"][..]),
        ("http://[::1]/", &["::1"][..]),
        ("http://127.0.0.1:9/hook", &["127.0.0.1"][..]),
    ] {
        let (code, v) = gate
            .v1(
                Method::PUT,
                "/v1/webhook",
                &key,
                Some(json!({ "url": url })),
            )
            .await;
        assert_eq!(code, 400, "PUT {url}: {v}");
        let msg = v["message"].as_str().unwrap_or_default();
        assert!(
            names.iter().any(|n| msg.contains(n)),
            "the message for {url} names the address: {msg:?}"
        );
    }
    // IPv6 literals that carry an IPv4 are judged by that IPv4, and site-local is refused.
    for url in [
        "http://[::127.0.0.1]/",
        "http://[::ffff:0:7f00:1]/",
        "http://[2002:7f00:1::]/",
        "http://[64:ff9b::a9fe:a9fe]/",
        "http://[64:ff9b:1::1]/",
        "http://[fec0::1]/",
    ] {
        let (code, v) = gate
            .v1(
                Method::PUT,
                "/v1/webhook",
                &key,
                Some(json!({ "url": url })),
            )
            .await;
        assert_eq!(code, 400, "PUT {url}: {v}");
        let msg = v["message"].as_str().unwrap_or_default();
        assert!(
            msg.contains("webhooks.allow_networks"),
            "the message for {url} says how to allow it: {msg:?}"
        );
    }
    // Whether a name resolves on the gateway's network, and to what, is not told to a
    // partner: a name resolving to loopback and a name that does not resolve get one answer.
    let mut refusals = Vec::new();
    for url in ["http://localhost:1/", "http://no-such-host.invalid/hook"] {
        let (code, v) = gate
            .v1(
                Method::PUT,
                "/v1/webhook",
                &key,
                Some(json!({ "url": url })),
            )
            .await;
        assert_eq!(code, 400, "PUT {url}: {v}");
        refusals.push(v["message"].as_str().unwrap_or_default().to_string());
    }
    assert_eq!(
        refusals[0], refusals[1],
        "a name resolving inward and one not resolving are told apart"
    );
    assert_eq!(
        refusals[0],
        "url must resolve to a public address; list its network in webhooks.allow_networks \
         to allow a private one (a name that does not resolve from the gateway is refused the \
         same way)"
    );
    let (code, v) = gate
        .send(
            Method::POST,
            "/admin/v1/partners",
            Auth::Admin,
            Some(json!({"name": "Evil", "webhook_url": "http://169.254.169.254/latest"})),
        )
        .await;
    assert_eq!(code, 400, "partner creation checks the URL too: {v}");
    let (code, _) = gate.v1(Method::GET, "/v1/webhook", &key, None).await;
    assert_eq!(code, 404, "no webhook was set");
    gate.stop().await;

    // With 127.0.0.0/8 allowed: accepted. A redirect is an answer, not followed.
    let target = Receiver::start(Reply::status(200)).await;
    let redirector = Receiver::start(Reply::status(302).location(&target.url)).await;
    let gate = Gate::start(dir.path(), true, clock.clone()).await;
    let (code, v) = gate
        .v1(
            Method::PUT,
            "/v1/webhook",
            &key,
            Some(json!({ "url": redirector.url })),
        )
        .await;
    assert_eq!(code, 200, "a loopback URL is accepted when allowed: {v}");
    let ping = gate.ping(&key).await;
    redirector.wait_for(1, SOON, "the ping").await;
    let d = gate.wait_attempts(&key, &ping, 1).await;
    let a = &d["attempts"][0];
    assert_eq!(a["status_code"], 302, "{d}");
    assert_eq!(a["delivered"], false, "{d}");
    assert_eq!(d["status"], "pending", "a 302 is retried: {d}");
    let error = a["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("not followed") && error.contains(&target.url),
        "the attempt says the redirect was not followed, and where it pointed: {d}"
    );
    let w = gate.webhook(&key).await;
    assert!(
        w["last_failure_reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("HTTP 302: redirect to ")),
        "{w}"
    );
    target.stays(0, "the redirect target got nothing").await;
    gate.stop().await;

    // Restarted without allow_networks, the stored loopback URL is refused at connect time.
    let gate = Gate::start(dir.path(), false, clock.clone()).await;
    let ping = gate.ping(&key).await;
    let d = gate.wait_attempts(&key, &ping, 1).await;
    let a = &d["attempts"][0];
    assert!(a["status_code"].is_null(), "{d}");
    assert_eq!(a["delivered"], false);
    assert!(
        a["error"]
            .as_str()
            .unwrap_or_default()
            .contains("127.0.0.1"),
        "the refusal names the address: {d}"
    );
    redirector
        .stays(1, "nothing reached the refused endpoint")
        .await;
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_url_validation_names_each_fault() {
    let dir = tempdir();
    let clock = Arc::new(ManualClock::new(now_secs()));
    let gate = Gate::start(dir.path(), false, clock).await;
    let (key, _) = gate.partner("Acme", None).await;
    let put = |body: Value| {
        let gate = &gate;
        let key = &key;
        async move { gate.v1(Method::PUT, "/v1/webhook", key, Some(body)).await }
    };
    // 2048 characters of which most take two bytes (4 000+ bytes): within the limit.
    let base = "https://93.184.216.34/";
    let longest = format!("{base}{}", "é".repeat(2048 - base.len()));
    assert_eq!(longest.chars().count(), 2048);
    assert!(longest.len() > 2048);
    for (body, message) in [
        (json!({ "url": "" }), "url must not be empty"),
        (json!({ "url": "   " }), "url must not be empty"),
        (json!({}), "url is required"),
        (json!({ "url": 7 }), "url must be a string"),
        (
            json!({ "url": format!("{longest}é") }),
            "url must be at most 2048 characters",
        ),
    ] {
        let (code, v) = put(body.clone()).await;
        assert_eq!(code, 400, "PUT {body}: {v}");
        assert_eq!(v["message"], message, "PUT {body}: {v}");
    }
    let (code, v) = gate.v1(Method::GET, "/v1/webhook", &key, None).await;
    assert_eq!(code, 404, "no webhook was set: {v}");
    let (code, v) = put(json!({ "url": longest })).await;
    assert_eq!(code, 200, "a URL of 2048 characters is accepted: {v}");
    assert_eq!(v["url"], longest.as_str());
    gate.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 6. Durability across a restart
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_pending_at_shutdown_is_sent_once_after_restart_at_its_due_time() {
    let rx = Receiver::start(Reply::status(200)).await;
    rx.then([Reply::status(500)]);
    let dir = tempdir();
    let t0 = now_secs();
    let clock = Arc::new(ManualClock::new(t0));
    let gate = Gate::start(dir.path(), true, clock.clone()).await;
    let (key, secret) = gate.partner("Acme", Some(&rx.url)).await;
    let secret = secret.unwrap();
    let sid = gate.end_one(&key).await;
    let id = session_delivery_id(&sid);
    let first = rx.wait_for(1, SOON, "attempt 1").await.remove(0);
    let d = gate.wait_attempts(&key, &id, 1).await;
    assert_eq!(d["next_attempt_at"], text(t0 + Span::minutes(1)));
    gate.stop().await;

    // A new process on the same files, a clock at the same time.
    let clock = Arc::new(ManualClock::new(t0));
    let gate = Gate::start(dir.path(), true, clock.clone()).await;
    let d = gate
        .delivery(&key, &id)
        .await
        .expect("the delivery survived");
    assert_eq!(d["status"], "pending", "{d}");
    assert_eq!(d["next_attempt_at"], text(t0 + Span::minutes(1)), "{d}");
    rx.stays(1, "not sent again before its due time").await;
    let hit = step_to(&clock, &rx, t0 + Span::minutes(1), 2).await;
    assert_eq!(hit.id(), id, "the same X-Webhook-Id after a restart");
    assert_eq!(hit.attempt(), 2, "the next attempt number after a restart");
    assert_eq!(hit.body, first.body, "the same bytes after a restart");
    assert_signed(&hit, &[&secret]);
    let d = gate
        .wait_delivery(&key, &id, "delivered", |d| d["status"] == "delivered")
        .await;
    assert_eq!(d["attempts"].as_array().unwrap().len(), 2, "{d}");
    clock.advance(Span::hours(3));
    rx.stays(2, "sent exactly once after the restart").await;
    gate.stop().await;

    // And once more: a delivered delivery is not sent again by a later start.
    let gate = Gate::start(
        dir.path(),
        true,
        Arc::new(ManualClock::new(t0 + Span::hours(4))),
    )
    .await;
    rx.stays(2, "a delivered delivery stays delivered across restarts")
        .await;
    assert_eq!(
        gate.delivery(&key, &id).await.unwrap()["status"],
        "delivered"
    );
    gate.stop().await;
}
