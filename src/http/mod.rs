//! HTTP: one router for the Pass API (`/v1`), hosted pages, the admin API and health.
//!
//! Invariants: every error leaves through [`error::ApiError`] as `{"message"}` JSON; a panic in
//! a handler becomes `500 {"message":"internal error"}` and a log line; every `/v1` answer,
//! including 401, 404 and 429, carries the three rate-limit headers.

pub mod admin;
pub mod admin_site;
pub mod auth;
pub mod body;
pub mod error;
pub mod i18n;
pub mod openapi;
pub mod pages;
pub mod pass_api;
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

pub fn router(app: Arc<App>) -> Router {
    prometheus();
    let v1 = Router::new()
        .route("/enroll", post(pass_api::enroll))
        .route("/identify", post(pass_api::identify))
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
        .method_not_allowed_fallback(pass_api::not_found)
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            auth::v1_gate,
        ));
    let admin = Router::new()
        .route(
            "/partners",
            post(admin::create_partner).get(admin::list_partners),
        )
        .route("/partners/{id}/activate", post(admin::activate))
        .route("/partners/{id}/deactivate", post(admin::deactivate))
        .route("/readers", get(admin::list_readers))
        .route(
            "/policy",
            get(admin_site::get_policy).put(admin_site::put_policy),
        )
        .route("/lockdown", post(admin_site::lockdown))
        .route("/emergency-unlock", post(admin_site::emergency))
        .route("/doors", get(admin_site::doors))
        .route("/events", get(admin_site::events))
        .route("/events/stream", get(admin_site::event_stream));
    Router::new()
        .nest("/v1", v1)
        .nest("/admin/v1", admin)
        .route("/enroll/{token}", get(pages::enroll_page))
        .route("/identify/{token}", get(pages::identify_page))
        .route("/{kind}/{token}/cancel", post(pages::cancel))
        .route("/{kind}/{token}/events", get(pages::events))
        .route("/assets/page.js", get(pages::script))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(body::MAX_BODY))
        .layer(CatchPanicLayer::custom(on_panic))
        .with_state(app)
}

async fn not_found() -> Response {
    error::ApiError::NotFound.into_response()
}

/// The Prometheus recorder, installed once per process (the `metrics` facade is global).
fn prometheus() -> Option<&'static metrics_exporter_prometheus::PrometheusHandle> {
    static HANDLE: std::sync::OnceLock<Option<metrics_exporter_prometheus::PrometheusHandle>> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .install_recorder()
                .ok()
        })
        .as_ref()
}

async fn metrics() -> Response {
    match prometheus() {
        Some(h) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4",
            )],
            h.render(),
        )
            .into_response(),
        None => error::message(
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics recorder unavailable",
        ),
    }
}

async fn healthz() -> Response {
    axum::Json(serde_json::json!({"status": "ok"})).into_response()
}

async fn readyz(axum::extract::State(app): axum::extract::State<Arc<App>>) -> Response {
    if app.ready() {
        axum::Json(serde_json::json!({"status": "ready"})).into_response()
    } else {
        error::message(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the event log cannot accept writes",
        )
    }
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
