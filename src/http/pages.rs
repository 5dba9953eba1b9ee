//! Hosted pages (SPEC 3): `GET /enroll/{token}`, `GET /identify/{token}`, and the Cancel form.
//!
//! 200 while pending; 400 "link expired"; 410 once completed or failed; 404 for an unknown
//! token (or a token used under the other kind's path). HTML in the session's language, or JSON
//! when the client asks for it. Nothing is loaded from outside the server.

use super::error::message;
use super::i18n::{Catalog, catalog, from_accept_language};
use crate::app::App;
use crate::app::secrets::hash_secret;
use crate::core::session::{PageView, Session, SessionState};
use crate::core::{Command, Language, SessionKind};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use std::sync::Arc;

fn wants_json(headers: &HeaderMap) -> bool {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    accept.contains("application/json") && !accept.contains("text/html")
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
    Path(token): Path<String>,
    headers: HeaderMap,
) -> Response {
    page(&app, SessionKind::Enroll, &token, &headers)
}

pub async fn identify_page(
    State(app): State<Arc<App>>,
    Path(token): Path<String>,
    headers: HeaderMap,
) -> Response {
    page(&app, SessionKind::Identify, &token, &headers)
}

fn page(app: &App, kind: SessionKind, token: &str, headers: &HeaderMap) -> Response {
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
            let outcome = match (s.state, s.fail_reason) {
                (SessionState::Completed, _) => c.completed,
                (_, Some(crate::core::FailReason::Cancelled)) => c.cancelled,
                _ => c.failed,
            };
            let body = format!("{}{}", notice(outcome), notice(c.gone_body));
            html(StatusCode::GONE, s.language, c.gone_title, &body)
        }
        PageView::Open if json => axum::Json(super::pass_api::session_body(&s)).into_response(),
        PageView::Open => html(
            StatusCode::OK,
            s.language,
            title(c, kind),
            &open_body(c, &s, token),
        ),
    }
}

fn title(c: &Catalog, kind: SessionKind) -> &'static str {
    match kind {
        SessionKind::Enroll => c.enroll_title,
        SessionKind::Identify => c.identify_title,
    }
}

fn open_body(c: &Catalog, s: &Session, token: &str) -> String {
    let time = s.expires_at.format("%H:%M UTC").to_string();
    format!(
        r#"<div class="palm" aria-hidden="true">&#9995;</div>
<h2>{place}</h2>
<p>{hint}</p>
<p class="status" role="status" aria-live="polite">{waiting}</p>
<p class="muted">{expires}</p>
<form method="post" action="/{kind}/{token}/cancel">
<button type="submit">{cancel}</button>
</form>"#,
        place = esc(c.place_palm),
        hint = esc(c.hold_hint),
        waiting = esc(c.waiting),
        expires = esc(&c.expires_at.replace("{time}", &time)),
        kind = s.kind.as_str(),
        token = esc(token),
        cancel = esc(c.cancel),
    )
}

fn notice(text: &str) -> String {
    format!("<p>{}</p>", esc(text))
}

const STYLE: &str = "body{margin:0;font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;\
background:#f4f6f8;color:#1d2733}main{max-width:30rem;margin:0 auto;padding:2rem 1.25rem}\
h1{font-size:1.5rem;margin:0 0 1rem}h2{font-size:1.2rem}.card{background:#fff;border-radius:12px;\
padding:1.5rem;box-shadow:0 1px 4px rgba(0,0,0,.08)}.palm{font-size:4rem;text-align:center}\
.muted{color:#5b6875;font-size:.9rem}.status{font-weight:600}button{width:100%;min-height:48px;\
font-size:1rem;border-radius:8px;border:1px solid #c4ccd4;background:#fff;cursor:pointer}\
button:focus{outline:3px solid #2b6cb0}";

fn html(status: StatusCode, lang: Language, title: &str, body: &str) -> Response {
    let doc = format!(
        r#"<!doctype html>
<html lang="{lang}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{STYLE}</style>
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
        return page(&app, kind, &token, &headers);
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
        Err(e) => super::error::ApiError::from(e).into_response(),
    }
}
