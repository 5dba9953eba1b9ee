//! The OpenAPI 3 document of the whole HTTP surface, served at `/v1/openapi.json`.
//!
//! The functions below exist only to carry `#[utoipa::path]` descriptions; the real handlers
//! live in the other modules. A test (in `http`) checks that every route of the router is
//! described.

#![allow(dead_code)]

use super::admin::{AdminUserBody, PartnerBody, PartnerCreatedBody, ReaderBody};
use super::admin_site::{DoorBody, ZoneBody};
use super::pass_api::{SessionBody, SessionCreatedBody, UserBody};
use super::webhook_api::{AttemptBody, DeliveryBody, WebhookBody, WebhookSecretBody};
use axum::Json;
use serde::Serialize;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, ObjectBuilder, Ref, RefOr, ResponseBuilder, Type};
use utoipa::{Modify, OpenApi, ToSchema};

/// `?language=` of enroll and identify.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    En,
    Kk,
    Ru,
}

/// `?status=` of the delivery list (`pending` includes `held`).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatusFilter {
    Pending,
    Delivered,
    Failed,
    Held,
}

/// `?format=` of the audit export.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AuditFormat {
    Csv,
    Jsonl,
}

/// `{kind}` of the hosted pages.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PageKind {
    Enroll,
    Identify,
}

/// Every error answer.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub message: String,
}

/// Body of `POST /v1/enroll`.
#[derive(Serialize, ToSchema)]
pub struct EnrollBody {
    /// 1–100 characters, not blank; unique per partner.
    #[schema(min_length = 1, max_length = 100, pattern = r"\S")]
    pub external_id: String,
    #[schema(max_length = 150)]
    pub username: Option<String>,
    /// Any JSON object up to 16 KiB and 32 levels deep; `access_level` names the user's door
    /// access level(s).
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
}

/// `202` of `POST /v1/webhook/test` and `POST /v1/webhook/deliveries/{id}/redeliver`
/// (`webhook_api::test` and `webhook_api::redeliver`).
#[derive(Serialize, ToSchema)]
pub struct DeliveryQueuedBody {
    /// The delivery queued: a new `msg_…` ping (test), or the one redelivered.
    pub delivery_id: String,
}

/// `200` of `POST /v1/webhook/recover` (`webhook_api::recover`).
#[derive(Serialize, ToSchema)]
pub struct RecoverQueuedBody {
    /// How many failed deliveries since `since` are queued again.
    pub redelivering: u64,
}

/// Body of `POST /admin/v1/partners`.
#[derive(Serialize, ToSchema)]
pub struct CreatePartnerBody {
    /// 1–200 characters, not blank.
    #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
    pub name: String,
    /// The partner's webhook (as `PUT /v1/webhook`); its secret is shown once in the answer.
    pub webhook_url: Option<String>,
}

#[utoipa::path(post, path = "/v1/enroll", tag = "pass",
    params(("language" = Option<Language>, Query, description = "en (default), kk or ru"),
           ("Idempotency-Key" = Option<String>, Header, description = "≤ 255 characters")),
    request_body(content = EnrollBody, content_type = "application/json"),
    responses(
        (status = 201, body = SessionCreatedBody, description = "session created",
         headers(("Idempotent-Replayed" = String, description = "`true` when the answer replays the session an earlier request with the same Idempotency-Key created; absent otherwise"))),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 429, body = ErrorBody)),
    security(("api_key" = [])))]
fn enroll() {}

#[utoipa::path(post, path = "/v1/identify", tag = "pass",
    params(("language" = Option<Language>, Query, description = "en (default), kk or ru"),
           ("Idempotency-Key" = Option<String>, Header, description = "≤ 255 characters")),
    responses(
        (status = 201, body = SessionCreatedBody, description = "session created",
         headers(("Idempotent-Replayed" = String, description = "`true` when the answer replays the session an earlier request with the same Idempotency-Key created; absent otherwise"))),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody, description = "a body (none is needed) over 64 KiB"),
        (status = 429, body = ErrorBody)),
    security(("api_key" = [])))]
fn identify() {}

#[utoipa::path(get, path = "/v1/sessions", tag = "pass",
    params(("limit" = Option<u32>, Query, minimum = 1, maximum = 500, description = "1–500, default 50"),
           ("offset" = Option<u32>, Query, minimum = 0, maximum = 1000000000, description = "matches to skip, 0–1000000000, default 0"),
           ("q" = Option<String>, Query, max_length = 200, description = "case-insensitive substring; matches the session id, external_id, type or state")),
    responses((status = 200, body = Vec<SessionBody>, description = "the partner's newest sessions first", headers(("X-Total-Count" = u64, description = "matches before offset and limit"))),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 429, body = ErrorBody)),
    security(("api_key" = [])))]
fn list_sessions() {}

#[utoipa::path(get, path = "/v1/users", tag = "pass",
    params(("limit" = Option<u32>, Query, minimum = 1, maximum = 500, description = "1–500, default 50"),
           ("offset" = Option<u32>, Query, minimum = 0, maximum = 1000000000, description = "matches to skip, 0–1000000000, default 0"),
           ("q" = Option<String>, Query, max_length = 200, description = "case-insensitive substring; matches external_id, username or access level(s)")),
    responses((status = 200, body = Vec<UserBody>, description = "the partner's users, newest enrollment first", headers(("X-Total-Count" = u64, description = "matches before offset and limit"))),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 429, body = ErrorBody)),
    security(("api_key" = [])))]
fn list_users() {}

#[utoipa::path(get, path = "/admin/v1/users", tag = "admin",
    params(("limit" = Option<u32>, Query, minimum = 1, maximum = 500, description = "1–500, default 50"),
           ("offset" = Option<u32>, Query, minimum = 0, maximum = 1000000000, description = "matches to skip, 0–1000000000, default 0"),
           ("q" = Option<String>, Query, max_length = 200, description = "case-insensitive substring; matches partner name, external_id, username or access level(s)")),
    responses((status = 200, body = Vec<AdminUserBody>, description = "every partner's users, newest enrollment first", headers(("X-Total-Count" = u64, description = "matches before offset and limit"))),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 429, body = ErrorBody)),
    security(("admin_token" = [])))]
fn admin_users() {}

#[utoipa::path(get, path = "/admin/v1/audit/export", tag = "admin",
    params(("from" = Option<String>, Query, format = DateTime, description = "RFC 3339, inclusive"),
           ("to" = Option<String>, Query, format = DateTime, description = "RFC 3339, exclusive"),
           ("format" = Option<AuditFormat>, Query, description = "csv (default) or jsonl")),
    responses((status = 200, content((String = "text/csv"), (String = "application/x-ndjson")), description = "door decisions: who, which door, when, granted or why not, policy version"),
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
              (status = 401, body = ErrorBody),
              (status = 409, body = ErrorBody,
               description = "a partner with that name (ignoring case) exists")),
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
    #[schema(format = DateTime)]
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
    responses((status = 202, body = DeliveryQueuedBody, description = "a signed ping is queued"),
              (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody, description = "the webhook is disabled: enable it first")),
    security(("api_key" = [])))]
fn test_webhook() {}

#[utoipa::path(get, path = "/v1/webhook/deliveries", tag = "webhooks",
    params(("status" = Option<DeliveryStatusFilter>, Query, description = "pending (with held), delivered, failed or held"),
           ("limit" = Option<u32>, Query, minimum = 1, maximum = 500, description = "1–500; with limit or offset the list is paged (limit default 50), without either it is whole"),
           ("offset" = Option<u32>, Query, minimum = 0, maximum = 1000000000, description = "matches to skip, 0–1000000000, default 0"),
           ("q" = Option<String>, Query, max_length = 200, description = "case-insensitive substring; matches the delivery id, event or session id")),
    responses((status = 200, body = Vec<DeliveryBody>, description = "the partner's deliveries, newest first", headers(("X-Total-Count" = u64, description = "matches before offset and limit"))),
              (status = 400, body = ErrorBody)),
    security(("api_key" = [])))]
fn list_deliveries() {}

#[utoipa::path(post, path = "/v1/webhook/deliveries/{id}/redeliver", tag = "webhooks",
    params(("id" = String, Path)),
    responses((status = 202, body = DeliveryQueuedBody, description = "a new sequence of attempts starts now"),
              (status = 404, body = ErrorBody)),
    security(("api_key" = [])))]
fn redeliver() {}

#[utoipa::path(post, path = "/v1/webhook/recover", tag = "webhooks",
    request_body(content = RecoverBody, content_type = "application/json"),
    responses((status = 200, body = RecoverQueuedBody, description = "the failed deliveries since `since` are queued again"),
              (status = 400, body = ErrorBody),
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
    request_body(content((String = "application/toml"), (String = "text/plain")), description = "the site policy document (TOML, UTF-8; any content type is read as TOML), at most 1 MiB (1048576 bytes; the 64 KiB body limit of the other endpoints does not apply)"),
    responses((status = 200, description = "activated: `{\"sha256\": ..., \"warnings\": [...]}` (warnings: e.g. numeric days of week)"),
              (status = 400, body = ErrorBody, description = "every error, with its line and key"),
              (status = 413, body = ErrorBody, description = "the document is over 1 MiB")),
    security(("admin_token" = [])))]
fn put_policy() {}

#[utoipa::path(get, path = "/admin/v1/head", tag = "admin",
    responses((status = 200, description = "The log's head as this gateway has it: `{\"position\": n, \"hash\": \"64 hex digits\", \"expect_head\": \"n:hash\"}` (`position` 0 and the other two null for an empty log). Keep it outside the gateway (a monitoring system): `palmgate audit verify --expect-head n:hash` fails on a log that no longer holds it. The read-only monitor token (`admin.monitor_token_sha256`) is accepted here too."),
              (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)),
    security(("admin_token" = [])))]
fn head() {}

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

/// The body of `POST /admin/v1/zones/{zone}/forgive`: both ids (one person) or neither
/// (everyone in the zone).
#[derive(ToSchema)]
#[allow(dead_code)]
struct ForgiveBody {
    /// The person's partner (a UUID); with `external_id`.
    partner_id: Option<String>,
    /// The person's `external_id`; with `partner_id`.
    external_id: Option<String>,
    /// Why, for the audit trail (at most 500 characters).
    #[schema(max_length = 500)]
    reason: Option<String>,
}

#[utoipa::path(get, path = "/admin/v1/zones", tag = "admin",
    responses((status = 200, body = Vec<ZoneBody>, description = "the zones of the policy in force, with how many people are inside and outside each")),
    security(("admin_token" = [])))]
fn zones() {}

#[utoipa::path(post, path = "/admin/v1/zones/{zone}/forgive", tag = "admin",
    params(("zone" = String, Path, description = "a zone of the policy in force")),
    request_body(content = ForgiveBody, content_type = "application/json"),
    responses((status = 200, description = "`{\"zone\": name, \"forgiven\": n}`: how many people's presence was ended (0: nothing to forgive, nothing recorded)"),
              (status = 400, body = ErrorBody), (status = 404, body = ErrorBody, description = "no such zone in the policy in force")),
    security(("admin_token" = [])))]
fn forgive_zone() {}

#[utoipa::path(get, path = "/admin/v1/events", tag = "admin",
    params(("after" = Option<i64>, Query, minimum = 0, description = "the position after which to read; default 0"),
           ("limit" = Option<i64>, Query, minimum = 0, description = "default 100; clamped to 1–1000")),
    responses((status = 200, description = "`{\"events\": [...], \"next_after\": n, \"last_position\": n}`"),
              (status = 400, body = ErrorBody, description = "after or limit is not a whole number from 0 to 2^63-1")),
    security(("admin_token" = [])))]
fn events() {}

#[utoipa::path(get, path = "/admin/v1/events/stream", tag = "admin",
    responses((status = 200, content_type = "text/event-stream", description = "every event as it is recorded")),
    security(("admin_token" = [])))]
fn event_stream() {}

#[utoipa::path(get, path = "/enroll/{token}", tag = "pages",
    params(("token" = String, Path), ("reader" = Option<String>, Query, description = "arm this reader")),
    responses((status = 200, content_type = "text/html", description = "the page (a notice when the chosen reader is offline or busy)"),
              (status = 400, description = "link expired"), (status = 410, description = "already used"),
              (status = 404, description = "unknown"),
              (status = 429, body = ErrorBody, description = "`?reader=`: too many armings from this address",
               headers(("Retry-After" = u64, description = "seconds to wait, at least 1"))),
              (status = 500, body = ErrorBody, description = "`?reader=`: internal error (e.g. the event log cannot accept writes)")))]
fn enroll_page() {}

#[utoipa::path(get, path = "/identify/{token}", tag = "pages",
    params(("token" = String, Path), ("reader" = Option<String>, Query, description = "arm this reader")),
    responses((status = 200, content_type = "text/html", description = "the page (a notice when the chosen reader is offline or busy)"),
              (status = 400, description = "link expired"), (status = 410, description = "already used"),
              (status = 404, description = "unknown"),
              (status = 429, body = ErrorBody, description = "`?reader=`: too many armings from this address",
               headers(("Retry-After" = u64, description = "seconds to wait, at least 1"))),
              (status = 500, body = ErrorBody, description = "`?reader=`: internal error (e.g. the event log cannot accept writes)")))]
fn identify_page() {}

#[utoipa::path(post, path = "/{kind}/{token}/cancel", tag = "pages",
    params(("kind" = PageKind, Path), ("token" = String, Path)),
    responses((status = 303, description = "back to the page"),
              (status = 404, description = "unknown link (HTML, or JSON when asked for)"),
              (status = 500, body = ErrorBody, description = "internal error: a bug, or the event log cannot accept writes")))]
fn page_cancel() {}

#[utoipa::path(get, path = "/{kind}/{token}/events", tag = "pages",
    params(("kind" = PageKind, Path), ("token" = String, Path)),
    responses((status = 200, content_type = "text/event-stream", description = "the session's progress; the stream ends once the session has ended"),
              (status = 404, body = ErrorBody),
              (status = 429, body = ErrorBody, description = "4 streams of this session, or 512 of its partner's sessions, are open already (the page then polls)")))]
fn page_events() {}

/// The remote Pass API's webhook (SPEC 4 payload), in upstream mode.
#[derive(Serialize, ToSchema)]
pub struct UpstreamHookBody {
    /// `completed`, `failed` or `expired` (anything else is ignored).
    pub event: String,
    /// RFC 3339: when the remote session ended.
    #[schema(format = DateTime)]
    pub timestamp: String,
    /// `session_id`, `type`, `external_id`, `username`, `metadata`, `fail_reason`, `language`.
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

#[utoipa::path(post, path = "/hooks/upstream", tag = "upstream",
    params(("X-Webhook-Signature" = String, Header, description = "sha256=<hex HMAC-SHA256(upstream.webhook_secret, raw body)>"),
           ("X-Webhook-Id" = Option<String>, Header, description = "the delivery's id"),
           ("webhook-timestamp" = Option<String>, Header, description = "Standard Webhooks: Unix seconds, within 5 minutes of now"),
           ("webhook-signature" = Option<String>, Header, description = "Standard Webhooks: verified when present with webhook-id and webhook-timestamp")),
    request_body(content = UpstreamHookBody, content_type = "application/json"),
    responses((status = 200, description = "`{\"status\": \"accepted\" | \"duplicate\" | \"ignored\"}`"),
              (status = 400, body = ErrorBody, description = "not a webhook payload"),
              (status = 401, body = ErrorBody, description = "missing, wrong or stale signature"),
              (status = 404, body = ErrorBody, description = "upstream mode is off"),
              (status = 413, body = ErrorBody),
              (status = 429, body = ErrorBody, description = "too many unsigned calls from this address",
               headers(("Retry-After" = u64, description = "seconds to wait, at least 1"))),
              (status = 500, body = ErrorBody, description = "internal error (e.g. the event log cannot accept writes): retry")))]
fn upstream_hook() {}

#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200)))]
fn healthz() {}

#[utoipa::path(get, path = "/readyz", tag = "ops",
    responses((status = 200), (status = 503, body = ErrorBody, description = "the log cannot be written, or the embedded MQTT broker does not accept sessions")))]
fn readyz() {}

#[utoipa::path(get, path = "/metrics", tag = "ops",
    responses((status = 200, content_type = "text/plain", description = "Prometheus")))]
fn metrics() {}

/// Adds the error answers every operation of a family can give, where its description does not
/// name them already: 401 and 429 behind a credential, 403 for an inactive partner, 400 and 413
/// with a body, 408 wherever a body is read (a request body or a 413: a body not whole within
/// `[http] body_timeout`, 30 s by default), 404 with a path parameter, 500 for a write the log
/// cannot take (SPEC 2: a failed disk), 414 and 431 on every route for a head over the size
/// limits. Kept here, in
/// one place, so the document cannot drift from the gate and extractors that produce them
/// (schemathesis checks every answer against it).
struct CommonErrors;

impl Modify for CommonErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            let partner = path.starts_with("/v1/");
            let admin = path.starts_with("/admin/v1/");
            let ops = [
                ("get", &mut item.get),
                ("post", &mut item.post),
                ("put", &mut item.put),
                ("delete", &mut item.delete),
            ];
            for (method, op) in ops {
                let Some(op) = op else { continue };
                let has_body = op.request_body.is_some();
                let responses = &mut op.responses.responses;
                // A documented 413 means the handler reads the body (identify reads and ignores
                // one; the policy and upstream hook read theirs raw): it can time out as well.
                let reads_body = has_body || responses.contains_key("413");
                let mut add = |code: &str, what: &str| {
                    responses
                        .entry(code.to_string())
                        .or_insert_with(|| error_response(what));
                };
                if partner || admin {
                    add("401", "missing or unknown credential");
                    add("429", "rate limit exceeded (with Retry-After)");
                    if method != "get" {
                        add(
                            "500",
                            "internal error: a bug, or the event log cannot accept writes",
                        );
                    }
                    if path.contains('{') {
                        add("404", "not found");
                    }
                }
                if partner {
                    add("403", "partner account is inactive");
                }
                // Every route: a head over palmgate's limits (`serve::head_too_large`).
                add("414", "request target (path and query) over 8 KiB");
                add(
                    "431",
                    "header section over 32 KiB, or more than 100 header fields",
                );
                if has_body {
                    add("400", "bad request body");
                    add("413", "request body over 64 KiB");
                }
                if reads_body {
                    add(
                        "408",
                        "the request body did not arrive whole within `[http] body_timeout` (30 s by default); the connection is closed",
                    );
                }
            }
        }
    }
}

/// The headers the gates put on answers, added to the responses they appear on (after
/// [`CommonErrors`], so that its answers get them too): `X-RateLimit-Limit`,
/// `X-RateLimit-Remaining` and `X-RateLimit-Reset` on every answer under `/v1` (the `/v1` gate,
/// `auth::v1_gate`, sets them on all of them, SPEC 2), and `Retry-After` on every 429 of the
/// `/v1` and `/admin/v1` gates (`ApiError::RateLimited`). Other 429s name their own headers.
struct RateLimitHeaders;

/// The three `X-RateLimit-*` headers: (name, minimum, description).
const RATE_LIMIT_HEADERS: [(&str, i64, &str); 3] = [
    (
        "X-RateLimit-Limit",
        1,
        "requests allowed per minute for this endpoint (per partner; per address without a key)",
    ),
    (
        "X-RateLimit-Remaining",
        0,
        "requests left in the current window",
    ),
    (
        "X-RateLimit-Reset",
        0,
        "Unix time (seconds) when the budget is whole again",
    ),
];

fn integer_header(minimum: i64, description: &str) -> utoipa::openapi::header::Header {
    HeaderBuilder::new()
        .schema(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(minimum))
                .build(),
        )
        .description(Some(description))
        .build()
}

impl Modify for RateLimitHeaders {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            let partner = path.starts_with("/v1/");
            let admin = path.starts_with("/admin/v1/");
            if !partner && !admin {
                continue;
            }
            let ops = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
            ];
            for op in ops.into_iter().flatten() {
                for (code, response) in op.responses.responses.iter_mut() {
                    // Every response here is written out (`error_response` or the path
                    // macros), none is a `$ref`.
                    let RefOr::T(response) = response else {
                        continue;
                    };
                    if partner {
                        for (name, minimum, what) in RATE_LIMIT_HEADERS {
                            response
                                .headers
                                .insert(name.to_string(), integer_header(minimum, what));
                        }
                    }
                    if code == "429" {
                        response.headers.insert(
                            "Retry-After".to_string(),
                            integer_header(1, "seconds to wait before the next request can pass"),
                        );
                    }
                }
            }
        }
    }
}

fn error_response(what: &str) -> RefOr<utoipa::openapi::Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(what)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build(),
    )
}

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
          get_policy, put_policy, get_mode, head, lockdown, emergency_unlock, doors, zones, forgive_zone, events, event_stream,
          enroll_page, identify_page, page_cancel, page_events, upstream_hook, healthz, readyz, metrics),
    components(schemas(ErrorBody, Language, DeliveryStatusFilter, AuditFormat, PageKind, EnrollBody, SessionCreatedBody, SessionBody, UserBody,
                       PartnerBody, PartnerCreatedBody, CreatePartnerBody, ReaderBody,
                       WebhookPutBody, WebhookBody, WebhookSecretBody, DeliveryBody, AttemptBody,
                       RecoverBody, OnBody, DoorBody, ZoneBody, ForgiveBody, AdminUserBody, UpstreamHookBody,
                       DeliveryQueuedBody, RecoverQueuedBody)),
    modifiers(&Security, &CommonErrors, &RateLimitHeaders)
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
