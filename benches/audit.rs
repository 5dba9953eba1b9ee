//! Audit benchmarks (issue 6): `audit verify` throughput over a 1M-event log, and server
//! start-up time on that log, without and with a state snapshot. `cargo bench --bench audit`
//! (`BENCH_EVENTS`, `BENCH_RUNS`, `BENCH_VERIFY=0` to skip verify, `BENCH_BREAKDOWN=0` to skip
//! verify's breakdown, `BENCH_ONE_THREAD=0` to skip the one-thread baseline, `BENCH_STARTUP=0` to skip start-up, `BENCH_LOG=DIR` to keep the log in
//! DIR and reuse it).
//!
//! The log is written directly with `SqliteStore::append`, 1000 events per append: a partner, an
//! activated site policy, 5000 enrolled users, then identify sessions (created + completed) and
//! door decisions about those users (verdicts from `Policy::decide`, zone movements tracked like
//! the core does), half and half.

use chrono::{DateTime, Utc};
use palmgate::core::event::{CaptureRef, DoorSubject, Judged};
use palmgate::core::policy::{Direction, DoorId, Identified, Policy, Request, SiteMode, Subject};
use palmgate::core::{
    Event, Expected, ExternalId, Language, PartnerId, ReaderId, SecretHash, SessionId, SessionKind,
    StreamAppend,
};
use palmgate::store::{EventStore, SnapshotDir, SqliteStore};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

const SITE: &str = r#"timezone = "Asia/Almaty"
partners = ["*"]
holidays = ["2026-01-01", "2026-03-08"]

[[relay_devices]]
id = "board-1"
modbus = "tcp://127.0.0.1:1502"
unit = 1

[[doors]]
id = "main"
readers = ["lobby-1"]
relay = { device = "board-1", coil = 0, pulse_ms = 400 }

[[doors]]
id = "exit"
readers = ["lobby-exit-1"]
relay = { device = "board-1", coil = 1, pulse_ms = 400 }

[[doors]]
id = "lab"
readers = ["lab-1"]
relay = { device = "board-1", coil = 2, pulse_ms = 400 }

[schedules]
always = ["* * * * * *"]
office = ["* * 8-17 * * Mon-Fri"]

[[levels]]
name = "standard"
doors = ["main", "exit"]
schedule = "always"

[[levels]]
name = "office"
doors = ["main", "exit", "lab"]
schedule = "office"
respect_holidays = true

[[zones]]
name = "building"
entry_readers = ["lobby-1"]
exit_readers = ["lobby-exit-1"]
anti_passback = "soft"
"#;

fn id16(n: u64, tag: u8) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&n.to_le_bytes());
    b[15] = tag;
    b
}

/// Enrolled users the log's sessions and decisions are about.
const USERS: u64 = 5000;

async fn generate(path: &Path, total: usize) -> usize {
    let store = SqliteStore::open(path).unwrap();
    let policy = Policy::parse(SITE).expect("site parses");
    let partner = PartnerId::from_random(id16(1, 1));
    let t0: DateTime<Utc> = DateTime::parse_from_rfc3339("2026-03-02T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    let head = vec![
        StreamAppend {
            stream: format!("partner-{partner}"),
            expected: Expected::NoStream,
            events: vec![Event::PartnerCreated {
                partner_id: partner,
                name: "Acme".into(),
                api_key_hash: SecretHash("00".repeat(32)),
                at: t0,
            }],
        },
        StreamAppend {
            stream: "policy".into(),
            expected: Expected::Any,
            events: vec![Event::PolicyActivated {
                sha256: policy.sha256.clone(),
                document: SITE.into(),
                source: "bench".into(),
                at: t0,
            }],
        },
    ];
    store.append(head, t0).await.unwrap();
    let mut written = 2usize;
    let metas: Vec<Value> = vec![
        json!({"access_level": "standard"}),
        json!({"access_level": "office"}),
        json!({"access_level": "ghost"}),
    ];
    // The users the decisions are about, enrolled first: `audit verify` checks a matched
    // decision's subject against the user's record.
    for chunk in (0..USERS).collect::<Vec<u64>>().chunks(1000) {
        let batch = chunk
            .iter()
            .map(|&u| {
                let external_id = ExternalId(format!("user-{u}"));
                StreamAppend {
                    stream: palmgate::core::event::stream::user(partner, &external_id),
                    expected: Expected::NoStream,
                    events: vec![Event::UserEnrolled {
                        partner_id: partner,
                        external_id,
                        username: None,
                        metadata: Some(metas[(u % 3) as usize].clone()),
                        session_id: SessionId::from_random(id16(u, 3)),
                        template: None,
                        at: t0,
                    }],
                }
            })
            .collect();
        store.append(batch, t0).await.unwrap();
        written += chunk.len();
    }
    let doors = [
        (DoorId("main".into()), ReaderId("lobby-1".into())),
        (DoorId("exit".into()), ReaderId("lobby-exit-1".into())),
        (DoorId("lab".into()), ReaderId("lab-1".into())),
    ];
    let mut zone: HashMap<String, Direction> = HashMap::new();
    let mut seq: u64 = 0;
    while written < total {
        let mut batch = Vec::new();
        let mut n = 0;
        let mut door_events: Vec<Vec<Event>> = vec![vec![], vec![], vec![]];
        // One append, one instant: a decision's `at` is the `recorded_at` of its append (the
        // gateway reads its clock once for both, and `audit verify` checks it). Appends are
        // 25 minutes apart, so the decisions still cover every hour of 17 days.
        let at = t0 + chrono::Duration::milliseconds((seq as i64 + 1) * 1500);
        while n < 1000 && written + n < total {
            seq += 1;
            if seq.is_multiple_of(2) && n + 2 <= 1000 && written + n + 2 <= total {
                // An identify session, created and completed.
                let sid = SessionId::from_random(id16(seq, 2));
                batch.push(StreamAppend {
                    stream: format!("session-{sid}"),
                    expected: Expected::NoStream,
                    events: vec![
                        Event::SessionCreated {
                            session_id: sid,
                            partner_id: Some(partner),
                            reader_id: None,
                            kind: SessionKind::Identify,
                            language: Language::En,
                            token_hash: SecretHash(format!("{:064x}", seq)),
                            external_id: None,
                            username: None,
                            metadata: None,
                            created_at: at,
                            expires_at: at + chrono::Duration::minutes(15),
                            trigger_id: None,
                        },
                        // As the gateway records one: the capture that ended it, judged.
                        Event::SessionCompleted {
                            session_id: sid,
                            external_id: Some(ExternalId(format!("user-{}", seq % USERS))),
                            capture: Some(CaptureRef {
                                reader_id: ReaderId("desk-1".into()),
                                capture_id: format!("cap-{seq}"),
                                quality: 0.9,
                                similarity: Some(0.93),
                                judged: Some(Judged {
                                    liveness: true,
                                    threshold: 0.8,
                                    min_quality: 0.5,
                                    max_retries: Some(3),
                                }),
                            }),
                            at: at + chrono::Duration::seconds(3),
                        },
                    ],
                });
                n += 2;
            } else {
                let u = (seq * 7919) % USERS;
                let (door, reader) = &doors[(seq % 3) as usize];
                let meta = &metas[(u % 3) as usize];
                let ext = ExternalId(format!("user-{u}"));
                let matched = !seq.is_multiple_of(11);
                let subject = matched.then(|| DoorSubject {
                    partner_id: partner,
                    partner_name: "Acme".into(),
                    external_id: ext.clone(),
                    metadata: Some(meta.clone()),
                });
                let zdir = policy
                    .zone_of_reader(reader)
                    .map(|(z, d)| (z.to_string(), d));
                let last_in_zone = match (&zdir, matched) {
                    (Some(_), true) => zone.get(&ext.0).copied(),
                    _ => None,
                };
                let verdict = policy.decide(&Request {
                    door,
                    reader,
                    who: match &subject {
                        Some(s) => Identified::User(Subject {
                            partner_id: s.partner_id,
                            partner_name: &s.partner_name,
                            external_id: &s.external_id,
                            metadata: s.metadata.as_ref(),
                        }),
                        None => Identified::NoMatch,
                    },
                    at,
                    mode: SiteMode::Normal,
                    last_in_zone,
                });
                let movement = zdir.filter(|_| verdict.granted() && matched);
                if let Some((_, d)) = &movement {
                    zone.insert(ext.0.clone(), *d);
                }
                door_events[(seq % 3) as usize].push(Event::DoorDecided {
                    door: door.clone(),
                    reader_id: reader.clone(),
                    capture_id: format!("cap-{seq}"),
                    subject,
                    erased: false,
                    similarity: Some(if matched { 0.93 } else { 0.31 }),
                    quality: Some(0.9),
                    judged: Some(Judged {
                        liveness: true,
                        threshold: 0.8,
                        min_quality: 0.5,
                        max_retries: None,
                    }),
                    policy: policy.sha256.clone(),
                    mode: SiteMode::Normal,
                    last_in_zone,
                    movement,
                    unopenable: false,
                    verdict,
                    at,
                });
                n += 1;
            }
        }
        for (i, evs) in door_events.into_iter().enumerate() {
            if !evs.is_empty() {
                batch.push(StreamAppend {
                    stream: format!("door-{}", doors[i].0),
                    expected: Expected::Any,
                    events: evs,
                });
            }
        }
        store.append(batch, at).await.unwrap();
        written += n;
    }
    store.close();
    written
}

/// Waits until the snapshot directory of `path` holds a snapshot at `position`.
fn wait_for_snapshot(path: &Path, position: u64, limit: std::time::Duration) -> Option<f64> {
    let t = Instant::now();
    let dir = SnapshotDir::beside(path);
    while t.elapsed() < limit {
        if dir
            .list()
            .ok()
            .is_some_and(|l| l.first().is_some_and(|i| i.position == position))
        {
            return Some(t.elapsed().as_secs_f64());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    None
}

fn main() {
    let total: usize = std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    // BENCH_VERIFY=0 skips the verify runs (start-up only).
    let verify_runs = match std::env::var("BENCH_VERIFY").as_deref() {
        Ok("0") => 0,
        _ => runs,
    };
    // BENCH_STARTUP=0 skips the start-up runs (verify only).
    let startup = !matches!(std::env::var("BENCH_STARTUP").as_deref(), Ok("0"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // BENCH_LOG=DIR keeps the log in DIR and reuses it when it is already there.
    let tmp = tempfile::tempdir().unwrap();
    let dir: PathBuf = std::env::var_os("BENCH_LOG")
        .map(PathBuf::from)
        .unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("events.db");
    let written = if path.exists() {
        let n: i64 = rusqlite::Connection::open(&path)
            .unwrap()
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .unwrap();
        let n = n as usize;
        println!("reusing the log in {} ({n} events)", dir.display());
        n
    } else {
        let t = Instant::now();
        let written = rt.block_on(generate(&path, total));
        let size: u64 = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok()?.metadata().ok())
            .map(|m| m.len())
            .sum();
        println!(
            "generated {written} events in {:.1} s ({:.0} events/s appended, 1000/append); files {:.1} MB",
            t.elapsed().as_secs_f64(),
            written as f64 / t.elapsed().as_secs_f64(),
            size as f64 / 1e6
        );
        written
    };

    // Where verify's time goes: paging raw rows alone, then rows decoded into events.
    let breakdown = !matches!(std::env::var("BENCH_BREAKDOWN").as_deref(), Ok("0"));
    if verify_runs > 0 && breakdown {
        let store = SqliteStore::open(&path).unwrap();
        let t = Instant::now();
        let (mut after, mut n) = (0u64, 0usize);
        loop {
            let page = store.read_raw(after, 10_000).unwrap();
            let Some(last) = page.last() else { break };
            after = last.position;
            n += page.len();
        }
        let raw = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let (mut after, mut m) = (0u64, 0usize);
        loop {
            let page = store.read(after, 10_000).unwrap();
            let Some(last) = page.last() else { break };
            after = last.position;
            m += page.len();
        }
        let decoded = t.elapsed().as_secs_f64();
        println!(
            "breakdown: read_raw paging {n} rows {raw:.2} s ({:.0}/s); read+decode {m} events {decoded:.2} s ({:.0}/s)",
            n as f64 / raw,
            m as f64 / decoded
        );
        // Re-hashing every stored event, and folding the decoded events (no checks).
        let (mut after, mut hashing, mut folding) = (0u64, 0f64, 0f64);
        let mut state = palmgate::core::State::default();
        loop {
            let page = store.read_raw(after, 10_000).unwrap();
            let Some(last) = page.last() else { break };
            after = last.position;
            let t = Instant::now();
            let sum: u32 = page.iter().map(|r| u32::from(r.computed_hash()[0])).sum();
            hashing += t.elapsed().as_secs_f64();
            std::hint::black_box(sum);
            let mut recs: Vec<_> = page
                .into_iter()
                .map(|r| r.into_recorded().unwrap())
                .collect();
            let t = Instant::now();
            for r in &mut recs {
                state.evolve_take(r);
            }
            folding += t.elapsed().as_secs_f64();
        }
        println!("breakdown: re-hashing {hashing:.2} s; State::evolve_take {folding:.2} s");
        store.close();
    }
    // `BENCH_ONE_THREAD=0` skips the one-thread baseline (for profiling the real path).
    let one_thread = !matches!(std::env::var("BENCH_ONE_THREAD").as_deref(), Ok("0"));
    for run in 0..verify_runs {
        // Same-run baseline: the whole verification on one thread (what `verify` did before
        // pages were decoded on their own threads).
        if one_thread {
            let store = SqliteStore::open(&path).unwrap();
            let t = Instant::now();
            let report = palmgate::replay::audit::verify_paged(&store, 10_000, 0).unwrap();
            let el = t.elapsed().as_secs_f64();
            println!(
                "verify (one thread) run {run}: {} events in {el:.2} s = {:.0} events/s",
                report.events,
                report.events as f64 / el
            );
            store.close();
        }
        let store = SqliteStore::open(&path).unwrap();
        let t = Instant::now();
        let report = palmgate::replay::audit::verify(&store).unwrap();
        let el = t.elapsed().as_secs_f64();
        let rate = report.events as f64 / el;
        println!(
            "verify run {run}: {} events ({} decisions, {} findings) in {:.2} s = {:.0} events/s  target >=500k/s: {}",
            report.events,
            report.decisions,
            report.findings.len(),
            el,
            rate,
            if report.ok() && rate >= 500_000.0 {
                "MET"
            } else {
                "NOT MET"
            }
        );
        for f in report.findings.iter().take(3) {
            println!("  finding at {}: {}", f.position, f.problem);
        }
        store.close();
    }
    if !startup {
        std::process::exit(0);
    }

    let d = dir.display();
    let cfg = dir.join("palmgate-bench.toml");
    std::fs::write(
        &cfg,
        format!(
            "site = \"\"\n[http]\nlisten = \"127.0.0.1:0\"\n[store]\npath = \"{d}/events.db\"\n\
             [secrets]\nkey_file = \"{d}/master.key\"\nkey_store = \"{d}/keys.db\"\n\
             [mqtt.embedded]\nlisten = \"127.0.0.1:0\"\n[admin]\ntoken = \"bench-admin\"\n"
        ),
    )
    .unwrap();
    // A log with events gets no new master key at start-up (its templates and secrets would
    // have been sealed with another): the bench's log was written without one, so it is made
    // here, as an operator restoring the site's key would.
    {
        let key = dir.join("master.key");
        std::fs::write(&key, format!("{}\n", "5a".repeat(32))).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
    }
    let snapshots = SnapshotDir::beside(&path);
    let start = |label: &str, run: usize| {
        let config = palmgate::config::Config::load(Some(&cfg), &[]).unwrap();
        let t = Instant::now();
        let server = rt.block_on(palmgate::app::start(config)).expect("starts");
        let el = t.elapsed().as_secs_f64();
        let users = server.app.read(|s| s.users().count());
        let position = server.app.read(|s| s.position());
        println!(
            "start-up {label} run {run}: palmgate::app::start on {written} events took {el:.2} s ({:.0} events/s)  target <=2 s: {}",
            written as f64 / el,
            if el <= 2.0 { "MET" } else { "NOT MET" }
        );
        let _ = users;
        (server, position)
    };
    for run in 0..runs {
        // Without a snapshot: the whole log is folded. The background writer then folds it
        // again on its own thread and writes the first snapshot; that is timed too.
        let _ = std::fs::remove_dir_all(snapshots.path());
        let (server, position) = start("without snapshot", run);
        let took = wait_for_snapshot(&path, position, std::time::Duration::from_secs(120));
        match took {
            Some(s) => println!(
                "  background snapshot at {position} on disk {s:.2} s after start-up returned ({:.1} MB)",
                snapshots.list().unwrap()[0].len as f64 / 1e6
            ),
            None => println!("  background snapshot NOT written within 120 s"),
        }
        // The log and key store are locked while open: let go before the next start (tasks the server
        // started may hold the app a while after it is dropped).
        server.app.close();
        drop(server);
        std::thread::sleep(std::time::Duration::from_millis(300));
        // With it: the snapshot is loaded and no tail remains.
        let (server, _) = start("with snapshot", run);
        // The log and key store are locked while open: let go before the next start (tasks the server
        // started may hold the app a while after it is dropped).
        server.app.close();
        drop(server);
        std::thread::sleep(std::time::Duration::from_millis(300));
    }

    // Where a start-up from a snapshot spends its time.
    {
        let t = Instant::now();
        let store = SqliteStore::open(&path).unwrap();
        let open = t.elapsed().as_secs_f64();
        let info = snapshots.list().unwrap().remove(0);
        let t = Instant::now();
        let bytes = snapshots.read(&info).unwrap();
        let read = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let state = palmgate::core::snapshot::decode(&bytes, Default::default()).unwrap();
        let decode = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let encoded = palmgate::core::snapshot::encode(&state);
        let encode = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let loaded = palmgate::app::snapshot::load(&store, Default::default()).unwrap();
        let load = t.elapsed().as_secs_f64();
        assert_eq!(encoded, bytes, "canonical encoding");
        assert_eq!((loaded.snapshot, loaded.folded), (Some(info.position), 0));
        println!(
            "snapshot breakdown: {:.1} MB; SqliteStore::open (stream heads) {open:.2} s; \
             file read + digest {read:.2} s; decode {decode:.2} s; encode {encode:.2} s; \
             snapshot::load (list + hash check + read + decode) {load:.2} s",
            bytes.len() as f64 / 1e6
        );
        store.close();
    }
    std::process::exit(0);
}
