//! The dashboards over real HTTP: login cookies, CSRF, throttled brute force, languages, the
//! list endpoints they read, and the one-command demo (`palmgate demo`) end to end.
//! The browser-driven checks are in `browser.rs`.

use crate::fixtures::{ADMIN_TOKEN, Options, TestServer, send};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The `Set-Cookie` value (name=value) of a login answer.
fn cookie_of(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|v| v.split(';').next().unwrap().to_string())
}

/// The CSRF token a dashboard page carries for its cookie.
fn csrf_of(html: &str) -> String {
    let at = html
        .find("data-csrf=\"")
        .expect("page carries a CSRF token")
        + 11;
    html[at..].split('"').next().unwrap().to_string()
}

async fn login(s: &TestServer, path: &str, field: &str, secret: &str) -> reqwest::Response {
    no_redirects()
        .post(s.url(path))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(serde_urlencoded::to_string([(field, secret)]).unwrap())
        .send()
        .await
        .unwrap()
}

/// The HTML `path` serves to the holder of `cookie` (a `Cookie` header value).
async fn page_with(s: &TestServer, path: &str, cookie: impl AsRef<str>) -> String {
    no_redirects()
        .get(s.url(path))
        .header("cookie", cookie.as_ref())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Logs in and returns (cookie header value, CSRF token from the served page).
async fn session(s: &TestServer, board: &str, field: &str, secret: &str) -> (String, String) {
    let r = login(s, &format!("{board}/login"), field, secret).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER, "login answers 303");
    let name = if board == "/admin" {
        "pg_admin"
    } else {
        "pg_partner"
    };
    let set = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect::<Vec<_>>();
    assert!(
        set.iter()
            .any(|c| c.contains("HttpOnly") && c.contains("SameSite=Strict")),
        "{set:?}"
    );
    let cookie = cookie_of(&r, name).expect("login sets the cookie");
    let page = page_with(s, board, &cookie).await;
    assert!(
        !page.contains(secret),
        "the page never carries the credential"
    );
    (cookie.clone(), csrf_of(&page))
}

#[tokio::test]
async fn admin_login_cookie_reads_and_csrf_guards_writes() {
    let s = TestServer::start().await;
    // Signed out: the login form, in the browser's language.
    let page = s
        .get("/admin")
        .header("accept-language", "ru")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains(r#"<html lang="ru">"#) && html.contains("Вход оператора"));
    assert!(!html.contains("data-csrf"));
    assert!(!html.contains("aria-invalid"), "no error yet: {html}");

    // A wrong token: 401 with the form again, no cookie; the field is marked invalid and
    // described by the message (WCAG 3.3.1).
    let bad = login(&s, "/admin/login", "token", "nope").await;
    assert_eq!(bad.status(), StatusCode::UNAUTHORIZED);
    assert!(cookie_of(&bad, "pg_admin").is_none());
    let html = bad.text().await.unwrap();
    assert!(
        html.contains(r#"id="login-error""#)
            && html.contains(r#"aria-invalid="true" aria-describedby="login-error""#),
        "{html}"
    );

    let (cookie, csrf) = session(&s, "/admin", "token", ADMIN_TOKEN).await;
    // Reads work with the cookie alone.
    let r = send(s.get("/admin/v1/partners").header("cookie", &cookie)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    // A write without the CSRF header is refused like no credential at all.
    let r = send(
        s.post("/admin/v1/partners")
            .header("cookie", &cookie)
            .json(&json!({"name": "Acme"})),
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.text);
    let r = send(
        s.post("/admin/v1/partners")
            .header("cookie", &cookie)
            .header("x-csrf-token", "0".repeat(32))
            .json(&json!({"name": "Acme"})),
    )
    .await;
    assert_eq!(r.status, 401, "a wrong CSRF token is refused");
    let r = send(
        s.post("/admin/v1/partners")
            .header("cookie", &cookie)
            .header("x-csrf-token", &csrf)
            .json(&json!({"name": "Acme"})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);

    // A forged cookie (changed expiry) is refused.
    let mut parts: Vec<String> = cookie.split('.').map(str::to_string).collect();
    parts[2] = (parts[2].parse::<i64>().unwrap() + 1000).to_string();
    let forged = parts.join(".");
    let r = send(s.get("/admin/v1/partners").header("cookie", &forged)).await;
    assert_eq!(r.status, 401);

    // A partner cookie is not an admin cookie.
    let (_, key) = s.create_partner("P").await;
    let (pcookie, _) = session(&s, "/dashboard", "api_key", &key).await;
    let as_admin = pcookie.replacen("pg_partner=", "pg_admin=", 1);
    let r = send(s.get("/admin/v1/partners").header("cookie", &as_admin)).await;
    assert_eq!(r.status, 401);

    // Logout needs the CSRF field, then clears the cookie.
    let r = no_redirects()
        .post(s.url("/admin/logout"))
        .header("cookie", &cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(serde_urlencoded::to_string([("csrf", "wrong")]).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = no_redirects()
        .post(s.url("/admin/logout"))
        .header("cookie", &cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(serde_urlencoded::to_string([("csrf", csrf.as_str())]).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let cleared = cookie_of(&r, "pg_admin").unwrap();
    assert_eq!(cleared, "pg_admin=");
}

#[tokio::test]
async fn partner_cookie_speaks_for_that_partner_only_and_ends_with_deactivation() {
    let s = TestServer::start().await;
    let (a_id, a_key) = s.create_partner("A").await;
    let (_, b_key) = s.create_partner("B").await;
    let a_session = s
        .enroll(&a_key, "", &json!({"external_id": "A-1"}))
        .await
        .created();
    s.enroll(&b_key, "", &json!({"external_id": "B-1"}))
        .await
        .created();
    let (cookie, csrf) = session(&s, "/dashboard", "api_key", &a_key).await;

    let r = send(s.get("/v1/sessions").header("cookie", &cookie)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let list = r.json();
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["session_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        vec![a_session.session_id.as_str()],
        "only A's sessions"
    );
    r.assert_rate_headers(0);

    // Writes need the CSRF header; with it the cookie acts as A's key.
    let r = send(
        s.post("/v1/identify")
            .header("cookie", &cookie)
            .json(&json!({})),
    )
    .await;
    assert_eq!(r.status, 401);
    let r = send(
        s.post("/v1/identify")
            .header("cookie", &cookie)
            .header("x-csrf-token", &csrf),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);

    // Another partner's session is "not found" through the cookie too.
    let r = send(s.get("/v1/sessions?limit=500").header("x-api-key", &b_key)).await;
    let b_id = r.json()[0]["session_id"].as_str().unwrap().to_string();
    let r = send(
        s.get(&format!("/v1/sessions/{b_id}"))
            .header("cookie", &cookie),
    )
    .await;
    assert_eq!(r.status, 404);

    let r = send(s.get("/v1/sessions?limit=0").header("cookie", &cookie)).await;
    r.assert_error(400, "limit must be a whole number from 1 to 500");

    // Deactivating the partner ends its dashboard login at once; the API answers the cookie
    // as it answers the key of an inactive partner.
    s.deactivate(&a_id).await;
    let r = send(s.get("/v1/sessions").header("cookie", &cookie)).await;
    r.assert_error(403, "partner account is inactive");
    let page = page_with(&s, "/dashboard", &cookie).await;
    assert!(!page.contains("data-csrf"), "signed out: the login form");
    // And its key cannot open a new one.
    let r = login(&s, "/dashboard/login", "api_key", &a_key).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

/// A login ended by a deactivation stays ended: reactivating the partner does not bring the old
/// cookie back (reads or writes, API or pages); a new sign-in works.
#[tokio::test]
async fn a_partner_cookie_stays_dead_after_reactivation() {
    let s = TestServer::start().await;
    let (a_id, a_key) = s.create_partner("A").await;
    let (cookie, csrf) = session(&s, "/dashboard", "api_key", &a_key).await;
    let r = send(s.get("/v1/users").header("cookie", &cookie)).await;
    assert_eq!(r.status, 200, "{}", r.text);

    s.deactivate(&a_id).await;
    let r = send(s.get("/v1/users").header("cookie", &cookie)).await;
    r.assert_error(403, "partner account is inactive");
    let r = send(
        s.post("/v1/identify")
            .header("cookie", &cookie)
            .header("x-csrf-token", &csrf),
    )
    .await;
    r.assert_error(403, "partner account is inactive");

    s.activate(&a_id).await;
    let r = send(s.get("/v1/users").header("cookie", &cookie)).await;
    r.assert_error(401, "invalid or missing API key");
    let r = send(
        s.post("/v1/identify")
            .header("cookie", &cookie)
            .header("x-csrf-token", &csrf),
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.text);
    let page = page_with(&s, "/dashboard", &cookie).await;
    assert!(!page.contains("data-csrf"), "the old login: the login form");
    // A second round of deactivation and reactivation does not revive it either.
    s.deactivate(&a_id).await;
    s.activate(&a_id).await;
    let r = send(s.get("/v1/users").header("cookie", &cookie)).await;
    assert_eq!(r.status, 401, "{}", r.text);

    // The key still signs in, and the new login works.
    let (fresh, _) = session(&s, "/dashboard", "api_key", &a_key).await;
    let r = send(s.get("/v1/users").header("cookie", &fresh)).await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test]
async fn login_brute_force_meets_429() {
    let s = TestServer::start_with(Options::default().unauthenticated_per_minute(5)).await;
    let mut statuses = vec![];
    for i in 0..8 {
        let r = login(&s, "/admin/login", "token", &format!("guess-{i}")).await;
        statuses.push(r.status().as_u16());
    }
    assert_eq!(&statuses[..5], &[401; 5], "{statuses:?}");
    assert!(statuses[5..].iter().all(|&c| c == 429), "{statuses:?}");
    let r = login(&s, "/dashboard/login", "api_key", "pgk_guess").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().contains_key("retry-after"));
    // The right token is throttled too: a guesser over budget learns nothing of its guesses
    // (its refill is in abuse.rs).
    let r = login(&s, "/admin/login", "token", ADMIN_TOKEN).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(cookie_of(&r, "pg_admin").is_none());
}

/// Login CSRF: a sign-in form posted from another site (a hostile page signing the visitor's
/// browser into the attacker's partner account, where their enrollments would land) is refused
/// with 403 and no cookie, on both dashboards; a sign-in from the server's own page (by its
/// public URL or the address it was reached at), or from a client that is not a browser, works.
#[tokio::test]
async fn a_sign_in_posted_from_another_site_is_refused() {
    let public = "https://gate.example.test";
    let s = TestServer::start_with(Options::default().public_url(public)).await;
    let (_, key) = s.create_partner("Victim").await;
    let post = |path: &str, field: &str, secret: &str, headers: &[(&str, &str)]| {
        let mut rb = no_redirects()
            .post(s.url(path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(serde_urlencoded::to_string([(field, secret)]).unwrap());
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        rb.send()
    };
    let base = s.base_url.trim_end_matches('/').to_string();
    for (path, field, secret, cookie) in [
        ("/dashboard/login", "api_key", key.as_str(), "pg_partner"),
        ("/admin/login", "token", ADMIN_TOKEN, "pg_admin"),
    ] {
        for headers in [
            &[
                ("origin", "https://evil.example"),
                ("sec-fetch-site", "cross-site"),
            ][..],
            &[("origin", "https://evil.example")],
            &[("origin", "null")],
            &[("sec-fetch-site", "cross-site")],
            &[
                ("origin", "https://sub.gate.example.test"),
                ("sec-fetch-site", "same-site"),
            ],
        ] {
            let r = post(path, field, secret, headers).await.unwrap();
            assert_eq!(r.status(), StatusCode::FORBIDDEN, "{path} {headers:?}");
            assert!(
                cookie_of(&r, cookie).is_none(),
                "{path} {headers:?}: a cookie"
            );
            let v: Value = r.json().await.unwrap();
            let msg = v["message"].as_str().unwrap_or_default();
            assert!(
                msg.contains("posted from another site"),
                "{path} {headers:?}: {v}"
            );
        }
        for headers in [
            &[][..],
            &[("origin", public)],
            &[("origin", base.as_str())],
            &[("origin", base.as_str()), ("sec-fetch-site", "same-origin")],
            &[("sec-fetch-site", "none")],
        ] {
            let r = post(path, field, secret, headers).await.unwrap();
            assert_eq!(r.status(), StatusCode::SEE_OTHER, "{path} {headers:?}");
            assert!(
                cookie_of(&r, cookie).is_some(),
                "{path} {headers:?}: no cookie"
            );
        }
    }
}

#[tokio::test]
async fn language_choice_is_remembered_and_messages_are_embedded() {
    let s = TestServer::start().await;
    let (cookie, _) = session(&s, "/admin", "token", ADMIN_TOKEN).await;
    let r = no_redirects()
        .get(s.url("/admin?lang=kk"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    let lang = cookie_of(&r, "pg_lang").expect("the choice is remembered");
    assert_eq!(lang, "pg_lang=kk");
    let html = r.text().await.unwrap();
    assert!(html.contains(r#"<html lang="kk">"#));
    let at = html
        .find(r#"<script id="messages" type="application/json">"#)
        .unwrap()
        + 46;
    let json_text = &html[at..at + html[at..].find("</script>").unwrap()];
    let messages: Value = serde_json::from_str(json_text).unwrap();
    assert_eq!(messages["logout"], "Шығу");
    // The cookie alone keeps the language on the next visit.
    let html = page_with(&s, "/admin", format!("{cookie}; {lang}")).await;
    assert!(html.contains(r#"<html lang="kk">"#));
    // Assets are served by palmgate itself; pages reference nothing external.
    for asset in [
        "/assets/dash.js",
        "/assets/dash.css",
        "/assets/admin.js",
        "/assets/partner.js",
    ] {
        let r = send(s.get(asset)).await;
        assert_eq!(r.status, 200, "{asset}");
    }
    assert!(!html.contains("http://") && !html.contains("https://"));
}

#[tokio::test]
async fn admin_lists_users_of_every_partner_and_exports_the_audit() {
    let s = TestServer::start().await;
    let (_, key) = s.create_partner("Acme").await;
    let r = send(s.get("/admin/v1/users").bearer_auth(ADMIN_TOKEN)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!([]));
    let r = send(
        s.get("/admin/v1/audit/export?format=csv")
            .bearer_auth(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.text.starts_with("position,at,door,reader,partner_id"));
    assert!(
        r.header("content-disposition")
            .unwrap()
            .contains("attachment")
    );
    let r = send(
        s.get("/admin/v1/audit/export?format=xml")
            .bearer_auth(ADMIN_TOKEN),
    )
    .await;
    r.assert_error(400, "format must be csv or jsonl");
    let r = send(
        s.get("/admin/v1/audit/export?from=yesterday")
            .bearer_auth(ADMIN_TOKEN),
    )
    .await;
    r.assert_error(400, "from must be an RFC 3339 instant");
    let r = send(s.get("/v1/users").header("x-api-key", &key)).await;
    assert_eq!(r.json(), json!([]));
}

/// A running `palmgate demo` on a free port, with what it printed.
pub struct Demo {
    child: std::process::Child,
    pub url: String,
    pub admin_token: String,
    pub api_key: String,
    _dir: tempfile::TempDir,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `palmgate demo --listen 127.0.0.1:0` with no `PALMGATE_*` variable of the test's
/// environment, its stdout piped (the URLs and secrets it prints).
fn demo_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_palmgate"));
    for (k, _) in std::env::vars() {
        if k.starts_with("PALMGATE_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(["demo", "--listen", "127.0.0.1:0"])
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    cmd
}

impl Demo {
    pub fn start() -> Demo {
        let dir = tempfile::tempdir().unwrap();
        let mut child = demo_command()
            .arg("--data")
            .arg(dir.path().join("demo"))
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let (mut url, mut admin_token, mut api_key) = (None, None, None);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while url.is_none() || admin_token.is_none() || api_key.is_none() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = rx
                .recv_timeout(left)
                .expect("the demo prints its URL, admin token and API key within 60 s");
            if let Some(u) = line.strip_prefix("palmgate demo is running at ") {
                url = Some(u.trim().to_string());
            } else if let Some(t) = line.trim().strip_prefix("admin token: ") {
                admin_token = Some(t.to_string());
            } else if let Some(at) = line.find("): pgk_") {
                api_key = Some(line[at + 3..].trim().to_string());
            }
        }
        Demo {
            child,
            url: url.unwrap(),
            admin_token: admin_token.unwrap(),
            api_key: api_key.unwrap(),
            _dir: dir,
        }
    }
}

#[tokio::test]
async fn demo_runs_a_site_with_people_doors_and_a_virtual_reader() {
    let demo = Demo::start();
    let http = reqwest::Client::new();
    let admin = |path: &str| {
        http.get(format!("{}{path}", demo.url))
            .bearer_auth(&demo.admin_token)
    };
    let doors: Value = admin("/admin/v1/doors")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doors.as_array().unwrap().len(), 3, "{doors}");
    let readers: Value = admin("/admin/v1/readers")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let online = readers
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["online"] == true)
        .count();
    assert_eq!(online, 4, "three door readers and the desk: {readers}");
    let users: Value = http
        .get(format!("{}/v1/users", demo.url))
        .header("x-api-key", &demo.api_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(users.as_array().unwrap().len(), 3, "{users}");

    let scan = |person: &str, reader: &str| {
        http.post(format!("{}/admin/v1/demo/scan", demo.url))
            .bearer_auth(&demo.admin_token)
            .json(&json!({"person": person, "reader": reader}))
            .send()
    };
    let v: Value = scan("daniyar", "server-1")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["granted"], true, "{v}");
    assert_eq!(v["door"], "server-room");
    // The decision moved the simulated board's relay: the door reads unlocked.
    let mut unlocked = false;
    for _ in 0..50 {
        let doors: Value = admin("/admin/v1/doors")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if doors
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["id"] == "server-room" && d["state"] == "unlocked")
        {
            unlocked = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(unlocked, "server room never showed unlocked");
    let v: Value = scan("olga", "server-1")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (v["granted"].clone(), v["reason"].clone()),
        (json!(false), json!("door_not_in_level"))
    );
    let v: Value = scan("stranger", "lobby-1")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["reason"], "no_match");
    let r = scan("nobody-known", "lobby-1").await.unwrap();
    assert_eq!(r.status(), 400);
    // The panel is an admin endpoint.
    let r = http
        .post(format!("{}/admin/v1/demo/scan", demo.url))
        .json(&json!({"person": "daniyar", "reader": "server-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // The webhook test receiver answers.
    let r = http
        .post(format!("{}/demo/receiver", demo.url))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    // The address the demo prints first leads to the operator dashboard.
    let r = no_redirects()
        .get(format!("{}/", demo.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/admin");
    // Opened in a browser (the demo prints the link), it says what it is.
    let r = http
        .get(format!("{}/demo/receiver", demo.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("the demo's webhook test receiver")),
        "{v}"
    );
}

#[tokio::test]
async fn the_operator_reads_the_mode_the_log_tail_and_every_policy_error() {
    let s = TestServer::start().await;
    let r = send(s.get("/admin/v1/mode").bearer_auth(ADMIN_TOKEN)).await;
    assert_eq!(r.json(), json!({"lockdown": false, "emergency": false}));
    send(
        s.post("/admin/v1/lockdown")
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"on": true})),
    )
    .await;
    let r = send(s.get("/admin/v1/mode").bearer_auth(ADMIN_TOKEN)).await;
    assert_eq!(r.json()["lockdown"], true);
    let r = send(s.get("/admin/v1/events?limit=1").bearer_auth(ADMIN_TOKEN)).await;
    let last = r.json()["last_position"].as_u64().unwrap();
    let tail = send(
        s.get(&format!("/admin/v1/events?after={}", last - 1))
            .bearer_auth(ADMIN_TOKEN),
    )
    .await
    .json();
    assert_eq!(tail["events"][0]["type"], "SiteModeChanged", "{tail}");
    let r = send(
        s.client
            .put(s.url("/admin/v1/policy"))
            .bearer_auth(ADMIN_TOKEN)
            .body("timezone = \"Mars/Olympus\"\n[[doors]]\nid = \"a\"\n"),
    )
    .await;
    assert_eq!(r.status, 400);
    let body = r.json();
    let errors = body["errors"].as_array().expect("errors listed");
    assert!(errors.len() >= 2, "{body}");
    assert!(
        errors
            .iter()
            .any(|e| e.as_str().unwrap().contains("timezone")),
        "{body}"
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("invalid site policy: ")
    );
}

/// Posts a dashboard's sign-out form with `cookie` (a `Cookie` header value, maybe empty).
async fn logout(s: &TestServer, board: &str, cookie: &str, csrf: &str) -> reqwest::Response {
    let mut rb = no_redirects()
        .post(s.url(&format!("{board}/logout")))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(serde_urlencoded::to_string([("csrf", csrf)]).unwrap());
    if !cookie.is_empty() {
        rb = rb.header("cookie", cookie);
    }
    rb.send().await.unwrap()
}

/// Signing out ends that login on the server: the same cookie replayed afterwards (with the
/// CSRF token read from the page) is refused by the APIs and gets the sign-in form, while
/// another login still works. Signing out with no (valid) cookie just goes to the sign-in page.
#[tokio::test]
async fn a_cookie_replayed_after_sign_out_is_refused() {
    let s = TestServer::start().await;
    let (cookie, csrf) = session(&s, "/admin", "token", ADMIN_TOKEN).await;
    let (other, _) = session(&s, "/admin", "token", ADMIN_TOKEN).await;
    let r = send(s.get("/admin/v1/partners").header("cookie", &cookie)).await;
    assert_eq!(r.status, 200, "{}", r.text);

    let out = logout(&s, "/admin", &cookie, &csrf).await;
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    assert_eq!(out.headers()["location"], "/admin");
    assert!(
        out.headers().get_all("set-cookie").iter().any(|v| v
            .to_str()
            .unwrap()
            .starts_with("pg_admin=;")
            && v.to_str().unwrap().contains("Max-Age=0")),
        "the sign-out clears the cookie"
    );

    // The old cookie, replayed: refused for reads and writes, and the page is the sign-in form.
    let r = send(s.get("/admin/v1/partners").header("cookie", &cookie)).await;
    assert_eq!(r.status, 401, "{}", r.text);
    let r = send(
        s.post("/admin/v1/lockdown")
            .header("cookie", &cookie)
            .header("x-csrf-token", &csrf)
            .json(&json!({"on": true})),
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.text);
    let page = page_with(&s, "/admin", &cookie).await;
    assert!(
        !page.contains("data-csrf"),
        "the signed-out cookie got the dashboard"
    );
    assert!(page.contains(r#"action="/admin/login""#));

    // Another login (made before, and a new one) is not affected.
    let r = send(s.get("/admin/v1/partners").header("cookie", &other)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let (again, _) = session(&s, "/admin", "token", ADMIN_TOKEN).await;
    let r = send(s.get("/admin/v1/partners").header("cookie", &again)).await;
    assert_eq!(r.status, 200, "{}", r.text);

    // Signing out again with the dead cookie, or with none: back to the sign-in page.
    for c in [cookie.as_str(), ""] {
        let out = logout(&s, "/admin", c, &csrf).await;
        assert_eq!(out.status(), StatusCode::SEE_OTHER, "cookie {c:?}");
        assert_eq!(out.headers()["location"], "/admin");
        assert!(cookie_of(&out, "pg_admin").is_some_and(|v| v == "pg_admin="));
    }
    // A live cookie with a wrong CSRF token is still refused (and stays live).
    let out = logout(&s, "/dashboard", "", "x").await;
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    let out = logout(&s, "/admin", &again, "wrong").await;
    assert_eq!(out.status(), StatusCode::FORBIDDEN);
    let r = send(s.get("/admin/v1/partners").header("cookie", &again)).await;
    assert_eq!(r.status, 200, "{}", r.text);
}

/// A sign-out survives a restart: it is written to the key store before the sign-out is
/// answered, and loaded at start-up. A login not signed out still works after the restart.
/// Before, a restart forgot every sign-out and the cookie worked again until its expiry
/// (crash-consistency review, session 26).
#[tokio::test]
async fn a_sign_out_survives_a_restart() {
    let mut s = TestServer::start().await;
    let (cookie, csrf) = session(&s, "/admin", "token", ADMIN_TOKEN).await;
    let (other, _) = session(&s, "/admin", "token", ADMIN_TOKEN).await;
    let out = logout(&s, "/admin", &cookie, &csrf).await;
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    s.kill9();
    s.launch().await;
    let r = send(s.get("/admin/v1/partners").header("cookie", &cookie)).await;
    assert_eq!(r.status, 401, "signed out before the restart: {}", r.text);
    let r = send(s.get("/admin/v1/partners").header("cookie", &other)).await;
    assert_eq!(r.status, 200, "never signed out: {}", r.text);
}

/// The same for a partner's login.
#[tokio::test]
async fn a_partner_cookie_replayed_after_sign_out_is_refused() {
    let s = TestServer::start().await;
    let (_, key) = s.create_partner("Acme").await;
    let (cookie, csrf) = session(&s, "/dashboard", "api_key", &key).await;
    let r = send(s.get("/v1/sessions").header("cookie", &cookie)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let out = logout(&s, "/dashboard", &cookie, &csrf).await;
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    let r = send(s.get("/v1/sessions").header("cookie", &cookie)).await;
    assert_eq!(r.status, 401, "{}", r.text);
    let page = page_with(&s, "/dashboard", &cookie).await;
    assert!(!page.contains("data-csrf"));
}

/// Every dashboard page (sign-in form and signed-in shell, both boards) refuses to be framed
/// by another site (clickjacking of "Start emergency unlock") and runs under a CSP.
#[tokio::test]
async fn dashboard_pages_cannot_be_framed() {
    let s = TestServer::start().await;
    let (_, key) = s.create_partner("Acme").await;
    let (admin, _) = session(&s, "/admin", "token", ADMIN_TOKEN).await;
    let (partner, _) = session(&s, "/dashboard", "api_key", &key).await;
    let bad = login(&s, "/admin/login", "token", "nope").await;
    let mut answers = vec![("failed login", bad)];
    for (what, path, cookie) in [
        ("admin form", "/admin", ""),
        ("admin shell", "/admin", admin.as_str()),
        ("partner form", "/dashboard", ""),
        ("partner shell", "/dashboard", partner.as_str()),
    ] {
        let mut rb = no_redirects().get(s.url(path));
        if !cookie.is_empty() {
            rb = rb.header("cookie", cookie);
        }
        answers.push((what, rb.send().await.unwrap()));
    }
    for (what, r) in answers {
        let h = r.headers();
        let csp = h
            .get("content-security-policy")
            .unwrap_or_else(|| panic!("{what}: no CSP"))
            .to_str()
            .unwrap();
        assert!(csp.contains("frame-ancestors 'none'"), "{what}: {csp}");
        assert!(csp.contains("default-src 'self'"), "{what}: {csp}");
        assert!(csp.contains("form-action 'self'"), "{what}: {csp}");
        assert_eq!(
            h.get("x-frame-options").map(|v| v.to_str().unwrap()),
            Some("DENY"),
            "{what}"
        );
        let html = r.text().await.unwrap();
        // Nothing inline would run under the CSP: the only inline script is JSON data.
        assert!(
            !html.contains("<script>") && !html.contains("style="),
            "{what}: inline code in {html}"
        );
    }
}

/// A campus policy outgrows the Pass API's 64 KiB body limit: `PUT /admin/v1/policy` takes up
/// to 1 MiB, and answers 413 past it.
#[tokio::test]
async fn a_policy_over_64_kib_can_be_put_up_to_1_mib() {
    let s = TestServer::start().await;
    let pad = |n: usize| {
        let mut doc = String::from("timezone = \"Asia/Almaty\"\n");
        while doc.len() < n {
            doc.push_str("# a comment line to make the document larger than it would be\n");
        }
        doc
    };
    let big = pad(100 * 1024);
    let r = send(
        s.client
            .put(s.url("/admin/v1/policy"))
            .bearer_auth(ADMIN_TOKEN)
            .body(big.clone()),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let now = send(s.get("/admin/v1/policy").bearer_auth(ADMIN_TOKEN)).await;
    assert_eq!(
        now.json()["document"].as_str().map(str::len),
        Some(big.len())
    );

    let huge = pad(1024 * 1024 + 1);
    let r = send(
        s.client
            .put(s.url("/admin/v1/policy"))
            .bearer_auth(ADMIN_TOKEN)
            .body(huge),
    )
    .await;
    assert_eq!(r.status, 413, "{}", r.text);
    assert!(!r.text.is_empty());
}

#[tokio::test]
async fn admin_user_list_pages_and_searches_every_partner_with_a_total() {
    let mut s = TestServer::prepare(Options::default());
    s.seed_partner("Alpha Works", &["A-1", "A-2", "A-3", "A-4"])
        .await;
    // Seeded later, so enrolled later: Beta's users come first (newest enrollment first).
    s.seed_partner("Beta Labs", &["B-1", "B-2", "B-3"]).await;
    s.launch().await;
    let page = |query: String| {
        let s = &s;
        async move {
            let r = send(
                s.get(&format!("/admin/v1/users?{query}"))
                    .bearer_auth(ADMIN_TOKEN),
            )
            .await;
            let total = r.header("x-total-count").map(str::to_string);
            (r, total)
        }
    };
    let exts = |r: &crate::fixtures::Answer| -> Vec<String> {
        r.json()
            .as_array()
            .unwrap_or_else(|| panic!("not an array: {}", r.text))
            .iter()
            .map(|u| u["external_id"].as_str().unwrap().to_string())
            .collect()
    };
    let all = ["B-1", "B-2", "B-3", "A-1", "A-2", "A-3", "A-4"];
    for (query, total, want) in [
        ("limit=3", "7", &all[0..3]),
        ("limit=3&offset=3", "7", &all[3..6]),
        ("limit=3&offset=6", "7", &all[6..]),
        ("limit=3&offset=7", "7", &all[7..]),
        ("q=beta%20LABS", "3", &all[0..3]),
        ("q=alpha&offset=2&limit=1", "4", &all[5..6]),
        ("q=user%20a-3", "1", &all[5..6]),
        ("q=Standard&limit=2", "7", &all[0..2]),
        ("q=gamma", "0", &all[7..]),
    ] {
        let (r, got_total) = page(query.into()).await;
        assert_eq!(r.status, 200, "{query}: {}", r.text);
        assert_eq!(got_total.as_deref(), Some(total), "{query}: X-Total-Count");
        assert_eq!(exts(&r), want, "{query}");
    }
    for (query, message) in [
        (
            "offset=x".to_string(),
            "offset must be a whole number from 0 to 1000000000",
        ),
        (
            "limit=0".to_string(),
            "limit must be a whole number from 1 to 500",
        ),
        (
            format!("q={}", "q".repeat(201)),
            "q must be at most 200 characters",
        ),
    ] {
        page(query).await.0.assert_error(400, message);
    }
}

/// `DELETE /dashboard/users?external_id=ID` as the partner dashboard sends it.
fn dashboard_erase(s: &TestServer, external_id: &str) -> reqwest::RequestBuilder {
    let mut url = reqwest::Url::parse(&s.url("/dashboard/users")).unwrap();
    url.query_pairs_mut()
        .append_pair("external_id", external_id);
    s.client.delete(url)
}

/// The external ids of the holder of `key`'s users, sorted.
async fn user_ids(s: &TestServer, key: &str) -> Vec<String> {
    let r = send(s.get("/v1/users?limit=500").header("x-api-key", key)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let mut ids: Vec<String> = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["external_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn the_partner_dashboard_erases_users_named_dot_and_dot_dot() {
    // Completed enrollments, as a reader finishes them; B has a "." of its own.
    let mut s = TestServer::prepare(Options::default());
    let a = s.seed_partner("A", &[".", "..", "keep"]).await;
    let b = s.seed_partner("B", &[".", "b-only"]).await;
    s.launch().await;
    let (a_key, b_key) = (a.api_key, b.api_key);
    let (cookie, csrf) = session(&s, "/dashboard", "api_key", &a_key).await;

    // Why the path cannot name them: a WHATWG URL client (reqwest, every browser) rewrites the
    // `.`/`..` segment, so the API's own route never sees the id.
    for (ext, reached) in [(".", "/v1/users/"), ("..", "/v1/"), ("%2E%2E", "/v1/")] {
        let url = reqwest::Url::parse(&s.url(&format!("/v1/users/{ext}"))).unwrap();
        assert_eq!(url.path(), reached, "{ext}");
    }

    // The dashboard's script erases through the route that survives that.
    let script = send(s.get("/assets/partner.js")).await.text;
    assert!(
        script.contains(
            r#"api("DELETE", "/dashboard/users?external_id=" + encodeURIComponent(u.external_id))"#
        ),
        "partner.js erases through /dashboard/users"
    );
    assert!(
        !script.contains(r#""/v1/users/" + encodeURIComponent"#),
        "partner.js names no user in a path"
    );

    // Only the partner's dashboard login with its CSRF token opens it; no key, no cookie alone.
    let r = send(dashboard_erase(&s, ".").header("cookie", &cookie)).await;
    r.assert_error_prefix(401, "not signed in to the partner dashboard");
    let r = send(dashboard_erase(&s, ".").header("x-api-key", &a_key)).await;
    assert_eq!(r.status, 401, "{}", r.text);
    assert_eq!(user_ids(&s, &a_key).await, [".", "..", "keep"]);

    let erase = |ext: &str| {
        send(
            dashboard_erase(&s, ext)
                .header("cookie", &cookie)
                .header("x-csrf-token", &csrf),
        )
    };
    // Another partner's user is not found, and stays.
    erase("b-only").await.assert_error(404, "not found");
    let r = send(
        s.client
            .delete(s.url("/dashboard/users"))
            .header("cookie", &cookie)
            .header("x-csrf-token", &csrf),
    )
    .await;
    r.assert_error_prefix(400, "external_id is required");

    let t = crate::fixtures::unix_now_ms();
    for ext in [".", ".."] {
        let r = erase(ext).await;
        assert_eq!(r.status, 204, "erase {ext:?}: {}", r.text);
        r.assert_rate_headers(t);
        erase(ext).await.assert_error(404, "not found");
    }
    assert_eq!(user_ids(&s, &a_key).await, ["keep"]);
    // B's own "." is another user: untouched.
    assert_eq!(user_ids(&s, &b_key).await, [".", "b-only"]);
}

/// The dashboard's own routes answer a cookie of a partner deactivated since it signed in as
/// `/v1` does (and as that partner's key is answered): the erasure 403 "partner account is
/// inactive" with the rate-limit headers (it was 401 "not signed in"), erasing nothing; the
/// page shows the login form saying the account is inactive. Reactivated, the old cookie is
/// dead for good (401), as on `/v1`.
#[tokio::test]
async fn an_inactive_partners_cookie_is_answered_403_by_the_dashboard_routes_too() {
    let mut s = TestServer::prepare(Options::default());
    let a = s.seed_partner("A", &["EMP-1"]).await;
    s.launch().await;
    let (cookie, csrf) = session(&s, "/dashboard", "api_key", &a.api_key).await;
    let erase = || {
        send(
            dashboard_erase(&s, "EMP-1")
                .header("cookie", &cookie)
                .header("x-csrf-token", &csrf),
        )
    };

    s.deactivate(&a.id).await;
    let t = crate::fixtures::unix_now_ms();
    let r = erase().await;
    r.assert_error(403, "partner account is inactive");
    r.assert_rate_headers(t);
    let page = no_redirects()
        .get(s.url("/dashboard"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::FORBIDDEN);
    let page = page.text().await.unwrap();
    assert!(!page.contains("data-csrf"), "the login form: {page}");
    assert!(
        page.contains("This partner account is inactive"),
        "the page says why: {page}"
    );

    s.activate(&a.id).await;
    assert_eq!(user_ids(&s, &a.api_key).await, ["EMP-1"], "nothing erased");
    erase()
        .await
        .assert_error_prefix(401, "not signed in to the partner dashboard");
    let page = page_with(&s, "/dashboard", &cookie).await;
    assert!(
        !page.contains("data-csrf") && !page.contains("inactive"),
        "{page}"
    );
}

#[tokio::test]
async fn a_dashboard_erasure_spends_the_apis_erase_budget() {
    let mut s = TestServer::prepare(Options::default().per_minute(2));
    let p = s.seed_partner("Budget", &[".", "EMP-1"]).await;
    s.launch().await;
    let (cookie, csrf) = session(&s, "/dashboard", "api_key", &p.api_key).await;
    for _ in 0..2 {
        let r = send(
            s.client
                .delete(s.url("/v1/users/nobody"))
                .header("x-api-key", &p.api_key),
        )
        .await;
        assert_eq!(r.status, 404, "{}", r.text);
    }
    let r = send(
        dashboard_erase(&s, ".")
            .header("cookie", &cookie)
            .header("x-csrf-token", &csrf),
    )
    .await;
    r.assert_error(429, "rate limit exceeded");
    assert!(r.retry_after() > 0);
    assert_eq!(user_ids(&s, &p.api_key).await, [".", "EMP-1"]);
}

/// `GET /admin/v1/events/stream`, opened with `cookie` (a `Cookie` header value, or the admin
/// token when `None`), with no overall timeout: the stream is read chunk by chunk.
async fn open_event_stream(s: &TestServer, cookie: Option<&str>) -> reqwest::Response {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let rb = client.get(s.url("/admin/v1/events/stream"));
    let rb = match cookie {
        Some(c) => rb.header("cookie", c),
        None => rb.bearer_auth(ADMIN_TOKEN),
    };
    let resp = rb.send().await.expect("GET /admin/v1/events/stream");
    assert_eq!(resp.status(), StatusCode::OK);
    resp
}

/// What a live event stream does next within `within`: `Some(data)` for the next event's data
/// (keep-alive comments are skipped), `None` when the server ends the stream. Panics if neither
/// happens in time.
async fn next_sse_data(resp: &mut reqwest::Response, within: Duration) -> Option<String> {
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = String::new();
    loop {
        let chunk = tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .unwrap_or_else(|_| panic!("the stream neither sent an event nor ended in {within:?}"))
            .expect("the stream reads cleanly");
        let Some(chunk) = chunk else {
            assert!(
                !buf.contains("data:"),
                "a partial event before the end: {buf}"
            );
            return None;
        };
        buf.push_str(std::str::from_utf8(&chunk).expect("UTF-8"));
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            let data: Vec<&str> = frame
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(str::trim_start)
                .collect();
            if !data.is_empty() {
                return Some(data.join("\n"));
            }
        }
    }
}

/// A live event stream opened with a dashboard cookie ends with that login: signing out ends it
/// before the next event reaches it, or within the re-check period when the log is quiet.
/// Streams of other logins and of the admin token go on.
#[tokio::test]
async fn a_signed_out_login_stops_receiving_live_events() {
    let s = TestServer::start().await;
    let (cookie, csrf) = session(&s, "/admin", "token", ADMIN_TOKEN).await;
    let (quiet, quiet_csrf) = session(&s, "/admin", "token", ADMIN_TOKEN).await;
    let (other, _) = session(&s, "/admin", "token", ADMIN_TOKEN).await;
    let mut signed_out = open_event_stream(&s, Some(&cookie)).await;
    let mut quiet_stream = open_event_stream(&s, Some(&quiet)).await;
    let mut other_stream = open_event_stream(&s, Some(&other)).await;
    let mut token_stream = open_event_stream(&s, None).await;

    s.create_partner("Before sign-out").await;
    let wait = Duration::from_secs(20);
    for (name, stream) in [
        ("signed_out", &mut signed_out),
        ("quiet", &mut quiet_stream),
        ("other", &mut other_stream),
        ("token", &mut token_stream),
    ] {
        let data = next_sse_data(stream, wait).await;
        assert!(
            data.as_deref()
                .is_some_and(|d| d.contains("Before sign-out")),
            "{name}: {data:?}"
        );
    }

    // Signed out while the log is quiet: the stream ends on its own, within the re-check
    // period (5 s), well before 20 s.
    let out = logout(&s, "/admin", &quiet, &quiet_csrf).await;
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    let at = tokio::time::Instant::now();
    assert_eq!(next_sse_data(&mut quiet_stream, wait).await, None);
    assert!(at.elapsed() < Duration::from_secs(15), "{:?}", at.elapsed());

    // Signed out, then an event: it never reaches the signed-out login, whose stream ends.
    let out = logout(&s, "/admin", &cookie, &csrf).await;
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    let r = send(s.get("/admin/v1/doors").header("cookie", &cookie)).await;
    assert_eq!(r.status, 401, "{}", r.text);
    s.create_partner("After sign-out").await;
    assert_eq!(next_sse_data(&mut signed_out, wait).await, None);

    // The other login and the admin token still follow the log.
    for (name, stream) in [("other", &mut other_stream), ("token", &mut token_stream)] {
        let data = next_sse_data(stream, wait).await;
        assert!(
            data.as_deref()
                .is_some_and(|d| d.contains("After sign-out")),
            "{name}: {data:?}"
        );
    }
}

/// The catalog a dashboard page embeds for its script (`<script id="messages">`).
fn embedded_messages(html: &str) -> serde_json::Map<String, Value> {
    let open = r#"<script id="messages" type="application/json">"#;
    let at = html.find(open).expect("the page embeds its messages") + open.len();
    let end = at + html[at..].find("</script>").unwrap();
    match serde_json::from_str(&html[at..end]).unwrap() {
        Value::Object(m) => m,
        other => panic!("messages are not an object: {other}"),
    }
}

/// The `{name}` placeholders of a message, sorted.
fn placeholders(text: &str) -> Vec<String> {
    let mut out: Vec<String> = text
        .split('{')
        .skip(1)
        .filter_map(|x| x.split_once('}'))
        .map(|x| x.0.to_string())
        .collect();
    out.sort();
    out
}

/// The catalog keys a script names literally: every string literal of dotted lowercase words
/// (`"sum.denied"`, `"error.conflict.reader_busy"`) and every literal passed to `t(`/`tr(`
/// (`t("none")`). A literal ending in `.` is a prefix the script completes with a code.
fn keys_named_in(script: &str) -> std::collections::BTreeSet<String> {
    let is_word = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.';
    let mut keys = std::collections::BTreeSet::new();
    let bytes: Vec<char> = script.chars().collect();
    for i in 0..bytes.len() {
        if bytes[i] != '"' {
            continue;
        }
        let run: String = bytes[i + 1..].iter().take_while(|c| is_word(**c)).collect();
        let closed = bytes.get(i + 1 + run.chars().count()) == Some(&'"');
        if !closed || run.is_empty() || run.ends_with('.') || run.starts_with('.') {
            continue;
        }
        let call = |name: &str| {
            let before: String = bytes[..i].iter().collect();
            before.ends_with(&format!("{name}("))
                && !before[..before.len() - name.len() - 1]
                    .ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
        };
        if run.contains('.') && run.starts_with(|c: char| c.is_ascii_lowercase())
            || call("t")
            || call("tr")
        {
            keys.insert(run);
        }
    }
    keys
}

/// Every reason a `CaptureRejected` event can carry (an exhaustive match: a new variant does
/// not compile until it is listed here, and so in the catalogs).
fn capture_rejections() -> Vec<String> {
    use palmgate::core::event::CaptureRejection as R;
    let all = [
        R::UnknownSession,
        R::SessionNotPending,
        R::NoDoor,
        R::LowQuality,
        R::WrongReader,
    ];
    for r in all {
        match r {
            R::UnknownSession
            | R::SessionNotPending
            | R::NoDoor
            | R::LowQuality
            | R::WrongReader => {}
        }
    }
    all.iter()
        .map(|r| {
            serde_json::to_value(r)
                .unwrap()
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

/// Every reason a session can fail with (exhaustive, as above).
fn fail_reasons() -> Vec<String> {
    use palmgate::core::ids::FailReason as F;
    let all = [
        F::NoMatch,
        F::AlreadyEnrolled,
        F::LowQuality,
        F::LivenessFailed,
        F::Cancelled,
        F::ReaderOffline,
    ];
    for f in all {
        match f {
            F::NoMatch
            | F::AlreadyEnrolled
            | F::LowQuality
            | F::LivenessFailed
            | F::Cancelled
            | F::ReaderOffline => {}
        }
    }
    all.iter().map(|f| f.as_str().to_string()).collect()
}

/// Every catalog key the served dashboard scripts name — and every `CaptureRejected` and
/// session fail reason the operator's feed shows (`admin.reject.*`, `admin.fail.*`), and the
/// API refusals dash.js translates (`error.*`) — is in the catalog each page embeds in en, kk
/// and ru, with the same placeholders in all three.
#[tokio::test]
async fn every_key_the_dashboard_scripts_use_is_in_every_catalog() {
    let mut s = TestServer::prepare(Options::default());
    let p = s.seed_partner("A", &["EMP-1"]).await;
    s.launch().await;
    let (admin_cookie, _) = session(&s, "/admin", "token", ADMIN_TOKEN).await;
    let (partner_cookie, _) = session(&s, "/dashboard", "api_key", &p.api_key).await;
    let dash = send(s.get("/assets/dash.js")).await.text;
    let admin = send(s.get("/assets/admin.js")).await.text;
    let partner = send(s.get("/assets/partner.js")).await.text;

    let mut admin_keys = keys_named_in(&admin);
    for r in capture_rejections() {
        admin_keys.insert(format!("reject.{r}"));
    }
    for f in fail_reasons() {
        admin_keys.insert(format!("fail.{f}"));
    }
    let dash_keys = keys_named_in(&dash);
    for key in [
        "error.detail",
        "error.forbidden",
        "error.conflict.already_enrolled",
        "error.rate_limited_for",
        "error.too_large",
        "error.unavailable",
        "error.webhook_url",
    ] {
        assert!(dash_keys.contains(key), "dash.js does not name {key}");
    }

    let mut catalogs = Vec::new();
    for (board, cookie, own, prefix) in [
        ("/admin", &admin_cookie, &admin_keys, "admin."),
        ("/dashboard", &partner_cookie, &keys_named_in(&partner), ""),
    ] {
        let mut by_lang_done = Vec::new();
        for lang in ["en", "kk", "ru"] {
            let html = page_with(&s, &format!("{board}?lang={lang}"), cookie).await;
            by_lang_done.push((lang, embedded_messages(&html)));
        }
        let en = &by_lang_done[0].1;
        for key in own.iter().chain(&dash_keys) {
            // The operator's script prefixes its own keys with "admin." (tr); common keys are
            // named in full.
            let full = if en.contains_key(key) {
                key.clone()
            } else {
                format!("{prefix}{key}")
            };
            assert!(en.contains_key(&full), "{board}: {key} is in no catalog");
            let want = placeholders(en[&full].as_str().unwrap());
            for (lang, m) in &by_lang_done[1..] {
                let text = m
                    .get(&full)
                    .and_then(Value::as_str)
                    .unwrap_or_else(|| panic!("{board}?lang={lang}: {full} missing"));
                assert_eq!(
                    placeholders(text),
                    want,
                    "{board}?lang={lang}: {full} placeholders"
                );
            }
        }
        catalogs.push(by_lang_done);
    }
    // The feed's reasons, as the Russian operator reads them.
    let ru = &catalogs[0][2].1;
    assert_eq!(
        ru["admin.reject.no_door"],
        "считыватель не привязан ни к одной двери (или нет политики объекта)"
    );
    assert_eq!(
        ru["error.conflict.already_enrolled"],
        "Пользователь с этим внешним ID уже зарегистрирован."
    );
}

/// Without `--data`, the demo's directory (its log, master key and people's templates) is a
/// new temporary one, said so when it starts, and removed when it stops (it was left in the
/// temporary directory, master key included).
#[test]
fn the_demo_removes_its_temporary_data_when_it_stops() {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = demo_command().env("TMPDIR", tmp.path()).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut data = None;
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        if let Some(rest) = line.trim().strip_prefix("Data: ") {
            assert!(
                rest.contains("(removed when the demo stops; --data DIR keeps it)"),
                "{line}"
            );
            data = Some(std::path::PathBuf::from(rest.split(" (").next().unwrap()));
            break;
        }
    }
    let data = data.expect("the demo names its data directory");
    assert!(data.starts_with(tmp.path()), "{}", data.display());
    assert!(data.join("master.key").exists());
    // SAFETY: kill(2) only reads its integer arguments; the pid is our own child's.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!data.exists(), "{} is still there", data.display());
}
