//! SPEC 2, the error table of the Pass API, row by row: status, `{"message"}` body,
//! `Content-Type: application/json`, the rate-limit headers on every `/v1` answer, the order
//! of checking, and `Idempotency-Key`.

use crate::fixtures::{Answer, Options, TestServer, send, unix_now_ms};
use palmgate::store::{EventStore, SqliteStore};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::time::{Duration, Instant};

const BAD_KEY: &str = "pgk_this-key-was-never-issued-0000000000000";

fn enroll_body(ext: &str) -> Value {
    json!({
        "external_id": ext,
        "username": "John Doe",
        "metadata": {"department": "Engineering", "access_level": "standard"}
    })
}

/// `POST /v1/enroll` with a raw body and an optional content type.
async fn enroll_raw(
    s: &TestServer,
    key: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> Answer {
    let mut rb = s.post("/v1/enroll").header("x-api-key", key).body(body);
    if let Some(ct) = content_type {
        rb = rb.header("content-type", ct);
    }
    send(rb).await
}

// ---------------------------------------------------------------------------------------------
// 401 / 403

#[tokio::test]
async fn missing_api_key_is_401() {
    let s = TestServer::start().await;
    let t = unix_now_ms();
    let a = send(s.post("/v1/enroll").json(&enroll_body("EMP-1"))).await;
    a.assert_error(401, "invalid or missing API key");
    a.assert_rate_headers(t);

    let t = unix_now_ms();
    let a = send(s.post("/v1/identify")).await;
    a.assert_error(401, "invalid or missing API key");
    a.assert_rate_headers(t);

    // An empty header is as good as none.
    let a = send(s.post("/v1/identify").header("x-api-key", "")).await;
    a.assert_error(401, "invalid or missing API key");

    let t = unix_now_ms();
    let a = send(s.get("/v1/sessions/00000000-0000-4000-8000-000000000000")).await;
    a.assert_error(401, "invalid or missing API key");
    a.assert_rate_headers(t);
}

#[tokio::test]
async fn unknown_api_key_is_401() {
    let s = TestServer::start().await;
    // A real partner exists; a key that is almost its key is still unknown.
    let (_, key) = s.create_partner("Acme").await;
    let near = format!("{}x", &key[..key.len() - 1]);
    for k in [BAD_KEY, near.as_str()] {
        let t = unix_now_ms();
        let a = s.enroll(k, "", &enroll_body("EMP-1")).await;
        a.assert_error(401, "invalid or missing API key");
        a.assert_rate_headers(t);

        let t = unix_now_ms();
        let a = s.identify(k, "").await;
        a.assert_error(401, "invalid or missing API key");
        a.assert_rate_headers(t);
    }
    // The real key works.
    s.identify(&key, "").await.created();
}

#[tokio::test]
async fn inactive_partner_is_403_until_activated() {
    let s = TestServer::start().await;
    let (id, key) = s.create_partner("Sleepy").await;
    let c = s.identify(&key, "").await.created();
    s.deactivate(&id).await;

    let t = unix_now_ms();
    let a = s.enroll(&key, "", &enroll_body("EMP-1")).await;
    a.assert_error(403, "partner account is inactive");
    a.assert_rate_headers(t);

    let t = unix_now_ms();
    let a = s.identify(&key, "").await;
    a.assert_error(403, "partner account is inactive");
    a.assert_rate_headers(t);

    let a = s.session(&key, &c.session_id).await;
    a.assert_error(403, "partner account is inactive");
    // 403 comes before 400: a bad body from an inactive partner is still 403.
    let a = enroll_raw(&s, &key, Some("application/json"), b"{nope".to_vec()).await;
    a.assert_error(403, "partner account is inactive");
    // ...and before 404.
    let a = send(s.get("/v1/no-such-thing").header("x-api-key", &key)).await;
    a.assert_error(403, "partner account is inactive");

    s.activate(&id).await;
    s.identify(&key, "").await.created();
    assert_eq!(s.session(&key, &c.session_id).await.status, 200);
}

/// A partner deactivated while its request's body is still arriving (a slow network) gets the
/// 403 too: the gate checked it before the body, the decision checks it again, and no session
/// is made after the deactivation.
#[tokio::test]
async fn a_partner_deactivated_while_its_body_arrives_gets_403_and_no_session() {
    use tokio::io::AsyncWriteExt;
    let s = TestServer::start().await;
    let (id, key) = s.create_partner("Slow").await;
    let addr = s.base_url.trim_start_matches("http://").to_string();
    let mut conn = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let body = br#"{"external_id":"SLOW-1"}"#;
    let head = format!(
        "POST /v1/enroll HTTP/1.1\r\nHost: {addr}\r\nx-api-key: {key}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.expect("write head");
    conn.write_all(&body[..5]).await.expect("write a part");
    // The gate has passed the request (its handler waits for the body) before this lands.
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.deactivate(&id).await;
    conn.write_all(&body[5..]).await.expect("write the rest");
    let (head, answer) = read_response(&mut conn).await.expect("answer");
    assert!(head.starts_with("http/1.1 403"), "{head}");
    let v: Value = serde_json::from_slice(&answer).expect("JSON");
    assert_eq!(v, json!({"message": "partner account is inactive"}));
    s.activate(&id).await;
    let list = send(s.get("/v1/sessions").header("x-api-key", &key)).await;
    assert_eq!(list.status, 200, "{}", list.text);
    assert!(
        !list.text.contains("SLOW-1"),
        "a session was made: {}",
        list.text
    );
}

// ---------------------------------------------------------------------------------------------
// 429 and the rate-limit headers

#[tokio::test]
async fn rate_limit_is_per_partner_per_endpoint_with_headers() {
    let s = TestServer::start_with(Options::default().per_minute(5)).await;
    let (_, key) = s.create_partner("Busy").await;
    let mut resets = Vec::new();
    for i in 0..5 {
        let t = unix_now_ms();
        let a = s.enroll(&key, "", &enroll_body(&format!("EMP-{i}"))).await;
        a.created();
        let h = a.assert_rate_headers(t);
        assert_eq!(h.limit, 5, "X-RateLimit-Limit");
        assert_eq!(
            h.remaining,
            4 - i,
            "X-RateLimit-Remaining after request {}",
            i + 1
        );
        resets.push(h.reset);
    }
    assert!(
        resets.windows(2).all(|w| w[0] <= w[1]),
        "reset moves forward as the budget is spent: {resets:?}"
    );

    let t = unix_now_ms();
    let a = s.enroll(&key, "", &enroll_body("EMP-6")).await;
    a.assert_error(429, "rate limit exceeded");
    let h = a.assert_rate_headers(t);
    assert_eq!((h.limit, h.remaining), (5, 0));
    let retry = a.retry_after();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");

    // 429 comes before 400: a broken body over the limit is still 429.
    let a = enroll_raw(&s, &key, Some("application/json"), b"{nope".to_vec()).await;
    a.assert_error(429, "rate limit exceeded");
    assert!(a.retry_after() >= 1);
    a.assert_rate_headers(t);

    // Another endpoint has its own budget.
    let t = unix_now_ms();
    let a = s.identify(&key, "").await;
    let c = a.created();
    let h = a.assert_rate_headers(t);
    assert_eq!((h.limit, h.remaining), (5, 4));
    let t = unix_now_ms();
    let a = s.session(&key, &c.session_id).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let h = a.assert_rate_headers(t);
    assert_eq!((h.limit, h.remaining), (5, 4));

    // Another partner has its own budget on the same endpoint.
    let (_, other) = s.create_partner("Calm").await;
    let a = s.enroll(&other, "", &enroll_body("EMP-1")).await;
    a.created();
    assert_eq!(a.assert_rate_headers(t).remaining, 4);

    // Enroll is still refused for the first partner.
    s.enroll(&key, "", &enroll_body("EMP-7"))
        .await
        .assert_error(429, "rate limit exceeded");
}

#[tokio::test]
async fn hundred_and_first_request_in_a_minute_is_429() {
    let s = TestServer::start().await;
    let (_, key) = s.create_partner("Burst").await;
    let path = "/v1/sessions/00000000-0000-4000-8000-000000000000";
    let started = Instant::now();
    let mut passed = 0u32;
    let refused = loop {
        let t = unix_now_ms();
        let a = send(s.get(path).header("x-api-key", &key)).await;
        let h = a.assert_rate_headers(t);
        assert_eq!(h.limit, 100);
        if a.status == 429 {
            break (a, h);
        }
        a.assert_error(404, "not found");
        passed += 1;
        if passed == 1 {
            assert_eq!(h.remaining, 99);
        }
        assert!(passed <= 300, "never rate limited");
    };
    let elapsed = started.elapsed();
    // Budget refills at 100/min (one request per 600 ms): the first 100 always pass, and only
    // as many more as the time the burst took refilled. On a fast machine: exactly 100.
    let refilled = (elapsed.as_millis() / 600) as u32 + 1;
    assert!(passed >= 100, "only {passed} requests passed before a 429");
    assert!(
        passed <= 100 + refilled,
        "{passed} requests passed in {elapsed:?} with a 100/min limit"
    );
    let (a, h) = refused;
    a.assert_error(429, "rate limit exceeded");
    assert_eq!(h.remaining, 0);
    assert!(a.retry_after() >= 1);
}

#[tokio::test]
async fn unauthenticated_calls_are_limited_per_address() {
    let s = TestServer::start_with(Options::default().unauthenticated_per_minute(3)).await;
    let (_, key) = s.create_partner("Legit").await;
    for i in 0..3 {
        let t = unix_now_ms();
        let a = s.identify(&format!("{BAD_KEY}{i}"), "").await;
        a.assert_error(401, "invalid or missing API key");
        let h = a.assert_rate_headers(t);
        assert_eq!((h.limit, h.remaining), (3, 2 - i));
    }
    // The fourth guess is refused without being checked: 429, not 401.
    let t = unix_now_ms();
    let a = s.identify(&format!("{BAD_KEY}x"), "").await;
    a.assert_error(429, "rate limit exceeded");
    assert!(a.retry_after() >= 1);
    let h = a.assert_rate_headers(t);
    assert_eq!(h.remaining, 0);
    // Whatever the unauthenticated call is.
    send(s.post("/v1/enroll").json(&enroll_body("EMP-1")))
        .await
        .assert_error(429, "rate limit exceeded");
    send(s.get("/v1/whatever"))
        .await
        .assert_error(429, "rate limit exceeded");
    // A valid key is limited by its partner's budget, not the address's.
    let a = s.identify(&key, "").await;
    a.created();
    assert_eq!(a.assert_rate_headers(t).limit, 100);
}

#[tokio::test]
async fn every_v1_answer_carries_rate_limit_headers() {
    let s = TestServer::start_with(Options::default().per_minute(50)).await;
    let (_, key) = s.create_partner("Headers").await;
    let (other_id, other_key) = s.create_partner("Off").await;
    s.deactivate(&other_id).await;

    let cases: Vec<(u16, reqwest::RequestBuilder)> = vec![
        (201, s.post("/v1/identify").header("x-api-key", &key)),
        (
            201,
            s.post("/v1/enroll")
                .header("x-api-key", &key)
                .json(&enroll_body("EMP-1")),
        ),
        (
            400,
            s.post("/v1/enroll")
                .header("x-api-key", &key)
                .json(&json!({})),
        ),
        (401, s.post("/v1/identify")),
        (403, s.post("/v1/identify").header("x-api-key", &other_key)),
        (404, s.get("/v1/nothing-here").header("x-api-key", &key)),
        (
            404,
            s.get("/v1/sessions/not-a-uuid").header("x-api-key", &key),
        ),
        (
            413,
            s.post("/v1/enroll")
                .header("x-api-key", &key)
                .header("content-type", "application/json")
                .body(vec![b' '; 64 * 1024 + 1]),
        ),
    ];
    for (status, rb) in cases {
        let t = unix_now_ms();
        let a = send(rb).await;
        assert_eq!(a.status, status, "{}", a.text);
        a.assert_rate_headers(t);
        if status >= 400 {
            assert!(a.content_type().starts_with("application/json"));
        }
    }
}

/// HEAD is answered by the GET handler, so it spends the GET endpoint's budget (SPEC 2: "per
/// partner per endpoint"); before, it had a bucket of its own and doubled every GET's budget.
#[tokio::test]
async fn head_spends_the_get_budget() {
    let s = TestServer::start_with(Options::default().per_minute(2)).await;
    let (_, key) = s.create_partner("Header").await;
    let get = || s.get("/v1/users/nobody").header("x-api-key", &key);
    send(get()).await.assert_error(404, "not found");
    let t = unix_now_ms();
    let head = send(
        s.client
            .head(s.url("/v1/users/nobody"))
            .header("x-api-key", &key),
    )
    .await;
    assert_eq!(head.status, 404);
    assert_eq!(
        head.assert_rate_headers(t).remaining,
        0,
        "HEAD took GET's second request"
    );
    send(get()).await.assert_error(429, "rate limit exceeded");
    let head = send(
        s.client
            .head(s.url("/v1/users/nobody"))
            .header("x-api-key", &key),
    )
    .await;
    assert_eq!(head.status, 429);
}

#[tokio::test]
async fn inactive_is_checked_before_the_rate_limit() {
    let s = TestServer::start_with(Options::default().per_minute(2)).await;
    let (id, key) = s.create_partner("Spent").await;
    s.identify(&key, "").await.created();
    s.identify(&key, "").await.created();
    s.identify(&key, "")
        .await
        .assert_error(429, "rate limit exceeded");
    s.deactivate(&id).await;
    let t = unix_now_ms();
    let a = s.identify(&key, "").await;
    a.assert_error(403, "partner account is inactive");
    a.assert_rate_headers(t);
}

// ---------------------------------------------------------------------------------------------
// 400

#[tokio::test]
async fn bad_json_and_content_type_are_400() {
    let s = TestServer::start().await;
    let (_, key) = s.create_partner("Sloppy").await;
    let good = br#"{"external_id":"EMP-1"}"#.to_vec();

    let t = unix_now_ms();
    let a = enroll_raw(
        &s,
        &key,
        Some("application/json"),
        b"{\"external_id\": ".to_vec(),
    )
    .await;
    a.assert_error_prefix(400, "invalid JSON");
    a.assert_rate_headers(t);
    enroll_raw(
        &s,
        &key,
        Some("application/json"),
        b"not json at all".to_vec(),
    )
    .await
    .assert_error_prefix(400, "invalid JSON");
    enroll_raw(&s, &key, Some("application/json"), Vec::new())
        .await
        .assert_error(400, "request body is empty");
    enroll_raw(&s, &key, Some("application/json"), b"[\"EMP-1\"]".to_vec())
        .await
        .assert_error(400, "request body must be a JSON object");
    // A key twice: refused, not the last one silently kept (a proxy in front may have judged
    // the first); a byte order mark is named.
    enroll_raw(
        &s,
        &key,
        Some("application/json"),
        br#"{"external_id":"A","metadata":{"x":1},"external_id":"B"}"#.to_vec(),
    )
    .await
    .assert_error(
        400,
        "invalid JSON at line 1 column 56: key \"external_id\" is given twice in one object",
    );
    enroll_raw(
        &s,
        &key,
        Some("application/json"),
        br#"{"external_id":"A","metadata":{"x":1,"y":{"x":2,"x":3}}}"#.to_vec(),
    )
    .await
    .assert_error_prefix(400, "invalid JSON at line 1 column");
    let mut bom = b"\xEF\xBB\xBF".to_vec();
    bom.extend_from_slice(br#"{"external_id":"EMP-BOM"}"#);
    enroll_raw(&s, &key, Some("application/json"), bom)
        .await
        .assert_error(
            400,
            "request body starts with a byte order mark (U+FEFF): send the JSON without it",
        );

    // Valid JSON, wrong or missing Content-Type.
    for ct in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("application/jsonp"),
        None,
    ] {
        enroll_raw(&s, &key, ct, good.clone())
            .await
            .assert_error(400, "Content-Type must be application/json");
    }
    // Parameters on the media type are fine.
    enroll_raw(
        &s,
        &key,
        Some("application/json; charset=utf-8"),
        good.clone(),
    )
    .await
    .created();
    enroll_raw(&s, &key, Some("Application/JSON"), good)
        .await
        .created();
}

#[tokio::test]
async fn external_id_is_validated() {
    let s = TestServer::start().await;
    let (_, key) = s.create_partner("Strict").await;
    let cases: Vec<(Value, &str)> = vec![
        (json!({}), "external_id is required"),
        (json!({"username": "John"}), "external_id is required"),
        (json!({"external_id": null}), "external_id is required"),
        (json!({"external_id": ""}), "external_id must not be blank"),
        (
            json!({"external_id": "   "}),
            "external_id must not be blank",
        ),
        (
            json!({"external_id": "\t\n "}),
            "external_id must not be blank",
        ),
        (
            json!({"external_id": 12345}),
            "external_id must be a string",
        ),
        (
            json!({"external_id": ["EMP-1"]}),
            "external_id must be a string",
        ),
        (
            json!({"external_id": {"id": 1}}),
            "external_id must be a string",
        ),
        (json!({"external_id": true}), "external_id must be a string"),
        (
            json!({"external_id": "a".repeat(101)}),
            "external_id must be at most 100 characters",
        ),
        (
            json!({"external_id": "ж".repeat(101)}),
            "external_id must be at most 100 characters",
        ),
    ];
    for (body, message) in cases {
        let t = unix_now_ms();
        let a = s.enroll(&key, "", &body).await;
        a.assert_error(400, message);
        a.assert_rate_headers(t);
    }
    // 1..=100 Unicode scalar values, whatever their size in bytes or UTF-16 units.
    for ext in [
        "a".to_string(),
        "a".repeat(100),
        "ж".repeat(100),
        "😀".repeat(100),
    ] {
        let c = s
            .enroll(&key, "", &json!({ "external_id": ext }))
            .await
            .created();
        let got = s.session(&key, &c.session_id).await.json();
        assert_eq!(got["external_id"], json!(ext), "external_id kept verbatim");
    }
}

#[tokio::test]
async fn username_and_metadata_are_validated() {
    let s = TestServer::start().await;
    let (_, key) = s.create_partner("Picky").await;
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"external_id": "E", "username": "u".repeat(151)}),
            "username must be at most 150 characters",
        ),
        (
            json!({"external_id": "E", "username": "ж".repeat(151)}),
            "username must be at most 150 characters",
        ),
        (
            json!({"external_id": "E", "username": 42}),
            "username must be a string",
        ),
        (
            json!({"external_id": "E", "metadata": ["a", "b"]}),
            "metadata must be a JSON object",
        ),
        (
            json!({"external_id": "E", "metadata": "standard"}),
            "metadata must be a JSON object",
        ),
        (
            json!({"external_id": "E", "metadata": 7}),
            "metadata must be a JSON object",
        ),
        (
            json!({"external_id": "E", "metadata": {"blob": "x".repeat(16 * 1024)}}),
            "metadata must be at most 16 KiB",
        ),
    ];
    for (body, message) in cases {
        s.enroll(&key, "", &body).await.assert_error(400, message);
    }
    // Limits are inclusive: 150 characters of username, 16 KiB of serialized metadata.
    s.enroll(
        &key,
        "",
        &json!({"external_id": "E", "username": "u".repeat(150)}),
    )
    .await
    .created();
    s.enroll(
        &key,
        "",
        &json!({"external_id": "E", "username": "ж".repeat(150)}),
    )
    .await
    .created();
    // `{"k":"…"}` serializes to 8 bytes plus the value.
    let exact = json!({ "k": "x".repeat(16 * 1024 - 8) });
    assert_eq!(serde_json::to_string(&exact).unwrap().len(), 16 * 1024);
    s.enroll(&key, "", &json!({"external_id": "E", "metadata": exact}))
        .await
        .created();
    let over = json!({ "k": "x".repeat(16 * 1024 - 7) });
    s.enroll(&key, "", &json!({"external_id": "E", "metadata": over}))
        .await
        .assert_error(400, "metadata must be at most 16 KiB");
    // Optional fields may be absent or null.
    s.enroll(
        &key,
        "",
        &json!({"external_id": "E", "username": null, "metadata": null}),
    )
    .await
    .created();
    s.enroll(&key, "", &json!({"external_id": "E", "metadata": {}}))
        .await
        .created();
    // The validity bounds the site policy reads (SPEC 6): a date or an instant with its offset;
    // another form would deny the person at every door, so it is refused here.
    for (key_name, v) in [
        ("valid_until", json!("2027-12-31T23:59:59")),
        ("valid_from", json!("2026-01-01 08:00")),
        ("valid_until", json!(20271231)),
    ] {
        s.enroll(
            &key,
            "",
            &json!({"external_id": "E", "metadata": {key_name: v}}),
        )
        .await
        .assert_error(
            400,
            &format!(
                "metadata.{key_name} must be a date (2026-12-31, in the site's time zone) or an \
                 RFC 3339 instant with its offset (2026-12-31T18:00:00+05:00)"
            ),
        );
    }
    s.enroll(
        &key,
        "",
        &json!({"external_id": "E", "metadata": {"valid_from": "2026-01-01",
            "valid_until": "2027-12-31T23:59:59+05:00"}}),
    )
    .await
    .created();
}

#[tokio::test]
async fn language_must_be_en_kk_or_ru() {
    let s = TestServer::start().await;
    let (_, key) = s.create_partner("Polyglot").await;
    for q in ["?language=de", "?language=english", "?language=kz"] {
        let t = unix_now_ms();
        let a = s.enroll(&key, q, &enroll_body("EMP-1")).await;
        a.assert_error_prefix(400, "unsupported language");
        a.assert_rate_headers(t);
        s.identify(&key, q)
            .await
            .assert_error_prefix(400, "unsupported language");
    }
    s.enroll(&key, "?language=de", &enroll_body("EMP-1"))
        .await
        .assert_error(400, "unsupported language \"de\": use en, kk or ru");
    // Twice, even twice the same: refused, not the first or last taken.
    for q in ["?language=en&language=ru", "?language=kk&language=kk"] {
        s.enroll(&key, q, &enroll_body("EMP-1"))
            .await
            .assert_error(400, "language given 2 times: give it once (en, kk or ru)");
        s.identify(&key, q)
            .await
            .assert_error(400, "language given 2 times: give it once (en, kk or ru)");
    }

    for (q, lang) in [
        ("", "en"),
        ("?language=en", "en"),
        ("?language=kk", "kk"),
        ("?language=ru", "ru"),
    ] {
        let c = s.enroll(&key, q, &enroll_body("EMP-1")).await.created();
        assert_eq!(
            s.session(&key, &c.session_id).await.json()["language"],
            lang
        );
        let c = s.identify(&key, q).await.created();
        assert_eq!(
            s.session(&key, &c.session_id).await.json()["language"],
            lang
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 413

#[tokio::test]
async fn body_over_64_kib_is_413_and_the_server_keeps_serving() {
    let s = TestServer::start().await;
    let (_, key) = s.create_partner("Heavy").await;
    // A new connection for every request: this test is about the answers, not keep-alive
    // (see `connection_after_413_is_closed_or_still_usable`).
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let raw = |body: Vec<u8>| {
        client
            .post(s.url("/v1/enroll"))
            .header("x-api-key", &key)
            .header("content-type", "application/json")
            .body(body)
    };

    let mut big = br#"{"external_id":"EMP-1","pad":""#.to_vec();
    big.resize(64 * 1024 + 1 - 2, b'a');
    big.extend_from_slice(b"\"}");
    assert_eq!(big.len(), 64 * 1024 + 1);
    let t = unix_now_ms();
    let a = send(raw(big)).await;
    a.assert_error(413, "request body too large");
    a.assert_rate_headers(t);

    // Far over, too.
    send(raw(vec![b' '; 1024 * 1024]))
        .await
        .assert_error(413, "request body too large");

    // Exactly 64 KiB is allowed (JSON may end in whitespace).
    let mut exact = br#"{"external_id":"EMP-1"}"#.to_vec();
    exact.resize(64 * 1024, b' ');
    let c = send(raw(exact)).await.created();
    let v = send(
        client
            .get(s.url(&format!("/v1/sessions/{}", c.session_id)))
            .header("x-api-key", &key),
    )
    .await
    .json();
    assert_eq!(v["external_id"], "EMP-1");

    // The server answers the next requests normally.
    let c = send(
        client
            .post(s.url("/v1/enroll"))
            .header("x-api-key", &key)
            .json(&enroll_body("EMP-2")),
    )
    .await
    .created();
    let a = send(
        client
            .get(s.url(&format!("/v1/sessions/{}", c.session_id)))
            .header("x-api-key", &key),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text);
}

/// Reads one HTTP/1.1 response (head and `content-length` body) from `conn`.
async fn read_response(conn: &mut tokio::net::TcpStream) -> std::io::Result<(String, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().expect("content-length"))
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok((head, buf[head_end..head_end + len].to_vec()))
}

/// HTTP/1.1 keep-alive after a 413: a server that will not read the rest of the body must say
/// `Connection: close`; otherwise the connection must still serve the next request. (A
/// pooled client — every partner SDK — reuses the connection, and its next request fails.)
#[tokio::test]
async fn connection_after_413_is_closed_or_still_usable() {
    use tokio::io::AsyncWriteExt;
    let s = TestServer::start().await;
    let (_, key) = s.create_partner("KeepAlive").await;
    let addr = s.base_url.trim_start_matches("http://").to_string();
    let mut conn = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let body = vec![b' '; 64 * 1024 + 1];
    let head = format!(
        "POST /v1/enroll HTTP/1.1\r\nHost: {addr}\r\nx-api-key: {key}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let mut request = head.into_bytes();
    request.extend_from_slice(&body);
    conn.write_all(&request).await.expect("write request");
    let (head, body) = read_response(&mut conn).await.expect("413 response");
    assert!(head.starts_with("http/1.1 413"), "{head}");
    let v: Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(v, json!({"message": "request body too large"}));

    let announced_close = head
        .lines()
        .any(|l| l.starts_with("connection:") && l.contains("close"));
    if !announced_close {
        let next = format!(
            "GET /v1/sessions/00000000-0000-4000-8000-000000000000 HTTP/1.1\r\n\
             Host: {addr}\r\nx-api-key: {key}\r\n\r\n"
        );
        let answer = match conn.write_all(next.as_bytes()).await {
            Ok(()) => read_response(&mut conn).await,
            Err(e) => Err(e),
        };
        match answer {
            Ok((head, _)) => assert!(head.starts_with("http/1.1 404"), "{head}"),
            Err(e) => panic!(
                "the 413 did not say `Connection: close`, yet the connection is dead for the \
                 next request ({e}); the 413's head was:\n{head}"
            ),
        }
    }
    // Either way a new connection is served.
    s.identify(&key, "").await.created();
}

/// The 413 row is about any body: `POST /v1/identify` takes none, and one over 64 KiB is
/// still refused rather than silently ignored.
#[tokio::test]
async fn identify_with_a_body_over_64_kib_is_413() {
    let s = TestServer::start().await;
    let (_, key) = s.create_partner("Stuffed").await;
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let t = unix_now_ms();
    let a = send(
        client
            .post(s.url("/v1/identify"))
            .header("x-api-key", &key)
            .header("content-type", "application/json")
            .body(vec![b' '; 64 * 1024 + 1]),
    )
    .await;
    a.assert_error(413, "request body too large");
    a.assert_rate_headers(t);
}

/// SPEC 2 checks 400 before 413: what the head says is wrong (the content type, the language)
/// is a 400 even with a body over 64 KiB, which is then left unread and the connection closed.
#[tokio::test]
async fn what_the_head_gets_wrong_is_a_400_even_with_an_oversized_body() {
    let s = TestServer::start().await;
    let (_, key) = s.create_partner("Ordered").await;
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let big = || vec![b' '; 64 * 1024 + 1];
    let cases = [
        (
            "/v1/enroll",
            "text/plain",
            "Content-Type must be application/json",
        ),
        (
            "/v1/enroll?language=xx",
            "application/json",
            "unsupported language",
        ),
        (
            "/v1/identify?language=de",
            "application/json",
            "unsupported language",
        ),
    ];
    for (path, ct, want) in cases {
        let t = unix_now_ms();
        let r = client
            .post(s.url(path))
            .header("x-api-key", &key)
            .header("content-type", ct)
            .body(big())
            .send()
            .await
            .expect("answer");
        assert_eq!(r.status().as_u16(), 400, "{path}");
        assert_eq!(
            r.headers().get("connection").map(|v| v.as_bytes()),
            Some(&b"close"[..]),
            "{path}: the unread body closes the connection"
        );
        let a = Answer::read(r).await;
        a.assert_rate_headers(t);
        let msg = a.json()["message"].as_str().unwrap_or_default().to_string();
        assert!(msg.contains(want), "{path}: {msg}");
    }
    // The same with a small body: a 400, the connection kept.
    let r = client
        .post(s.url("/v1/enroll"))
        .header("x-api-key", &key)
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status().as_u16(), 400);
}

// ---------------------------------------------------------------------------------------------
// 404

#[tokio::test]
async fn unknown_v1_route_is_404_after_authentication() {
    let s = TestServer::start().await;
    let (_, key) = s.create_partner("Lost").await;
    for (method, path) in [
        (reqwest::Method::GET, "/v1/nothing-here"),
        (reqwest::Method::POST, "/v1/enrol"),
        (reqwest::Method::PUT, "/v1/sessions"),
        (reqwest::Method::GET, "/v1/enroll"),
        (reqwest::Method::DELETE, "/v1/identify"),
        (reqwest::Method::GET, "/v1/sessions/a/b/c"),
        // The bare prefix with a trailing slash once fell outside the gate: a 404 without
        // authentication or rate-limit headers.
        (reqwest::Method::GET, "/v1/"),
        (reqwest::Method::POST, "/v1/"),
    ] {
        let t = unix_now_ms();
        let a = send(
            s.client
                .request(method.clone(), s.url(path))
                .header("x-api-key", &key),
        )
        .await;
        a.assert_error(404, "not found");
        a.assert_rate_headers(t);

        // Without a key, authentication comes first.
        let t = unix_now_ms();
        let a = send(s.client.request(method.clone(), s.url(path))).await;
        a.assert_error(401, "invalid or missing API key");
        a.assert_rate_headers(t);
        let a = send(
            s.client
                .request(method, s.url(path))
                .header("x-api-key", BAD_KEY),
        )
        .await;
        a.assert_error(401, "invalid or missing API key");
    }
}

/// Path parameters that are not even UTF-8 name nothing: a JSON 404 like any unknown
/// resource, never a plain-text framework error.
#[tokio::test]
async fn undecodable_path_segments_are_json_404() {
    let s = TestServer::start().await;
    let (_, key) = s.create_partner("Bytes").await;
    for (method, path) in [
        (reqwest::Method::GET, "/v1/sessions/%FF"),
        (reqwest::Method::GET, "/v1/sessions/%C3%28"),
        (reqwest::Method::POST, "/v1/sessions/%FF/cancel"),
        (reqwest::Method::GET, "/v1/users/%FF"),
        (reqwest::Method::GET, "/v1/users/EMP-%C3"),
        (reqwest::Method::DELETE, "/v1/users/%FE%FF"),
    ] {
        let t = unix_now_ms();
        let a = send(
            s.client
                .request(method.clone(), s.url(path))
                .header("x-api-key", &key),
        )
        .await;
        assert!(
            a.content_type().starts_with("application/json"),
            "{method} {path}: Content-Type {:?}, body {:?}",
            a.content_type(),
            a.text
        );
        a.assert_error(404, "not found");
        a.assert_rate_headers(t);
    }
}

// ---------------------------------------------------------------------------------------------
// 409

#[tokio::test]
async fn enroll_of_an_already_enrolled_external_id_is_409() {
    let mut s = TestServer::prepare(Options::default());
    let a_partner = s.seed_partner("Seeded", &["EMP-1", "ИВН-7"]).await;
    s.launch().await;
    let key = &a_partner.api_key;

    for ext in ["EMP-1", "ИВН-7"] {
        let t = unix_now_ms();
        let a = s.enroll(key, "", &enroll_body(ext)).await;
        a.assert_error(409, "user with this external_id already enrolled");
        a.assert_rate_headers(t);
        s.enroll(key, "?language=kk", &json!({ "external_id": ext }))
            .await
            .assert_error(409, "user with this external_id already enrolled");
    }
    // 400 is checked before 409.
    s.enroll(key, "?language=de", &enroll_body("EMP-1"))
        .await
        .assert_error_prefix(400, "unsupported language");
    s.enroll(key, "", &json!({"external_id": "EMP-1", "metadata": []}))
        .await
        .assert_error(400, "metadata must be a JSON object");

    // Another external_id of the same partner, and identify, are fine.
    s.enroll(key, "", &enroll_body("EMP-2")).await.created();
    // A pending (not completed) enrollment does not block another one.
    s.enroll(key, "", &enroll_body("EMP-2")).await.created();
    s.identify(key, "").await.created();

    // The same external_id under another partner is another person.
    let (_, b_key) = s.create_partner("Other").await;
    s.enroll(&b_key, "", &enroll_body("EMP-1")).await.created();
}

// ---------------------------------------------------------------------------------------------
// Idempotency-Key

async fn enroll_idem(s: &TestServer, key: &str, idem: &str, body: &Value) -> Answer {
    send(
        s.post("/v1/enroll")
            .header("x-api-key", key)
            .header("idempotency-key", idem)
            .json(body),
    )
    .await
}

async fn identify_idem(s: &TestServer, key: &str, idem: &str) -> Answer {
    send(
        s.post("/v1/identify")
            .header("x-api-key", key)
            .header("idempotency-key", idem),
    )
    .await
}

#[tokio::test]
async fn idempotency_key_replays_the_first_answer() {
    let s = TestServer::start().await;
    let (_, key) = s.create_partner("Retry").await;
    let body = enroll_body("EMP-1");

    let first = enroll_idem(&s, &key, "order-1", &body).await;
    let c1 = first.created();
    assert_eq!(first.header("idempotent-replayed"), None);
    let again = enroll_idem(&s, &key, "order-1", &body).await;
    assert_eq!(again.created(), c1, "the same 201 body");
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.json(), first.json());
    let t = unix_now_ms();
    let third = enroll_idem(&s, &key, "order-1", &body).await;
    assert_eq!(third.created(), c1);
    third.assert_rate_headers(t);

    // Without the key every call is a new session.
    let n1 = s.enroll(&key, "", &body).await.created();
    let n2 = s.enroll(&key, "", &body).await.created();
    assert_ne!(n1.session_id, n2.session_id);
    assert_ne!(n1.session_id, c1.session_id);

    // Identify too.
    let i1 = identify_idem(&s, &key, "id-1").await.created();
    let a = identify_idem(&s, &key, "id-1").await;
    assert_eq!(a.created(), i1);
    assert_eq!(a.header("idempotent-replayed"), Some("true"));

    // A 255-character key is fine.
    let long = "k".repeat(255);
    let l1 = enroll_idem(&s, &key, &long, &body).await.created();
    assert_eq!(enroll_idem(&s, &key, &long, &body).await.created(), l1);
    assert_ne!(l1.session_id, c1.session_id);

    // Keys belong to their partner: another partner's same key is its own request.
    let (_, other) = s.create_partner("Other").await;
    let o1 = enroll_idem(&s, &other, "order-1", &body).await;
    let o1c = o1.created();
    assert_eq!(o1.header("idempotent-replayed"), None);
    assert_ne!(o1c.session_id, c1.session_id);
    // ...and the first partner's session is still invisible to it.
    s.session(&other, &c1.session_id)
        .await
        .assert_error(404, "not found");
}

#[tokio::test]
async fn idempotency_key_with_a_different_request_is_409() {
    let s = TestServer::start().await;
    let (_, key) = s.create_partner("Careless").await;
    let c1 = enroll_idem(&s, &key, "k-1", &enroll_body("EMP-1"))
        .await
        .created();
    let t = unix_now_ms();
    let a = enroll_idem(&s, &key, "k-1", &enroll_body("EMP-2")).await;
    a.assert_error(
        409,
        "Idempotency-Key was already used with a different request",
    );
    a.assert_rate_headers(t);
    enroll_idem(&s, &key, "k-1", &json!({"external_id": "EMP-1"}))
        .await
        .assert_error(
            409,
            "Idempotency-Key was already used with a different request",
        );
    // The original request still replays.
    assert_eq!(
        enroll_idem(&s, &key, "k-1", &enroll_body("EMP-1"))
            .await
            .created(),
        c1
    );
}

#[tokio::test]
async fn idempotency_key_over_255_characters_is_400() {
    let s = TestServer::start().await;
    let (_, key) = s.create_partner("Verbose").await;
    let long = "k".repeat(256);
    let t = unix_now_ms();
    let a = enroll_idem(&s, &key, &long, &enroll_body("EMP-1")).await;
    a.assert_error(400, "Idempotency-Key must be 1 to 255 characters");
    a.assert_rate_headers(t);
    identify_idem(&s, &key, &long)
        .await
        .assert_error(400, "Idempotency-Key must be 1 to 255 characters");
}

/// A bad `Idempotency-Key` is a 400 decided from the request's head, so it comes before a
/// 413 for the body (SPEC 2: 400 before 413); before, the key was checked after the body was
/// read and the answer was 413.
#[tokio::test]
async fn a_bad_idempotency_key_is_400_before_an_oversized_body() {
    let s = TestServer::start().await;
    let (_, key) = s.create_partner("Heavy").await;
    let big = vec![b' '; 70_000];
    for path in ["/v1/enroll", "/v1/identify"] {
        for (idem, msg) in [
            (
                "k".repeat(300),
                "Idempotency-Key must be 1 to 255 characters",
            ),
            ("ключ".to_string(), "Idempotency-Key must be visible ASCII"),
        ] {
            let idem = reqwest::header::HeaderValue::from_bytes(idem.as_bytes()).unwrap();
            let t = unix_now_ms();
            let a = send(
                s.post(path)
                    .header("x-api-key", &key)
                    .header("content-type", "application/json")
                    .header("idempotency-key", idem)
                    .body(big.clone()),
            )
            .await;
            a.assert_error(400, msg);
            a.assert_rate_headers(t);
        }
    }
}

/// An integer literal beyond 64 bits would come back rounded (serde_json keeps it as the
/// nearest binary64), so an enrollment's `metadata` would not be what the partner sent: the
/// body is refused with a 400 that names the number. Fractions and exponents pass.
#[tokio::test]
async fn integers_beyond_64_bits_are_refused_not_rounded() {
    let s = TestServer::start().await;
    let (_, key) = s.create_partner("Wide").await;
    let body = br#"{"external_id":"BIG","metadata":{"badge":123456789012345678901234567890}}"#;
    let a = enroll_raw(&s, &key, Some("application/json"), body.to_vec()).await;
    a.assert_error(
        400,
        "number 123456789012345678901234567890 is out of range: integers must fit in 64 bits \
         (send larger ones as strings)",
    );
    let body = br#"{"external_id":"OK","metadata":{"a":-9223372036854775808,"b":18446744073709551615,"c":1.5e300,"d":"123456789012345678901234567890"}}"#;
    enroll_raw(&s, &key, Some("application/json"), body.to_vec())
        .await
        .created();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_with_one_idempotency_key_share_one_session() {
    let mut s = TestServer::start().await;
    let (_, key) = s.create_partner("Racer").await;
    let body = enroll_body("EMP-1");
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let rb = s
            .post("/v1/enroll")
            .header("x-api-key", &key)
            .header("idempotency-key", "same-key")
            .json(&body);
        tasks.spawn(send(rb));
    }
    let mut created = Vec::new();
    let mut fresh = 0;
    while let Some(a) = tasks.join_next().await {
        let a = a.expect("task");
        created.push(a.created());
        if a.header("idempotent-replayed").is_none() {
            fresh += 1;
        }
    }
    let ids: HashSet<_> = created.iter().map(|c| c.session_id.clone()).collect();
    assert_eq!(ids.len(), 1, "one session for one key: {created:?}");
    let urls: HashSet<_> = created.iter().map(|c| c.url.clone()).collect();
    assert_eq!(urls.len(), 1, "one URL for one key: {created:?}");
    assert_eq!(
        fresh, 1,
        "exactly one answer is the original, the rest are replays"
    );

    // And the log holds exactly one session.
    s.kill9();
    let store = SqliteStore::open(s.store_path()).expect("open store");
    let events = store.read(0, 10_000).expect("read log");
    let sessions = events
        .iter()
        .filter(|r| r.event.kind() == "SessionCreated")
        .count();
    assert_eq!(sessions, 1, "SessionCreated events in the log");
}

#[tokio::test]
async fn idempotency_key_survives_a_restart() {
    let mut s =
        TestServer::start_with(Options::default().public_url("https://gate.example.test")).await;
    let (_, key) = s.create_partner("Patient").await;
    let body = enroll_body("EMP-1");
    let e1 = enroll_idem(&s, &key, "before-restart", &body)
        .await
        .created();
    assert!(
        e1.url.starts_with("https://gate.example.test/enroll/"),
        "url on public_url: {}",
        e1.url
    );
    let i1 = identify_idem(&s, &key, "before-restart-id").await.created();

    s.restart().await;

    let a = enroll_idem(&s, &key, "before-restart", &body).await;
    assert_eq!(
        a.created(),
        e1,
        "same session_id, url and expires_at after restart"
    );
    assert_eq!(a.header("idempotent-replayed"), Some("true"));
    let a = identify_idem(&s, &key, "before-restart-id").await;
    assert_eq!(a.created(), i1);
    assert_eq!(a.header("idempotent-replayed"), Some("true"));
    enroll_idem(&s, &key, "before-restart", &enroll_body("EMP-9"))
        .await
        .assert_error(
            409,
            "Idempotency-Key was already used with a different request",
        );

    // The page behind the replayed URL is the live session's.
    let page = send(s.get(&e1.path())).await;
    assert_eq!(page.status, 200, "{}", page.text);
}

/// `child`'s output once it exits, or once it is killed after `limit` (a hang fails the test's
/// own assertions instead of hanging the run).
fn output_within(
    mut child: std::process::Child,
    limit: std::time::Duration,
) -> std::process::Output {
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// `palmgate partner` against a server that takes the connection and never answers gives up
/// after `--timeout` seconds with a message saying so, instead of hanging.
#[tokio::test]
async fn the_partner_cli_gives_up_on_a_server_that_never_answers() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock);
        }
    });
    let started = std::time::Instant::now();
    let out = tokio::task::spawn_blocking(move || {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_palmgate"))
            .args(["partner", "list", "--server", &format!("http://{addr}")])
            .args(["--token", "t", "--timeout", "1"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // A hang is a failure here, not a hung test run.
        output_within(child, std::time::Duration::from_secs(10))
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(
        stderr.contains("cannot reach") && stderr.contains("timed out"),
        "{stderr}"
    );
    silent.abort();
}

// ---------------------------------------------------------------------------------------------
// 414 / 431: palmgate's own limits on the request head (target 8 KiB, header section 32 KiB,
// 100 fields), answered as JSON — with the rate-limit headers under `/v1` — instead of hyper's
// bare answers.

/// `/v1/identify?language=en&pad=aaa…`, exactly `len` bytes of request target.
fn identify_target(len: usize) -> String {
    let head = "/v1/identify?language=en&pad=";
    format!("{head}{}", "a".repeat(len - head.len()))
}

#[tokio::test]
async fn a_request_target_over_8_kib_is_414_json_with_the_rate_limit_headers() {
    let s = TestServer::start().await;
    let (_, key) = s.create_partner("Long").await;
    let target = identify_target(9 * 1024);
    // Without a key: the address budget's headers, as on a 401.
    let t = unix_now_ms();
    let a = send(s.post(&target)).await;
    a.assert_error(414, "request URI too long (limit 8192 bytes)");
    a.assert_rate_headers(t);
    // With a key: the partner's budget.
    let t = unix_now_ms();
    let a = send(s.post(&target).header("x-api-key", &key)).await;
    a.assert_error(414, "request URI too long (limit 8192 bytes)");
    a.assert_rate_headers(t);
    // One byte over is over; outside `/v1` too (no rate-limit headers there).
    let a = send(
        s.post(&identify_target(8 * 1024 + 1))
            .header("x-api-key", &key),
    )
    .await;
    a.assert_error(414, "request URI too long (limit 8192 bytes)");
    let a = send(s.get(&format!("/healthz?pad={}", "a".repeat(9 * 1024)))).await;
    a.assert_error(414, "request URI too long (limit 8192 bytes)");
    assert!(a.header("x-ratelimit-limit").is_none(), "{:?}", a.headers);
    let a = send(s.get(&format!("/no-such-page?pad={}", "a".repeat(9 * 1024)))).await;
    a.assert_error(414, "request URI too long (limit 8192 bytes)");
    // And the server goes on serving.
    s.identify(&key, "").await.created();
}

#[tokio::test]
async fn a_header_section_over_32_kib_is_431_json_with_the_rate_limit_headers() {
    let s = TestServer::start().await;
    let (_, key) = s.create_partner("Big").await;
    let pad = "a".repeat(40 * 1024);
    let message = "request header section too large (limit 32768 bytes)";
    let t = unix_now_ms();
    let a = send(s.post("/v1/identify").header("x-pad", &pad)).await;
    a.assert_error(431, message);
    a.assert_rate_headers(t);
    let t = unix_now_ms();
    let a = send(
        s.post("/v1/identify")
            .header("x-api-key", &key)
            .header("x-pad", &pad),
    )
    .await;
    a.assert_error(431, message);
    a.assert_rate_headers(t);
    // Many medium fields count together.
    let mut rb = s.post("/v1/identify").header("x-api-key", &key);
    for i in 0..10 {
        rb = rb.header(format!("x-pad-{i}"), "b".repeat(4 * 1024));
    }
    send(rb).await.assert_error(431, message);
    let a = send(s.get("/healthz").header("x-pad", &pad)).await;
    a.assert_error(431, message);
    s.identify(&key, "").await.created();
}

#[tokio::test]
async fn more_than_100_header_fields_is_431_json() {
    let s = TestServer::start().await;
    let (_, key) = s.create_partner("Many").await;
    let many =
        |rb: reqwest::RequestBuilder| (0..150).fold(rb, |rb, i| rb.header(format!("x-h-{i}"), "v"));
    let t = unix_now_ms();
    let a = send(many(s.post("/v1/identify").header("x-api-key", &key))).await;
    a.assert_error_prefix(431, "too many request header fields: ");
    assert!(
        a.json()["message"]
            .as_str()
            .unwrap()
            .ends_with("(limit 100)")
    );
    a.assert_rate_headers(t);
    let t = unix_now_ms();
    let a = send(many(s.post("/v1/identify"))).await;
    a.assert_error_prefix(431, "too many request header fields: ");
    a.assert_rate_headers(t);
    // A repeated name counts each time.
    let mut rb = s.get("/admin/v1/partners");
    for _ in 0..150 {
        rb = rb.header("x-same", "v");
    }
    send(rb)
        .await
        .assert_error_prefix(431, "too many request header fields: ");
    s.identify(&key, "").await.created();
}

#[tokio::test]
async fn heads_just_under_the_limits_are_served_normally() {
    let s = TestServer::start().await;
    let (_, key) = s.create_partner("Under").await;
    let target = identify_target(8 * 1024);
    let t = unix_now_ms();
    let a = send(s.post(&target).header("x-api-key", &key)).await;
    assert_eq!(a.status, 201, "{}", a.text);
    a.assert_rate_headers(t);
    send(s.post(&target))
        .await
        .assert_error(401, "invalid or missing API key");
    let a = send(
        s.post("/v1/identify")
            .header("x-api-key", &key)
            .header("x-pad", "a".repeat(30 * 1024)),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.text);
    // 90 fields of our own, and the few the client adds (host, accept, x-api-key).
    let rb = (0..90).fold(s.post("/v1/identify").header("x-api-key", &key), |rb, i| {
        rb.header(format!("x-h-{i}"), "v")
    });
    let a = send(rb).await;
    assert_eq!(a.status, 201, "{}", a.text);
    let a = send(s.get("/healthz").header("x-pad", "a".repeat(30 * 1024))).await;
    assert_eq!(a.status, 200, "{}", a.text);
}

/// An oversized head spends the budget like any request, and an exhausted budget still
/// answers 429 (the limit is neither bypassed nor spent twice).
#[tokio::test]
async fn oversized_heads_spend_the_budget_and_yield_to_its_429() {
    let s = TestServer::start_with(Options::default().unauthenticated_per_minute(2)).await;
    let target = identify_target(9 * 1024);
    let t = unix_now_ms();
    let first = send(s.post(&target)).await;
    first.assert_error(414, "request URI too long (limit 8192 bytes)");
    let h1 = first.assert_rate_headers(t);
    let t = unix_now_ms();
    let second = send(
        s.post("/v1/identify")
            .header("x-pad", "a".repeat(40 * 1024)),
    )
    .await;
    second.assert_error(431, "request header section too large (limit 32768 bytes)");
    let h2 = second.assert_rate_headers(t);
    assert_eq!(h2.remaining, h1.remaining - 1, "{h1:?} then {h2:?}");
    let t = unix_now_ms();
    let third = send(s.post(&target)).await;
    third.assert_error(429, "rate limit exceeded");
    third.assert_rate_headers(t);
    assert!(third.header("retry-after").is_some());
}

/// A start-up error is printed once: the store's error already holds its cause, and the
/// CLI's line does not repeat it (`event store: storage failure: unable to open database
/// file: …` appeared twice).
#[test]
fn a_start_up_error_is_printed_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    // A directory where the log's file should be: SQLite cannot open it.
    std::fs::create_dir(dir.path().join("events.db")).unwrap();
    let config = dir.path().join("palmgate.toml");
    std::fs::write(
        &config,
        format!(
            "site = \"\"\n[http]\nlisten = \"127.0.0.1:0\"\n[store]\npath = \"{d}/events.db\"\n\
             [secrets]\nkey_file = \"{d}/master.key\"\nkey_store = \"{d}/keys.db\"\n\
             [mqtt.embedded]\nlisten = \"127.0.0.1:0\"\n[admin]\ntoken = \"t\"\n"
        ),
    )
    .unwrap();
    let stderr = serve_fails(&config, &[]);
    let line = stderr
        .lines()
        .find(|l| l.starts_with("palmgate: "))
        .unwrap_or_else(|| panic!("no error line: {stderr}"));
    assert!(line.contains(&format!("{d}/events.db")), "{line}");
    assert_eq!(
        line.matches("unable to open database file").count(),
        1,
        "{line}"
    );
}

/// Runs `palmgate serve --config <config>` with `env`; asserts it stops at start-up (within
/// 10 s) and returns what it printed.
fn serve_fails(config: &std::path::Path, env: &[(&str, std::path::PathBuf)]) -> String {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_palmgate"))
        .args(["serve", "--config"])
        .arg(config)
        .envs(env.iter().map(|(k, v)| (*k, v)))
        .env("RUST_LOG", "off")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = output_within(child, std::time::Duration::from_secs(10));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "the server ran: {stderr}");
    stderr
}

/// [`serve_fails`] for a second `serve` with `s`'s config on its own listen ports.
fn second_serve(s: &TestServer, env: &[(&str, std::path::PathBuf)]) -> String {
    let mut all = vec![
        ("PALMGATE_HTTP_LISTEN", "127.0.0.1:0".into()),
        ("PALMGATE_MQTT_EMBEDDED_LISTEN", "127.0.0.1:0".into()),
    ];
    all.extend(env.iter().cloned());
    serve_fails(s.config_path(), &all)
}

/// A second `serve` on a log another palmgate process is writing stops at start-up, naming the
/// log and its lock file, and the first goes on working. Before, the second opened the log too
/// and wedged the first (its appends failed with 500, `/readyz` 503 until a restart).
#[tokio::test]
async fn a_second_server_on_the_same_log_is_refused_and_the_first_keeps_working() {
    let s = TestServer::start().await;
    let (before, _) = s.create_partner("Before").await;
    let stderr = second_serve(&s, &[]);
    let store = s.store_path();
    assert!(
        stderr.contains(&format!(
            "store.path {} is in use by another palmgate process",
            store.display()
        )) && stderr.contains(&format!("{}.lock", store.display())),
        "{stderr}"
    );
    let (after, _) = s.create_partner("After").await;
    assert_ne!(before, after);
    let r = send(s.get("/readyz")).await;
    assert_eq!(r.status, 200, "{:?}", r.json());
}

/// A second `serve` with its own log but the key store another palmgate process uses stops at
/// start-up naming `secrets.key_store`: its start-up sweep destroys every data key its own log
/// does not reference, which would have been every key of the first one's users.
#[tokio::test]
async fn a_second_server_on_the_same_key_store_is_refused() {
    let s = TestServer::start().await;
    let other = tempfile::tempdir().unwrap();
    let stderr = second_serve(
        &s,
        &[("PALMGATE_STORE_PATH", other.path().join("events.db"))],
    );
    assert!(
        stderr.contains("secrets.key_store")
            && stderr.contains("is in use by another palmgate process"),
        "{stderr}"
    );
    let r = send(s.get("/readyz")).await;
    assert_eq!(r.status, 200, "{:?}", r.json());
}

/// A config file for `palmgate serve` on the files of `dir` (`events.db`, `master.key`,
/// `keys.db`), listening on `listen`.
fn config_on(dir: &std::path::Path, listen: &str) -> std::path::PathBuf {
    let d = dir.display();
    let config = dir.join("palmgate.toml");
    std::fs::write(
        &config,
        format!(
            "site = \"\"\n[http]\nlisten = \"{listen}\"\n[store]\npath = \"{d}/events.db\"\n\
             [secrets]\nkey_file = \"{d}/master.key\"\nkey_store = \"{d}/keys.db\"\n\
             [mqtt.embedded]\nlisten = \"127.0.0.1:0\"\n[admin]\ntoken = \"t\"\n"
        ),
    )
    .unwrap();
    config
}

/// An `http.listen` address another process holds stops start-up with an error naming the
/// key, its value and where it came from; nothing is created first (before, a new site's
/// master key, log and key store were left behind, and the error named no key).
#[test]
fn a_taken_listen_address_names_http_listen_and_leaves_no_files() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let config = config_on(dir.path(), &addr);
    let stderr = serve_fails(&config, &[]);
    assert!(
        stderr.contains(&format!("`http.listen` (from {})", config.display()))
            && stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
    for f in ["master.key", "events.db", "keys.db"] {
        assert!(
            !dir.path().join(f).exists(),
            "{f} was created by a start that could not listen"
        );
    }
}

/// A `palmgate demo` run in this process, on `data`.
struct DemoRun {
    url: String,
    admin_token: String,
    api_key: Option<String>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), palmgate::demo::DemoError>>,
}

impl DemoRun {
    async fn start(data: &std::path::Path) -> DemoRun {
        let env = [
            (
                "PALMGATE_HTTP_LISTEN".to_string(),
                "127.0.0.1:0".to_string(),
            ),
            (
                "PALMGATE_MQTT_EMBEDDED_LISTEN".to_string(),
                "127.0.0.1:0".to_string(),
            ),
        ];
        let config = palmgate::config::Config::load(None, &env).unwrap();
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(palmgate::demo::run(
            config,
            Some(data.to_path_buf()),
            move |s| {
                let _ = started_tx.send((s.url.clone(), s.admin_token.clone(), s.api_key.clone()));
            },
            async move {
                let _ = stop_rx.await;
            },
        ));
        let started = tokio::time::timeout(std::time::Duration::from_secs(60), started_rx).await;
        match started {
            Ok(Ok((url, admin_token, api_key))) => DemoRun {
                url,
                admin_token,
                api_key,
                stop,
                task,
            },
            _ => panic!("the demo did not start: {:?}", task.await),
        }
    }

    /// Names of the demo people the demo lists as enrolled.
    async fn enrolled(&self) -> Vec<String> {
        let people: Value = reqwest::Client::new()
            .get(format!("{}/admin/v1/demo/people", self.url))
            .bearer_auth(&self.admin_token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        people
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["enrolled"] == true)
            .map(|p| p["name"].as_str().unwrap().to_string())
            .collect()
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

/// A demo data directory recovers: every run enrolls the demo people still missing (a first
/// run interrupted before it enrolled them, here one erased), and shows the demo partner's API
/// key, kept in `<data>/demo-api-key` (0600). Without that file the demo still runs and says
/// so. Before, a reused directory never enrolled anyone and never showed the key again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reused_demo_directory_enrolls_missing_people_and_shows_its_api_key() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("demo");
    let all = ["aigerim", "daniyar", "olga"];

    let first = DemoRun::start(&data).await;
    let key = first.api_key.clone().expect("the first run shows the key");
    let mut enrolled = first.enrolled().await;
    enrolled.sort();
    assert_eq!(enrolled, all);
    let file = data.join("demo-api-key");
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), key);
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // One person missing, as after a first run interrupted before it enrolled them.
    let r = reqwest::Client::new()
        .delete(format!("{}/v1/users/EMP-002", first.url))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    assert!(!first.enrolled().await.contains(&"daniyar".to_string()));
    first.stop().await;

    let second = DemoRun::start(&data).await;
    assert_eq!(second.api_key.as_deref(), Some(key.as_str()));
    let mut enrolled = second.enrolled().await;
    enrolled.sort();
    assert_eq!(enrolled, all, "the missing person is enrolled again");
    second.stop().await;

    std::fs::remove_file(&file).unwrap();
    let third = DemoRun::start(&data).await;
    assert_eq!(third.api_key, None);
    assert_eq!(third.enrolled().await.len(), 3);
    third.stop().await;
}

/// Enrolled templates of another dimension than `matching.dim` stop start-up with an error
/// naming the key, its value and source, the templates' dimension and how many; before, the
/// server started, identified no one and refused their re-enrollment (409).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_matching_dim_other_than_the_enrolled_templates_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("demo");
    let demo = DemoRun::start(&data).await;
    assert_eq!(demo.enrolled().await.len(), 3);
    demo.stop().await;
    let config = config_on(&data, "127.0.0.1:0");
    let stderr = serve_fails(&config, &[("PALMGATE_MATCHING_DIM", "64".into())]);
    assert!(
        stderr.contains("`matching.dim` (from environment variable PALMGATE_MATCHING_DIM): 64")
            && stderr.contains("3 enrolled template(s)")
            && stderr.contains("3 of dimension 128")
            && stderr.contains("Set matching.dim back to 128"),
        "{stderr}"
    );
    // The default dimension still starts (the templates are intact).
    let mut s = std::process::Command::new(env!("CARGO_BIN_EXE_palmgate"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "off")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(s.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let _ = s.kill();
    let _ = s.wait();
    assert!(line.starts_with("palmgate readers connect to"), "{line}");
}
