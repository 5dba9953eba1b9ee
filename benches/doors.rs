//! Door benchmarks (issue 5): scan-to-unlock latency end to end (MQTT capture publish on the
//! embedded broker → coil-ON write seen by a simulated Modbus board) with 10k enrolled users,
//! its components measured separately in-process, and pure `Policy::decide` throughput.
//! `cargo bench --bench doors`.

use palmgate::core::matcher::Index;
use palmgate::core::policy::{Direction, DoorId, Identified, Policy, Request, SiteMode, Subject};
use palmgate::core::{
    Command, EnrollRequest, Event, Expected, ExternalId, Language, PartnerId, ReaderId, SessionId,
    SessionKind, StreamAppend,
};
use palmgate::modbus::sim::SimBoard;
use palmgate::mqtt::protocol::{CaptureMsg, Inbound, TopicKind, encode_template};
use palmgate::mqtt::simulate::{SimOptions, SimReader};
use palmgate::store::{EventStore, SqliteStore};
use serde_json::{Value, json};
use std::hint::black_box;
use std::time::{Duration, Instant};

const ADMIN: &str = "bench-admin";
const DIM: usize = 128;

/// A realistic site: three doors, two readers in a zone with soft anti-passback, schedules,
/// holidays, four levels.
pub fn site_doc(board_url: &str) -> String {
    format!(
        r#"timezone = "Asia/Almaty"
partners = ["*"]
holidays = ["2026-01-01", "2026-03-08", "2026-12-16"]

[[relay_devices]]
id = "board-1"
modbus = "{board_url}"
unit = 1

[[doors]]
id = "main"
readers = ["lobby-1"]
relay = {{ device = "board-1", coil = 0, pulse_ms = 100 }}

[[doors]]
id = "exit"
readers = ["lobby-exit-1"]
relay = {{ device = "board-1", coil = 1, pulse_ms = 100 }}

[[doors]]
id = "lab"
readers = ["lab-1"]
relay = {{ device = "board-1", coil = 2, pulse_ms = 100 }}

[schedules]
always = ["* * * * * *"]
office = ["* * 8-17 * * Mon-Fri"]
weekend = ["* * 10-15 * * Sat,Sun"]

[[levels]]
name = "standard"
doors = ["main", "exit"]
schedule = "always"

[[levels]]
name = "office"
doors = ["main", "exit", "lab"]
schedule = "office"
respect_holidays = true

[[levels]]
name = "weekend"
doors = ["main", "exit"]
schedule = "weekend"

[[levels]]
name = "lab"
doors = ["lab"]
schedule = "always"

[[zones]]
name = "building"
entry_readers = ["lobby-1"]
exit_readers = ["lobby-exit-1"]
anti_passback = "soft"
"#
    )
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn summary(what: &str, mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "{what}: n={} p50={:.4} ms p90={:.4} ms p99={:.4} ms max={:.4} ms",
        v.len(),
        pct(&v, 50.0),
        pct(&v, 90.0),
        pct(&v, 99.0),
        v.last().copied().unwrap_or(f64::NAN)
    );
    (pct(&v, 50.0), pct(&v, 99.0))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn palm(i: usize) -> String {
    format!("user-{i}")
}

fn main() {
    let users: usize = std::env::var("BENCH_USERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let scans: usize = std::env::var("BENCH_SCANS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    decide_throughput();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(components(users));
    rt.block_on(scan_to_unlock(users, scans));
    std::process::exit(0);
}

// ---------------------------------------------------------------------------------------------
// Pure engine
// ---------------------------------------------------------------------------------------------

fn decide_throughput() {
    let policy = Policy::parse(&site_doc("tcp://127.0.0.1:1502")).expect("site parses");
    let partner = PartnerId::from_random([7; 16]);
    let ext: Vec<ExternalId> = (0..8).map(|i| ExternalId(format!("user-{i}"))).collect();
    let metas: Vec<Value> = vec![
        json!({"access_level": "standard"}),
        json!({"access_level": "office"}),
        json!({"access_level": ["weekend", "lab"]}),
        json!({"access_level": "office", "valid_from": "2026-01-01", "valid_until": "2026-12-31"}),
        json!({"access_level": "ghost"}),
        json!({"department": "none"}),
    ];
    let doors = [
        (DoorId("main".into()), ReaderId("lobby-1".into())),
        (DoorId("exit".into()), ReaderId("lobby-exit-1".into())),
        (DoorId("lab".into()), ReaderId("lab-1".into())),
    ];
    // Times across a week (incl. a holiday, weekend, nights), site local Asia/Almaty.
    let base = chrono::DateTime::parse_from_rfc3339("2026-03-02T00:00:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    let times: Vec<_> = (0..29)
        .map(|i| base + chrono::Duration::minutes(i * 347))
        .collect();
    let lasts = [None, Some(Direction::Entry), Some(Direction::Exit)];
    let mut reqs = Vec::new();
    for (k, m) in metas.iter().enumerate() {
        for (j, (door, reader)) in doors.iter().enumerate() {
            for (t, at) in times.iter().enumerate() {
                let who = if (k + j + t) % 17 == 0 {
                    Identified::NoMatch
                } else {
                    Identified::User(Subject {
                        partner_id: partner,
                        partner_name: "Acme",
                        external_id: &ext[(k + t) % ext.len()],
                        metadata: Some(m),
                    })
                };
                reqs.push(Request {
                    door,
                    reader,
                    who,
                    at: *at,
                    mode: if (k + t) % 53 == 0 {
                        SiteMode::Lockdown
                    } else {
                        SiteMode::Normal
                    },
                    last_in_zone: lasts[(k + j + t) % 3],
                });
            }
        }
    }
    let granted = reqs.iter().filter(|r| policy.decide(r).granted()).count();
    println!(
        "decide: {} distinct requests ({} granted), cycled",
        reqs.len(),
        granted
    );
    for run in 0..3 {
        let n = 3_000_000usize;
        let t = Instant::now();
        let mut g = 0usize;
        for i in 0..n {
            let v = policy.decide(black_box(&reqs[i % reqs.len()]));
            g += v.granted() as usize;
        }
        let el = t.elapsed();
        black_box(g);
        let rate = n as f64 / el.as_secs_f64();
        println!(
            "decide run {run}: {n} decisions in {:.3} s = {:.0} decisions/s ({:.0} ns each) one thread  target >=1,000,000/s: {}",
            el.as_secs_f64(),
            rate,
            el.as_nanos() as f64 / n as f64,
            if rate >= 1_000_000.0 {
                "MET"
            } else {
                "NOT MET"
            }
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Components, in-process
// ---------------------------------------------------------------------------------------------

async fn components(users: usize) {
    // Match: Index::best over `users` templates, one partner in scope.
    let partner = PartnerId::from_random([9; 16]);
    let mut index = Index::new(DIM);
    for i in 0..users {
        index.insert(
            partner,
            ExternalId(palm(i)),
            &palmgate::synthetic::identity(&palm(i), DIM),
        );
    }
    let scope = [partner];
    let queries: Vec<Vec<f32>> = (0..1000)
        .map(|i| palmgate::synthetic::scan(&palm((i * 7919) % users), DIM, 5000 + i as u64))
        .collect();
    for q in queries.iter().take(50) {
        black_box(index.best(q, &scope));
    }
    let mut lat = Vec::new();
    let mut hits = 0;
    for (i, q) in queries.iter().enumerate() {
        let t = Instant::now();
        let b = index.best(black_box(q), &scope);
        lat.push(ms(t.elapsed()));
        if b.is_some_and(|b| b.external_id.0 == palm((i * 7919) % users)) {
            hits += 1;
        }
    }
    summary(
        &format!("component match: Index::best on {users} templates (correct {hits}/1000)"),
        lat,
    );

    // Decide: one Policy::decide (the scan's request).
    let policy = Policy::parse(&site_doc("tcp://127.0.0.1:1502")).unwrap();
    let meta = json!({"access_level": "standard"});
    let ext = ExternalId("user-1".into());
    let door = DoorId("main".into());
    let reader = ReaderId("lobby-1".into());
    let mut lat = Vec::new();
    for _ in 0..1000 {
        let t = Instant::now();
        black_box(policy.decide(&Request {
            door: &door,
            reader: &reader,
            who: Identified::User(Subject {
                partner_id: partner,
                partner_name: "Acme",
                external_id: &ext,
                metadata: Some(&meta),
            }),
            at: chrono::Utc::now(),
            mode: SiteMode::Normal,
            last_in_zone: Some(Direction::Entry),
        }));
        lat.push(ms(t.elapsed()));
    }
    summary("component decide: Policy::decide", lat);

    // Append: one DoorDecided (one transaction, fsync) at a time.
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("events.db")).unwrap();
    let mut lat = Vec::new();
    for i in 0..200 {
        let now = chrono::Utc::now();
        let verdict = policy.decide(&Request {
            door: &door,
            reader: &reader,
            who: Identified::NoMatch,
            at: now,
            mode: SiteMode::Normal,
            last_in_zone: None,
        });
        let ev = Event::DoorDecided {
            door: door.clone(),
            reader_id: reader.clone(),
            capture_id: format!("cap-{i}"),
            subject: None,
            erased: false,
            similarity: Some(0.42),
            quality: None,
            judged: None,
            policy: policy.sha256.clone(),
            mode: SiteMode::Normal,
            last_in_zone: None,
            movement: None,
            unopenable: false,
            verdict,
            at: now,
        };
        let t = Instant::now();
        store
            .append(
                vec![StreamAppend {
                    stream: "door-main".into(),
                    expected: Expected::Any,
                    events: vec![ev],
                }],
                now,
            )
            .await
            .unwrap();
        lat.push(ms(t.elapsed()));
    }
    summary(
        "component append: SqliteStore::append of one DoorDecided (fsync)",
        lat,
    );
    drop(store);

    // Modbus: write_single_coil to a SimBoard over loopback TCP.
    let board = SimBoard::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    use tokio_modbus::client::Writer as _;
    let mut ctx = tokio_modbus::client::tcp::connect(board.addr())
        .await
        .unwrap();
    let mut lat = Vec::new();
    for i in 0..400 {
        let t = Instant::now();
        let r = ctx.write_single_coil(5, i % 2 == 0).await;
        lat.push(ms(t.elapsed()));
        assert!(matches!(r, Ok(Ok(()))), "coil write failed");
    }
    summary(
        "component modbus: write_single_coil round trip (loopback)",
        lat,
    );
}

// ---------------------------------------------------------------------------------------------
// End to end
// ---------------------------------------------------------------------------------------------

async fn scan_to_unlock(users: usize, scans: usize) {
    let board = SimBoard::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("site.toml");
    std::fs::write(&site, site_doc(&board.url())).unwrap();
    let d = dir.path().display();
    let cfg = dir.path().join("p.toml");
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
token = "{ADMIN}"
[rate_limit]
per_minute = 100000000
"#,
            site.display()
        ),
    )
    .unwrap();
    let config = palmgate::config::Config::load(Some(std::path::Path::new(&cfg)), &[]).unwrap();
    let server = palmgate::app::start(config).await.unwrap();
    let base = format!("http://{}", server.addr);
    let mqtt = server.mqtt.clone();
    let app = server.app.clone();
    let (_stop, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.serve(async {
        let _ = rx.await;
    }));
    let http = reqwest::Client::new();
    let mut partner = None;
    for _ in 0..500 {
        if let Ok(r) = http
            .post(format!("{base}/admin/v1/partners"))
            .bearer_auth(ADMIN)
            .json(&json!({"name": "Acme"}))
            .send()
            .await
            && r.status().as_u16() == 201
        {
            let v: Value = r.json().await.unwrap();
            partner = PartnerId::parse(v["id"].as_str().or(v["partner_id"].as_str()).unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let partner = partner.expect("partner created");

    // Enroll `users` users: an enroll session each, then its capture through the same path an
    // MQTT capture takes (`App::reader_message`).
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    let mut done = 0usize;
    for i in 0..users {
        if set.len() >= 128 {
            set.join_next().await.unwrap().unwrap();
            done += 1;
        }
        let app = app.clone();
        set.spawn(async move {
            let session_id = SessionId::from_random(app.rng.bytes16());
            let token = app.keys.session_token(session_id);
            app.execute(Command::CreateSession {
                partner_id: partner,
                session_id,
                token_hash: palmgate::app::secrets::hash_secret(&token),
                kind: SessionKind::Enroll,
                language: Language::En,
                enroll: Some(EnrollRequest {
                    external_id: ExternalId(palm(i)),
                    username: None,
                    metadata: Some(json!({"access_level": "standard"})),
                }),
                idempotency: None,
                ttl: app.ttl(),
            })
            .await
            .expect("enroll session");
            app.reader_message(
                ReaderId("desk-1".into()),
                Inbound::Capture(CaptureMsg {
                    capture_id: format!("enroll-{i}"),
                    session: Some(token),
                    template: palmgate::synthetic::scan(&palm(i), DIM, 1).into(),
                    quality: 0.93,
                    liveness: true,
                }),
            )
            .await
            .expect("enroll capture");
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
        done += 1;
    }
    let enrolled = app.read(|s| s.users().count());
    println!(
        "enrolled {enrolled} users ({done} enroll sessions) in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // The door reader.
    let reader = SimReader::connect(SimOptions {
        mqtt_url: mqtt.clone(),
        topic_prefix: "palmgate".into(),
        reader: ReaderId("lobby-1".into()),
        palm: palm(0),
        dim: DIM,
        quality: 0.93,
        liveness: true,
        seed: 77,
    })
    .await
    .unwrap();
    // Let the relay adapter connect and settle.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let mut lat = Vec::new();
    let mut missed = 0;
    for k in 0..(scans + 5) {
        let i = (k * 7919) % users;
        let values = palmgate::synthetic::scan(&palm(i), DIM, 10_000 + k as u64);
        let payload = json!({
            "capture_id": format!("door-scan-{k}"),
            "session": Value::Null,
            "template": encode_template(&values),
            "quality": 0.93,
            "liveness": true,
        })
        .to_string()
        .into_bytes();
        let before = board.writes().len();
        let t0 = Instant::now();
        reader
            .publish_raw(TopicKind::Capture, payload)
            .await
            .unwrap();
        let deadline = t0 + Duration::from_secs(3);
        let mut on_at = None;
        while Instant::now() < deadline {
            let w = board.writes();
            if let Some((at, _, _)) = w[before..].iter().find(|(_, c, on)| *c == 0 && *on) {
                on_at = Some(*at);
                // Wait for the pulse to end (OFF) so pulses never overlap.
                if w[before..].iter().any(|(_, c, on)| *c == 0 && !*on) {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        match on_at {
            Some(at) if k >= 5 => lat.push(ms(at.duration_since(t0.into()))),
            Some(_) => {}
            None => missed += 1,
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    println!("scan-to-unlock: {missed} scans without a coil-ON write within 3 s");
    let (_p50, p99) = summary(
        &format!("scan-to-unlock (MQTT capture publish → coil ON at the board), {enrolled} users"),
        lat.clone(),
    );
    println!(
        "scan-to-unlock target p99 <= 25 ms: {}",
        if missed == 0 && lat.len() >= 200 && p99 <= 25.0 {
            "MET"
        } else {
            "NOT MET"
        }
    );
    let _ = reader;
}
