//! The Pass API under `/v1` (SPEC 2): enroll, identify, sessions, users.
//!
//! Handlers validate input into core commands with the exact messages of the contract, run
//! them through the pipeline, and shape the answer. Another partner's session or user answers
//! 404, exactly as one that does not exist.

use super::Path;
use super::auth::Partner;
use super::body::JsonBody;
use super::error::ApiError;
use super::time_text;
use crate::app::App;
use crate::core::event::Idempotency;
use crate::core::*;
use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use utoipa::ToSchema;

pub const MAX_EXTERNAL_ID: usize = 100;
pub const MAX_USERNAME: usize = 150;
pub const MAX_METADATA: usize = 16 * 1024;
/// How deeply `metadata` may nest (the object itself is level 1). The log stores it inside
/// events, and readers of those events (start-up, audit, webhook receivers) parse JSON with a
/// recursion limit — serde_json's is 128 — so what is accepted must stay well inside it.
pub const MAX_METADATA_DEPTH: usize = 32;
pub const MAX_IDEMPOTENCY_KEY: usize = 255;

/// 201 body of enroll and identify.
#[derive(Serialize, ToSchema)]
pub struct SessionCreatedBody {
    /// The hosted page to send the person to.
    pub url: String,
    pub session_id: String,
    /// RFC 3339, UTC.
    pub expires_at: String,
}

/// A session as its partner sees it. Every field is always there (SPEC 2 lists them), null
/// when the session has none.
#[derive(Serialize, ToSchema)]
pub struct SessionBody {
    pub session_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// pending, completed, failed or expired.
    pub state: String,
    pub language: String,
    /// null until known (an identify that matched nobody, or not ended yet).
    pub external_id: Option<String>,
    /// null unless the session failed.
    pub fail_reason: Option<String>,
    pub created_at: String,
    pub expires_at: String,
    /// null while pending.
    pub ended_at: Option<String>,
}

/// An enrolled user. Every field is always there (SPEC 2 lists them), null when the user has
/// none.
#[derive(Serialize, ToSchema)]
pub struct UserBody {
    pub external_id: String,
    pub username: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    pub enrolled_at: String,
}

/// `s` as its partner sees it at `now` ([`crate::core::session::Session::as_of`]).
pub fn session_body(
    s: &crate::core::session::Session,
    now: chrono::DateTime<chrono::Utc>,
) -> SessionBody {
    let (state, ended_at) = s.as_of(now);
    SessionBody {
        session_id: s.id.to_string(),
        kind: s.kind.as_str().into(),
        state: state.as_str().into(),
        language: s.language.code().into(),
        external_id: s.external_id.as_ref().map(|e| e.0.clone()),
        fail_reason: s.fail_reason.map(|r| r.as_str().into()),
        created_at: time_text(s.created_at),
        expires_at: time_text(s.expires_at),
        ended_at: ended_at.map(time_text),
    }
}

fn language(query: Option<&str>) -> Result<Language, String> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(query.unwrap_or("")).unwrap_or_default();
    let mut given = pairs.iter().filter(|(k, _)| k == "language");
    match (given.next(), given.count()) {
        (None, _) => Ok(Language::En),
        (Some((_, v)), 0) => Language::parse(v)
            .ok_or_else(|| format!("unsupported language {v:?}: use en, kk or ru")),
        // Which one was meant is a guess: none is taken.
        (Some(_), more) => Err(format!(
            "language given {} times: give it once (en, kk or ru)",
            more + 1
        )),
    }
}

/// `?language=en|kk|ru` (default `en`), checked from the request's head, before any body is
/// read: SPEC 2 checks 400 before 413.
pub struct Lang(pub Language);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Lang {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, ApiError> {
        language(parts.uri.query())
            .map(Lang)
            .map_err(|m| super::body::refuse_head(&parts.headers, &m))
    }
}

/// Validates an enroll body into the core's request, with the contract's messages.
pub fn parse_enroll(body: &Value) -> Result<EnrollRequest, ApiError> {
    let bad = |m: &str| ApiError::BadRequest(m.to_string());
    let obj = body
        .as_object()
        .ok_or_else(|| bad("request body must be a JSON object"))?;
    let external_id = match obj.get("external_id") {
        None | Some(Value::Null) => return Err(bad("external_id is required")),
        Some(Value::String(s)) => s,
        Some(_) => return Err(bad("external_id must be a string")),
    };
    if external_id.trim().is_empty() {
        return Err(bad("external_id must not be blank"));
    }
    if external_id.chars().count() > MAX_EXTERNAL_ID {
        return Err(bad("external_id must be at most 100 characters"));
    }
    let username = match obj.get("username") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.chars().count() > MAX_USERNAME => {
            return Err(bad("username must be at most 150 characters"));
        }
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(bad("username must be a string")),
    };
    let metadata = match obj.get("metadata") {
        None | Some(Value::Null) => None,
        Some(m @ Value::Object(_)) => {
            if serde_json::to_string(m).map_or(usize::MAX, |s| s.len()) > MAX_METADATA {
                return Err(bad("metadata must be at most 16 KiB"));
            }
            if depth(m) > MAX_METADATA_DEPTH {
                return Err(bad("metadata must be nested at most 32 levels deep"));
            }
            // The site policy reads these (SPEC 6); in another form they would deny the person
            // at every door, as `expired` or `not_yet_valid`, with nothing said at enrollment.
            for key in ["valid_from", "valid_until"] {
                match m.get(key) {
                    None | Some(Value::Null) => {}
                    Some(Value::String(v)) if crate::core::schedule::Bound::parse(v).is_some() => {}
                    Some(_) => {
                        return Err(ApiError::BadRequest(format!(
                            "metadata.{key} must be a date (2026-12-31, in the site's time \
                             zone) or an RFC 3339 instant with its offset \
                             (2026-12-31T18:00:00+05:00)"
                        )));
                    }
                }
            }
            Some(m.clone())
        }
        Some(_) => return Err(bad("metadata must be a JSON object")),
    };
    Ok(EnrollRequest {
        external_id: ExternalId(external_id.clone()),
        username,
        metadata,
    })
}

/// Nesting depth of a JSON value: 0 for a scalar, 1 for a flat object or array. (The recursion
/// is bounded by the parser's own limit on what reaches here.)
fn depth(v: &Value) -> usize {
    match v {
        Value::Object(m) => 1 + m.values().map(depth).max().unwrap_or(0),
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// The `Idempotency-Key` header, checked from the request's head: a bad one is a 400 before
/// the body is read (SPEC 2 checks 400 before 413).
pub struct IdemKey(Option<String>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for IdemKey {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, ApiError> {
        let Some(raw) = parts.headers.get("idempotency-key") else {
            return Ok(IdemKey(None));
        };
        let refuse = |m: &str| super::body::refuse_head(&parts.headers, m);
        let key = raw
            .to_str()
            .map_err(|_| refuse("Idempotency-Key must be visible ASCII"))?;
        if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY {
            return Err(refuse("Idempotency-Key must be 1 to 255 characters"));
        }
        Ok(IdemKey(Some(key.to_string())))
    }
}

fn idempotency(
    IdemKey(key): IdemKey,
    kind: SessionKind,
    lang: Language,
    body: Option<&Value>,
) -> Result<Option<Idempotency>, ApiError> {
    let Some(key) = key else {
        return Ok(None);
    };
    let mut h = Sha256::new();
    h.update(kind.as_str());
    h.update([0]);
    h.update(lang.code());
    h.update([0]);
    if let Some(b) = body {
        h.update(serde_json::to_string(b).unwrap_or_default());
    }
    Ok(Some(Idempotency {
        key,
        fingerprint: hex::encode(h.finalize()),
    }))
}

async fn create_session(
    app: &App,
    partner: PartnerId,
    kind: SessionKind,
    lang: Language,
    enroll: Option<EnrollRequest>,
    idempotency: Option<Idempotency>,
) -> Result<Response, ApiError> {
    let session_id = app.new_session_id();
    let token = app.keys.session_token(session_id);
    let token_hash = crate::app::secrets::hash_secret(&token);
    let ttl =
        chrono::Duration::from_std(app.config.sessions.ttl).map_err(|_| ApiError::Internal)?;
    let outcome = app
        .execute(Command::CreateSession {
            partner_id: partner,
            session_id,
            token_hash,
            kind,
            language: lang,
            enroll,
            idempotency,
            ttl,
        })
        .await?;
    let Outcome::Session { id, replayed } = outcome else {
        return Err(ApiError::Internal);
    };
    let expires_at = app
        .read(|s| s.session(id).map(|s| s.expires_at))
        .ok_or(ApiError::Internal)?;
    // An idempotent replay answers for the session created the first time.
    let token = if id == session_id {
        token
    } else {
        app.keys.session_token(id)
    };
    let body = SessionCreatedBody {
        url: format!("{}/{}/{}", app.public_url, kind.as_str(), token),
        session_id: id.to_string(),
        expires_at: time_text(expires_at),
    };
    let mut resp = (StatusCode::CREATED, Json(body)).into_response();
    if replayed {
        resp.headers_mut().insert(
            "idempotent-replayed",
            "true".parse().expect("static header"),
        );
    }
    Ok(resp)
}

/// `POST /v1/enroll`
pub async fn enroll(
    State(app): State<Arc<App>>,
    Partner(partner): Partner,
    Lang(lang): Lang,
    key: IdemKey,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let req = parse_enroll(&body)?;
    let idem = idempotency(key, SessionKind::Enroll, lang, Some(&body))?;
    create_session(&app, partner, SessionKind::Enroll, lang, Some(req), idem).await
}

/// `POST /v1/identify` (no body).
pub async fn identify(
    State(app): State<Arc<App>>,
    Partner(partner): Partner,
    Lang(lang): Lang,
    key: IdemKey,
    // No body is expected; one is read (and ignored) so that an oversized one is a 413.
    _body: super::body::LimitedBody,
) -> Result<Response, ApiError> {
    let idem = idempotency(key, SessionKind::Identify, lang, None)?;
    create_session(&app, partner, SessionKind::Identify, lang, None, idem).await
}

fn own_session(
    app: &App,
    partner: PartnerId,
    id: &str,
) -> Result<crate::core::session::Session, ApiError> {
    let id = SessionId::parse(id).ok_or(ApiError::NotFound)?;
    app.read(|s| {
        s.session(id)
            .filter(|s| s.partner_id == Some(partner))
            .cloned()
    })
    .ok_or(ApiError::NotFound)
}

/// `GET /v1/sessions/{session_id}`
pub async fn get_session(
    State(app): State<Arc<App>>,
    Partner(partner): Partner,
    Path(id): Path<String>,
) -> Result<Json<SessionBody>, ApiError> {
    let s = own_session(&app, partner, &id)?;
    Ok(Json(session_body(&s, app.clock.now())))
}

/// `POST /v1/sessions/{session_id}/cancel`
pub async fn cancel_session(
    State(app): State<Arc<App>>,
    Partner(partner): Partner,
    Path(id): Path<String>,
) -> Result<Json<SessionBody>, ApiError> {
    let s = own_session(&app, partner, &id)?;
    app.execute(Command::CancelSession {
        partner: Some(partner),
        session_id: s.id,
    })
    .await?;
    let s = own_session(&app, partner, &id)?;
    Ok(Json(session_body(&s, app.clock.now())))
}

/// `GET /v1/users/{external_id}`
pub async fn get_user(
    State(app): State<Arc<App>>,
    Partner(partner): Partner,
    Path(external_id): Path<String>,
) -> Result<Json<UserBody>, ApiError> {
    let u = app
        .read(|s| s.user(partner, &ExternalId(external_id)).cloned())
        .ok_or(ApiError::NotFound)?;
    Ok(Json(UserBody {
        external_id: u.external_id.0,
        username: u.username,
        metadata: u.metadata,
        enrolled_at: time_text(u.enrolled_at),
    }))
}

/// Unknown routes under `/v1` (after authentication, so 401 still comes first).
pub async fn not_found() -> ApiError {
    ApiError::NotFound
}

/// `DELETE /v1/users/{external_id}`: erase the user and destroy their template key.
pub async fn delete_user(
    State(app): State<Arc<App>>,
    Partner(partner): Partner,
    Path(external_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    app.execute(Command::EraseUser {
        partner_id: partner,
        external_id: ExternalId(external_id),
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The longest `q` the list endpoints accept, in characters.
pub const MAX_LIST_QUERY: usize = 200;
/// The largest `offset` the list endpoints accept (far past any list; a bound the OpenAPI
/// document can state).
pub const MAX_LIST_OFFSET: usize = 1_000_000_000;

/// `?limit=N&offset=M&q=TEXT` of the list endpoints (`/v1/users`, `/v1/sessions`,
/// `/admin/v1/users`): `limit` 1–500 (default 50), `offset` 0 to [`MAX_LIST_OFFSET`] (default 0), `q` an
/// optional case-insensitive substring (at most [`MAX_LIST_QUERY`] characters; empty means
/// none). Other parameters are ignored. The list applies `q`, then `offset`, then `limit`, and
/// answers the number of matches in `X-Total-Count` ([`Page`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub limit: usize,
    pub offset: usize,
    /// Lower-cased; `None` when absent or empty.
    pub q: Option<String>,
}

impl ListQuery {
    pub fn parse(query: Option<&str>) -> Result<ListQuery, ApiError> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or(""))
            .map_err(|_| ApiError::BadRequest("malformed query string".into()))?;
        let get = |name: &str| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v);
        let limit = match get("limit") {
            None => 50,
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=500).contains(n))
                .ok_or_else(|| {
                    ApiError::BadRequest("limit must be a whole number from 1 to 500".into())
                })?,
        };
        let offset = match get("offset") {
            None => 0,
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| *n <= MAX_LIST_OFFSET)
                .ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "offset must be a whole number from 0 to {MAX_LIST_OFFSET}"
                    ))
                })?,
        };
        let q = match get("q") {
            None => None,
            Some(v) if v.chars().count() > MAX_LIST_QUERY => {
                return Err(ApiError::BadRequest(format!(
                    "q must be at most {MAX_LIST_QUERY} characters"
                )));
            }
            Some(v) if v.is_empty() => None,
            Some(v) => Some(v.to_lowercase()),
        };
        Ok(ListQuery { limit, offset, q })
    }

    /// Whether any of `fields` contains `q` (ignoring case); always without `q`.
    pub fn matches<'a>(&self, fields: impl IntoIterator<Item = Option<&'a str>>) -> bool {
        match &self.q {
            None => true,
            Some(q) => fields
                .into_iter()
                .flatten()
                .any(|f| f.to_lowercase().contains(q.as_str())),
        }
    }

    /// `items` (already in order) filtered by `keep`, then the page `offset`/`limit` of them,
    /// with the number that matched.
    pub fn page<T>(&self, items: Vec<T>, keep: impl Fn(&T) -> bool) -> Page<T> {
        let matched: Vec<T> = items.into_iter().filter(|x| keep(x)).collect();
        let total = matched.len();
        Page {
            total,
            items: matched
                .into_iter()
                .skip(self.offset)
                .take(self.limit)
                .collect(),
        }
    }
}

/// The access level(s) of a user's metadata as the operator dashboard shows them
/// (`access_level`, a list joined with ", "), for `q` to match.
pub fn levels_text(metadata: Option<&Value>) -> Option<String> {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    match metadata?.get("access_level")? {
        Value::Null => None,
        Value::Array(list) => Some(list.iter().map(text).collect::<Vec<_>>().join(", ")),
        v => Some(text(v)),
    }
}

/// One page of a list: a JSON array body and `X-Total-Count`, the number of matches before
/// `offset` and `limit`.
pub struct Page<T> {
    pub total: usize,
    pub items: Vec<T>,
}

impl<T: Serialize> IntoResponse for Page<T> {
    fn into_response(self) -> Response {
        (
            [("x-total-count", self.total.to_string())],
            Json(self.items),
        )
            .into_response()
    }
}

/// `GET /v1/sessions?limit=N&offset=M&q=TEXT`: the partner's newest sessions first; `q`
/// matches the id, external id, type and state.
pub async fn list_sessions(
    State(app): State<Arc<App>>,
    Partner(partner): Partner,
    RawQuery(query): RawQuery,
) -> Result<Page<SessionBody>, ApiError> {
    let list_query = ListQuery::parse(query.as_deref())?;
    let mut list: Vec<crate::core::session::Session> = app.read(|s| {
        s.sessions
            .values()
            .filter(|x| x.partner_id == Some(partner))
            .cloned()
            .collect()
    });
    list.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.0.cmp(&a.id.0)));
    let now = app.clock.now();
    let bodies: Vec<SessionBody> = list.iter().map(|s| session_body(s, now)).collect();
    Ok(list_query.page(bodies, |b| {
        list_query.matches([
            Some(b.session_id.as_str()),
            b.external_id.as_deref(),
            Some(b.kind.as_str()),
            Some(b.state.as_str()),
        ])
    }))
}

/// `GET /v1/users?limit=N&offset=M&q=TEXT`: the partner's users, newest enrollment first; `q`
/// matches the external id, username and access level(s).
pub async fn list_users(
    State(app): State<Arc<App>>,
    Partner(partner): Partner,
    RawQuery(query): RawQuery,
) -> Result<Page<UserBody>, ApiError> {
    let list_query = ListQuery::parse(query.as_deref())?;
    let mut list: Vec<crate::core::state::User> = app.read(|s| {
        s.users()
            .filter(|u| u.partner_id == partner)
            .cloned()
            .collect()
    });
    list.sort_by(|a, b| {
        b.enrolled_at
            .cmp(&a.enrolled_at)
            .then(a.external_id.0.cmp(&b.external_id.0))
    });
    let bodies: Vec<UserBody> = list
        .into_iter()
        .map(|u| UserBody {
            external_id: u.external_id.0,
            username: u.username,
            metadata: u.metadata,
            enrolled_at: time_text(u.enrolled_at),
        })
        .collect();
    Ok(list_query.page(bodies, |u| {
        let levels = levels_text(u.metadata.as_ref());
        list_query.matches([
            Some(u.external_id.as_str()),
            u.username.as_deref(),
            levels.as_deref(),
        ])
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a user or session has none of is null, not missing: SPEC 2 lists the fields.
    #[test]
    fn absent_fields_are_null_not_missing() {
        let user = serde_json::to_value(UserBody {
            external_id: "EMP-1".into(),
            username: None,
            metadata: None,
            enrolled_at: "2026-11-28T00:00:00Z".into(),
        })
        .unwrap();
        assert_eq!(
            user,
            serde_json::json!({"external_id": "EMP-1", "username": null, "metadata": null,
                               "enrolled_at": "2026-11-28T00:00:00Z"})
        );
        let session = serde_json::to_value(SessionBody {
            session_id: "s".into(),
            kind: "identify".into(),
            state: "pending".into(),
            language: "en".into(),
            external_id: None,
            fail_reason: None,
            created_at: "c".into(),
            expires_at: "e".into(),
            ended_at: None,
        })
        .unwrap();
        for k in ["external_id", "fail_reason", "ended_at"] {
            assert_eq!(session.get(k), Some(&Value::Null), "{k}: {session}");
        }
    }
}
