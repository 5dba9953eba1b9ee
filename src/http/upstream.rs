//! `POST /hooks/upstream`: the remote Pass API's webhook, in upstream mode.
//!
//! Checks, in order: upstream mode on (else 404) → `X-Webhook-Signature` is the remote's
//! HMAC-SHA256 of the raw body under `upstream.webhook_secret`, compared in constant time
//! (else 401; a caller with bad signatures spends its address budget and meets 429, like a key
//! guesser) → when the sender adds the Standard Webhooks headers, `webhook-timestamp` is a Unix
//! time, `webhook-signature` verifies over id, timestamp and body, and, for a webhook about an
//! open binding (the only one acted on), the timestamp is within [`TOLERANCE`] of now — read on
//! the gateway's clock with the skew measured when the session was opened, like the payload's
//! `timestamp` (else 401: a stale or replayed delivery) → the body is a SPEC 4 payload (else
//! 400). Then the core decides ([`crate::core::upstream::ended`]); the answer is 200 with what
//! became of it: `accepted`, `duplicate` (that session already ended: a retry or a replay) or
//! `ignored` (a ping, an enroll session, a session palmgate did not open). A webhook about no
//! open binding is answered from the log without the core and without the timestamp window:
//! no skew is known for it (a remote clock 10 minutes ahead made every retry and ping a 401,
//! and the remote then disabled the webhook), and it acts on nothing, however old. A log that
//! cannot be written answers 500 (SPEC 2: a failed disk), so the remote retries.

use super::body::LimitedBody;
use super::error::{self, ApiError};
use crate::app::{App, AppError};
use crate::core::event::UpstreamOutcome;
use crate::core::event::stream;
use crate::core::upstream::{RemoteEnd, UpstreamBinding};
use crate::core::webhook::{verify_seed_signature, verify_standard_signature};
use crate::core::{Command, ExternalId, Outcome, Rejection, UpstreamSessionId};
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::sync::Arc;

/// How far a Standard Webhooks `webhook-timestamp` may be from now.
pub const TOLERANCE: chrono::Duration = chrono::Duration::minutes(5);

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn status(what: &str) -> Response {
    axum::Json(json!({ "status": what })).into_response()
}

/// `POST /hooks/upstream`
pub async fn hook(State(app): State<Arc<App>>, req: Request) -> Response {
    let Some(up) = app.upstream.as_ref() else {
        return ApiError::NotFound.into_response();
    };
    let ip = super::auth::client_ip(req.extensions());
    let headers = req.headers().clone();
    let body = match LimitedBody::from_request(req, &()).await {
        Ok(LimitedBody(b)) => b,
        Err(e) => return e.into_response(),
    };
    let now = app.clock.now();
    let refuse = |why: &str| {
        let v = super::auth::spend_address(&app, ip, now.timestamp_micros());
        if !v.allowed {
            return ApiError::RateLimited {
                retry_after_s: v.retry_after_s,
            }
            .into_response();
        }
        tracing::warn!(%ip, why, "upstream webhook refused");
        metrics::counter!("palmgate_upstream_webhooks_total", "outcome" => "refused").increment(1);
        error::message(StatusCode::UNAUTHORIZED, why)
    };
    let signed = header(&headers, "x-webhook-signature")
        .is_some_and(|s| verify_seed_signature(&up.webhook_secret, &body, s));
    if !signed {
        return refuse("invalid or missing webhook signature");
    }
    let webhook_id = header(&headers, "x-webhook-id")
        .or_else(|| header(&headers, "webhook-id"))
        .unwrap_or("")
        .chars()
        .take(200)
        .collect::<String>();
    // The open binding the (signed) body names: only a webhook about one is acted on, so only
    // there does the timestamp window stand between a replay and a door.
    let binding = open_binding(&app, &body);
    if let Some(ts) = header(&headers, "webhook-timestamp") {
        let Some(t) = ts
            .trim()
            .parse::<i64>()
            .ok()
            .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
        else {
            return refuse("invalid webhook timestamp: not a Unix time in seconds");
        };
        // The remote stamps it with its own clock: read it on ours with the skew measured when
        // the session was opened (a gateway box without NTP), as the payload's `timestamp` is.
        // Without an open binding nothing is acted on (`duplicate` or `ignored`), and no skew
        // is known: a retry after the session ended, or a ping, is answered, not refused.
        if let Some(b) = &binding
            && (now - b.on_our_clock(t)).abs() > TOLERANCE
        {
            return refuse("stale webhook timestamp: more than 5 minutes from now");
        }
        if let (Some(sig), Some(id)) = (
            header(&headers, "webhook-signature"),
            header(&headers, "webhook-id"),
        ) && up.webhook_secret.starts_with("whsec_")
            && !verify_standard_signature(&up.webhook_secret, id, t.timestamp(), &body, sig)
        {
            return refuse("invalid webhook-signature");
        }
    }
    let payload = match super::body::parse_json(&body) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let end = match read_payload(&payload, webhook_id, up.partner_id) {
        Ok(Some(end)) => end,
        Ok(None) => return status("ignored"),
        Err(m) => return ApiError::BadRequest(m).into_response(),
    };
    let session = end.session_id.clone();
    if binding.as_ref().is_none_or(|b| b.session_id != session) {
        // No open binding: nothing to act on (a replay of any age lands here too). A session
        // that was bound and has ended is a retry: `duplicate`; any other, `ignored`.
        let ended = app.read(|s| s.revision(&stream::upstream(&session)).is_some());
        let what = if ended { "duplicate" } else { "ignored" };
        metrics::counter!("palmgate_upstream_webhooks_total", "outcome" => what).increment(1);
        tracing::info!(session = %session, outcome = what, "upstream webhook");
        return status(what);
    }
    let result = app.execute(Command::UpstreamWebhook(end)).await;
    let what = match &result {
        Ok(Outcome::Duplicate) => "duplicate",
        Ok(_) => "accepted",
        Err(AppError::Rejected(Rejection::NotFound)) => "ignored",
        Err(_) => "error",
    };
    metrics::counter!("palmgate_upstream_webhooks_total", "outcome" => what).increment(1);
    tracing::info!(session = %session, outcome = what, "upstream webhook");
    match result {
        Ok(_) | Err(AppError::Rejected(Rejection::NotFound)) => status(what),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// The open binding that the (signed) body's `data.session_id` names; `None` for a session
/// palmgate did not open or has ended, or a body that is not a payload.
fn open_binding(app: &App, body: &[u8]) -> Option<UpstreamBinding> {
    let id = serde_json::from_slice::<Value>(body).ok().and_then(|v| {
        v.pointer("/data/session_id")
            .and_then(Value::as_str)
            .map(|s| UpstreamSessionId(s.to_string()))
    })?;
    app.read(|s| s.upstream_binding(&id).cloned())
}

/// The SPEC 4 payload as the core's [`RemoteEnd`]; `Ok(None)` for what upstream mode does not
/// act on (other events, enroll sessions); `Err` for a body that is not such a payload.
fn read_payload(
    v: &Value,
    webhook_id: String,
    partner_id: crate::core::PartnerId,
) -> Result<Option<RemoteEnd>, String> {
    let obj = v.as_object().ok_or("the payload must be a JSON object")?;
    let event = obj
        .get("event")
        .and_then(Value::as_str)
        .ok_or("`event` is required")?;
    let outcome = match event {
        "completed" => UpstreamOutcome::Completed,
        "failed" => UpstreamOutcome::Failed,
        "expired" => UpstreamOutcome::Expired,
        _ => return Ok(None), // ping, access, later additions
    };
    let ended_at = obj
        .get("timestamp")
        .and_then(Value::as_str)
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .ok_or("`timestamp` must be an RFC 3339 time")?
        .with_timezone(&chrono::Utc);
    let data = obj
        .get("data")
        .and_then(Value::as_object)
        .ok_or("`data` must be an object")?;
    if data.get("type").and_then(Value::as_str) == Some("enroll") {
        return Ok(None);
    }
    let session_id = data
        .get("session_id")
        .and_then(Value::as_str)
        .filter(|s| crate::app::upstream::valid_session_id(s))
        .ok_or("`data.session_id` is required")?;
    let text = |k: &str, max: usize| -> Result<Option<String>, String> {
        match data.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.chars().count() <= max => Ok(Some(s.clone())),
            Some(_) => Err(format!(
                "`data.{k}` must be a string of at most {max} characters"
            )),
        }
    };
    let external_id = text("external_id", 100)?;
    if external_id.as_deref().is_some_and(|e| e.trim().is_empty()) {
        return Err("`data.external_id` is blank".into());
    }
    let metadata = match data.get("metadata") {
        None | Some(Value::Null) => None,
        Some(m @ Value::Object(_)) => Some(m.clone()),
        Some(_) => return Err("`data.metadata` must be an object".into()),
    };
    Ok(Some(RemoteEnd {
        session_id: UpstreamSessionId(session_id.to_string()),
        webhook_id,
        outcome,
        external_id: external_id.map(ExternalId),
        username: text("username", 150)?,
        metadata,
        fail_reason: text("fail_reason", 64)?,
        ended_at,
        partner_id,
        partner_name: crate::app::upstream::PARTNER_NAME.to_string(),
    }))
}
