//! The admin API under `/admin/v1` (SPEC 10), behind the admin bearer token.

use super::Path;
use super::auth::Admin;
use super::body::JsonBody;
use super::error::ApiError;
use super::time_text;
use crate::app::App;
use crate::app::secrets::{hash_secret, new_api_key};
use crate::core::decider::Partner;
use crate::core::{Command, PartnerId};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use serde_json::Value;
use std::sync::Arc;
use utoipa::ToSchema;

/// A partner as the operator sees it (never its key).
#[derive(Serialize, ToSchema)]
pub struct PartnerBody {
    pub id: String,
    pub name: String,
    pub active: bool,
    pub created_at: String,
}

/// 201 of partner creation: the API key is shown this once.
#[derive(Serialize, ToSchema)]
pub struct PartnerCreatedBody {
    pub id: String,
    pub name: String,
    pub active: bool,
    pub created_at: String,
    /// Shown once; palmgate keeps only its hash.
    pub api_key: String,
    /// Shown once when a webhook URL was given; null otherwise.
    pub webhook_secret: Option<String>,
}

fn partner_body(p: &Partner) -> PartnerBody {
    PartnerBody {
        id: p.id.to_string(),
        name: p.name.clone(),
        active: p.active,
        created_at: time_text(p.created_at),
    }
}

pub const MAX_PARTNER_NAME: usize = 200;

/// `POST /admin/v1/partners` `{name}`
pub async fn create_partner(
    State(app): State<Arc<App>>,
    _: Admin,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, super::webhook_api::NoStore<PartnerCreatedBody>), ApiError> {
    let bad = |m: &str| ApiError::BadRequest(m.to_string());
    let obj = body
        .as_object()
        .ok_or_else(|| bad("request body must be a JSON object"))?;
    let name = match obj.get("name") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
        Some(Value::String(_)) => return Err(bad("name must not be blank")),
        None | Some(Value::Null) => return Err(bad("name is required")),
        Some(_) => return Err(bad("name must be a string")),
    };
    if name.chars().count() > MAX_PARTNER_NAME {
        return Err(bad("name must be at most 200 characters"));
    }
    let webhook = match obj.get("webhook_url") {
        None | Some(Value::Null) => None,
        Some(url) => Some(super::webhook_api::validate(&app, url, None).await?),
    };
    let partner_id = PartnerId::from_random(app.rng.bytes16());
    let api_key = new_api_key(app.rng.bytes32());
    // The partner and its webhook are one append: never a partner without the webhook asked
    // for with it (a client that hung up between two commands, or a failed second one, once
    // left exactly that, with an API key nobody had seen).
    let (webhook_secret, webhook) = match webhook {
        Some((url, events)) => {
            let (secret, sealed) = super::webhook_api::sealed_new_secret(&app);
            let w = crate::core::NewWebhook {
                url,
                secret: sealed,
                events,
            };
            (Some(secret), Some(w))
        }
        None => (None, None),
    };
    let created = app
        .execute(Command::CreatePartner {
            partner_id,
            name: name.clone(),
            api_key_hash: hash_secret(&api_key),
            webhook,
        })
        .await;
    match created {
        Ok(_) => {}
        // Names are unique, trimmed and case-insensitive (a site policy admits partners by name).
        Err(e @ crate::app::AppError::Rejected(crate::core::Rejection::PartnerExists)) => {
            let taken =
                app.read(|s| crate::core::decider::partner_named(s, &name).map(|p| p.name.clone()));
            return Err(match taken {
                Some(taken) => ApiError::Conflict(format!(
                    "a partner named {taken:?} exists (partner names are unique, ignoring case)"
                )),
                None => e.into(),
            });
        }
        Err(e) => return Err(e.into()),
    }
    let p = app
        .read(|s| s.partner(partner_id).map(partner_body))
        .ok_or(ApiError::Internal)?;
    // The key (and webhook secret) are shown once: no cache keeps the answer.
    Ok((
        StatusCode::CREATED,
        (
            super::webhook_api::no_store(),
            Json(PartnerCreatedBody {
                id: p.id,
                name: p.name,
                active: p.active,
                created_at: p.created_at,
                api_key,
                webhook_secret,
            }),
        ),
    ))
}

/// `GET /admin/v1/partners`
pub async fn list_partners(State(app): State<Arc<App>>, _: Admin) -> Json<Vec<PartnerBody>> {
    let mut list: Vec<PartnerBody> = app.read(|s| s.partners().map(partner_body).collect());
    list.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
    Json(list)
}

async fn set_active(app: &App, id: &str, active: bool) -> Result<Json<PartnerBody>, ApiError> {
    let partner_id = PartnerId::parse(id).ok_or(ApiError::NotFound)?;
    app.execute(Command::SetPartnerActive { partner_id, active })
        .await?;
    app.read(|s| s.partner(partner_id).map(partner_body))
        .map(Json)
        .ok_or(ApiError::NotFound)
}

/// `POST /admin/v1/partners/{id}/activate`
pub async fn activate(
    State(app): State<Arc<App>>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<Json<PartnerBody>, ApiError> {
    set_active(&app, &id, true).await
}

/// `POST /admin/v1/partners/{id}/deactivate`
pub async fn deactivate(
    State(app): State<Arc<App>>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<Json<PartnerBody>, ApiError> {
    set_active(&app, &id, false).await
}

/// A reader as the operator sees it.
#[derive(Serialize, ToSchema)]
pub struct ReaderBody {
    pub id: String,
    /// The reader's last reported status (retained status or last will), as before.
    pub online: bool,
    pub model: Option<String>,
    pub firmware: Option<String>,
    /// When the reader last went online or offline.
    pub since: String,
    /// Whether the gateway is connected to the MQTT broker now. When false, `online` is only
    /// the last status heard before the link dropped: the reader can be neither heard nor
    /// armed.
    pub broker_up: bool,
    /// `online` or `offline` (the reader's report, `broker_up` true), or `unknown` (the
    /// gateway is not connected to the broker).
    #[schema(example = "online")]
    pub presence: &'static str,
}

/// The presences [`presence`] gives, in the order `/metrics` lists them.
pub const PRESENCES: [&str; 3] = ["online", "offline", "unknown"];

/// A reader's presence as the operator is told it (`/admin/v1/readers` and `/metrics`): its
/// last report (`online`) while the gateway's link to the broker is up (`broker_up`), and
/// `unknown` while it is down (the last report heard may no longer hold).
pub fn presence(broker_up: bool, online: bool) -> &'static str {
    match (broker_up, online) {
        (false, _) => "unknown",
        (true, true) => "online",
        (true, false) => "offline",
    }
}

/// Whether the gateway's link to the MQTT broker is up now ([`App::mqtt_up`]).
pub fn broker_up(app: &App) -> bool {
    app.mqtt_up.load(std::sync::atomic::Ordering::Relaxed)
}

/// `GET /admin/v1/readers`
pub async fn list_readers(State(app): State<Arc<App>>, _: Admin) -> Json<Vec<ReaderBody>> {
    let broker_up = broker_up(&app);
    let mut list: Vec<ReaderBody> = app.read(|s| {
        s.readers()
            .map(|r| ReaderBody {
                id: r.id.0.clone(),
                online: r.online,
                model: r.model.clone(),
                firmware: r.firmware.clone(),
                since: time_text(r.since),
                broker_up,
                presence: presence(broker_up, r.online),
            })
            .collect()
    });
    list.sort_by(|a, b| a.id.cmp(&b.id));
    Json(list)
}

/// A user as the operator sees it: whose, who, and the access level(s) the doors read.
#[derive(Serialize, ToSchema)]
pub struct AdminUserBody {
    pub partner_id: String,
    pub partner_name: String,
    pub external_id: String,
    pub username: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    pub enrolled_at: String,
}

/// `GET /admin/v1/users?limit=N&offset=M&q=TEXT`: every partner's users, newest enrollment
/// first; `q` matches the partner name, external id, username and access level(s) — what the
/// dashboard's users tab shows.
pub async fn list_users(
    State(app): State<Arc<App>>,
    _: Admin,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Result<super::pass_api::Page<AdminUserBody>, ApiError> {
    let list_query = super::pass_api::ListQuery::parse(query.as_deref())?;
    let mut list: Vec<(chrono::DateTime<chrono::Utc>, AdminUserBody)> = app.read(|s| {
        s.users()
            .map(|u| {
                let partner_name = s
                    .partner(u.partner_id)
                    .map(|p| p.name.clone())
                    .unwrap_or_default();
                (
                    u.enrolled_at,
                    AdminUserBody {
                        partner_id: u.partner_id.to_string(),
                        partner_name,
                        external_id: u.external_id.0.clone(),
                        username: u.username.clone(),
                        metadata: u.metadata.clone(),
                        enrolled_at: time_text(u.enrolled_at),
                    },
                )
            })
            .collect()
    });
    list.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.external_id.cmp(&b.1.external_id)));
    let bodies: Vec<AdminUserBody> = list.into_iter().map(|(_, u)| u).collect();
    Ok(list_query.page(bodies, |u| {
        let levels = super::pass_api::levels_text(u.metadata.as_ref());
        list_query.matches([
            Some(u.partner_name.as_str()),
            Some(u.external_id.as_str()),
            u.username.as_deref(),
            levels.as_deref(),
        ])
    }))
}
