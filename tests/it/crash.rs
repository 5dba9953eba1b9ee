//! Durability (SPEC 8.1): an event is fsync'd before its 201 leaves. SIGKILL the server right
//! after the last 201, and while requests are in flight; after a restart every session that
//! got a 201 is there with its data, and the partner's API key still works.

use crate::fixtures::{Options, TestServer, send};
use serde_json::{Value, json};
use tokio::task::JoinSet;

/// A session some request asked for.
#[derive(Clone, Debug)]
struct Want {
    kind: &'static str,
    language: &'static str,
    external_id: Option<String>,
}

/// What a 201 promised.
#[derive(Clone, Debug)]
struct Got {
    want: Want,
    session_id: String,
    expires_at: String,
    path: String,
}

/// How one request ended.
enum Sent {
    Created(Got),
    /// The connection failed (expected only once the server is being killed).
    Transport(String),
    /// Any HTTP answer but 201: never acceptable.
    Status(u16, String),
}

fn wants(round: usize, n: usize) -> Vec<Want> {
    let langs = ["en", "kk", "ru"];
    (0..n)
        .map(|i| {
            let language = langs[(i + round) % 3];
            if i % 2 == 0 {
                Want {
                    kind: "enroll",
                    language,
                    external_id: Some(format!("R{round}-EMP-{i}")),
                }
            } else {
                Want {
                    kind: "identify",
                    language,
                    external_id: None,
                }
            }
        })
        .collect()
}

async fn create(client: reqwest::Client, base: String, key: String, want: Want) -> Sent {
    let url = format!("{base}/v1/{}?language={}", want.kind, want.language);
    let mut rb = client.post(url).header("x-api-key", key);
    if let Some(ext) = &want.external_id {
        rb = rb.json(&json!({
            "external_id": ext,
            "username": format!("Name of {ext}"),
            "metadata": {"access_level": "standard", "n": ext},
        }));
    }
    let r = match rb.send().await {
        Ok(r) => r,
        Err(e) => return Sent::Transport(e.to_string()),
    };
    let status = r.status().as_u16();
    let text = match r.text().await {
        Ok(t) => t,
        Err(e) => return Sent::Transport(e.to_string()),
    };
    if status != 201 {
        return Sent::Status(status, text);
    }
    let v: Value = serde_json::from_str(&text).expect("201 body is JSON");
    let url = v["url"].as_str().expect("url");
    let token = url.rsplit('/').next().expect("token");
    Sent::Created(Got {
        path: format!("/{}/{token}", want.kind),
        session_id: v["session_id"].as_str().expect("session_id").to_string(),
        expires_at: v["expires_at"].as_str().expect("expires_at").to_string(),
        want,
    })
}

fn spawn_all(s: &TestServer, key: &str, wants: Vec<Want>) -> JoinSet<Sent> {
    let mut set = JoinSet::new();
    for w in wants {
        set.spawn(create(
            s.client.clone(),
            s.base_url.clone(),
            key.to_string(),
            w,
        ));
    }
    set
}

/// Every request must have answered 201.
#[track_caller]
fn expect_created(sent: Sent, log: &dyn Fn() -> String) -> Got {
    match sent {
        Sent::Created(g) => g,
        Sent::Transport(e) => panic!("request failed on a live server: {e}\n{}", log()),
        Sent::Status(st, body) => panic!("request answered {st}: {body}"),
    }
}

/// Collects the rest of `set` after a kill: 201s are kept, transport errors are expected,
/// any other status is a failure.
async fn drain_after_kill(set: &mut JoinSet<Sent>, got: &mut Vec<Got>) -> usize {
    let mut lost = 0;
    while let Some(r) = set.join_next().await {
        match r.expect("task") {
            Sent::Created(g) => got.push(g),
            Sent::Transport(_) => lost += 1,
            Sent::Status(st, body) => panic!("request answered {st}: {body}"),
        }
    }
    lost
}

/// After a restart: every recorded session exists with the data it was created with, and its
/// page still opens (the link token survives the restart).
async fn verify_all(s: &TestServer, key: &str, got: &[Got]) {
    for g in got {
        let a = s.session(key, &g.session_id).await;
        assert_eq!(
            a.status,
            200,
            "session {} ({:?}) lost after SIGKILL: {}\nserver log:\n{}",
            g.session_id,
            g.want,
            a.text,
            s.stderr_log()
        );
        let v = a.json();
        assert_eq!(v["session_id"], json!(g.session_id));
        assert_eq!(v["type"], g.want.kind, "{v}");
        assert_eq!(v["language"], g.want.language, "{v}");
        assert_eq!(v["state"], "pending", "{v}");
        assert_eq!(v["expires_at"], json!(g.expires_at), "{v}");
        match &g.want.external_id {
            Some(ext) => assert_eq!(v["external_id"], json!(ext), "{v}"),
            None => assert!(v.get("external_id").is_none_or(Value::is_null), "{v}"),
        }
        let page = send(s.get(&g.path)).await;
        assert_eq!(
            page.status, 200,
            "page {} after restart: {}",
            g.path, page.text
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_201_survives_sigkill() {
    // A high limit: this test is about durability, not rate limiting.
    let mut s = TestServer::start_with(Options::default().per_minute(100_000)).await;
    let (_, key) = s.create_partner("Durable").await;
    let mut got: Vec<Got> = Vec::new();

    for round in 0..3 {
        let all = wants(round, 30);
        let before = got.len();
        match round {
            // Ten one after another, twenty at once; SIGKILL right after the last 201.
            0 => {
                let (seq, par) = all.split_at(10);
                for w in seq {
                    let sent =
                        create(s.client.clone(), s.base_url.clone(), key.clone(), w.clone()).await;
                    got.push(expect_created(sent, &|| s.stderr_log()));
                }
                let mut set = spawn_all(&s, &key, par.to_vec());
                while let Some(r) = set.join_next().await {
                    got.push(expect_created(r.expect("task"), &|| s.stderr_log()));
                }
                s.kill9();
                assert_eq!(got.len() - before, 30);
            }
            // Round 1: thirty at once; SIGKILL when the tenth 201 arrives, the rest in
            // flight. Round 2: two waves of five, then twenty at once; SIGKILL as soon as the
            // first of those twenty is answered.
            _ => {
                let kill_at = if round == 1 { 10 } else { 1 };
                let mut set = if round == 2 {
                    let (waves, rest) = all.split_at(10);
                    for wave in waves.chunks(5) {
                        let mut set = spawn_all(&s, &key, wave.to_vec());
                        while let Some(r) = set.join_next().await {
                            got.push(expect_created(r.expect("task"), &|| s.stderr_log()));
                        }
                    }
                    spawn_all(&s, &key, rest.to_vec())
                } else {
                    spawn_all(&s, &key, all)
                };
                killed_midway(&mut s, &mut set, &mut got, kill_at).await;
                assert!(
                    got.len() - before >= kill_at,
                    "round {round}: {} sessions created",
                    got.len() - before
                );
            }
        }

        s.restart().await;
        verify_all(&s, &key, &got).await;
        // The partner's API key still works, for reading and for writing.
        let sent = create(
            s.client.clone(),
            s.base_url.clone(),
            key.clone(),
            Want {
                kind: "identify",
                language: "en",
                external_id: None,
            },
        )
        .await;
        got.push(expect_created(sent, &|| s.stderr_log()));
    }
    // And the last of them survives one more SIGKILL.
    s.kill9();
    s.restart().await;
    verify_all(&s, &key, &got).await;
    let ids: std::collections::HashSet<_> = got.iter().map(|g| &g.session_id).collect();
    assert_eq!(ids.len(), got.len(), "session ids are unique");
}

/// Waits for `kill_at` 201s from `set`, SIGKILLs the server, then drains the rest.
async fn killed_midway(
    s: &mut TestServer,
    set: &mut JoinSet<Sent>,
    got: &mut Vec<Got>,
    kill_at: usize,
) {
    for _ in 0..kill_at {
        let r = set
            .join_next()
            .await
            .expect("fewer requests than the kill point");
        got.push(expect_created(r.expect("task"), &|| s.stderr_log()));
    }
    let in_flight = set.len();
    s.kill9();
    let lost = drain_after_kill(set, got).await;
    assert!(lost <= in_flight);
}

/// SPEC 4 + issue 4: a delivery whose attempt was cut by `kill -9` (the request was in flight,
/// no answer recorded) is sent again after the restart — with the same `X-Webhook-Id`, the
/// same attempt number and the same bytes — and then exactly once more, not for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_attempt_cut_by_sigkill_is_sent_again_with_the_same_id() {
    use std::sync::{Arc, Mutex};
    type Seen = Arc<Mutex<Vec<(String, String, Vec<u8>)>>>;
    let seen: Seen = Arc::default();
    let app = axum::Router::new()
        .route(
            "/hook",
            axum::routing::post(
                |axum::extract::State(seen): axum::extract::State<Seen>,
                 headers: axum::http::HeaderMap,
                 body: axum::body::Bytes| async move {
                    let h = |n: &str| {
                        headers
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string()
                    };
                    let first = {
                        let mut s = seen.lock().unwrap();
                        s.push((h("x-webhook-id"), h("x-webhook-attempt"), body.to_vec()));
                        s.len() == 1
                    };
                    if first {
                        // Hang: the server is killed while this attempt is in flight.
                        tokio::time::sleep(std::time::Duration::from_secs(60)).await;
                    }
                    axum::http::StatusCode::OK
                },
            ),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let mut s = TestServer::start_with(
        Options::default().extra_toml("[webhooks]\nallow_networks = [\"127.0.0.0/8\"]"),
    )
    .await;
    let (_, key) = s.create_partner("acme").await;
    let r = s
        .client
        .put(s.url("/v1/webhook"))
        .header("x-api-key", &key)
        .json(&serde_json::json!({ "url": hook }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let created = s.identify(&key, "").await;
    let sid = created.json()["session_id"].as_str().unwrap().to_string();
    assert_eq!(s.cancel(&key, &sid).await.status, 200);

    let count = |n: usize| {
        let seen = seen.clone();
        async move {
            let end = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while seen.lock().unwrap().len() < n {
                assert!(std::time::Instant::now() < end, "no delivery #{n} in 20 s");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    };
    count(1).await;
    s.kill9();
    s.restart().await;
    count(2).await;
    // Answered now: nothing more is sent.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen.len(),
        2,
        "{:?}",
        seen.iter().map(|x| (&x.0, &x.1)).collect::<Vec<_>>()
    );
    assert_eq!(seen[0].0, seen[1].0, "same X-Webhook-Id");
    assert!(seen[0].0.starts_with("msg_"));
    assert_eq!((seen[0].1.as_str(), seen[1].1.as_str()), ("1", "1"));
    assert_eq!(seen[0].2, seen[1].2, "same bytes");
    let body: Value = serde_json::from_slice(&seen[1].2).unwrap();
    assert_eq!(body["event"], "failed");
    assert_eq!(body["data"]["fail_reason"], "cancelled");
}
