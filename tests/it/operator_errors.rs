//! Operator-facing errors: the dashboard login of a deactivated partner, environment
//! arrays, the `partner` command on a non-JSON answer, logs without colour codes, a key store
//! beside the wrong log or master key.

use crate::fixtures::{ADMIN_TOKEN, Options, TestServer};
use palmgate::core::ReaderId;
use palmgate::mqtt::simulate::{SimOptions, SimReader};
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// `POST /dashboard/login` with `api_key` (and `lang`): status, whether a cookie was set, body.
async fn partner_login(s: &TestServer, key: &str, lang: &str) -> (u16, bool, String) {
    let r = no_redirects()
        .post(s.url("/dashboard/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(serde_urlencoded::to_string([("api_key", key), ("lang", lang)]).unwrap())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let cookie = r.headers().contains_key("set-cookie");
    (status, cookie, r.text().await.unwrap())
}

const INACTIVE: [(&str, &str); 3] = [
    ("en", "This partner account is inactive"),
    ("kk", "Бұл серіктес тіркелгісі белсенді емес"),
    ("ru", "Этот аккаунт партнёра неактивен"),
];
const NOT_VALID: &str = "That credential is not valid.";

/// A deactivated partner's key at the dashboard login is told the account is inactive (as the
/// API's 403 tells it), in the chosen language, with no cookie; any other key still hears "not
/// valid". Both spend the address's budget of failed sign-ins and meet the same 429.
#[tokio::test]
async fn a_deactivated_partners_key_is_told_so_at_the_dashboard_login() {
    let s = TestServer::start_with(Options::default().unauthenticated_per_minute(5)).await;
    let (id, key) = s.create_partner("Gone Ltd").await;
    s.deactivate(&id).await;

    for (lang, text) in INACTIVE {
        let (status, cookie, body) = partner_login(&s, &key, lang).await;
        assert_eq!(status, 401, "{lang}: {body}");
        assert!(!cookie, "{lang}: no cookie for a deactivated partner");
        assert!(body.contains(text), "{lang}: {body}");
        assert!(!body.contains(NOT_VALID), "{lang}: {body}");
    }
    // A key that matches no partner is not told about deactivation.
    let (status, cookie, body) = partner_login(&s, "pgk_never-issued", "en").await;
    assert_eq!(status, 401, "{body}");
    assert!(!cookie);
    assert!(
        body.contains(NOT_VALID) && !body.contains(INACTIVE[0].1),
        "{body}"
    );
    let (status, _, body) = partner_login(&s, "", "ru").await;
    assert_eq!(status, 401, "{body}");
    assert!(!body.contains(INACTIVE[2].1), "{body}");
    // Five failed sign-ins spent the budget: the deactivated key now meets 429 like any other.
    let (status, cookie, body) = partner_login(&s, &key, "en").await;
    assert_eq!(status, 429, "{body}");
    assert!(!cookie);
    assert!(!body.contains(INACTIVE[0].1), "{body}");
}

/// `palmgate partner list` against a server that answers 502 with an HTML page (a reverse
/// proxy in front of a stopped palmgate): the error names the status and quotes the page.
#[test]
fn the_partner_cli_names_the_status_of_an_answer_that_is_not_json() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { break };
            conn.set_read_timeout(Some(Duration::from_secs(5))).ok();
            // Read the head (the request has no body), then answer.
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let body = "<html><head><title>502 Bad Gateway</title></head>\
                        <body><h1>502 Bad Gateway</h1><hr>nginx</body></html>";
            let _ = write!(
                conn,
                "HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/html\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let mut child = Command::new(env!("CARGO_BIN_EXE_palmgate"))
        .args(["partner", "list", "--server", &format!("http://{addr}")])
        .args(["--token", "t", "--timeout", "5"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() && started.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("502") && stderr.contains("not JSON") && stderr.contains("nginx"),
        "{stderr}"
    );
}

/// Logs written to a file or pipe (docker logs, compose) carry no ANSI colour codes, even
/// without `NO_COLOR` in the environment.
#[tokio::test]
async fn logs_to_a_non_terminal_carry_no_colour_codes() {
    let mut s = TestServer::prepare(Options::default());
    // The fixture sets NO_COLOR=1; empty counts as unset (no-color.org).
    s.launch_env(&[("NO_COLOR", ""), ("RUST_LOG", "info")])
        .await;
    let log = log_until_serving(&s).await;
    assert!(!log.contains("\x1b["), "{log:?}");
}

/// The server's log up to its "serving" line.
async fn log_until_serving(s: &TestServer) -> String {
    crate::fixtures::poll(
        "the server's first log lines",
        Duration::from_secs(10),
        || {
            let log = s.stderr_log();
            async move { log.contains("serving").then_some(log) }
        },
    )
    .await
}

/// Listening on every address with no `http.public_url`, the links palmgate hands out would
/// name `0.0.0.0`: start-up says so, naming the key to set; with a specific address it does not.
#[tokio::test]
async fn links_to_every_address_are_warned_about_at_start_up() {
    for (listen, warned) in [("0.0.0.0:0", true), ("127.0.0.1:0", false)] {
        let mut s = TestServer::prepare(Options::default());
        s.launch_env(&[("PALMGATE_HTTP_LISTEN", listen)]).await;
        let log = log_until_serving(&s).await;
        assert_eq!(
            log.contains("http.public_url is not set and http.listen is every address"),
            warned,
            "{listen}: {log}"
        );
    }
}

/// SIGHUP with no site file set says there is nothing to reload (it logged "site policy
/// reloaded" although nothing was read).
#[tokio::test]
async fn sighup_without_a_site_file_says_there_is_nothing_to_reload() {
    let mut s = TestServer::prepare(Options::default());
    s.launch().await;
    log_until_serving(&s).await;
    s.signal(libc::SIGHUP);
    let log = crate::fixtures::poll("the SIGHUP's log line", Duration::from_secs(10), || {
        let log = s.stderr_log();
        async move { log.contains("SIGHUP").then_some(log) }
    })
    .await;
    assert!(
        log.contains("SIGHUP: no site file to reload (`site` is not set)")
            && !log.contains("site policy reloaded"),
        "{log}"
    );
}

/// A new site whose site file cannot be activated (here a time zone typo, then a missing
/// file) does not start: with no policy in force it would run, and report ready, with no doors.
/// With the file fixed it starts; a broken file later keeps the policy in force, as before.
#[tokio::test]
async fn a_new_site_with_a_broken_site_file_does_not_start() {
    let site = tempfile::tempdir().unwrap();
    let path = site.path().join("site.toml");
    let good = include_str!("../../config/site.toml");
    std::fs::write(&path, good.replace("Asia/Almaty", "Asia/Almatyy")).unwrap();
    let mut s = TestServer::prepare(
        Options::default().extra_toml(&format!("site = {:?}", path.display().to_string())),
    );
    let stderr = refused_start(&s, &[]);
    assert!(
        stderr.contains("config key `site`")
            && stderr.contains("unknown time zone `Asia/Almatyy`")
            && stderr.contains("no site policy is in force yet"),
        "{stderr}"
    );
    std::fs::remove_file(&path).unwrap();
    let stderr = refused_start(&s, &[]);
    assert!(stderr.contains("cannot read site policy"), "{stderr}");
    std::fs::write(&path, good).unwrap();
    s.launch().await;
    log_until_serving(&s).await;
    s.terminate();
    std::fs::write(&path, good.replace("Asia/Almaty", "Asia/Almatyy")).unwrap();
    s.launch().await;
    let log = log_until_serving(&s).await;
    assert!(log.contains("the policy in force stays"), "{log}");
}

/// `palmgate check --config FILE`: (success, stdout), with no `PALMGATE_*` variable but `env`.
fn check(config: &std::path::Path, env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_palmgate"));
    cmd.arg("check")
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "off")
        .stdin(Stdio::null());
    for (k, _) in std::env::vars() {
        if k.starts_with("PALMGATE_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd.envs(env.iter().copied()).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// `palmgate check` says, without starting anything, what a start would refuse or warn about:
/// a site file that is not a valid policy (by line and key), a variable that sets no key, and
/// links that would name 0.0.0.0; a good config passes with its site file summed up. And
/// `audit verify` on a config with a broken site file still verifies the log (exit 0) but says
/// the file is broken (it passed in silence).
#[tokio::test]
async fn check_names_a_broken_site_file_and_audit_verify_warns_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("site.toml");
    let good = include_str!("../../config/site.toml");
    std::fs::write(&site, good).unwrap();
    let config = dir.path().join("palmgate.toml");
    let text = format!(
        "site = {:?}\n[store]\npath = {:?}\n",
        site.display().to_string(),
        dir.path().join("events.db").display().to_string()
    );
    std::fs::write(&config, &text).unwrap();
    const PW: (&str, &str) = ("PALMGATE_MQTT_EMBEDDED_PASSWORD", "0123456789abcdef0123");
    let (ok, out) = check(&config, &[PW]);
    assert!(ok, "{out}");
    assert!(
        out.contains("valid, 3 door(s)") && out.contains("time zone Asia/Almaty"),
        "{out}"
    );
    assert!(out.contains(": OK (0 warning(s))"), "{out}");
    // Nothing was made: no log, no key file.
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        2,
        "check made files"
    );
    let (ok, out) = check(
        &config,
        &[
            ("PALMGATE_HTTP_LISTEN", "0.0.0.0:8080"),
            ("PALMGATE_HTTP_PUBLICURL", "https://x"),
            PW,
        ],
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("warning: environment variable PALMGATE_HTTP_PUBLICURL sets no config key")
            && out.contains("warning: http.public_url is not set")
            && out.contains("OK (2 warning(s))"),
        "{out}"
    );
    // The built-in broker without a password: a warning.
    let (ok, out) = check(&config, &[]);
    assert!(ok, "{out}");
    assert!(
        out.contains("warning: mqtt.embedded.password is not set")
            && out.contains("OK (1 warning(s))"),
        "{out}"
    );
    // A wrong key: said on stdout like the others (it was only on stderr, with a stray
    // "in `sessions.ttl`" line).
    let (ok, out) = check(&config, &[("PALMGATE_SESSIONS_TTL", "soon")]);
    assert!(!ok, "{out}");
    assert!(
        out.starts_with(
            "error: config key `sessions.ttl` (from environment variable PALMGATE_SESSIONS_TTL)"
        ) && out.contains(": 1 error(s)")
            && !out.contains("in `"),
        "{out}"
    );
    std::fs::write(&site, good.replace("Asia/Almaty", "Asia/Almatyy")).unwrap();
    let (ok, out) = check(&config, &[]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("error: site (from ")
            && out.contains("unknown time zone `Asia/Almatyy`")
            && out.contains("1 error(s)"),
        "{out}"
    );
    // audit verify: a log made by a server started from the good file, then the file broken.
    std::fs::write(&site, good).unwrap();
    let mut s = TestServer::prepare(
        Options::default().extra_toml(&format!("site = {:?}", site.display().to_string())),
    );
    s.launch().await;
    log_until_serving(&s).await;
    s.terminate();
    std::fs::write(&site, good.replace("Asia/Almaty", "Asia/Almatyy")).unwrap();
    let (ok, out, err) = audit(&s, &["verify"], &s.store_path());
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("hash chain intact")
            && out.contains("warning: site (from ")
            && out.contains("unknown time zone `Asia/Almatyy`"),
        "{out}"
    );
}

/// `reader simulate` refuses, by name, what the gateway would refuse: a reader id no topic can
/// carry (it failed later as "no connection to the broker") and a quality outside 0–1 (it
/// exited 0, the refusal only in the server's log).
#[test]
fn the_simulated_reader_refuses_a_bad_reader_id_or_quality_by_name() {
    for (args, expected) in [
        (
            ["--reader", "bad/id#", "--quality", "0.9"],
            "--reader \"bad/id#\": a reader id is 1–128 letters, digits or `-_.:`",
        ),
        (
            ["--reader", "lobby-1", "--quality", "7"],
            "--quality 7: a capture's quality is a number from 0 to 1",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_palmgate"))
            .args([
                "reader",
                "simulate",
                "--palm",
                "alice",
                "--mqtt",
                "mqtt://127.0.0.1:9",
            ])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

/// Without TLS the `partner` command talks to the server's own listener (every address read
/// as the loopback one), never out through `http.public_url` with the admin token: here the
/// public URL does not even resolve.
#[tokio::test]
async fn the_partner_cli_uses_the_local_listener_not_the_public_url() {
    let s = TestServer::start().await;
    s.create_partner("Local Co").await;
    let port = s.base_url.rsplit(':').next().unwrap().to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_palmgate"))
            .args(["partner", "list", "--token", crate::fixtures::ADMIN_TOKEN])
            .env("PALMGATE_HTTP_LISTEN", format!("0.0.0.0:{port}"))
            .env("PALMGATE_HTTP_PUBLIC_URL", "https://gate.example.invalid")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("Local Co"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `demo --listen` on a port in use names the option it came from.
#[test]
fn a_demo_listen_address_in_use_names_the_option() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let data = tempfile::tempdir().unwrap();
    let stderr = refused(
        &[
            "demo".as_ref(),
            "--listen".as_ref(),
            addr.as_ref(),
            "--data".as_ref(),
            data.path().as_os_str(),
        ],
        &[],
    );
    assert!(
        stderr.contains(&format!(
            "config key `http.listen` (from --listen): cannot listen on {addr}"
        )),
        "{stderr}"
    );
}

/// The embedded broker's port taken: start-up fails naming `mqtt.embedded.listen`, and has
/// created nothing (no log, no key store, no master key), as for the HTTP port.
#[test]
fn an_mqtt_port_in_use_stops_start_up_before_any_file_is_made() {
    let s = TestServer::prepare(Options::default());
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let before: Vec<_> = std::fs::read_dir(s.dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let stderr = refused_start(&s, &[("PALMGATE_MQTT_EMBEDDED_LISTEN", addr.as_ref())]);
    assert!(
        stderr.contains(&format!(
            "config key `mqtt.embedded.listen`: embedded broker on {addr}"
        )),
        "{stderr}"
    );
    let after: Vec<_> = std::fs::read_dir(s.dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(after, before, "files made by a start that could not listen");
}

// --- The key store is bound to its log and its master key ---------------------------------

/// Connects a simulated reader with `palm` and waits until the server lists it online (its
/// subscriptions are in place before the first capture).
async fn sim_reader(s: &TestServer, id: &str, palm: &str, seed: u64) -> SimReader {
    let r = SimReader::connect(SimOptions {
        mqtt_url: s.mqtt_url.clone(),
        topic_prefix: "palmgate".into(),
        reader: ReaderId(id.into()),
        palm: palm.into(),
        dim: 128,
        quality: 0.95,
        liveness: true,
        seed,
    })
    .await
    .expect("simulated reader connects");
    crate::fixtures::poll(
        "the reader online",
        Duration::from_secs(15),
        || async move {
            let list: serde_json::Value = s
                .get("/admin/v1/readers")
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            list.as_array()?
                .iter()
                .any(|r| r["id"] == id && r["online"] == true)
                .then_some(())
        },
    )
    .await;
    r
}

/// Captures with `reader` for the session `created` and waits for it to end: its final body.
async fn captured(
    s: &TestServer,
    key: &str,
    reader: &mut SimReader,
    created: &crate::fixtures::Created,
) -> serde_json::Value {
    reader
        .capture(Some(&created.token()))
        .await
        .expect("capture");
    crate::fixtures::poll(
        "the session to end",
        Duration::from_secs(15),
        || async move {
            let v = s.session(key, &created.session_id).await.json();
            (v["state"] != "pending").then_some(v)
        },
    )
    .await
}

/// A server with a partner and one user enrolled through a reader (so keys.db holds one data
/// key), stopped: (server, partner API key).
async fn enrolled_and_stopped() -> (TestServer, String) {
    let mut s = TestServer::start().await;
    let (_, key) = s.create_partner("Acme").await;
    let mut desk = sim_reader(&s, "desk-1", "alice", 1).await;
    let created = s
        .enroll(&key, "", &serde_json::json!({"external_id": "EMP-1"}))
        .await
        .created();
    let v = captured(&s, &key, &mut desk, &created).await;
    assert_eq!(v["state"], "completed", "{v}");
    drop(desk);
    s.terminate();
    assert_eq!(data_keys(&s), 1);
    (s, key)
}

/// Data keys in the server's key store.
fn data_keys(s: &TestServer) -> i64 {
    let c = rusqlite::Connection::open(s.dir().join("keys.db")).expect("open keys.db");
    c.query_row("SELECT count(*) FROM data_keys", [], |r| r.get(0))
        .expect("count keys")
}

/// `palmgate serve` on the server's config with `env`, expected to refuse to start: its stderr.
fn refused_start(s: &TestServer, env: &[(&str, &std::ffi::OsStr)]) -> String {
    let config = s.config_path().as_os_str();
    refused(&["serve".as_ref(), "--config".as_ref(), config], env)
}

/// Runs `palmgate args` (no PALMGATE_* variables but `env`, logs off) and returns its
/// stderr, asserting it exited with a failure within 15 s.
fn refused(args: &[&std::ffi::OsStr], env: &[(&str, &std::ffi::OsStr)]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_palmgate"));
    cmd.args(args)
        .env("RUST_LOG", "off")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars() {
        if k.starts_with("PALMGATE_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() && started.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "the server started: {stderr}");
    stderr
}

/// A typo in `store.path` (a new, empty log) beside the site's keys.db, or another site's log,
/// is refused at start-up, naming both files and their keys, instead of the start-up sweep
/// destroying every enrolled user's data key. With the right path the user still matches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_store_beside_another_log_is_refused_and_keeps_its_keys() {
    let (mut s, key) = enrolled_and_stopped().await;
    let keys_db = s.dir().join("keys.db");
    let elsewhere = tempfile::tempdir().unwrap();
    let typo = elsewhere.path().join("evnets.db");
    let stderr = refused_start(&s, &[("PALMGATE_STORE_PATH", typo.as_os_str())]);
    assert!(
        stderr.contains(&format!("store.path {}", typo.display()))
            && stderr.contains(&format!("secrets.key_store {}", keys_db.display()))
            && stderr.contains("empty log")
            && stderr.contains("same site's files"),
        "{stderr}"
    );
    assert_eq!(data_keys(&s), 1, "the refused start destroyed a data key");

    // Another site's log (with events): refused too, the key store knowing its own log.
    let other = TestServer::prepare(Default::default());
    other.seed_partner("Other", &["X-1"]).await;
    let stderr = refused_start(
        &s,
        &[("PALMGATE_STORE_PATH", other.store_path().as_os_str())],
    );
    assert!(
        stderr.contains(&format!("store.path {}", other.store_path().display()))
            && stderr.contains(&format!("secrets.key_store {}", keys_db.display()))
            && stderr.contains("belongs to another log"),
        "{stderr}"
    );
    assert_eq!(data_keys(&s), 1);

    // The right files: the user is there and their template is usable.
    s.launch().await;
    let r = crate::fixtures::send(s.get("/v1/users/EMP-1").header("x-api-key", &key)).await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    let mut door = sim_reader(&s, "door-1", "alice", 1_000).await;
    let created = s.identify(&key, "").await.created();
    let v = captured(&s, &key, &mut door, &created).await;
    assert_eq!(v["state"], "completed", "{v}");
    assert_eq!(v["external_id"], "EMP-1", "{v}");
    assert_eq!(data_keys(&s), 1);
}

/// A deleted master.key beside a log with enrolled users is not replaced by a new one: start-up
/// stops naming `secrets.key_file`, and no key file is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_master_key_is_not_regenerated_on_an_existing_site() {
    let (s, _key) = enrolled_and_stopped().await;
    let key_file = s.dir().join("master.key");
    std::fs::remove_file(&key_file).unwrap();
    let stderr = refused_start(&s, &[]);
    assert!(
        stderr.contains(&format!("secrets.key_file {}", key_file.display()))
            && stderr.contains("master key is missing")
            && stderr.contains("backup"),
        "{stderr}"
    );
    assert!(!key_file.exists(), "a new master key was generated");
    assert_eq!(data_keys(&s), 1);
}

/// A master key from PALMGATE_SECRETS_MASTER_KEY other than the one the key store was written
/// with is refused, naming where it came from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_master_key_from_the_environment_is_refused() {
    let (s, _key) = enrolled_and_stopped().await;
    let other = "cd".repeat(32);
    let stderr = refused_start(
        &s,
        &[("PALMGATE_SECRETS_MASTER_KEY", std::ffi::OsStr::new(&other))],
    );
    assert!(
        stderr.contains("PALMGATE_SECRETS_MASTER_KEY")
            && stderr.contains("is not the one")
            && stderr.contains("secrets.key_store"),
        "{stderr}"
    );
    assert!(!stderr.contains(&other), "the key was printed: {stderr}");
    assert_eq!(data_keys(&s), 1);
}

/// Moves the stopped server's keys.db aside (as a restore that forgot it): returns the copy.
fn keys_db_aside(s: &TestServer) -> (tempfile::TempDir, std::path::PathBuf) {
    let keys_db = s.dir().join("keys.db");
    let aside = tempfile::tempdir().unwrap();
    let copy = aside.path().join("keys.db");
    std::fs::rename(&keys_db, &copy).unwrap();
    (aside, copy)
}

/// The server's user EMP-1 (enrolled by [`enrolled_and_stopped`]) is there and matches.
async fn emp_1_matches(s: &TestServer, key: &str) {
    let r = crate::fixtures::send(s.get("/v1/users/EMP-1").header("x-api-key", key)).await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    let mut door = sim_reader(s, "door-1", "alice", 1_000).await;
    let created = s.identify(key, "").await.created();
    let v = captured(s, key, &mut door, &created).await;
    assert_eq!(v["state"], "completed", "{v}");
    assert_eq!(v["external_id"], "EMP-1", "{v}");
}

/// A log with an enrolled user restored without its keys.db: start-up refuses (before, it
/// created a new key store, every user stopped matching while enrolling them again answered
/// 409), naming both files and their keys and saying what to do, and leaves no keys.db behind.
/// With the log's own keys.db restored, the user matches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_with_enrolled_users_and_no_key_store_is_refused() {
    let (mut s, key) = enrolled_and_stopped().await;
    let keys_db = s.dir().join("keys.db");
    let (_aside, copy) = keys_db_aside(&s);
    for _ in 0..2 {
        let stderr = refused_start(&s, &[]);
        assert!(
            stderr.contains(&format!("secrets.key_store {}", keys_db.display()))
                && stderr.contains(&format!("store.path {}", s.store_path().display()))
                && stderr.contains("1 enrolled user(s)")
                && stderr.contains("restore the keys.db that belongs to this log")
                && stderr.contains("move the log"),
            "{stderr}"
        );
        assert!(!keys_db.exists(), "the refused start left a new keys.db");
    }
    std::fs::copy(&copy, &keys_db).unwrap();
    s.launch().await;
    emp_1_matches(&s, &key).await;
    assert_eq!(data_keys(&s), 1);
}

/// No keys.db and another master key (PALMGATE_SECRETS_MASTER_KEY): refused, and nothing
/// records that key (before, the new keys.db took its check and then refused the site's own
/// master key until deleted by hand). A later start with the right files works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_key_store_and_another_master_key_are_refused_and_the_right_files_start() {
    let (mut s, key) = enrolled_and_stopped().await;
    let keys_db = s.dir().join("keys.db");
    let (_aside, copy) = keys_db_aside(&s);
    let other = "cd".repeat(32);
    let stderr = refused_start(
        &s,
        &[("PALMGATE_SECRETS_MASTER_KEY", std::ffi::OsStr::new(&other))],
    );
    assert!(
        stderr.contains(&format!("secrets.key_store {}", keys_db.display()))
            && stderr.contains(&format!("store.path {}", s.store_path().display()))
            && stderr.contains("restore the keys.db that belongs to this log"),
        "{stderr}"
    );
    assert!(!stderr.contains(&other), "the key was printed: {stderr}");
    assert!(!keys_db.exists(), "the refused start left a new keys.db");
    std::fs::copy(&copy, &keys_db).unwrap();
    s.launch().await;
    emp_1_matches(&s, &key).await;
}

/// A log with events but no enrolled template (a partner and its webhook) needs no data key:
/// without keys.db it starts with a new one, but only with the master key that opens its
/// webhook secret. Another key is refused (naming where it came from) and recorded nowhere;
/// the right one starts and the new key store is bound to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_without_templates_starts_with_a_new_key_store_only_with_its_master_key() {
    let mut s = TestServer::start_with(
        Options::default().extra_toml("[webhooks]\nallow_networks = [\"127.0.0.0/8\"]"),
    )
    .await;
    let (_, key) = s.create_partner("Acme").await;
    let r = crate::fixtures::send(
        s.client
            .put(s.url("/v1/webhook"))
            .header("x-api-key", &key)
            .json(&serde_json::json!({ "url": "http://127.0.0.1:9/hook" })),
    )
    .await;
    assert_eq!(r.status, 200, "PUT /v1/webhook: {}", r.text);
    s.terminate();
    let keys_db = s.dir().join("keys.db");
    std::fs::remove_file(&keys_db).unwrap();

    let other = "cd".repeat(32);
    let stderr = refused_start(
        &s,
        &[("PALMGATE_SECRETS_MASTER_KEY", std::ffi::OsStr::new(&other))],
    );
    assert!(
        stderr.contains("PALMGATE_SECRETS_MASTER_KEY")
            && stderr.contains("opens none of the webhook secrets")
            && stderr.contains(&format!("secrets.key_store {}", keys_db.display()))
            && stderr.contains(&format!("store.path {}", s.store_path().display())),
        "{stderr}"
    );
    assert!(!keys_db.exists(), "the refused start left a new keys.db");

    s.launch().await;
    let r = crate::fixtures::send(s.get("/v1/webhook").header("x-api-key", &key)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    s.terminate();
    // Bound to the right master key now: the other one is refused by the key store itself.
    let stderr = refused_start(
        &s,
        &[("PALMGATE_SECRETS_MASTER_KEY", std::ffi::OsStr::new(&other))],
    );
    assert!(stderr.contains("is not the one"), "{stderr}");
}

/// `<db>-wal` and `<db>-shm`, whichever exist.
fn side_files(db: &std::path::Path) -> Vec<std::path::PathBuf> {
    ["-wal", "-shm"]
        .iter()
        .map(|end| {
            let mut p = db.as_os_str().to_owned();
            p.push(end);
            std::path::PathBuf::from(p)
        })
        .filter(|p| p.exists())
        .collect()
}

/// `palmgate audit <action...>` on the server's config with the log at `db`: (success, stdout,
/// stderr).
fn audit(s: &TestServer, action: &[&str], db: &std::path::Path) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_palmgate"));
    cmd.arg("audit")
        .args(action)
        .arg("--config")
        .arg(s.config_path())
        .env("RUST_LOG", "off")
        .stdin(Stdio::null());
    for (k, _) in std::env::vars() {
        if k.starts_with("PALMGATE_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd.env("PALMGATE_STORE_PATH", db).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// `palmgate audit` reads without writing: beside a stopped server's log it leaves no `-wal`
/// or `-shm` (a shared read-only open created both and could not remove them), a copy of the
/// log in rollback-journal mode (`VACUUM INTO`, as a backup is made) verifies and exports
/// (the WAL pragma failed on it: "attempt to write a readonly database"), and so does a log in
/// a directory the auditor cannot write (as root permissions do not bite: the test says so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_reads_stopped_logs_and_backup_copies_without_writing_beside_them() {
    let (s, _) = enrolled_and_stopped().await;
    let log = s.store_path();
    let copy = s.dir().join("copy.db");
    // The copy is made by a connection that can write: when it closes, SQLite folds in and
    // removes whatever `-wal` and `-shm` the stopped server left.
    rusqlite::Connection::open(&log)
        .unwrap()
        .execute("VACUUM INTO ?1", [copy.to_str().unwrap()])
        .unwrap();
    assert_eq!(side_files(&log), Vec::<std::path::PathBuf>::new());
    let verify: &[&str] = &["verify"];
    let export: &[&str] = &["export", "--format", "csv"];
    for (db, action) in [(&copy, verify), (&copy, export), (&log, verify)] {
        let (ok, out, err) = audit(&s, action, db);
        assert!(ok, "{action:?} {}: {out}{err}", db.display());
        if action == verify {
            assert!(out.contains("hash chain intact"), "{out}");
        } else {
            assert!(out.starts_with("position,at,door,"), "{out}");
        }
        assert_eq!(
            side_files(db),
            Vec::<std::path::PathBuf>::new(),
            "{action:?} {}",
            db.display()
        );
    }

    use std::os::unix::fs::PermissionsExt;
    let locked = tempfile::tempdir().unwrap();
    let db = locked.path().join("events.db");
    std::fs::copy(&log, &db).unwrap();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o444)).unwrap();
    std::fs::set_permissions(locked.path(), std::fs::Permissions::from_mode(0o555)).unwrap();
    let writable = std::fs::write(locked.path().join("probe"), b"").is_ok();
    let (ok, out, err) = audit(&s, verify, &db);
    std::fs::set_permissions(locked.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    if writable {
        println!(
            "SKIPPED: this process can write a directory of mode 0555 (root?): the read-only \
             directory case is not tested here"
        );
        return;
    }
    assert!(ok, "{out}{err}");
    assert!(out.contains("hash chain intact"), "{out}");
}

/// A log with enrolled templates started beside a new, empty `keys.db` (the site's own one
/// lost) is refused; the templates it cannot open are named a few at a time and then counted in
/// one line, not one error line per enrolled person before the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_key_store_names_a_few_unopened_templates_and_counts_the_rest() {
    let mut s = TestServer::start().await;
    let (_, key) = s.create_partner("Acme").await;
    const PEOPLE: usize = 8;
    for i in 0..PEOPLE {
        // One palm each (a palm enrolled twice is `already_enrolled`).
        let mut desk = sim_reader(&s, &format!("desk-{i}"), &format!("palm-{i}"), 1).await;
        let created = s
            .enroll(
                &key,
                "",
                &serde_json::json!({"external_id": format!("EMP-{i}")}),
            )
            .await
            .created();
        let v = captured(&s, &key, &mut desk, &created).await;
        assert_eq!(v["state"], "completed", "{v}");
    }
    s.terminate();
    let keys_db = s.dir().join("keys.db");
    std::fs::remove_file(&keys_db).unwrap();
    let stderr = refused_start(&s, &[("RUST_LOG", std::ffi::OsStr::new("error"))]);
    let named = stderr.matches("template not indexed").count();
    assert_eq!(named, 5, "lines naming a template: {stderr}");
    assert!(
        stderr.contains("not_indexed=8"),
        "no count of the templates not indexed: {stderr}"
    );
    assert!(stderr.contains("secrets.key_store"), "{stderr}");
    assert!(
        !keys_db.exists(),
        "the refused start left the key store it created"
    );
}

/// `audit verify --expect-head` on the command line: the head a verify printed passes, the
/// same position with another hash fails (exit 1, naming it), and a head that is no
/// `POSITION:HASH` is refused by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_checks_a_head_kept_elsewhere() {
    let (s, _) = enrolled_and_stopped().await;
    let log = s.store_path();
    let (ok, out, err) = audit(&s, &["verify"], &log);
    assert!(ok, "{out}{err}");
    let head = out
        .lines()
        .find_map(|l| l.strip_prefix("head: position "))
        .unwrap_or_else(|| panic!("no head in {out}"));
    let (position, rest) = head.split_once(", hash ").unwrap();
    let hash = &rest[..64];
    assert!(
        out.contains(&format!("--expect-head {position}:{hash}")),
        "{out}"
    );
    let kept = format!("{position}:{hash}");
    let (ok, out, err) = audit(&s, &["verify", "--expect-head", &kept], &log);
    assert!(ok, "{out}{err}");
    let other = format!("{position}:{}", "0".repeat(64));
    let (ok, out, _) = audit(&s, &["verify", "--expect-head", &other], &log);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!(
            "position {position}: the head kept elsewhere (--expect-head) is here with hash {}",
            "0".repeat(64)
        )),
        "{out}"
    );
    let (ok, out, err) = audit(&s, &["verify", "--expect-head", "latest"], &log);
    assert!(!ok, "{out}");
    assert!(
        err.contains("--expect-head \"latest\": give POSITION:HASH"),
        "{err}"
    );
}

/// `audit export` and `what-if` with `--from` after `--to` are refused, naming both (an empty
/// answer and exit 0 read as "nobody went through").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_range_that_ends_before_it_starts_is_refused() {
    let (s, _) = enrolled_and_stopped().await;
    let log = s.store_path();
    let policy = s.dir().join("candidate.toml");
    std::fs::write(&policy, include_str!("../../config/site.toml")).unwrap();
    let policy = policy.display().to_string();
    let range = [
        "--from",
        "2026-11-29T00:00:00Z",
        "--to",
        "2026-11-28T00:00:00Z",
    ];
    for action in [&["export"][..], &["what-if", "--policy", &policy][..]] {
        let args: Vec<&str> = action.iter().chain(range.iter()).copied().collect();
        let (ok, out, err) = audit(&s, &args, &log);
        assert!(!ok, "{action:?}: {out}");
        assert!(
            err.contains(
                "--from 2026-11-29T00:00:00+00:00 is after --to 2026-11-28T00:00:00+00:00"
            ),
            "{action:?}: {err}"
        );
        // The same range the right way round answers.
        let args: Vec<&str> = action
            .iter()
            .chain(["--from", range[3], "--to", range[1]].iter())
            .copied()
            .collect();
        let (ok, out, err) = audit(&s, &args, &log);
        assert!(ok, "{action:?}: {out}{err}");
    }
}

/// A plain date in `--from`/`--to` is that day's start in the site's time zone: the
/// candidate's for `what-if` (Asia/Almaty, UTC+5, so 2026-11-29 starts at 2026-11-28T19:00Z),
/// the `site` file's for `export`, which says so when there is none. Before, only RFC 3339
/// instants were taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_range_takes_plain_dates_in_the_sites_time_zone() {
    let (s, _) = enrolled_and_stopped().await;
    let log = s.store_path();
    let policy = s.dir().join("candidate.toml");
    std::fs::write(&policy, include_str!("../../config/site.toml")).unwrap();
    let policy = policy.display().to_string();
    let args = [
        "what-if",
        "--policy",
        &policy,
        "--from",
        "2026-11-29",
        "--to",
        "2026-11-28",
    ];
    let (ok, out, err) = audit(&s, &args, &log);
    assert!(!ok, "{out}");
    assert!(
        err.contains("--from 2026-11-28T19:00:00+00:00 is after --to 2026-11-27T19:00:00+00:00"),
        "{err}"
    );
    let args = [
        "what-if",
        "--policy",
        &policy,
        "--from",
        "2026-11-28",
        "--to",
        "2026-11-29",
    ];
    let (ok, out, err) = audit(&s, &args, &log);
    assert!(ok, "{out}{err}");
    // The test server has no site file: a date cannot be placed, and the refusal says why.
    let (ok, out, err) = audit(&s, &["export", "--from", "2026-11-28"], &log);
    assert!(!ok, "{out}");
    assert!(
        err.contains("no site file is configured (key `site`)"),
        "{err}"
    );
    let (ok, out, err) = audit(&s, &["export", "--from", "2026-11-28T00:00:00Z"], &log);
    assert!(ok, "an instant needs no zone: {out}{err}");
    // A policy in force in the log gives the zone (Tokyo, +09:00), with still no site file.
    let mut s = s;
    s.launch().await;
    let r = crate::fixtures::send(
        s.client
            .put(s.url("/admin/v1/policy"))
            .bearer_auth(crate::fixtures::ADMIN_TOKEN)
            .header("Content-Type", "application/toml")
            .body(include_str!("../../config/site.toml").replace("Asia/Almaty", "Asia/Tokyo")),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    s.terminate();
    let (ok, out, err) = audit(
        &s,
        &["export", "--from", "2026-11-29", "--to", "2026-11-28"],
        &log,
    );
    assert!(!ok, "{out}");
    assert!(
        err.contains("--from 2026-11-28T15:00:00+00:00 is after --to 2026-11-27T15:00:00+00:00"),
        "the day starts at midnight in Tokyo: {err}"
    );
    let (ok, out, err) = audit(
        &s,
        &["export", "--from", "2026-11-28", "--to", "2026-11-30"],
        &log,
    );
    assert!(ok, "{out}{err}");
    // A site file naming another zone (Almaty, +05:00) does not win over the log's policy.
    let site = s.dir().join("site-almaty.toml");
    std::fs::write(&site, include_str!("../../config/site.toml")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_palmgate"))
        .args([
            "audit",
            "export",
            "--from",
            "2026-11-29",
            "--to",
            "2026-11-28",
        ])
        .arg("--config")
        .arg(s.config_path())
        .env("RUST_LOG", "off")
        .env("PALMGATE_STORE_PATH", &log)
        .env("PALMGATE_SITE", &site)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--from 2026-11-28T15:00:00+00:00 is after"),
        "the log's zone, not the site file's: {err}"
    );
    let (ok, _, err) = audit(&s, &["export", "--from", "28.11.2026"], &log);
    assert!(!ok);
    assert!(
        err.contains("\"28.11.2026\" is neither an RFC 3339 instant") && err.contains("nor a date"),
        "{err}"
    );
}

/// A log that lost acknowledged events since (its `-wal` removed after a crash, a tail cut)
/// is refused at start-up, naming the range and how to start anyway; so is one whose event at
/// the acknowledged position is another; `audit verify` reports the same. The mark beside the
/// log (`events.db.acked`) is what tells: before it, the tail vanished with no word.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_that_lost_acknowledged_events_is_refused_at_start_up() {
    let mut s = TestServer::start().await;
    let (_, key) = s.create_partner("acked").await;
    for _ in 0..3 {
        let r = crate::fixtures::send(s.post("/v1/identify").header("X-API-Key", &key)).await;
        assert_eq!(r.status, 201);
    }
    s.terminate();
    let log = s.store_path();
    let mark = std::fs::read_to_string(log.with_extension("db.acked")).unwrap();
    let c = rusqlite::Connection::open(&log).unwrap();
    let last: i64 = c
        .query_row("SELECT max(position) FROM events", [], |r| r.get(0))
        .unwrap();
    assert!(mark.starts_with("palmgate-acked 1 "), "{mark}");
    assert!(mark.contains(&format!("{last:020}")), "{mark} vs {last}");

    // The tail gone (as a removed -wal leaves it): refused, naming the range.
    c.execute("DELETE FROM events WHERE position >= ?1", [last - 1])
        .unwrap();
    drop(c);
    let stderr = refused_start(&s, &[]);
    assert!(
        stderr.contains(&format!(
            "the log ends at position {}, but position {last} was acknowledged",
            last - 2
        )) && stderr.contains(&format!("events {}..={last} are gone", last - 1))
            && stderr.contains("move ")
            && stderr.contains("events.db.acked aside"),
        "{stderr}"
    );
    let (ok, out, _) = audit(&s, &["verify"], &log);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!(
            "position {}: the log ends at position {}, but it acknowledged",
            last - 1,
            last - 2
        )),
        "{out}"
    );
    // Moved aside, as the message says: it starts.
    std::fs::rename(
        log.with_extension("db.acked"),
        log.with_extension("db.acked.old"),
    )
    .unwrap();
    s.launch().await;
    let r = crate::fixtures::send(s.post("/v1/identify").header("X-API-Key", &key)).await;
    assert_eq!(r.status, 201);
    s.terminate();

    // The event at the acknowledged position replaced: refused too.
    let c = rusqlite::Connection::open(&log).unwrap();
    let last: i64 = c
        .query_row("SELECT max(position) FROM events", [], |r| r.get(0))
        .unwrap();
    c.execute(
        "UPDATE events SET hash = zeroblob(32) WHERE position = ?1",
        [last],
    )
    .unwrap();
    drop(c);
    let stderr = refused_start(&s, &[]);
    assert!(
        stderr.contains(&format!(
            "the event at position {last} is not the one acknowledged there"
        )),
        "{stderr}"
    );
}

/// `reader simulate --session URL` with a reader the server has not seen yet: its retained
/// status reaches the server a moment after the simulator connects, and the page refused to arm
/// an offline reader, so the simulator waited for a `capture` that never came (review, session
/// 25: 2 runs in 9). It now asks the page again until the reader is armed: every run enrolls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_simulate_with_a_link_arms_a_reader_the_server_has_not_seen_yet() {
    let s = TestServer::start().await;
    let (_, key) = s.create_partner("Desks").await;
    for i in 0..4 {
        let e = s
            .enroll(
                &key,
                "",
                &serde_json::json!({"external_id": format!("EMP-{i}")}),
            )
            .await
            .created();
        let out = tokio::task::spawn_blocking({
            let (config, mqtt) = (s.config_path().to_path_buf(), s.mqtt_url.clone());
            move || {
                Command::new(env!("CARGO_BIN_EXE_palmgate"))
                    .args(["reader", "simulate", "--reader", &format!("new-desk-{i}")])
                    .args(["--mqtt", &mqtt])
                    .args(["--palm", &format!("person-{i}"), "--session", &e.url])
                    .args(["--wait", "1", "--config"])
                    .arg(&config)
                    .output()
                    .expect("run reader simulate")
            }
        })
        .await
        .expect("join");
        assert!(
            out.status.success(),
            "run {i}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // The simulator exits once its capture is sent and a second has passed; the server
        // may take longer than that to match it on a loaded machine (CI, session 27).
        let end = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let v = s.session(&key, &e.session_id).await.json();
            if v["state"] == "completed" {
                break;
            }
            assert!(
                v["state"] == "pending" && tokio::time::Instant::now() < end,
                "run {i}: {v}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The gateway writes the log's head to its own log (the journal) at start-up, hourly and at
/// stop, and `GET /admin/v1/head` gives it. `audit verify --expect-heads-from` reads those
/// lines back: a log whose tail was cut after them, its saved head removed too (which `audit
/// verify` alone cannot tell from a genuine log), fails naming the position; the genuine log
/// passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_the_gateway_wrote_to_its_journal_catch_a_cut_log() {
    let mut s = TestServer::start().await;
    let (_, key) = s.create_partner("Acme").await;
    for _ in 0..3 {
        let r = crate::fixtures::send(s.post("/v1/identify").header("X-API-Key", &key)).await;
        assert_eq!(r.status, 201);
    }
    let r = crate::fixtures::send(s.get("/admin/v1/head").bearer_auth(ADMIN_TOKEN)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let head = r.json();
    let position = head["position"].as_u64().expect("a position");
    assert!(position >= 4, "{head}");
    let hash = head["hash"].as_str().expect("a hash");
    assert_eq!(hash.len(), 64, "{head}");
    assert_eq!(head["expect_head"], format!("{position}:{hash}"));
    let r = crate::fixtures::send(s.get("/admin/v1/head")).await;
    assert_eq!(r.status, 401, "the head is the operator's");
    s.terminate();
    let journal = s.stderr_log();
    assert!(
        journal.contains(&format!(
            "log head at stop: position {position}, hash {hash} (audit verify --expect-head \
             {position}:{hash})"
        )),
        "the head at stop is the one the API gave: {journal}"
    );
    // The next start names the head it starts from (an empty log has none to name).
    s.launch().await;
    s.terminate();
    let journal = s.stderr_log();
    assert!(
        journal.contains(&format!(
            "log head at start-up: position {position}, hash {hash}"
        )),
        "{journal}"
    );
    let file = s.dir().join("journal.txt");
    std::fs::write(&file, &journal).unwrap();
    let file = file.display().to_string();
    let log = s.store_path();
    let (ok, out, err) = audit(&s, &["verify", "--expect-heads-from", &file], &log);
    assert!(ok, "the genuine log: {out}{err}");
    assert!(out.contains("head(s) read from"), "{out}");

    // The tail cut, and the head the log saved of itself with it.
    let c = rusqlite::Connection::open(&log).unwrap();
    c.execute("DELETE FROM events WHERE position = ?1", [position as i64])
        .unwrap();
    c.execute("DELETE FROM store_heads", []).unwrap();
    drop(c);
    let _ = std::fs::remove_file(log.with_extension("db.acked"));
    let (ok, out, err) = audit(&s, &["verify"], &log);
    assert!(
        ok,
        "without the journal's heads the cut log passes: {out}{err}"
    );
    let (ok, out, _) = audit(&s, &["verify", "--expect-heads-from", &file], &log);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!(
            "the log ends at position {}, but the head kept elsewhere (--expect-head) is at",
            position - 1
        )),
        "{out}"
    );
    // A file naming no head is refused, saying what it looked for.
    let empty = s.dir().join("empty.txt");
    std::fs::write(&empty, "nothing\n").unwrap();
    let (ok, _, err) = audit(
        &s,
        &[
            "verify",
            "--expect-heads-from",
            &empty.display().to_string(),
        ],
        &log,
    );
    assert!(!ok);
    assert!(
        err.contains("no `--expect-head POSITION:HASH` in it"),
        "{err}"
    );
}

/// A monitoring system's read-only token (`admin.monitor_token_sha256`) reads the log's head,
/// the site mode and the site's series of `/metrics`, and nothing else: no lockdown, no events,
/// no people, no partners. A wrong token is refused as on the admin API; the admin token still
/// reads everything. The monitor token may not be the admin token's (refused at start-up,
/// naming the key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monitor_token_reads_the_head_and_the_site_metrics_and_nothing_else() {
    use sha2::Digest;
    const MONITOR: &str = "monitor-token-for-prometheus-0123456789";
    let hash = hex::encode(sha2::Sha256::digest(MONITOR.as_bytes()));
    let mut s = TestServer::prepare(Options::default());
    s.launch_env(&[("PALMGATE_ADMIN_MONITOR_TOKEN_SHA256", &hash)])
        .await;
    let (_, key) = s.create_partner("Acme").await;
    let r = crate::fixtures::send(s.post("/v1/identify").header("X-API-Key", &key)).await;
    assert_eq!(r.status, 201);
    let as_monitor = async |method: &str, path: &str| {
        let rb = match method {
            "GET" => s.get(path),
            _ => s.post(path).json(&serde_json::json!({"on": true})),
        };
        crate::fixtures::send(rb.bearer_auth(MONITOR)).await
    };
    let head = as_monitor("GET", "/admin/v1/head").await;
    assert_eq!(head.status, 200, "{}", head.text);
    assert!(head.json()["position"].as_u64().unwrap() >= 2);
    let admin_head = crate::fixtures::send(s.get("/admin/v1/head").bearer_auth(ADMIN_TOKEN)).await;
    assert_eq!(
        admin_head.json(),
        head.json(),
        "the same head for both tokens"
    );
    let mode = as_monitor("GET", "/admin/v1/mode").await;
    assert_eq!(mode.status, 200, "{}", mode.text);
    assert_eq!(mode.json()["lockdown"], false);
    let metrics = as_monitor("GET", "/metrics").await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.text.contains("palmgate_site_mode"),
        "the site's series for the monitor: {}",
        metrics.text
    );
    for (method, path) in [
        ("POST", "/admin/v1/lockdown"),
        ("POST", "/admin/v1/emergency-unlock"),
        ("GET", "/admin/v1/events"),
        ("GET", "/admin/v1/users"),
        ("GET", "/admin/v1/partners"),
        ("GET", "/admin/v1/doors"),
        ("GET", "/admin/v1/audit/export"),
    ] {
        let r = as_monitor(method, path).await;
        assert_eq!(
            r.status, 401,
            "{method} {path} with the monitor token: {}",
            r.text
        );
    }
    let mode = crate::fixtures::send(s.get("/admin/v1/mode").bearer_auth(ADMIN_TOKEN)).await;
    assert_eq!(
        mode.json()["lockdown"],
        false,
        "the monitor locked nothing down"
    );
    let wrong = crate::fixtures::send(s.get("/admin/v1/head").bearer_auth("not-the-token")).await;
    assert_eq!(wrong.status, 401);
    let bare = crate::fixtures::send(s.get("/metrics").bearer_auth("not-the-token")).await;
    assert_eq!(
        bare.status, 401,
        "a wrong token on /metrics is refused as before"
    );
    s.terminate();

    // The admin token's own hash as the monitor's: refused, naming the key.
    let admin_hash = hex::encode(sha2::Sha256::digest(ADMIN_TOKEN.as_bytes()));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_palmgate"))
        .args(["serve", "--config"])
        .arg(s.config_path())
        .env("PALMGATE_ADMIN_MONITOR_TOKEN_SHA256", &admin_hash)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("admin.monitor_token_sha256")
            && err.contains("is the hash of the admin token"),
        "{err}"
    );
}
