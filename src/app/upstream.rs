//! Upstream mode in the shell: palmgate as a partner of a remote Pass API (`[upstream]`).
//!
//! A reader's `trigger` is queued here instead of opening a local session; a worker calls the
//! remote `POST {base_url}/v1/identify` (reqwest over rustls, `X-API-Key`, an
//! `Idempotency-Key` derived from the reader and trigger, a timeout, no redirects) and hands
//! the answer to the core as [`Command::UpstreamIdentify`], which records the binding of the
//! remote session to the reader (or the failure) and asks for the reader's `show` (or its
//! failure `result`). The webhook side is `http::upstream`.
//!
//! Invariants: the MQTT loop never waits for the remote (a slow upstream holds only its own
//! worker slots, at most [`IN_FLIGHT`] calls at a time); a trigger is sent to the remote once
//! per process while its call is in flight, and never again once its outcome is recorded; a
//! trigger's MQTT message is acknowledged only once its outcome is recorded (at most
//! [`HELD_ACKS`] held at a time), so a gateway killed mid-call gets it again from an external
//! broker and calls again with the same `Idempotency-Key` (the embedded broker keeps no
//! sessions across a restart of the process it runs in); the
//! people of the upstream are, for the site policy, users of one local partner identity
//! ([`partner_id`], named [`PARTNER_NAME`]) that exists in no partner list and holds no API key.

use super::App;
use crate::config::UpstreamConfig;
use crate::core::policy::DoorId;
use crate::core::state::Seen;
use crate::core::upstream::{IdentifyAnswer, Unidentified};
use crate::core::{Command, Outcome, PartnerId, ReaderId, UpstreamSessionId};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;

/// The partner name the site policy sees for the upstream's people (`partners = ["upstream"]`).
pub const PARTNER_NAME: &str = "upstream";
/// Identify calls in flight at once.
pub const IN_FLIGHT: usize = 16;
/// Triggers waiting for a slot; more are dropped (and logged).
const QUEUE: usize = 256;
/// Triggers whose MQTT acknowledgement waits for their outcome at most at once; beyond that
/// they are acknowledged on arrival. Each holds a slot of the broker's in-flight window for
/// this client (Mosquitto's default is 20) for up to `upstream.timeout`, and door scans need
/// the rest.
pub const HELD_ACKS: usize = 4;
/// How much of the remote's answer is read.
const ANSWER_KEPT: usize = 16 * 1024;

/// The stable local partner id of the upstream at `base_url`: the first 16 bytes of
/// SHA-256("palmgate upstream\n" + base_url without trailing slashes), as a v4-shaped UUID.
/// The same upstream keeps the same id across restarts (anti-passback, audit exports).
pub fn partner_id(base_url: &str) -> PartnerId {
    let mut h = Sha256::new();
    h.update(b"palmgate upstream\n");
    h.update(base_url.trim_end_matches('/').as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    PartnerId::from_random(b)
}

type Trigger = (ReaderId, String);

/// Dropped when a trigger's outcome is recorded or given up: the MQTT client acknowledges the
/// trigger's message then (a crash before leaves it to the broker to redeliver).
pub type Done = tokio::sync::oneshot::Sender<()>;

/// A trigger in the queue, with its held acknowledgement (if any).
type Queued = (Trigger, Option<Held>);

/// A held acknowledgement, counted in [`Upstream`]'s `held` while it lives.
struct Held {
    _done: Done,
    held: Arc<AtomicUsize>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.held.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The upstream connection: configuration, HTTP client and the trigger queue.
pub struct Upstream {
    http: reqwest::Client,
    identify_url: reqwest::Url,
    api_key: String,
    /// Verifies the remote's webhooks (`http::upstream`).
    pub webhook_secret: String,
    pub partner_id: PartnerId,
    timeout: Duration,
    queue: mpsc::Sender<Queued>,
    receiver: Mutex<Option<mpsc::Receiver<Queued>>>,
    in_flight: Mutex<HashSet<Trigger>>,
    /// Acknowledgements held now (at most [`HELD_ACKS`]).
    held: Arc<AtomicUsize>,
}

impl Upstream {
    /// `None` when upstream mode is off (the configuration is validated already).
    pub fn new(cfg: &UpstreamConfig, reader_language: &str) -> Option<Upstream> {
        if !cfg.enabled() {
            return None;
        }
        let base = cfg.base_url.trim_end_matches('/');
        let mut identify_url = match reqwest::Url::parse(&format!("{base}/v1/identify")) {
            Ok(u) => u,
            Err(e) => {
                tracing::error!(error = %e, "upstream.base_url is unusable; upstream mode is off");
                return None;
            }
        };
        identify_url
            .query_pairs_mut()
            .append_pair("language", reader_language);
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout)
            .user_agent(concat!("palmgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("a reqwest client with rustls builds");
        let (queue, receiver) = mpsc::channel(QUEUE);
        Some(Upstream {
            http,
            identify_url,
            api_key: cfg.api_key.clone(),
            webhook_secret: cfg.webhook_secret.clone(),
            partner_id: partner_id(&cfg.base_url),
            timeout: cfg.timeout,
            queue,
            receiver: Mutex::new(Some(receiver)),
            in_flight: Mutex::new(HashSet::new()),
            held: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Calls the remote `POST /v1/identify` for a trigger.
    async fn call(
        &self,
        reader: &ReaderId,
        trigger_id: &str,
        clock: &dyn super::clock::Clock,
    ) -> IdentifyAnswer {
        let idempotency = {
            let mut h = Sha256::new();
            h.update(reader.as_str().as_bytes());
            h.update(b"\n");
            h.update(trigger_id.as_bytes());
            format!("palmgate-trigger-{}", hex::encode(&h.finalize()[..16]))
        };
        let sent = self
            .http
            .post(self.identify_url.clone())
            .header("x-api-key", &self.api_key)
            .header("idempotency-key", idempotency)
            .header("content-length", "0")
            .send()
            .await;
        let now = clock.now();
        let mut resp = match sent {
            Ok(r) => r,
            Err(e) => {
                return IdentifyAnswer::Failed {
                    status_code: None,
                    error: self.describe(&e),
                };
            }
        };
        let status = resp.status().as_u16();
        // The remote's clock against ours, from its `Date` (whole seconds).
        let clock_skew_s = resp
            .headers()
            .get("date")
            .and_then(|v| v.to_str().ok())
            .and_then(|d| chrono::DateTime::parse_from_rfc2822(d).ok())
            .map(|remote| (remote.with_timezone(&chrono::Utc) - now).num_seconds());
        let mut body = Vec::new();
        while body.len() < ANSWER_KEPT {
            match resp.chunk().await {
                Ok(Some(c)) => body.extend_from_slice(&c),
                Ok(None) => break,
                Err(e) => {
                    return IdentifyAnswer::Failed {
                        status_code: Some(status),
                        error: self.describe(&e),
                    };
                }
            }
        }
        body.truncate(ANSWER_KEPT);
        let json: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
        if !(200..300).contains(&status) {
            let message = json
                .as_ref()
                .and_then(|v| v.get("message"))
                .and_then(|m| m.as_str())
                .map(|m| m.chars().take(200).collect::<String>())
                .unwrap_or_default();
            return IdentifyAnswer::Failed {
                status_code: Some(status),
                error: format!("the upstream answered {status}: {message}")
                    .trim_end_matches([':', ' '])
                    .to_string(),
            };
        }
        match json.as_ref().map(parse_created) {
            Some(Ok(IdentifyAnswer::Started {
                session_id,
                url,
                expires_at,
                ..
            })) => IdentifyAnswer::Started {
                session_id,
                url,
                expires_at,
                clock_skew_s,
            },
            Some(Ok(failed)) => failed,
            Some(Err(why)) => IdentifyAnswer::Failed {
                status_code: Some(status),
                error: format!("unusable answer from the upstream: {why}"),
            },
            None => IdentifyAnswer::Failed {
                status_code: Some(status),
                error: "unusable answer from the upstream: not JSON".into(),
            },
        }
    }

    fn describe(&self, e: &reqwest::Error) -> String {
        if e.is_timeout() {
            return format!(
                "no answer from the upstream within {}",
                humantime::format_duration(self.timeout)
            );
        }
        let mut msg = if e.is_connect() {
            "cannot connect to the upstream".to_string()
        } else {
            "request to the upstream failed".to_string()
        };
        let mut src: Option<&dyn std::error::Error> = std::error::Error::source(e);
        let mut last = None;
        while let Some(s) = src {
            last = Some(s.to_string());
            src = s.source();
        }
        if let Some(l) = last {
            msg = format!("{msg}: {l}");
        }
        msg
    }
}

/// Reads the 201 of `POST /v1/identify`: `{url, session_id, expires_at?}`.
fn parse_created(v: &serde_json::Value) -> Result<IdentifyAnswer, String> {
    let url = v.get("url").and_then(|u| u.as_str()).ok_or("no `url`")?;
    let ok_url = url.len() <= 2048
        && reqwest::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https"));
    if !ok_url {
        return Err("`url` is not an http(s) URL".into());
    }
    let session_id = v
        .get("session_id")
        .and_then(|s| s.as_str())
        .filter(|s| valid_session_id(s))
        .ok_or("no usable `session_id`")?;
    let expires_at = v
        .get("expires_at")
        .and_then(|e| e.as_str())
        .and_then(|e| chrono::DateTime::parse_from_rfc3339(e).ok())
        .map(|t| t.with_timezone(&chrono::Utc));
    Ok(IdentifyAnswer::Started {
        session_id: UpstreamSessionId(session_id.to_string()),
        url: url.to_string(),
        expires_at,
        clock_skew_s: None,
    })
}

/// A remote session id palmgate will put in a stream name: 1–128 of `A-Za-z0-9-_.:`.
pub fn valid_session_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

impl App {
    /// A reader's trigger in upstream mode: queued for the identify call, so the reader
    /// protocol's loop does not wait for the remote. `done` is dropped once the outcome is
    /// recorded or given up — at once for a duplicate, a full queue, or when [`HELD_ACKS`]
    /// acknowledgements are held already.
    pub fn upstream_trigger(
        &self,
        reader_id: ReaderId,
        trigger_id: String,
        done: Option<Done>,
    ) -> Outcome {
        let Some(up) = &self.upstream else {
            return Outcome::Done;
        };
        if self.read(|s| {
            s.seen
                .contains(&(reader_id.clone(), Seen::Trigger(trigger_id.clone())))
        }) {
            return Outcome::Duplicate;
        }
        let held = done.and_then(|d| {
            let n = up.held.fetch_add(1, Ordering::Relaxed);
            let h = Held {
                _done: d,
                held: up.held.clone(),
            };
            // Over the limit, `h` drops here: acknowledged on arrival.
            (n < HELD_ACKS).then_some(h)
        });
        if let Err(e) = up.queue.try_send(((reader_id, trigger_id), held)) {
            let closed = matches!(e, mpsc::error::TrySendError::Closed(_));
            let ((reader_id, trigger_id), held) = e.into_inner();
            tracing::warn!(
                reader = %reader_id,
                trigger = %trigger_id,
                "upstream trigger dropped: {}; the reader is told the upstream is unavailable",
                if closed {
                    "the identify worker has stopped".to_string()
                } else {
                    format!(
                        "{IN_FLIGHT} identify calls are in flight and {} more are waiting",
                        up.queue.max_capacity()
                    )
                },
            );
            metrics::counter!("palmgate_upstream_identify_total", "outcome" => "dropped")
                .increment(1);
            // The person at the reader gets the answer a failed call gets, not silence.
            let told = self.read(|s| crate::core::upstream::unavailable(s, &reader_id));
            self.perform(vec![told]);
            drop(held);
        }
        Outcome::Done
    }

    /// Calls the remote for one trigger and records the answer.
    async fn upstream_identify(&self, up: &Upstream, reader_id: ReaderId, trigger_id: String) {
        if self.read(|s| {
            s.seen
                .contains(&(reader_id.clone(), Seen::Trigger(trigger_id.clone())))
        }) {
            return;
        }
        let answer = up.call(&reader_id, &trigger_id, &*self.clock).await;
        let outcome = match &answer {
            IdentifyAnswer::Started { .. } => "started",
            IdentifyAnswer::Failed { error, .. } => {
                tracing::warn!(reader = %reader_id, error = %error, "upstream identify failed");
                "failed"
            }
        };
        metrics::counter!("palmgate_upstream_identify_total", "outcome" => outcome).increment(1);
        let cmd = Command::UpstreamIdentify {
            reader_id: reader_id.clone(),
            trigger_id,
            answer,
        };
        if let Err(e) = self.execute(cmd).await {
            tracing::error!(reader = %reader_id, error = %e, "cannot record the upstream identify");
        }
    }
}

/// How often, at most, the open bindings are looked over for the expiry watch when no
/// binding is due sooner (a new binding may be due before the next one known).
const WATCH_EVERY: Duration = Duration::from_secs(2);

/// Watches the open bindings whose remote session expired with no webhook
/// ([`upstream::unheard`](crate::core::upstream::unheard)): a warning once per binding (per
/// process), the gauge `palmgate_upstream_open_past_expiry`, and the reader told
/// `session_expired` when it still shows that page. Runs until dropped.
async fn watch_expiries(app: Arc<App>) {
    use crate::core::upstream::{open_until, unheard, unheard_notice};
    let hooks = match app.config.http.public_url.trim_end_matches('/') {
        "" => "<public_url>/hooks/upstream".to_string(),
        u => format!("{u}/hooks/upstream"),
    };
    let mut warned: HashSet<UpstreamSessionId> = HashSet::new();
    loop {
        let now = app.clock.now();
        let (fresh, effects, past, next) = app.read(|s| {
            let (past, next) = unheard(s, now);
            let fresh: Vec<_> = past
                .iter()
                .filter(|b| !warned.contains(&b.session_id))
                .map(|b| ((*b).clone(), open_until(b)))
                .collect();
            let effects: Vec<_> = fresh
                .iter()
                .filter_map(|(b, _)| unheard_notice(s, b, now))
                .collect();
            let past: HashSet<_> = past.into_iter().map(|b| b.session_id.clone()).collect();
            (fresh, effects, past, next)
        });
        for (b, until) in &fresh {
            tracing::warn!(
                session = %b.session_id.0,
                reader = %b.reader_id,
                "upstream session {} at reader {} passed its expiry ({}) with no webhook from \
                 the remote: check the remote's webhook to {hooks}",
                b.session_id.0,
                b.reader_id,
                until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            );
        }
        warned.extend(fresh.into_iter().map(|(b, _)| b.session_id));
        // Ended since (a late webhook) or let go of: no longer counted.
        warned.retain(|id| past.contains(id));
        metrics::gauge!("palmgate_upstream_open_past_expiry").set(past.len() as f64);
        app.perform(effects);
        let poll = chrono::Duration::from_std(WATCH_EVERY).unwrap_or(chrono::Duration::seconds(2));
        let wake = now.checked_add_signed(poll).unwrap_or(now);
        app.clock
            .sleep_until(next.map_or(wake, |n| n.min(wake)))
            .await;
    }
}

/// Runs the trigger worker and the expiry watch (when upstream mode is on) until the returned
/// task is aborted.
pub fn spawn(app: Arc<App>) -> Option<JoinHandle<()>> {
    let up = app.upstream.as_ref()?;
    let mut rx = up.receiver.lock().expect("upstream lock").take()?;
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let watch = watch_expiries(app.clone());
    let work = async move {
        while let Some(((reader, trigger), held)) = rx.recv().await {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let app = app.clone();
            tokio::spawn(async move {
                let _permit = permit;
                // Dropped on every way out of this task: the trigger is acknowledged then.
                let _held = held;
                let Some(up) = app.upstream.as_ref() else {
                    return;
                };
                let key = (reader.clone(), trigger.clone());
                if !up
                    .in_flight
                    .lock()
                    .expect("upstream lock")
                    .insert(key.clone())
                {
                    return; // a redelivered trigger whose call is still running
                }
                app.upstream_identify(up, reader, trigger).await;
                up.in_flight.lock().expect("upstream lock").remove(&key);
            });
        }
    };
    // One task for both: aborting it stops the watch too (the watch never ends by itself).
    Some(tokio::spawn(async move {
        tokio::select! {
            _ = work => {}
            _ = watch => {}
        }
    }))
}

/// The reader's `result` when no door decision could be made (upstream mode).
pub fn not_identified_cmd(
    app: &App,
    door: Option<&DoorId>,
    why: &Unidentified,
) -> serde_json::Value {
    let lang = crate::core::Language::parse(&app.config.mqtt.reader_language)
        .unwrap_or(crate::core::Language::En);
    let c = crate::http::i18n::catalog(lang);
    let message = match why {
        Unidentified::Unavailable => c.upstream_unavailable,
        _ => c.door_denied,
    };
    let mut v = serde_json::json!({
        "action": "result",
        "granted": false,
        "message": message,
        "reason": why.code(),
    });
    if let Some(d) = door {
        v["door"] = serde_json::Value::from(d.as_str());
    }
    v
}
