//! No secret, key, token or template in what the server logs, at full verbosity.

use super::{no_redirects, partner_cookie};
use crate::fixtures::{ADMIN_TOKEN, Options, TestServer, poll, send};
use palmgate::core::ReaderId;
use palmgate::mqtt::simulate::{SimOptions, SimReader};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A webhook receiver that answers 200 to everything (so deliveries succeed and get logged).
async fn receiver() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let _ = tokio::time::timeout(Duration::from_secs(2), c.read(&mut buf)).await;
                let _ = c
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    format!("http://{addr}/hook")
}

fn template_of(capture: &Value) -> String {
    capture["template"].as_str().expect("template").to_string()
}

/// Everything secret that passes through a server at full verbosity, then a grep of what it
/// wrote: no API key (nor a near miss of one), webhook secret, admin token, session link token,
/// dashboard cookie or CSRF token, master key, or template (whole or any 24-character piece).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_key_token_or_template_reaches_the_logs() {
    let mut s = TestServer::prepare(
        Options::default().extra_toml("[webhooks]\nallow_networks = [\"127.0.0.0/8\"]"),
    );
    s.launch_env(&[("RUST_LOG", "trace")]).await;
    let hook = receiver().await;
    let mut secrets: Vec<(String, String)> = vec![("admin token".into(), ADMIN_TOKEN.into())];

    // Partners, one created with a webhook (its secret comes back once).
    let r = send(
        s.post("/admin/v1/partners")
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"name": "Logged", "webhook_url": hook})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let v = r.json();
    let key = v["api_key"].as_str().unwrap().to_string();
    secrets.push(("API key".into(), key.clone()));
    secrets.push((
        "webhook secret".into(),
        v["webhook_secret"].as_str().unwrap().into(),
    ));
    let (_, key2) = s.create_partner("Other").await;
    secrets.push(("API key".into(), key2.clone()));
    let put = send(
        s.client
            .put(s.url("/v1/webhook"))
            .header("x-api-key", &key2)
            .json(&json!({"url": hook, "events": ["session", "access"]})),
    )
    .await;
    secrets.push((
        "webhook secret".into(),
        put.json()["secret"].as_str().unwrap().into(),
    ));
    let rot = send(
        s.post("/v1/webhook/rotate-secret")
            .header("x-api-key", &key2),
    )
    .await;
    secrets.push((
        "rotated webhook secret".into(),
        rot.json()["secret"].as_str().unwrap().into(),
    ));
    send(s.post("/v1/webhook/test").header("x-api-key", &key2)).await;

    // Wrong guesses that are almost right.
    let near = format!("{}X", &key[..key.len() - 1]);
    secrets.push(("near-miss API key".into(), near.clone()));
    send(s.post("/v1/identify").header("x-api-key", &near)).await;
    send(
        s.get("/admin/v1/mode")
            .bearer_auth(format!("{ADMIN_TOKEN}x")),
    )
    .await;
    secrets.push(("near-miss admin token".into(), format!("{ADMIN_TOKEN}x")));

    // Enroll and identify through a reader, with the links opened as a person would.
    let mut reader = SimReader::connect(SimOptions {
        mqtt_url: s.mqtt_url.clone(),
        topic_prefix: "palmgate".into(),
        reader: ReaderId("desk-log".into()),
        palm: "alice".into(),
        dim: 128,
        quality: 0.95,
        liveness: true,
        seed: 7,
    })
    .await
    .expect("reader connects");
    let e = s
        .enroll(
            &key,
            "",
            &json!({"external_id": "EMP-LOG", "username": "Alice Log"}),
        )
        .await
        .created();
    secrets.push(("enroll link token".into(), e.token()));
    send(s.get(&e.path())).await;
    let sent = reader.capture(Some(&e.token())).await.expect("capture");
    secrets.push(("enrolled template".into(), template_of(&sent)));
    let ended = |id: String, k: String| {
        let s = &s;
        async move {
            poll("the session to end", Duration::from_secs(20), || {
                let (id, k) = (id.clone(), k.clone());
                async move {
                    let v = s.session(&k, &id).await.json();
                    (v["state"] != "pending").then_some(v)
                }
            })
            .await
        }
    };
    assert_eq!(
        ended(e.session_id.clone(), key.clone()).await["state"],
        "completed"
    );
    let i = s.identify(&key, "?language=kk").await.created();
    secrets.push(("identify link token".into(), i.token()));
    send(
        s.get(&format!("{}?reader=desk-log", i.path()))
            .header("accept", "application/json"),
    )
    .await;
    let sent = reader.capture(Some(&i.token())).await.expect("capture");
    secrets.push(("identify template".into(), template_of(&sent)));
    assert_eq!(
        ended(i.session_id.clone(), key.clone()).await["external_id"],
        "EMP-LOG"
    );

    // Dashboards: both logins, a page each, a write with the CSRF token.
    let (cookie, csrf) = partner_cookie(&s, &key).await;
    secrets.push((
        "partner cookie".into(),
        cookie["pg_partner=".len()..].to_string(),
    ));
    secrets.push(("partner CSRF token".into(), csrf.clone()));
    send(
        s.post("/v1/webhook/test")
            .header("cookie", &cookie)
            .header("x-csrf-token", &csrf),
    )
    .await;
    let r = no_redirects()
        .post(s.url("/admin/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={ADMIN_TOKEN}"))
        .send()
        .await
        .unwrap();
    let admin_cookie = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("pg_admin="))
        .map(|v| v.split(';').next().unwrap()["pg_admin=".len()..].to_string())
        .expect("admin cookie");
    secrets.push(("admin cookie".into(), admin_cookie.clone()));
    send(
        s.get("/admin/v1/users")
            .header("cookie", format!("pg_admin={admin_cookie}")),
    )
    .await;
    // Erase the user, then let the deliveries go out.
    send(
        s.client
            .delete(s.url("/v1/users/EMP-LOG"))
            .header("x-api-key", &key),
    )
    .await;
    poll("webhook deliveries", Duration::from_secs(20), || async {
        let v = send(
            s.get("/v1/webhook/deliveries?status=delivered")
                .header("x-api-key", &key),
        )
        .await
        .json();
        (v.as_array().is_some_and(|a| a.len() >= 2)).then_some(())
    })
    .await;
    let master = std::fs::read_to_string(s.dir().join("master.key")).unwrap();
    secrets.push(("master key".into(), master.trim().to_string()));
    drop(reader);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let log = s.stderr_log();
    let lines = log.lines().count();
    assert!(
        log.contains(" DEBUG "),
        "the log level was not raised ({lines} lines)"
    );
    for (what, secret) in &secrets {
        assert!(
            secret.len() >= 16,
            "{what} is too short to grep for: {secret:?}"
        );
        assert!(!log.contains(secret.as_str()), "the {what} is in the log");
        if what.contains("template") {
            // Any piece of it (a truncated log line would still leak the rest).
            for start in (0..secret.len().saturating_sub(24)).step_by(24) {
                let piece = &secret[start..start + 24];
                assert!(
                    !log.contains(piece),
                    "a piece of the {what} is in the log: {piece}"
                );
            }
        }
    }
    println!(
        "logs: {} secrets of {} kinds grepped in {lines} log lines ({} KiB)",
        secrets.len(),
        secrets
            .iter()
            .map(|(w, _)| w.as_str())
            .collect::<BTreeSet<_>>()
            .len(),
        log.len() / 1024
    );
}
