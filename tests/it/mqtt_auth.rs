//! A broker that refuses anonymous clients (the deploy/ Mosquitto setup): the server and the
//! simulated reader log in with the user name and password of their `mqtt://user:pass@host`
//! URL. Peer: Mosquitto (print and return without it; fail under PALMGATE_PEERS=required).

use crate::fixtures::{ADMIN_TOKEN, Options, TestServer, send};
use crate::readers::free_port;
use palmgate::core::ReaderId;
use palmgate::mqtt::simulate::{SimOptions, SimReader};
use std::path::Path;
use std::time::Duration;

fn reader(url: &str) -> SimOptions {
    SimOptions {
        mqtt_url: url.to_string(),
        topic_prefix: "palmgate".into(),
        reader: ReaderId("door-7".into()),
        palm: "alice".into(),
        dim: 128,
        quality: 0.93,
        liveness: true,
        seed: 1,
    }
}

/// Waits until the server lists reader `door-7` online: its retained status reached the
/// server, which therefore logged in to the broker and subscribed.
async fn door_7_online(s: &TestServer) {
    let end = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let r = send(s.get("/admin/v1/readers").bearer_auth(ADMIN_TOKEN)).await;
        let v = r.json();
        if v.as_array()
            .unwrap()
            .iter()
            .any(|x| x["id"] == "door-7" && x["online"] == true)
        {
            return;
        }
        assert!(
            std::time::Instant::now() < end,
            "the server never saw the reader: {v}\n{}",
            s.stderr_log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_and_readers_log_in_to_a_broker_without_anonymous_access() {
    let Some(bin) = crate::readers::mosquitto_or_skip() else {
        return;
    };
    let passwd = bin.with_file_name("mosquitto_passwd");
    let passwd = if passwd.exists() {
        passwd
    } else {
        Path::new("/usr/bin/mosquitto_passwd").to_path_buf()
    };
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("passwd");
    for (i, (user, pass)) in [("palmgate", "gw p@ss"), ("door-7", "r7-secret")]
        .iter()
        .enumerate()
    {
        let mut cmd = std::process::Command::new(&passwd);
        if i == 0 {
            cmd.arg("-c");
        }
        let ok = cmd
            .args(["-b"])
            .arg(&pw)
            .args([user, pass])
            .status()
            .expect("run mosquitto_passwd");
        assert!(ok.success());
    }
    let port = free_port();
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\n",
            pw.display()
        ),
    )
    .unwrap();
    let mut broker = std::process::Command::new(&bin)
        .arg("-c")
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < end, "mosquitto did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }

    // The password has a space and an @: percent-encoded in the URL.
    let s = TestServer::start_with(Options::default().extra_toml(&format!(
        "[mqtt]\nurl = \"mqtt://palmgate:gw%20p%40ss@127.0.0.1:{port}\""
    )))
    .await;
    // Anonymous, and a wrong password, are refused by the broker.
    let anon = SimReader::connect(reader(&format!("mqtt://127.0.0.1:{port}"))).await;
    assert!(anon.is_err(), "an anonymous reader got in");
    let wrong = SimReader::connect(reader(&format!("mqtt://door-7:nope@127.0.0.1:{port}"))).await;
    assert!(wrong.is_err(), "a wrong password got in");
    // With its password the reader connects; its retained status reaches the server, which
    // therefore logged in and subscribed.
    let _r = SimReader::connect(reader(&format!("mqtt://door-7:r7-secret@127.0.0.1:{port}")))
        .await
        .expect("the reader logs in");
    door_7_online(&s).await;
    let _ = broker.kill();
    let _ = broker.wait();
}

/// The built-in broker with `mqtt.embedded.password`: a reader without it, or with another,
/// is refused (it could replay captures at doors and read everyone's); one with it (any user
/// name) connects and the gateway, logged in with it too, sees it online; the liveness probe
/// logs in as well (`/readyz` 200); the refusals are counted; and nothing prints the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_built_in_broker_takes_only_clients_with_its_password() {
    let pw = "emb3dded p@ss-0123456789";
    let mut s = TestServer::prepare(Options::default());
    s.launch_env(&[("PALMGATE_MQTT_EMBEDDED_PASSWORD", pw)])
        .await;
    // Announced without the password.
    assert!(
        s.mqtt_url.starts_with("mqtt://palmgate:***@127.0.0.1:"),
        "{}",
        s.mqtt_url
    );
    let addr = s.mqtt_url.rsplit('@').next().unwrap().to_string();
    let anon = SimReader::connect(reader(&format!("mqtt://{addr}"))).await;
    let Err(e) = anon else {
        panic!("a reader without the password got in")
    };
    // rumqttd closes the connection without a CONNACK: the simulator says what it last saw.
    assert!(e.to_string().contains("last error: "), "{e}");
    let wrong = SimReader::connect(reader(&format!("mqtt://door-7:nope@{addr}"))).await;
    assert!(wrong.is_err(), "a wrong password got in");
    let _r = SimReader::connect(reader(&format!(
        "mqtt://door-7:emb3dded%20p%40ss-0123456789@{addr}"
    )))
    .await
    .expect("the reader logs in with the password");
    door_7_online(&s).await;
    assert_eq!(send(s.get("/readyz")).await.status, 200);
    let metrics = send(s.get("/metrics").bearer_auth(ADMIN_TOKEN)).await.text;
    let refused = metrics
        .lines()
        .find_map(|l| l.strip_prefix("palmgate_mqtt_embedded_logins_refused_total "))
        .and_then(|n| n.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(refused >= 2.0, "refusals counted: {refused}\n{metrics}");
    let log = s.stderr_log();
    // Each simulator retried for 10 s, then stopped (so the count no longer moves): every
    // refusal is counted, the log has the first of the minute only.
    let logged = log
        .lines()
        .filter(|l| l.contains("gave no password or a wrong one"))
        .count() as f64;
    let burst = f64::from(palmgate::app::throttle::LogThrottle::BURST);
    assert!(refused > burst, "retries counted: {refused}");
    assert_eq!(logged, burst, "refusals logged:\n{log}");
    assert!(
        !log.contains("emb3dded"),
        "the password is in the log:\n{log}"
    );
    assert!(
        !log.contains("mqtt.embedded.password is not set"),
        "warned although set:\n{log}"
    );
}

/// Without a password the built-in broker takes anyone, and start-up says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_warns_when_the_built_in_broker_has_no_password() {
    let s = TestServer::start().await;
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while !s.stderr_log().contains("mqtt.embedded.password is not set") {
        assert!(
            std::time::Instant::now() < end,
            "no warning:\n{}",
            s.stderr_log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A door scan published while the gateway is stopped (SIGTERM; Mosquitto keeps running) is
/// not decided when the gateway comes back: the persistent session's broker queues it and
/// delivers it in the backlog, which the gateway tells apart by its mark and drops, so no
/// `DoorDecided` and no pulse for it — the person has walked away. A fresh scan after the
/// restart is decided and opens the door. (Before, the restarted gateway granted the queued
/// scan, pulsing the relay for nobody.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_door_scan_made_while_the_gateway_was_down_opens_nothing_when_it_returns() {
    use crate::crash_suite::{events_after, next_command_where, reader as sim_reader};
    use crate::doors::{Layout, WAIT, site_doc, until, writes_since};
    use crate::readers::Mosquitto;
    use serde_json::json;
    use tokio::time::Instant;

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
    let mut s = TestServer::start_with(Options::default().extra_toml(&format!(
        "site = {:?}\n[mqtt]\nurl = \"{url}\"",
        site.display().to_string()
    )))
    .await;
    assert_eq!(s.mqtt_url, url, "readers use Mosquitto");
    let (_, key) = s.create_partner("Acme").await;
    crate::crash_suite::enroll_user(&s, &key, "gina", json!({"access_level": "standard"})).await;
    let mut lobby = sim_reader(&url, "lobby-1", "gina", 1).await.unwrap();
    until("the gateway holds the board", || {
        board.writes().iter().any(|(_, c, on)| *c == 0 && !*on)
    })
    .await;

    // Scans until one is answered (one published before the gateway subscribed is lost):
    // every capture id sent, and the result.
    async fn scan_until_answered(
        r: &mut palmgate::mqtt::simulate::SimReader,
        within: Duration,
    ) -> (Vec<String>, serde_json::Value) {
        let end = Instant::now() + within;
        let mut sent = Vec::new();
        loop {
            let c = r.capture(None).await.expect("capture");
            sent.push(c["capture_id"].as_str().unwrap().to_string());
            if let Some(res) =
                next_command_where(r, Duration::from_secs(2), |c| c["action"] == "result").await
            {
                return (sent, res);
            }
            assert!(
                Instant::now() < end,
                "no door scan answered within {within:?}"
            );
        }
    }
    let (_, r) = scan_until_answered(&mut lobby, WAIT).await;
    assert_eq!(r["granted"], true, "gina passes before the outage: {r}");

    // The gateway stops; a scan at lobby-1 reaches the broker, which has no gateway to give it.
    let status = s.terminate();
    assert!(status.is_some_and(|st| st.success()), "SIGTERM: {status:?}");
    let down_at = Instant::now();
    let queued = lobby
        .capture(None)
        .await
        .expect("the broker takes the scan");
    let queued_id = queued["capture_id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Back: a fresh scan is decided and opens the door.
    s.launch().await;
    let (fresh, r) = scan_until_answered(&mut lobby, Duration::from_secs(20)).await;
    assert_eq!(r["granted"], true, "a fresh scan after the restart: {r}");
    // Watch a while longer: nothing from the outage comes back.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let events = events_after(&s, 0).await;
    let decided: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["type"] == "DoorDecided")
        .collect();
    assert!(
        !decided
            .iter()
            .any(|e| e["data"]["capture_id"] == queued_id.as_str()),
        "the scan made while the gateway was down was decided at its return: {decided:?}"
    );
    // And counted: the backlog arrives as the server starts, and the metrics recorder is
    // installed before the MQTT client (before, this count went to no recorder at all).
    let stale = crate::upstream::metric(&s, "palmgate_mqtt_dropped_total{reason=\"stale\"}").await;
    // (At least one: a fresh scan that reached the broker before the backlog's mark came back
    // is dropped with it.)
    assert!(stale >= 1.0, "the dropped scan is counted: {stale}");
    let fresh_granted = decided
        .iter()
        .filter(|e| {
            e["data"]["verdict"]["verdict"] == "granted"
                && fresh.iter().any(|f| e["data"]["capture_id"] == f.as_str())
        })
        .count();
    assert!(
        fresh_granted >= 1,
        "the fresh scan is in the log: {decided:?}"
    );
    let pulses = writes_since(&board, 0, down_at)
        .into_iter()
        .filter(|(_, on)| *on)
        .count();
    assert_eq!(
        pulses, fresh_granted,
        "only fresh scans pulse the relay after the restart"
    );
    s.terminate();
    drop(broker);
}
