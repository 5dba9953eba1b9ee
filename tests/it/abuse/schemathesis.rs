//! schemathesis, with all its checks, against `/v1/openapi.json` and a running server.

use super::{dead_hook, peers_required};
use crate::fixtures::{ADMIN_TOKEN, Options, TestServer, send};
use serde_json::Value;
use serde_json::json;
use std::time::Instant;

/// The schemathesis command (`st`, `schemathesis`, or `python3 -m schemathesis.cli` when pip put
/// the package where PATH does not look), if it is installed and says its version.
fn schemathesis() -> Option<Vec<&'static str>> {
    let candidates: [&[&'static str]; 3] = [
        &["st"],
        &["schemathesis"],
        &["python3", "-m", "schemathesis.cli"],
    ];
    candidates.into_iter().find_map(|c| {
        std::process::Command::new(c[0])
            .args(&c[1..])
            .arg("--version")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|_| c.to_vec())
    })
}

/// schemathesis, with every check it has (its default), against a running server: first the
/// Pass API, hosted pages and health routes with a partner key, then the admin API with the
/// bearer token (a separate run, so that its partner deactivation cannot starve the first).
/// Known objects are given through `tests/schemathesis/schemathesis.toml` so that generated
/// requests reach past 404. Any failure fails the test, with schemathesis's report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing() {
    let Some(st) = schemathesis() else {
        assert!(
            !peers_required(),
            "schemathesis is not installed (pip install 'schemathesis>=4.32,<5') and PALMGATE_PEERS=required"
        );
        println!("schemathesis not installed (pip install schemathesis): skipping");
        return;
    };
    let mut s = TestServer::prepare(
        Options::default()
            .per_minute(1_000_000)
            .unauthenticated_per_minute(1_000_000)
            .extra_toml("[webhooks]\nallow_networks = [\"127.0.0.0/8\"]"),
    );
    let seeded = s.seed_partner("Fuzzed", &["EMP-ST1"]).await;
    s.launch().await;
    let key = seeded.api_key.clone();
    let pending = s.identify(&key, "").await.created();
    let put = send(
        s.client
            .put(s.url("/v1/webhook"))
            .header("x-api-key", &key)
            .json(&json!({"url": dead_hook("st")})),
    )
    .await;
    assert_eq!(put.status, 200, "{}", put.text);
    let ping = send(s.post("/v1/webhook/test").header("x-api-key", &key)).await;
    let delivery = ping.json()["delivery_id"].as_str().unwrap().to_string();
    let (other_partner, _) = s.create_partner("Fuzzed admin target").await;
    let config = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/schemathesis/schemathesis.toml"
    );
    let report_dir = s.dir().join("schemathesis");
    let schema = s.url("/v1/openapi.json");
    let runs: [(&str, &[&str], &str); 2] = [
        (
            "pass API, pages, health",
            &["--exclude-path-regex", "^/admin/"],
            delivery.as_str(),
        ),
        (
            "admin API",
            &["--include-path-regex", "^/admin/"],
            other_partner.as_str(),
        ),
    ];
    for (name, filter, id) in runs {
        // A crash inside schemathesis itself (its report's "Runtime Error", with no FAILURES
        // section: e.g. CPython 3.11's "AST constructor recursion depth mismatch" while
        // hypothesis describes a filter) says nothing about the server: that run is tried once
        // more. Any finding fails at once.
        for attempt in 1..=2 {
            let t = Instant::now();
            let mut cmd = std::process::Command::new(st[0]);
            // Its cache goes to the working directory: keep it out of the checkout.
            cmd.args(&st[1..]).current_dir(s.dir());
            cmd.arg("--config-file")
                .arg(config)
                .arg("run")
                .arg(&schema)
                .args(filter)
                .args(["--max-examples", "30", "--seed", "1", "--workers", "2"])
                .args(["--request-timeout", "10"])
                .arg("--report")
                .arg("junit")
                .arg("--report-dir")
                .arg(&report_dir)
                .env("PG_API_KEY", &key)
                .env("PG_ADMIN_TOKEN", ADMIN_TOKEN)
                .env("PG_SESSION_ID", &pending.session_id)
                .env("PG_TOKEN", pending.token())
                .env("PG_EXTERNAL_ID", &seeded.users[0].external_id)
                .env("PG_ID", id)
                .env("NO_COLOR", "1")
                .stdin(std::process::Stdio::null());
            let out = tokio::task::spawn_blocking(move || cmd.output())
                .await
                .expect("join")
                .expect("run schemathesis");
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stderr = String::from_utf8_lossy(&out.stderr);
            let summary = stdout
                .lines()
                .rev()
                .find(|l| l.contains(" in ") && l.starts_with('='))
                .unwrap_or("");
            println!("schemathesis ({name}): {summary} [{:?}]", t.elapsed());
            if std::env::var_os("PALMGATE_SCHEMATHESIS_VERBOSE").is_some() {
                println!("{stdout}");
            }
            let tool_crash = stdout.contains("Runtime Error") && !stdout.contains("= FAILURES =");
            if !out.status.success() && tool_crash && attempt == 1 {
                println!(
                    "schemathesis ({name}) crashed inside itself (no finding): running it again"
                );
                continue;
            }
            assert!(
                out.status.success(),
                "schemathesis ({name}) found problems:\n{stdout}\n{stderr}"
            );
            break;
        }
    }
    let log = s.stderr_log();
    assert!(
        !log.contains("panicked"),
        "a handler panicked under schemathesis"
    );
    assert_eq!(send(s.get("/healthz")).await.status, 200);
}

/// The `$ref`-resolved JSON schema of `method path`'s `status` answer in `doc`.
fn answer_schema<'a>(doc: &'a Value, method: &str, path: &str, status: &str) -> &'a Value {
    let response = &doc["paths"][path][method]["responses"][status];
    assert!(
        response.is_object(),
        "{method} {path} documents no {status}"
    );
    let schema = &response["content"]["application/json"]["schema"];
    match schema["$ref"].as_str() {
        Some(r) => {
            let name = r
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("{method} {path} {status}: unexpected $ref {r}"));
            &doc["components"]["schemas"][name]
        }
        None => schema,
    }
}

/// The document names what the server really answers: the JSON bodies of the webhook test,
/// redeliver and recover calls (checked against the real answers, property by property), 408
/// on every operation that reads a body (a body not whole within `http.body_timeout`), the
/// `X-RateLimit-*` headers on every response of every `/v1` operation (with `Retry-After` on
/// their 429s), and `Idempotent-Replayed` on the 201 of enroll and identify.
#[tokio::test]
async fn the_document_names_the_webhook_bodies_408_and_the_rate_limit_headers() {
    let s = TestServer::start_with(
        Options::default().extra_toml("[webhooks]\nallow_networks = [\"127.0.0.0/8\"]"),
    )
    .await;
    let (_, key) = s.create_partner("Documented").await;
    let doc = send(s.get("/v1/openapi.json")).await;
    assert_eq!(doc.status, 200, "{}", doc.text);
    let doc = doc.json();

    // 1. The bodies of test, redeliver and recover, against the real answers.
    let put = send(
        s.client
            .put(s.url("/v1/webhook"))
            .header("x-api-key", &key)
            .json(&json!({"url": dead_hook("documented")})),
    )
    .await;
    assert_eq!(put.status, 200, "{}", put.text);
    let ping = send(s.post("/v1/webhook/test").header("x-api-key", &key)).await;
    assert_eq!(ping.status, 202, "{}", ping.text);
    let id = ping.json()["delivery_id"].as_str().unwrap().to_string();
    let redeliver = send(
        s.post(&format!("/v1/webhook/deliveries/{id}/redeliver"))
            .header("x-api-key", &key),
    )
    .await;
    assert_eq!(redeliver.status, 202, "{}", redeliver.text);
    let recover = send(
        s.post("/v1/webhook/recover")
            .header("x-api-key", &key)
            .json(&json!({"since": "2000-01-01T00:00:00Z"})),
    )
    .await;
    assert_eq!(recover.status, 200, "{}", recover.text);
    let answers = [
        ("/v1/webhook/test", "202", &ping),
        ("/v1/webhook/deliveries/{id}/redeliver", "202", &redeliver),
        ("/v1/webhook/recover", "200", &recover),
    ];
    for (path, status, answer) in answers {
        let schema = answer_schema(&doc, "post", path, status);
        let properties = schema["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("POST {path} {status} documents no body: {schema}"));
        let body = answer.json();
        let body = body.as_object().expect("a JSON object");
        let mut documented: Vec<&String> = properties.keys().collect();
        let mut answered: Vec<&String> = body.keys().collect();
        documented.sort();
        answered.sort();
        assert_eq!(documented, answered, "POST {path} {status}: {schema}");
        for (name, value) in body {
            let ty = properties[name]["type"].as_str().unwrap_or("");
            let fits = match ty {
                "string" => value.is_string(),
                "integer" => value.is_u64() || value.is_i64(),
                _ => false,
            };
            assert!(fits, "POST {path} {status}: {name} = {value} is not {ty:?}");
        }
        let required = schema["required"].as_array().cloned().unwrap_or_default();
        for name in properties.keys() {
            assert!(
                required.contains(&json!(name)),
                "POST {path} {status}: {name} is always answered but not required"
            );
        }
    }

    // 2. 408 wherever a body is read: enroll and identify (no body is needed, one is read), and
    // every operation with a request body.
    for path in ["/v1/enroll", "/v1/identify"] {
        answer_schema(&doc, "post", path, "408");
    }
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if op.get("requestBody").is_some() {
                assert!(
                    op["responses"]["408"].is_object(),
                    "{method} {path} reads a body but documents no 408"
                );
            }
        }
    }

    // 3. The rate-limit headers on every response of every `/v1` operation, Retry-After on
    // their 429s, Idempotent-Replayed on the 201 of enroll and identify.
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        if !path.starts_with("/v1/") {
            continue;
        }
        for (method, op) in item.as_object().unwrap() {
            for (status, response) in op["responses"].as_object().unwrap() {
                let headers = &response["headers"];
                for h in [
                    "X-RateLimit-Limit",
                    "X-RateLimit-Remaining",
                    "X-RateLimit-Reset",
                ] {
                    assert_eq!(
                        headers[h]["schema"]["type"], "integer",
                        "{method} {path} {status} does not document {h}: {response}"
                    );
                }
                if status == "429" {
                    assert_eq!(
                        headers["Retry-After"]["schema"]["type"], "integer",
                        "{method} {path} 429 does not document Retry-After: {response}"
                    );
                }
                checked += 1;
            }
        }
    }
    assert!(checked > 100, "only {checked} /v1 responses documented");
    for path in ["/v1/enroll", "/v1/identify"] {
        assert!(
            doc["paths"][path]["post"]["responses"]["201"]["headers"]["Idempotent-Replayed"]
                .is_object(),
            "POST {path} 201 does not document Idempotent-Replayed"
        );
    }
    // And the real answers carry the headers documented on them.
    for (path, _, answer) in answers {
        for h in [
            "x-ratelimit-limit",
            "x-ratelimit-remaining",
            "x-ratelimit-reset",
        ] {
            assert!(answer.header(h).is_some(), "POST {path}: no {h}");
        }
    }
}
