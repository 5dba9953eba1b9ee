//! The OpenAPI 3 document of the whole HTTP surface, served at `/v1/openapi.json`.
//!
//! The functions below exist only to carry `#[utoipa::path]` descriptions; the real handlers
//! live in the other modules. A test (in `http`) checks that every route of the router is
//! described.

#![allow(dead_code)]

use super::admin::{AdminUserBody, PartnerBody, PartnerCreatedBody, ReaderBody};
use super::admin_site::DoorBody;
use super::pass_api::{SessionBody, SessionCreatedBody, UserBody};
use super::webhook_api::{AttemptBody, DeliveryBody, WebhookBody, WebhookSecretBody};
use axum::Json;
use serde::Serialize;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// Every error answer.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub message: String,
}

/// Body of `POST /v1/enroll`.
#[derive(Serialize, ToSchema)]
pub struct EnrollBody {
    /// 1–100 characters, not blank; unique per partner.
    #[schema(min_length = 1, max_length = 100)]
    pub external_id: String,
    #[schema(max_length = 150)]
    pub username: Option<String>,
    /// Any JSON object up to 16 KiB; `access_level` names the user's door access level(s).
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
}

/// Body of `POST /admin/v1/partners`.
#[derive(Serialize, ToSchema)]
pub struct CreatePartnerBody {
    pub name: String,
}

#[utoipa::path(post, path = "/v1/enroll", tag = "pass",
    params(("language" = Option<String>, Query, description = "en, kk or ru"),
           ("Idempotency-Key" = Option<String>, Header, description = "≤ 255 characters")),
    request_body(content = EnrollBody, content_type = "application/json"),
    responses(
        (status = 201, body = SessionCreatedBody, description = "session created"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 429, body = ErrorBody)),
    security(("api_key" = [])))]
fn enroll() {}

#[utoipa::path(post, path = "/v1/identify", tag = "pass",
    params(("language" = Option<String>, Query, description = "en, kk or ru"),
           ("Idempotency-Key" = Option<String>, Header, description = "≤ 255 characters")),
    responses(
        (status = 201, body = SessionCreatedBody, description = "session created"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 429, body = ErrorBody)),
    security(("api_key" = [])))]
fn identify() {}

#[utoipa::path(get, path = "/v1/sessions", tag = "pass",
    params(("limit" = Option<u32>, Query, description = "1–500, default 50")),
    responses((status = 200, body = Vec<SessionBody>, description = "the partner's newest sessions first"),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 429, body = ErrorBody)),
    security(("api_key" = [])))]
fn list_sessions() {}

#[utoipa::path(get, path = "/v1/users", tag = "pass",
    params(("limit" = Option<u32>, Query, description = "1–500, default 50")),
    responses((status = 200, body = Vec<UserBody>, description = "the partner's users, newest enrollment first"),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 429, body = ErrorBody)),
    security(("api_key" = [])))]
fn list_users() {}

#[utoipa::path(get, path = "/admin/v1/users", tag = "admin",
    params(("limit" = Option<u32>, Query, description = "1–500, default 50")),
    responses((status = 200, body = Vec<AdminUserBody>, description = "every partner's users"),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 429, body = ErrorBody)),
    security(("admin_token" = [])))]
fn admin_users() {}

#[utoipa::path(get, path = "/admin/v1/audit/export", tag = "admin",
    params(("from" = Option<String>, Query, description = "RFC 3339, inclusive"),
           ("to" = Option<String>, Query, description = "RFC 3339, exclusive"),
           ("format" = Option<String>, Query, description = "csv (default) or jsonl")),
    responses((status = 200, content_type = "text/csv", body = String, description = "door decisions: who, which door, when, granted or why not, policy version"),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 429, body = ErrorBody)),
    security(("admin_token" = [])))]
fn audit_export() {}

#[utoipa::path(get, path = "/v1/sessions/{session_id}", tag = "pass",
    params(("session_id" = String, Path)),
    responses((status = 200, body = SessionBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 429, body = ErrorBody)),
    security(("api_key" = [])))]
fn get_session() {}

#[utoipa::path(post, path = "/v1/sessions/{session_id}/cancel", tag = "pass",
    params(("session_id" = String, Path)),
    responses((status = 200, body = SessionBody, description = "the session, now failed: cancelled"),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "not pending"),
              (status = 429, body = ErrorBody)),
    security(("api_key" = [])))]
fn cancel_session() {}

#[utoipa::path(get, path = "/v1/users/{external_id}", tag = "pass",
    params(("external_id" = String, Path)),
    responses((status = 200, body = UserBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 429, body = ErrorBody)),
    security(("api_key" = [])))]
fn get_user() {}

#[utoipa::path(post, path = "/admin/v1/partners", tag = "admin",
    request_body(content = CreatePartnerBody, content_type = "application/json"),
    responses((status = 201, body = PartnerCreatedBody), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody)),
    security(("admin_token" = [])))]
fn create_partner() {}

#[utoipa::path(get, path = "/admin/v1/partners", tag = "admin",
    responses((status = 200, body = Vec<PartnerBody>), (status = 401, body = ErrorBody)),
    security(("admin_token" = [])))]
fn list_partners() {}

#[utoipa::path(post, path = "/admin/v1/partners/{id}/activate", tag = "admin",
    params(("id" = String, Path)),
    responses((status = 200, body = PartnerBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody)),
    security(("admin_token" = [])))]
fn activate_partner() {}

#[utoipa::path(post, path = "/admin/v1/partners/{id}/deactivate", tag = "admin",
    params(("id" = String, Path)),
    responses((status = 200, body = PartnerBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody)),
    security(("admin_token" = [])))]
fn deactivate_partner() {}

#[utoipa::path(delete, path = "/v1/users/{external_id}", tag = "pass",
    params(("external_id" = String, Path)),
    responses((status = 204, description = "erased: template key destroyed, door access ended"),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("api_key" = [])))]
fn delete_user() {}

/// Body of `PUT /v1/webhook`.
#[derive(Serialize, ToSchema)]
pub struct WebhookPutBody {
    /// http(s) URL; private, loopback and link-local addresses are refused unless allowed.
    pub url: String,
    /// `["session"]` (default) or `["session", "access"]`.
    pub events: Option<Vec<String>>,
}

/// Body of `POST /v1/webhook/recover`.
#[derive(Serialize, ToSchema)]
pub struct RecoverBody {
    /// RFC 3339.
    pub since: String,
}

/// `{"on": bool}` for lockdown and emergency unlock.
#[derive(Serialize, ToSchema)]
pub struct OnBody {
    pub on: bool,
}

#[utoipa::path(put, path = "/v1/webhook", tag = "webhooks",
    request_body(content = WebhookPutBody, content_type = "application/json"),
    responses((status = 200, body = WebhookSecretBody, description = "the secret is shown once"),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("api_key" = [])))]
fn put_webhook() {}

#[utoipa::path(get, path = "/v1/webhook", tag = "webhooks",
    responses((status = 200, body = WebhookBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody)),
    security(("api_key" = [])))]
fn get_webhook() {}

#[utoipa::path(post, path = "/v1/webhook/enable", tag = "webhooks",
    responses((status = 200, body = WebhookBody), (status = 404, body = ErrorBody)),
    security(("api_key" = [])))]
fn enable_webhook() {}

#[utoipa::path(post, path = "/v1/webhook/rotate-secret", tag = "webhooks",
    responses((status = 200, body = WebhookSecretBody, description = "the old secret signs 24 h more"),
              (status = 404, body = ErrorBody)),
    security(("api_key" = [])))]
fn rotate_webhook_secret() {}

#[utoipa::path(post, path = "/v1/webhook/test", tag = "webhooks",
    responses((status = 202, description = "a signed ping is queued"), (status = 404, body = ErrorBody)),
    security(("api_key" = [])))]
fn test_webhook() {}

#[utoipa::path(get, path = "/v1/webhook/deliveries", tag = "webhooks",
    params(("status" = Option<String>, Query, description = "pending, delivered, failed or held")),
    responses((status = 200, body = Vec<DeliveryBody>), (status = 400, body = ErrorBody)),
    security(("api_key" = [])))]
fn list_deliveries() {}

#[utoipa::path(post, path = "/v1/webhook/deliveries/{id}/redeliver", tag = "webhooks",
    params(("id" = String, Path)),
    responses((status = 202, description = "a new sequence of attempts starts now"),
              (status = 404, body = ErrorBody)),
    security(("api_key" = [])))]
fn redeliver() {}

#[utoipa::path(post, path = "/v1/webhook/recover", tag = "webhooks",
    request_body(content = RecoverBody, content_type = "application/json"),
    responses((status = 200, description = "`{\"redelivering\": n}`"), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody)),
    security(("api_key" = [])))]
fn recover() {}

#[utoipa::path(get, path = "/admin/v1/readers", tag = "admin",
    responses((status = 200, body = Vec<ReaderBody>), (status = 401, body = ErrorBody)),
    security(("admin_token" = [])))]
fn list_readers() {}

#[utoipa::path(get, path = "/admin/v1/policy", tag = "admin",
    responses((status = 200, description = "sha256, timezone, activated_at, document, warnings"),
              (status = 404, body = ErrorBody)),
    security(("admin_token" = [])))]
fn get_policy() {}

#[utoipa::path(put, path = "/admin/v1/policy", tag = "admin",
    request_body(content = String, content_type = "application/toml", description = "the site policy document"),
    responses((status = 200, description = "activated: `{\"sha256\": ...}`"),
              (status = 400, body = ErrorBody, description = "every error, with its line and key")),
    security(("admin_token" = [])))]
fn put_policy() {}

#[utoipa::path(get, path = "/admin/v1/mode", tag = "admin",
    responses((status = 200, description = "`{\"lockdown\": bool, \"emergency\": bool}`"),
              (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)),
    security(("admin_token" = [])))]
fn get_mode() {}

#[utoipa::path(post, path = "/admin/v1/lockdown", tag = "admin",
    request_body(content = OnBody, content_type = "application/json"),
    responses((status = 200, description = "`{\"lockdown\": bool, \"emergency\": bool}`")),
    security(("admin_token" = [])))]
fn lockdown() {}

#[utoipa::path(post, path = "/admin/v1/emergency-unlock", tag = "admin",
    request_body(content = OnBody, content_type = "application/json"),
    responses((status = 200, description = "`{\"lockdown\": bool, \"emergency\": bool}`")),
    security(("admin_token" = [])))]
fn emergency_unlock() {}

#[utoipa::path(get, path = "/admin/v1/doors", tag = "admin",
    responses((status = 200, body = Vec<DoorBody>)),
    security(("admin_token" = [])))]
fn doors() {}

#[utoipa::path(get, path = "/admin/v1/events", tag = "admin",
    params(("after" = Option<u64>, Query), ("limit" = Option<u64>, Query, description = "1–1000, default 100")),
    responses((status = 200, description = "`{\"events\": [...], \"next_after\": n}`")),
    security(("admin_token" = [])))]
fn events() {}

#[utoipa::path(get, path = "/admin/v1/events/stream", tag = "admin",
    responses((status = 200, content_type = "text/event-stream", description = "every event as it is recorded")),
    security(("admin_token" = [])))]
fn event_stream() {}

#[utoipa::path(get, path = "/enroll/{token}", tag = "pages",
    params(("token" = String, Path)),
    responses((status = 200, content_type = "text/html", description = "the page"),
              (status = 400, description = "link expired"), (status = 410, description = "already used"),
              (status = 404, description = "unknown")))]
fn enroll_page() {}

#[utoipa::path(get, path = "/identify/{token}", tag = "pages",
    params(("token" = String, Path), ("reader" = Option<String>, Query, description = "arm this reader")),
    responses((status = 200, content_type = "text/html", description = "the page"),
              (status = 400, description = "link expired"), (status = 410, description = "already used"),
              (status = 404, description = "unknown")))]
fn identify_page() {}

#[utoipa::path(post, path = "/{kind}/{token}/cancel", tag = "pages",
    params(("kind" = String, Path, description = "enroll or identify"), ("token" = String, Path)),
    responses((status = 303, description = "back to the page")))]
fn page_cancel() {}

#[utoipa::path(get, path = "/{kind}/{token}/events", tag = "pages",
    params(("kind" = String, Path), ("token" = String, Path)),
    responses((status = 200, content_type = "text/event-stream", description = "the session's progress")))]
fn page_events() {}

#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200)))]
fn healthz() {}

#[utoipa::path(get, path = "/readyz", tag = "ops",
    responses((status = 200), (status = 503, body = ErrorBody, description = "the log cannot be written")))]
fn readyz() {}

#[utoipa::path(get, path = "/metrics", tag = "ops",
    responses((status = 200, content_type = "text/plain", description = "Prometheus")))]
fn metrics() {}

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let c = openapi.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
        c.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "palmgate", description = "The Alaqan Pass API as implemented by palmgate, with partner and admin extensions."),
    paths(enroll, identify, list_sessions, list_users, admin_users, audit_export, get_session, cancel_session, get_user, delete_user,
          put_webhook, get_webhook, enable_webhook, rotate_webhook_secret, test_webhook,
          list_deliveries, redeliver, recover,
          create_partner, list_partners, activate_partner, deactivate_partner, list_readers,
          get_policy, put_policy, get_mode, lockdown, emergency_unlock, doors, events, event_stream,
          enroll_page, identify_page, page_cancel, page_events, healthz, readyz, metrics),
    components(schemas(ErrorBody, EnrollBody, SessionCreatedBody, SessionBody, UserBody,
                       PartnerBody, PartnerCreatedBody, CreatePartnerBody, ReaderBody,
                       WebhookPutBody, WebhookBody, WebhookSecretBody, DeliveryBody, AttemptBody,
                       RecoverBody, OnBody, DoorBody, AdminUserBody)),
    modifiers(&Security)
)]
pub struct ApiDoc;

/// The document as JSON.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// `GET /v1/openapi.json`
pub async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(document())
}
