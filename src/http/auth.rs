//! Who is calling: the `/v1` gate (API key → partner, rate limits, the three headers on every
//! answer) and the extractors that make a handler's signature say who may call it.
//!
//! Order of checks (SPEC 2): 401 unknown key → 403 inactive partner → 429 over the limit, then
//! the handler's own 400/404/409. A head over the size limits (414/431, `serve::head_too_large`)
//! takes the place of the 401 or 403 (only a 429 comes before it). A request without a valid
//! key spends its client address's budget; once that is spent it gets 429 whatever key it
//! tries, so keys cannot be guessed. The admin token is held to the same budget before it is
//! checked: an address over its budget gets 429 for the right token too ([`admin_token`]).

use super::error::ApiError;
use crate::app::App;
use crate::app::secrets::{hash_secret, hashes_equal};
use crate::core::PartnerId;
use crate::core::ratelimit::Verdict;
use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, LazyLock, Mutex};

/// The authenticated, active partner of a `/v1` request (set by [`v1_gate`]).
#[derive(Clone, Copy, Debug)]
pub struct Partner(pub PartnerId);

impl<S: Send + Sync> FromRequestParts<S> for Partner {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Partner>()
            .copied()
            .ok_or(ApiError::Unauthorized)
    }
}

/// The bearer token a request presents, if any. [`Admin`] takes a dashboard cookie only from a
/// request without one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        // The scheme is case-insensitive (RFC 9110 §11.1).
        .and_then(|v| {
            v.get(..7)
                .filter(|s| s.eq_ignore_ascii_case("bearer "))
                .map(|_| &v[7..])
        })
        .map(str::trim)
}

/// A caller holding the admin bearer token.
#[derive(Clone, Copy, Debug)]
pub struct Admin;

impl FromRequestParts<Arc<App>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        or_refused(app, parts, admin_credential(app, parts))
    }
}

/// The admin credential `parts` present, checked: `None` when there is none (neither a bearer
/// token nor the admin dashboard's session), which [`Admin`] charges to the address and
/// `/metrics` serves anonymously; a wrong token is charged here ([`admin_token`]).
pub fn admin_credential(app: &App, parts: &Parts) -> Option<Result<Admin, ApiError>> {
    let Some(token) = bearer(&parts.headers) else {
        let holder = super::dash::session::from_request(app, &parts.method, &parts.headers, true);
        return (holder == Some(super::dash::session::Holder::Admin)).then_some(Ok(Admin));
    };
    let ip = client_ip(&parts.extensions);
    Some(
        admin_token(app, ip, app.clock.now().timestamp_micros(), token)
            .map(|()| Admin)
            .map_err(refused),
    )
}

/// The admin's credential, or the monitoring system's read-only token
/// (`admin.monitor_token_sha256`): for what a monitor may read (the log's head, the site
/// mode, the site's series of `/metrics`), never for what changes the site or names a person.
pub struct Monitor;

impl FromRequestParts<Arc<App>> for Monitor {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        or_refused(app, parts, monitor_credential(app, parts))
    }
}

/// [`admin_credential`], also taking the monitor token: `None` without any credential.
pub fn monitor_credential(app: &App, parts: &Parts) -> Option<Result<Monitor, ApiError>> {
    if let Some(token) = bearer(&parts.headers)
        && !token.is_empty()
        && app.monitor.verify(token)
    {
        return Some(Ok(Monitor));
    }
    admin_credential(app, parts).map(|r| r.map(|Admin| Monitor))
}

/// A credential checked, or — none given — the call charged to the address and refused.
fn or_refused<T>(
    app: &App,
    parts: &Parts,
    credential: Option<Result<T, ApiError>>,
) -> Result<T, ApiError> {
    credential.unwrap_or_else(|| {
        let ip = client_ip(&parts.extensions);
        let v = spend_address(app, ip, app.clock.now().timestamp_micros());
        Err(refused(v))
    })
}

/// The answer to a call without a valid admin credential: 429 past the address's budget, 401
/// within it.
fn refused(v: Verdict) -> ApiError {
    if v.allowed {
        ApiError::AdminUnauthorized
    } else {
        ApiError::RateLimited {
            retry_after_s: v.retry_after_s,
        }
    }
}

/// When each client address last spent its budget for calls without a valid credential, per
/// server (`App` address): its bucket is whole again one minute after that at the latest.
static SPENT: LazyLock<Mutex<HashMap<(usize, IpAddr), i64>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// Entries kept before those older than a minute are swept.
const SPENT_SWEEP_AT: usize = 10_000;
const MINUTE_US: i64 = 60_000_000;

fn spent() -> std::sync::MutexGuard<'static, HashMap<(usize, IpAddr), i64>> {
    // Inserts and removes only: consistent after any panic.
    SPENT.lock().unwrap_or_else(|e| e.into_inner())
}

fn spent_key(app: &App, ip: IpAddr) -> (usize, IpAddr) {
    (std::ptr::from_ref(app) as usize, ip)
}

/// Spends one request of `ip`'s budget for calls without a valid credential (and remembers
/// that it did, for [`admin_token`]).
pub fn spend_address(app: &App, ip: IpAddr, now_us: i64) -> Verdict {
    let v = app.limiter.address(ip, now_us);
    let mut m = spent();
    if m.len() >= SPENT_SWEEP_AT {
        m.retain(|_, at| now_us - *at < MINUTE_US);
    }
    m.insert(spent_key(app, ip), now_us);
    v
}

/// Checks an admin token presented from `ip` (the admin API's bearer, the admin dashboard's
/// sign-in): `Ok` when it is the token and the address is within its budget; otherwise the
/// verdict of the budget spent on the attempt (refused: 429; allowed: a wrong token, 401).
///
/// An address over its budget for calls without a valid credential gets 429 before the token is
/// looked at, the right one included, so a throttled client learns nothing of its guesses
/// (SPEC 2). An address that spent nothing in the last minute has its whole budget, so the
/// right token costs nothing there: the operator's own calls are not counted. From an address
/// that did (a mistyped token, someone else guessing behind the same address), the right token
/// spends one request too, until it has passed once.
pub fn admin_token(app: &App, ip: IpAddr, now_us: i64, token: &str) -> Result<(), Verdict> {
    let key = spent_key(app, ip);
    let recent = spent().get(&key).is_some_and(|at| now_us - *at < MINUTE_US);
    let checked = if recent {
        let v = spend_address(app, ip, now_us);
        if !v.allowed {
            return Err(v);
        }
        Some(v)
    } else {
        None
    };
    if !token.is_empty() && app.admin.verify(token) {
        spent().remove(&key);
        return Ok(());
    }
    Err(checked.unwrap_or_else(|| spend_address(app, ip, now_us)))
}

pub fn client_ip(ext: &axum::http::Extensions) -> IpAddr {
    ext.get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

/// Paths under `/v1` that need no API key.
const PUBLIC: &[&str] = &["/v1/openapi.json"];

/// Middleware on every `/v1` route (and its 404 fallback).
pub async fn v1_gate(State(app): State<Arc<App>>, mut req: Request, next: Next) -> Response {
    let now_us = app.clock.now().timestamp_micros();
    let matched = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string());
    let public = matched.as_deref().is_some_and(|m| PUBLIC.contains(&m));
    let endpoint = match &matched {
        // HEAD is answered by the GET handler: it spends GET's budget, not one of its own.
        Some(m) if req.method() == axum::http::Method::HEAD => format!("GET {m}"),
        Some(m) => format!("{} {m}", req.method()),
        None => "unmatched".to_string(),
    };
    let ip = client_ip(req.extensions());
    let presented = req
        .headers()
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(hash_secret);
    let partner = match &presented {
        Some(h) => app.read(|s| {
            s.partner_by_key_hash(h)
                .filter(|p| hashes_equal(&p.api_key_hash, h))
                .map(|p| (p.id, p.active))
        }),
        // The partner dashboard calls the same API with its login cookie (+ CSRF header).
        // A cookie of a partner deactivated since it was issued is answered 403, as its key.
        None => {
            use super::dash::session::{Holder, from_request_status};
            match from_request_status(&app, req.method(), req.headers(), false) {
                Some((Holder::Partner(id), active)) => Some((id, active)),
                _ => None,
            }
        }
    };
    let (verdict, refusal): (Verdict, Option<ApiError>) = match partner {
        Some((id, active)) => {
            let v = app.limiter.partner(id, &endpoint, now_us);
            let refusal = if !active {
                Some(ApiError::Forbidden)
            } else if !v.allowed {
                Some(ApiError::RateLimited {
                    retry_after_s: v.retry_after_s,
                })
            } else {
                req.extensions_mut().insert(Partner(id));
                None
            };
            (v, refusal)
        }
        None => {
            let v = spend_address(&app, ip, now_us);
            let refusal = if !v.allowed {
                Some(ApiError::RateLimited {
                    retry_after_s: v.retry_after_s,
                })
            } else if public {
                None
            } else {
                Some(ApiError::Unauthorized)
            };
            (v, refusal)
        }
    };
    // A head over palmgate's limits (414/431) is refused before authentication and the rest, as
    // hyper refused it before; the budget is spent and checked as for any request, so its 429
    // still comes first and the answer carries the same rate-limit headers as a 401.
    let refusal = match (super::serve::head_too_large(&req), refusal) {
        (_, r @ Some(ApiError::RateLimited { .. })) | (None, r) => r,
        (Some(too_large), _) => Some(too_large),
    };
    let has_body = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes() != b"0")
        || req
            .headers()
            .contains_key(axum::http::header::TRANSFER_ENCODING);
    let mut resp = match refusal {
        Some(e) => {
            let mut r = e.into_response();
            if has_body {
                // Refused unread: the connection cannot carry another request.
                r.headers_mut().insert(
                    axum::http::header::CONNECTION,
                    HeaderValue::from_static("close"),
                );
            }
            r
        }
        None if req.method() != Method::GET && !app.ready() => {
            ApiError::Unavailable.into_response()
        }
        None => next.run(req).await,
    };
    rate_headers(resp.headers_mut(), &verdict);
    resp
}

fn rate_headers(h: &mut HeaderMap, v: &Verdict) {
    h.insert("x-ratelimit-limit", HeaderValue::from(v.limit));
    h.insert("x-ratelimit-remaining", HeaderValue::from(v.remaining));
    h.insert("x-ratelimit-reset", HeaderValue::from(v.reset_s));
}
