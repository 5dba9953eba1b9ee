//! API abuse (issue 8, item 4): what a hostile client can try over HTTP, against the real
//! binary. Each test says what it tries and what must hold:
//!
//! - BOLA: for every `/v1` and `/admin/v1` route, a second partner (by key, and by dashboard
//!   cookie) never reads, changes or learns of the first partner's sessions, users, webhook or
//!   deliveries (404 exactly as if absent), and no partner credential opens the admin API. The
//!   table is checked against `palmgate::http::ROUTES`: a new route without a case fails.
//! - Guessing credentials from one address meets 429 + `Retry-After` on every surface together
//!   (the Pass API, the admin API, both dashboard logins), whatever forwarding headers it forges.
//! - Oversized, deeply nested, malformed and mistyped bodies: 413 / 400 with a clear
//!   `{"message"}`, never a 500, and the server keeps serving.
//! - Slowloris: connections that send their head or body too slowly (or nothing) are closed
//!   within `http.header_timeout` / `http.body_timeout` while normal requests are served.
//! - No secret in logs: with `RUST_LOG` at debug (palmgate at trace), no API key, webhook secret,
//!   admin token, session link token, dashboard cookie, CSRF token, master key or template
//!   appears in what the server writes.
//! - schemathesis with all its checks against `/v1/openapi.json` (a peer: missing, the test
//!   says so and returns, unless `PALMGATE_PEERS=required`).

mod bodies;
mod bola;
mod logs;
mod schemathesis;
mod slow;

use crate::fixtures::TestServer;
use serde_json::Value;
use std::time::Duration;
use tokio::io::AsyncReadExt;

fn peers_required() -> bool {
    std::env::var("PALMGATE_PEERS").is_ok_and(|v| v == "required")
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// A webhook URL on loopback where nothing listens (deliveries fail fast and retry later).
fn dead_hook(name: &str) -> String {
    // Below the ephemeral range, handed out once: nothing binds it later.
    let port = crate::readers::free_port();
    format!("http://127.0.0.1:{port}/{name}")
}

/// Signs in to the partner dashboard with `key`: (`Cookie` header value, CSRF token).
async fn partner_cookie(s: &TestServer, key: &str) -> (String, String) {
    let client = no_redirects();
    let r = client
        .post(s.url("/dashboard/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(serde_urlencoded::to_string([("api_key", key)]).unwrap())
        .send()
        .await
        .expect("login");
    assert_eq!(r.status(), 303, "partner login");
    let cookie = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("pg_partner="))
        .map(|v| v.split(';').next().unwrap().to_string())
        .expect("login sets pg_partner");
    let page = client
        .get(s.url("/dashboard"))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("dashboard")
        .text()
        .await
        .expect("page");
    let at = page
        .find("data-csrf=\"")
        .expect("page carries a CSRF token")
        + 11;
    let csrf = page[at..].split('"').next().unwrap().to_string();
    (cookie, csrf)
}

/// How a probe presents itself.
#[derive(Clone, Debug)]
enum Cred {
    Key(String),
    Bearer(String),
    /// A dashboard cookie and the CSRF token of its page.
    Cookie(String, String),
}

fn request(
    s: &TestServer,
    cred: &Cred,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> reqwest::RequestBuilder {
    let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
    let mut rb = s.client.request(m, s.url(path));
    rb = match cred {
        Cred::Key(k) => rb.header("x-api-key", k),
        Cred::Bearer(t) => rb.bearer_auth(t),
        Cred::Cookie(c, csrf) => rb.header("cookie", c).header("x-csrf-token", csrf),
    };
    match body {
        Some(Value::String(text)) => rb.header("content-type", "text/plain").body(text.clone()),
        Some(v) => rb.json(v),
        None => rb,
    }
}

fn cred_kind(c: &Cred) -> &'static str {
    match c {
        Cred::Key(_) => "key",
        Cred::Bearer(_) => "bearer",
        Cred::Cookie(..) => "cookie",
    }
}

/// Reads one HTTP/1.1 answer (head + Content-Length body) within `limit`.
async fn read_response<R: AsyncReadExt + Unpin>(
    conn: &mut R,
    limit: Duration,
) -> Option<(String, Vec<u8>)> {
    let end = tokio::time::Instant::now() + limit;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match tokio::time::timeout_at(end, conn.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().expect("content-length"))
        .unwrap_or(0);
    while buf.len() < head_end + len {
        match tokio::time::timeout_at(end, conn.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
    Some((head, buf[head_end..head_end + len].to_vec()))
}

/// The admin token is held to the address budget before it is checked (SPEC 2: keys cannot be
/// brute-forced): once an address has spent its budget on wrong tokens, the right token gets
/// 429 too, on the admin API and the admin sign-in alike, so a throttled guesser cannot tell a
/// right guess from a wrong one. Once the budget refills, the token works again, and then the
/// operator's calls are not counted; another address was never affected.
#[tokio::test]
async fn the_right_admin_token_from_an_address_over_its_budget_answers_429_until_it_refills() {
    use crate::fixtures::{ADMIN_TOKEN, Options, send};
    // 60 a minute: one request refills every second.
    const BUDGET: usize = 60;
    let s =
        TestServer::start_with(Options::default().unauthenticated_per_minute(BUDGET as u32)).await;
    let client = no_redirects();
    let admin_login = |token: &str| {
        client
            .post(s.url("/admin/login"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(serde_urlencoded::to_string([("token", token)]).unwrap())
    };
    let mut wrong = 0;
    loop {
        let a = send(
            s.get("/admin/v1/mode")
                .bearer_auth(format!("guess-{wrong}")),
        )
        .await;
        if a.status == 429 {
            break;
        }
        assert_eq!(a.status, 401, "{}", a.text);
        wrong += 1;
        assert!(wrong <= BUDGET + 10, "{wrong} wrong tokens and no 429");
    }
    // Over budget: the right token learns nothing either.
    let a = send(s.get("/admin/v1/mode").bearer_auth(ADMIN_TOKEN)).await;
    a.assert_error(429, "rate limit exceeded");
    assert!(a.retry_after() >= 1);
    let r = admin_login(ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 429, "the admin sign-in with the right token");
    assert!(
        r.headers().get("set-cookie").is_none(),
        "no cookie for a throttled sign-in"
    );
    // The operator at another address is not affected.
    let elsewhere = reqwest::Client::builder()
        .no_proxy()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    let a = send(
        elsewhere
            .get(s.url("/admin/v1/mode"))
            .bearer_auth(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(a.status, 200, "from 127.0.0.2: {}", a.text);
    // Once the budget refills, the right token gets in, and from then on is not counted.
    tokio::time::sleep(Duration::from_millis(a_retry_ms(&s).await)).await;
    for i in 0..5 {
        let a = send(s.get("/admin/v1/mode").bearer_auth(ADMIN_TOKEN)).await;
        assert_eq!(
            a.status, 200,
            "right token, call {i} after the refill: {}",
            a.text
        );
    }
    let r = admin_login(ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 303, "the admin sign-in after the refill");
    // A wrong guess is still over budget.
    let a = send(s.get("/admin/v1/mode").bearer_auth("guess-again")).await;
    assert_eq!(a.status, 429, "{}", a.text);
}

/// How long until the address budget of this client lets one more call through: the
/// `Retry-After` of a throttled call, in milliseconds, plus a margin.
async fn a_retry_ms(s: &TestServer) -> u64 {
    let a = crate::fixtures::send(s.get("/v1/sessions")).await;
    assert_eq!(a.status, 429, "{}", a.text);
    a.retry_after() as u64 * 1000 + 300
}
