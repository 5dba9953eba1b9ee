//! SPEC 3, hosted pages: `GET /enroll/{token}`, `GET /identify/{token}` and the Cancel form —
//! 200 in the session's language, 400 expired, 410 ended, 404 unknown; tokens are long,
//! URL-safe and never the session id; nothing is loaded from outside the gateway.

use crate::fixtures::{ADMIN_TOKEN, Answer, Created, Options, TestServer, poll, send};
use serde_json::json;
use std::collections::HashSet;
use std::time::Duration;

struct Lang {
    code: &'static str,
    enroll_title: &'static str,
    identify_title: &'static str,
    place_palm: &'static str,
    cancel: &'static str,
    expired_title: &'static str,
}

/// Phrases of the catalogs in src/http/i18n.rs.
const LANGS: [Lang; 3] = [
    Lang {
        code: "en",
        enroll_title: "Palm enrollment",
        identify_title: "Palm identification",
        place_palm: "Place your palm on the scanner",
        cancel: "Cancel",
        expired_title: "Link expired",
    },
    Lang {
        code: "kk",
        enroll_title: "Алақанды тіркеу",
        identify_title: "Алақан арқылы сәйкестендіру",
        place_palm: "Алақаныңызды сканерге қойыңыз",
        cancel: "Бас тарту",
        expired_title: "Сілтеменің мерзімі өтті",
    },
    Lang {
        code: "ru",
        enroll_title: "Регистрация ладони",
        identify_title: "Идентификация по ладони",
        place_palm: "Поднесите ладонь к сканеру",
        cancel: "Отменить",
        expired_title: "Срок действия ссылки истёк",
    },
];

fn no_redirect_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

#[track_caller]
fn assert_html(s: &TestServer, a: &Answer, status: u16, code: &str) {
    assert_eq!(a.status, status, "{}", a.text);
    assert!(
        a.content_type().starts_with("text/html"),
        "Content-Type {:?}",
        a.content_type()
    );
    assert!(
        a.text.contains(&format!("<html lang=\"{code}\"")),
        "page is not marked lang={code}: {}",
        a.text
    );
    assert!(
        a.text.contains("<meta name=\"viewport\""),
        "no viewport meta (phones): {}",
        a.text
    );
    assert_self_contained(&a.text, &[&s.base_url, &s.public_url]);
}

/// Every attribute value that may be `attr="value"` or `attr='value'`.
fn attribute_values<'a>(html: &'a str, attr: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    let lower = html.to_ascii_lowercase();
    let needle = format!("{attr}=");
    let mut from = 0;
    while let Some(i) = lower[from..].find(&needle) {
        let start = from + i + needle.len();
        let rest = &html[start..];
        let value = match rest.chars().next() {
            Some(q @ ('"' | '\'')) => rest[1..].split(q).next().unwrap_or(""),
            _ => rest
                .split(|c: char| c.is_whitespace() || c == '>')
                .next()
                .unwrap_or(""),
        };
        out.push(value);
        from = start;
    }
    out
}

/// No asset or link points off the server: the gateway may have no internet (SPEC 3).
/// Absolute URLs are allowed only on `own` (the server's base and public URLs).
#[track_caller]
fn assert_self_contained(html: &str, own: &[&str]) {
    let own_url = |u: &str| own.iter().any(|o| !o.is_empty() && u.starts_with(o));
    let lower = html.to_ascii_lowercase();
    for scheme in ["http://", "https://", "ftp://", "ws://", "wss://"] {
        let mut from = 0;
        while let Some(i) = lower[from..].find(scheme) {
            let at = from + i;
            let url: String = html[at..]
                .chars()
                .take_while(|c| !c.is_whitespace() && !"\"'<>)".contains(*c))
                .collect();
            assert!(
                own_url(&url),
                "page references {url:?} off the server: {html}"
            );
            from = at + scheme.len();
        }
    }
    for attr in ["src", "href", "action", "srcset", "poster", "manifest"] {
        for v in attribute_values(html, attr) {
            let v = v.trim();
            assert!(
                !v.starts_with("//") && (!v.contains("://") || own_url(v)),
                "{attr}={v:?} points off the server"
            );
        }
    }
    assert!(!lower.contains("@import"), "CSS @import in page: {html}");
    let mut rest = lower.as_str();
    while let Some(i) = rest.find("url(") {
        let arg = rest[i + 4..].trim_start_matches(['"', '\'', ' ']);
        assert!(
            !arg.starts_with("//") && !arg.starts_with("http"),
            "CSS url() points off the server: {html}"
        );
        rest = &rest[i + 4..];
    }
}

async fn create(s: &TestServer, key: &str, kind: &str, code: &str) -> Created {
    let q = format!("?language={code}");
    match kind {
        "enroll" => s
            .enroll(key, &q, &json!({"external_id": format!("EMP-{code}")}))
            .await
            .created(),
        _ => s.identify(key, &q).await.created(),
    }
}

#[tokio::test]
async fn pending_page_speaks_the_session_language() {
    let s = TestServer::start().await;
    let (_, key) = s.create_partner("Pages").await;
    for l in &LANGS {
        for kind in ["enroll", "identify"] {
            let c = create(&s, &key, kind, l.code).await;
            assert_eq!(c.path(), format!("/{kind}/{}", c.token()));
            // The browser's language does not override the session's.
            let a = send(s.get(&c.path()).header("accept-language", "de-DE,en;q=0.5")).await;
            assert_html(&s, &a, 200, l.code);
            let title = if kind == "enroll" {
                l.enroll_title
            } else {
                l.identify_title
            };
            for phrase in [title, l.place_palm, l.cancel] {
                assert!(
                    a.text.contains(phrase),
                    "{kind}/{} page lacks {phrase:?}: {}",
                    l.code,
                    a.text
                );
            }
            // Real translations: no phrase of another language leaks in.
            for other in LANGS.iter().filter(|o| o.code != l.code) {
                assert!(
                    !a.text.contains(other.place_palm),
                    "{kind}/{} page contains the {} text",
                    l.code,
                    other.code
                );
            }
            // The Cancel button posts back to this server.
            let actions = attribute_values(&a.text, "action");
            assert!(
                actions.contains(&format!("{}/cancel", c.path()).as_str()),
                "no Cancel form posting to {}/cancel: {actions:?}",
                c.path()
            );
        }
    }
}

#[tokio::test]
async fn tokens_are_long_url_safe_and_never_the_session_id() {
    let s = TestServer::start().await;
    let (_, key) = s.create_partner("Tokens").await;
    let mut tokens = HashSet::new();
    for i in 0..6 {
        let c = if i % 2 == 0 {
            create(&s, &key, "enroll", "en").await
        } else {
            create(&s, &key, "identify", "en").await
        };
        let token = c.token();
        assert!(
            token.len() >= 22,
            "token {token:?} is shorter than 128 bits of base64"
        );
        assert!(
            token
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_'),
            "token {token:?} is not URL-safe"
        );
        assert_ne!(token, c.session_id);
        let simple = c.session_id.replace('-', "");
        assert!(
            !token.contains(&c.session_id) && !token.to_lowercase().contains(&simple),
            "token {token:?} contains the session id {}",
            c.session_id
        );
        assert_eq!(c.url, format!("{}{}", s.public_url, c.path()));
        assert!(tokens.insert(token), "token repeated");
        // The session id is not a token.
        let kind = if i % 2 == 0 { "enroll" } else { "identify" };
        let a = send(s.get(&format!("/{kind}/{}", c.session_id))).await;
        assert_eq!(a.status, 404, "session id accepted as a token");
    }
}

#[tokio::test]
async fn unknown_token_or_wrong_kind_is_404() {
    let s = TestServer::start().await;
    let (_, key) = s.create_partner("Lost").await;
    let enroll = create(&s, &key, "enroll", "ru").await;
    let identify = create(&s, &key, "identify", "kk").await;
    let fake = "A".repeat(43);
    for path in [
        format!("/enroll/{fake}"),
        format!("/identify/{fake}"),
        format!("/enroll/{}", identify.token()),
        format!("/identify/{}", enroll.token()),
        format!("/enroll/{}", &enroll.token()[..enroll.token().len() - 1]),
    ] {
        let a = send(s.get(&path)).await;
        assert_eq!(a.status, 404, "{path}: {}", a.text);
        assert!(a.content_type().starts_with("text/html"), "{path}");
        assert!(a.text.contains("<html lang="), "{path}: {}", a.text);
        assert_self_contained(&a.text, &[&s.base_url, &s.public_url]);
        let a = send(s.get(&path).header("accept", "application/json")).await;
        a.assert_error(404, "not found");
    }
    // Cancelling through the wrong kind's form does nothing.
    let a = send(no_redirect_client().post(s.url(&format!("/enroll/{}/cancel", identify.token()))))
        .await;
    assert_eq!(a.status, 404, "{}", a.text);
    let v = s.session(&key, &identify.session_id).await.json();
    assert_eq!(v["state"], "pending");
    // The right kind still works.
    assert_eq!(send(s.get(&identify.path())).await.status, 200);
    assert_eq!(send(s.get(&enroll.path())).await.status, 200);
}

#[tokio::test]
async fn page_of_a_session_cancelled_by_the_partner_is_410() {
    let s = TestServer::start().await;
    let (_, key) = s.create_partner("Gone").await;
    for l in &LANGS {
        for kind in ["enroll", "identify"] {
            let c = create(&s, &key, kind, l.code).await;
            assert_eq!(s.cancel(&key, &c.session_id).await.status, 200);
            let a = send(s.get(&c.path())).await;
            assert_html(&s, &a, 410, l.code);
            assert!(
                !a.text.contains(l.place_palm),
                "an ended session still asks for a palm"
            );
            let a = send(s.get(&c.path()).header("accept", "application/json")).await;
            assert_eq!(a.status, 410, "{}", a.text);
            assert!(a.content_type().starts_with("application/json"));
            assert!(a.json()["message"].is_string(), "{}", a.text);
        }
    }
}

#[tokio::test]
async fn cancel_button_fails_the_session_and_redirects_to_a_410_page() {
    let s = TestServer::start().await;
    let (_, key) = s.create_partner("Button").await;
    let client = no_redirect_client();
    for kind in ["enroll", "identify"] {
        let c = create(&s, &key, kind, "kk").await;
        let page = send(s.get(&c.path())).await;
        assert_html(&s, &page, 200, "kk");
        let action = attribute_values(&page.text, "action")
            .into_iter()
            .find(|a| a.ends_with("/cancel"))
            .expect("a Cancel form")
            .to_string();

        let a = send(client.post(s.url(&action))).await;
        assert_eq!(a.status, 303, "{}", a.text);
        let location = a.header("location").expect("Location").to_string();
        assert!(
            location == c.path() || location == c.url,
            "redirect to {location:?}, not the page {}",
            c.path()
        );

        let v = s.session(&key, &c.session_id).await.json();
        assert_eq!(v["state"], "failed");
        assert_eq!(v["fail_reason"], "cancelled");

        let a = send(s.get(&c.path())).await;
        assert_html(&s, &a, 410, "kk");
        assert!(a.text.contains("Тексеру тоқтатылды."), "{}", a.text);
        // The partner can no longer cancel it.
        s.cancel(&key, &c.session_id)
            .await
            .assert_error(409, "session is not pending");
    }
}

#[tokio::test]
async fn expired_link_is_400() {
    let s = TestServer::start_with(Options::default().ttl("2s")).await;
    let (_, key) = s.create_partner("Late").await;
    let mut created = Vec::new();
    for l in &LANGS {
        created.push((l, create(&s, &key, "enroll", l.code).await));
        created.push((l, create(&s, &key, "identify", l.code).await));
    }
    // Fresh: open.
    assert_eq!(send(s.get(&created[0].1.path())).await.status, 200);

    for (l, c) in &created {
        let (srv, path) = (&s, c.path());
        let path = path.as_str();
        let a = poll(
            "the link to expire",
            Duration::from_secs(10),
            move || async move {
                let a = send(srv.get(path)).await;
                assert!(
                    a.status == 200 || a.status == 400,
                    "{path}: {} {}",
                    a.status,
                    a.text
                );
                (a.status == 400).then_some(a)
            },
        )
        .await;
        assert_html(&s, &a, 400, l.code);
        assert!(
            a.text.contains(l.expired_title),
            "{path} does not say the link expired: {}",
            a.text
        );
        assert!(!a.text.contains(l.place_palm));

        let a = send(s.get(path).header("accept", "application/json")).await;
        a.assert_error(400, "link expired");
    }
    // The page's cancel form cannot revive or fail it.
    let c = &created[1].1;
    let a = send(no_redirect_client().post(s.url(&format!("{}/cancel", c.path())))).await;
    assert!(
        a.status == 303 || a.status == 400,
        "cancel of an expired link: {} {}",
        a.status,
        a.text
    );
    assert_eq!(send(s.get(&c.path())).await.status, 400);
    let v = s.session(&key, &c.session_id).await.json();
    assert_eq!(v["state"], "expired");
}

#[tokio::test]
async fn completed_session_page_is_410() {
    let mut s = TestServer::prepare(Options::default());
    let p = s
        .seed_partner("Finished", &["EMP-en", "EMP-kk", "EMP-ru"])
        .await;
    s.launch().await;
    let done = [
        ("en", "Verification completed."),
        ("kk", "Тексеру сәтті аяқталды."),
        ("ru", "Проверка успешно завершена."),
    ];
    for u in &p.users {
        let a = send(s.get(&u.path)).await;
        assert_html(&s, &a, 410, &u.language);
        let text = done.iter().find(|(c, _)| *c == u.language).unwrap().1;
        assert!(a.text.contains(text), "{}: {}", u.path, a.text);
        let a = send(s.get(&u.path).header("accept", "application/json")).await;
        assert_eq!(a.status, 410, "{}", a.text);
        assert!(a.content_type().starts_with("application/json"));
        assert!(a.json()["message"].is_string(), "{}", a.text);
        // The enroll token is not an identify token.
        let other = u.path.replacen("/enroll/", "/identify/", 1);
        assert_eq!(send(s.get(&other)).await.status, 404);
    }
}

#[tokio::test]
async fn undecodable_token_is_404() {
    let s = TestServer::start().await;
    for path in ["/enroll/%FF", "/identify/%FF%FE", "/enroll/abc%C3"] {
        let a = send(s.get(path)).await;
        assert_eq!(a.status, 404, "{path}: {} {:?}", a.content_type(), a.text);
        assert!(
            a.content_type().starts_with("text/html"),
            "{path}: Content-Type {:?}",
            a.content_type()
        );
        let a = send(s.get(path).header("accept", "application/json")).await;
        a.assert_error(404, "not found");
    }
}

/// Everything the page loads (scripts, styles, images) is served by the gateway itself.
#[tokio::test]
async fn page_assets_come_from_the_gateway() {
    let s = TestServer::start().await;
    let (_, key) = s.create_partner("Assets").await;
    let c = create(&s, &key, "identify", "ru").await;
    let page = send(s.get(&c.path())).await;
    assert_html(&s, &page, 200, "ru");
    let mut assets: Vec<String> = attribute_values(&page.text, "src")
        .into_iter()
        .map(str::to_string)
        .collect();
    // Stylesheets and icons linked from <link>.
    let lower = page.text.to_ascii_lowercase();
    for (i, _) in lower.match_indices("<link") {
        let tag = &page.text[i..i + page.text[i..].find('>').unwrap_or(0)];
        assets.extend(
            attribute_values(tag, "href")
                .into_iter()
                .map(str::to_string),
        );
    }
    for src in assets {
        let path = src
            .strip_prefix(&s.public_url)
            .or_else(|| src.strip_prefix(&s.base_url))
            .unwrap_or(&src)
            .to_string();
        assert!(path.starts_with('/'), "asset {src:?} is not on the server");
        let a = send(s.get(&path)).await;
        assert_eq!(a.status, 200, "asset {path}: {}", a.text);
        assert!(!a.text.is_empty(), "asset {path} is empty");
    }
}

/// The page tells the link's deadline in UTC until a site policy names the site's time zone,
/// then in the site's local time (README, "Hosted pages").
#[tokio::test]
async fn page_times_are_in_the_site_zone_once_a_policy_names_it() {
    let s = TestServer::start().await;
    let (_, key) = s.create_partner("Zone").await;
    let c = create(&s, &key, "identify", "ru").await;
    let expires = chrono::DateTime::parse_from_rfc3339(&c.expires_at).expect("expires_at");
    let page = send(s.get(&c.path())).await;
    let utc = expires
        .with_timezone(&chrono::Utc)
        .format("%H:%M UTC")
        .to_string();
    assert!(page.text.contains(&utc), "{utc} in {}", page.text);

    let r = send(
        s.client
            .put(s.url("/admin/v1/policy"))
            .bearer_auth(ADMIN_TOKEN)
            .body("timezone = \"Asia/Almaty\"\n"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let page = send(s.get(&c.path())).await;
    let tz: chrono_tz::Tz = "Asia/Almaty".parse().unwrap();
    let local = expires.with_timezone(&tz).format("%H:%M %Z").to_string();
    assert!(page.text.contains(&local), "{local} in {}", page.text);
    assert!(!page.text.contains(&utc), "still UTC: {}", page.text);
}

/// Reads server-sent events from `r` until one with data arrives; returns its data.
async fn next_sse_data(r: &mut reqwest::Response, buf: &mut String) -> String {
    loop {
        if let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            let data: Vec<&str> = event
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            if !data.is_empty() {
                return data.join("\n");
            }
            continue;
        }
        let chunk = tokio::time::timeout(Duration::from_secs(10), r.chunk())
            .await
            .expect("no server-sent event within 10 s")
            .expect("event stream broke")
            .expect("event stream ended");
        buf.push_str(&String::from_utf8_lossy(&chunk).replace("\r\n", "\n"));
    }
}

/// SPEC 3: the page shows live progress. The page names its event stream; it reports the
/// pending state at once and the end of the session when it happens.
#[tokio::test]
async fn page_follows_the_session_live() {
    let s = TestServer::start().await;
    let (_, key) = s.create_partner("Live").await;
    let c = create(&s, &key, "enroll", "en").await;
    let page = send(s.get(&c.path())).await;
    assert_html(&s, &page, 200, "en");
    let events = attribute_values(&page.text, "data-events")
        .first()
        .map(|e| e.to_string())
        .expect("the page names no live event stream (data-events)");
    assert!(
        events.starts_with('/'),
        "event stream {events:?} is not on the server"
    );

    let mut r = s
        .get(&events)
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("event stream");
    assert_eq!(r.status().as_u16(), 200);
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(ct.starts_with("text/event-stream"), "Content-Type {ct:?}");
    let mut buf = String::new();
    let first: serde_json::Value =
        serde_json::from_str(&next_sse_data(&mut r, &mut buf).await).expect("JSON event");
    assert_eq!(first["state"], "pending", "{first}");

    assert_eq!(s.cancel(&key, &c.session_id).await.status, 200);
    let ended = loop {
        let v: serde_json::Value =
            serde_json::from_str(&next_sse_data(&mut r, &mut buf).await).expect("JSON event");
        if v["state"] != "pending" {
            break v;
        }
    };
    assert_eq!(ended["state"], "failed", "{ended}");
    assert_eq!(ended["fail_reason"], "cancelled", "{ended}");

    // The session has ended: its stream ends after saying so.
    let end = tokio::time::timeout(Duration::from_secs(10), r.chunk())
        .await
        .expect("the stream of an ended session must end")
        .expect("event stream broke");
    assert!(end.is_none(), "more after the end: {end:?}");

    // Another kind's path or an unknown token has no stream.
    let wrong = events.replacen("/enroll/", "/identify/", 1);
    assert_eq!(send(s.get(&wrong)).await.status, 404);
}

/// A link's holder cannot hold the gateway's connections: the stream of an ended session says
/// how it ended and closes, and a pending session has at most 4 streams open at once.
#[tokio::test]
async fn page_streams_are_bounded_and_end_with_the_session() {
    let s = TestServer::start().await;
    let (_, key) = s.create_partner("Streams").await;
    let c = create(&s, &key, "identify", "en").await;
    let events = format!("{}/events", c.path());
    let open = || async {
        s.get(&events)
            .header("accept", "text/event-stream")
            .send()
            .await
            .expect("event stream")
    };
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut r = open().await;
        assert_eq!(r.status().as_u16(), 200);
        let mut buf = String::new();
        let first: serde_json::Value =
            serde_json::from_str(&next_sse_data(&mut r, &mut buf).await).expect("JSON event");
        assert_eq!(first["state"], "pending", "{first}");
        held.push(r);
    }
    let fifth = open().await;
    assert_eq!(
        fifth.status().as_u16(),
        429,
        "a fifth stream of one session"
    );
    drop(fifth);
    // One closed by its page: room for another.
    drop(held.pop());
    let mut again = None;
    for _ in 0..50 {
        let r = open().await;
        if r.status().as_u16() == 200 {
            again = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(again.is_some(), "a closed stream frees its place");

    // Ended: one event, then the stream closes, however many ask.
    assert_eq!(s.cancel(&key, &c.session_id).await.status, 200);
    for _ in 0..6 {
        let r = open().await;
        assert_eq!(r.status().as_u16(), 200);
        let body = tokio::time::timeout(Duration::from_secs(10), r.text())
            .await
            .expect("the stream of an ended session must end")
            .expect("body");
        assert!(body.contains("\"state\":\"failed\""), "{body}");
        assert_eq!(body.matches("data:").count(), 1, "{body}");
    }
}

/// A page URL answers HTML or JSON by `Accept`: neither variant is stored by a cache (the page
/// carries the session's state and its URL is a credential), and every answer says it varies
/// by `Accept`, so no cache hands the JSON to a browser or the HTML to a script.
#[tokio::test]
async fn both_page_variants_are_not_stored_and_vary_by_accept() {
    let s = TestServer::start().await;
    let (_, key) = s.create_partner("Caches").await;
    let c = create(&s, &key, "enroll", "en").await;
    let fake = format!("/identify/{}", "A".repeat(43));
    for (path, status) in [(c.path(), 200), (fake, 404)] {
        for accept in ["text/html", "application/json"] {
            let a = send(s.get(&path).header("accept", accept)).await;
            assert_eq!(a.status, status, "{path} as {accept}: {}", a.text);
            assert_eq!(
                a.header("cache-control"),
                Some("no-store"),
                "{path} as {accept}: Cache-Control"
            );
            let vary: Vec<String> = a
                .headers
                .get_all("vary")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(|v| v.trim().to_ascii_lowercase())
                .collect();
            assert!(
                vary.iter().any(|v| v == "accept" || v == "*"),
                "{path} as {accept}: Vary {vary:?} does not name Accept"
            );
        }
    }
}
