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
        assert!(
            a.text.contains("<h1>Тексеру тоқтатылды</h1>")
                && a.text.contains("Сілтеме бұрын пайдаланылған."),
            "{}",
            a.text
        );
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
        // The outcome is the title and the heading (a screen reader announces it first); that
        // the link is spent follows in the text.
        let outcome = text.trim_end_matches('.');
        assert!(
            a.text.contains(&format!("<title>{outcome}</title>"))
                && a.text.contains(&format!("<h1>{outcome}</h1>")),
            "{}: {}",
            u.path,
            a.text
        );
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

/// A reader pick over the address's budget (SPEC 2): a person's browser gets the page of its
/// session, in the session's language, saying how long to wait, with the 429 and its
/// `Retry-After`; a JSON caller keeps the JSON answer.
#[tokio::test]
async fn a_rate_limited_reader_pick_shows_the_page_in_its_language() {
    let s = TestServer::start_with(Options::default().unauthenticated_per_minute(2)).await;
    let (_, key) = s.create_partner("Budget").await;
    let c = create(&s, &key, "enroll", "kk").await;
    let pick = format!("{}?reader=no-such-reader", c.path());
    let mut refused = None;
    for _ in 0..10 {
        let a = send(s.get(&pick)).await;
        if a.status == 429 {
            refused = Some(a);
            break;
        }
        assert_eq!(a.status, 200, "{}", a.text);
    }
    let a = refused.expect("the address's budget never ran out");
    assert_html(&s, &a, 429, "kk");
    let wait = a.retry_after();
    assert!(wait >= 1, "Retry-After {wait}");
    let kk = &LANGS[1];
    for phrase in [
        kk.enroll_title,
        kk.place_palm,
        "Бұл желіден әрекет тым көп болды.",
        &format!("{wait} секунд күтіп"),
    ] {
        assert!(a.text.contains(phrase), "no {phrase:?}: {}", a.text);
    }
    assert!(!a.text.contains("rate limit exceeded"), "{}", a.text);
    assert_eq!(a.header("cache-control"), Some("no-store"));

    let a = send(s.get(&pick).header("accept", "application/json")).await;
    a.assert_error(429, "rate limit exceeded");
    assert!(
        a.header("retry-after").is_some(),
        "JSON 429 without Retry-After"
    );
}

/// Writes a partner and, per `(language, reason)`, an enroll session that failed for that
/// reason into the log before the server starts; returns the pages' paths.
async fn seed_failed(s: &TestServer, cases: &[(&str, &str)]) -> Vec<String> {
    use palmgate::app::clock::{OsRng, Rng};
    use palmgate::app::secrets::{Keys, hash_secret, new_api_key};
    use palmgate::core::event::stream;
    use palmgate::core::{Event, Expected, PartnerId, SessionId, StreamAppend};
    use palmgate::store::{EventStore, SqliteStore};
    let rng = OsRng;
    let keys =
        Keys::load_or_create(&s.dir().join("master.key"), None, rng.bytes32()).expect("master key");
    let partner_id = PartnerId::from_random(rng.bytes16());
    let now = chrono::Utc::now();
    let created = now - chrono::Duration::minutes(1);
    let event = |kind: &str, data: serde_json::Value| {
        Event::decode(kind, 1, data).unwrap_or_else(|e| panic!("seed event {kind}: {e}"))
    };
    let mut batch = vec![StreamAppend {
        stream: stream::partner(partner_id),
        expected: Expected::NoStream,
        events: vec![event(
            "PartnerCreated",
            json!({
                "partner_id": partner_id,
                "name": "Failures",
                "api_key_hash": hash_secret(&new_api_key(rng.bytes32())),
                "at": created,
            }),
        )],
    }];
    let mut paths = Vec::new();
    for (i, (language, reason)) in cases.iter().enumerate() {
        let session_id = SessionId::from_random(rng.bytes16());
        let token = keys.session_token(session_id);
        batch.push(StreamAppend {
            stream: stream::session(session_id),
            expected: Expected::NoStream,
            events: vec![
                event(
                    "SessionCreated",
                    json!({
                        "session_id": session_id,
                        "partner_id": partner_id,
                        "kind": "enroll",
                        "language": language,
                        "token_hash": hash_secret(&token),
                        "external_id": format!("EMP-{i}"),
                        "username": format!("User {i}"),
                        "metadata": { "access_level": "standard" },
                        "created_at": created,
                        "expires_at": created + chrono::Duration::minutes(15),
                    }),
                ),
                event(
                    "SessionFailed",
                    json!({ "session_id": session_id, "reason": reason, "at": now }),
                ),
            ],
        });
        paths.push(format!("/enroll/{token}"));
    }
    let store = SqliteStore::open(s.store_path()).expect("open store");
    store.append(batch, now).await.expect("seed append");
    drop(store);
    paths
}

/// SPEC 4's fail reasons reach the person: the result page says why the session failed and
/// what to do, in the session's language.
#[tokio::test]
async fn a_failed_sessions_page_says_why_in_its_language() {
    let mut s = TestServer::prepare(Options::default());
    let cases = [
        ("en", "already_enrolled", "This palm is already enrolled."),
        ("kk", "already_enrolled", "Бұл алақан бұрын тіркелген."),
        ("ru", "already_enrolled", "Эта ладонь уже зарегистрирована."),
        ("en", "reader_offline", "The scanner went offline."),
        ("kk", "reader_offline", "Сканер желіден ажырап қалды."),
        (
            "ru",
            "low_quality",
            "Сканы получились недостаточно чёткими.",
        ),
        ("kk", "liveness_failed", "Сканер тірі қолды растай алмады."),
        ("en", "no_match", "Your palm was not recognised."),
    ];
    let seeded: Vec<(&str, &str)> = cases.iter().map(|(l, r, _)| (*l, *r)).collect();
    let paths = seed_failed(&s, &seeded).await;
    s.launch().await;
    for ((lang, reason, why), path) in cases.iter().zip(&paths) {
        let a = send(s.get(path)).await;
        assert_html(&s, &a, 410, lang);
        assert!(
            a.text.contains(why),
            "{lang}/{reason}: no {why:?}: {}",
            a.text
        );
        // Only its own reason.
        for (_, other, text) in cases.iter().filter(|c| c.1 != *reason) {
            assert!(
                !a.text.contains(text),
                "{lang}/{reason} says {other}: {}",
                a.text
            );
        }
    }
}

/// The `<noscript>` refresh of a page: its URL, or `None`.
fn noscript_refresh(html: &str) -> Option<String> {
    let start = html.find("<noscript>")?;
    let end = start + html[start..].find("</noscript>")?;
    let inner = &html[start..end];
    if !inner.contains("http-equiv=\"refresh\"") {
        return None;
    }
    let content = attribute_values(inner, "content").first()?.to_string();
    Some(content)
}

/// Without JavaScript an open page still shows progress and the result: it refreshes itself
/// every 5 s at its URL without `?reader=` (a refresh must not arm the reader again). The
/// ended pages do not.
#[tokio::test]
async fn an_open_page_refreshes_itself_without_javascript() {
    let s = TestServer::start().await;
    let (_, key) = s.create_partner("NoScript").await;
    for kind in ["enroll", "identify"] {
        let c = create(&s, &key, kind, "ru").await;
        let want = format!("5;url={}", c.path());
        for path in [c.path(), format!("{}?reader=desk-1", c.path())] {
            let a = send(s.get(&path)).await;
            assert_html(&s, &a, 200, "ru");
            assert_eq!(
                noscript_refresh(&a.text).as_deref(),
                Some(want.as_str()),
                "{path}: {}",
                a.text
            );
        }
        assert_eq!(s.cancel(&key, &c.session_id).await.status, 200);
        let a = send(s.get(&c.path())).await;
        assert_html(&s, &a, 410, "ru");
        assert!(!a.text.contains("http-equiv"), "{}", a.text);
    }
    let a = send(s.get(&format!("/enroll/{}", "A".repeat(43)))).await;
    assert_eq!(a.status, 404);
    assert!(!a.text.contains("http-equiv"), "{}", a.text);
}

/// A reader id of up to 128 characters without a space (`_ . :`) must not scroll a 360 px
/// phone sideways: the reader buttons (and the card that names the reader) wrap anywhere and
/// never grow past their box. (Asserted on the style: the browser check runs only with
/// Chromium, and its scripts are not part of this suite.)
#[tokio::test]
async fn long_reader_ids_wrap_on_a_phone() {
    let s = TestServer::start().await;
    let (_, key) = s.create_partner("Phone").await;
    let c = create(&s, &key, "identify", "en").await;
    let a = send(s.get(&c.path())).await;
    assert_html(&s, &a, 200, "en");
    let style = a
        .text
        .split("<style>")
        .nth(1)
        .and_then(|x| x.split("</style>").next())
        .expect("an inline style");
    let rule = |selector: &str| -> String {
        let at = style
            .find(&format!("{selector}{{"))
            .unwrap_or_else(|| panic!("no {selector} rule in {style}"));
        style[at..].split('}').next().unwrap_or("").to_string()
    };
    let reader = rule(".reader");
    for decl in [
        "max-width:100%",
        "overflow-wrap:anywhere",
        "box-sizing:border-box",
    ] {
        assert!(reader.contains(decl), ".reader lacks {decl}: {reader}");
    }
    let card = rule(".card");
    let wraps =
        card.contains("overflow-wrap:anywhere") || style.contains(".card{overflow-wrap:anywhere");
    assert!(
        wraps,
        "the card (status line naming the reader) does not wrap: {style}"
    );
}

/// A pending session past its deadline is expired as of now, even before the expiry event is
/// written (README, "Hosted pages"): its page's stream says `expired` at the deadline and
/// ends, and a stream opened later says so at once. palmgate runs in-process on a manual clock
/// with no deadline task, so the expiry event is never written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_stream_ends_at_the_deadline_before_the_expiry_is_written() {
    use palmgate::app::clock::{ManualClock, OsRng};
    use palmgate::core::session::SessionState;
    use std::sync::Arc;
    let dir = tempfile::tempdir().expect("tempdir");
    let p = |name: &str| {
        let s = dir.path().join(name).display().to_string();
        format!("'{s}'")
    };
    let toml = format!(
        "[http]\nlisten = \"127.0.0.1:0\"\n\
         [store]\npath = {}\n\
         [secrets]\nkey_file = {}\nkey_store = {}\n\
         [mqtt.embedded]\nlisten = \"127.0.0.1:0\"\n\
         [admin]\ntoken = \"{ADMIN_TOKEN}\"\n",
        p("events.db"),
        p("master.key"),
        p("keys.db"),
    );
    let path = dir.path().join("palmgate.toml");
    std::fs::write(&path, toml).expect("write config");
    let config = palmgate::config::Config::load(Some(&path), &[]).expect("config loads");
    let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
    let server = palmgate::app::start_with(config, clock.clone(), Arc::new(OsRng))
        .await
        .expect("server starts");
    let app = server.app.clone();
    // The HTTP routes alone: no deadline task, so no `SessionExpired` is ever written.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let limits = palmgate::http::serve::Limits {
        header: Duration::from_secs(10),
        body: Duration::from_secs(10),
    };
    tokio::spawn(palmgate::http::serve::serve(
        listener,
        None,
        limits,
        palmgate::http::router(app.clone()),
        std::future::pending(),
    ));
    let http = no_redirect_client();
    let r = http
        .post(format!("{base}/admin/v1/partners"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"name": "Deadline"}))
        .send()
        .await
        .expect("create partner");
    let partner = Answer::read(r).await;
    assert_eq!(partner.status, 201, "{}", partner.text);
    let key = partner.json()["api_key"]
        .as_str()
        .expect("api_key")
        .to_string();
    let r = http
        .post(format!("{base}/v1/enroll?language=kk"))
        .header("x-api-key", &key)
        .json(&json!({"external_id": "EMP-late"}))
        .send()
        .await
        .expect("enroll");
    let c = Answer::read(r).await.created();
    let expires = chrono::DateTime::parse_from_rfc3339(&c.expires_at)
        .expect("expires_at")
        .with_timezone(&chrono::Utc);
    let events = format!("{base}{}/events", c.path());

    let mut r = http.get(&events).send().await.expect("event stream");
    assert_eq!(r.status().as_u16(), 200);
    let mut buf = String::new();
    let first: serde_json::Value =
        serde_json::from_str(&next_sse_data(&mut r, &mut buf).await).expect("JSON event");
    assert_eq!(first["state"], "pending", "{first}");

    clock.set(expires);
    let ended: serde_json::Value =
        serde_json::from_str(&next_sse_data(&mut r, &mut buf).await).expect("JSON event");
    assert_eq!(ended["state"], "expired", "{ended}");
    let end = tokio::time::timeout(Duration::from_secs(10), r.chunk())
        .await
        .expect("the stream of an expired session must end")
        .expect("event stream broke");
    assert!(end.is_none(), "more after the deadline: {end:?}");

    // Not written: the stored session is still pending.
    let hash = palmgate::app::secrets::hash_secret(&c.token());
    let stored = app.read(|st| st.session_by_token_hash(&hash).map(|s| s.state));
    assert_eq!(stored, Some(SessionState::Pending));

    // A stream opened now says `expired` at once and ends; the page is its 400.
    let body = tokio::time::timeout(
        Duration::from_secs(10),
        http.get(&events).send().await.expect("stream").text(),
    )
    .await
    .expect("the stream of an expired session must end")
    .expect("body");
    assert!(body.contains("\"state\":\"expired\""), "{body}");
    assert_eq!(body.matches("data:").count(), 1, "{body}");
    let page = http
        .get(format!("{base}{}", c.path()))
        .send()
        .await
        .expect("page");
    assert_eq!(page.status().as_u16(), 400);
    drop(server);
}
