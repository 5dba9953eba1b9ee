//! The partner's webhook endpoints under `/v1/webhook` (SPEC 2, partner extensions).
//!
//! The secret is shown once, in the answer to `PUT /v1/webhook` and `rotate-secret` (sent with
//! `Cache-Control: no-store`, [`no_store`]); the log keeps it encrypted under the master key
//! (signing needs the secret itself, so a hash would not do).

use super::Path;
use super::auth::Partner;
use super::body::JsonBody;
use super::error::ApiError;
use super::pass_api::{ListQuery, Page};
use super::time_text;
use crate::app::App;
use crate::core::state::{Delivery, DeliveryStatus, Webhook};
use crate::core::webhook::new_secret;
use crate::core::{Command, PartnerId};
use crate::webhooks::guard::Guard;
use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::http::header::{CACHE_CONTROL, HeaderName};
use serde::Serialize;
use serde_json::Value;
use std::sync::Arc;
use utoipa::ToSchema;

/// The longest webhook URL, in characters (Unicode scalar values, as SPEC 2 counts
/// `external_id`).
pub const MAX_URL_CHARS: usize = 2048;

/// Event families a partner may subscribe to.
pub const EVENT_FAMILIES: &[&str] = &["session", "access"];

#[derive(Serialize, ToSchema)]
pub struct WebhookBody {
    pub url: String,
    /// `active` or `disabled`.
    pub status: String,
    pub events: Vec<String>,
    pub last_failure: Option<String>,
    /// What the last failed attempt got: `HTTP 500`, `HTTP 301: redirect to … not followed`, or
    /// the transport error (`timed out after 10 s`, `connection failed: …`).
    pub last_failure_reason: Option<String>,
    /// Until when the previous secret still signs `webhook-signature`, after a rotation or a
    /// new configuration (`PUT`).
    pub previous_secret_valid_until: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct WebhookSecretBody {
    pub url: String,
    pub status: String,
    pub events: Vec<String>,
    /// Shown once.
    pub secret: String,
}

#[derive(Serialize, ToSchema)]
pub struct AttemptBody {
    pub attempt: u32,
    pub status_code: Option<u16>,
    pub error: Option<String>,
    pub latency_ms: u64,
    /// The first 2 KB of the answer.
    pub response: String,
    pub delivered: bool,
    pub at: String,
}

#[derive(Serialize, ToSchema)]
pub struct DeliveryBody {
    pub id: String,
    pub event: String,
    pub session_id: Option<String>,
    /// pending, delivered, failed, or held (queued while the webhook was disabled).
    pub status: String,
    pub created_at: String,
    pub next_attempt_at: Option<String>,
    pub attempts: Vec<AttemptBody>,
}

fn webhook_body(w: &Webhook, now: chrono::DateTime<chrono::Utc>) -> WebhookBody {
    WebhookBody {
        url: w.url.clone(),
        status: if w.active { "active" } else { "disabled" }.into(),
        events: w.events.clone(),
        last_failure: w.last_failure.map(time_text),
        last_failure_reason: w
            .last_failure
            .and(w.last_failure_reason.clone())
            // Disabled by a failure logged before the reason was kept.
            .or_else(|| w.last_failure.map(|_| "not recorded".to_string())),
        previous_secret_valid_until: w
            .previous
            .as_ref()
            .filter(|(_, until)| now < *until)
            .map(|(_, until)| time_text(*until)),
    }
}

fn delivery_body(d: &Delivery) -> DeliveryBody {
    DeliveryBody {
        id: d.id.clone(),
        event: d.event.clone(),
        session_id: d.session_id.map(|s| s.to_string()),
        status: d.status.as_str().into(),
        created_at: time_text(d.created_at),
        next_attempt_at: d.next_attempt_at.map(time_text),
        attempts: d
            .attempts
            .iter()
            .map(|a| AttemptBody {
                attempt: a.attempt,
                status_code: a.status_code,
                error: a.error.clone(),
                latency_ms: a.latency_ms,
                response: a.response.clone(),
                delivered: a.delivered,
                at: time_text(a.at),
            })
            .collect(),
    }
}

fn current(app: &App, partner: PartnerId) -> Result<WebhookBody, ApiError> {
    let now = app.clock.now();
    app.read(|s| s.webhook(partner).map(|w| webhook_body(w, now)))
        .ok_or(ApiError::NotFound)
}

pub(super) fn sealed_new_secret(app: &App) -> (String, String) {
    let secret = new_secret(app.rng.bytes32());
    let mut nonce = [0u8; 24];
    app.rng.fill(&mut nonce);
    let sealed = app.keys.seal_secret(&secret, nonce);
    (secret, sealed)
}

/// Validates a webhook URL and event list; shared with partner creation in the admin API.
pub async fn validate(
    app: &App,
    url: &Value,
    events: Option<&Value>,
) -> Result<(String, Vec<String>), ApiError> {
    let bad = |m: String| ApiError::BadRequest(m);
    let url = match url {
        Value::String(s) if s.trim().is_empty() => {
            return Err(bad("url must not be empty".into()));
        }
        Value::String(s) if s.chars().count() > MAX_URL_CHARS => {
            return Err(bad(format!(
                "url must be at most {MAX_URL_CHARS} characters"
            )));
        }
        Value::String(s) => s.clone(),
        Value::Null => return Err(bad("url is required".into())),
        _ => return Err(bad("url must be a string".into())),
    };
    Guard::new(app.config.webhooks.allow_networks.clone())
        .check_url(&url)
        .await
        .map_err(bad)?;
    let events = match events {
        None | Some(Value::Null) => vec!["session".to_string()],
        Some(Value::Array(items)) => {
            let mut out = Vec::new();
            for i in items {
                match i.as_str() {
                    Some(e) if EVENT_FAMILIES.contains(&e) => {
                        if !out.iter().any(|x| x == e) {
                            out.push(e.to_string())
                        }
                    }
                    _ => return Err(bad("events must list \"session\" and/or \"access\"".into())),
                }
            }
            if out.is_empty() {
                return Err(bad("events must not be empty".into()));
            }
            out
        }
        Some(_) => return Err(bad("events must be an array".into())),
    };
    Ok((url, events))
}

/// Sets a partner's webhook and returns the new secret (clear, shown once).
pub async fn set(
    app: &App,
    partner: PartnerId,
    url: String,
    events: Vec<String>,
) -> Result<String, ApiError> {
    let (secret, sealed) = sealed_new_secret(app);
    app.execute(Command::SetWebhook {
        partner_id: partner,
        url,
        secret: sealed,
        events,
    })
    .await?;
    Ok(secret)
}

/// The headers of an answer that carries a secret shown once (a webhook secret, an API key):
/// no browser or proxy cache may keep a copy of it.
pub(super) fn no_store() -> [(HeaderName, &'static str); 1] {
    [(CACHE_CONTROL, "no-store")]
}

/// A JSON answer with [`no_store`].
pub(super) type NoStore<T> = ([(HeaderName, &'static str); 1], Json<T>);

/// The answer to a call that set a new secret: the webhook as it is now, with `secret` (shown
/// this once, not cached).
fn with_secret(
    app: &App,
    partner: PartnerId,
    secret: String,
) -> Result<NoStore<WebhookSecretBody>, ApiError> {
    let w = current(app, partner)?;
    Ok((
        no_store(),
        Json(WebhookSecretBody {
            url: w.url,
            status: w.status,
            events: w.events,
            secret,
        }),
    ))
}

/// `PUT /v1/webhook` `{"url", "events"?}`
pub async fn put(
    State(app): State<Arc<App>>,
    Partner(partner): Partner,
    JsonBody(body): JsonBody,
) -> Result<NoStore<WebhookSecretBody>, ApiError> {
    let obj = body
        .as_object()
        .ok_or_else(|| ApiError::BadRequest("request body must be a JSON object".into()))?;
    let (url, events) = validate(
        &app,
        obj.get("url").unwrap_or(&Value::Null),
        obj.get("events"),
    )
    .await?;
    let secret = set(&app, partner, url, events).await?;
    with_secret(&app, partner, secret)
}

/// `GET /v1/webhook`
pub async fn get(
    State(app): State<Arc<App>>,
    Partner(partner): Partner,
) -> Result<Json<WebhookBody>, ApiError> {
    current(&app, partner).map(Json)
}

/// `POST /v1/webhook/enable`
pub async fn enable(
    State(app): State<Arc<App>>,
    Partner(partner): Partner,
) -> Result<Json<WebhookBody>, ApiError> {
    app.execute(Command::EnableWebhook {
        partner_id: partner,
    })
    .await?;
    current(&app, partner).map(Json)
}

/// `POST /v1/webhook/rotate-secret`
pub async fn rotate(
    State(app): State<Arc<App>>,
    Partner(partner): Partner,
) -> Result<NoStore<WebhookSecretBody>, ApiError> {
    let (secret, sealed) = sealed_new_secret(&app);
    app.execute(Command::RotateWebhookSecret {
        partner_id: partner,
        secret: sealed,
    })
    .await?;
    with_secret(&app, partner, secret)
}

/// `POST /v1/webhook/test`: queues a signed `ping`.
pub async fn test(
    State(app): State<Arc<App>>,
    Partner(partner): Partner,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let id = format!("msg_{}", hex::encode(app.rng.bytes16()));
    app.execute(Command::TestWebhook {
        partner_id: partner,
        delivery_id: id.clone(),
    })
    .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "delivery_id": id })),
    ))
}

/// `GET /v1/webhook/deliveries?status=failed|pending|delivered|held&limit=N&offset=M&q=TEXT`:
/// newest first, with `X-Total-Count`; paged like the other lists when `limit` or `offset` is
/// given (`limit` 1–500, default 50), the whole list otherwise; `q` matches the delivery id,
/// event and session id.
pub async fn deliveries(
    State(app): State<Arc<App>>,
    Partner(partner): Partner,
    RawQuery(query): RawQuery,
) -> Result<Page<DeliveryBody>, ApiError> {
    let mut list_query = ListQuery::parse(query.as_deref())?;
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(query.as_deref().unwrap_or("")).unwrap_or_default();
    // Without `limit` or `offset` the whole list, as SPEC 2 shows the call (a client written
    // for it redelivers every failed one); paging is asked for.
    if !pairs.iter().any(|(k, _)| k == "limit" || k == "offset") {
        list_query.limit = usize::MAX;
    }
    let filter = match pairs
        .iter()
        .find(|(k, _)| k == "status")
        .map(|(_, v)| v.as_str())
    {
        None => None,
        Some("pending") => Some(vec![DeliveryStatus::Pending, DeliveryStatus::Held]),
        Some("held") => Some(vec![DeliveryStatus::Held]),
        Some("failed") => Some(vec![DeliveryStatus::Failed]),
        Some("delivered") => Some(vec![DeliveryStatus::Delivered]),
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "unknown status {other:?}: use pending, delivered, failed or held"
            )));
        }
    };
    let mut list: Vec<DeliveryBody> = app.read(|s| {
        s.deliveries_of(partner)
            .filter(|d| filter.as_ref().is_none_or(|f| f.contains(&d.status)))
            .map(delivery_body)
            .collect()
    });
    list.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
    Ok(list_query.page(list, |d| {
        list_query.matches([
            Some(d.id.as_str()),
            Some(d.event.as_str()),
            d.session_id.as_deref(),
        ])
    }))
}

/// `POST /v1/webhook/deliveries/{id}/redeliver`
pub async fn redeliver(
    State(app): State<Arc<App>>,
    Partner(partner): Partner,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    app.execute(Command::Redeliver {
        partner_id: partner,
        delivery_id: id.clone(),
    })
    .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "delivery_id": id })),
    ))
}

/// `POST /v1/webhook/recover` `{"since": "<RFC 3339>"}`
pub async fn recover(
    State(app): State<Arc<App>>,
    Partner(partner): Partner,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let since = body
        .get("since")
        .and_then(Value::as_str)
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
        .ok_or_else(|| ApiError::BadRequest("since must be an RFC 3339 time".into()))?;
    if app.read(|s| s.webhook(partner).is_none()) {
        return Err(ApiError::NotFound);
    }
    let outcome = app
        .execute(Command::Recover {
            partner_id: partner,
            since,
        })
        .await?;
    let n = match outcome {
        crate::core::Outcome::Rescheduled(n) => n,
        _ => 0,
    };
    Ok(Json(serde_json::json!({ "redelivering": n })))
}
