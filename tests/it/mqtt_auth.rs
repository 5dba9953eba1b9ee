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
    let end = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let r = send(s.get("/admin/v1/readers").bearer_auth(ADMIN_TOKEN)).await;
        let v = r.json();
        if v.as_array()
            .unwrap()
            .iter()
            .any(|x| x["id"] == "door-7" && x["online"] == true)
        {
            break;
        }
        assert!(
            std::time::Instant::now() < end,
            "the server never saw the reader: {v}\n{}",
            s.stderr_log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = broker.kill();
    let _ = broker.wait();
}
