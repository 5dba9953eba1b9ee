//! Request bodies: a 64 KiB cap (413) and JSON with a clear 400 for every way it can be wrong.

use super::error::ApiError;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header;
use serde_json::Value;

/// Largest request body accepted anywhere (SPEC 2).
pub const MAX_BODY: usize = 64 * 1024;

/// The raw body, at most [`MAX_BODY`] bytes.
pub struct LimitedBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for LimitedBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, _: &S) -> Result<Self, ApiError> {
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_BODY as u64) {
            return Err(ApiError::PayloadTooLarge);
        }
        let bytes = axum::body::to_bytes(req.into_body(), MAX_BODY)
            .await
            .map_err(|e| {
                let text = format!("{e:?}");
                if text.contains("LengthLimit") {
                    ApiError::PayloadTooLarge
                } else if super::serve::is_body_timeout(&e) {
                    ApiError::RequestTimeout
                } else {
                    ApiError::BadRequest("could not read the request body".into())
                }
            })?;
        Ok(LimitedBody(bytes))
    }
}

/// A JSON body sent with `Content-Type: application/json`.
pub struct JsonBody(pub Value);

pub fn is_json_content_type(v: Option<&str>) -> bool {
    v.and_then(|v| v.split(';').next())
        .map(|m| m.trim().eq_ignore_ascii_case("application/json"))
        .unwrap_or(false)
}

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    /// The `Content-Type` is checked before the body is read: SPEC 2 checks 400 before 413.
    async fn from_request(req: Request, s: &S) -> Result<Self, ApiError> {
        let ct = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        if !is_json_content_type(ct) {
            return Err(refuse_head(
                req.headers(),
                "Content-Type must be application/json",
            ));
        }
        let LimitedBody(bytes) = LimitedBody::from_request(req, s).await?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// A 400 decided from the request's head: if a body came with it (unread), the connection is
/// closed after the answer.
pub fn refuse_head(headers: &header::HeaderMap, msg: &str) -> ApiError {
    let has_body = headers
        .get(header::CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes() != b"0")
        || headers.contains_key(header::TRANSFER_ENCODING);
    if has_body {
        ApiError::BadRequestUnread(msg.to_string())
    } else {
        ApiError::BadRequest(msg.to_string())
    }
}

/// Parses JSON with a message that says where it went wrong.
pub fn parse_json(bytes: &[u8]) -> Result<Value, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::BadRequest("request body is empty".into()));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        // serde_json's own words say what is wrong ("expected value", "trailing characters",
        // "recursion limit exceeded", "invalid unicode code point", ...): they name the input,
        // never the server. Its position suffix is replaced by ours.
        let what = e.to_string();
        let what = what
            .rsplit_once(" at line ")
            .map_or(what.as_str(), |(w, _)| w)
            .to_string();
        let what = match what.as_str() {
            "recursion limit exceeded" => "nested more than 128 levels deep".to_string(),
            "" => "syntax error".to_string(),
            _ => what,
        };
        ApiError::BadRequest(format!(
            "invalid JSON at line {} column {}: {what}",
            e.line(),
            e.column(),
        ))
    })
}
