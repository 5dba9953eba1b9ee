//! SPEC 2 partner extensions: `GET /v1/sessions/{id}`, `POST /v1/sessions/{id}/cancel`,
//! `GET /v1/users/{external_id}`, partner isolation, and expiry (SPEC 3: 15 minutes,
//! configurable).

use crate::fixtures::{Options, TestServer, poll, send, unix_now_ms};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use std::time::Duration;

/// Parses an API time: RFC 3339, UTC, written with `Z`.
#[track_caller]
fn api_time(v: &Value, field: &str) -> DateTime<Utc> {
    let s = v[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} is not a string in {v}"));
    assert!(s.ends_with('Z'), "{field} {s:?} is not UTC with Z");
    DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{field} {s:?} is not RFC 3339: {e}"))
        .with_timezone(&Utc)
}

#[tokio::test]
async fn get_session_shows_its_fields() {
    let s = TestServer::start().await;
    let (_, key) = s.create_partner("Reader").await;
    let before = Utc::now();
    let a = s
        .enroll(
            &key,
            "?language=kk",
            &json!({"external_id": "EMP-12345", "username": "Айгүл", "metadata": {"access_level": "standard"}}),
        )
        .await;
    let c = a.created();
    let after = Utc::now();

    let t = unix_now_ms();
    let a = s.session(&key, &c.session_id).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert!(a.content_type().starts_with("application/json"));
    a.assert_rate_headers(t);
    let v = a.json();
    assert_eq!(v["session_id"], json!(c.session_id));
    assert_eq!(v["type"], "enroll");
    assert_eq!(v["state"], "pending");
    assert_eq!(v["language"], "kk");
    assert_eq!(v["external_id"], "EMP-12345");
    assert_eq!(
        v.get("fail_reason"),
        Some(&Value::Null),
        "fail_reason null while pending: {v}"
    );
    let created = api_time(&v, "created_at");
    let expires = api_time(&v, "expires_at");
    assert!(
        created >= before - chrono::Duration::seconds(1)
            && created <= after + chrono::Duration::seconds(1),
        "created_at {created} is not the time of the request ({before}..{after})"
    );
    assert_eq!(
        expires - created,
        chrono::Duration::minutes(15),
        "default ttl"
    );
    assert_eq!(
        v["expires_at"],
        json!(c.expires_at),
        "same expires_at as the 201"
    );
    uuid::Uuid::parse_str(&c.session_id).expect("session_id is a UUID");

    // An identify session.
    let c = s.identify(&key, "?language=ru").await.created();
    let v = s.session(&key, &c.session_id).await.json();
    assert_eq!(v["session_id"], json!(c.session_id));
    assert_eq!(v["type"], "identify");
    assert_eq!(v["state"], "pending");
    assert_eq!(v["language"], "ru");
    assert_eq!(
        v.get("external_id"),
        Some(&Value::Null),
        "identify has external_id null before it matches: {v}"
    );
    let created = api_time(&v, "created_at");
    assert_eq!(
        api_time(&v, "expires_at") - created,
        chrono::Duration::minutes(15)
    );
    assert!(c.url.ends_with(&format!("/identify/{}", c.token())));
}

#[tokio::test]
async fn configured_ttl_sets_expires_at() {
    let s = TestServer::start_with(Options::default().ttl("90s")).await;
    let (_, key) = s.create_partner("Quick").await;
    let c = s.identify(&key, "").await.created();
    let v = s.session(&key, &c.session_id).await.json();
    assert_eq!(
        api_time(&v, "expires_at") - api_time(&v, "created_at"),
        chrono::Duration::seconds(90)
    );
}

#[tokio::test]
async fn cancel_fails_the_session_once() {
    let s = TestServer::start().await;
    let (_, key) = s.create_partner("Canceller").await;
    let c = s
        .enroll(&key, "", &json!({"external_id": "EMP-1"}))
        .await
        .created();

    let t = unix_now_ms();
    let a = s.cancel(&key, &c.session_id).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert!(a.content_type().starts_with("application/json"));
    a.assert_rate_headers(t);
    let v = a.json();
    assert_eq!(v["session_id"], json!(c.session_id));
    assert_eq!(v["state"], "failed");
    assert_eq!(v["fail_reason"], "cancelled");

    let v = s.session(&key, &c.session_id).await.json();
    assert_eq!(v["state"], "failed");
    assert_eq!(v["fail_reason"], "cancelled");
    assert_eq!(v["type"], "enroll");
    assert_eq!(v["external_id"], "EMP-1");

    // A session that has ended cannot be cancelled again.
    let t = unix_now_ms();
    let a = s.cancel(&key, &c.session_id).await;
    a.assert_error(409, "session is not pending");
    a.assert_rate_headers(t);
    assert_eq!(
        s.session(&key, &c.session_id).await.json()["fail_reason"],
        "cancelled"
    );

    // Identify sessions cancel the same way; other sessions are untouched.
    let i = s.identify(&key, "").await.created();
    let other = s.identify(&key, "").await.created();
    let v = s.cancel(&key, &i.session_id).await.json();
    assert_eq!(
        (v["state"].as_str(), v["fail_reason"].as_str()),
        (Some("failed"), Some("cancelled"))
    );
    assert_eq!(
        s.session(&key, &other.session_id).await.json()["state"],
        "pending"
    );
}

#[tokio::test]
async fn another_partners_sessions_and_users_do_not_exist() {
    let mut s = TestServer::prepare(Options::default());
    let a = s.seed_partner("Alpha", &["EMP-1"]).await;
    s.launch().await;
    let (_, b_key) = s.create_partner("Beta").await;

    let c = s
        .enroll(&a.api_key, "", &json!({"external_id": "EMP-2"}))
        .await
        .created();

    // A sees its own session and user.
    assert_eq!(s.session(&a.api_key, &c.session_id).await.status, 200);
    let u = send(s.get("/v1/users/EMP-1").header("x-api-key", &a.api_key)).await;
    assert_eq!(u.status, 200, "{}", u.text);
    let v = u.json();
    assert_eq!(v["external_id"], "EMP-1");
    assert_eq!(v["username"], "User EMP-1");
    assert_eq!(v["metadata"], json!({"access_level": "standard"}));
    api_time(&v, "enrolled_at");

    // B gets exactly what a missing session or user gets.
    let t = unix_now_ms();
    let r = s.session(&b_key, &c.session_id).await;
    r.assert_error(404, "not found");
    r.assert_rate_headers(t);
    s.cancel(&b_key, &c.session_id)
        .await
        .assert_error(404, "not found");
    send(s.get("/v1/users/EMP-1").header("x-api-key", &b_key))
        .await
        .assert_error(404, "not found");
    s.session(&b_key, "00000000-0000-4000-8000-000000000000")
        .await
        .assert_error(404, "not found");

    let r = send(
        s.client
            .delete(s.url("/v1/users/EMP-1"))
            .header("x-api-key", &b_key),
    )
    .await;
    r.assert_error(404, "not found");

    // B's cancel and delete changed nothing.
    assert_eq!(
        send(s.get("/v1/users/EMP-1").header("x-api-key", &a.api_key))
            .await
            .status,
        200
    );
    let v = s.session(&a.api_key, &c.session_id).await.json();
    assert_eq!(v["state"], "pending");

    // A user that does not exist, for A itself.
    send(s.get("/v1/users/EMP-404").header("x-api-key", &a.api_key))
        .await
        .assert_error(404, "not found");
    // A pending enrollment is not a user yet.
    send(s.get("/v1/users/EMP-2").header("x-api-key", &a.api_key))
        .await
        .assert_error(404, "not found");
}

#[tokio::test]
async fn unknown_or_malformed_session_id_is_404() {
    let s = TestServer::start().await;
    let (_, key) = s.create_partner("Typo").await;
    let c = s.identify(&key, "").await.created();
    for id in [
        "not-a-uuid",
        "00000000-0000-4000-8000-000000000000",
        "12345",
        &c.session_id[..35],
        &format!("{}0", c.session_id),
        &c.token(),
    ] {
        s.session(&key, id).await.assert_error(404, "not found");
        s.cancel(&key, id).await.assert_error(404, "not found");
    }
    // The real one is still pending.
    assert_eq!(
        s.session(&key, &c.session_id).await.json()["state"],
        "pending"
    );
}

#[tokio::test]
async fn pending_session_expires_after_its_ttl() {
    let s = TestServer::start_with(Options::default().ttl("2s")).await;
    let (_, key) = s.create_partner("Slow").await;
    let e = s
        .enroll(&key, "?language=ru", &json!({"external_id": "EMP-1"}))
        .await
        .created();
    let i = s.identify(&key, "").await.created();
    let cancelled = s.identify(&key, "").await.created();
    assert_eq!(s.cancel(&key, &cancelled.session_id).await.status, 200);

    let v = s.session(&key, &e.session_id).await.json();
    assert_eq!(v["state"], "pending");
    assert_eq!(
        api_time(&v, "expires_at") - api_time(&v, "created_at"),
        chrono::Duration::seconds(2)
    );

    for c in [&e, &i] {
        let (srv, k, id) = (&s, key.as_str(), c.session_id.as_str());
        let v = poll(
            "the session to expire",
            Duration::from_secs(10),
            move || async move {
                let v = srv.session(k, id).await.json();
                (v["state"] == "expired").then_some(v)
            },
        )
        .await;
        assert!(
            Utc::now() >= api_time(&v, "expires_at"),
            "expired before expires_at: {v}"
        );
        assert!(
            v.get("fail_reason").is_none_or(Value::is_null),
            "an expired session has no fail_reason: {v}"
        );
        // The page says the link expired.
        let page = send(s.get(&c.path())).await;
        assert_eq!(page.status, 400, "{}", page.text);
        // It can no longer be cancelled.
        s.cancel(&key, &c.session_id)
            .await
            .assert_error(409, "session is not pending");
    }
    // A session that failed before its deadline stays failed.
    let v = s.session(&key, &cancelled.session_id).await.json();
    assert_eq!(v["state"], "failed");
    assert_eq!(v["fail_reason"], "cancelled");
}

/// The `expires_at` a partner reads is the deadline to the second: the instant it names, the
/// session reads `expired` and its page says so. The deadline once kept the creation's
/// fraction of a second, so a session stayed open up to a second past what it said.
#[tokio::test]
async fn a_session_is_expired_from_the_second_its_expires_at_names() {
    let s = TestServer::start_with(Options::default().ttl("2s")).await;
    let (_, key) = s.create_partner("Exact").await;
    for _ in 0..3 {
        let c = s.identify(&key, "").await.created();
        let v = s.session(&key, &c.session_id).await.json();
        let deadline = api_time(&v, "expires_at");
        let wait = (deadline - Utc::now()).to_std().unwrap_or_default();
        tokio::time::sleep(wait + Duration::from_millis(20)).await;
        let v = s.session(&key, &c.session_id).await.json();
        assert_eq!(
            v["state"],
            "expired",
            "at {} for {deadline}: {v}",
            Utc::now()
        );
        assert_eq!(send(s.get(&c.path())).await.status, 400);
    }
}

/// A session whose expiry comes before the deadline the server is waiting for is still
/// recorded expired on time. The deadline loop is woken only by a new session that expires before what it
/// sleeps until; here one made with a 1 h TTL holds it asleep for an hour, and after a restart
/// with a 2 s TTL a new session must wake it.
#[tokio::test]
async fn a_session_expiring_before_the_awaited_deadline_still_expires_on_time() {
    let mut s = TestServer::start_with(Options::default().ttl("1h")).await;
    let (_, key) = s.create_partner("Early").await;
    let long = s.identify(&key, "").await.created();
    s.terminate();
    let text = std::fs::read_to_string(s.config_path()).unwrap();
    let patched = text.replacen("ttl = \"1h\"", "ttl = \"2s\"", 1);
    assert_ne!(text, patched);
    std::fs::write(s.config_path(), patched).unwrap();
    s.launch().await;
    let short = s.identify(&key, "").await.created();
    let (srv, k, id) = (&s, key.as_str(), short.session_id.as_str());
    poll(
        "the 2 s session to expire",
        Duration::from_secs(10),
        move || async move {
            let v = srv.session(k, id).await.json();
            (v["state"] == "expired").then_some(v)
        },
    )
    .await;
    // Reading a session past its expiry already says `expired`; the deadline loop is what
    // records it, and lets it go from the pending ones.
    let srv = &s;
    poll(
        "the server to record the expiry",
        Duration::from_secs(10),
        move || async move {
            let text = srv
                .client
                .get(srv.url("/metrics"))
                .bearer_auth(crate::fixtures::ADMIN_TOKEN)
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            text.lines()
                .any(|l| l == "palmgate_sessions_pending 1")
                .then_some(())
        },
    )
    .await;
    let v = s.session(&key, &long.session_id).await.json();
    assert_eq!(v["state"], "pending", "{v}");
}

#[tokio::test]
async fn completed_enrollment_reads_completed_and_cannot_be_cancelled() {
    let mut s = TestServer::prepare(Options::default());
    let p = s.seed_partner("Done", &["EMP-1", "EMP-2"]).await;
    s.launch().await;
    for u in &p.users {
        let a = s.session(&p.api_key, &u.session_id).await;
        assert_eq!(a.status, 200, "{}", a.text);
        let v = a.json();
        assert_eq!(v["session_id"], json!(u.session_id));
        assert_eq!(v["type"], "enroll");
        assert_eq!(v["state"], "completed");
        assert_eq!(v["language"], json!(u.language));
        assert_eq!(v["external_id"], json!(u.external_id));
        assert!(v.get("fail_reason").is_none_or(Value::is_null), "{v}");
        api_time(&v, "created_at");
        api_time(&v, "expires_at");
        s.cancel(&p.api_key, &u.session_id)
            .await
            .assert_error(409, "session is not pending");
        assert_eq!(
            s.session(&p.api_key, &u.session_id).await.json()["state"],
            "completed"
        );
    }
}

#[tokio::test]
async fn deleted_user_is_gone_and_may_enroll_again() {
    let mut s = TestServer::prepare(Options::default());
    let p = s.seed_partner("Forgetful", &["EMP-1", "EMP-2"]).await;
    s.launch().await;
    let key = &p.api_key;
    let user = |ext: &str| send(s.get(&format!("/v1/users/{ext}")).header("x-api-key", key));
    let delete = |ext: &str| {
        send(
            s.client
                .delete(s.url(&format!("/v1/users/{ext}")))
                .header("x-api-key", key),
        )
    };

    s.enroll(key, "", &json!({"external_id": "EMP-1"}))
        .await
        .assert_error(409, "user with this external_id already enrolled");
    let t = unix_now_ms();
    let a = delete("EMP-1").await;
    assert_eq!(a.status, 204, "{}", a.text);
    assert!(a.text.is_empty(), "204 has no body: {:?}", a.text);
    a.assert_rate_headers(t);

    user("EMP-1").await.assert_error(404, "not found");
    delete("EMP-1").await.assert_error(404, "not found");
    // The other user is untouched.
    assert_eq!(user("EMP-2").await.status, 200);
    // A later enroll of the same external_id is allowed.
    s.enroll(key, "", &json!({"external_id": "EMP-1"}))
        .await
        .created();
    // And the erasure survives a restart.
    s.restart().await;
    let user = |ext: &str| send(s.get(&format!("/v1/users/{ext}")).header("x-api-key", key));
    user("EMP-1").await.assert_error(404, "not found");
    assert_eq!(user("EMP-2").await.status, 200);
}

/// `sessions.retention`: an ended session answers until its retention has passed, then it is
/// forgotten (404 from the API and the page) — also after a restart, which rebuilds the state
/// from the log and drops the store's stream heads the state no longer knows. An
/// Idempotency-Key whose session was forgotten starts a new session (no 500).
#[tokio::test]
async fn an_ended_session_is_forgotten_after_its_retention() {
    let mut s = TestServer::start_with(Options::default().session_retention("2s")).await;
    let (_, key) = s.create_partner("Forgetful").await;
    let idem = |rb: reqwest::RequestBuilder| rb.header("Idempotency-Key", "order-1");
    let first = send(idem(s.post("/v1/identify").header("x-api-key", &key)))
        .await
        .created();
    let ended = s.identify(&key, "").await.created();
    let pending = s.identify(&key, "").await.created();
    for c in [&first, &ended] {
        assert_eq!(s.cancel(&key, &c.session_id).await.status, 200);
    }
    // Within the retention: the ended session answers, its page is 410, the key replays.
    assert_eq!(
        s.session(&key, &ended.session_id).await.json()["state"],
        "failed"
    );
    assert_eq!(send(s.get(&ended.path())).await.status, 410);
    let again = send(idem(s.post("/v1/identify").header("x-api-key", &key))).await;
    assert_eq!(again.created().session_id, first.session_id);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));

    // The state forgets by the time of the events it folds: wait, then record something.
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let later = s.identify(&key, "").await.created();
    for c in [&first, &ended] {
        s.session(&key, &c.session_id)
            .await
            .assert_error(404, "not found");
        assert_eq!(send(s.get(&c.path())).await.status, 404);
    }
    // Pending sessions are never forgotten.
    assert_eq!(
        s.session(&key, &pending.session_id).await.json()["state"],
        "pending"
    );
    // The key's session is gone: the key starts a new session, which it then replays.
    let renewed = send(idem(s.post("/v1/identify").header("x-api-key", &key)))
        .await
        .created();
    assert_ne!(renewed.session_id, first.session_id);
    let replay = send(idem(s.post("/v1/identify").header("x-api-key", &key))).await;
    assert_eq!(replay.created().session_id, renewed.session_id);

    // After a SIGKILL and a restart: the same answers, and every stream still takes appends.
    s.restart().await;
    s.session(&key, &ended.session_id)
        .await
        .assert_error(404, "not found");
    for c in [&pending, &later, &renewed] {
        let v = s.cancel(&key, &c.session_id).await;
        assert_eq!(v.status, 200, "{}", v.text);
    }
    let replay = send(idem(s.post("/v1/identify").header("x-api-key", &key))).await;
    assert_eq!(replay.created().session_id, renewed.session_id);
    assert!(!s.stderr_log().contains("panicked"));
}

/// A client that sends a request and hangs up before the answer (a phone losing its signal, a
/// partner's timeout) must not leave the server's state behind its log: whatever was appended
/// for the request is folded in as if the client had waited. Before this was so, the handler
/// was dropped with the connection, after its append had been sent to the writer and before
/// its events were folded: the session read `pending` while the log said `cancelled`, and the
/// next command on that stream waited for a revision that never came (8 × 2 s, then 503).
#[tokio::test]
async fn a_request_whose_client_hangs_up_still_reaches_the_state() {
    use tokio::io::AsyncWriteExt;
    let mut s = TestServer::start().await;
    let (_, key) = s.create_partner("Impatient").await;
    let mut ids = Vec::new();
    for _ in 0..40 {
        ids.push(s.identify(&key, "").await.created().session_id);
    }
    let addr = s.base_url.trim_start_matches("http://").to_string();
    for id in &ids {
        let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let req = format!(
            "POST /v1/sessions/{id}/cancel HTTP/1.1\r\nHost: {addr}\r\nX-API-Key: {key}\r\n\
             Content-Length: 0\r\n\r\n"
        );
        tcp.write_all(req.as_bytes()).await.unwrap();
        // Hang up at once: no answer is read.
        drop(tcp);
    }
    // Every abandoned cancel has either reached the log and the state, or neither; a second
    // cancel is then answered at once, 200 or 409, never after a wait for a lost revision.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut states = Vec::new();
    for id in &ids {
        let started = std::time::Instant::now();
        let a = s.cancel(&key, id).await;
        assert!(
            a.status == 200 || a.status == 409,
            "cancel of {id} answered {}: {}",
            a.status,
            a.text
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "cancel of {id} took {:?}",
            started.elapsed()
        );
        states.push(s.session(&key, id).await.json()["state"].clone());
    }
    assert!(states.iter().all(|v| v == "failed"), "{states:?}");
    let landed = s
        .stderr_log()
        .matches("caller went away before its events were durable")
        .count();
    println!(
        "{landed} of {} abandoned cancels landed after their caller left",
        ids.len()
    );
    // The state before the restart is the fold of the log.
    let before: Vec<Value> = {
        let mut v = Vec::new();
        for id in &ids {
            v.push(s.session(&key, id).await.json());
        }
        v
    };
    s.restart().await;
    for (id, was) in ids.iter().zip(&before) {
        assert_eq!(&s.session(&key, id).await.json(), was, "session {id}");
    }
}

/// A session past its `expires_at` reads `expired` in the API at once, as its page and a
/// cancel already treat it, even while the tick cannot record `SessionExpired` (here: the log
/// is locked by another process). It read `pending` until the tick's write landed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_past_its_deadline_reads_expired_before_the_tick_records_it() {
    let s = TestServer::start_with(Options::default().ttl("2s")).await;
    let (_, key) = s.create_partner("Poller").await;
    let c = s.identify(&key, "").await.created();
    let lock = rusqlite::Connection::open(s.store_path()).unwrap();
    lock.busy_timeout(Duration::from_secs(10)).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let v = s.session(&key, &c.session_id).await.json();
    assert_eq!(v["state"], "expired", "{v}");
    assert_eq!(v["ended_at"], v["expires_at"], "{v}");
    let list = send(s.get("/v1/sessions").header("x-api-key", &key))
        .await
        .json();
    assert_eq!(list[0]["state"], "expired", "{list}");
    lock.execute_batch("ROLLBACK").unwrap();
    // Once recorded, the same.
    let v = poll("the recorded expiry", Duration::from_secs(10), || async {
        let v = s.session(&key, &c.session_id).await.json();
        (v["state"] == "expired").then_some(v)
    })
    .await;
    assert_eq!(v["ended_at"], v["expires_at"], "{v}");
}

/// `GET <path>` with the partner's key: (status, `X-Total-Count`, the external ids or session
/// ids of the body, the body).
async fn page_of(
    s: &TestServer,
    key: &str,
    path: &str,
    id: &str,
) -> (u16, Option<usize>, Vec<String>) {
    let a = send(s.get(path).header("x-api-key", key)).await;
    assert!(
        a.header("x-ratelimit-limit").is_some(),
        "{path}: rate-limit headers lost"
    );
    let total = a.header("x-total-count").map(|t| {
        t.parse()
            .unwrap_or_else(|e| panic!("{path}: X-Total-Count {t:?}: {e}"))
    });
    if a.status != 200 {
        return (a.status, total, vec![a.text.clone()]);
    }
    let ids = a
        .json()
        .as_array()
        .unwrap_or_else(|| panic!("{path}: not an array: {}", a.text))
        .iter()
        .map(|v| v[id].as_str().unwrap_or_default().to_string())
        .collect();
    (a.status, total, ids)
}

#[tokio::test]
async fn user_and_session_lists_page_and_search_with_a_total() {
    let mut s = TestServer::prepare(Options::default());
    let exts = [
        "EMP-01", "EMP-02", "EMP-03", "EMP-04", "EMP-05", "EMP-06", "EMP-07",
    ];
    let p = s.seed_partner("Paged", &exts).await;
    s.launch().await;
    let key = &p.api_key;
    let ids = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();

    // Users: same enrollment instant, so external id order; q, then offset, then limit.
    let users = |q: &str| format!("/v1/users?{q}");
    for (query, total, want) in [
        ("limit=3", 7, ids(&exts[0..3])),
        ("limit=3&offset=3", 7, ids(&exts[3..6])),
        ("limit=3&offset=6", 7, ids(&exts[6..])),
        ("limit=3&offset=10", 7, vec![]),
        ("", 7, ids(&exts)),
        ("q=emp-0&limit=3&offset=6", 7, ids(&exts[6..])),
        ("q=user%20EMP-05", 1, ids(&["EMP-05"])),
        ("q=STANDARD&limit=2", 7, ids(&exts[0..2])),
        ("q=nobody", 0, vec![]),
        ("q=&limit=1&colour=red", 7, ids(&exts[0..1])),
        ("offset=1000000000", 7, vec![]),
    ] {
        let (status, got_total, got) = page_of(&s, key, &users(query), "external_id").await;
        assert_eq!(status, 200, "{query}: {got:?}");
        assert_eq!(got_total, Some(total), "{query}: X-Total-Count");
        assert_eq!(got, want, "{query}");
    }
    let long = "x".repeat(200);
    let (status, total, _) = page_of(&s, key, &users(&format!("q={long}")), "external_id").await;
    assert_eq!(
        (status, total),
        (200, Some(0)),
        "a 200-character q is allowed"
    );

    for (query, message) in [
        (
            "offset=-1",
            "offset must be a whole number from 0 to 1000000000",
        ),
        (
            "offset=abc",
            "offset must be a whole number from 0 to 1000000000",
        ),
        (
            "offset=1000000001",
            "offset must be a whole number from 0 to 1000000000",
        ),
        ("limit=0", "limit must be a whole number from 1 to 500"),
        (
            "limit=501&offset=2",
            "limit must be a whole number from 1 to 500",
        ),
    ] {
        for list in ["/v1/users", "/v1/sessions"] {
            send(s.get(&format!("{list}?{query}")).header("x-api-key", key))
                .await
                .assert_error(400, message);
        }
    }
    let too_long = format!("q={}", "я".repeat(201));
    for list in ["/v1/users", "/v1/sessions"] {
        send(
            s.get(&format!("{list}?{too_long}"))
                .header("x-api-key", key),
        )
        .await
        .assert_error(400, "q must be at most 200 characters");
    }

    // Sessions: a new pending one is newest; the seven seeded ones completed.
    let c = s
        .enroll(key, "", &json!({"external_id": "NEW-1"}))
        .await
        .created();
    let (_, total, all) = page_of(&s, key, "/v1/sessions?limit=500", "session_id").await;
    assert_eq!(total, Some(8));
    assert_eq!(all.len(), 8);
    assert_eq!(all[0], c.session_id, "newest first");
    let mut paged = Vec::new();
    for offset in [0, 3, 6] {
        let (status, total, got) = page_of(
            &s,
            key,
            &format!("/v1/sessions?limit=3&offset={offset}"),
            "session_id",
        )
        .await;
        assert_eq!((status, total), (200, Some(8)), "offset {offset}");
        assert_eq!(
            got.len(),
            if offset == 6 { 2 } else { 3 },
            "offset {offset}"
        );
        paged.extend(got);
    }
    assert_eq!(paged, all, "pages in order make the whole list");
    let seeded = &p.users[3];
    for (q, want) in [
        ("pending", vec![c.session_id.clone()]),
        ("COMPLETED", all[1..].to_vec()),
        ("identify", vec![]),
        ("enroll", all.clone()),
        ("emp-04", vec![seeded.session_id.clone()]),
        (&seeded.session_id[..], vec![seeded.session_id.clone()]),
    ] {
        let (status, total, got) = page_of(
            &s,
            key,
            &format!("/v1/sessions?limit=500&q={q}"),
            "session_id",
        )
        .await;
        assert_eq!(status, 200, "{q}");
        assert_eq!(total, Some(want.len()), "q={q}: X-Total-Count");
        assert_eq!(got, want, "q={q}");
    }
}

/// Partner names are unique, trimmed and ignoring case (a site policy's `partners` admits by
/// name): a second "Acme" answers 409 naming it and creates nothing, also when several
/// arrive at once.
#[tokio::test]
async fn a_second_partner_with_a_taken_name_is_refused() {
    use crate::fixtures::ADMIN_TOKEN;
    let s = TestServer::start().await;
    let create = |name: &str| {
        s.post("/admin/v1/partners")
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({ "name": name }))
    };
    let first = send(create("Acme")).await;
    assert_eq!(first.status, 201, "{}", first.text);
    for name in ["Acme", " acme ", "ACME"] {
        send(create(name)).await.assert_error(
            409,
            "a partner named \"Acme\" exists (partner names are unique, ignoring case)",
        );
    }
    // Eight creations of one new name at once: exactly one is created.
    let tasks: Vec<_> = (0..8)
        .map(|_| tokio::spawn(send(create("Globex"))))
        .collect();
    let mut statuses: Vec<u16> = Vec::new();
    for t in tasks {
        statuses.push(t.await.expect("creation task").status);
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        7,
        "{statuses:?}"
    );
    let list = send(s.get("/admin/v1/partners").bearer_auth(ADMIN_TOKEN)).await;
    let mut names: Vec<String> = list
        .json()
        .as_array()
        .expect("partner list")
        .iter()
        .map(|p| p["name"].as_str().unwrap_or_default().to_string())
        .collect();
    names.sort();
    assert_eq!(names, vec!["Acme", "Globex"], "nothing else was created");
    // Another name is still welcome.
    assert_eq!(send(create("Acme 2")).await.status, 201);
}
