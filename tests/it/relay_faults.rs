//! Relay-board faults that must stay local (SPEC 7): a coil or input the board refuses does not
//! stop the rest of the board, nor flood the log; and a relay or input report made while the
//! event log cannot be written is recorded once the log is back, not dropped.
//!
//! The peer is the simulated Modbus board (`palmgate::modbus::sim`), which answers
//! `IllegalDataAddress` for a coil or input at or beyond [`SIZE`], as a real board does for an
//! address it does not have.

use crate::crash_suite::events_after;
use crate::doors::{Layout, WAIT, new_board, scan, site_doc, start_with, until};
use crate::fixtures::{ADMIN_TOKEN, Options, TestServer, send};
use palmgate::modbus::sim::SIZE;
use serde_json::{Value, json};
use std::time::Duration;
use tokio::time::Instant;

/// An address the simulated board does not have.
const MISSING: u16 = SIZE as u16 + 36;

/// Relay and device events: what a board that fails on every pass would flood the log with.
const RELAY_KINDS: [&str; 3] = ["RelaySwitched", "RelayFailed", "DeviceStatusChanged"];

/// One board: door `main` (reader `r-main`) on coil 0, and door `lab` on `lab_coil` with
/// `lab_contact` (a contact input) when given.
fn two_doors(board_url: &str, lab_coil: u16, lab_contact: Option<u16>) -> String {
    let contact = lab_contact.map_or(String::new(), |i| {
        format!("contact = {{ device = \"board-1\", input = {i}, held_open_after_s = 30 }}")
    });
    format!(
        r#"timezone = "Asia/Almaty"
partners = ["*"]

[[relay_devices]]
id = "board-1"
modbus = "{board_url}"
unit = 1

[[doors]]
id = "main"
readers = ["r-main"]
relay = {{ device = "board-1", coil = 0, pulse_ms = 400 }}

[[doors]]
id = "lab"
readers = ["r-lab"]
relay = {{ device = "board-1", coil = {lab_coil}, pulse_ms = 400 }}
{contact}

[schedules]
always = ["* * * * * *"]

[[levels]]
name = "standard"
doors = ["main", "lab"]
schedule = "always"
"#
    )
}

/// A granted scan at `r-main` drives coil 0 ON within 2 s, whatever fails on `lab`; then, 3 s
/// later, the log holds a handful of relay events, not one per pass. Returns the relay events.
async fn main_door_works_and_the_log_stays_quiet(doc: impl Fn(&str) -> String) -> Vec<Value> {
    let board = new_board().await;
    let doc = doc(&board.url());
    let site = start_with(board, vec![], &doc).await;
    site.enroll("alice", "alice", json!({"access_level": "standard"}))
        .await;
    // No wait for the board: it is up from the start, so the device task is connected well
    // before the enrollment is done (and a board stuck on `lab` never says it is).
    let mut r_main = site.reader("r-main", "alice", 1).await;

    let (_, r) = scan(&mut r_main, "alice").await;
    assert_eq!(r["granted"], true, "{r}");
    assert_eq!(r["door"], "main", "{r}");
    let granted = Instant::now();
    while !site.board.coil(0) {
        assert!(
            granted.elapsed() < Duration::from_secs(2),
            "a grant at `main` did not drive coil 0 ON within 2 s; the log:\n{}",
            site.log_summary().await
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    until("coil 0 OFF after the pulse", || !site.board.coil(0)).await;

    tokio::time::sleep(Duration::from_secs(3)).await;
    let relay: Vec<Value> = site
        .events()
        .await
        .into_iter()
        .filter(|e| RELAY_KINDS.iter().any(|k| e["type"] == *k))
        .collect();
    // Connect (device up, coils 0 and 1 locked), the pulse (ON, OFF), the fault: 6 or so.
    assert!(
        relay.len() <= 10,
        "{} relay events in 3 s (a flood); the log:\n{}",
        relay.len(),
        site.log_summary().await
    );
    relay
}

/// A contact input the board does not have: logged, the input skipped; the other door's grant
/// pulses its coil, and the board is not reconnected pass after pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_contact_input_does_not_stop_the_other_doors_of_its_board() {
    let relay =
        main_door_works_and_the_log_stays_quiet(|url| two_doors(url, 1, Some(MISSING))).await;
    let downs = relay
        .iter()
        .filter(|e| e["type"] == "DeviceStatusChanged" && e["data"]["up"] == false)
        .count();
    assert_eq!(downs, 0, "the board was taken for down: {relay:?}");
    assert!(
        relay.iter().all(|e| e["type"] != "RelayFailed"),
        "no coil failed: {relay:?}"
    );
}

/// A door coil the board does not have: one RelayFailed for it (not one per retry), and the
/// other door of the board works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_coil_is_reported_once_and_does_not_stop_the_other_doors_of_its_board() {
    let relay = main_door_works_and_the_log_stays_quiet(|url| two_doors(url, MISSING, None)).await;
    let failed: Vec<&Value> = relay
        .iter()
        .filter(|e| e["type"] == "RelayFailed")
        .collect();
    assert_eq!(failed.len(), 1, "{relay:?}");
    assert_eq!(failed[0]["data"]["door"], "lab", "{failed:?}");
    assert_eq!(failed[0]["data"]["coil"], MISSING, "{failed:?}");
}

async fn admin_get(s: &TestServer, path: &str) -> Value {
    let a = send(s.get(path).bearer_auth(ADMIN_TOKEN)).await;
    assert_eq!(a.status, 200, "GET {path}: {}", a.text);
    a.json()
}

/// Waits until `/readyz` answers `status`.
async fn wait_ready(s: &TestServer, status: u16, within: Duration) {
    let end = Instant::now() + within;
    loop {
        let a = send(s.get("/readyz")).await;
        if a.status == status {
            return;
        }
        assert!(
            Instant::now() < end,
            "/readyz still {} {} after {within:?}",
            a.status,
            a.text
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The door contact opens while another process holds the log's write lock (the log cannot
/// be written; the board reports the change only once): once the log is back, the opening
/// and the forced-open alarm are recorded — the report was kept, not dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contact_change_during_a_log_outage_is_recorded_once_the_log_is_back() {
    let board = new_board().await;
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
    // The board is up and the contact read closed before the outage.
    let end = Instant::now() + WAIT;
    loop {
        let doors = admin_get(&s, "/admin/v1/doors").await;
        let main = doors
            .as_array()
            .and_then(|d| d.iter().find(|d| d["id"] == "main"))
            .cloned()
            .unwrap_or(Value::Null);
        if main["device_up"] == true && main["open"] == false {
            break;
        }
        assert!(Instant::now() < end, "door main not read: {main}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    let lock = rusqlite::Connection::open(s.store_path()).unwrap();
    lock.busy_timeout(Duration::from_secs(10)).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    // The next write waits out the busy timeout, then is refused: the log is down.
    s.identify(&key, "")
        .await
        .assert_error(500, "internal error");
    board.set_input(0, true);
    // Polled within 100 ms, reported, refused.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let during = events_after(&s, 0).await;
    assert!(
        during.iter().all(|e| e["type"] != "DoorContactChanged"),
        "recorded while the log was locked? {during:?}"
    );
    lock.execute_batch("ROLLBACK").unwrap();
    drop(lock);
    wait_ready(&s, 200, Duration::from_secs(15)).await;

    let back = Instant::now();
    loop {
        let events = events_after(&s, 0).await;
        let opened = events.iter().any(|e| {
            e["type"] == "DoorContactChanged"
                && e["data"]["door"] == "main"
                && e["data"]["open"] == true
        });
        let forced = events
            .iter()
            .any(|e| e["type"] == "DoorForcedOpen" && e["data"]["door"] == "main");
        if opened && forced {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(5),
            "5 s after the log came back: contact opening recorded {opened}, forced open \
             recorded {forced}; the log:\n{}",
            events
                .iter()
                .map(|e| format!("{} {}", e["type"], e["data"]))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let main = admin_get(&s, "/admin/v1/doors").await;
    let main = main
        .as_array()
        .and_then(|d| d.iter().find(|d| d["id"] == "main"))
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(main["open"], true, "{main}");
    assert_eq!(main["alarm"], "forced", "{main}");
}

/// The gateway stopped (SIGTERM, as systemd does) in the middle of a grant's pulse: the pulse
/// ends before the process does. Before, the OFF was a timer in the device task, which the
/// runtime dropped at exit: a latching relay kept the door unlocked until the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_stopped_mid_pulse_ends_the_pulse_first() {
    let board = new_board().await;
    let site_dir = tempfile::tempdir().unwrap();
    let site = site_dir.path().join("site.toml");
    let layout = Layout {
        pulse_ms: 20_000,
        ..Layout::default()
    };
    std::fs::write(&site, site_doc(&board.url(), &layout)).unwrap();
    let mut s = TestServer::start_with(
        Options::default().extra_toml(&format!("site = {:?}", site.display().to_string())),
    )
    .await;
    let (_, key) = s.create_partner("Acme").await;
    crate::crash_suite::enroll_user(&s, &key, "alice", json!({"access_level": "standard"})).await;
    let mut lobby = crate::crash_suite::reader(&s.mqtt_url, "lobby-1", "alice", 1)
        .await
        .unwrap();
    until("the gateway holds the board", || {
        board.writes().iter().any(|(_, c, on)| *c == 0 && !*on)
    })
    .await;
    lobby.capture(None).await.expect("capture");
    until("coil 0 ON for the grant", || board.coil(0)).await;
    let stopping = Instant::now();
    let status = s.terminate().expect("the gateway exits on SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(
        !board.coil(0),
        "the door was left unlocked by a gateway stopped mid-pulse"
    );
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "stopping took {:?}",
        stopping.elapsed()
    );
}
