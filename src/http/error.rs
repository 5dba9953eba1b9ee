//! The one mapping from errors to HTTP answers: `{"message": ...}`, JSON, never internals.

use crate::app::AppError;
use crate::core::Rejection;
use crate::store::StoreError;
use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    /// A 400 decided from the head alone, before a body that came with the request was read:
    /// the connection is closed after it.
    #[error("{0}")]
    BadRequestUnread(String),
    #[error("invalid or missing API key")]
    Unauthorized,
    #[error("invalid or missing admin token")]
    AdminUnauthorized,
    #[error("partner account is inactive")]
    Forbidden,
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    Conflict(String),
    /// 400 whose body also lists every error (`errors`: one string per key, with its line).
    #[error("invalid site policy: {}", .0.join("; "))]
    InvalidPolicy(Vec<String>),
    #[error("request body too large")]
    PayloadTooLarge,
    /// The body did not arrive within `http.body_timeout`.
    #[error("request body timed out")]
    RequestTimeout,
    /// The request target is longer than palmgate takes ([`super::serve::head_too_large`]).
    #[error("request URI too long (limit {limit} bytes)")]
    UriTooLong { limit: usize },
    /// Too many header fields, or too many bytes of them (the message says which).
    #[error("{0}")]
    HeadersTooLarge(String),
    #[error("rate limit exceeded")]
    RateLimited { retry_after_s: i64 },
    /// The event log (or the key store) cannot accept writes: SPEC 2's "failed disk", a 500
    /// `internal error` like a bug (the log says which).
    #[error("internal error")]
    Unavailable,
    #[error("internal error")]
    Internal,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_)
            | ApiError::BadRequestUnread(_)
            | ApiError::InvalidPolicy(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized | ApiError::AdminUnauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden => StatusCode::FORBIDDEN,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            ApiError::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable | ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// `{"message": ...}` with `status`.
pub fn message(status: StatusCode, msg: &str) -> Response {
    (status, Json(serde_json::json!({ "message": msg }))).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = match &self {
            ApiError::InvalidPolicy(errors) => (
                self.status(),
                Json(serde_json::json!({ "message": self.to_string(), "errors": errors })),
            )
                .into_response(),
            _ => message(self.status(), &self.to_string()),
        };
        match self {
            ApiError::RateLimited { retry_after_s } => {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_s.max(1)));
            }
            // The rest of the body is never read: tell the client not to reuse the connection.
            // An oversized head is refused before its body, as hyper itself did.
            ApiError::PayloadTooLarge
            | ApiError::RequestTimeout
            | ApiError::BadRequestUnread(_)
            | ApiError::UriTooLong { .. }
            | ApiError::HeadersTooLarge(_) => {
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        resp
    }
}

impl From<Rejection> for ApiError {
    fn from(r: Rejection) -> Self {
        match r {
            Rejection::NotFound => ApiError::NotFound,
            Rejection::PartnerInactive => ApiError::Forbidden,
            Rejection::AlreadyEnrolled
            | Rejection::SessionNotPending
            | Rejection::IdempotencyMismatch
            | Rejection::PartnerExists
            | Rejection::ReaderOffline
            | Rejection::ReaderBusy
            | Rejection::ReaderAtDoor
            | Rejection::WebhookDisabled => ApiError::Conflict(r.to_string()),
            Rejection::Invalid(m) => ApiError::BadRequest(m.to_string()),
            Rejection::InvalidPolicy(errors) => ApiError::InvalidPolicy(errors),
        }
    }
}

impl From<AppError> for ApiError {
    fn from(e: AppError) -> Self {
        match e {
            AppError::Rejected(r) => r.into(),
            AppError::Store(StoreError::Conflict { .. }) | AppError::Contended => {
                tracing::warn!(error = %e, "command lost too many races");
                ApiError::Conflict("concurrent update, retry the request".into())
            }
            AppError::Keys(e) => {
                tracing::error!(error = %e, "key store failure");
                ApiError::Unavailable
            }
            AppError::Store(e) => {
                tracing::error!(error = %e, "event store failure");
                ApiError::Unavailable
            }
        }
    }
}
