//! Hosted pages (SPEC 3): `GET /enroll/{token}`, `GET /identify/{token}`, and the Cancel form.
//!
//! 200 while pending; 400 "link expired"; 410 once completed or failed; 404 for an unknown
//! token (or a token used under the other kind's path). HTML in the session's language, or JSON
//! when the client asks for it. Nothing is loaded from outside the server.

use super::Path;
use super::error::message;
use super::i18n::{Catalog, catalog, from_accept_language};
use crate::app::App;
use crate::app::secrets::hash_secret;
use crate::core::session::{PageView, Session, SessionState};
use crate::core::{Command, Language, SessionKind};
use axum::extract::rejection::PathRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use std::collections::HashMap;
use std::sync::Arc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;

/// JSON when the client prefers it to HTML (RFC 9110 §12.5.1: each type's weight is the `q`
/// of the most specific range that matches it); at equal weights, JSON when it names JSON
/// more precisely than HTML (`application/json, */*`, as HTTP libraries send); otherwise, with
/// no `Accept`, or one that cannot be read, HTML.
fn wants_json(headers: &HeaderMap) -> bool {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let (json_q, json_s) = accept_weight(accept, "application", "json");
    let (html_q, html_s) = accept_weight(accept, "text", "html");
    json_q > 0.0 && (json_q, json_s) > (html_q, html_s)
}

/// The weight `accept` gives `kind/sub` (0 when no range matches it), and how specific the
/// range that gave it is (2 the type itself, 1 `kind/*`, 0 `*/*` or none).
fn accept_weight(accept: &str, kind: &str, sub: &str) -> (f32, u8) {
    // (specificity, q) of the best match: 2 the type itself, 1 `kind/*`, 0 `*/*`.
    let mut best: Option<(u8, f32)> = None;
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim();
        let Some((k, s)) = media.split_once('/') else {
            continue;
        };
        // Media types are case-insensitive (RFC 9110 §8.3.1).
        let specificity = match (k.trim(), s.trim()) {
            ("*", "*") => 0,
            (k, "*") if k.eq_ignore_ascii_case(kind) => 1,
            (k, s) if k.eq_ignore_ascii_case(kind) && s.eq_ignore_ascii_case(sub) => 2,
            _ => continue,
        };
        let q = parts
            .filter_map(|p| p.split_once('='))
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("q"))
            .map_or(Some(1.0), |(_, v)| v.trim().parse::<f32>().ok())
            .filter(|q| (0.0..=1.0).contains(q))
            .unwrap_or(0.0);
        if best.is_none_or(|(b, _)| specificity > b) {
            best = Some((specificity, q));
        }
    }
    best.map_or((0.0, 0), |(specificity, q)| (q, specificity))
}

fn find(app: &App, kind: SessionKind, token: &str) -> Option<Session> {
    let h = hash_secret(token);
    app.read(|s| {
        s.session_by_token_hash(&h)
            .filter(|s| s.kind == kind)
            .cloned()
    })
}

pub async fn enroll_page(
    State(app): State<Arc<App>>,
    token: Result<axum::extract::Path<String>, PathRejection>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    ext: axum::http::Extensions,
) -> Response {
    // A token that does not even decode is simply unknown: the page's own 404.
    let token = token.map(|t| t.0).unwrap_or_default();
    let ip = super::auth::client_ip(&ext);
    arm_then_page(
        &app,
        SessionKind::Enroll,
        &token,
        q.get("reader"),
        &headers,
        ip,
    )
    .await
}

pub async fn identify_page(
    State(app): State<Arc<App>>,
    token: Result<axum::extract::Path<String>, PathRejection>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    ext: axum::http::Extensions,
) -> Response {
    let token = token.map(|t| t.0).unwrap_or_default();
    let ip = super::auth::client_ip(&ext);
    arm_then_page(
        &app,
        SessionKind::Identify,
        &token,
        q.get("reader"),
        &headers,
        ip,
    )
    .await
}

/// `?reader=ID` arms that reader at once (it gets the `capture` command), then shows the page.
async fn arm_then_page(
    app: &App,
    kind: SessionKind,
    token: &str,
    reader: Option<&String>,
    headers: &HeaderMap,
    ip: std::net::IpAddr,
) -> Response {
    let mut notice_key = None;
    let now = app.clock.now();
    let json = wants_json(headers);
    // A page reloaded for the reader its session holds changes nothing; one whose session lost
    // the reader (its hold lapsed, or another session took it) asks for it again.
    if let (Some(reader), Some(s)) = (reader, find(app, kind, token))
        && s.is_open(now)
        && !app.read(|st| {
            st.session_holding_reader(&crate::core::ReaderId(reader.clone()), now)
                .is_some_and(|h| h.id == s.id)
        })
    {
        // Each arming is an event and a command to a reader: it spends the address's budget
        // for calls without an API key, so a link cannot flood the log or the readers.
        let v = super::auth::spend_address(app, ip, app.clock.now().timestamp_micros());
        if !v.allowed {
            let refused = super::error::ApiError::RateLimited {
                retry_after_s: v.retry_after_s,
            }
            .into_response();
            if json {
                return page_headers(refused);
            }
            // A person's browser gets the page, in the session's language, saying how long to
            // wait; the status and `Retry-After` stay those of the refusal.
            let notice = Notice::RateLimited(v.retry_after_s.max(1));
            return with_status_of(page(app, kind, token, headers, Some(notice)), &refused);
        }

        // Without the broker the reader cannot hear the command: refused as for an offline
        // reader, with nothing recorded (the session would wait in vain until it expires). So
        // is a reader not heard from since a restart, during the grace that decides whether it
        // is gone ([`App::reader_unconfirmed`]).
        let reader_id = crate::core::ReaderId(reader.clone());
        let armed = if app.mqtt_up.load(std::sync::atomic::Ordering::Relaxed)
            && !app.reader_unconfirmed(&reader_id)
        {
            let cmd = Command::ArmReader {
                session_id: s.id,
                reader_id,
            };
            app.execute(cmd).await
        } else {
            Err(crate::app::AppError::Rejected(
                crate::core::Rejection::ReaderOffline,
            ))
        };
        match armed {
            Ok(_) => {}
            Err(crate::app::AppError::Rejected(crate::core::Rejection::ReaderOffline)) => {
                notice_key = Some(Notice::ReaderOffline)
            }
            Err(crate::app::AppError::Rejected(crate::core::Rejection::ReaderBusy)) => {
                notice_key = Some(Notice::ReaderBusy)
            }
            Err(crate::app::AppError::Rejected(_)) => {}
            Err(e) => {
                let failed = super::error::ApiError::from(e).into_response();
                if json {
                    return page_headers(failed);
                }
                let notice = Some(Notice::ServerError);
                return with_status_of(page(app, kind, token, headers, notice), &failed);
            }
        }
    }
    page(app, kind, token, headers, notice_key)
}

/// Every answer of a page URL, HTML or JSON (the URL answers both, by `Accept`): not stored
/// (it carries the session's state and the link is a credential), and `Vary: Accept` so no
/// cache hands one variant to a client that asked for the other.
fn page_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.append(header::VARY, HeaderValue::from_static("accept"));
    resp
}

/// The HTML page standing in for an error answer (`failed`): its status and `Retry-After`,
/// when the page itself would have been a 200 (an ended session's page keeps its own 400/410).
fn with_status_of(mut page: Response, failed: &Response) -> Response {
    if page.status() == StatusCode::OK {
        *page.status_mut() = failed.status();
        if let Some(v) = failed.headers().get(header::RETRY_AFTER) {
            page.headers_mut().insert(header::RETRY_AFTER, v.clone());
        }
    }
    page
}

#[derive(Clone, Copy)]
enum Notice {
    ReaderOffline,
    ReaderBusy,
    /// Over the address's budget: wait this many seconds.
    RateLimited(i64),
    /// The server could not do what the page asked (e.g. the log could not be written).
    ServerError,
}

fn page(
    app: &App,
    kind: SessionKind,
    token: &str,
    headers: &HeaderMap,
    notice_key: Option<Notice>,
) -> Response {
    page_headers(page_body(app, kind, token, headers, notice_key))
}

fn page_body(
    app: &App,
    kind: SessionKind,
    token: &str,
    headers: &HeaderMap,
    notice_key: Option<Notice>,
) -> Response {
    let json = wants_json(headers);
    let Some(s) = find(app, kind, token) else {
        if json {
            return message(StatusCode::NOT_FOUND, "not found");
        }
        let lang = from_accept_language(
            headers
                .get(header::ACCEPT_LANGUAGE)
                .and_then(|v| v.to_str().ok()),
        );
        let c = catalog(lang);
        return html(
            StatusCode::NOT_FOUND,
            lang,
            c.not_found_title,
            &notice(c.not_found_body),
        );
    };
    let c = catalog(s.language);
    match s.page_view(app.clock.now()) {
        PageView::Expired if json => message(StatusCode::BAD_REQUEST, "link expired"),
        PageView::Expired => html(
            StatusCode::BAD_REQUEST,
            s.language,
            c.expired_title,
            &notice(c.expired_body),
        ),
        PageView::Gone if json => message(StatusCode::GONE, "link already used"),
        PageView::Gone => {
            use crate::core::FailReason as R;
            // Why it failed and what the person can do, in a sentence of its own.
            let (outcome, why) = match (s.state, s.fail_reason) {
                (SessionState::Completed, _) => (c.completed, None),
                (_, Some(R::Cancelled)) => (c.cancelled, None),
                (_, Some(R::NoMatch)) => (c.failed, Some(c.fail_no_match)),
                (_, Some(R::AlreadyEnrolled)) => (c.failed, Some(c.fail_already_enrolled)),
                (_, Some(R::LowQuality)) => (c.failed, Some(c.fail_low_quality)),
                (_, Some(R::LivenessFailed)) => (c.failed, Some(c.fail_liveness_failed)),
                (_, Some(R::ReaderOffline)) => (c.failed, Some(c.fail_reader_offline)),
                (_, None) => (c.failed, None),
            };
            // The outcome is the page's title and heading: a person who has just scanned hears
            // "Verification completed", not "Link already used" (accessibility review, session
            // 24); that the link is spent follows in the text.
            let body = format!(
                "{}{}",
                why.map(notice).unwrap_or_default(),
                notice(&format!("{}. {}", c.gone_title, c.gone_body))
            );
            html(
                StatusCode::GONE,
                s.language,
                outcome.trim_end_matches('.'),
                &body,
            )
        }
        PageView::Open if json => {
            axum::Json(super::pass_api::session_body(&s, app.clock.now())).into_response()
        }
        PageView::Open => {
            let readers = online_readers(app);
            let now = app.clock.now();
            let (zone, held) = app.read(|st| {
                (
                    st.policy.as_ref().map(|p| p.timezone),
                    reader_status(st, &s, now),
                )
            });
            let mut body = open_body(c, &s, token, &readers, zone, held);
            match notice_key {
                Some(Notice::ReaderOffline) => body = format!("{}{body}", notice(c.reader_offline)),
                Some(Notice::ReaderBusy) => body = format!("{}{body}", notice(c.reader_busy)),
                Some(Notice::RateLimited(secs)) => {
                    let text = c.rate_limited.replace("{seconds}", &secs.to_string());
                    body = format!("{}{body}", alert(&text))
                }
                Some(Notice::ServerError) => body = format!("{}{body}", alert(c.server_error)),
                None => {}
            }
            // Without JavaScript the page reloads itself every 5 s to show progress and the
            // result; at its own URL without `?reader=`, so a reload does not arm again.
            let head = format!(
                r#"<noscript><meta http-equiv="refresh" content="5;url=/{}/{}"></noscript>"#,
                kind.as_str(),
                esc(token)
            );
            html_with_head(StatusCode::OK, s.language, title(c, kind), &head, &body)
        }
    }
}

fn title(c: &Catalog, kind: SessionKind) -> &'static str {
    match kind {
        SessionKind::Enroll => c.enroll_title,
        SessionKind::Identify => c.identify_title,
    }
}

/// Where a session stands with the reader it was armed for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReaderStatus {
    /// It holds the reader: the page says the scanner is ready.
    Held,
    /// Another session holds it now (took it over, or armed it after this one's hold lapsed):
    /// a palm scanned there goes to that session, so the page says the scanner is busy.
    Busy,
    /// No reader, or its hold lapsed and nobody holds the reader: waiting for one to be chosen.
    Waiting,
}

impl ReaderStatus {
    fn as_str(self) -> &'static str {
        match self {
            ReaderStatus::Held => "ready",
            ReaderStatus::Busy => "busy",
            ReaderStatus::Waiting => "waiting",
        }
    }
}

/// Whether `s` still holds its reader at `now` ([`crate::core::State::session_holding_reader`]):
/// a session's `reader_id` stays set after another session took the reader.
fn reader_status(
    st: &crate::core::State,
    s: &Session,
    now: chrono::DateTime<chrono::Utc>,
) -> ReaderStatus {
    let Some(r) = &s.reader_id else {
        return ReaderStatus::Waiting;
    };
    match st.session_holding_reader(r, now) {
        Some(h) if h.id == s.id => ReaderStatus::Held,
        Some(_) => ReaderStatus::Busy,
        None => ReaderStatus::Waiting,
    }
}

/// The readers a page may offer: online, and in no door (a door's reader is never armed for a
/// partner's session; a kiosk's page names its own reader). None while the gateway is not
/// connected to the MQTT broker: a reader's last status says nothing then, and it could not
/// hear the capture command. Nor one not yet heard from since a restart
/// ([`App::reader_unconfirmed`]).
fn online_readers(app: &App) -> Vec<String> {
    if !app.mqtt_up.load(std::sync::atomic::Ordering::Relaxed) {
        return Vec::new();
    }
    let mut ids: Vec<String> = app.read(|s| {
        s.readers()
            .filter(|r| r.online && !app.reader_unconfirmed(&r.id))
            .filter(|r| {
                s.policy
                    .as_ref()
                    .is_none_or(|p| p.door_of_reader(&r.id).is_none())
            })
            .map(|r| r.id.0.clone())
            .collect()
    });
    ids.sort();
    ids
}

fn open_body(
    c: &Catalog,
    s: &Session,
    token: &str,
    readers: &[String],
    zone: Option<chrono_tz::Tz>,
    held: ReaderStatus,
) -> String {
    // The site's local time once a site policy names its time zone (with the zone's
    // abbreviation, e.g. "12:54 +05"); UTC until then.
    let time = match zone {
        Some(tz) => s
            .expires_at
            .with_timezone(&tz)
            .format("%H:%M %Z")
            .to_string(),
        None => s.expires_at.format("%H:%M UTC").to_string(),
    };
    let kind = s.kind.as_str();
    // "Ready" only while the session still holds its reader: once another session has taken
    // it, a palm scanned there would go to that other session.
    let status = match (&s.reader_id, held) {
        (Some(r), ReaderStatus::Held) => c.armed.replace("{reader}", &r.0),
        (Some(_), ReaderStatus::Busy) => c.reader_busy.to_string(),
        _ => c.waiting.to_string(),
    };
    // A kiosk's site session stays at the reader that started it: no picker to move it.
    let picker = if s.partner_id.is_none() {
        String::new()
    } else if readers.is_empty() {
        notice(c.no_readers)
    } else {
        let items: String = readers
            .iter()
            .map(|r| {
                let current = held == ReaderStatus::Held
                    && s.reader_id.as_ref().is_some_and(|x| &x.0 == r);
                format!(
                    r#"<li><a class="reader{cls}" href="/{kind}/{token}?reader={id}"{aria}>{id}</a></li>"#,
                    cls = if current { " current" } else { "" },
                    aria = if current { r#" aria-current="true""# } else { "" },
                    token = esc(token),
                    id = esc(r),
                )
            })
            .collect();
        format!(
            "<p>{}</p><ul class=\"readers\">{items}</ul>",
            esc(c.choose_reader)
        )
    };
    format!(
        r#"<div class="palm" aria-hidden="true"><svg viewBox="0 0 64 64" width="72" height="72" fill="currentColor"><rect x="20" y="10" width="7" height="26" rx="3.5"/><rect x="28.5" y="5" width="7" height="31" rx="3.5"/><rect x="37" y="7" width="7" height="29" rx="3.5"/><rect x="45.5" y="13" width="7" height="24" rx="3.5"/><path d="M20 30h32.5v10c0 11-8 19-18 19-7 0-12-4-15-10l-7-12c-1.5-2.5 1.5-5 4-3l3.5 4z"/></svg></div>
<h2>{place}</h2>
<p>{hint}</p>
{picker}
<p id="status" class="status" role="status" aria-live="polite" data-events="/{kind}/{token}/events" data-retry="{retry}" data-armed="{armed}" data-reader-status="{reader_status}">{status}</p>
<p class="muted">{expires}</p>
<form method="post" action="/{kind}/{token}/cancel">
<button type="submit">{cancel}</button>
</form>
<script src="/assets/page.js"></script>"#,
        place = esc(c.place_palm),
        hint = esc(c.hold_hint),
        retry = esc(c.retry),
        armed = esc(c.armed),
        reader_status = held.as_str(),
        status = esc(&status),
        expires = esc(&c.expires_at.replace("{time}", &time)),
        token = esc(token),
        cancel = esc(c.cancel),
    )
}

fn notice(text: &str) -> String {
    format!("<p>{}</p>", esc(text))
}

/// A notice about the request just made (refused, or failed): announced at once.
fn alert(text: &str) -> String {
    format!("<p class=\"alert\" role=\"alert\">{}</p>", esc(text))
}

const STYLE: &str = "body{margin:0;font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;\
background:#f4f6f8;color:#1d2733}main{max-width:30rem;margin:0 auto;padding:2rem 1.25rem}\
h1{font-size:1.5rem;margin:0 0 1rem;overflow-wrap:anywhere;hyphens:auto}h2{font-size:1.2rem}.card{background:#fff;border-radius:12px;\
padding:1.5rem;box-shadow:0 1px 4px rgba(0,0,0,.08)}.palm{text-align:center;color:#2b6cb0}\
.muted{color:#5b6875;font-size:.9rem}.status{font-weight:600}.alert{color:#9b1c1c;font-weight:600}\
.card{overflow-wrap:anywhere}.readers{list-style:none;padding:0;display:flex;flex-wrap:wrap;gap:.5rem}\
.readers li{max-width:100%;min-width:0}.reader{display:inline-block;max-width:100%;\
overflow-wrap:anywhere;box-sizing:border-box;padding:.75rem 1rem;border:1px solid #6b7785;border-radius:8px;\
text-decoration:none;color:#1d2733;min-height:44px}.reader.current{background:#2b6cb0;color:#fff}button{width:100%;min-height:48px;\
font-size:1rem;border-radius:8px;border:1px solid #6b7785;background:#fff;cursor:pointer}\
button:focus{outline:3px solid #2b6cb0}";

fn html(status: StatusCode, lang: Language, title: &str, body: &str) -> Response {
    html_with_head(status, lang, title, "", body)
}

/// [`html`] with `head` (trusted markup) added to the document's head.
fn html_with_head(
    status: StatusCode,
    lang: Language,
    title: &str,
    head: &str,
    body: &str,
) -> Response {
    let doc = format!(
        r#"<!doctype html>
<html lang="{lang}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{STYLE}</style>{head}
</head>
<body><main><h1>{title}</h1><div class="card">
{body}
</div></main></body>
</html>"#,
        lang = lang.code(),
        title = esc(title),
    );
    let mut resp = (status, Html(doc)).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; script-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    resp
}

/// Minimal HTML escaping for text and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `POST /{kind}/{token}/cancel` from the page's Cancel button.
pub async fn cancel(
    State(app): State<Arc<App>>,
    Path((kind, token)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let kind = match kind.as_str() {
        "enroll" => SessionKind::Enroll,
        "identify" => SessionKind::Identify,
        _ => return message(StatusCode::NOT_FOUND, "not found"),
    };
    let Some(s) = find(&app, kind, &token) else {
        return page(&app, kind, &token, &headers, None);
    };
    match app
        .execute(Command::CancelSession {
            partner: None,
            session_id: s.id,
        })
        .await
    {
        Ok(_) | Err(crate::app::AppError::Rejected(_)) => {
            Redirect::to(&format!("/{}/{}", kind.as_str(), token)).into_response()
        }
        Err(e) => {
            let failed = super::error::ApiError::from(e).into_response();
            if wants_json(&headers) {
                return failed;
            }
            // The page again, in its language, saying the Cancel did not go through.
            let notice = Some(Notice::ServerError);
            with_status_of(page(&app, kind, &token, &headers, notice), &failed)
        }
    }
}

/// `GET /{kind}/{token}/events`: server-sent events with the session's state as it changes.
pub async fn events(
    State(app): State<Arc<App>>,
    Path((kind, token)): Path<(String, String)>,
) -> Response {
    let kind = match kind.as_str() {
        "enroll" => SessionKind::Enroll,
        "identify" => SessionKind::Identify,
        _ => return message(StatusCode::NOT_FOUND, "not found"),
    };
    // Listen before reading: a change between the two would otherwise be lost, and the page
    // would wait on `pending` for good.
    let changes = BroadcastStream::new(app.session_changes());
    let Some(s) = find(&app, kind, &token) else {
        return message(StatusCode::NOT_FOUND, "not found");
    };
    let id = s.id;
    let now = app.clock.now();
    let first = app.read(|st| progress(st, &s, now));
    let once = || {
        let event = SseEvent::default().data(first.to_string());
        Sse::new(tokio_stream::once(Ok::<_, std::convert::Infallible>(event))).into_response()
    };
    // A session that has ended (or is past its deadline, the expiry not written yet) has
    // nothing more to say: its state, and the stream ends.
    if !s.is_open(now) {
        return once();
    }
    // Bounded: a few streams per session (a page open in a couple of tabs), and in all. A
    // link's holder cannot hold the gateway's connections open.
    let Some(guard) = StreamGuard::take(&app, id, s.partner_id) else {
        return message(
            StatusCode::TOO_MANY_REQUESTS,
            "too many live streams for this session",
        );
    };
    let app2 = app.clone();
    // This session's own changes, and those of another session at the reader this one was
    // armed for: when another session takes the reader (or gives it up), this page learns
    // that its scanner is busy (or free) without waiting for a change of its own.
    let updates = changes
        .filter_map(move |r| {
            let now = app2.clock.now();
            app2.read(|st| {
                let current = || st.session(id).map(|s| progress(st, s, now));
                match r {
                    Ok(changed) if changed == id => Some(current()),
                    Ok(changed) => {
                        let mine = st.session(id).and_then(|s| s.reader_id.as_ref());
                        let theirs = st.session(changed).and_then(|o| o.reader_id.as_ref());
                        (mine.is_some() && mine == theirs).then(current)
                    }
                    // Lagged: send the current state anyway.
                    Err(_) => Some(current()),
                }
            })
        })
        // Forgotten: nothing more to say.
        .take_while(Option::is_some)
        .map(Option::unwrap_or_default);
    // At the deadline the session is expired as of now, whether or not the expiry event has
    // been written yet: say so, and the stream ends.
    let app3 = app.clone();
    let deadline = app.clock.sleep_until(s.expires_at);
    let at_deadline = FromFuture(Some(Box::pin(async move {
        deadline.await;
        let now = app3.clock.now();
        app3.read(|st| st.session(id).map(|s| progress(st, s, now)))
            .unwrap_or_else(|| serde_json::json!({ "state": "expired" }))
    })));
    let stream = UntilEnded {
        inner: Box::pin(tokio_stream::once(first).chain(updates.merge(at_deadline))),
        done: false,
    }
    .map(move |v| {
        let _held = &guard;
        Ok::<_, std::convert::Infallible>(SseEvent::default().data(v.to_string()))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// One item, when its future resolves.
struct FromFuture(
    Option<std::pin::Pin<Box<dyn std::future::Future<Output = serde_json::Value> + Send>>>,
);

impl tokio_stream::Stream for FromFuture {
    type Item = serde_json::Value;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<serde_json::Value>> {
        let Some(f) = self.0.as_mut() else {
            return std::task::Poll::Ready(None);
        };
        match f.as_mut().poll(cx) {
            std::task::Poll::Ready(v) => {
                self.0 = None;
                std::task::Poll::Ready(Some(v))
            }
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }
}

/// Ends right after the event that says the session ended, without waiting for another.
struct UntilEnded {
    inner: std::pin::Pin<Box<dyn tokio_stream::Stream<Item = serde_json::Value> + Send>>,
    done: bool,
}

impl tokio_stream::Stream for UntilEnded {
    type Item = serde_json::Value;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<serde_json::Value>> {
        if self.done {
            return std::task::Poll::Ready(None);
        }
        let p = self.inner.as_mut().poll_next(cx);
        match &p {
            std::task::Poll::Ready(Some(v)) if v["state"] != "pending" => self.done = true,
            std::task::Poll::Ready(None) => self.done = true,
            _ => {}
        }
        p
    }
}

/// Live streams a session may have open at once, and one partner's sessions (or the site's
/// trigger sessions) in all: one partner cannot take every other partner's streams. A page
/// refused one falls back to polling (`SCRIPT`).
const STREAMS_PER_SESSION: usize = 4;
const STREAMS_PER_PARTNER: usize = 512;

/// One open page stream, counted in [`App::page_streams`] until dropped.
struct StreamGuard {
    app: Arc<App>,
    id: crate::core::SessionId,
}

impl StreamGuard {
    fn take(
        app: &Arc<App>,
        id: crate::core::SessionId,
        partner: Option<crate::core::PartnerId>,
    ) -> Option<StreamGuard> {
        let mut open = app.page_streams.lock().unwrap_or_else(|e| e.into_inner());
        let partners: usize = open
            .values()
            .filter(|(p, _)| *p == partner)
            .map(|(_, n)| n)
            .sum();
        let (_, n) = open.entry(id).or_insert((partner, 0));
        if *n >= STREAMS_PER_SESSION || partners >= STREAMS_PER_PARTNER {
            if *n == 0 {
                open.remove(&id);
            }
            return None;
        }
        *n += 1;
        Some(StreamGuard {
            app: app.clone(),
            id,
        })
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let mut open = self
            .app
            .page_streams
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some((_, n)) = open.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.id);
            }
        }
    }
}

/// A stream event: the session's state as of `now` (a pending session past its deadline is
/// `expired`, as its page and `GET /v1/sessions/{id}` say), the reader it was armed for and whether it still
/// holds it (`reader_status`: `ready`, `busy` when another session holds it now, `waiting`).
fn progress(
    st: &crate::core::State,
    s: &Session,
    now: chrono::DateTime<chrono::Utc>,
) -> serde_json::Value {
    serde_json::json!({
        "state": s.as_of(now).0.as_str(),
        "fail_reason": s.fail_reason.map(|r| r.as_str()),
        "reader": s.reader_id.as_ref().map(|r| r.0.clone()),
        "reader_status": reader_status(st, s, now).as_str(),
        "retries": s.retries,
    })
}

/// The hosted page's only script: follows `/events` and updates the status line; reloads
/// when the session ends so the result page shows. A browser without `EventSource` polls.
const SCRIPT: &str = r#"(function () {
  var el = document.getElementById('status');
  if (!el) { return; }
  // Back from choosing a reader (a link to `?reader=`, which armed it): focus returns to that
  // reader, now marked current (or to the status line), not to the top of the page; and the
  // address loses `?reader=`, so that a reload does not arm the reader again.
  if (/[?&]reader=/.test(window.location.search)) {
    if (window.history && window.history.replaceState) {
      window.history.replaceState(null, '', window.location.pathname);
    }
    var chosen = document.querySelector('a.reader.current');
    if (!chosen) { el.setAttribute('tabindex', '-1'); chosen = el; }
    chosen.focus();
  }
  var events = el.getAttribute('data-events');
  var lastRetries = null;
  var polling = false;
  // A stream refused (e.g. 429: too many open for this session) or lost for good: ask the page
  // itself, as JSON, every 3 s until the session has ended, then show the result.
  function poll() {
    var page = events.replace(/\/events$/, '');
    fetch(page, { headers: { 'Accept': 'application/json' }, cache: 'no-store' })
      .then(function (r) {
        if (r.status !== 200) { window.location.reload(); return null; }
        return r.json();
      })
      .then(function (s) {
        if (s && s.state && s.state !== 'pending') { window.location.reload(); return; }
        setTimeout(poll, 3000);
      })
      .catch(function () { setTimeout(poll, 3000); });
  }
  // No live stream in this browser: ask as JSON every 3 s, or without fetch reload the page
  // (its URL without `?reader=`) every 5 s.
  if (!window.EventSource) {
    polling = true;
    if (window.fetch) { setTimeout(poll, 3000); } else {
      setTimeout(function () { window.location.href = events.replace(/\/events$/, ''); }, 5000);
    }
    return;
  }
  var source = new EventSource(events);
  // Choosing a reader loads this page again: the stream, which would see that reader armed
  // first and load the page itself, cutting that load short, is closed meanwhile (not for a
  // click that opens the link elsewhere: this page goes on following its session).
  var links = document.querySelectorAll('a.reader');
  for (var i = 0; i < links.length; i++) {
    links[i].addEventListener('click', function (e) {
      if (e.button === 0 && !e.ctrlKey && !e.metaKey && !e.shiftKey && !e.altKey) {
        source.close();
      }
    });
  }
  source.onerror = function () {
    if (source.readyState === EventSource.CLOSED && !polling) {
      polling = true;
      setTimeout(poll, 3000);
    }
  };
  source.onmessage = function (m) {
    var p = JSON.parse(m.data);
    if (p.state !== 'pending') { source.close(); window.location.reload(); return; }
    if (lastRetries !== null && p.retries > lastRetries) {
      el.textContent = el.getAttribute('data-retry');
    } else if (p.reader_status && p.reader_status !== el.getAttribute('data-reader-status')) {
      // Another session took this one's reader (or let it go): show the page again, without
      // `?reader=` so that it does not take the reader back, and it says where things stand.
      source.close();
      window.location.href = events.replace(/\/events$/, '');
      return;
    } else if (p.reader) {
      el.textContent = el.getAttribute('data-armed').replace('{reader}', p.reader);
    }
    lastRetries = p.retries;
  };
})();
"#;

pub async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        SCRIPT,
    )
        .into_response()
}

#[cfg(test)]
mod accept_tests {
    use super::*;

    fn json(accept: &str) -> bool {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_str(accept).unwrap());
        wants_json(&h)
    }

    #[test]
    fn json_only_when_preferred_to_html() {
        assert!(json("application/json"));
        assert!(json("Application/JSON"));
        assert!(json("application/json, text/html;q=0.1"));
        assert!(json("application/json;q=0.9, */*;q=0.1"));
        assert!(json("application/*"));
        assert!(json("application/json, text/plain, */*"));
        // A browser's Accept, curl's, a tie, a refusal, garbage.
        assert!(!json(
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
        ));
        assert!(!json("*/*"));
        assert!(!json("application/json, text/html"));
        assert!(!json("application/json;q=0"));
        assert!(!json("application/json;q=2"));
        assert!(!json("text/html;q=0.5, application/json;q=0.4"));
        assert!(!json("nonsense"));
        assert!(!wants_json(&HeaderMap::new()));
    }
}
