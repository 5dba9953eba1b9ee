//! Bodies: oversized (declared and chunked), deeply nested, malformed, mistyped.

use super::{Cred, dead_hook, no_redirects, read_response, request};
use crate::fixtures::{ADMIN_TOKEN, Options, TestServer, send};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Writes `head` and then `body` in `chunk`-sized HTTP/1.1 chunks (no Content-Length), ignoring
/// write errors (the server may answer and close early), and reads the answer.
async fn chunked_request(addr: &str, head: &str, body: &[u8], chunk: usize) -> (String, Vec<u8>) {
    let mut conn = TcpStream::connect(addr).await.expect("connect");
    let mut req = head.as_bytes().to_vec();
    for c in body.chunks(chunk) {
        req.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        req.extend_from_slice(c);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let (mut rd, mut wr) = conn.split();
    let write = async {
        let _ = wr.write_all(&req).await;
    };
    let read = read_response(&mut rd, Duration::from_secs(10));
    let ((), answer) = tokio::join!(write, read);
    answer.expect("an answer")
}

/// Over 64 KiB on every route that reads a body — declared with Content-Length, and streamed
/// chunked with no length at all — is `413 {"message": "request body too large"}`.
#[tokio::test]
async fn oversized_bodies_are_413_on_every_route_that_reads_one() {
    let s = TestServer::start().await;
    let (_, key) = s.create_partner("Heavy").await;
    let addr = s.base_url.trim_start_matches("http://").to_string();
    let routes: Vec<(&str, &str, String)> = vec![
        ("POST", "/v1/enroll", format!("x-api-key: {key}")),
        ("POST", "/v1/identify", format!("x-api-key: {key}")),
        ("PUT", "/v1/webhook", format!("x-api-key: {key}")),
        ("POST", "/v1/webhook/recover", format!("x-api-key: {key}")),
        (
            "POST",
            "/admin/v1/partners",
            format!("authorization: Bearer {ADMIN_TOKEN}"),
        ),
        (
            "POST",
            "/admin/v1/lockdown",
            format!("authorization: Bearer {ADMIN_TOKEN}"),
        ),
        (
            "POST",
            "/admin/v1/emergency-unlock",
            format!("authorization: Bearer {ADMIN_TOKEN}"),
        ),
    ];
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let big = vec![b' '; 64 * 1024 + 1];
    let huge = vec![b'['; 1024 * 1024];
    for (method, path, auth) in &routes {
        let (name, value) = auth.split_once(": ").unwrap();
        let a = send(
            client
                .request(
                    reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                    s.url(path),
                )
                .header(name, value)
                .header("content-type", "application/json")
                .body(big.clone()),
        )
        .await;
        a.assert_error(413, "request body too large");
        let head = format!(
            "{method} {path} HTTP/1.1\r\nhost: {addr}\r\n{auth}\r\ncontent-type: application/json\r\n\
             transfer-encoding: chunked\r\n\r\n"
        );
        let (head, body) = chunked_request(&addr, &head, &huge, 4096).await;
        assert!(
            head.starts_with("http/1.1 413"),
            "{method} {path} chunked: {head}"
        );
        assert_eq!(
            serde_json::from_slice::<Value>(&body).expect("JSON"),
            json!({"message": "request body too large"}),
            "{method} {path} chunked"
        );
    }
    // A site policy has its own cap, 1 MiB (a campus policy outgrows 64 KiB): one byte more is
    // 413, with a length and chunked alike.
    let policy = "/admin/v1/policy";
    let auth = format!("authorization: Bearer {ADMIN_TOKEN}");
    let over = vec![b' '; 1024 * 1024 + 1];
    send(
        client
            .put(s.url(policy))
            .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
            .header("content-type", "text/plain")
            .body(over.clone()),
    )
    .await
    .assert_error(413, "request body too large");
    let head = format!(
        "PUT {policy} HTTP/1.1\r\nhost: {addr}\r\n{auth}\r\ncontent-type: text/plain\r\n\
         transfer-encoding: chunked\r\n\r\n"
    );
    let (head, _) = chunked_request(&addr, &head, &over, 4096).await;
    assert!(head.starts_with("http/1.1 413"), "policy chunked: {head}");
    // The small login form has its own, smaller cap: a clear 400 page, not a crash.
    let r = no_redirects()
        .post(s.url("/dashboard/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("api_key={}", "k".repeat(100 * 1024)))
        .send()
        .await
        .unwrap();
    assert!(
        [400, 413].contains(&r.status().as_u16()),
        "oversized login form: {}",
        r.status()
    );
    s.identify(&key, "").await.created();
}

/// JSON nested 60 000 levels deep (under the size cap) on every JSON route: 400 that says so,
/// no stack overflow; the server answers the next request. `metadata` nested deeper than 32
/// levels is refused (the parser would take up to 125 there, which the log could not read back);
/// 32 levels are accepted, carried into a webhook, survive a restart and `palmgate audit verify`.
#[tokio::test]
async fn deeply_nested_json_is_400_and_the_limit_is_safe_to_store() {
    let mut s = TestServer::start_with(
        Options::default().extra_toml("[webhooks]\nallow_networks = [\"127.0.0.0/8\"]"),
    )
    .await;
    let (_, key) = s.create_partner("Deep").await;
    let routes = [
        ("POST", "/v1/enroll", Cred::Key(key.clone())),
        ("PUT", "/v1/webhook", Cred::Key(key.clone())),
        ("POST", "/v1/webhook/recover", Cred::Key(key.clone())),
        (
            "POST",
            "/admin/v1/partners",
            Cred::Bearer(ADMIN_TOKEN.into()),
        ),
        (
            "POST",
            "/admin/v1/lockdown",
            Cred::Bearer(ADMIN_TOKEN.into()),
        ),
    ];
    let arrays = "[".repeat(60_000).into_bytes();
    let objects = "{\"a\":".repeat(12_000).into_bytes();
    let mut in_field = br#"{"external_id":"EMP-1","metadata":{"x":"#.to_vec();
    in_field.extend(std::iter::repeat_n(b'[', 50_000));
    let mut cases = 0;
    for (method, path, cred) in &routes {
        for body in [&arrays, &objects, &in_field] {
            assert!(body.len() < 64 * 1024);
            let a = send(
                request(&s, cred, &method.to_lowercase(), path, None)
                    .header("content-type", "application/json")
                    .body(body.clone()),
            )
            .await;
            a.assert_error_prefix(400, "invalid JSON at line 1 column ");
            let m = a.json()["message"].as_str().unwrap().to_string();
            assert!(
                m.ends_with("nested more than 128 levels deep"),
                "{method} {path}: {m}"
            );
            cases += 1;
        }
    }
    assert_eq!(send(s.get("/healthz")).await.status, 200);

    // Metadata the parser would take but the log's readers could not: refused. (Found here:
    // nested 125 levels, it was accepted and written, and the server could not start again —
    // its events are read back inside an envelope one level deeper than serde_json's limit.)
    let deep_metadata = |arrays: usize| {
        format!(
            r#"{{"external_id":"EMP-DEEP","metadata":{{"x":{}{}}}}}"#,
            "[".repeat(arrays),
            "]".repeat(arrays)
        )
    };
    for arrays in [32, 64, 125] {
        send(
            request(&s, &Cred::Key(key.clone()), "post", "/v1/enroll", None)
                .header("content-type", "application/json")
                .body(deep_metadata(arrays)),
        )
        .await
        .assert_error(400, "metadata must be nested at most 32 levels deep");
        cases += 1;
    }
    // The deepest metadata accepted (32 levels): the body, its events, the webhook built from it.
    let depth = 32;
    let body = deep_metadata(depth - 1);
    let hook = dead_hook("deep");
    let put = send(request(
        &s,
        &Cred::Key(key.clone()),
        "put",
        "/v1/webhook",
        Some(&json!({"url": hook})),
    ))
    .await;
    assert_eq!(put.status, 200, "{}", put.text);
    let c = send(
        request(&s, &Cred::Key(key.clone()), "post", "/v1/enroll", None)
            .header("content-type", "application/json")
            .body(body),
    )
    .await
    .created();
    // Cancelling queues a `failed` webhook carrying the metadata, one level deeper.
    let a = s.cancel(&key, &c.session_id).await;
    assert_eq!(a.status, 200, "{}", a.text);
    s.restart().await;
    let v = s.session(&key, &c.session_id).await.json();
    assert_eq!(v["fail_reason"], "cancelled", "{v}");
    let d = send(s.get("/v1/webhook/deliveries").header("x-api-key", &key)).await;
    assert!(d.text.contains(&c.session_id), "{}", d.text);
    let verify = std::process::Command::new(env!("CARGO_BIN_EXE_palmgate"))
        .args(["audit", "verify", "--config"])
        .arg(s.config_path())
        .output()
        .expect("audit verify");
    assert!(
        verify.status.success(),
        "audit verify after deep metadata: {}",
        String::from_utf8_lossy(&verify.stdout)
    );
    assert!(!s.stderr_log().contains("panicked"), "{}", s.stderr_log());
    println!(
        "nesting: {cases} deep bodies refused; metadata {depth} levels deep stored, restarted, verified"
    );
}

/// Bodies that are not what they claim: invalid UTF-8, lone surrogates, NUL, a BOM, UTF-16,
/// numbers out of range, duplicate keys, operators where strings belong, injection-looking
/// strings. Each is a 400 with a `{"message"}` or an ordinary 201 — never a 500 or a crash.
#[tokio::test]
async fn malformed_bodies_are_400_never_500() {
    let s = TestServer::start().await;
    let (_, key) = s.create_partner("Garbage").await;
    let utf16: Vec<u8> = "{\"external_id\":\"EMP-16\"}"
        .encode_utf16()
        .flat_map(|u| u.to_le_bytes())
        .collect();
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "invalid UTF-8 in a string",
            b"{\"external_id\":\"\xff\xfe\"}".to_vec(),
            400,
            "invalid JSON",
        ),
        (
            "invalid UTF-8 outside strings",
            b"{\"external_id\":\"E\"}\xff".to_vec(),
            400,
            "invalid JSON",
        ),
        (
            "truncated UTF-8",
            b"{\"external_id\":\"\xe2\x82\"}".to_vec(),
            400,
            "invalid JSON",
        ),
        (
            "lone surrogate",
            br#"{"external_id":"\ud800"}"#.to_vec(),
            400,
            "invalid JSON",
        ),
        (
            "byte order mark",
            b"\xef\xbb\xbf{\"external_id\":\"E\"}".to_vec(),
            400,
            "request body starts with a byte order mark",
        ),
        ("UTF-16", utf16, 400, "invalid JSON"),
        (
            "number out of range",
            br#"{"external_id":"E","metadata":{"n":1e400}}"#.to_vec(),
            400,
            "invalid JSON",
        ),
        (
            "huge integer",
            format!(
                r#"{{"external_id":"E","metadata":{{"n":{}}}}}"#,
                "9".repeat(5000)
            )
            .into_bytes(),
            400,
            "invalid JSON",
        ),
        (
            "trailing garbage",
            br#"{"external_id":"E"} {"#.to_vec(),
            400,
            "invalid JSON",
        ),
        (
            "control character",
            b"{\"external_id\":\"E\x01\"}".to_vec(),
            400,
            "invalid JSON",
        ),
        (
            "operator object",
            br#"{"external_id":{"$ne":null}}"#.to_vec(),
            400,
            "external_id must be a string",
        ),
        (
            "array id",
            br#"{"external_id":["E"]}"#.to_vec(),
            400,
            "external_id must be a string",
        ),
        (
            "null body",
            b"null".to_vec(),
            400,
            "request body must be a JSON object",
        ),
        (
            "string body",
            br#""E""#.to_vec(),
            400,
            "request body must be a JSON object",
        ),
        (
            "whitespace id",
            br#"{"external_id":"\u2003\t"}"#.to_vec(),
            400,
            "external_id must not be blank",
        ),
        (
            "101 scalar values",
            format!(r#"{{"external_id":"{}"}}"#, "я".repeat(101)).into_bytes(),
            400,
            "external_id must be at most 100 characters",
        ),
        (
            "duplicate keys",
            br#"{"external_id":"A","external_id":"B"}"#.to_vec(),
            400,
            "invalid JSON",
        ),
        (
            "escaped NUL",
            br#"{"external_id":"E\u0000X"}"#.to_vec(),
            201,
            "",
        ),
        (
            "SQL-looking",
            br#"{"external_id":"x'); DROP TABLE events; --"}"#.to_vec(),
            201,
            "",
        ),
        (
            "path-looking",
            br#"{"external_id":"../../admin/v1/partners"}"#.to_vec(),
            201,
            "",
        ),
        (
            "HTML",
            br#"{"external_id":"<script>alert(1)</script>"}"#.to_vec(),
            201,
            "",
        ),
        (
            "emoji, 100 of them",
            format!(r#"{{"external_id":"{}"}}"#, "🖐".repeat(100)).into_bytes(),
            201,
            "",
        ),
    ];
    let n = cases.len();
    for (what, body, status, prefix) in cases {
        let a = send(
            s.post("/v1/enroll")
                .header("x-api-key", &key)
                .header("content-type", "application/json")
                .body(body),
        )
        .await;
        assert!(
            a.content_type().starts_with("application/json"),
            "{what}: {:?} {}",
            a.content_type(),
            a.text
        );
        if status == 201 {
            let c = a.created();
            // What was stored reads back as it was sent.
            let v = s.session(&key, &c.session_id).await.json();
            assert!(v["external_id"].is_string(), "{what}: {v}");
        } else {
            a.assert_error_prefix(status, prefix);
        }
    }
    // Undecodable bytes elsewhere: a header that is not visible ASCII, a path and a query that
    // are not UTF-8.
    let bad_key = reqwest::header::HeaderValue::from_bytes(b"pgk_\xff\xfe").unwrap();
    send(s.post("/v1/identify").header("x-api-key", bad_key))
        .await
        .assert_error(401, "invalid or missing API key");
    send(s.get("/v1/users/%FF%FE").header("x-api-key", &key))
        .await
        .assert_error(404, "not found");
    let a = send(
        s.post("/v1/identify?language=%FF")
            .header("x-api-key", &key),
    )
    .await;
    a.assert_error_prefix(400, "unsupported language");
    let a = send(s.get("/v1/sessions?limit=%FF").header("x-api-key", &key)).await;
    a.assert_error_prefix(400, "limit must be");
    let log = s.stderr_log();
    assert!(!log.contains("panicked"), "{log}");
    assert_eq!(send(s.get("/healthz")).await.status, 200);
    println!("malformed: {n} bodies + 4 undecodable header/path/query cases");
}

/// Valid JSON with a content type that is not `application/json`, on every JSON route: 400.
#[tokio::test]
async fn json_routes_refuse_other_content_types() {
    let s = TestServer::start().await;
    let (_, key) = s.create_partner("Typed").await;
    let routes: Vec<(&str, &str, Cred, Value)> = vec![
        (
            "post",
            "/v1/enroll",
            Cred::Key(key.clone()),
            json!({"external_id": "E"}),
        ),
        (
            "put",
            "/v1/webhook",
            Cred::Key(key.clone()),
            json!({"url": "https://example.com/h"}),
        ),
        (
            "post",
            "/v1/webhook/recover",
            Cred::Key(key.clone()),
            json!({"since": "2000-01-01T00:00:00Z"}),
        ),
        (
            "post",
            "/admin/v1/partners",
            Cred::Bearer(ADMIN_TOKEN.into()),
            json!({"name": "N"}),
        ),
        (
            "post",
            "/admin/v1/lockdown",
            Cred::Bearer(ADMIN_TOKEN.into()),
            json!({"on": false}),
        ),
        (
            "post",
            "/admin/v1/emergency-unlock",
            Cred::Bearer(ADMIN_TOKEN.into()),
            json!({"on": false}),
        ),
    ];
    let types = [
        Some("text/plain"),
        Some("text/json"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        Some("application/jsonx"),
        Some("application/json-patch+json"),
        Some("application/xml"),
        Some(""),
        None,
    ];
    let mut n = 0;
    for (method, path, cred, body) in &routes {
        for ct in types {
            let mut rb = request(&s, cred, method, path, None).body(body.to_string());
            if let Some(ct) = ct {
                rb = rb.header("content-type", ct);
            }
            send(rb)
                .await
                .assert_error(400, "Content-Type must be application/json");
            n += 1;
        }
    }
    println!("content types: {n} refusals");
}

/// A log that already holds JSON at the parser's limit (metadata nested 125 levels, as this
/// build accepted before it capped metadata at 32) still starts, serves and verifies: events
/// read back inside an envelope one level deeper fall back to a limit-free decode.
#[tokio::test]
async fn a_log_holding_json_at_the_parsers_limit_still_starts() {
    use palmgate::core::event::stream;
    use palmgate::core::{Event, Expected, PartnerId, SessionId, StreamAppend};
    use palmgate::store::{EventStore, SqliteStore};

    let mut s = TestServer::prepare(Options::default());
    let seeded = s.seed_partner("Old build", &[]).await;
    let mut deep = Value::Array(vec![]);
    for _ in 1..125 {
        deep = Value::Array(vec![deep]);
    }
    let partner = PartnerId::parse(&seeded.id).expect("partner id");
    let session = SessionId::from_random([7; 16]);
    let now = chrono::Utc::now();
    let created = Event::decode(
        "SessionCreated",
        1,
        json!({
            "session_id": session,
            "partner_id": partner,
            "kind": "enroll",
            "language": "en",
            "token_hash": "0".repeat(64),
            "external_id": "EMP-OLD-DEEP",
            "metadata": {"x": deep},
            "created_at": now,
            "expires_at": now + chrono::Duration::minutes(15),
        }),
    )
    .expect("a SessionCreated event");
    let store = SqliteStore::open(s.store_path()).expect("store");
    store
        .append(
            vec![StreamAppend {
                stream: stream::session(session),
                expected: Expected::NoStream,
                events: vec![created],
            }],
            now,
        )
        .await
        .expect("append");
    drop(store);

    s.launch().await;
    let v = s
        .session(&seeded.api_key, &session.to_string())
        .await
        .json();
    assert_eq!(v["external_id"], "EMP-OLD-DEEP", "{v}");
    let verify = std::process::Command::new(env!("CARGO_BIN_EXE_palmgate"))
        .args(["audit", "verify", "--config"])
        .arg(s.config_path())
        .output()
        .expect("audit verify");
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}
