//! Operator-facing errors: the dashboard login of a deactivated partner, environment
//! arrays, the `partner` command on a non-JSON answer, logs without colour codes.

use crate::fixtures::{Options, TestServer};
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
    let log = crate::fixtures::poll(
        "the server's first log lines",
        Duration::from_secs(10),
        || {
            let log = s.stderr_log();
            async move { log.contains("serving").then_some(log) }
        },
    )
    .await;
    assert!(!log.contains("\x1b["), "{log:?}");
}
