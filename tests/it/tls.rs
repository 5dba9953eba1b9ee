//! TLS (issue 8, item 5) with certificates made in the test (rcgen):
//!
//! - HTTPS: `http.tls` makes the listener speak HTTPS only; a client trusting the certificate
//!   gets health, the Pass API and hosted pages, with `https://` links and `Secure` cookies;
//!   plain HTTP, and clients that do not trust the certificate, get nothing; a silent TLS
//!   client is cut off; bad certificate files stop the server with an error naming the key.
//! - mqtts: the server and simulated readers (the library and `palmgate reader simulate`) reach
//!   Mosquitto over TLS with a private CA given as `mqtt.ca_file`; a capture completes an
//!   enrollment and an identify. Mosquitto is a peer: missing, the test says so and returns,
//!   unless `PALMGATE_PEERS=required`.

use crate::fixtures::{ADMIN_TOKEN, Options, TestServer, poll, send};
use palmgate::core::ReaderId;
use palmgate::mqtt::simulate::{SimOptions, SimReader};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A TOML basic string of a path.
fn toml_path(p: &Path) -> String {
    format!(
        "\"{}\"",
        p.display()
            .to_string()
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
    )
}

/// A private CA and a server certificate it signed for localhost and 127.0.0.1, written to
/// `dir`: (ca.pem, server.pem, server.key); `fullchain.pem` beside them holds the server
/// certificate followed by the CA's.
fn private_ca(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "palmgate test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    std::fs::write(dir.join("fullchain.pem"), cert.pem() + &ca.pem()).unwrap();
    paths
}

fn https_client(ca_pem: &Path) -> reqwest::Client {
    let pem = std::fs::read(ca_pem).unwrap();
    reqwest::Client::builder()
        .no_proxy()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// HTTPS end to end with a certificate generated here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_the_api_and_pages_and_nothing_in_clear() {
    let certs = tempfile::tempdir().unwrap();
    let (ca, _, key) = private_ca(certs.path());
    // The certificate chain, as a CA hands it out: the server's, then the issuer's.
    let chain = certs.path().join("fullchain.pem");
    let mut s = TestServer::prepare(Options::default().extra_toml(&format!(
        "[http.tls]\ncert = {}\nkey = {}",
        toml_path(&chain),
        toml_path(&key)
    )));
    s.client = https_client(&ca);
    s.launch_env(&[("PALMGATE_HTTP_HEADER_TIMEOUT", "1s")])
        .await;
    assert!(s.base_url.starts_with("https://"), "{}", s.base_url);
    assert_eq!(
        s.public_url, s.base_url,
        "public_url defaults to https://<bound address>"
    );
    let addr = s.base_url.trim_start_matches("https://").to_string();

    let t = Instant::now();
    let health = send(s.get("/healthz")).await;
    assert_eq!(health.status, 200, "{}", health.text);
    let (_, api_key) = s.create_partner("Secure").await;
    let c = s
        .enroll(&api_key, "?language=ru", &json!({"external_id": "EMP-TLS"}))
        .await
        .created();
    assert!(
        c.url.starts_with(&format!("https://{addr}/enroll/")),
        "{}",
        c.url
    );
    let page = send(s.get(&c.path())).await;
    assert_eq!(page.status, 200);
    assert!(page.text.contains("<html"), "{}", page.text);
    let v = s.session(&api_key, &c.session_id).await.json();
    assert_eq!(v["state"], "pending");
    let https_calls = t.elapsed();
    // The dashboard cookie is Secure behind an https:// public URL.
    let r = s
        .client
        .post(s.url("/dashboard/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("api_key={api_key}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(set.contains("; Secure"), "{set}");

    // Plain HTTP to the TLS port: no HTTP answer.
    let plain = reqwest::Client::builder().no_proxy().build().unwrap();
    let r = plain.get(format!("http://{addr}/healthz")).send().await;
    assert!(
        r.is_err(),
        "plain HTTP was answered: {:?}",
        r.map(|r| r.status())
    );
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    conn.write_all(format!("GET /healthz HTTP/1.1\r\nhost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut buf)).await;
    assert!(
        !String::from_utf8_lossy(&buf).contains("HTTP/1.1"),
        "{:?}",
        String::from_utf8_lossy(&buf)
    );
    // A client that does not trust the certificate.
    let r = plain.get(s.url("/healthz")).send().await;
    assert!(r.is_err(), "an untrusted certificate was accepted");
    // A client that opens TCP and never starts the handshake is cut off (header_timeout).
    let mut silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let t = Instant::now();
    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut byte)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "a silent TLS client was not cut off: {closed:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());

    // The partner CLI talks HTTPS, trusting the configured certificate chain.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_palmgate"))
        .args(["partner", "list", "--config"])
        .arg(s.config_path())
        .args(["--server", &s.base_url])
        .env_remove("PALMGATE_ADMIN_TOKEN")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("Secure"),
        "partner list over HTTPS: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("https: health, partner, enroll, page, session in {https_calls:?}");
}

/// A certificate file that is missing, a key that is not the certificate's, and a file that is
/// not PEM each stop the server before it listens, naming the key.
#[tokio::test]
async fn bad_tls_files_are_refused_with_the_key_named() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = private_ca(dir.path());
    let other = KeyPair::generate().unwrap();
    let other_key = dir.path().join("other.key");
    std::fs::write(&other_key, other.serialize_pem()).unwrap();
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let missing = dir.path().join("missing.pem");

    let load = |extra: String| {
        let f = dir.path().join("c.toml");
        std::fs::write(&f, extra).unwrap();
        palmgate::config::Config::load(Some(&f), &[])
    };
    let e = load(format!(
        "[http]\ntls = {{ cert = {}, key = {} }}\n",
        toml_path(&missing),
        toml_path(&key)
    ))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("http.tls.cert") && e.contains("cannot read"),
        "{e}"
    );
    let e = load(format!(
        "[http]\ntls = {{ cert = {}, key = {} }}\n",
        toml_path(&cert),
        toml_path(&junk)
    ))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("http.tls.key") && e.contains("no PEM private key"),
        "{e}"
    );
    let e = load(format!("[mqtt]\nca_file = {}\n", toml_path(&junk)))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("mqtt.ca_file") && e.contains("no PEM certificate"),
        "{e}"
    );
    let e = load(format!("[mqtt]\nca_file = {}\n", toml_path(&missing)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("mqtt.ca_file"), "{e}");
    load(format!("[mqtt]\nca_file = {}\n", toml_path(&ca))).expect("a CA file loads");

    // A key that is not the certificate's: the server refuses to start.
    let s = TestServer::prepare(Options::default().extra_toml(&format!(
        "[http.tls]\ncert = {}\nkey = {}",
        toml_path(&cert),
        toml_path(&other_key)
    )));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_palmgate"))
        .args(["serve", "--config"])
        .arg(s.config_path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started with a mismatched key");
    assert!(
        stderr.contains("TLS") && stderr.contains("pair"),
        "{stderr}"
    );
}

// ---------------------------------------------------------------------------------------------
// mqtts

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Mosquitto with a TLS listener only, killed when dropped.
struct TlsMosquitto {
    child: std::process::Child,
    log: PathBuf,
}

impl TlsMosquitto {
    fn start(bin: &Path, dir: &Path, port: u16, ca: &Path, cert: &Path, key: &Path) -> Self {
        let conf = dir.join("mosquitto.conf");
        let log = dir.join("mosquitto.log");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n\
                 allow_anonymous true\nlog_dest stderr\nlog_type all\n",
                ca.display(),
                cert.display(),
                key.display()
            ),
        )
        .unwrap();
        let child = std::process::Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start mosquitto");
        let m = TlsMosquitto { child, log };
        let end = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < end,
                "mosquitto did not listen on {port}: {}",
                std::fs::read_to_string(&m.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        m
    }
}

impl Drop for TlsMosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sim(url: &str, reader: &str, palm: &str, seed: u64) -> SimOptions {
    SimOptions {
        mqtt_url: url.to_string(),
        topic_prefix: "palmgate".into(),
        reader: ReaderId(reader.into()),
        palm: palm.into(),
        dim: 128,
        quality: 0.95,
        liveness: true,
        seed,
    }
}

/// The server and simulated readers reach Mosquitto over mqtts with a private CA
/// (`mqtt.ca_file`): `palmgate reader simulate` enrolls a palm, a library reader identifies it;
/// without the CA a reader cannot connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtts_to_mosquitto_with_a_private_ca() {
    let Some(bin) = crate::readers::mosquitto_or_skip() else {
        return;
    };
    let t0 = Instant::now();
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = private_ca(certs.path());
    let port = free_port();
    let broker = TlsMosquitto::start(&bin, certs.path(), port, &ca, &cert, &key);
    let url = format!("mqtts://localhost:{port}");

    // Without the CA (the system's roots) a reader gets nowhere: checked meanwhile.
    let untrusting = {
        let url = url.clone();
        tokio::spawn(async move {
            SimReader::connect(sim(&url, "nobody", "x", 1))
                .await
                .is_err()
        })
    };

    let s = TestServer::start_with(Options::default().extra_toml(&format!(
        "[mqtt]\nurl = \"{url}\"\nca_file = {}",
        toml_path(&ca)
    )))
    .await;
    assert_eq!(s.mqtt_url, url, "readers are sent to Mosquitto");
    let (_, api_key) = s.create_partner("Over TLS").await;
    poll(
        "the server's mqtts connection",
        Duration::from_secs(15),
        || async {
            s.stderr_log()
                .contains("connected to the MQTT broker")
                .then_some(())
        },
    )
    .await;

    // Enroll with the CLI reader (its config names the CA).
    let e = s
        .enroll(&api_key, "", &json!({"external_id": "EMP-MQTTS"}))
        .await
        .created();
    let out = tokio::task::spawn_blocking({
        let config = s.config_path().to_path_buf();
        let session = e.url.clone();
        move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_palmgate"))
                .args([
                    "reader", "simulate", "--reader", "desk-tls", "--palm", "alice",
                ])
                .args([
                    "--session",
                    &session,
                    "--wait",
                    "1",
                    "--seed",
                    "5",
                    "--config",
                ])
                .arg(&config)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "reader simulate over mqtts: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let ended = |id: String| {
        let s = &s;
        let k = api_key.clone();
        async move {
            poll("the session to end", Duration::from_secs(20), || {
                let (id, k) = (id.clone(), k.clone());
                async move {
                    let v: Value = s.session(&k, &id).await.json();
                    (v["state"] != "pending").then_some(v)
                }
            })
            .await
        }
    };
    let v = ended(e.session_id.clone()).await;
    assert_eq!(v["state"], "completed", "{v}");

    // Identify with a library reader given the CA.
    let mut reader = SimReader::connect_with_ca(sim(&url, "door-tls", "alice", 900), Some(&ca))
        .await
        .expect("a reader with the CA connects over mqtts");
    let i = s.identify(&api_key, "").await.created();
    reader.capture(Some(&i.token())).await.expect("capture");
    let v = ended(i.session_id.clone()).await;
    assert_eq!(v["state"], "completed", "{v}");
    assert_eq!(v["external_id"], "EMP-MQTTS", "{v}");

    assert!(
        untrusting.await.unwrap(),
        "a reader without the private CA connected"
    );
    let log = std::fs::read_to_string(&broker.log).unwrap_or_default();
    assert!(!s.stderr_log().contains("panicked"));
    drop(broker);
    // Admin sees the readers that spoke over TLS.
    let r = send(s.get("/admin/v1/readers").bearer_auth(ADMIN_TOKEN)).await;
    assert!(r.text.contains("door-tls"), "{}", r.text);
    println!(
        "mqtts: enroll (CLI reader) + identify (library reader) through Mosquitto TLS in {:?}; broker log {} lines",
        t0.elapsed(),
        log.lines().count()
    );
}
