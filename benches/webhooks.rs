//! Webhook delivery benchmarks (issue 4): burst throughput when 10k sessions end at once, and
//! session-end → first-attempt latency (healthy receiver; and while another partner's endpoint
//! hangs). `cargo bench --bench webhooks`.
//!
//! palmgate runs in-process on a `ManualClock` (so 10k sessions can expire at one instant);
//! receivers are local axum servers that record each request's arrival `Instant`.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use palmgate::app::App;
use palmgate::app::clock::{ManualClock, OsRng};
use palmgate::config::Config;
use palmgate::core::{Command, Language, PartnerId, SessionId, SessionKind};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ADMIN: &str = "bench-admin";

struct Inbox {
    hits: Mutex<Vec<(Instant, Bytes)>>,
    delay: Duration,
}

async fn receive(State(inbox): State<Arc<Inbox>>, body: Bytes) -> StatusCode {
    inbox.hits.lock().unwrap().push((Instant::now(), body));
    if !inbox.delay.is_zero() {
        tokio::time::sleep(inbox.delay).await;
    }
    StatusCode::OK
}

struct Receiver {
    url: String,
    inbox: Arc<Inbox>,
}

impl Receiver {
    async fn start(delay: Duration) -> Receiver {
        let inbox = Arc::new(Inbox {
            hits: Mutex::new(Vec::new()),
            delay,
        });
        let router = axum::Router::new()
            .fallback(receive)
            .with_state(inbox.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Receiver {
            url: format!("http://{addr}/hook"),
            inbox,
        }
    }
    fn count(&self) -> usize {
        self.inbox.hits.lock().unwrap().len()
    }
    fn hits(&self) -> Vec<(Instant, Bytes)> {
        self.inbox.hits.lock().unwrap().clone()
    }
    async fn wait_for(&self, n: usize, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while self.count() < n {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }
}

fn find_session_id(v: &Value) -> Option<String> {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(s)) = m.get("session_id") {
                return Some(s.clone());
            }
            m.values().find_map(find_session_id)
        }
        Value::Array(a) => a.iter().find_map(find_session_id),
        _ => None,
    }
}

fn config(dir: &std::path::Path) -> Config {
    let d = dir.display();
    let text = format!(
        "site = \"\"\n[http]\nlisten = \"127.0.0.1:0\"\n\
         [store]\npath = \"{d}/events.db\"\n\
         [secrets]\nkey_file = \"{d}/master.key\"\nkey_store = \"{d}/keys.db\"\n\
         [mqtt.embedded]\nlisten = \"127.0.0.1:0\"\n\
         [webhooks]\nallow_networks = [\"127.0.0.0/8\"]\n\
         [admin]\ntoken = \"{ADMIN}\"\n\
         [rate_limit]\nper_minute = 100000000\nunauthenticated_per_minute = 100000000\n"
    );
    let path = dir.join("palmgate.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(Some(&path), &[]).expect("config loads")
}

struct Gate {
    base: String,
    app: Arc<App>,
    http: reqwest::Client,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Gate {
    /// Creates a partner with a webhook to `url`; returns (id, api key).
    async fn partner(&self, name: &str, url: &str) -> (PartnerId, String) {
        let r = self
            .http
            .post(format!("{}/admin/v1/partners", self.base))
            .bearer_auth(ADMIN)
            .json(&json!({"name": name, "webhook_url": url}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201);
        let v: Value = r.json().await.unwrap();
        let id = v["id"]
            .as_str()
            .or(v["partner_id"].as_str())
            .unwrap_or_else(|| panic!("partner id in {v}"));
        (
            PartnerId::parse(id).unwrap(),
            v["api_key"].as_str().unwrap().to_string(),
        )
    }

    /// `n` identify sessions for `partner`, created directly through the app (concurrently).
    async fn sessions(&self, partner: PartnerId, n: usize) -> Vec<SessionId> {
        let mut set = tokio::task::JoinSet::new();
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            if set.len() >= 256
                && let Some(r) = set.join_next().await
            {
                out.push(r.unwrap());
            }
            let app = self.app.clone();
            set.spawn(async move {
                let session_id = SessionId::from_random(app.rng.bytes16());
                let token_hash =
                    palmgate::app::secrets::hash_secret(&app.keys.session_token(session_id));
                app.execute(Command::CreateSession {
                    partner_id: partner,
                    session_id,
                    token_hash,
                    kind: SessionKind::Identify,
                    language: Language::En,
                    enroll: None,
                    idempotency: None,
                    ttl: app.ttl(),
                })
                .await
                .expect("session created");
                session_id
            });
        }
        while let Some(r) = set.join_next().await {
            out.push(r.unwrap());
        }
        out
    }

    /// Cancels `ids` over HTTP, one started every `every`; returns per-session the instant the
    /// cancel response arrived.
    async fn cancel_paced(
        &self,
        key: &str,
        ids: &[SessionId],
        every: Duration,
    ) -> HashMap<String, Instant> {
        let mut tick = tokio::time::interval(every);
        let mut set = tokio::task::JoinSet::new();
        for id in ids {
            tick.tick().await;
            let http = self.http.clone();
            let url = format!("{}/v1/sessions/{id}/cancel", self.base);
            let key = key.to_string();
            let id = id.to_string();
            set.spawn(async move {
                let r = http
                    .post(url)
                    .header("x-api-key", key)
                    .send()
                    .await
                    .unwrap();
                let done = Instant::now();
                assert!(r.status().is_success(), "cancel: {}", r.status());
                let _ = r.bytes().await;
                (id, done)
            });
        }
        let mut out = HashMap::new();
        while let Some(r) = set.join_next().await {
            let (id, t) = r.unwrap();
            out.insert(id, t);
        }
        out
    }
}

async fn start_gate(dir: &std::path::Path, clock: Arc<ManualClock>) -> Gate {
    let server = palmgate::app::start_with(config(dir), clock, Arc::new(OsRng))
        .await
        .expect("palmgate starts");
    let base = format!("http://{}", server.addr);
    let app = server.app.clone();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.serve(async move {
        let _ = rx.await;
    }));
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(256)
        .build()
        .unwrap();
    for _ in 0..500 {
        if http
            .get(format!("{base}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Gate {
        base,
        app,
        http,
        _stop: tx,
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Latencies (ms) from cancel response to the receiver's arrival, matched by session id.
fn latencies(cancelled: &HashMap<String, Instant>, hits: &[(Instant, Bytes)]) -> Vec<f64> {
    let mut first: HashMap<String, Instant> = HashMap::new();
    for (at, body) in hits {
        let Ok(v) = serde_json::from_slice::<Value>(body) else {
            continue;
        };
        if let Some(id) = find_session_id(&v) {
            first.entry(id).or_insert(*at);
        }
    }
    let mut out: Vec<f64> = cancelled
        .iter()
        .filter_map(|(id, done)| {
            let at = first.get(id)?;
            Some(if *at >= *done {
                at.duration_since(*done).as_secs_f64() * 1e3
            } else {
                -(done.duration_since(*at).as_secs_f64() * 1e3)
            })
        })
        .collect();
    out.sort_by(|a, b| a.partial_cmp(b).unwrap());
    out
}

fn report_latency(what: &str, l: &[f64], expected: usize) {
    println!(
        "{what}: n={} (of {expected}) p50={:.2} ms p90={:.2} ms p99={:.2} ms max={:.2} ms min={:.2} ms  target p99<=50 ms: {}",
        l.len(),
        pct(l, 50.0),
        pct(l, 90.0),
        pct(l, 99.0),
        l.last().copied().unwrap_or(f64::NAN),
        l.first().copied().unwrap_or(f64::NAN),
        if l.len() == expected && pct(l, 99.0) <= 50.0 {
            "MET"
        } else {
            "NOT MET"
        }
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    let n: usize = std::env::var("BENCH_SESSIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let paced: usize = 500;
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
    let gate = start_gate(dir.path(), clock.clone()).await;

    // 1. Burst: n identify sessions expire at one instant.
    let recv_a = Receiver::start(Duration::ZERO).await;
    let (pa, _key_a) = gate.partner("Burst", &recv_a.url).await;
    let t = Instant::now();
    let ids = gate.sessions(pa, n).await;
    println!(
        "created {} sessions in {:.2} s",
        ids.len(),
        t.elapsed().as_secs_f64()
    );
    let ended = Instant::now();
    clock.advance(gate.app.ttl() + chrono::Duration::seconds(1));
    let ok = recv_a.wait_for(n, Duration::from_secs(300)).await;
    let hits = recv_a.hits();
    let first = hits.first().map(|h| h.0).unwrap();
    let last = hits.last().map(|h| h.0).unwrap();
    let span = last.duration_since(first).as_secs_f64();
    let rate = (hits.len() - 1) as f64 / span;
    println!(
        "burst: {} deliveries (all arrived: {ok}); end→first {:.1} ms; first→last {:.3} s = {:.0} deliveries/s; end→last {:.3} s = {:.0}/s  target >=5000/s: {}",
        hits.len(),
        first.duration_since(ended).as_secs_f64() * 1e3,
        span,
        rate,
        last.duration_since(ended).as_secs_f64(),
        hits.len() as f64 / last.duration_since(ended).as_secs_f64(),
        if ok && rate >= 5000.0 {
            "MET"
        } else {
            "NOT MET"
        }
    );
    // Let the recording of attempts settle.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 2. Healthy receiver, cancels at 200/s.
    let recv_b = Receiver::start(Duration::ZERO).await;
    let (pb, key_b) = gate.partner("Healthy", &recv_b.url).await;
    let ids = gate.sessions(pb, paced).await;
    let cancelled = gate
        .cancel_paced(&key_b, &ids, Duration::from_millis(5))
        .await;
    recv_b.wait_for(paced, Duration::from_secs(20)).await;
    let l = latencies(&cancelled, &recv_b.hits());
    report_latency("healthy: cancel response → first attempt", &l, paced);

    // 3. Partner H's endpoint hangs 30 s; a burst of its ends first, then partner B2 measured.
    let recv_h = Receiver::start(Duration::from_secs(30)).await;
    let (ph, key_h) = gate.partner("Hanging", &recv_h.url).await;
    let recv_c = Receiver::start(Duration::ZERO).await;
    let (pc, key_c) = gate.partner("Neighbour", &recv_c.url).await;
    let hang_ids = gate.sessions(ph, 200).await;
    let ids_c = gate.sessions(pc, paced).await;
    let hang = gate
        .cancel_paced(&key_h, &hang_ids, Duration::from_micros(500))
        .await;
    recv_h.wait_for(32, Duration::from_secs(5)).await;
    println!(
        "hanging partner: {} ends, {} requests hanging at its endpoint",
        hang.len(),
        recv_h.count()
    );
    let t = Instant::now();
    let cancelled = gate
        .cancel_paced(&key_c, &ids_c, Duration::from_millis(5))
        .await;
    recv_c.wait_for(paced, Duration::from_secs(20)).await;
    let measured_in = t.elapsed();
    let l = latencies(&cancelled, &recv_c.hits());
    report_latency(
        &format!(
            "neighbour of a hanging endpoint (measured within {:.1} s of the hang, < 10 s timeout)",
            measured_in.as_secs_f64()
        ),
        &l,
        paced,
    );
    std::process::exit(0);
}
