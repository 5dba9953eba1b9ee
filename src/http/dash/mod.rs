//! The two dashboards: the operator's at `/admin` (admin-token login) and the partner's at
//! `/dashboard` (API-key login).
//!
//! Each is one server-rendered page shell (language, CSRF token, message catalog) and a script
//! from `/assets/` that works through the same JSON APIs everyone else uses: `/admin/v1` for
//! the operator, `/v1` for the partner, authenticated by the login cookie (see [`session`]).
//! One partner action has a route of its own: erasing a user, `DELETE
//! /dashboard/users?external_id=ID` ([`partner_erase_user`]), because a browser rewrites the
//! API's `/v1/users/{external_id}` when the id is `.` or `..` (WHATWG URL drops or climbs such
//! path segments, `%2e` included), and SPEC 2 allows both ids. A query value is never
//! rewritten. Nothing is loaded from outside the server; pages work on a phone and by keyboard.
//!
//! Invariants: a credential typed into a login form is checked in constant time and spends the
//! caller's address budget when wrong (brute force meets 429 like the APIs; the admin token gets
//! 429 before it is checked once the address is over budget); a sign-in posted from another
//! site is refused ([`cross_site`]); the page never contains the credential, only the
//! cookie-bound CSRF token.

pub mod session;

use super::auth::{client_ip, spend_address};
use super::error::ApiError;
use super::i18n::{self, Entry, dashboard_messages, from_accept_language};
use crate::app::App;
use crate::app::secrets::{hash_secret, hashes_equal};
use crate::core::ratelimit::Verdict;
use crate::core::{Command, ExternalId, Language, PartnerId};
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{delete, get, post};
use session::Holder;
use std::sync::Arc;

/// The dashboard routes, merged into the main router.
pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/admin", get(admin_page))
        .route("/admin/", get(|| async { Redirect::to("/admin") }))
        .route("/admin/login", post(admin_login))
        .route("/admin/logout", post(admin_logout))
        .route("/dashboard", get(partner_page))
        .route("/dashboard/", get(|| async { Redirect::to("/dashboard") }))
        .route("/dashboard/login", post(partner_login))
        .route("/dashboard/logout", post(partner_logout))
        .route("/dashboard/users", delete(partner_erase_user))
        .route(
            "/assets/dash.css",
            get(|| asset("dash.css", CSS, "text/css")),
        )
        .route("/assets/dash.js", get(|| asset("dash.js", COMMON_JS, JS)))
        .route("/assets/admin.js", get(|| asset("admin.js", ADMIN_JS, JS)))
        .route(
            "/assets/admin.css",
            get(|| asset("admin.css", ADMIN_CSS, "text/css")),
        )
        .route(
            "/assets/partner.js",
            get(|| asset("partner.js", PARTNER_JS, JS)),
        )
        .route(
            "/assets/partner.css",
            get(|| asset("partner.css", PARTNER_CSS, "text/css")),
        )
}

const JS: &str = "text/javascript";
const CSS: &str = include_str!("assets/dash.css");
const COMMON_JS: &str = include_str!("assets/dash.js");
const ADMIN_JS: &str = include_str!("assets/admin.js");
const ADMIN_CSS: &str = include_str!("assets/admin.css");
const PARTNER_JS: &str = include_str!("assets/partner.js");
const PARTNER_CSS: &str = include_str!("assets/partner.css");

/// Serves an asset compiled into the binary. For working on the dashboards,
/// `PALMGATE_DASH_ASSETS=src/http/dash/assets` serves the files from disk instead (read at
/// each request, so an edit shows on reload without a rebuild).
async fn asset(name: &'static str, built_in: &'static str, ctype: &'static str) -> Response {
    let body = match std::env::var_os("PALMGATE_DASH_ASSETS") {
        Some(dir) => std::fs::read_to_string(std::path::Path::new(&dir).join(name))
            .unwrap_or_else(|_| built_in.to_string()),
        None => built_in.to_string(),
    };
    (
        [
            (header::CONTENT_TYPE, format!("{ctype}; charset=utf-8")),
            (header::CACHE_CONTROL, "no-cache".to_string()),
        ],
        body,
    )
        .into_response()
}

/// Which dashboard a handler serves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Board {
    Admin,
    Partner,
}

impl Board {
    fn is_admin(self) -> bool {
        self == Board::Admin
    }
    fn path(self) -> &'static str {
        match self {
            Board::Admin => "/admin",
            Board::Partner => "/dashboard",
        }
    }
    fn catalog(self) -> &'static [Entry] {
        match self {
            Board::Admin => i18n::admin::ADMIN,
            Board::Partner => i18n::partner::PARTNER,
        }
    }
    fn script(self) -> &'static str {
        match self {
            Board::Admin => "admin",
            Board::Partner => "partner",
        }
    }
}

/// The page language: `?lang=` (remembered in a cookie), else the cookie, else the browser's.
fn language(headers: &HeaderMap, query: Option<&str>) -> (Language, bool) {
    let asked = query
        .and_then(|q| serde_urlencoded::from_str::<Vec<(String, String)>>(q).ok())
        .and_then(|pairs| {
            pairs
                .into_iter()
                .find(|(k, _)| k == "lang")
                .and_then(|(_, v)| Language::parse(&v))
        });
    if let Some(l) = asked {
        return (l, true);
    }
    let remembered = session::cookie(headers, session::LANG_COOKIE).and_then(Language::parse);
    let lang = remembered.unwrap_or_else(|| {
        from_accept_language(
            headers
                .get(header::ACCEPT_LANGUAGE)
                .and_then(|v| v.to_str().ok()),
        )
    });
    (lang, false)
}

async fn admin_page(State(app): State<Arc<App>>, req: Request) -> Response {
    page(&app, Board::Admin, req)
}

async fn partner_page(State(app): State<Arc<App>>, req: Request) -> Response {
    page(&app, Board::Partner, req)
}

fn page(app: &App, board: Board, req: Request) -> Response {
    let (lang, chosen) = language(req.headers(), req.uri().query());
    let name = if board.is_admin() {
        session::ADMIN_COOKIE
    } else {
        session::PARTNER_COOKIE
    };
    let cookie = session::cookie(req.headers(), name)
        .filter(|v| {
            matches!(
                (board, session::verify(app, v)),
                (Board::Admin, Some(Holder::Admin)) | (Board::Partner, Some(Holder::Partner(_)))
            )
        })
        .map(str::to_string);
    // The login of a partner deactivated since it signed in: the login form says so, 403 as
    // `/v1` answers that cookie (and the partner's key).
    let inactive = || {
        board == Board::Partner
            && matches!(
                session::from_request_status(app, req.method(), req.headers(), false),
                Some((Holder::Partner(_), false))
            )
    };
    let mut resp = match cookie {
        Some(value) => shell(app, board, lang, &value),
        None if inactive() => login_form(
            app,
            board,
            lang,
            Some("login.inactive"),
            StatusCode::FORBIDDEN,
        ),
        None => login_form(app, board, lang, None, StatusCode::OK),
    };
    if chosen {
        resp.headers_mut()
            .append(header::SET_COOKIE, session::lang_cookie(lang.code()));
    }
    resp
}

fn esc(s: &str) -> String {
    super::pages::esc(s)
}

/// `<html>` around a dashboard body: shared stylesheet, the board's own, no external asset.
fn document(board: Board, lang: Language, title: &str, body: &str) -> String {
    format!(
        r#"<!doctype html>
<html lang="{lang}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/assets/dash.css">
<link rel="stylesheet" href="/assets/{script}.css">
</head>
<body class="dash dash-{script}">
{body}
</body>
</html>"#,
        lang = lang.code(),
        title = esc(title),
        script = board.script(),
    )
}

fn lang_switch(board: Board, lang: Language) -> String {
    let links: String = [Language::En, Language::Kk, Language::Ru]
        .iter()
        .map(|l| {
            let current = if *l == lang {
                r#" aria-current="true""#
            } else {
                ""
            };
            format!(
                r#"<a href="{path}?lang={code}" lang="{code}" hreflang="{code}"{current}><span class="lang-name">{name}</span><span class="lang-code" aria-hidden="true">{code}</span></a>"#,
                path = board.path(),
                code = l.code(),
                name = esc(i18n::common(*l, &format!("lang.{}", l.code()))),
            )
        })
        .collect();
    format!(
        r#"<nav class="langs" aria-label="{label}">{links}</nav>"#,
        label = esc(i18n::common(lang, "language"))
    )
}

fn login_form(
    app: &App,
    board: Board,
    lang: Language,
    error: Option<&str>,
    status: StatusCode,
) -> Response {
    let t = |k: &str| esc(i18n::common(lang, k));
    let (title, label, field) = if board.is_admin() {
        (t("login.admin_title"), t("login.admin_token"), "token")
    } else {
        (t("login.partner_title"), t("login.api_key"), "api_key")
    };
    let error = match (error, board.is_admin() && !app.admin.enabled()) {
        (Some(e), _) => Some(t(e)),
        (None, true) => Some(t("login.disabled")),
        (None, false) => None,
    };
    let error = error
        .map(|e| format!(r#"<p class="error" role="alert" id="login-error">{e}</p>"#))
        .unwrap_or_default();
    let body = format!(
        r#"<header class="top"><span class="brand">{brand}</span>{langs}</header>
<main class="login">
<h1>{title}</h1>
{error}
<form method="post" action="{path}/login" class="card">
<label for="credential">{label}</label>
<input id="credential" name="{field}" type="password" autocomplete="current-password" required autofocus{invalid}>
<input type="hidden" name="lang" value="{code}">
<button type="submit">{submit}</button>
</form>
</main>"#,
        brand = t("brand"),
        // A refused sign-in marks the field and points it at the message (WCAG 3.3.1).
        invalid = if error.is_empty() {
            ""
        } else {
            r#" aria-invalid="true" aria-describedby="login-error""#
        },
        langs = lang_switch(board, lang),
        path = board.path(),
        code = lang.code(),
        submit = t("login.submit"),
    );
    let title = i18n::common(
        lang,
        if board.is_admin() {
            "login.admin_title"
        } else {
            "login.partner_title"
        },
    );
    html(status, document(board, lang, title, &body))
}

/// The Content-Security-Policy of every dashboard page: its scripts and styles come from
/// `/assets/` only (the message catalog is a non-executable `application/json` block), the
/// favicon is an empty `data:` URL, forms post to the server itself, and no other site may
/// frame the page (a framed "Start emergency unlock" could be clicked through an overlay).
pub const CSP: &str = "default-src 'self'; img-src 'self' data:; object-src 'none'; \
                       base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// A dashboard HTML answer: not cached, not frameable, under [`CSP`].
fn html(status: StatusCode, doc: String) -> Response {
    let mut resp = (status, Html(doc)).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn shell(app: &App, board: Board, lang: Language, cookie: &str) -> Response {
    let messages = serde_json::Value::Object(dashboard_messages(lang, board.catalog()));
    // `</` cannot end the script element early once escaped.
    let messages = messages.to_string().replace("</", "<\\/");
    let csrf = session::csrf_token(app, cookie);
    let body = format!(
        r#"<header class="top"><span class="brand">{brand}</span>{langs}
<form method="post" action="{path}/logout" class="logout"><input type="hidden" name="csrf" value="{csrf}"><button type="submit">{logout}</button></form>
</header>
<main id="app" data-csrf="{csrf}" data-lang="{code}"><p class="muted">{loading}</p></main>
<script id="messages" type="application/json">{messages}</script>
<script src="/assets/dash.js"></script>
<script src="/assets/{script}.js"></script>"#,
        brand = esc(i18n::common(lang, "brand")),
        langs = lang_switch(board, lang),
        path = board.path(),
        logout = esc(i18n::common(lang, "logout")),
        loading = esc(i18n::common(lang, "loading")),
        code = lang.code(),
        script = board.script(),
    );
    let title = i18n::common(lang, "brand");
    html(StatusCode::OK, document(board, lang, title, &body))
}

/// The fields of a small urlencoded form (login, logout), or `None` when unreadable.
async fn form(req: Request) -> Option<(axum::http::request::Parts, Vec<(String, String)>)> {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, 8 * 1024).await.ok()?;
    let fields = serde_urlencoded::from_bytes(&bytes).ok()?;
    Some((parts, fields))
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> &'a str {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}

async fn admin_login(State(app): State<Arc<App>>, req: Request) -> Response {
    login(&app, Board::Admin, req).await
}

async fn partner_login(State(app): State<Arc<App>>, req: Request) -> Response {
    login(&app, Board::Partner, req).await
}

async fn login(app: &App, board: Board, req: Request) -> Response {
    let Some((parts, fields)) = form(req).await else {
        return login_form(
            app,
            board,
            Language::En,
            Some("login.failed"),
            StatusCode::BAD_REQUEST,
        );
    };
    let lang =
        Language::parse(field(&fields, "lang")).unwrap_or_else(|| language(&parts.headers, None).0);
    if let Some(why) = cross_site(app, &parts) {
        return super::error::message(StatusCode::FORBIDDEN, &why);
    }
    let ip = client_ip(&parts.extensions);
    let now_us = app.clock.now().timestamp_micros();
    // A key that really matches a deactivated partner is told so, as the API's 403 "partner
    // account is inactive" tells it: it still spends the address budget like any failed
    // sign-in (and is throttled the same), and gets no cookie; the status stays 401.
    let mut inactive = false;
    // The budget spent on a failed attempt (the admin token's is spent before it is checked
    // when the address spent any lately, so an address over its budget learns nothing).
    let mut spent = None;
    let holder = if board.is_admin() {
        match super::auth::admin_token(app, ip, now_us, field(&fields, "token")) {
            Ok(()) => Some(Holder::Admin),
            Err(v) => {
                spent = Some(v);
                None
            }
        }
    } else {
        let h = hash_secret(field(&fields, "api_key"));
        let found = app.read(|s| {
            s.partner_by_key_hash(&h)
                .filter(|p| hashes_equal(&p.api_key_hash, &h))
                .map(|p| (p.id, p.active))
        });
        inactive = matches!(found, Some((_, false)));
        found
            .filter(|(_, active)| *active)
            .map(|(id, _)| Holder::Partner(id))
    };
    let cookie = holder.and_then(|h| session::issue(app, h));
    let Some(cookie) = cookie else {
        let v = spent.unwrap_or_else(|| super::auth::spend_address(app, ip, now_us));
        return if v.allowed && inactive {
            login_form(
                app,
                board,
                lang,
                Some("login.inactive"),
                StatusCode::UNAUTHORIZED,
            )
        } else if v.allowed {
            login_form(
                app,
                board,
                lang,
                Some("login.failed"),
                StatusCode::UNAUTHORIZED,
            )
        } else {
            let mut r = login_form(
                app,
                board,
                lang,
                Some("login.throttled"),
                StatusCode::TOO_MANY_REQUESTS,
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, v.retry_after_s.into());
            r
        };
    };
    let mut r = Redirect::to(board.path()).into_response();
    r.headers_mut().append(
        header::SET_COOKIE,
        session::set_cookie(app, board.is_admin(), &cookie),
    );
    r
}

/// Why a sign-in form post must be refused as coming from another site (login CSRF: a hostile
/// page signing the visitor into the attacker's account), or `None` when it may go on.
///
/// A browser says where a request comes from: `Sec-Fetch-Site` when it sends it (every current
/// browser does), which must be `same-origin` (our own sign-in page) or `none` (typed, a
/// bookmark); otherwise `Origin`, which must be this server's: the origin of `http.public_url`,
/// or the `Host` the request was sent to (a server reached by another name, `127.0.0.1`). A
/// client that sends neither (curl, a script) is not a browser a page can drive, and goes on.
/// The same rule as Go's `net/http.CrossOriginProtection`.
fn cross_site(app: &App, parts: &axum::http::request::Parts) -> Option<String> {
    let headers = &parts.headers;
    let text = |name: &str| {
        headers
            .get(name)
            .map(|v| v.to_str().unwrap_or("").trim().to_ascii_lowercase())
    };
    const REFUSED: &str = "sign-in refused: the form was posted from another site";
    if let Some(site) = text("sec-fetch-site") {
        return (site != "same-origin" && site != "none").then(|| {
            format!(
                "{REFUSED} (Sec-Fetch-Site: {site}); open this server's sign-in page and sign in \
                 there"
            )
        });
    }
    let origin = text(header::ORIGIN.as_str())?;
    let own = reqwest::Url::parse(&app.public_url)
        .ok()
        .map(|u| u.origin().ascii_serialization().to_ascii_lowercase());
    // HTTP/2 carries the host in the request target (`:authority`), not in a header.
    let host = text(header::HOST.as_str()).or_else(|| {
        parts
            .uri
            .authority()
            .map(|a| a.as_str().to_ascii_lowercase())
    });
    let same_host = host.is_some_and(|h| {
        origin.split_once("://").is_some_and(|(scheme, authority)| {
            matches!(scheme, "http" | "https") && !h.is_empty() && authority == h
        })
    });
    (own.as_deref() != Some(origin.as_str()) && !same_host).then(|| {
        format!(
            "{REFUSED} (Origin: {origin}, not this server's); open this server's sign-in page \
             and sign in there"
        )
    })
}

async fn admin_logout(State(app): State<Arc<App>>, req: Request) -> Response {
    logout(&app, Board::Admin, req).await
}

async fn partner_logout(State(app): State<Arc<App>>, req: Request) -> Response {
    logout(&app, Board::Partner, req).await
}

/// Ends the login (the CSRF field keeps other sites from signing people out): the cookie's
/// login is revoked, so the same cookie replayed later is refused ([`session::revoke`]).
/// Without a valid login (none, expired, already signed out) there is nothing to end: back to
/// the sign-in page, clearing whatever cookie the browser still holds.
async fn logout(app: &App, board: Board, req: Request) -> Response {
    let Some((parts, fields)) = form(req).await else {
        return super::error::message(
            StatusCode::BAD_REQUEST,
            "the sign-out form could not be read (expected a urlencoded form of at most 8 KiB)",
        );
    };
    let name = if board.is_admin() {
        session::ADMIN_COOKIE
    } else {
        session::PARTNER_COOKIE
    };
    let mut r = Redirect::to(board.path()).into_response();
    r.headers_mut().append(
        header::SET_COOKIE,
        session::clear_cookie(app, board.is_admin()),
    );
    let Some(value) = session::cookie(&parts.headers, name).filter(|v| {
        matches!(
            (board, session::verify(app, v)),
            (Board::Admin, Some(Holder::Admin)) | (Board::Partner, Some(Holder::Partner(_)))
        )
    }) else {
        return r;
    };
    if !session::form_csrf_ok(
        app,
        &parts.headers,
        board.is_admin(),
        field(&fields, "csrf"),
    ) {
        return super::error::message(StatusCode::FORBIDDEN, "invalid CSRF token");
    }
    session::revoke(app, value);
    r
}

/// The rate budget a dashboard erasure spends: the API's own `DELETE /v1/users/{external_id}`
/// (the limiter's key for that route), so this route is no way around the API's limit.
const ERASE_ENDPOINT: &str = "DELETE /v1/users/{external_id}";

/// `DELETE /dashboard/users?external_id=ID`: the partner dashboard's "Erase", the same erasure
/// as the API's `DELETE /v1/users/{external_id}` (SPEC 2) with the user named in the query,
/// which a browser sends as it is, so any valid external id (`.` and `..` too) reaches it.
///
/// Only the partner dashboard's login cookie opens it (with its `X-CSRF-Token`, as for any
/// write; no API key: API clients have the SPEC's path), and it erases only that partner's
/// users: another partner's id is "not found", as on the API. As on the API: one request of
/// the partner's `DELETE /v1/users/{external_id}` budget (429 past it), the cookie of a
/// partner deactivated since it signed in 403 "partner account is inactive", an unauthenticated
/// request spends the address budget, a log that cannot take writes answers 500, every answer
/// carries the rate-limit headers, 204 on success and the API's JSON error bodies otherwise.
async fn partner_erase_user(State(app): State<Arc<App>>, req: Request) -> Response {
    let now_us = app.clock.now().timestamp_micros();
    let holder = session::from_request_status(&app, req.method(), req.headers(), false);
    let (verdict, answer) = match holder {
        Some((Holder::Partner(partner), active)) => {
            let v = app.limiter.partner(partner, ERASE_ENDPOINT, now_us);
            // A cookie of a partner deactivated since it was issued: 403, as `/v1` answers it
            // (and that partner's key), before the rate limit (SPEC 2's order).
            let answer = if !active {
                ApiError::Forbidden.into_response()
            } else if !v.allowed {
                ApiError::RateLimited {
                    retry_after_s: v.retry_after_s,
                }
                .into_response()
            } else if !app.ready() {
                ApiError::Unavailable.into_response()
            } else {
                match erase(&app, partner, req.uri().query()).await {
                    Ok(()) => StatusCode::NO_CONTENT.into_response(),
                    Err(e) => e.into_response(),
                }
            };
            (v, answer)
        }
        _ => {
            let v = spend_address(&app, client_ip(req.extensions()), now_us);
            let answer = if v.allowed {
                super::error::message(
                    StatusCode::UNAUTHORIZED,
                    "not signed in to the partner dashboard, or the X-CSRF-Token header is \
                     missing or wrong: sign in at /dashboard and erase from there",
                )
            } else {
                ApiError::RateLimited {
                    retry_after_s: v.retry_after_s,
                }
                .into_response()
            };
            (v, answer)
        }
    };
    with_rate_headers(answer, &verdict)
}

/// Erases `partner`'s user named by the `external_id` query parameter (exactly once).
async fn erase(app: &App, partner: PartnerId, query: Option<&str>) -> Result<(), ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or(""))
        .map_err(|e| ApiError::BadRequest(format!("the query string could not be read: {e}")))?;
    let mut ids = pairs.into_iter().filter(|(k, _)| k == "external_id");
    let external_id = match (ids.next(), ids.next()) {
        (Some((_, id)), None) => id,
        (None, _) => {
            return Err(ApiError::BadRequest(
                "external_id is required: DELETE /dashboard/users?external_id=ID names the user \
                 to erase (percent-encoded)"
                    .into(),
            ));
        }
        (Some(_), Some(_)) => {
            return Err(ApiError::BadRequest(
                "external_id is given more than once: name one user to erase".into(),
            ));
        }
    };
    app.execute(Command::EraseUser {
        partner_id: partner,
        external_id: ExternalId(external_id),
    })
    .await?;
    Ok(())
}

/// The `X-RateLimit-*` headers every `/v1` answer carries (SPEC 2), on a dashboard answer.
fn with_rate_headers(mut resp: Response, v: &Verdict) -> Response {
    let h = resp.headers_mut();
    h.insert("x-ratelimit-limit", HeaderValue::from(v.limit));
    h.insert("x-ratelimit-remaining", HeaderValue::from(v.remaining));
    h.insert("x-ratelimit-reset", HeaderValue::from(v.reset_s));
    resp
}
