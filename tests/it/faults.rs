//! The fault suite (issue 8): the peers and the disk fail under a running server, and come
//! back.
//!
//! - **Disk write failure**: the event log on a small tmpfs that the test fills up (a real
//!   `ENOSPC` under SQLite), and — on any machine — the log's write lock held by another
//!   process past the busy timeout. The server must answer `/readyz` 503 and refuse new work
//!   with SPEC 2's failed-disk answer, 500 `{"message": "internal error"}`, instead of
//!   acknowledging what it cannot persist, keep serving reads,
//!   not hammer a webhook receiver whose answer it cannot record, and recover by itself (no
//!   restart) once the disk can be written again, with nothing acknowledged lost. Door scans
//!   during such an outage open nothing, are not decided late, and do not jam the broker.
//! - **MQTT broker down and back** (Mosquitto as the external broker): door scans get no
//!   answer and open nothing while it is down; once it is back on its port, readers and server
//!   reconnect and a scan opens the door.
//! - **Modbus board down mid-pulse, for longer than the pulse**: the gateway's OFF cannot reach
//!   it; when the board comes back (a latching relay still ON) the door ends locked at once.
//!   (`doors.rs` already covers a board that power-cycles mid-pulse, one that is dead while
//!   scans go on, and a coil found ON at start-up.)
//! - **Webhook receiver down, answering garbage, slow**: each is a recorded failed attempt on
//!   the retry schedule (or, for a slow 2xx within 10 s, a delivery), never a stuck outbox.
//!   (`webhooks.rs` already covers 5xx answers, the 10 s hang and a redirect.)

use crate::crash_suite::{audit_verify, next_command_where, reader};
use crate::doors::{Layout, WAIT, power_cycle, site_doc, until, writes_since};
use crate::fixtures::{Options, TestServer, send};
use crate::readers::{Mosquitto, free_port};
use crate::webhooks::{self, Gate, Receiver, Reply};
use chrono::Duration as Span;
use palmgate::app::clock::ManualClock;
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

// ---------------------------------------------------------------------------------------------
// Disk write failure
// ---------------------------------------------------------------------------------------------

/// A tmpfs of a fixed size mounted on a temporary directory; unmounted when dropped.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    /// `mount -t tmpfs -o size=SIZE`; `Err` says why not (not root, no CAP_SYS_ADMIN, ...).
    fn mount(size: &str) -> Result<SmallFs, String> {
        let dir = tempfile::Builder::new()
            .prefix("palmgate-smallfs-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
            .arg("tmpfs")
            .arg(dir.path())
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(SmallFs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn filler(&self) -> PathBuf {
        self.path().join("filler")
    }

    /// Writes a filler file until the filesystem is full; returns its size.
    fn fill(&self) -> u64 {
        let mut f = std::fs::File::create(self.filler()).expect("create filler");
        let chunk = vec![0xA5u8; 4096];
        let mut total = 0u64;
        loop {
            match f.write(&chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n as u64,
            }
        }
        let _ = f.sync_all();
        total
    }

    /// Space returns.
    fn free(&self) {
        std::fs::remove_file(self.filler()).expect("remove filler");
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        // Lazy: a process that still holds a file there must not make this fail.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Points the prepared server's `store.path` at `path` (the fixture writes its own).
fn move_store(s: &TestServer, path: &Path) {
    let cfg = std::fs::read_to_string(s.config_path()).unwrap();
    let old = format!("path = \"{}\"", s.store_path().display());
    assert!(
        cfg.contains(&old),
        "store.path in the fixture's config:\n{cfg}"
    );
    let new = format!("path = \"{}\"", path.display());
    std::fs::write(s.config_path(), cfg.replace(&old, &new)).unwrap();
}

async fn readyz(s: &TestServer) -> (u16, Value) {
    let a = send(s.get("/readyz")).await;
    (
        a.status,
        serde_json::from_str(&a.text).unwrap_or(Value::Null),
    )
}

/// Waits until `/readyz` answers `status` (deadline `within`).
async fn wait_ready(s: &TestServer, status: u16, within: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        let (got, body) = readyz(s).await;
        if got == status {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < within,
            "/readyz still {got} {body} after {within:?} (waiting for {status})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// While the log cannot be written: not ready (`/readyz` 503), every kind of new work refused
/// with SPEC 2's 500 `{"message": "internal error"}` (a failed disk), reads still answered — for `hold` (several probe periods).
async fn assert_refusing(s: &TestServer, key: &str, pending: &str, hold: Duration) -> usize {
    let end = Instant::now() + hold;
    let mut refused = 0;
    while Instant::now() < end {
        let (st, body) = readyz(s).await;
        assert_eq!(st, 503, "/readyz while the log cannot be written: {body}");
        assert!(body["message"].is_string(), "{body}");
        let id = s.identify(key, "").await;
        id.assert_error(500, "internal error");
        let en = s
            .enroll(key, "", &json!({"external_id": format!("E-{refused}")}))
            .await;
        en.assert_error(500, "internal error");
        s.cancel(key, pending)
            .await
            .assert_error(500, "internal error");
        refused += 3;
        // Reads still work: a session acknowledged before, and liveness.
        assert_eq!(s.session(key, pending).await.status, 200);
        assert_eq!(send(s.get("/healthz")).await.status, 200);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    refused
}

/// Sets the partner's webhook to `url`.
async fn set_webhook(s: &TestServer, key: &str, url: &str) {
    let a = send(
        s.client
            .put(s.url("/v1/webhook"))
            .header("x-api-key", key)
            .json(&json!({ "url": url })),
    )
    .await;
    assert_eq!(a.status, 200, "PUT /v1/webhook: {}", a.text);
}

/// The deliveries of the partner with `key` (all states).
async fn deliveries(s: &TestServer, key: &str) -> Vec<Value> {
    let a = send(s.get("/v1/webhook/deliveries").header("x-api-key", key)).await;
    assert_eq!(a.status, 200, "{}", a.text);
    a.json().as_array().unwrap().clone()
}

/// The event log on a 4 MiB tmpfs, filled to the last byte under the running server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_makes_the_server_unready_and_refuse_work_until_space_returns() {
    let fs = match SmallFs::mount("4m") {
        Ok(fs) => fs,
        Err(e) => {
            // Needs root with CAP_SYS_ADMIN; the lock test below covers the same code paths.
            println!("cannot mount a small filesystem ({e}): skipping the full-disk test");
            return;
        }
    };
    let started = Instant::now();
    // The receiver holds its first answer 3 s: that attempt's outcome cannot be recorded.
    let rx = Receiver::start(Reply::status(200)).await;
    rx.then([Reply::status(200).delay(Duration::from_secs(3))]);
    let mut s = TestServer::prepare(
        Options::default()
            .per_minute(100_000)
            .extra_toml("[webhooks]\nallow_networks = [\"127.0.0.0/8\"]"),
    );
    move_store(&s, &fs.path().join("events.db"));
    s.launch().await;
    assert!(
        fs.path().join("events.db-wal").exists(),
        "the WAL is on the small filesystem too"
    );
    let (_, key) = s.create_partner("Acme").await;
    set_webhook(&s, &key, &rx.url).await;

    // Acknowledged before the disk fills.
    let mut acked: Vec<String> = Vec::new();
    for _ in 0..5 {
        acked.push(s.identify(&key, "").await.created().session_id);
    }
    let pending = acked[0].clone();
    // A session ends: its webhook goes out and is held by the receiver while the disk fills.
    let cancelled = acked[1].clone();
    assert_eq!(s.cancel(&key, &cancelled).await.status, 200);
    let hook_id = webhooks::session_delivery_id(&cancelled);
    rx.wait_for(1, WAIT, "the webhook attempt in flight").await;

    let filled = fs.fill();
    // Work until the first write that cannot be persisted: the WAL may still have had room.
    let mut first_refusal = None;
    for i in 0..500 {
        let a = s.identify(&key, "").await;
        if a.status == 201 {
            acked.push(a.created().session_id);
            continue;
        }
        a.assert_error(500, "internal error");
        first_refusal = Some(i);
        break;
    }
    let first_refusal = first_refusal.expect("500 sessions acknowledged on a full disk?");
    let refused = assert_refusing(&s, &key, &pending, Duration::from_secs(4)).await;

    // The held attempt was answered 200 during the outage, but its outcome could not be
    // recorded: sent again later (at least once), never in a loop while the log is down.
    let during: Vec<_> = rx
        .hits()
        .into_iter()
        .filter(|h| h.id() == hook_id)
        .collect();
    assert!(
        during.len() <= 2,
        "the receiver was hammered while the log could not record its answers: {} requests",
        during.len()
    );

    // Space returns: ready again without a restart, and new work is accepted.
    fs.free();
    let recovered_in = wait_ready(&s, 200, Duration::from_secs(10)).await;
    let after = s.identify(&key, "").await.created().session_id;
    acked.push(after);
    for id in &acked {
        assert_eq!(s.session(&key, id).await.status, 200, "session {id} lost");
    }
    // The delivery whose outcome was lost is delivered, with the same id and attempt 1.
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        let d = deliveries(&s, &key).await;
        let d = d.iter().find(|d| d["id"] == hook_id).expect("the delivery");
        if d["status"] == "delivered" {
            break;
        }
        assert!(Instant::now() < end, "never delivered after recovery: {d}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let hits: Vec<_> = rx
        .hits()
        .into_iter()
        .filter(|h| h.id() == hook_id)
        .collect();
    assert!(
        hits.iter().all(|h| h.attempt() == 1),
        "one attempt, re-sent"
    );
    assert!(hits.len() <= 3, "{} sends of one attempt", hits.len());

    // And all of it survives a SIGKILL; the chain verifies.
    s.kill9();
    s.restart().await;
    for id in &acked {
        assert_eq!(s.session(&key, id).await.status, 200, "session {id} lost");
    }
    let (ok, out) = audit_verify(s.config_path());
    assert!(ok, "audit verify after the outage:\n{out}");
    println!(
        "full disk: filler {filled} B; first refusal after {first_refusal} more 201s; \
         {refused} requests refused with 503 over 4 s; ready again {recovered_in:?} after \
         space returned; {} sessions acknowledged, all kept; webhook attempt sent {} time(s); \
         {:?} in all",
        acked.len(),
        hits.len(),
        started.elapsed()
    );
    drop(s);
    drop(fs);
}

/// Another process holds the log's write lock longer than the server's busy timeout (5 s):
/// the same failure path as a full disk, on any machine, without root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_locked_by_another_process_makes_the_server_unready_until_released() {
    let started = Instant::now();
    let s = TestServer::start_with(Options::default().per_minute(100_000)).await;
    let (_, key) = s.create_partner("Acme").await;
    let mut acked = Vec::new();
    for _ in 0..3 {
        acked.push(s.identify(&key, "").await.created().session_id);
    }
    let pending = acked[0].clone();
    let lock = rusqlite::Connection::open(s.store_path()).unwrap();
    lock.busy_timeout(Duration::from_secs(10)).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    // The next write waits out the busy timeout, then is refused.
    let a = s.identify(&key, "").await;
    a.assert_error(500, "internal error");
    let refused = assert_refusing(&s, &key, &pending, Duration::from_secs(2)).await;
    lock.execute_batch("ROLLBACK").unwrap();
    let recovered_in = wait_ready(&s, 200, Duration::from_secs(15)).await;
    acked.push(s.identify(&key, "").await.created().session_id);
    for id in &acked {
        assert_eq!(s.session(&key, id).await.status, 200, "session {id} lost");
    }
    drop(lock);
    let (ok, out) = audit_verify(s.config_path());
    assert!(ok, "audit verify:\n{out}");
    println!(
        "locked log: {refused} requests refused with 503; ready {recovered_in:?} after the \
         lock was released; {:?} in all",
        started.elapsed()
    );
}

/// Door scans while the log cannot be written: nothing opens (a decision must be durable
/// first), and once the log is writable again the door works at once — even after more
/// scans than the broker keeps unacknowledged for one client — and no scan from the outage
/// opens the door late.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn door_scans_during_a_log_outage_open_nothing_and_the_door_works_after() {
    let board = crate::doors::new_board().await;
    let site_dir = tempfile::tempdir().unwrap();
    let site = site_dir.path().join("site.toml");
    std::fs::write(&site, site_doc(&board.url(), &Layout::default())).unwrap();
    let s = TestServer::start_with(
        Options::default()
            .per_minute(100_000)
            .extra_toml(&format!("site = {:?}", site.display().to_string())),
    )
    .await;
    let (_, key) = s.create_partner("Acme").await;
    crate::crash_suite::enroll_user(&s, &key, "alice", json!({"access_level": "standard"})).await;
    let mut lobby = reader(&s.mqtt_url, "lobby-1", "alice", 1).await.unwrap();
    until("the gateway holds the board", || {
        board.writes().iter().any(|(_, c, on)| *c == 0 && !*on)
    })
    .await;
    let (_, r) = scan_until_answered(&mut lobby, WAIT).await;
    assert_eq!(r["granted"], true, "{r}");

    let lock = rusqlite::Connection::open(s.store_path()).unwrap();
    lock.busy_timeout(Duration::from_secs(10)).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    s.identify(&key, "")
        .await
        .assert_error(500, "internal error");
    let outage = Instant::now();
    // More than the broker's in-flight window for one client (100 in the embedded broker,
    // 20 by default in Mosquitto).
    let scans = 250;
    let mut during = HashSet::new();
    for _ in 0..scans {
        let sent = lobby.capture(None).await.unwrap();
        during.insert(sent["capture_id"].as_str().unwrap().to_string());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let answered = next_command_where(&mut lobby, Duration::from_secs(2), |c| {
        c["action"] == "result"
    })
    .await;
    assert!(
        answered.as_ref().is_none_or(|c| c["granted"] != true),
        "granted while the log could not record it: {answered:?}"
    );
    assert!(
        writes_since(&board, 0, outage).iter().all(|(_, on)| !on),
        "the door opened while the log could not be written"
    );
    lock.execute_batch("ROLLBACK").unwrap();
    drop(lock);
    wait_ready(&s, 200, Duration::from_secs(15)).await;
    let back = Instant::now();
    let (id, r) = scan_until_answered(&mut lobby, Duration::from_secs(10)).await;
    let answered_in = back.elapsed();
    assert_eq!(r["granted"], true, "{r}");
    // Watch a while longer: nothing from the outage comes back.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pulses: Vec<_> = writes_since(&board, 0, outage)
        .into_iter()
        .filter(|(_, on)| *on)
        .collect();
    assert_eq!(
        pulses.len(),
        1,
        "only the scan after the outage opened the door: {pulses:?}"
    );
    let events = crate::crash_suite::events_after(&s, 0).await;
    let late: Vec<&Value> = events
        .iter()
        .filter(|e| {
            e["type"] == "DoorDecided"
                && e["data"]["capture_id"]
                    .as_str()
                    .is_some_and(|c| during.contains(c))
        })
        .collect();
    assert!(
        late.is_empty(),
        "scans of the outage decided late: {late:?}"
    );
    assert!(events.iter().any(|e| e["data"]["capture_id"] == id));
    println!(
        "log outage: {scans} door scans during it, none decided, no pulse; the next scan \
         answered {answered_in:?} after recovery"
    );
}

// ---------------------------------------------------------------------------------------------
// MQTT broker down and back
// ---------------------------------------------------------------------------------------------

/// Scans at the door until one gets a `result` (a capture published before the gateway has
/// re-subscribed is lost by MQTT semantics); the capture id and result.
async fn scan_until_answered(
    r: &mut palmgate::mqtt::simulate::SimReader,
    within: Duration,
) -> (String, Value) {
    let end = Instant::now() + within;
    loop {
        let sent = r.capture(None).await.expect("capture");
        let id = sent["capture_id"].as_str().unwrap().to_string();
        if let Some(res) =
            next_command_where(r, Duration::from_secs(2), |c| c["action"] == "result").await
        {
            return (id, res);
        }
        assert!(
            Instant::now() < end,
            "no door scan answered within {within:?}"
        );
    }
}

/// Mosquitto is the site's broker: stopped, door scans get no answer and open nothing (the
/// API and the log carry on, the server stays ready); started again on the same port, the
/// readers and the server reconnect and a scan opens the door.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_and_back_then_a_door_scan_works() {
    let Some(bin) = crate::readers::mosquitto_or_skip() else {
        return;
    };
    let port = free_port();
    let broker = Mosquitto::start(&bin, port);
    let url = format!("mqtt://127.0.0.1:{port}");
    let board = crate::doors::new_board().await;
    let site_dir = tempfile::tempdir().unwrap();
    let site = site_dir.path().join("site.toml");
    std::fs::write(&site, site_doc(&board.url(), &Layout::default())).unwrap();
    let s = TestServer::start_with(Options::default().extra_toml(&format!(
        "site = {:?}\n[mqtt]\nurl = \"{url}\"",
        site.display().to_string()
    )))
    .await;
    assert_eq!(s.mqtt_url, url, "readers use Mosquitto");
    let (_, key) = s.create_partner("Acme").await;
    crate::crash_suite::enroll_user(&s, &key, "alice", json!({"access_level": "standard"})).await;
    let mut lobby = reader(&url, "lobby-1", "alice", 1).await.unwrap();
    until("the gateway holds the board", || {
        board.writes().iter().any(|(_, c, on)| *c == 0 && !*on)
    })
    .await;
    let t0 = Instant::now();
    let (_, r) = scan_until_answered(&mut lobby, WAIT).await;
    assert_eq!(r["granted"], true, "{r}");
    crate::doors::wait_pulse(&board, 0, t0).await;

    // Down: a scan is queued by the reader, answered by no one, and opens nothing.
    broker.stop();
    let down_at = Instant::now();
    let queued = lobby
        .capture(None)
        .await
        .expect("a reader queues while offline");
    let queued_id = queued["capture_id"].as_str().unwrap().to_string();
    let none = next_command_where(&mut lobby, Duration::from_secs(3), |c| {
        c["action"] == "result"
    })
    .await;
    assert!(none.is_none(), "a result without a broker? {none:?}");
    assert!(
        writes_since(&board, 0, down_at).iter().all(|(_, on)| !on),
        "the door opened while the broker was down"
    );
    // The API and the log do not need the broker.
    s.identify(&key, "").await.created();
    assert_eq!(readyz(&s).await.0, 200);

    // Back on the same port: readers and server reconnect, and a scan works.
    let broker = Mosquitto::start(&bin, port);
    let back_at = Instant::now();
    let (id, r) = scan_until_answered(&mut lobby, Duration::from_secs(30)).await;
    let answered_in = back_at.elapsed();
    assert_eq!(r["granted"], true, "{r}");
    crate::doors::wait_pulse(&board, 0, back_at).await;
    let events = crate::crash_suite::events_after(&s, 0).await;
    let decided = |c: &str| {
        events
            .iter()
            .any(|e| e["type"] == "DoorDecided" && e["data"]["capture_id"] == c)
    };
    assert!(decided(&id), "the scan after the outage is in the log");
    // The scan queued during the outage is the reader's to drop or send when it reconnects
    // (a plain MQTT client sends it); either way it was not decided while the broker was down.
    let queued_decided = decided(&queued_id);
    println!(
        "broker down {:?}, back: a door scan answered {answered_in:?} after Mosquitto \
         restarted; the scan queued during the outage was {}",
        back_at - down_at,
        if queued_decided {
            "sent on reconnect and decided then"
        } else {
            "dropped"
        }
    );
    drop(broker);
}

// ---------------------------------------------------------------------------------------------
// Modbus board down mid-pulse, for longer than the pulse
// ---------------------------------------------------------------------------------------------

/// The board dies with the coil ON and stays away past the pulse's end (the gateway's OFF
/// cannot reach it); it comes back with the relay still latched ON: the gateway locks the door
/// on reconnect, records it, does not replay the pulse, and the door works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_board_down_mid_pulse_past_its_end_is_locked_when_it_returns() {
    let board = crate::doors::new_board().await;
    let layout = Layout {
        pulse_ms: 800,
        ..Layout::default()
    };
    let doc = site_doc(&board.url(), &layout);
    let site = crate::doors::start_with(board, vec![], &doc).await;
    site.enroll("alice", "alice", json!({"access_level": "standard"}))
        .await;
    let mut lobby = site.reader("lobby-1", "alice", 1).await;
    site.wait_door("main", "device up", |d| d["device_up"] == true)
        .await;

    let t0 = Instant::now();
    let (capture, r) = crate::doors::scan(&mut lobby, "alice").await;
    assert_eq!(r["granted"], true, "{r}");
    until("coil 0 ON", || site.board.coil(0)).await;
    site.board.stop();
    let down_at = Instant::now();
    site.wait_door("main", "device_down", |d| d["state"] == "device_down")
        .await;
    // Past the pulse's end: the OFF could not be written; the latching relay is still ON.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert!(site.board.coil(0), "nothing could reach the dead board");

    power_cycle(&site.board, false).await;
    let back_at = Instant::now();
    until("coil 0 OFF after the board returns", || !site.board.coil(0)).await;
    let locked_in = back_at.elapsed();
    site.wait_door("main", "locked with its board up", |d| {
        d["state"] == "locked" && d["relay_on"] == false && d["device_up"] == true
    })
    .await;
    let summary = site.log_summary().await;
    let decided = site
        .wait_event("DoorDecided", |d| d["capture_id"] == capture)
        .await;
    let after = decided["position"].as_u64().unwrap();
    let off = site
        .wait_event_after(after, "RelaySwitched", |d| {
            d["door"] == "main" && d["on"] == false
        })
        .await;
    let down = site
        .wait_event_after(after, "DeviceStatusChanged", |d| {
            d["device"] == "board-1" && d["up"] == false
        })
        .await;
    assert!(
        down["position"].as_u64() < off["position"].as_u64(),
        "the OFF is recorded after the board came back:\n{summary}"
    );
    // The pulse is not replayed late.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let late: Vec<_> = writes_since(&site.board, 0, back_at)
        .into_iter()
        .filter(|(_, on)| *on)
        .collect();
    assert!(
        late.is_empty(),
        "a pulse was replayed after the board returned: {late:?}"
    );
    // And the door works again.
    let t1 = Instant::now();
    let (_, r) = crate::doors::scan(&mut lobby, "alice").await;
    assert_eq!(r["granted"], true, "{r}");
    crate::doors::wait_pulse(&site.board, 0, t1).await;
    assert!(!site.board.coil(0));
    println!(
        "board down mid-pulse: ON at +{:?}, down {:?}, locked {locked_in:?} after it returned",
        down_at - t0,
        back_at - down_at
    );
}

// ---------------------------------------------------------------------------------------------
// Webhook receiver down, answering garbage, slow
// ---------------------------------------------------------------------------------------------

/// Nothing listens at the webhook URL: attempt 1 is a recorded connection failure, scheduled
/// again at +1 min; the receiver comes back on its port and attempt 2 is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_receiver_that_is_down_gets_the_retry_when_it_is_back() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/hook");
    let dir = webhooks::tempdir();
    let t0 = webhooks::now_secs();
    let clock = Arc::new(ManualClock::new(t0));
    let gate = Gate::start(dir.path(), true, clock.clone()).await;
    let (key, _) = gate.partner("Acme", Some(&url)).await;
    let id = webhooks::session_delivery_id(&gate.end_one(&key).await);
    let d = gate.wait_attempts(&key, &id, 1).await;
    let a = &d["attempts"][0];
    assert!(a["status_code"].is_null(), "{d}");
    assert_eq!(a["delivered"], false);
    let err = a["error"].as_str().unwrap_or_default();
    assert!(err.starts_with("connection failed"), "{d}");
    assert_eq!(d["status"], "pending");
    assert_eq!(
        d["next_attempt_at"],
        webhooks::text(t0 + Span::minutes(1)),
        "{d}"
    );

    let rx = Receiver::start_on(([127, 0, 0, 1], port).into(), Reply::status(200)).await;
    let hit = webhooks::step_to(&clock, &rx, t0 + Span::minutes(1), 1).await;
    assert_eq!((hit.id(), hit.attempt()), (id.clone(), 2));
    let d = gate
        .wait_delivery(&key, &id, "delivered", |d| d["status"] == "delivered")
        .await;
    assert_eq!(d["attempts"].as_array().unwrap().len(), 2, "{d}");
    gate.stop().await;
}

/// What a [`Garbage`] endpoint does with one connection.
#[derive(Clone, Copy, Debug)]
enum Junk {
    /// Bytes that are not HTTP, then close.
    NotHttp,
    /// Close without a byte.
    Hangup,
    /// A 200 with 64 KiB of binary junk as the body (a success: only 2 KB kept).
    Binary200,
}

/// A raw TCP endpoint answering each connection from a script; it keeps every request's head.
struct Garbage {
    url: String,
    heads: Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Garbage {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Garbage {
    async fn start(script: Vec<Junk>) -> Garbage {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let heads: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
        let seen = heads.clone();
        let task = tokio::spawn(async move {
            for junk in script {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                // Read the request head (the body is small; it may come with it or not).
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                seen.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf).into_owned());
                let out: Vec<u8> = match junk {
                    Junk::NotHttp => {
                        b"SSH-2.0-OpenSSH_9.6\r\n\x00\xff\xfe garbage\r\n\r\n".to_vec()
                    }
                    Junk::Hangup => Vec::new(),
                    Junk::Binary200 => {
                        let mut v = b"HTTP/1.1 200 OK\r\nContent-Length: 65536\r\n\r\n".to_vec();
                        v.extend(
                            (0..65536u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8),
                        );
                        v
                    }
                };
                let _ = sock.write_all(&out).await;
                let _ = sock.shutdown().await;
            }
        });
        Garbage { url, heads, task }
    }

    /// Waits until `n` requests arrived.
    async fn wait_for(&self, n: usize) -> Vec<String> {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let heads = self.heads.lock().unwrap().clone();
            if heads.len() >= n {
                return heads;
            }
            assert!(
                Instant::now() < end,
                "request {n} never reached the endpoint"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Garbage answers are failed attempts on the retry schedule — not a crash, not a stuck
/// outbox, not a success — and a 2xx with a binary body is a delivery with 2 KB kept. (A 2xx
/// whose body breaks off is a delivery too, SPEC 4: `webhooks::a_status_answered_at_once_…`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_receiver_answering_garbage_is_retried_then_delivered() {
    let junk = Garbage::start(vec![Junk::NotHttp, Junk::Hangup, Junk::Binary200]).await;
    let dir = webhooks::tempdir();
    let t0 = webhooks::now_secs();
    let clock = Arc::new(ManualClock::new(t0));
    let gate = Gate::start(dir.path(), true, clock.clone()).await;
    let (key, _) = gate.partner("Acme", Some(&junk.url)).await;
    let id = webhooks::session_delivery_id(&gate.end_one(&key).await);
    let mut due = t0;
    for (n, wait_min) in [(1usize, 0i64), (2, 1), (3, 5)] {
        due += Span::minutes(wait_min);
        clock.set(due);
        let heads = junk.wait_for(n).await;
        let head = heads[n - 1].to_ascii_lowercase();
        assert!(
            head.contains(&format!("x-webhook-attempt: {n}\r\n")),
            "attempt {n}: {head}"
        );
        assert!(head.contains(&format!("x-webhook-id: {}\r\n", id.to_ascii_lowercase())));
        gate.wait_attempts(&key, &id, n).await;
    }
    let d = gate
        .wait_delivery(&key, &id, "delivered", |d| d["status"] == "delivered")
        .await;
    let attempts = d["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3, "{d}");
    for a in &attempts[..2] {
        assert_eq!(a["delivered"], false, "{a}");
        assert!(a["error"].as_str().is_some_and(|e| !e.is_empty()), "{a}");
    }
    assert_eq!(attempts[2]["status_code"], 200, "{d}");
    assert_eq!(attempts[2]["delivered"], true);
    let kept = attempts[2]["response"].as_str().unwrap();
    assert!(
        (2000..=2048).contains(&kept.len()),
        "the first 2 KB of a binary answer, as text: {} bytes",
        kept.len()
    );
    for a in attempts {
        println!(
            "garbage receiver: attempt {} -> status {} error {} ({} bytes kept)",
            a["attempt"],
            a["status_code"],
            a["error"],
            a["response"].as_str().map_or(0, str::len)
        );
    }
    let w = gate.webhook(&key).await;
    assert_eq!(w["status"], "active", "{w}");
    let (code, _) = gate
        .send(Method::GET, "/readyz", webhooks::Auth::Admin, None)
        .await;
    assert_eq!(code, 200);
    gate.stop().await;
}

/// A slow receiver (3 s, inside the 10 s limit) is a delivery with its latency recorded, and
/// it does not hold up the partner's next delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_webhook_receiver_is_delivered_and_delays_nothing_else() {
    let rx = Receiver::start(Reply::status(200)).await;
    rx.then([Reply::status(200).delay(Duration::from_secs(3))]);
    let dir = webhooks::tempdir();
    let t0 = webhooks::now_secs();
    let clock = Arc::new(ManualClock::new(t0));
    let gate = Gate::start(dir.path(), true, clock.clone()).await;
    let (key, _) = gate.partner("Acme", Some(&rx.url)).await;
    let slow = webhooks::session_delivery_id(&gate.end_one(&key).await);
    rx.wait_for(1, webhooks::SOON, "the slow one").await;
    let fast = webhooks::session_delivery_id(&gate.end_one(&key).await);
    let hits = rx
        .wait_for(
            2,
            Duration::from_secs(2),
            "the next delivery while the slow one hangs",
        )
        .await;
    assert_eq!((hits[0].id(), hits[1].id()), (slow.clone(), fast.clone()));
    gate.wait_delivery(&key, &fast, "fast delivered", |d| {
        d["status"] == "delivered"
    })
    .await;
    assert_eq!(
        gate.delivery(&key, &slow).await.unwrap()["attempts"]
            .as_array()
            .unwrap()
            .len(),
        0,
        "the slow one is still in flight"
    );
    let d = gate
        .wait_delivery(&key, &slow, "slow delivered", |d| {
            d["status"] == "delivered"
        })
        .await;
    let a = &d["attempts"][0];
    assert_eq!(a["attempt"], 1);
    assert!(a["latency_ms"].as_u64().unwrap() >= 2900, "{a}");
    rx.stays(2, "nothing sent twice").await;
    gate.stop().await;
}

/// More deliveries due than a partner's request slots when the log becomes unwritable: the
/// ones still waiting for a slot are not sent once they get one, since what came of them could
/// not be recorded and they would go out again, as the same attempt, after recovery. Only the
/// attempts already in flight reach the receiver; everything is delivered once the log is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_queued_for_a_slot_are_not_sent_while_the_log_is_unwritable() {
    let slots = palmgate::webhooks::PER_PARTNER;
    let rx = Receiver::start(Reply::status(200)).await;
    // The first attempts hold every slot past the moment the log is refused (busy timeout 5 s).
    rx.then((0..slots).map(|_| Reply::status(200).delay(Duration::from_secs(9))));
    let dir = webhooks::tempdir();
    let clock = Arc::new(ManualClock::new(webhooks::now_secs()));
    let gate = Gate::start(dir.path(), true, clock).await;
    let (key, _) = gate.partner("Acme", Some(&rx.url)).await;
    for _ in 0..slots + 8 {
        gate.end_one(&key).await;
    }
    let sent_at = Instant::now();
    rx.wait_for(slots, webhooks::SOON, "a slot's worth in flight")
        .await;

    let lock = rusqlite::Connection::open(dir.path().join("events.db")).unwrap();
    lock.busy_timeout(Duration::from_secs(30)).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    // A write waits out the busy timeout and fails: the log is unwritable from then on.
    let (status, _) = gate.v1(Method::POST, "/v1/identify", &key, None).await;
    assert_eq!(status, 500);
    // The slow answers come back, the queued deliveries get their slots: nothing more is sent.
    while sent_at.elapsed() < Duration::from_secs(11) {
        assert_eq!(
            rx.count(),
            slots,
            "a delivery was sent while its outcome could not be recorded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    lock.execute_batch("ROLLBACK").unwrap();
    drop(lock);
    let deadline = Instant::now() + Duration::from_secs(30);
    while gate.deliveries(&key, Some("delivered")).await.len() < slots + 8 {
        assert!(
            Instant::now() < deadline,
            "not everything was delivered after recovery"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    gate.stop().await;
}
