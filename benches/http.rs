//! `POST /v1/identify` under `wrk -t2 -c50` on loopback: palmgate (durable appends) side by
//! side, in the same run, with a bare axum handler that returns the same 201 JSON without
//! persistence.
//!
//! `cargo bench --bench http`. Needs `wrk` on the PATH (Debian: `apt-get install wrk`); without
//! it the bench says so and exits 0. Settings (environment):
//! - `BENCH_SECS` (default 5, or `--secs N`): measured seconds per server and round;
//! - `BENCH_WARMUP` (default 2): warm-up seconds before each measurement;
//! - `BENCH_ROUNDS` (default 3): rounds of bare → palmgate, each with fresh servers; the
//!   verdicts use the medians;
//! - `BENCH_CONNECTIONS` (default 50), `BENCH_THREADS` (default 2): wrk's `-c` and `-t`;
//! - `BENCH_TMPFS` (default 1 when `/dev/shm` exists): also measure the same palmgate with its
//!   files on tmpfs, where fsync costs next to nothing — a diagnostic (NOT durable) that
//!   separates the disk's share of the time from HTTP, app and SQLite CPU;
//! - `PALMGATE_*`: palmgate's config, as for `palmgate serve` (over the bench's own settings).
//!
//! Besides req/s and latency, each measurement reports the CPU time this process spent per
//! request (the server's threads; wrk runs as another process), which other tenants of the
//! machine disturb much less than throughput.
//!
//! All servers run in this process on one tokio runtime and are measured one after another,
//! never at the same time: wrk and the server under test share the machine's cores. Each
//! server is fresh (palmgate: new temp dir, new store, new partners) and warmed up first.
//!
//! palmgate's durable throughput follows the disk's fsync latency, which on this kind of host
//! flips between ≈ 0.15 ms and ≈ 4 ms with other I/O: every measurement is fenced by fsync
//! probes and palmgate's medians and verdicts are given per disk state.
//!
//! Rate limits: palmgate's bucket arithmetic caps a partner near 1000 req/s once a burst of
//! 60 000 is spent, whatever `per_minute` says, so the bench gives every wrk thread its own
//! fresh partner for the warm-up and again for the measurement, and reports non-2xx answers.
//!
//! Targets (project issue): palmgate ≥ 40 % of the bare handler's throughput; p99 ≤ 10 ms.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use chrono::{SecondsFormat, Utc};
use palmgate::app::clock::{OsRng, Rng};
use palmgate::config::{Config, DEFAULTS};
use serde::Serialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const ADMIN_TOKEN: &str = "bench-admin-token";
const TARGET_RATIO: f64 = 0.40;
const TARGET_P99_MS: f64 = 10.0;
/// tmpfs, for the diagnostic run.
const SHM: &str = "/dev/shm";

fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} must be a number, not {v:?}"))
        })
        .unwrap_or(default)
}

struct Settings {
    secs: u64,
    warmup: u64,
    rounds: usize,
    connections: usize,
    threads: usize,
    tmpfs: bool,
}

fn settings() -> Settings {
    let mut secs: u64 = env_num("BENCH_SECS", 5);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if let Some(v) = a.strip_prefix("--secs=") {
            secs = v.parse().expect("--secs takes whole seconds");
        } else if a == "--secs" {
            secs = args
                .next()
                .and_then(|v| v.parse().ok())
                .expect("--secs takes whole seconds");
        }
        // Anything else (cargo passes `--bench`) is ignored.
    }
    Settings {
        secs: secs.max(1),
        warmup: env_num("BENCH_WARMUP", 2),
        rounds: env_num("BENCH_ROUNDS", 3usize).max(1),
        connections: env_num("BENCH_CONNECTIONS", 50),
        threads: env_num("BENCH_THREADS", 2),
        tmpfs: env_num("BENCH_TMPFS", 1u8) != 0 && Path::new(SHM).is_dir(),
    }
}

// ---------------------------------------------------------------------------------------------
// wrk

#[derive(Clone, Debug)]
struct WrkResult {
    rps: f64,
    requests: u64,
    p50_ms: f64,
    p99_ms: f64,
    non_2xx: u64,
    socket_errors: String,
    /// Disk fsync p50 (ms) just before the server started and just after it was measured.
    fsync_ms: (f64, f64),
    /// CPU time (user + system, every thread of this process: the server under test; wrk is
    /// another process) per request over the measurement, in µs. Less sensitive than req/s to
    /// other tenants of the machine taking cores for a while.
    cpu_us: f64,
}

fn wrk_available() -> bool {
    // `wrk -v` prints its version and exits non-zero; only a failure to start matters.
    Command::new("wrk").arg("-v").output().is_ok()
}

fn lua_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/identify.lua")
}

/// Runs wrk against `url` with `keys` (one per wrk thread) and parses its report.
fn wrk(s: &Settings, secs: u64, url: &str, keys: &[String]) -> WrkResult {
    let out = Command::new("wrk")
        .arg(format!("-t{}", s.threads))
        .arg(format!("-c{}", s.connections))
        .arg(format!("-d{secs}s"))
        .arg("--latency")
        .arg("-s")
        .arg(lua_script())
        .arg(url)
        .env("PALMGATE_API_KEYS", keys.join(","))
        .output()
        .expect("run wrk");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        panic!(
            "wrk failed ({}):\n{text}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_wrk(&text).unwrap_or_else(|| panic!("cannot parse wrk's report:\n{text}"))
}

/// Milliseconds of a wrk duration such as `812.00us`, `3.62ms` or `1.02s`.
fn wrk_ms(v: &str) -> Option<f64> {
    let (num, factor) = if let Some(n) = v.strip_suffix("us") {
        (n, 1e-3)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('m') {
        (n, 60_000.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1e3)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|x| x * factor)
}

fn parse_wrk(text: &str) -> Option<WrkResult> {
    let mut rps = None;
    let mut p50 = None;
    let mut p99 = None;
    let mut requests = None;
    let mut non_2xx = 0;
    let mut socket_errors = String::new();
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", v] => rps = v.parse().ok(),
            ["50%", v] => p50 = wrk_ms(v),
            ["99%", v] => p99 = wrk_ms(v),
            [n, "requests", "in", ..] => requests = n.parse().ok(),
            ["Non-2xx", "or", "3xx", "responses:", n] => non_2xx = n.parse().ok()?,
            ["Socket", "errors:", rest @ ..] => socket_errors = rest.join(" "),
            _ => {}
        }
    }
    Some(WrkResult {
        rps: rps?,
        requests: requests?,
        p50_ms: p50?,
        p99_ms: p99?,
        non_2xx,
        socket_errors,
        fsync_ms: (f64::NAN, f64::NAN),
        cpu_us: f64::NAN,
    })
}

/// CPU time this process has used so far (user + system, all threads), in µs.
fn process_cpu_us() -> f64 {
    // SAFETY: `getrusage` fills the zeroed struct it is given and reads nothing else.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let us = |t: libc::timeval| t.tv_sec as f64 * 1e6 + t.tv_usec as f64;
    us(usage.ru_utime) + us(usage.ru_stime)
}

/// p50 of 100-byte append + fsync on the temp dir's disk over `dur` (fsync latency on this
/// kind of host drifts with other I/O; palmgate's durable throughput follows it).
fn fsync_p50_ms(dur: std::time::Duration) -> f64 {
    use std::io::Write;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut f = std::fs::File::create(dir.path().join("probe")).expect("probe file");
    let end = std::time::Instant::now() + dur;
    let mut lat = Vec::new();
    while std::time::Instant::now() < end {
        let t0 = std::time::Instant::now();
        f.write_all(&[b'x'; 100]).expect("write");
        f.sync_all().expect("fsync");
        lat.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    median(lat)
}

// ---------------------------------------------------------------------------------------------
// Servers

/// A server running on the bench runtime until `stop` is sent.
struct Running {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
    _dir: Option<tempfile::TempDir>,
}

impl Running {
    async fn shutdown(self) {
        let _ = self.stop.send(());
        self.task
            .await
            .expect("server task")
            .expect("server stopped cleanly");
    }
}

/// The 201 body of `/v1/identify` (same fields as palmgate's `SessionCreatedBody`).
#[derive(Serialize)]
struct Created {
    url: String,
    session_id: String,
    expires_at: String,
}

/// The bare handler: same status and JSON shape, fresh values, no persistence, no auth.
async fn bare_identify(State(base): State<Arc<String>>) -> (StatusCode, Json<Created>) {
    let id = uuid::Builder::from_random_bytes(OsRng.bytes16()).into_uuid();
    let token = hex::encode(OsRng.bytes32());
    let expires = Utc::now() + chrono::Duration::minutes(15);
    (
        StatusCode::CREATED,
        Json(Created {
            url: format!("{base}/identify/{token}"),
            session_id: id.to_string(),
            expires_at: expires.to_rfc3339_opts(SecondsFormat::Secs, true),
        }),
    )
}

async fn start_bare() -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new()
        .route("/v1/identify", post(bare_identify))
        .with_state(Arc::new(format!("http://{addr}")));
    let (stop, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await
    });
    Running {
        addr,
        stop,
        task,
        _dir: None,
    }
}

/// A config for a bench server: the embedded defaults with every `palmgate-data/...` path moved
/// into `dir`, every `listen` address on loopback port 0, the admin token set and the rate
/// limits out of the way. Derived from [`DEFAULTS`] so it only names keys the build knows.
fn bench_config(dir: &Path) -> Config {
    fn rewrite(table: &mut toml::Table, dir: &Path) {
        for (key, value) in table.iter_mut() {
            match value {
                toml::Value::Table(t) => rewrite(t, dir),
                toml::Value::String(v) if key == "listen" => *v = "127.0.0.1:0".into(),
                toml::Value::String(v) if v.starts_with("palmgate-data/") => {
                    let rest = v.trim_start_matches("palmgate-data/").to_string();
                    *v = dir.join(rest).display().to_string();
                }
                _ => {}
            }
        }
    }
    let mut table: toml::Table = DEFAULTS.parse().expect("embedded defaults parse");
    rewrite(&mut table, dir);
    let section = |t: &toml::Table, name: &str| -> toml::Table {
        t.get(name)
            .and_then(toml::Value::as_table)
            .cloned()
            .unwrap_or_default()
    };
    let mut limits = section(&table, "rate_limit");
    for key in ["per_minute", "unauthenticated_per_minute"] {
        limits.insert(key.into(), toml::Value::Integer(100_000_000));
    }
    table.insert("rate_limit".into(), toml::Value::Table(limits));
    let mut admin = section(&table, "admin");
    admin.insert("token".into(), toml::Value::String(ADMIN_TOKEN.into()));
    table.insert("admin".into(), toml::Value::Table(admin));
    let file = dir.join("palmgate.toml");
    std::fs::write(&file, toml::to_string(&table).expect("config serializes")).expect("write");
    // `PALMGATE_*` variables override it, as they do `palmgate serve`: a config variant can be
    // benched without editing this file (e.g. `PALMGATE_STORE_SNAPSHOT_EVERY=0`).
    Config::load_with_process_env(Some(&file)).expect("bench config is valid")
}

/// palmgate as shipped: `app::start` (SQLite store, group commit, fsync) + `Server::serve`,
/// its files in a fresh temp dir under `parent` (the system temp dir when `None`).
async fn start_palmgate(parent: Option<&Path>) -> Running {
    let dir = match parent {
        Some(p) => tempfile::tempdir_in(p),
        None => tempfile::tempdir(),
    }
    .expect("tempdir");
    let server = palmgate::app::start(bench_config(dir.path()))
        .await
        .expect("palmgate starts");
    let addr = server.addr;
    let (stop, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(async {
        let _ = rx.await;
    }));
    Running {
        addr,
        stop,
        task,
        _dir: Some(dir),
    }
}

/// Creates `n` partners through the admin API and returns their API keys.
async fn partners(client: &reqwest::Client, addr: SocketAddr, n: usize) -> Vec<String> {
    // Partner names are unique per server; a server gets several sets (warm-up, measurement).
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let mut keys = Vec::new();
    for _ in 0..n {
        let i = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let resp = client
            .post(format!("http://{addr}/admin/v1/partners"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&serde_json::json!({ "name": format!("bench partner {i}") }))
            .send()
            .await
            .expect("create partner");
        assert_eq!(resp.status(), 201, "partner creation");
        let body: serde_json::Value = resp.json().await.expect("partner JSON");
        keys.push(body["api_key"].as_str().expect("api_key").to_string());
    }
    keys
}

/// One request by hand: 201 and exactly the three fields, whichever server it is.
async fn check_identify(client: &reqwest::Client, addr: SocketAddr, key: &str) {
    let resp = client
        .post(format!("http://{addr}/v1/identify"))
        .header("x-api-key", key)
        .send()
        .await
        .expect("identify");
    assert_eq!(resp.status(), 201, "identify status");
    let body: serde_json::Value = resp.json().await.expect("identify JSON");
    let mut fields: Vec<&String> = body.as_object().expect("object").keys().collect();
    fields.sort();
    assert_eq!(fields, ["expires_at", "session_id", "url"], "identify body");
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Bare,
    Palmgate,
    Tmpfs,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Bare => "bare axum handler (no persistence)",
            Kind::Palmgate => "palmgate (SQLite, fsync'd group commit)",
            Kind::Tmpfs => "diagnostic: palmgate, store on tmpfs (fsync ≈ free, NOT durable)",
        }
    }
}

/// Starts a fresh server of `kind`, warms it up, measures it, stops it.
fn measure(
    rt: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    s: &Settings,
    kind: Kind,
) -> WrkResult {
    let probe = std::time::Duration::from_millis(250);
    let fsync_before = fsync_p50_ms(probe);
    let server = rt.block_on(async {
        match kind {
            Kind::Bare => start_bare().await,
            Kind::Palmgate => start_palmgate(None).await,
            Kind::Tmpfs => start_palmgate(Some(Path::new(SHM))).await,
        }
    });
    let url = format!("http://{}/v1/identify", server.addr);
    // Fresh partners for the warm-up and for the measurement, one per wrk thread: a partner's
    // rate-limit bucket caps it near 1000 req/s once a 60 000-request burst is spent, whatever
    // `per_minute` says (see BENCHMARKS.md).
    let (warm_keys, keys) = if kind == Kind::Bare {
        let fake: Vec<String> = (0..s.threads)
            .map(|i| format!("pgk_{i}{}", "x".repeat(42)))
            .collect();
        (fake.clone(), fake)
    } else {
        rt.block_on(async {
            (
                partners(client, server.addr, s.threads).await,
                partners(client, server.addr, s.threads).await,
            )
        })
    };
    rt.block_on(check_identify(client, server.addr, &keys[0]));
    if s.warmup > 0 {
        let w = wrk(s, s.warmup, &url, &warm_keys);
        eprintln!("  warm-up: {:.0} req/s", w.rps);
    }
    let cpu_before = process_cpu_us();
    let r = wrk(s, s.secs, &url, &keys);
    let cpu = process_cpu_us() - cpu_before;
    let r = WrkResult {
        fsync_ms: (fsync_before, fsync_p50_ms(probe)),
        cpu_us: cpu / r.requests.max(1) as f64,
        ..r
    };
    eprintln!(
        "  {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, non-2xx {}, CPU {:.1} µs/request",
        r.rps, r.p50_ms, r.p99_ms, r.non_2xx, r.cpu_us
    );
    rt.block_on(server.shutdown());
    r
}

/// Below this fsync p50 the disk is in its "fast" state, above in its "slow" one (≈ 0.15 ms
/// and ≈ 4 ms on this kind of host; the state flips with other I/O).
const FAST_FSYNC_MS: f64 = 1.0;

/// The disk state over a measurement, when the probes before and after agree.
fn regime(r: &WrkResult) -> Option<&'static str> {
    let state = |ms: f64| if ms < FAST_FSYNC_MS { "fast" } else { "slow" };
    (state(r.fsync_ms.0) == state(r.fsync_ms.1)).then(|| state(r.fsync_ms.0))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() {
    if !wrk_available() {
        println!(
            "http bench skipped: `wrk` is not installed (Debian/Ubuntu: `apt-get install -y wrk`)."
        );
        return;
    }
    let s = settings();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let client = reqwest::Client::new();
    let mut kinds = vec![Kind::Bare, Kind::Palmgate];
    if s.tmpfs {
        kinds.push(Kind::Tmpfs);
    }
    eprintln!(
        "http bench: wrk -t{} -c{} -d{}s --latency (warm-up {} s), {} round(s)",
        s.threads, s.connections, s.secs, s.warmup, s.rounds
    );

    let mut results: Vec<(usize, Kind, WrkResult)> = Vec::new();
    for round in 1..=s.rounds {
        for &kind in &kinds {
            eprintln!("round {round}: {}", kind.label());
            results.push((round, kind, measure(&rt, &client, &s, kind)));
        }
    }

    println!();
    println!(
        "`POST /v1/identify`, wrk -t{} -c{} -d{}s, loopback, servers measured one at a time",
        s.threads, s.connections, s.secs
    );
    println!();
    println!(
        "| round | server | req/s | p50 (ms) | p99 (ms) | requests | non-2xx | ratio vs bare \
         (same round) | server CPU (µs/request) | disk fsync p50 before → after (ms) | state |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---|");
    for (round, kind, r) in &results {
        let bare = results
            .iter()
            .find(|(rd, k, _)| rd == round && *k == Kind::Bare)
            .map(|(_, _, b)| b.rps)
            .expect("bare result");
        println!(
            "| {round} | {} | {:.0} | {:.2} | {:.2} | {} | {} | {:.1} % | {:.1} | {:.2} → {:.2} | {} |",
            kind.label(),
            r.rps,
            r.p50_ms,
            r.p99_ms,
            r.requests,
            r.non_2xx,
            100.0 * r.rps / bare,
            r.cpu_us,
            r.fsync_ms.0,
            r.fsync_ms.1,
            regime(r).unwrap_or("mixed")
        );
        if !r.socket_errors.is_empty() {
            println!(
                "|  | ↳ socket errors: {} |  |  |  |  |  |  |  |  |  |",
                r.socket_errors
            );
        }
    }

    // Medians: the bare handler and the tmpfs diagnostic over all rounds; palmgate per disk
    // state, over the rounds whose state was stable. Ratios are per round (same-round bare).
    let bare_of = |round: usize| {
        results
            .iter()
            .find(|(rd, k, _)| *rd == round && *k == Kind::Bare)
            .map(|(_, _, r)| r.rps)
            .expect("bare result")
    };
    let mut groups: Vec<(String, Kind, Option<&'static str>)> = Vec::new();
    for &kind in &kinds {
        if kind == Kind::Palmgate {
            for state in ["fast", "slow"] {
                groups.push((
                    format!("{} — {state}-fsync disk", kind.label()),
                    kind,
                    Some(state),
                ));
            }
        } else {
            groups.push((kind.label().to_string(), kind, None));
        }
    }
    println!();
    println!(
        "Medians over {} round(s) (palmgate split by disk state; rounds whose state changed \
         during the measurement left out):",
        s.rounds
    );
    println!();
    println!(
        "| server | rounds | req/s | p50 (ms) | p99 (ms) | ratio vs bare (median of per-round \
         ratios) | server CPU (µs/request) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let mut verdicts = Vec::new();
    for (label, kind, state) in &groups {
        let rs: Vec<(usize, &WrkResult)> = results
            .iter()
            .filter(|(_, k, r)| k == kind && (state.is_none() || regime(r) == *state))
            .map(|(round, _, r)| (*round, r))
            .collect();
        if rs.is_empty() {
            continue;
        }
        let ratio = median(rs.iter().map(|(rd, r)| r.rps / bare_of(*rd)).collect());
        let p99 = median(rs.iter().map(|(_, r)| r.p99_ms).collect());
        println!(
            "| {label} | {} | {:.0} | {:.2} | {:.2} | {:.1} % | {:.1} |",
            rs.len(),
            median(rs.iter().map(|(_, r)| r.rps).collect()),
            median(rs.iter().map(|(_, r)| r.p50_ms).collect()),
            p99,
            100.0 * ratio,
            median(rs.iter().map(|(_, r)| r.cpu_us).collect())
        );
        if let (Kind::Palmgate, Some(state)) = (kind, state) {
            verdicts.push((*state, rs.len(), ratio, p99));
        }
    }
    println!();
    if verdicts.is_empty() {
        println!("Targets: no palmgate round with a stable disk state; rerun.");
    }
    let verdict = |ok: bool| if ok { "MET" } else { "NOT MET" };
    for (state, n, ratio, p99) in verdicts {
        println!(
            "Targets, {state}-fsync disk ({n} round(s)): palmgate ≥ {:.0} % of bare throughput: \
             {:.1} % → **{}**; p99 ≤ {TARGET_P99_MS} ms: {p99:.2} ms → **{}**",
            TARGET_RATIO * 100.0,
            ratio * 100.0,
            verdict(ratio >= TARGET_RATIO),
            verdict(p99 <= TARGET_P99_MS)
        );
    }
    let cpu_of = |kind: Kind| {
        let v: Vec<f64> = results
            .iter()
            .filter(|(_, k, r)| *k == kind && r.cpu_us.is_finite())
            .map(|(_, _, r)| r.cpu_us)
            .collect();
        (!v.is_empty()).then(|| median(v))
    };
    if let (Some(bare), Some(pg)) = (cpu_of(Kind::Bare), cpu_of(Kind::Palmgate)) {
        println!(
            "CPU per request (medians, this process's threads; wrk not counted): bare {bare:.1} \
             µs, palmgate {pg:.1} µs: palmgate spends {:.2}× the bare handler's CPU per request.",
            pg / bare
        );
    }
    let errors: u64 = results
        .iter()
        .filter(|(_, k, _)| *k != Kind::Bare)
        .map(|(_, _, r)| r.non_2xx)
        .sum();
    if errors > 0 {
        println!(
            "WARNING: palmgate answered {errors} requests with non-2xx statuses; its numbers \
             include those answers."
        );
    }
}
