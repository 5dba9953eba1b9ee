//! The operator's site endpoints under `/admin/v1` (SPEC 10): the site policy, lockdown and
//! emergency unlock, doors, and the event log (paged, and live over server-sent events).

use super::auth::{Admin, Monitor};
use super::body::JsonBody;
use super::dash::session::Login;
use super::error::ApiError;
use super::time_text;
use crate::app::App;
use crate::core::Command;
use crate::core::event::Recorded;
use crate::store::BoxFuture;
use axum::Json;
use axum::extract::{RawQuery, Request, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;
use utoipa::ToSchema;

/// `GET /admin/v1/policy`
pub async fn get_policy(State(app): State<Arc<App>>, _: Admin) -> Result<Json<Value>, ApiError> {
    app.read(|s| {
        let (doc, at) = s.policy_document.as_ref()?;
        let p = s.policy.as_ref()?;
        Some(json!({
            "sha256": p.sha256,
            "timezone": p.timezone.name(),
            "activated_at": time_text(*at),
            "document": doc.as_ref(),
            "warnings": s.policy_warnings(),
        }))
    })
    .map(Json)
    .ok_or(ApiError::NotFound)
}

/// Largest site policy document `PUT /admin/v1/policy` accepts: a campus policy outgrows the
/// Pass API's 64 KiB body limit ([`super::body::MAX_BODY`]).
pub const MAX_POLICY_BODY: usize = 1024 * 1024;

/// The policy document's bytes, at most [`MAX_POLICY_BODY`] (413 past it).
async fn policy_body(req: Request) -> Result<axum::body::Bytes, ApiError> {
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_POLICY_BODY as u64) {
        return Err(ApiError::PayloadTooLarge);
    }
    axum::body::to_bytes(req.into_body(), MAX_POLICY_BODY)
        .await
        .map_err(|e| {
            if format!("{e:?}").contains("LengthLimit") {
                ApiError::PayloadTooLarge
            } else if super::serve::is_body_timeout(&e) {
                ApiError::RequestTimeout
            } else {
                ApiError::BadRequest("could not read the request body".into())
            }
        })
}

/// `PUT /admin/v1/policy` with the TOML document as the body (at most [`MAX_POLICY_BODY`]).
pub async fn put_policy(
    State(app): State<Arc<App>>,
    _: Admin,
    req: Request,
) -> Result<Json<Value>, ApiError> {
    let body = policy_body(req).await?;
    let text = String::from_utf8(body.to_vec())
        .map_err(|_| ApiError::BadRequest("the policy must be UTF-8 TOML".into()))?;
    app.activate_policy(text, "admin").await?;
    Ok(Json(app.read(|s| {
        let p = s.policy.as_ref();
        json!({
            "sha256": p.map(|p| p.sha256.clone()),
            "warnings": s.policy_warnings(),
        })
    })))
}

fn on_flag(body: &Value) -> Result<bool, ApiError> {
    body.get("on")
        .and_then(Value::as_bool)
        .ok_or_else(|| ApiError::BadRequest("body must be {\"on\": true|false}".into()))
}

fn mode(app: &App) -> Json<Value> {
    Json(app.read(|s| json!({ "lockdown": s.lockdown, "emergency": s.emergency })))
}

/// `GET /admin/v1/head`: the log's head ([`App::head`]), for a system that keeps it elsewhere.
pub async fn head(State(app): State<Arc<App>>, _: Monitor) -> Result<Json<Value>, ApiError> {
    let head = tokio::task::spawn_blocking(move || app.head())
        .await
        .map_err(|_| ApiError::Internal)?
        .map_err(|e| {
            tracing::error!(error = %e, "cannot read the log's head");
            ApiError::Internal
        })?;
    Ok(Json(match head {
        Some((position, hash)) => {
            let hash = hex::encode(hash);
            json!({
                "position": position,
                "expect_head": format!("{position}:{hash}"),
                "hash": hash,
            })
        }
        None => json!({ "position": 0, "hash": null, "expect_head": null }),
    }))
}

/// `GET /admin/v1/mode`: `{lockdown, emergency}` now.
pub async fn get_mode(State(app): State<Arc<App>>, _: Monitor) -> Json<Value> {
    mode(&app)
}

/// `POST /admin/v1/lockdown` `{"on": bool}`
pub async fn lockdown(
    State(app): State<Arc<App>>,
    _: Admin,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let on = on_flag(&body)?;
    app.set_lockdown(on).await?;
    Ok(mode(&app))
}

/// `POST /admin/v1/emergency-unlock` `{"on": bool}`
pub async fn emergency(
    State(app): State<Arc<App>>,
    _: Admin,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let on = on_flag(&body)?;
    app.execute(Command::SetSiteMode {
        lockdown: None,
        emergency: Some(on),
    })
    .await?;
    Ok(mode(&app))
}

/// An anti-passback zone of the policy in force, as the operator sees it.
#[derive(Serialize, ToSchema)]
pub struct ZoneBody {
    pub name: String,
    /// hard or soft.
    pub anti_passback: String,
    pub entry_readers: Vec<String>,
    pub exit_readers: Vec<String>,
    /// People whose last movement here was an entry.
    pub inside: u64,
    /// People whose last movement here was an exit.
    pub outside: u64,
}

/// `GET /admin/v1/zones`: the zones of the policy in force, with how many people the gateway
/// holds inside and outside each.
pub async fn zones(State(app): State<Arc<App>>, _: Admin) -> Json<Vec<ZoneBody>> {
    Json(app.read(|s| {
        let Some(policy) = &s.policy else {
            return vec![];
        };
        // One pass over everyone's presence (the doors page polls this), counted per zone.
        let mut counts: std::collections::HashMap<&str, (u64, u64)> =
            std::collections::HashMap::new();
        if !policy.zones.is_empty() {
            for ((zone, _, _), d) in s.zone_last.iter() {
                let c = counts.entry(zone.as_str()).or_default();
                match d {
                    crate::core::policy::Direction::Entry => c.0 += 1,
                    crate::core::policy::Direction::Exit => c.1 += 1,
                }
            }
        }
        policy
            .zones
            .iter()
            .map(|z| {
                let (inside, outside) = counts.get(z.name.as_str()).copied().unwrap_or_default();
                ZoneBody {
                    name: z.name.clone(),
                    anti_passback: match z.anti_passback {
                        crate::core::policy::AntiPassback::Hard => "hard",
                        crate::core::policy::AntiPassback::Soft => "soft",
                    }
                    .into(),
                    entry_readers: z.entry_readers.iter().map(|r| r.0.clone()).collect(),
                    exit_readers: z.exit_readers.iter().map(|r| r.0.clone()).collect(),
                    inside,
                    outside,
                }
            })
            .collect()
    }))
}

/// The longest `reason` a forgive keeps, in characters.
pub const MAX_FORGIVE_REASON: usize = 500;

/// `POST /admin/v1/zones/{zone}/forgive` `{"partner_id"?, "external_id"?, "reason"?}`: ends the
/// anti-passback presence of one person in the zone (both ids given), or of everyone (neither),
/// so the next scan there is judged as a first movement. Answers `{"zone", "forgiven": N}`.
pub async fn forgive(
    State(app): State<Arc<App>>,
    _: Admin,
    super::Path(zone): super::Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let bad = |m: &str| ApiError::BadRequest(m.to_string());
    let obj = body
        .as_object()
        .ok_or_else(|| bad("request body must be a JSON object ({} forgives everyone)"))?;
    if let Some(k) = obj
        .keys()
        .find(|k| !["partner_id", "external_id", "reason"].contains(&k.as_str()))
    {
        return Err(ApiError::BadRequest(format!(
            "unknown key {k:?}: the body takes partner_id, external_id and reason"
        )));
    }
    let text = |k: &str| -> Result<Option<String>, ApiError> {
        match obj.get(k) {
            None => Ok(None),
            // A script's unset variable must not widen a forgive to everyone: only a key left
            // out means "none".
            Some(Value::Null) => Err(ApiError::BadRequest(format!(
                "{k} must be a string (leave it out rather than null)"
            ))),
            Some(Value::String(v)) if v.chars().any(char::is_control) => Err(ApiError::BadRequest(
                format!("{k} must not hold control characters"),
            )),
            Some(Value::String(v)) if v.trim().is_empty() => {
                Err(ApiError::BadRequest(format!("{k} must not be blank")))
            }
            Some(Value::String(v)) => Ok(Some(v.clone())),
            Some(_) => Err(ApiError::BadRequest(format!("{k} must be a string"))),
        }
    };
    let person = match (text("partner_id")?, text("external_id")?) {
        (None, None) => None,
        (Some(p), Some(e)) => {
            let p = crate::core::PartnerId::parse(&p)
                .ok_or_else(|| bad("partner_id must be a partner's id (a UUID)"))?;
            Some((p, crate::core::ExternalId(e)))
        }
        _ => {
            return Err(bad(
                "give partner_id and external_id together (one person), or neither (everyone)",
            ));
        }
    };
    let reason = text("reason")?;
    if reason
        .as_ref()
        .is_some_and(|r| r.chars().count() > MAX_FORGIVE_REASON)
    {
        return Err(ApiError::BadRequest(format!(
            "reason must be at most {MAX_FORGIVE_REASON} characters"
        )));
    }
    let outcome = app
        .execute(Command::ForgiveZone {
            zone: zone.clone(),
            person,
            reason,
        })
        .await?;
    let n = match outcome {
        crate::core::Outcome::Forgiven(n) => n,
        _ => 0,
    };
    Ok(Json(json!({ "zone": zone, "forgiven": n })))
}

/// A door as the operator sees it.
#[derive(Serialize, ToSchema)]
pub struct DoorBody {
    pub id: String,
    pub name: String,
    pub readers: Vec<String>,
    /// locked, unlocked, alarm or device_down.
    pub state: String,
    pub relay_on: bool,
    pub resting_unlocked: bool,
    /// Seconds of the lease on the board's timer that holds the door resting unlocked (an
    /// unlock window's `lease_s`; the board locks it within that if the gateway goes silent);
    /// null when no lease holds it (locked, an emergency, a window without one).
    pub lease_s: Option<u32>,
    pub device: String,
    pub device_up: Option<bool>,
    pub open: Option<bool>,
    /// forced or held, when the contact raised an alarm.
    pub alarm: Option<String>,
    pub relay_fault: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub last_decision: Option<Value>,
}

/// `GET /admin/v1/doors`
pub async fn doors(State(app): State<Arc<App>>, _: Admin) -> Json<Vec<DoorBody>> {
    let now = app.clock.now();
    Json(app.read(|s| {
        let Some(policy) = &s.policy else {
            return vec![];
        };
        policy
            .doors
            .iter()
            .map(|d| {
                let ds = s.door_state(&d.id).cloned().unwrap_or_default();
                let device_up = s.device_state(&d.relay.device).map(|x| x.up);
                let alarm = if ds.forced_alarm {
                    Some("forced".to_string())
                } else if ds.held_alarm {
                    Some("held".to_string())
                } else {
                    None
                };
                let state = if device_up == Some(false) {
                    "device_down"
                } else if alarm.is_some() {
                    "alarm"
                } else if ds.relay_on || ds.resting_unlocked {
                    "unlocked"
                } else {
                    "locked"
                };
                DoorBody {
                    id: d.id.0.clone(),
                    name: d.name.clone(),
                    readers: d.readers.iter().map(|r| r.0.clone()).collect(),
                    state: state.into(),
                    relay_on: ds.relay_on,
                    resting_unlocked: ds.resting_unlocked,
                    lease_s: policy
                        .lease_of(&d.id, now)
                        .filter(|_| ds.resting_unlocked && !s.emergency),
                    device: d.relay.device.clone(),
                    device_up,
                    open: d.contact.as_ref().map(|_| ds.open_since.is_some()),
                    alarm,
                    relay_fault: ds.relay_fault.clone(),
                    last_decision: ds.last_decision.as_ref().map(|l| {
                        let who = l.subject.as_ref();
                        let username = who.and_then(|w| {
                            s.user(w.partner_id, &w.external_id)
                                .and_then(|u| u.username.clone())
                        });
                        json!({
                            "granted": l.granted,
                            "reason": l.reason,
                            "at": time_text(l.at),
                            "reader_id": l.reader_id.0,
                            "level": l.level,
                            "external_id": who.map(|w| w.external_id.0.clone()),
                            "username": username,
                            "partner_id": who.map(|w| w.partner_id.to_string()),
                            "partner_name": who.map(|w| w.partner_name.clone()),
                        })
                    }),
                }
            })
            .collect()
    }))
}

fn event_json(r: &Recorded) -> Value {
    let (kind, version, data) = r.event.encode();
    json!({
        "position": r.position,
        "stream": r.stream,
        "revision": r.revision,
        "type": kind,
        "version": version,
        "recorded_at": crate::store::chain::format_time(r.recorded_at),
        "data": data,
    })
}

fn query_u64(query: Option<&str>, key: &str) -> Result<Option<u64>, ApiError> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(query.unwrap_or("")).unwrap_or_default();
    match pairs.iter().find(|(k, _)| k == key) {
        None => Ok(None),
        // At most i64::MAX, as the OpenAPI document says (int64).
        Some((_, v)) => v
            .parse::<i64>()
            .ok()
            .and_then(|n| u64::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| ApiError::BadRequest(format!("{key} must be a non-negative integer"))),
    }
}

/// `GET /admin/v1/events?after=POS&limit=N` (limit ≤ 1000, default 100).
pub async fn events(
    State(app): State<Arc<App>>,
    _: Admin,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let after = query_u64(q.as_deref(), "after")?.unwrap_or(0);
    let limit = query_u64(q.as_deref(), "limit")?
        .unwrap_or(100)
        .clamp(1, 1000) as usize;
    let page = app.store.read(after, limit).map_err(|e| {
        tracing::error!(error = %e, "cannot read the log");
        ApiError::Internal
    })?;
    let next = page.last().map_or(after, |r| r.position);
    Ok(Json(json!({
        "events": page.iter().map(event_json).collect::<Vec<_>>(),
        "next_after": next,
        // The newest position folded in: `after = last_position - N` reads the tail.
        "last_position": app.read(|s| s.position()),
    })))
}

/// The items of a broadcast receiver until it falls behind: a subscriber that lagged has lost
/// items, so its stream ends rather than skip them silently (an `EventSource` reconnects and
/// the dashboard reads what it missed from the paged log).
fn until_lagged<T: Clone + Send + 'static>(
    rx: tokio::sync::broadcast::Receiver<T>,
) -> impl tokio_stream::Stream<Item = T> {
    BroadcastStream::new(rx)
        .map_while(|r| {
            r.inspect_err(|e| {
                tracing::warn!(error = %e, "live event stream fell behind; ending it so the client reconnects and catches up");
            })
            .ok()
        })
}

/// How often a stream opened with a dashboard cookie re-checks its login when no event comes.
const LOGIN_RECHECK: std::time::Duration = std::time::Duration::from_secs(5);

/// `GET /admin/v1/events/stream`: every event as it is recorded (server-sent events), each
/// with its log position as the event `id`. The stream ends when it falls behind the log.
///
/// Opened with a dashboard cookie, it also ends as soon as that login is no longer valid
/// (signed out, expired, the admin token changed): the login is re-checked before each event
/// is sent, every [`LOGIN_RECHECK`] and at its expiry, so no event reaches a signed-out login.
/// Opened with the admin bearer token, it needs no re-check: the token is fixed for the
/// process's life.
pub async fn event_stream(
    State(app): State<Arc<App>>,
    _: Admin,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    // `Admin` took the cookie only if no bearer token was presented; if that login ended
    // between the extractor and here, the request is refused as the extractor would have.
    let login = match super::auth::bearer(&headers) {
        Some(_) => None,
        None => Some(Login::of_request(&app, &headers, true).ok_or(ApiError::AdminUnauthorized)?),
    };
    let events = until_lagged(app.recorded_events()).map(|rec| {
        Ok::<_, std::convert::Infallible>(
            SseEvent::default()
                .id(rec.position.to_string())
                .data(event_json(&rec).to_string()),
        )
    });
    let sse = match login {
        None => Sse::new(events)
            .keep_alive(KeepAlive::default())
            .into_response(),
        Some(login) => Sse::new(WhileSignedIn::new(app, login, events))
            .keep_alive(KeepAlive::default())
            .into_response(),
    };
    Ok(sse)
}

/// The items of `inner` while a dashboard login stays valid: checked before each item is passed
/// on, every [`LOGIN_RECHECK`], and at the login's expiry. Once the login fails a check the
/// stream ends (and the item that found it is dropped).
struct WhileSignedIn<S> {
    app: Arc<App>,
    login: Login,
    inner: Pin<Box<S>>,
    recheck: tokio::time::Interval,
    expiry: BoxFuture<'static, ()>,
    done: bool,
}

impl<S> WhileSignedIn<S> {
    fn new(app: Arc<App>, login: Login, inner: S) -> Self {
        let mut recheck =
            tokio::time::interval_at(tokio::time::Instant::now() + LOGIN_RECHECK, LOGIN_RECHECK);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let expiry = app.clock.sleep_until(login.expires_at());
        WhileSignedIn {
            app,
            login,
            inner: Box::pin(inner),
            recheck,
            expiry,
            done: false,
        }
    }

    fn end(&mut self) -> Poll<Option<S::Item>>
    where
        S: tokio_stream::Stream,
    {
        self.done = true;
        tracing::debug!("dashboard login of a live event stream ended; ending the stream");
        Poll::Ready(None)
    }
}

impl<S: tokio_stream::Stream> tokio_stream::Stream for WhileSignedIn<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if this.expiry.as_mut().poll(cx).is_ready() {
            return this.end();
        }
        while this.recheck.poll_tick(cx).is_ready() {
            if !this.login.still_valid(&this.app) {
                return this.end();
            }
        }
        match this.inner.as_mut().poll_next(cx) {
            Poll::Ready(Some(item)) => {
                if this.login.still_valid(&this.app) {
                    Poll::Ready(Some(item))
                } else {
                    this.end()
                }
            }
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// `GET /admin/v1/audit/export?from=&to=&format=csv|jsonl`: door decisions as a download.
pub async fn audit_export(
    State(app): State<Arc<App>>,
    _: Admin,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(query.as_deref().unwrap_or(""))
            .map_err(|_| ApiError::BadRequest("malformed query string".into()))?;
    // An empty value is a bad value, not an absent one (as the OpenAPI document says).
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    let instant = |k: &str| -> Result<_, ApiError> {
        get(k)
            .map(|v| {
                chrono::DateTime::parse_from_rfc3339(v)
                    .map(|t| t.with_timezone(&chrono::Utc))
                    .map_err(|_| ApiError::BadRequest(format!("{k} must be an RFC 3339 instant")))
            })
            .transpose()
    };
    let (from, to) = (instant("from")?, instant("to")?);
    let csv = match get("format").unwrap_or("csv") {
        "csv" => true,
        "jsonl" => false,
        _ => return Err(ApiError::BadRequest("format must be csv or jsonl".into())),
    };
    let store = app.store.clone();
    let text = tokio::task::spawn_blocking(move || {
        crate::replay::audit::export(store.as_ref(), from, to, csv)
    })
    .await
    .map_err(|_| ApiError::Internal)?
    .map_err(|e| {
        tracing::error!(error = %e, "audit export failed");
        ApiError::Internal
    })?;
    let (ctype, name) = if csv {
        ("text/csv; charset=utf-8", "palmgate-audit.csv")
    } else {
        ("application/x-ndjson", "palmgate-audit.jsonl")
    };
    Ok((
        [
            (axum::http::header::CONTENT_TYPE, ctype.to_string()),
            (
                axum::http::header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        text,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::until_lagged;
    use tokio_stream::StreamExt;

    /// A subscriber that fell behind gets what it still can and then the end of the stream,
    /// not the later items with a silent gap before them.
    #[tokio::test]
    async fn the_live_stream_ends_when_it_falls_behind() {
        let (tx, rx) = tokio::sync::broadcast::channel(2);
        for i in 0..5u32 {
            tx.send(i).unwrap();
        }
        drop(tx);
        let got: Vec<u32> = until_lagged(rx).collect().await;
        assert_eq!(got, Vec::<u32>::new(), "items after the gap were delivered");
        // Without a lag, items flow and the stream stays open.
        let (tx, rx) = tokio::sync::broadcast::channel(2);
        tx.send(7).unwrap();
        let mut s = Box::pin(until_lagged(rx));
        assert_eq!(s.next().await, Some(7));
    }

    /// A stream opened with a dashboard cookie ends at the cookie's expiry even when the log is
    /// quiet, and not before.
    #[tokio::test]
    async fn a_cookie_stream_ends_at_the_cookies_expiry() {
        use crate::http::dash::session::{self, Holder, LIFETIME_S, Login};
        use std::time::Duration;
        let (_dir, app, clock, _) = session::tests::app_with_partners(0).await;
        let value = session::issue(&app, Holder::Admin).unwrap();
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(
            axum::http::header::COOKIE,
            format!("{}={value}", session::ADMIN_COOKIE)
                .parse()
                .unwrap(),
        );
        let login = Login::of_request(&app, &headers, true).expect("a fresh login");
        let mut s = super::WhileSignedIn::new(app.clone(), login, tokio_stream::pending::<u32>());
        assert!(
            tokio::time::timeout(Duration::from_millis(200), s.next())
                .await
                .is_err(),
            "the stream ended while its login was valid"
        );
        clock.advance(chrono::Duration::seconds(LIFETIME_S - 1));
        assert!(
            tokio::time::timeout(Duration::from_millis(200), s.next())
                .await
                .is_err(),
            "the stream ended a second before its login expires"
        );
        clock.advance(chrono::Duration::seconds(1));
        assert_eq!(
            // Well before the periodic re-check (LOGIN_RECHECK): the expiry itself ends it.
            tokio::time::timeout(Duration::from_secs(1), s.next())
                .await
                .expect("the stream ends at the expiry"),
            None
        );
    }
}
