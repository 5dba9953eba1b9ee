//! Webhook delivery: the outbox in the log, sent over HTTP with reqwest.
//!
//! The dispatcher asks the state which deliveries are due (pending, next attempt reached, the
//! partner's webhook active), sends each attempt with the seed's and Standard Webhooks'
//! signatures, and records the outcome as a command, so the core schedules the next attempt.
//! Each partner has its own bounded pool of in-flight requests: an endpoint that hangs for the
//! whole 10 s timeout only ever holds its own partner's slots. After a restart, pending
//! deliveries are simply due again: an attempt interrupted by a crash is sent again with the
//! same `X-Webhook-Id` and attempt number. Nothing is sent while the log cannot be written
//! (the outcome could not be recorded, so the attempt would only be sent again), and an
//! attempt whose outcome was not recorded is released for a re-send only after
//! [`RECORD_RETRY`]: a receiver is never hammered by a store that fails.

pub mod guard;

use crate::app::App;
use crate::core::webhook::{seed_signature, standard_signature};
use crate::core::{AttemptResult, Command, PartnerId};
use guard::Guard;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// Requests in flight per partner.
pub const PER_PARTNER: usize = 32;
/// The answer's status line must come within this (SPEC 4: "Success is any 2xx answered
/// within 10 s").
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// How much of an answer is kept.
pub const RESPONSE_KEPT: usize = 2048;
/// After the status line, how long the body has to bring the excerpt that is kept. A body
/// still coming after this (or broken off) changes nothing of the outcome, which the status
/// decided: the excerpt is kept as far as it came, with a note.
pub const BODY_WAIT: Duration = Duration::from_secs(2);
/// An attempt whose outcome could not be recorded is sent again no sooner than this.
pub const RECORD_RETRY: Duration = Duration::from_secs(1);
/// While the log cannot be written, how often the dispatcher looks again.
const NOT_READY_POLL: Duration = Duration::from_millis(250);

/// The HTTP client for webhooks: no redirects, the SSRF guard as resolver, 10 s to connect, and
/// no proxy from `HTTP(S)_PROXY`: through a proxy the guard would check the proxy's address,
/// not the partner's. No whole-request timeout: the 10 s are counted up to the status line
/// and the body has its own short wait (see [`Dispatcher::send`]), so a receiver that answers
/// `200` at once and is slow with its body has still been delivered to.
pub fn client(guard: &Guard) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(Arc::new(guard.clone()))
        .connect_timeout(TIMEOUT)
        .user_agent(concat!("palmgate/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("a reqwest client with rustls builds")
}

struct Dispatcher {
    app: Arc<App>,
    http: reqwest::Client,
    guard: Guard,
    in_flight: Mutex<HashSet<String>>,
    pools: Mutex<HashMap<PartnerId, Arc<Semaphore>>>,
    /// The server is stopping: no attempt starts.
    stopping: AtomicBool,
}

/// An attempt's task holds it: when the task ends, however it ends, the delivery leaves the
/// in-flight set and the dispatcher looks again.
struct Landed {
    me: Arc<Dispatcher>,
    id: String,
}

impl Drop for Landed {
    fn drop(&mut self) {
        self.me
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
        self.me.app.poke_outbox();
    }
}

/// The running dispatcher (see [`spawn`]).
pub struct Webhooks {
    task: JoinHandle<()>,
    d: Arc<Dispatcher>,
}

/// How long a stopping server waits for attempts already sent: the 10 s a receiver has to
/// answer, the 2 s its body may take, and a moment to record the outcome.
pub const STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(13);

impl Webhooks {
    /// Stops the dispatcher for a server that is stopping: no attempt starts any more (one
    /// waiting for a slot stays due, for the next start), and those already sent are waited
    /// for, up to `within`, so their outcome is recorded. An attempt cut off by a stop was
    /// sent again after the restart, as the same attempt: a receiver got it twice.
    pub async fn stop(self, within: std::time::Duration) {
        self.d.stopping.store(true, Ordering::Release);
        self.task.abort();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = self.d.in_flight.lock().expect("lock").len();
            if left == 0 {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    attempts = left,
                    "stopping with webhook attempts still waiting for their receivers: they are \
                     sent again after the restart"
                );
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

/// Runs the dispatcher until [`Webhooks::stop`].
pub fn spawn(app: Arc<App>) -> Webhooks {
    let guard = Guard::new(app.config.webhooks.allow_networks.clone());
    let d = Arc::new(Dispatcher {
        http: client(&guard),
        guard,
        app,
        in_flight: Mutex::new(HashSet::new()),
        pools: Mutex::new(HashMap::new()),
        stopping: AtomicBool::new(false),
    });
    Webhooks {
        task: tokio::spawn(d.clone().run()),
        d,
    }
}

impl Dispatcher {
    async fn run(self: Arc<Self>) {
        loop {
            if !self.app.ready() {
                tokio::time::sleep(NOT_READY_POLL).await;
                continue;
            }
            let changed = self.app.outbox_changed();
            let now = self.app.clock.now();
            let due = {
                let flying = self.in_flight.lock().expect("lock");
                self.app
                    .read(|s| s.due_deliveries(now, |id| flying.contains(id)))
            };
            for (partner, id, attempt) in due {
                self.in_flight.lock().expect("lock").insert(id.clone());
                let pool = self
                    .pools
                    .lock()
                    .expect("lock")
                    .entry(partner)
                    .or_insert_with(|| Arc::new(Semaphore::new(PER_PARTNER)))
                    .clone();
                let me = self.clone();
                tokio::spawn(async move {
                    // However this task ends (a panic included), the delivery leaves the
                    // in-flight set and the dispatcher looks again: a delivery left in it was
                    // never attempted again until a restart.
                    let _landed = Landed {
                        me: me.clone(),
                        id: id.clone(),
                    };
                    let _permit = pool.acquire().await;
                    // The log may have become unwritable while this waited for a slot: an
                    // attempt sent now could not be recorded, and would be sent again, with
                    // the same attempt number, once the log is back. It stays due instead.
                    if !me.app.ready() || me.stopping.load(Ordering::Acquire) {
                        return;
                    }
                    if !me.attempt(&id, attempt).await {
                        tokio::time::sleep(RECORD_RETRY).await;
                    }
                });
            }
            let next = {
                let flying = self.in_flight.lock().expect("lock");
                self.app
                    .read(|s| s.next_delivery_due(|id| flying.contains(id)))
            };
            match next {
                Some(t) if t <= now => continue,
                Some(t) => {
                    tokio::select! {
                        _ = self.app.clock.sleep_until(t) => {}
                        _ = changed => {}
                    }
                }
                _ => changed.await,
            }
        }
    }

    /// Sends attempt `attempt` of delivery `id` and records what happened; false when the
    /// outcome could not be recorded (the attempt is then due again).
    async fn attempt(&self, id: &str, attempt: u32) -> bool {
        let now = self.app.clock.now();
        // Read right before sending: while this task waited for one of the partner's slots,
        // the webhook may have been disabled (another delivery's 5th failure), or the delivery
        // redelivered or finished. Such an attempt is not sent and nothing is recorded; what is
        // still due is picked up again by the dispatcher.
        let Some((url, body, secrets)) = self.app.read(|s| {
            let d = s.delivery(id)?;
            let w = s.webhook(d.partner_id)?;
            let current = w.active
                && d.status == crate::core::state::DeliveryStatus::Pending
                && d.attempt + 1 == attempt;
            current.then(|| {
                let secrets: Vec<String> = w
                    .signing_secrets(now)
                    .into_iter()
                    .map(str::to_string)
                    .collect();
                (w.url.clone(), d.body.clone(), secrets)
            })
        }) else {
            tracing::debug!(
                delivery = id,
                attempt,
                "attempt no longer due (webhook disabled, or delivery moved on); not sent"
            );
            return true;
        };
        let secrets: Vec<String> = secrets
            .iter()
            .filter_map(|s| self.app.keys.open_secret(s))
            .collect();
        let ts = now.timestamp();
        let started = Instant::now();
        let result = match secrets.first() {
            // Recorded as a failed attempt, so the schedule runs its course (and disables the
            // webhook) instead of retrying at once for ever.
            None => {
                tracing::error!(delivery = id, "webhook secret cannot be decrypted");
                Err("the webhook secret cannot be decrypted with this server's master key".into())
            }
            Some(current) => {
                let standard: Vec<String> = secrets
                    .iter()
                    .filter_map(|s| standard_signature(s, id, ts, body.as_bytes()))
                    .collect();
                self.send(&url, id, attempt, now, current, &standard.join(" "), body)
                    .await
            }
        };
        let latency_ms = started.elapsed().as_millis() as u64;
        let (status_code, error, response, retry_after) = match result {
            Ok(a) => (Some(a.status), a.note, a.excerpt, a.retry_after),
            Err(e) => (None, Some(e), String::new(), None),
        };
        metrics::counter!("palmgate_webhook_attempts_total",
            "outcome" => if status_code.is_some_and(crate::core::webhook::is_success) { "delivered" } else { "failed" })
        .increment(1);
        let cmd = Command::RecordAttempt(AttemptResult {
            delivery_id: id.to_string(),
            attempt,
            status_code,
            error,
            latency_ms,
            response,
            retry_after,
        });
        match self.app.execute(cmd).await {
            Ok(_) => true,
            // The core refused a result that no longer matches (the webhook was disabled or the
            // delivery moved on while the request was out): nothing to record, nothing to retry.
            Err(crate::app::AppError::Rejected(e)) => {
                tracing::info!(delivery = id, attempt, reason = %e, "webhook attempt result not recorded");
                true
            }
            Err(e) => {
                tracing::error!(delivery = id, error = %e, "cannot record a webhook attempt; it will be sent again");
                false
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn send(
        &self,
        url: &str,
        id: &str,
        attempt: u32,
        now: chrono::DateTime<chrono::Utc>,
        secret: &str,
        standard: &str,
        body: String,
    ) -> Result<Answer, String> {
        let ts = now.timestamp();
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("invalid url: {e}"))?;
        self.guard.check_literal(&parsed)?;
        let request = self
            .http
            .post(parsed)
            .header("content-type", "application/json")
            .header(
                "x-webhook-signature",
                seed_signature(secret, body.as_bytes()),
            )
            .header("x-webhook-id", id)
            .header("x-webhook-attempt", attempt.to_string())
            .header("webhook-id", id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", standard)
            .body(body)
            .send();
        // Success is decided on the status line arriving within 10 s (SPEC 4).
        let resp = tokio::time::timeout(TIMEOUT, request)
            .await
            .map_err(|_| timed_out())?
            .map_err(describe)?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| retry_after(v, now));
        // Redirects are not followed (SPEC 4: the address checked is the address posted to);
        // the attempt says so, with where the receiver pointed.
        let note = resp.status().is_redirection().then(|| {
            let to = resp
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .map(|l| format!(" to {}", l.chars().take(200).collect::<String>()))
                .unwrap_or_default();
            format!("redirect{to} not followed: webhook URLs must answer the POST themselves")
        });
        // Only the excerpt that is kept is read, within what is left of a short wait. The status
        // decided the outcome: a body cut off or still coming only leaves a note in the excerpt
        // (a 2xx stays delivered, any other status keeps its code).
        let body_deadline = tokio::time::Instant::now() + BODY_WAIT;
        let mut resp = resp;
        let mut kept: Vec<u8> = Vec::new();
        let mut cut: Option<String> = None;
        while kept.len() < RESPONSE_KEPT {
            match tokio::time::timeout_at(body_deadline, resp.chunk()).await {
                Ok(Ok(Some(c))) => kept.extend_from_slice(&c),
                Ok(Ok(None)) => break,
                Ok(Err(e)) => {
                    cut = Some(format!("broken off: {}", describe(e)));
                    break;
                }
                Err(_) => {
                    cut = Some(format!(
                        "not received in full within {} s",
                        BODY_WAIT.as_secs()
                    ));
                    break;
                }
            }
        }
        Ok(Answer {
            status,
            note,
            excerpt: excerpt(&kept, cut.as_deref()),
            retry_after,
        })
    }
}

/// What a receiver answered, as an attempt records it.
struct Answer {
    status: u16,
    /// Said beside the status (a redirect not followed).
    note: Option<String>,
    excerpt: String,
    retry_after: Option<chrono::Duration>,
}

/// A `Retry-After` value as a delay from `now`: whole seconds, or an HTTP date (RFC 9110
/// 10.2.3); a date already past is no delay. Capped before it becomes a duration (the core caps
/// it at 24 h anyway): a huge value overflowed `Duration::seconds`, whose panic left the
/// delivery in flight, never attempted again until a restart. Anything else is ignored.
fn retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<chrono::Duration> {
    let cap = crate::core::webhook::MAX_RETRY_AFTER.num_seconds();
    let value = value.trim();
    let secs = match value.parse::<i64>() {
        Ok(s) if s >= 0 => s,
        Ok(_) => return None,
        Err(_) => {
            let at = httpdate::parse_http_date(value).ok()?;
            let at = chrono::DateTime::<chrono::Utc>::from(at);
            (at - now).num_seconds().max(0)
        }
    };
    Some(chrono::Duration::seconds(secs.min(cap)))
}

/// What is kept of an answer's body: at most [`RESPONSE_KEPT`] bytes of text, ending with a
/// note when the body was cut short (`cut` says how).
fn excerpt(body: &[u8], cut: Option<&str>) -> String {
    let note = cut.map(|how| format!("\n[palmgate: response body {how}]"));
    let room = RESPONSE_KEPT - note.as_ref().map_or(0, String::len).min(RESPONSE_KEPT);
    let mut text = String::from_utf8_lossy(&body[..body.len().min(RESPONSE_KEPT)]).into_owned();
    // A binary answer's replacement characters must not grow it past the room kept.
    let mut end = text.len().min(room);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    if let Some(note) = note {
        text.push_str(&note);
    }
    text
}

fn timed_out() -> String {
    format!("timed out after {} s", TIMEOUT.as_secs())
}

fn describe(e: reqwest::Error) -> String {
    if e.is_timeout() {
        timed_out()
    } else if e.is_connect() {
        let mut msg = "connection failed".to_string();
        let mut src: Option<&dyn std::error::Error> = std::error::Error::source(&e);
        while let Some(s) = src {
            msg = format!("connection failed: {s}");
            src = s.source();
        }
        msg
    } else {
        // reqwest's own message names only the URL: add the innermost cause (a malformed
        // answer, a connection closed before the answer, ...).
        let mut msg = format!("request failed: {e}");
        let mut src: Option<&dyn std::error::Error> = std::error::Error::source(&e);
        let mut last = None;
        while let Some(s) = src {
            last = Some(s);
            src = s.source();
        }
        if let Some(cause) = last {
            msg = format!("{msg}: {cause}");
        }
        msg
    }
}

#[cfg(test)]
mod tests {
    use super::retry_after;
    use chrono::{Duration, TimeZone, Utc};

    #[test]
    fn retry_after_takes_seconds_or_an_http_date() {
        let now = Utc.with_ymd_and_hms(2026, 11, 29, 8, 0, 0).unwrap();
        assert_eq!(retry_after("120", now), Some(Duration::seconds(120)));
        assert_eq!(retry_after(" 0 ", now), Some(Duration::zero()));
        // RFC 9110's IMF-fixdate, and the two obsolete forms it still accepts.
        for date in [
            "Sun, 29 Nov 2026 08:10:00 GMT",
            "Sunday, 29-Nov-26 08:10:00 GMT",
            "Sun Nov 29 08:10:00 2026",
        ] {
            assert_eq!(
                retry_after(date, now),
                Some(Duration::minutes(10)),
                "{date}"
            );
        }
        // A date already past asks for no delay; a date days away is capped at 24 h.
        assert_eq!(
            retry_after("Sun, 29 Nov 2026 07:00:00 GMT", now),
            Some(Duration::zero())
        );
        assert_eq!(
            retry_after("Fri, 25 Dec 2026 00:00:00 GMT", now),
            Some(Duration::hours(24))
        );
        assert_eq!(
            retry_after("99999999999999999", now),
            Some(Duration::hours(24))
        );
        for junk in ["-5", "soon", "", "1.5", "Sun, 29 Nov 2026 25:00:00 GMT"] {
            assert_eq!(retry_after(junk, now), None, "{junk:?}");
        }
    }
}
