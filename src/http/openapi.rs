//! The OpenAPI 3 document of the whole HTTP surface, served at `/v1/openapi.json`.
//!
//! The functions below exist only to carry `#[utoipa::path]` descriptions; the real handlers
//! live in `pass_api` and `admin`. A test checks that every route of the router is described.

#![allow(dead_code)]

use super::admin::{PartnerBody, PartnerCreatedBody};
use super::pass_api::{SessionBody, SessionCreatedBody, UserBody};
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
    paths(enroll, identify, get_session, cancel_session, get_user,
          create_partner, list_partners, activate_partner, deactivate_partner),
    components(schemas(ErrorBody, EnrollBody, SessionCreatedBody, SessionBody, UserBody,
                       PartnerBody, PartnerCreatedBody, CreatePartnerBody)),
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
