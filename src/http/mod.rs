//! HTTP: one router for the Pass API (`/v1`), hosted pages, the admin API and health.
//!
//! Invariants: every error leaves through [`error::ApiError`] as `{"message"}` JSON; a panic in
//! a handler becomes `500 {"message":"internal error"}` and a log line; every `/v1` answer,
//! including 401, 404 and 429, carries the three rate-limit headers; a head over the size
//! limits (`serve::head_too_large`) is answered 414/431 as JSON, by the gate under `/v1`.

pub mod admin;
pub mod admin_site;
pub mod auth;
pub mod body;
pub mod dash;
pub mod error;
pub mod i18n;
pub mod openapi;
pub mod pages;
pub mod pass_api;
pub mod serve;
pub mod upstream;
pub mod webhook_api;

use crate::app::App;
use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, SecondsFormat, Utc};
use std::sync::Arc;
use tower_http::catch_panic::CatchPanicLayer;

/// A path parameter; a segment that cannot be decoded (bad UTF-8) is simply "not found",
/// answered as JSON like every other error.
pub struct Path<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for Path<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = error::ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, error::ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(v)| Path(v))
            .map_err(|_| error::ApiError::NotFound)
    }
}

/// RFC 3339, UTC, whole seconds, `Z` — the API's one time format.
pub fn time_text(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Every route of [`router`] as (method, OpenAPI path): the test below holds the OpenAPI
/// document to it.
pub const ROUTES: &[(&str, &str)] = &[
    ("post", "/v1/enroll"),
    ("post", "/v1/identify"),
    ("get", "/v1/sessions"),
    ("get", "/v1/sessions/{session_id}"),
    ("post", "/v1/sessions/{session_id}/cancel"),
    ("get", "/v1/users"),
    ("get", "/v1/users/{external_id}"),
    ("delete", "/v1/users/{external_id}"),
    ("put", "/v1/webhook"),
    ("get", "/v1/webhook"),
    ("post", "/v1/webhook/enable"),
    ("post", "/v1/webhook/rotate-secret"),
    ("post", "/v1/webhook/test"),
    ("get", "/v1/webhook/deliveries"),
    ("post", "/v1/webhook/deliveries/{id}/redeliver"),
    ("post", "/v1/webhook/recover"),
    ("post", "/admin/v1/partners"),
    ("get", "/admin/v1/partners"),
    ("post", "/admin/v1/partners/{id}/activate"),
    ("post", "/admin/v1/partners/{id}/deactivate"),
    ("get", "/admin/v1/readers"),
    ("get", "/admin/v1/users"),
    ("get", "/admin/v1/audit/export"),
    ("get", "/admin/v1/policy"),
    ("put", "/admin/v1/policy"),
    ("get", "/admin/v1/mode"),
    ("post", "/admin/v1/lockdown"),
    ("post", "/admin/v1/emergency-unlock"),
    ("get", "/admin/v1/doors"),
    ("get", "/admin/v1/zones"),
    ("post", "/admin/v1/zones/{zone}/forgive"),
    ("get", "/admin/v1/events"),
    ("get", "/admin/v1/head"),
    ("get", "/admin/v1/events/stream"),
    ("get", "/enroll/{token}"),
    ("get", "/identify/{token}"),
    ("post", "/{kind}/{token}/cancel"),
    ("get", "/{kind}/{token}/events"),
    ("post", "/hooks/upstream"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
];

pub fn router(app: Arc<App>) -> Router {
    prometheus();
    let v1 = Router::new()
        .route("/enroll", post(pass_api::enroll))
        .route("/identify", post(pass_api::identify))
        .route("/sessions", get(pass_api::list_sessions))
        .route("/users", get(pass_api::list_users))
        .route("/sessions/{session_id}", get(pass_api::get_session))
        .route(
            "/sessions/{session_id}/cancel",
            post(pass_api::cancel_session),
        )
        .route(
            "/users/{external_id}",
            get(pass_api::get_user).delete(pass_api::delete_user),
        )
        .route(
            "/webhook",
            axum::routing::put(webhook_api::put).get(webhook_api::get),
        )
        .route("/webhook/enable", post(webhook_api::enable))
        .route("/webhook/rotate-secret", post(webhook_api::rotate))
        .route("/webhook/test", post(webhook_api::test))
        .route("/webhook/deliveries", get(webhook_api::deliveries))
        .route(
            "/webhook/deliveries/{id}/redeliver",
            post(webhook_api::redeliver),
        )
        .route("/webhook/recover", post(webhook_api::recover))
        .route("/openapi.json", get(openapi::serve))
        .fallback(pass_api::not_found)
        .method_not_allowed_fallback(pass_api::not_found);
    let v1 = guard_v1(v1, app.clone());
    // `/v1/` (a trailing slash) is not one of the nested router's paths: without its own route
    // it fell to the outer 404, past the gate (no 401, no rate-limit headers: SPEC 2 wants
    // them on every response under `/v1`).
    let v1_slash = guard_v1(
        Router::new()
            .route("/v1/", axum::routing::any(pass_api::not_found))
            .method_not_allowed_fallback(pass_api::not_found),
        app.clone(),
    );
    let admin = Router::new()
        .route(
            "/partners",
            post(admin::create_partner).get(admin::list_partners),
        )
        .route("/partners/{id}/activate", post(admin::activate))
        .route("/partners/{id}/deactivate", post(admin::deactivate))
        .route("/readers", get(admin::list_readers))
        .route("/users", get(admin::list_users))
        .route("/audit/export", get(admin_site::audit_export))
        .route(
            "/policy",
            get(admin_site::get_policy).put(admin_site::put_policy),
        )
        .route("/mode", get(admin_site::get_mode))
        .route("/head", get(admin_site::head))
        .route("/lockdown", post(admin_site::lockdown))
        .route("/emergency-unlock", post(admin_site::emergency))
        .route("/doors", get(admin_site::doors))
        .route("/zones", get(admin_site::zones))
        .route("/zones/{zone}/forgive", post(admin_site::forgive))
        .route("/events", get(admin_site::events))
        .route("/events/stream", get(admin_site::event_stream));
    // Everything outside the `/v1` gate, whose head limits (414/431) the layer below checks;
    // under `/v1` the gate checks them, so its answer carries the rate-limit headers.
    let rest = Router::new()
        .nest("/admin/v1", admin)
        .route("/enroll/{token}", get(pages::enroll_page))
        .route("/identify/{token}", get(pages::identify_page))
        .route("/{kind}/{token}/cancel", post(pages::cancel))
        .route("/{kind}/{token}/events", get(pages::events))
        .route("/assets/page.js", get(pages::script))
        .route("/hooks/upstream", post(upstream::hook))
        .merge(dash::routes())
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        // The gateway's own address, typed into a browser (the demo prints it first): the
        // operator dashboard, not a 404.
        .route(
            "/",
            get(|| async { axum::response::Redirect::to("/admin") }),
        )
        .fallback(not_found)
        // Outside /v1 (where a wrong method is an unknown route, 404): 405 with `Allow`, as JSON.
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(head_limits));
    Router::new()
        .nest("/v1", v1)
        .merge(v1_slash)
        .merge(rest)
        .layer(axum::extract::DefaultBodyLimit::max(body::MAX_BODY))
        .layer(CatchPanicLayer::custom(on_panic))
        .with_state(app)
}

/// palmgate's limits on the request head (`serve::head_too_large`) outside `/v1`: 414 or 431 as
/// JSON, before the route sees the request.
async fn head_limits(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    match serve::head_too_large(&req) {
        Some(too_large) => too_large.into_response(),
        None => next.run(req).await,
    }
}

async fn not_found() -> Response {
    error::ApiError::NotFound.into_response()
}

async fn method_not_allowed() -> Response {
    error::message(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
}

/// How often the recorder's histogram samples are folded into their summaries.
const METRICS_UPKEEP: std::time::Duration = std::time::Duration::from_secs(5);

/// The Prometheus recorder, installed once per process (the `metrics` facade is global).
///
/// A histogram keeps every recorded sample until upkeep folds them into its summary, and
/// `install_recorder` (unlike the exporter's own listener) schedules no upkeep: without the
/// thread started here, a server nobody scrapes grew by every request's samples (the soak's
/// RSS, BENCHMARKS §7).
/// Installs the process's metrics recorder (once). `app::start_with` calls it first: a series
/// counted before the recorder exists is lost (the start-up policy activation's commit, and
/// the stale door scans of a resumed backlog, which the MQTT client meets right at start-up).
pub fn install_metrics() {
    prometheus();
}

fn prometheus() -> Option<&'static metrics_exporter_prometheus::PrometheusHandle> {
    static HANDLE: std::sync::OnceLock<Option<metrics_exporter_prometheus::PrometheusHandle>> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
                .install_recorder()
                .ok()?;
            let upkeep = handle.clone();
            let started = std::thread::Builder::new()
                .name("palmgate-metrics".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(METRICS_UPKEEP);
                        upkeep.run_upkeep();
                    }
                });
            if let Err(e) = started {
                tracing::warn!(error = %e, "metrics upkeep thread not started");
            }
            Some(handle)
        })
        .as_ref()
}

/// `GET /metrics`: the process-wide recorder's series, then this server's door gauges, read
/// from its state now ([`crate::app::metrics::render`]). The site's series (doors, readers,
/// relay boards, site mode, door decisions) only for the operator: the admin bearer token (or
/// the admin dashboard's session); without it, the process's series alone (store, MQTT link,
/// webhooks, upstream), as a scraper without credentials always had them.
async fn metrics(
    axum::extract::State(app): axum::extract::State<Arc<App>>,
    req: axum::extract::Request,
) -> Response {
    // Without a credential, nothing is spent of the address's budget: a scraper that never
    // had one keeps working as before. A bearer token is checked as the admin API checks it.
    let (parts, _) = req.into_parts();
    let admin = auth::monitor_credential(&app, &parts);
    let Some(h) = prometheus() else {
        return error::message(
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics recorder unavailable",
        );
    };
    let text = match admin {
        Some(Ok(auth::Monitor)) => {
            // First: it registers the door counters the recorder then renders.
            let doors = crate::app::metrics::render(&app);
            let mut text = h.render();
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(&doors);
            text
        }
        // A wrong token: 401, or 429 past the address's budget, as on the admin API (a
        // scraper with a stale token hears so, rather than losing series).
        Some(Err(e)) => return e.into_response(),
        None => {
            let mut text = String::new();
            for line in h.render().lines() {
                if !crate::app::metrics::is_site_series(line) {
                    text.push_str(line);
                    text.push('\n');
                }
            }
            text
        }
    };
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        text,
    )
        .into_response()
}

async fn healthz() -> Response {
    axum::Json(serde_json::json!({"status": "ok"})).into_response()
}

async fn readyz(axum::extract::State(app): axum::extract::State<Arc<App>>) -> Response {
    if !app.ready() {
        error::message(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the event log cannot accept writes",
        )
    } else if let Some(why) = crate::mqtt::broker::unready(&app.config.mqtt) {
        error::message(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("not ready: {why}"),
        )
    } else {
        axum::Json(serde_json::json!({"status": "ready"})).into_response()
    }
}

/// The `/v1` gate (API key, partner state, rate limits, and the rate-limit headers on every
/// answer) around the `/v1` routes, with a panic caught inside it: a panicking handler's 500
/// carries the `X-RateLimit-*` headers too (SPEC 2: every response under `/v1`).
fn guard_v1(v1: Router<Arc<App>>, app: Arc<App>) -> Router<Arc<App>> {
    v1.layer(CatchPanicLayer::custom(on_panic))
        .layer(axum::middleware::from_fn_with_state(app, auth::v1_gate))
}

fn on_panic(err: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let what = err
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| err.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    tracing::error!(panic = what, "handler panicked");
    error::ApiError::Internal.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    #[test]
    fn every_route_is_in_the_openapi_document() {
        let doc = serde_json::to_value(openapi::document()).unwrap();
        for (method, path) in ROUTES {
            assert!(
                doc["paths"][path][method].is_object(),
                "{method} {path} is not described in /v1/openapi.json"
            );
        }
        let described: usize = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .map(|p| p.as_object().unwrap().len())
            .sum();
        assert_eq!(
            described,
            ROUTES.len(),
            "the document describes routes the router lacks"
        );
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_500_json_without_details() {
        let router: Router = Router::new()
            .route(
                "/boom",
                get(|| async {
                    panic!("secret detail");
                    #[allow(unreachable_code)]
                    ""
                }),
            )
            .layer(CatchPanicLayer::custom(on_panic));
        let resp = router
            .oneshot(
                axum::http::Request::get("/boom")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(resp.into_body(), 1024).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v, serde_json::json!({"message": "internal error"}));
    }

    /// Under `/v1` the panic is caught inside the gate, so its 500 carries the rate-limit
    /// headers like every other `/v1` answer. (The public route needs no key.)
    #[tokio::test]
    async fn a_panic_under_v1_answers_500_with_the_rate_limit_headers() {
        use crate::app::Parts;
        use crate::app::clock::{ManualClock, SeededRng};
        let dir = tempfile::tempdir().unwrap();
        let store =
            Arc::new(crate::store::SqliteStore::open(dir.path().join("events.db")).unwrap());
        let keystore = crate::app::keystore::KeyStore::open(&dir.path().join("keys.db")).unwrap();
        let config = crate::config::Config::load(None, &[]).unwrap();
        let (app, _effects) = App::new(
            config,
            Parts {
                store,
                keystore,
                clock: Arc::new(ManualClock::new(Utc::now())),
                rng: Arc::new(SeededRng::new(1)),
                keys: crate::app::secrets::Keys::from_master(&[7; 32]),
                public_url: "http://gate.test".into(),
            },
        )
        .unwrap();
        let v1: Router<Arc<App>> = Router::new().route(
            "/openapi.json",
            get(|| async {
                panic!("secret detail");
                #[allow(unreachable_code)]
                ""
            }),
        );
        let router = Router::new()
            .nest("/v1", guard_v1(v1, app.clone()))
            .with_state(app);
        let resp = router
            .oneshot(
                axum::http::Request::get("/v1/openapi.json")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        for h in [
            "x-ratelimit-limit",
            "x-ratelimit-remaining",
            "x-ratelimit-reset",
        ] {
            assert!(
                resp.headers().contains_key(h),
                "{h} missing: {:?}",
                resp.headers()
            );
        }
        let body = axum::body::to_bytes(resp.into_body(), 1024).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v, serde_json::json!({"message": "internal error"}));
    }
}
