//! Board-timed pulses (`device_timed_pulse` on a door, `timed_pulse` on its board): one
//! register write starts the pulse and the board ends it — so a gateway killed mid-pulse
//! cannot leave the door open. Against the simulated board's pulse timer
//! (`palmgate::modbus::sim::TIMED_BASE`, 100 ms units).

use crate::doors::{
    Layout, WAIT, new_board, relay_switched, scan, site_doc, start_with, until, writes_since,
};
use crate::fixtures::{ADMIN_TOKEN, Options, TestServer};
use palmgate::core::ReaderId;
use palmgate::modbus::sim::{SimBoard, TIMED_BASE, TIMED_UNIT_MS};
use palmgate::mqtt::simulate::{SimOptions, SimReader};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::time::Instant;

fn timed_doc(board: &SimBoard, pulse_ms: u32) -> String {
    let layout = Layout {
        pulse_ms,
        main_door: "device_timed_pulse = true".into(),
        ..Layout::default()
    };
    site_doc(&board.url(), &layout).replacen(
        "unit = 1",
        &format!(
            "unit = 1\ntimed_pulse = {{ register_base = {TIMED_BASE}, unit_ms = {TIMED_UNIT_MS} }}"
        ),
        1,
    )
}

/// A site whose door `main` is board-timed (`pulse_ms`), alice enrolled at level `standard`,
/// and her reader at `lobby-1`, once the board is up.
async fn timed_site_with_alice(pulse_ms: u32) -> (crate::doors::Site, SimReader) {
    let board = new_board().await;
    let doc = timed_doc(&board, pulse_ms);
    let site = start_with(board, vec![], &doc).await;
    site.enroll("alice", "alice", json!({"access_level": "standard"}))
        .await;
    let lobby = site.reader("lobby-1", "alice", 1).await;
    site.wait_door("main", "device up", |d| d["device_up"] == true)
        .await;
    (site, lobby)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_board_timed_pulse_is_one_write_and_the_board_ends_it() {
    let (site, mut lobby) = timed_site_with_alice(800).await;
    let t0 = Instant::now();
    let (_, r) = scan(&mut lobby, "alice").await;
    assert_eq!(r["granted"], true, "{r}");
    until("coil 0 ON", || site.board.coil(0)).await;
    until("coil 0 OFF", || !site.board.coil(0)).await;
    let writes = writes_since(&site.board, 0, t0);
    assert_eq!(
        writes.len(),
        2,
        "one timer start and the board's own OFF: {writes:?}"
    );
    let held = writes[1].0.duration_since(writes[0].0);
    assert!(
        held >= Duration::from_millis(790) && held < Duration::from_millis(1500),
        "held {held:?} for a pulse of 800 ms"
    );
    // The log still says ON then OFF for the grant (OFF read back after the board's timer).
    let on = site
        .wait_event("RelaySwitched", |d| d["door"] == "main" && d["on"] == true)
        .await;
    let off = site
        .wait_event("RelaySwitched", |d| {
            d["door"] == "main" && d["on"] == false && d["tag"] != ""
        })
        .await;
    assert_eq!(on["data"]["tag"], off["data"]["tag"]);
    site.wait_door("main", "locked", |d| {
        d["state"] == "locked" && d["relay_on"] == false
    })
    .await;
    drop(lobby);
}

/// The point of board-timed pulses: SIGKILL the gateway while the door is open; the board
/// locks it on time by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_mid_pulse_leaves_the_door_locked_by_the_board() {
    let board = new_board().await;
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("site.toml");
    std::fs::write(&site, timed_doc(&board, 1500)).unwrap();
    let mut s = TestServer::start_with(
        Options::default().extra_toml(&format!("site = {:?}", site.display().to_string())),
    )
    .await;
    let (_, key) = s.create_partner("Acme").await;
    let reader = |id: &str, seed: u64| {
        SimReader::connect(SimOptions {
            mqtt_url: s.mqtt_url.clone(),
            topic_prefix: "palmgate".into(),
            reader: ReaderId(id.into()),
            palm: "alice".into(),
            dim: 128,
            quality: 0.93,
            liveness: true,
            seed,
        })
    };
    // Enroll alice through the API and the desk reader.
    let created = s
        .enroll(
            &key,
            "",
            &json!({"external_id": "alice", "metadata": {"access_level": "standard"}}),
        )
        .await
        .created();
    let mut desk = reader("desk-1", 100).await.unwrap();
    desk.capture(Some(&created.token())).await.unwrap();
    let end = Instant::now() + WAIT;
    loop {
        let v: Value = s.session(&key, &created.session_id).await.json();
        if v["state"] == "completed" {
            break;
        }
        assert!(Instant::now() < end, "enrollment did not complete: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut lobby = reader("lobby-1", 1).await.unwrap();
    // Wait until the gateway holds the board (its resting drive wrote coil 0 OFF).
    until("the gateway drove the board", || {
        board.writes().iter().any(|(_, c, on)| *c == 0 && !*on)
    })
    .await;
    let t0 = Instant::now();
    lobby.capture(None).await.unwrap();
    until("coil 0 ON", || board.coil(0)).await;
    let on_at = Instant::now();
    s.kill9();
    until("coil 0 OFF with the gateway dead", || !board.coil(0)).await;
    let off = writes_since(&board, 0, t0);
    let held = off.last().unwrap().0.duration_since(off[0].0);
    assert!(
        held < Duration::from_millis(2500),
        "the board ended the 1.5 s pulse after {held:?}"
    );
    assert!(on_at.elapsed() < WAIT);
    // Back up: the grant is in the log and the door reads locked.
    s.restart().await;
    let r = s
        .client
        .get(s.url("/admin/v1/events?limit=1000"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let events: Value = r.json().await.unwrap();
    let granted = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["type"] == "DoorDecided" && e["data"]["verdict"]["verdict"] == "granted");
    assert!(
        granted,
        "the grant was durable before the relay moved: {events}"
    );
    assert!(!board.coil(0));
}

/// A door resting unlocked (here an emergency) is never locked by the board's pulse timer: an
/// emergency declared while a board-timed pulse runs overrides the timer at once (a direct
/// coil write), and a grant while the door rests unlocked is not timed by the board (whose
/// timer would switch the coil OFF at its end until the gateway switched it back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_door_resting_unlocked_is_never_locked_by_the_boards_timer() {
    let (site, mut lobby) = timed_site_with_alice(600).await;
    // A timed pulse runs; the emergency comes 200 ms into it.
    let (_, r) = scan(&mut lobby, "alice").await;
    assert_eq!(r["granted"], true, "{r}");
    until("coil 0 ON", || site.board.coil(0)).await;
    let t0 = Instant::now();
    site.set_mode("emergency-unlock", true).await;
    site.wait_door("main", "resting unlocked", |d| d["state"] == "unlocked")
        .await;
    // Past the board's timer (600 ms) and the gateway's check after it.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(site.board.coil(0), "the door stayed unlocked");
    let offs: Vec<_> = writes_since(&site.board, 0, t0)
        .into_iter()
        .filter(|(_, on)| !on)
        .collect();
    assert_eq!(offs, vec![], "no OFF during the emergency");
    // A grant while the door rests unlocked.
    let t1 = Instant::now();
    let (_, r) = scan(&mut lobby, "alice").await;
    assert_eq!(r["granted"], true, "{r}");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(site.board.coil(0), "the door stayed unlocked");
    let writes = writes_since(&site.board, 0, t1);
    assert!(
        writes.iter().all(|(_, on)| *on),
        "no OFF (no board timer): {writes:?}"
    );
    drop(lobby);
}

/// A site whose door `side` (coil 1 of the timed board, pulses of `pulse_ms`, open to level
/// `standard`) rests unlocked all day through an unlock window holding it as a lease of
/// `lease_s` on the board's timer.
fn leased_doc(board: &SimBoard, lease_s: u32, pulse_ms: u32) -> String {
    let layout = Layout {
        standard_doors: r#""main", "side""#.into(),
        extra: format!(
            "\n[[doors]]\nid = \"side\"\nreaders = [\"side-1\"]\n\
             relay = {{ device = \"board-1\", coil = 1, pulse_ms = {pulse_ms} }}\n\n\
             [[unlock_windows]]\ndoor = \"side\"\nschedule = \"always\"\nlease_s = {lease_s}\n"
        ),
        ..Layout::default()
    };
    site_doc(&board.url(), &layout).replacen(
        "unit = 1",
        &format!(
            "unit = 1\ntimed_pulse = {{ register_base = {TIMED_BASE}, unit_ms = {TIMED_UNIT_MS} }}"
        ),
        1,
    )
}

/// Waits (up to `within`) for coil `coil` to read `on`; how long that took.
async fn coil_within(
    board: &SimBoard,
    coil: u16,
    on: bool,
    within: Duration,
    what: &str,
) -> Duration {
    let t0 = Instant::now();
    while board.coil(coil) != on {
        assert!(
            t0.elapsed() < within,
            "{what}: coil {coil} is not {on} after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    t0.elapsed()
}

/// The side door's `lease_s` as `GET /admin/v1/doors` gives it.
async fn side_lease(s: &TestServer) -> Value {
    let doors = s.admin_json("/admin/v1/doors").await;
    let side = doors
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == "side")
        .cloned()
        .expect("the side door");
    assert!(side.get("lease_s").is_some(), "{side}");
    side["lease_s"].clone()
}

/// Declares or lifts the emergency unlock through the admin API.
async fn emergency(s: &TestServer, on: bool) -> reqwest::Response {
    s.client
        .post(s.url("/admin/v1/emergency-unlock"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({ "on": on }))
        .send()
        .await
        .unwrap()
}

/// `lease_s` on an unlock window: the door rests unlocked through the board's timer, renewed
/// by the gateway, so it stays unlocked while the gateway runs and locks by itself within the
/// lease when the gateway dies (SIGKILL): SPEC 7's "never left unlocked by a failure" for a
/// crash too. The next start unlocks it again. An emergency is not leased (a dead gateway must
/// not lock the doors of a building on fire); lifting it brings the lease back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leased_unlock_window_locks_its_door_when_the_gateway_dies() {
    let board = new_board().await;
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("site.toml");
    std::fs::write(&site, leased_doc(&board, 3, 400)).unwrap();
    let mut s = TestServer::start_with(
        Options::default().extra_toml(&format!("site = {:?}", site.display().to_string())),
    )
    .await;
    coil_within(&board, 1, true, WAIT, "the window holds the side door").await;
    assert_eq!(
        side_lease(&s).await,
        json!(3),
        "the doors API names the lease"
    );
    // The log's count of the side door's ONs, which renewals do not add to.
    let log = s.store_path();
    let side_ons = || relay_switched(&log, "side", true);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ons = side_ons();
    assert!(ons >= 1, "the leased rest's ON is recorded");
    // Renewed: ON for twice the lease, with the timer written again and never an OFF.
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(6) {
        assert!(
            board.coil(1),
            "the leased door locked while the gateway ran ({:?})",
            t0.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let writes = writes_since(&board, 1, t0);
    assert!(writes.iter().all(|(_, on)| *on), "no OFF: {writes:?}");
    assert!(
        writes.len() >= 4,
        "the lease renewed about every second: {writes:?}"
    );
    assert_eq!(side_ons(), ons, "renewals are not recorded");

    // Killed: the board locks the door within the lease.
    let before_restart = side_ons();
    s.kill9();
    let took = coil_within(
        &board,
        1,
        false,
        Duration::from_secs(6),
        "the board ends the lease",
    )
    .await;
    assert!(
        took <= Duration::from_millis(3500),
        "locked {took:?} after the kill (lease 3 s)"
    );
    // Back: unlocked again inside the window.
    s.launch().await;
    coil_within(&board, 1, true, WAIT, "started again inside the window").await;
    // The restart's own ON recorded (and any second drive of it) before counting.
    let end = Instant::now() + WAIT;
    while side_ons() == before_restart {
        assert!(Instant::now() < end, "the restart's ON is not recorded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // An emergency: a plain ON, which outlives the gateway.
    let ons = side_ons();
    let r = emergency(&s, true).await;
    assert_eq!(r.status(), 200);
    // The emergency's ON is a coil write (which ends the board's timer), recorded (a renewal
    // is not).
    let end = Instant::now() + WAIT;
    while relay_switched(&log, "side", true) == ons {
        assert!(Instant::now() < end, "no coil write for the emergency");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        side_lease(&s).await,
        Value::Null,
        "no lease in an emergency"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.kill9();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(board.coil(1), "an emergency's unlock outlives the gateway");
    s.launch().await;
    let r = emergency(&s, false).await;
    assert_eq!(r.status(), 200);
    // Lifted: the window's lease again (a timer write), so a kill locks the door.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(board.coil(1), "the window still holds the door");
    s.kill9();
    coil_within(
        &board,
        1,
        false,
        Duration::from_secs(6),
        "the lease is back after the emergency",
    )
    .await;
}

/// An emergency declared while a leased door (resting unlocked) runs a pulse the gateway
/// times: the emergency's plain ON is written at once. Before (review of the lease, session
/// 27), the lease was dropped and nothing written until the pulse's end, so the board's timer
/// locked the door in the middle of an emergency.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emergency_during_a_pulse_at_a_leased_door_keeps_it_unlocked() {
    let board = new_board().await;
    let doc = leased_doc(&board, 3, 12_000);
    let site = start_with(board, vec![], &doc).await;
    site.enroll("alice", "alice", json!({"access_level": "standard"}))
        .await;
    let mut side = site.reader("side-1", "alice", 1).await;
    coil_within(&site.board, 1, true, WAIT, "the window holds the side door").await;
    let (_, r) = scan(&mut side, "alice").await;
    assert_eq!(r["granted"], true, "{r}");
    site.set_mode("emergency-unlock", true).await;
    // Past twice the lease, inside the 12 s pulse.
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(7) {
        assert!(
            site.board.coil(1),
            "the door locked during the emergency ({:?} after it)",
            t0.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(side);
}

/// Leases follow the windows as they open and close while another window holds the door: a
/// leased window opening later puts the door on the board's timer, and its closing takes it
/// off again (a plain ON under the window left), the door unlocked throughout. Before (review,
/// session 27), the lease was settled only when the door started resting unlocked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leased_window_opening_and_closing_under_another_moves_the_lease() {
    use chrono::TimeZone;
    let board = new_board().await;
    let doc = leased_doc(&board, 3, 400)
        .replace(
            "lease_s = 3\n",
            "lease_s = 3\n\n[[unlock_windows]]\ndoor = \"side\"\nschedule = \"always\"\n",
        )
        .replacen(
            "[[unlock_windows]]\ndoor = \"side\"\nschedule = \"always\"\nlease_s = 3",
            "[[unlock_windows]]\ndoor = \"side\"\nschedule = \"even\"\nlease_s = 3",
            1,
        )
        .replacen(
            "[schedules]\n",
            "[schedules]\neven = [\"* */2 * * * *\"]\n",
            1,
        );
    assert!(doc.contains("schedule = \"even\"\nlease_s = 3"), "{doc}");
    // 11:01:10 in Almaty: an odd minute, the leased window closed.
    let start = chrono::Utc
        .with_ymd_and_hms(2026, 11, 27, 6, 1, 10)
        .unwrap();
    let clock = std::sync::Arc::new(palmgate::app::clock::ManualClock::new(start));
    let site = crate::doors::start_on(board, vec![], &doc, clock.clone()).await;
    coil_within(
        &site.board,
        1,
        true,
        WAIT,
        "the unleased window holds the door",
    )
    .await;
    let timer = async |want: bool, what: &str| {
        let end = Instant::now() + WAIT;
        while site.board.timer_running(1) != want {
            assert!(Instant::now() < end, "{what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !site.board.timer_running(1),
        "no lease while only the unleased window is open"
    );
    // 11:02:10: the leased window opens too.
    clock.advance(chrono::Duration::seconds(60));
    timer(true, "the leased window's lease is not held").await;
    // 11:03:10: it closes; the other still holds the door, on a plain ON.
    clock.advance(chrono::Duration::seconds(60));
    timer(false, "the closed window's lease is still held").await;
    tokio::time::sleep(Duration::from_millis(4000)).await;
    assert!(site.board.coil(1), "the door stayed unlocked throughout");
}
