//! The scenario runner: the real core and shell on a virtual clock, with in-memory transports.
//!
//! HTTP calls go through the real router without a socket; reader messages go straight to the
//! app; reader commands, relay writes and webhook attempts are recorded in memory, and relays
//! and webhook receivers answer as the scenario scripts them. Time only moves when the runner
//! moves it: to the next step, or to the next deadline before it (a session expiry, a webhook
//! retry, the end of a relay pulse, a second boundary while unlock windows exist) — a
//! discrete-event simulation with no sleeps. A step bound catches livelock.

use super::scenario::{self, Scenario, Step, json};
use crate::app::clock::{Clock, ManualClock, SeededRng};
use crate::app::secrets::Keys;
use crate::app::{App, Parts};
use crate::config::Config;
use crate::core::doors::RelayCommand;
use crate::core::{AttemptResult, Command, Effect, PartnerId, ReaderId, RelayReport};
use crate::mqtt::protocol::{CaptureMsg, Inbound};
use crate::store::SqliteStore;
use axum::body::Body;
use chrono::{DateTime, Duration, Utc};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::mpsc;
use tower::ServiceExt;

/// Most clock moves one scenario may make.
const MAX_MOVES: usize = 2_000_000;
const ADMIN_TOKEN: &str = "scenario-admin";
/// Any public address: scenario webhooks are answered in memory, never sent.
const HOOK_URL: &str = "https://93.184.216.34/palmgate-hook";

/// A webhook attempt the runner's in-memory receiver got.
#[derive(Debug, Clone)]
struct Sent {
    partner: String,
    event: String,
    attempt: u32,
    at: DateTime<Utc>,
    body: Value,
}

struct Runner {
    app: Arc<App>,
    clock: Arc<ManualClock>,
    router: axum::Router,
    effects: mpsc::UnboundedReceiver<Effect>,
    start: DateTime<Utc>,
    partners: HashMap<String, (PartnerId, String)>,
    partner_names: HashMap<PartnerId, String>,
    saved: HashMap<String, (String, String)>,
    answers: HashMap<PartnerId, VecDeque<(u16, Option<Duration>)>>,
    down: HashSet<String>,
    /// Devices up but refusing every coil write (`relay_fault.refuses`).
    refusing: HashSet<String>,
    offs: BTreeMap<(DateTime<Utc>, u64), (String, u16, String)>,
    seq: u64,
    sent: Vec<Sent>,
    sent_cursor: usize,
    reader_cmds: Vec<(String, Value)>,
    reader_cursor: usize,
    event_cursor: u64,
    relay_cursor: u64,
    failures: Vec<String>,
    dir: PathBuf,
}

impl Drop for Runner {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A scenario's instant: `+duration` after `start`, or RFC 3339.
pub(crate) fn instant(start: DateTime<Utc>, s: &str) -> Result<DateTime<Utc>, String> {
    if let Some(rel) = s.strip_prefix('+') {
        let d = humantime::parse_duration(rel).map_err(|e| format!("{s:?}: {e}"))?;
        return Duration::from_std(d)
            .ok()
            .and_then(|d| start.checked_add_signed(d))
            .ok_or_else(|| format!("{s:?} is out of range (after {start})"));
    }
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("{s:?} is neither +duration nor RFC 3339: {e}"))
}

/// `expected` ⊆ `actual`: every key given has the same value (recursively); arrays match
/// element-wise and in length.
pub fn matches(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => e
            .iter()
            .all(|(k, v)| a.get(k).is_some_and(|av| matches(v, av))),
        (Value::Array(e), Value::Array(a)) => {
            e.len() == a.len() && e.iter().zip(a).all(|(x, y)| matches(x, y))
        }
        (Value::Number(e), Value::Number(a)) => e.as_f64() == a.as_f64(),
        (e, a) => e == a,
    }
}

static RUN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Runner {
    async fn new(s: &Scenario, base: &Path) -> Result<Runner, String> {
        let start = DateTime::parse_from_rfc3339(&s.start)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| format!("start: {:?}: {e}", s.start))?;
        let dir = std::env::temp_dir().join(format!(
            "palmgate-replay-{}-{}",
            std::process::id(),
            RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let mut env = vec![
            ("PALMGATE_ADMIN_TOKEN".to_string(), ADMIN_TOKEN.to_string()),
            (
                "PALMGATE_RATE_LIMIT_PER_MINUTE".into(),
                s.settings.rate_limit.unwrap_or(1_000_000).to_string(),
            ),
        ];
        if let Some(t) = &s.settings.ttl {
            env.push(("PALMGATE_SESSIONS_TTL".into(), t.clone()));
        }
        if let Some(t) = s.settings.threshold {
            env.push(("PALMGATE_MATCHING_THRESHOLD".into(), t.to_string()));
        }
        if let Some(q) = s.settings.min_quality {
            env.push(("PALMGATE_MATCHING_MIN_QUALITY".into(), q.to_string()));
        }
        let config = Config::load(None, &env).map_err(|e| {
            // The scenario's settings reach the config as variables: name them as written.
            let mut text = format!("settings: {e}");
            for (var, key) in [
                ("PALMGATE_RATE_LIMIT_PER_MINUTE", "rate_limit"),
                ("PALMGATE_SESSIONS_TTL", "ttl"),
                ("PALMGATE_MATCHING_THRESHOLD", "threshold"),
                ("PALMGATE_MATCHING_MIN_QUALITY", "min_quality"),
            ] {
                text = text.replace(
                    &format!("environment variable {var}"),
                    &format!("the scenario's settings.{key}"),
                );
            }
            text
        })?;
        let clock = Arc::new(ManualClock::new(start));
        let rng = Arc::new(SeededRng::new(7));
        let store = Arc::new(SqliteStore::open(dir.join("events.db")).map_err(|e| e.to_string())?);
        let keystore = crate::app::keystore::KeyStore::open(&dir.join("keys.db"))
            .map_err(|e| e.to_string())?;
        let (app, effects) = App::new(
            config,
            Parts {
                store,
                keystore,
                clock: clock.clone(),
                rng,
                keys: Keys::from_master(&[42; 32]),
                public_url: "https://gate.example".into(),
            },
        )
        .map_err(|e| e.to_string())?;
        let mut r = Runner {
            router: crate::http::router(app.clone()),
            app,
            clock,
            effects,
            start,
            partners: HashMap::new(),
            partner_names: HashMap::new(),
            saved: HashMap::new(),
            answers: HashMap::new(),
            down: HashSet::new(),
            refusing: HashSet::new(),
            offs: BTreeMap::new(),
            seq: 0,
            sent: vec![],
            sent_cursor: 0,
            reader_cmds: vec![],
            reader_cursor: 0,
            event_cursor: 0,
            relay_cursor: 0,
            failures: vec![],
            dir,
        };
        let site = match (&s.site, &s.site_file) {
            (Some(t), _) => Some(t.clone()),
            (None, Some(p)) => Some(
                std::fs::read_to_string(base.join(p))
                    .map_err(|e| format!("site_file {}: {e}", p.display()))?,
            ),
            (None, None) => None,
        };
        if let Some(doc) = site {
            r.app
                .activate_policy(doc, "scenario")
                .await
                .map_err(|e| format!("site: {e}"))?;
        }
        for p in &s.partners {
            r.add_partner(&p.name, p.webhook.as_ref()).await?;
        }
        for reader in &s.readers {
            r.exec(Command::ReaderStatus {
                reader_id: ReaderId(reader.clone()),
                online: true,
                model: None,
                firmware: None,
            })
            .await?;
        }
        for (i, u) in s.users.iter().enumerate() {
            r.enroll_user(i, u).await?;
        }
        r.settle().await?;
        // Expectations look at what happens from the first step on.
        r.event_cursor = r.app.read(|st| st.position());
        r.relay_cursor = r.event_cursor;
        r.sent_cursor = r.sent.len();
        r.reader_cursor = r.reader_cmds.len();
        Ok(r)
    }

    async fn exec(&mut self, cmd: Command) -> Result<(), String> {
        self.app
            .execute(cmd)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    async fn http(
        &self,
        method: &str,
        path: &str,
        auth: Option<(&str, String)>,
        body: Option<Value>,
        headers: &BTreeMap<String, String>,
    ) -> Result<(u16, Value), String> {
        let mut req = axum::http::Request::builder().method(method).uri(path);
        if let Some((h, v)) = auth {
            req = req.header(h, v);
        }
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let req = match body {
            Some(b) => req
                .header("content-type", "application/json")
                .body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        }
        .map_err(|e| e.to_string())?;
        let resp = self
            .router
            .clone()
            .oneshot(req)
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .map_err(|e| e.to_string())?;
        let v = serde_json::from_slice(&bytes)
            .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()));
        Ok((status, v))
    }

    async fn add_partner(
        &mut self,
        name: &str,
        webhook: Option<&Vec<String>>,
    ) -> Result<(), String> {
        let (st, v) = self
            .http(
                "POST",
                "/admin/v1/partners",
                Some(("authorization", format!("Bearer {ADMIN_TOKEN}"))),
                Some(serde_json::json!({ "name": name })),
                &BTreeMap::new(),
            )
            .await?;
        if st != 201 {
            return Err(format!("partner {name}: {st} {v}"));
        }
        let id = PartnerId::parse(v["id"].as_str().unwrap_or("")).ok_or("partner id")?;
        let key = v["api_key"].as_str().unwrap_or("").to_string();
        if let Some(events) = webhook {
            let (st, v) = self
                .http(
                    "PUT",
                    "/v1/webhook",
                    Some(("x-api-key", key.clone())),
                    Some(serde_json::json!({ "url": HOOK_URL, "events": events })),
                    &BTreeMap::new(),
                )
                .await?;
            if st != 200 {
                return Err(format!("webhook of {name}: {st} {v}"));
            }
        }
        self.partners.insert(name.to_string(), (id, key));
        self.partner_names.insert(id, name.to_string());
        Ok(())
    }

    fn key_of(&self, partner: &str) -> Result<String, String> {
        self.partners
            .get(partner)
            .map(|(_, k)| k.clone())
            .ok_or_else(|| format!("unknown partner {partner:?} (declare it in [[partners]])"))
    }

    async fn enroll_user(&mut self, i: usize, u: &scenario::UserDef) -> Result<(), String> {
        let key = self
            .key_of(&u.partner)
            .map_err(|e| format!("users[{i}]: {e}"))?;
        let mut body = serde_json::json!({ "external_id": u.external_id });
        if let Some(n) = &u.username {
            body["username"] = Value::from(n.clone());
        }
        if let Some(m) = &u.metadata {
            body["metadata"] = json(m);
        }
        let (st, v) = self
            .http(
                "POST",
                "/v1/enroll",
                Some(("x-api-key", key)),
                Some(body),
                &BTreeMap::new(),
            )
            .await?;
        if st != 201 {
            return Err(format!("users[{i}]: enroll answered {st} {v}"));
        }
        let token = v["url"]
            .as_str()
            .unwrap_or("")
            .rsplit('/')
            .next()
            .unwrap_or("")
            .to_string();
        let id = v["session_id"]
            .as_str()
            .and_then(crate::core::SessionId::parse)
            .ok_or_else(|| format!("users[{i}]: enroll answered no session_id: {v}"))?;
        self.capture("setup-desk", &u.palm, Some(token), 0.95, true, None)
            .await
            .map_err(|e| format!("users[{i}]: {e}"))?;
        // A refused enrollment (the palm already enrolled, a failed capture) must not go
        // unnoticed: the steps would run against users that do not exist.
        let (state, reason) = self.app.read(|s| {
            s.session(id).map_or(("unknown".to_string(), None), |x| {
                (
                    x.state.as_str().to_string(),
                    x.fail_reason.map(|r| r.as_str().to_string()),
                )
            })
        });
        if state != "completed" {
            return Err(format!(
                "users[{i}]: enrollment ended {state} {}",
                reason.as_deref().unwrap_or("(no fail_reason)")
            ));
        }
        Ok(())
    }

    async fn capture(
        &mut self,
        reader: &str,
        palm: &str,
        session: Option<String>,
        quality: f64,
        liveness: bool,
        capture_id: Option<String>,
    ) -> Result<(), String> {
        self.seq += 1;
        let msg = Inbound::Capture(CaptureMsg {
            capture_id: capture_id.unwrap_or_else(|| format!("cap-{}", self.seq)),
            session,
            template: crate::synthetic::scan(palm, self.app.config.matching.dim, self.seq).into(),
            quality,
            liveness,
        });
        match self.app.reader_message(ReaderId(reader.into()), msg).await {
            Ok(_) | Err(crate::app::AppError::Rejected(_)) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Performs every effect the core asked for so far (relays answer in memory).
    async fn drain_effects(&mut self) -> Result<(), String> {
        while let Ok(e) = self.effects.try_recv() {
            let now = self.clock.now();
            match e {
                Effect::Reader { reader_id, command } => {
                    let payload = crate::mqtt::client::command_payload(&self.app, &command);
                    self.reader_cmds.push((reader_id.0, payload));
                }
                Effect::Relay { device, command } => {
                    let (coil, on, tag, off_after) = match command {
                        RelayCommand::Pulse { coil, hold_ms, tag } => (
                            coil,
                            true,
                            tag,
                            Some(Duration::milliseconds(i64::from(hold_ms))),
                        ),
                        RelayCommand::Rest {
                            coil,
                            on,
                            cut_pulse,
                        } => {
                            if cut_pulse {
                                self.offs
                                    .retain(|_, (d, c, _)| !(*d == device && *c == coil));
                            }
                            (coil, on, String::new(), None)
                        }
                    };
                    let report = if let Some(error) = self.coil_fault(&device) {
                        RelayReport::CoilFailed {
                            device: device.clone(),
                            coil,
                            on,
                            error: error.into(),
                            tag,
                            refused: true,
                        }
                    } else {
                        if let Some(d) = off_after {
                            self.seq += 1;
                            self.offs
                                .insert((now + d, self.seq), (device.clone(), coil, tag.clone()));
                        }
                        RelayReport::Coil {
                            device: device.clone(),
                            coil,
                            on,
                            tag,
                        }
                    };
                    self.exec(Command::relay(report)).await?;
                }
            }
        }
        Ok(())
    }

    async fn deliver_due(&mut self) -> Result<bool, String> {
        let now = self.clock.now();
        let due = self.app.read(|s| s.due_deliveries(now, |_| false));
        let any = !due.is_empty();
        for (partner, id, attempt) in due {
            // As the dispatcher does right before sending: an earlier delivery of this batch
            // may have disabled the webhook (its 5th failure).
            let current = self.app.read(|s| {
                s.delivery(&id).is_some_and(|d| {
                    d.status == crate::core::state::DeliveryStatus::Pending
                        && d.attempt + 1 == attempt
                        && s.webhook(d.partner_id).is_some_and(|w| w.active)
                })
            });
            if !current {
                continue;
            }
            let body = self
                .app
                .read(|s| s.delivery(&id).map(|d| d.body.clone()))
                .unwrap_or_default();
            let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            let (status, retry_after) = self
                .answers
                .get_mut(&partner)
                .and_then(|q| q.pop_front())
                .unwrap_or((200, None));
            self.sent.push(Sent {
                partner: self
                    .partner_names
                    .get(&partner)
                    .cloned()
                    .unwrap_or_default(),
                event: body["event"].as_str().unwrap_or("").to_string(),
                attempt,
                at: now,
                body,
            });
            self.exec(Command::RecordAttempt(AttemptResult {
                delivery_id: id,
                attempt,
                status_code: Some(status),
                error: None,
                latency_ms: 1,
                response: String::new(),
                retry_after,
            }))
            .await?;
        }
        Ok(any)
    }

    /// Does everything due at the current instant.
    async fn settle(&mut self) -> Result<(), String> {
        for _ in 0..10_000 {
            let now = self.clock.now();
            let mut busy = false;
            // Expiries, held-open alarms, unlock windows: whatever is due now. A tick expires
            // a bounded batch of sessions: another round while some are still due.
            self.exec(Command::Tick).await?;
            busy |= self
                .app
                .read(|s| s.deadlines.first().is_some_and(|(t, _)| *t <= now));
            while let Some((&(t, seq), _)) = self.offs.iter().next() {
                if t > now {
                    break;
                }
                let (device, coil, tag) = self.offs.remove(&(t, seq)).expect("present");
                let on = self.app.read(|s| {
                    s.policy.as_ref().and_then(|p| {
                        p.doors
                            .iter()
                            .find(|d| d.relay.device == device && d.relay.coil == coil)
                            .map(|d| s.rests_unlocked(&d.id, now))
                    })
                });
                let on = on.unwrap_or(false);
                let report = if let Some(error) = self.coil_fault(&device) {
                    RelayReport::CoilFailed {
                        device,
                        coil,
                        on,
                        error: error.into(),
                        tag,
                        refused: true,
                    }
                } else {
                    RelayReport::Coil {
                        device,
                        coil,
                        on,
                        tag,
                    }
                };
                self.exec(Command::relay(report)).await?;
                busy = true;
            }
            busy |= self.deliver_due().await?;
            let had_effects = !self.effects.is_empty();
            self.drain_effects().await?;
            if !busy && !had_effects {
                return Ok(());
            }
        }
        Err("livelock: more than 10000 rounds at one instant".into())
    }

    /// Why a coil write to `device` fails now, if it does (`relay_fault`).
    fn coil_fault(&self, device: &str) -> Option<&'static str> {
        if self.down.contains(device) {
            Some("device down")
        } else if self.refusing.contains(device) {
            Some("device exception IllegalDataAddress (scenario: the board refuses coil writes)")
        } else {
            None
        }
    }

    fn next_time(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let a = self.app.read(|s| s.next_deadline_after(now));
        let b = self.app.read(|s| s.next_delivery_due(|_| false));
        let c = self.offs.keys().next().map(|(t, _)| *t);
        [a, b, c].into_iter().flatten().filter(|t| *t > now).min()
    }

    async fn advance_to(&mut self, target: DateTime<Utc>) -> Result<(), String> {
        let mut moves = 0;
        // Unlock windows ask for a tick every second: a long step may make one move per second
        // of it, which is work, not a livelock.
        let budget = MAX_MOVES.saturating_add(
            usize::try_from((target - self.clock.now()).num_seconds()).unwrap_or(0),
        );
        loop {
            self.settle().await?;
            let now = self.clock.now();
            match self.next_time(now) {
                Some(t) if t <= target => self.clock.set(t),
                _ => break,
            }
            moves += 1;
            if moves > budget {
                return Err(format!(
                    "livelock: the clock moved more than {budget} times in one step \
                     (2,000,000 plus one per second of it)"
                ));
            }
        }
        self.clock.set(target);
        self.settle().await
    }

    fn fail(&mut self, i: usize, msg: String) {
        self.failures.push(format!("step {i}: {msg}"));
    }

    async fn step(&mut self, i: usize, step: &Step) -> Result<(), String> {
        if let Some(at) = &step.at {
            let t = instant(self.start, at).map_err(|e| format!("at: {e}"))?;
            if t < self.clock.now() {
                return Err(format!("at {at:?} is before the previous step"));
            }
            self.advance_to(t).await?;
        }
        if let Some(call) = &step.api {
            let mut path = call.path.clone();
            for (name, (sid, token)) in &self.saved {
                path = path
                    .replace(&format!("{{{name}.session_id}}"), sid)
                    .replace(&format!("{{{name}.token}}"), token);
            }
            if let Some(unknown) = unknown_placeholder(&path) {
                return Err(format!(
                    "api.path: no saved session {unknown:?} for its placeholder in {:?}",
                    call.path
                ));
            }
            let auth = if call.admin {
                Some(("authorization", format!("Bearer {ADMIN_TOKEN}")))
            } else {
                match &call.partner {
                    Some(p) => Some(("x-api-key", self.key_of(p)?)),
                    None => None,
                }
            };
            let (status, body) = self
                .http(
                    &call.method,
                    &path,
                    auth,
                    call.body.as_ref().map(json),
                    &call.headers,
                )
                .await?;
            if let Some(name) = &call.save {
                let token = body["url"]
                    .as_str()
                    .unwrap_or("")
                    .rsplit('/')
                    .next()
                    .unwrap_or("")
                    .to_string();
                let sid = body["session_id"].as_str().unwrap_or("").to_string();
                self.saved.insert(name.clone(), (sid, token));
            }
            if let Some(e) = &step.expect {
                if let Some(s) = e.status
                    && s != status
                {
                    self.fail(
                        i,
                        format!(
                            "{} {path}: status {status}, expected {s} ({body})",
                            call.method
                        ),
                    );
                }
                if let Some(b) = &e.body
                    && !matches(&json(b), &body)
                {
                    self.fail(
                        i,
                        format!(
                            "{} {path}: body {body} does not match {}",
                            call.method,
                            json(b)
                        ),
                    );
                }
            }
        }
        if let Some(r) = &step.reader_status {
            self.exec(Command::ReaderStatus {
                reader_id: ReaderId(r.reader.clone()),
                online: r.online,
                model: None,
                firmware: None,
            })
            .await?;
        }
        if let Some(c) = &step.capture {
            let session = match &c.session {
                Some(name) => Some(
                    self.saved
                        .get(name)
                        .map(|(_, t)| t.clone())
                        .ok_or_else(|| format!("capture.session: no saved session {name:?}"))?,
                ),
                None => None,
            };
            self.capture(
                &c.reader,
                &c.palm,
                session,
                c.quality,
                c.liveness,
                c.capture_id.clone(),
            )
            .await?;
        }
        if let Some(t) = &step.trigger {
            self.seq += 1;
            let before: HashSet<_> = self.app.read(|s| s.open_session_ids());
            self.app
                .reader_message(
                    ReaderId(t.reader.clone()),
                    Inbound::Trigger {
                        trigger_id: t
                            .trigger_id
                            .clone()
                            .unwrap_or_else(|| format!("trg-{}", self.seq)),
                    },
                )
                .await
                .map_err(|e| e.to_string())?;
            if let Some(name) = &t.save {
                let after = self.app.read(|s| s.open_session_ids());
                let id = after
                    .difference(&before)
                    .next()
                    .copied()
                    .ok_or("trigger opened no session")?;
                self.saved.insert(
                    name.clone(),
                    (id.to_string(), self.app.keys.session_token(id)),
                );
            }
        }
        if let Some(w) = &step.webhook_answers {
            let (id, _) = self.partners.get(&w.partner).cloned().ok_or_else(|| {
                format!(
                    "webhook_answers: unknown partner {:?} (declare it in [[partners]])",
                    w.partner
                )
            })?;
            let retry_after = w
                .retry_after
                .map(|n| {
                    Duration::try_seconds(n).filter(|_| n >= 0).ok_or_else(|| {
                        format!("webhook_answers.retry_after: {n} seconds is out of range")
                    })
                })
                .transpose()?;
            self.answers
                .entry(id)
                .or_default()
                .extend(w.statuses.iter().map(|s| (*s, retry_after)));
        }
        if let Some(f) = &step.relay_fault {
            if f.down.is_none() && f.refuses.is_none() {
                return Err(format!(
                    "relay_fault for {:?}: say `down = true|false` or `refuses = true|false`",
                    f.device
                ));
            }
            let known: Vec<String> = self.app.read(|s| {
                s.policy.as_ref().map_or(vec![], |p| {
                    p.relay_devices.iter().map(|d| d.id.clone()).collect()
                })
            });
            if !known.contains(&f.device) {
                return Err(format!(
                    "relay_fault.device {:?}: no such relay device in the policy in force (its \
                     devices: {known:?})",
                    f.device
                ));
            }
            match f.refuses {
                Some(true) => {
                    self.refusing.insert(f.device.clone());
                }
                Some(false) => {
                    self.refusing.remove(&f.device);
                }
                None => {}
            }
        }
        if let Some(f) = &step.relay_fault
            && let Some(down) = f.down
        {
            if down {
                self.down.insert(f.device.clone());
                self.exec(Command::relay(RelayReport::Down {
                    device: f.device.clone(),
                    error: "scenario fault".into(),
                }))
                .await?;
            } else {
                self.down.remove(&f.device);
                self.exec(Command::relay(RelayReport::Up {
                    device: f.device.clone(),
                }))
                .await?;
                // Back up: the device is driven to the resting states.
                let now = self.clock.now();
                let rests: Vec<(u16, bool)> = self.app.read(|s| {
                    s.policy.as_ref().map_or(vec![], |p| {
                        p.doors
                            .iter()
                            .filter(|d| d.relay.device == f.device)
                            .map(|d| (d.relay.coil, s.rests_unlocked(&d.id, now)))
                            .collect()
                    })
                });
                for (coil, on) in rests {
                    self.exec(Command::relay(RelayReport::Coil {
                        device: f.device.clone(),
                        coil,
                        on,
                        tag: String::new(),
                    }))
                    .await?;
                }
            }
        }
        if let Some(doc) = &step.policy
            && let Err(e) = self.app.activate_policy(doc.clone(), "scenario").await
        {
            // An invalid policy is a refusal the scenario can expect (as an absence of events).
            tracing::debug!(error = %e, "scenario policy refused");
        }
        if let Some(m) = &step.mode {
            self.exec(Command::SetSiteMode {
                lockdown: m.lockdown,
                emergency: m.emergency,
            })
            .await?;
        }
        if let Some(c) = &step.contact {
            let input = self.app.read(|s| {
                s.policy.as_ref().and_then(|p| {
                    p.door(&crate::core::policy::DoorId(c.door.clone()))
                        .and_then(|d| d.contact.clone())
                })
            });
            let contact =
                input.ok_or_else(|| format!("contact: door {:?} has no contact", c.door))?;
            self.exec(Command::relay(RelayReport::Input {
                device: contact.device,
                input: contact.input,
                on: c.open,
            }))
            .await?;
        }
        if let Some(d) = &step.exit_request {
            let rex = self.app.read(|s| {
                s.policy.as_ref().and_then(|p| {
                    p.door(&crate::core::policy::DoorId(d.door.clone()))
                        .and_then(|d| d.rex.clone())
                })
            });
            let rex = rex.ok_or_else(|| format!("exit_request: door {:?} has no rex", d.door))?;
            for on in [true, false] {
                self.exec(Command::relay(RelayReport::Input {
                    device: rex.device.clone(),
                    input: rex.input,
                    on,
                }))
                .await?;
            }
        }
        self.settle().await?;
        self.check(i, step)
    }

    fn check(&mut self, i: usize, step: &Step) -> Result<(), String> {
        if !step.expect_events.is_empty() || !step.expect_no_events.is_empty() {
            let evs = self
                .app
                .store
                .read(self.event_cursor, 1_000_000)
                .map_err(|e| e.to_string())?;
            let mut it = evs.iter();
            for e in &step.expect_events {
                let want = e.data.as_ref().map(json);
                let found = it.by_ref().find(|r| {
                    let (kind, _, data) = r.event.encode();
                    kind == e.kind && want.as_ref().is_none_or(|w| matches(w, &data))
                });
                if found.is_none() {
                    let seen: Vec<&str> = evs.iter().map(|r| r.event.kind()).collect();
                    // The data of each event of the type asked for: what differed.
                    let same: Vec<String> = evs
                        .iter()
                        .filter(|r| r.event.kind() == e.kind)
                        .map(|r| format!("position {}: {}", r.position, r.event.encode().2))
                        .collect();
                    self.fail(
                        i,
                        format!(
                            "no {} event {} (in order); recorded: {seen:?}{}",
                            e.kind,
                            want.as_ref()
                                .map_or("at all".to_string(), |w| format!("matching {w}")),
                            if same.is_empty() {
                                String::new()
                            } else {
                                format!("; the {} events seen: {}", e.kind, same.join("; "))
                            }
                        ),
                    );
                }
            }
            for kind in &step.expect_no_events {
                if let Some(r) = evs.iter().find(|r| r.event.kind() == kind) {
                    self.fail(i, format!("unexpected {kind} at position {}", r.position));
                }
            }
            self.event_cursor = evs.last().map_or(self.event_cursor, |r| r.position);
        }
        if !step.expect_relay.is_empty() {
            let evs = self
                .app
                .store
                .read(self.relay_cursor, 1_000_000)
                .map_err(|e| e.to_string())?;
            let writes: Vec<(String, bool, DateTime<Utc>)> = evs
                .iter()
                .filter_map(|r| match &r.event {
                    crate::core::Event::RelaySwitched { door, on, at, .. } => {
                        Some((door.0.clone(), *on, *at))
                    }
                    _ => None,
                })
                .collect();
            let mut it = writes.iter();
            for e in &step.expect_relay {
                let at =
                    e.at.as_deref()
                        .map(|a| instant(self.start, a))
                        .transpose()?;
                if it
                    .by_ref()
                    .find(|(d, on, t)| *d == e.door && *on == e.on && at.is_none_or(|a| a == *t))
                    .is_none()
                {
                    self.fail(
                        i,
                        format!(
                            "no relay write {} {}{} (in order); writes: {writes:?}",
                            e.door,
                            if e.on { "on" } else { "off" },
                            e.at.as_ref().map_or(String::new(), |a| format!(" at {a}"))
                        ),
                    );
                }
            }
            self.relay_cursor = evs.last().map_or(self.relay_cursor, |r| r.position);
        }
        if !step.expect_webhooks.is_empty() || step.expect_webhook_count.is_some() {
            let new: Vec<Sent> = self.sent[self.sent_cursor..].to_vec();
            if let Some(n) = step.expect_webhook_count
                && n != new.len()
            {
                self.fail(
                    i,
                    format!(
                        "{} webhook attempts, expected {n}: {:?}",
                        new.len(),
                        new.iter()
                            .map(|s| (&s.partner, &s.event, s.attempt, s.at))
                            .collect::<Vec<_>>()
                    ),
                );
            }
            let mut it = new.iter();
            for e in &step.expect_webhooks {
                let at =
                    e.at.as_deref()
                        .map(|a| instant(self.start, a))
                        .transpose()?;
                let data = e.data.as_ref().map(json);
                let ok = it.by_ref().any(|s| {
                    s.partner == e.partner
                        && s.event == e.event
                        && e.attempt.is_none_or(|a| a == s.attempt)
                        && at.is_none_or(|a| a == s.at)
                        && data.as_ref().is_none_or(|d| matches(d, &s.body["data"]))
                });
                if !ok {
                    self.fail(
                        i,
                        format!(
                            "no webhook {} {}{}{}{} (in order); sent: {:?}",
                            e.partner,
                            e.event,
                            e.attempt.map_or(String::new(), |a| format!(" attempt {a}")),
                            e.at.as_ref().map_or(String::new(), |a| format!(" at {a}")),
                            data.as_ref()
                                .map_or(String::new(), |d| format!(" with data {d}")),
                            new.iter()
                                .map(|s| (&s.partner, &s.event, s.attempt, s.at))
                                .collect::<Vec<_>>()
                        ),
                    );
                }
            }
            self.sent_cursor = self.sent.len();
        }
        if !step.expect_reader.is_empty() {
            let new: Vec<(String, Value)> = self.reader_cmds[self.reader_cursor..].to_vec();
            let mut it = new.iter();
            for e in &step.expect_reader {
                let want = json(&e.command);
                if !it
                    .by_ref()
                    .any(|(r, c)| *r == e.reader && matches(&want, c))
                {
                    self.fail(
                        i,
                        format!(
                            "no command {want} to {} (in order); sent: {new:?}",
                            e.reader
                        ),
                    );
                }
            }
            self.reader_cursor = self.reader_cmds.len();
        }
        if let Some(e) = &step.expect_session {
            let (sid, _) = self
                .saved
                .get(&e.session)
                .cloned()
                .ok_or_else(|| format!("expect_session: no saved session {:?}", e.session))?;
            let id = crate::core::SessionId::parse(&sid).ok_or("saved session id")?;
            let (state, reason) = self.app.read(|s| {
                s.session(id).map_or(("unknown".to_string(), None), |x| {
                    (
                        x.state.as_str().to_string(),
                        x.fail_reason.map(|r| r.as_str().to_string()),
                    )
                })
            });
            if state != e.state || (e.fail_reason.is_some() && reason != e.fail_reason) {
                self.fail(
                    i,
                    format!(
                        "session {}: {state}{}, expected {}{}",
                        e.session,
                        reason.as_ref().map_or(String::new(), |r| format!(" ({r})")),
                        e.state,
                        e.fail_reason
                            .as_ref()
                            .map_or(String::new(), |r| format!(" ({r})"))
                    ),
                );
            }
        }
        Ok(())
    }
}

/// The outcome of one scenario.
pub struct Outcome {
    pub name: String,
    pub failures: Vec<String>,
}

/// Runs the scenario in `path`.
pub async fn run_file(path: &Path) -> Outcome {
    let name = path.display().to_string();
    let s = match scenario::load(path) {
        Ok(s) => s,
        Err(e) => {
            return Outcome {
                name,
                failures: vec![e],
            };
        }
    };
    let base = path.parent().unwrap_or(Path::new("."));
    let failures = match run(&s, base).await {
        Ok(f) => f,
        Err(e) => vec![e],
    };
    Outcome {
        name: format!("{} ({})", s.name, path.display()),
        failures,
    }
}

/// Runs a parsed scenario; the failed expectations (empty: passed).
pub async fn run(s: &Scenario, base: &Path) -> Result<Vec<String>, String> {
    let mut r = Runner::new(s, base).await?;
    for (i, step) in s.steps.iter().enumerate() {
        r.step(i, step)
            .await
            .map_err(|e| format!("step {i}: {e}"))?;
    }
    // Every scenario's log must pass `audit verify`: the chain, and every door decision's
    // inputs and verdict against the log.
    let audit = crate::replay::audit::verify(r.app.store.as_ref())
        .map_err(|e| format!("audit verify: {e}"))?;
    for f in audit.findings {
        r.failures.push(format!(
            "audit verify: position {}: {}",
            f.position, f.problem
        ));
    }
    Ok(std::mem::take(&mut r.failures))
}

/// Every `*.toml` under the given files and directories, sorted.
pub fn collect(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = vec![];
    for p in paths {
        if p.is_dir() {
            if let Ok(rd) = std::fs::read_dir(p) {
                let mut v: Vec<PathBuf> = rd
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                    .collect();
                v.sort();
                out.extend(v);
            }
        } else {
            out.push(p.clone());
        }
    }
    out
}

/// The name in the first `{NAME.session_id}` or `{NAME.token}` left in `path` (no session was
/// saved under that name), if any.
fn unknown_placeholder(path: &str) -> Option<&str> {
    let mut rest = path;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let close = after.find('}')?;
        let inner = &after[..close];
        if let Some(name) = inner
            .strip_suffix(".session_id")
            .or_else(|| inner.strip_suffix(".token"))
        {
            return Some(name);
        }
        rest = &after[close + 1..];
    }
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_placeholder_naming_no_saved_session_is_found() {
        assert_eq!(
            super::unknown_placeholder("/v1/sessions/{zz.session_id}"),
            Some("zz")
        );
        assert_eq!(
            super::unknown_placeholder("/identify/{t1.token}/cancel"),
            Some("t1")
        );
        assert_eq!(super::unknown_placeholder("/v1/users/EMP-1?x={y}"), None);
        assert_eq!(super::unknown_placeholder("/v1/sessions/0193"), None);
    }

    use super::*;

    const HEAD: &str = "name = \"x\"\nstart = \"2026-03-02T09:00:00+05:00\"\n\
                        [[partners]]\nname = \"acme\"\nwebhook = [\"session\"]\n";

    /// Every scenario must expect something: these tests are about other failures, so each
    /// body gets a last step that expects no failed session.
    const LAST: &str = "[[steps]]\nexpect_no_events = [\"SessionFailed\"]\n";

    fn parse(body: &str) -> Scenario {
        scenario::parse(&format!("{HEAD}{body}{LAST}")).unwrap()
    }

    async fn run_text(body: &str) -> Result<Vec<String>, String> {
        run(&parse(body), Path::new(".")).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn webhook_answers_for_an_unknown_partner_name_it() {
        let e =
            run_text("[[steps]]\nwebhook_answers = { partner = \"ghost\", statuses = [500] }\n")
                .await
                .unwrap_err();
        assert!(
            e.starts_with("step 0: webhook_answers: unknown partner \"ghost\""),
            "{e}"
        );
    }

    /// A relay fault for a device the policy does not have, or a path placeholder naming no
    /// saved session, is an error naming it: both were silently nothing (the placeholder sent
    /// as it was, so a scenario expecting 404 passed).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fault_at_an_unknown_device_and_an_unknown_placeholder_name_it() {
        let e = run_text("[[steps]]\nrelay_fault = { device = \"nope\", down = true }\n")
            .await
            .unwrap_err();
        assert!(
            e.starts_with("step 0: relay_fault.device \"nope\": no such relay device"),
            "{e}"
        );
        let e = run_text(
            "[[steps]]\n\
             api = { method = \"GET\", path = \"/v1/sessions/{zz.session_id}\", partner = \"acme\" }\n\
             expect = { status = 404 }\n",
        )
        .await
        .unwrap_err();
        assert!(
            e.starts_with("step 0: api.path: no saved session \"zz\""),
            "{e}"
        );
    }

    #[test]
    fn instants_out_of_range_are_errors() {
        let start = DateTime::parse_from_rfc3339("2026-03-02T09:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        for s in ["+300000y", "+1000000000y"] {
            let e = instant(start, s).unwrap_err();
            assert!(e.contains("out of range") && e.contains(s), "{e}");
        }
        assert_eq!(
            instant(start, "+90s").unwrap(),
            start + Duration::seconds(90)
        );
    }

    /// A step `at` (or an expected `at`) past what the clock can hold is an error naming the
    /// step and key when the file is read, not a panic; so is the start.
    #[test]
    fn huge_instants_fail_the_scenario_naming_the_step() {
        let parse_err = |body: &str| scenario::parse(&format!("{HEAD}{body}{LAST}")).unwrap_err();
        for at in ["+300000y", "+1000000000y"] {
            let e = parse_err(&format!(
                "[[steps]]\nat = \"+1s\"\n[[steps]]\nat = \"{at}\"\n"
            ));
            assert!(
                e.starts_with("steps[1].at: ") && e.contains("out of range"),
                "{e}"
            );
        }
        let e = parse_err(
            "[[steps]]\nexpect_relay = [{ door = \"d\", on = true, at = \"+300000y\" }]\n",
        );
        assert!(
            e.starts_with("steps[0].expect_relay[0].at: ") && e.contains("out of range"),
            "{e}"
        );
        // The start is an instant, never relative to the wall clock (runs would differ).
        for start in ["+300000y", "+0s"] {
            let e = scenario::parse(&format!("name = \"x\"\nstart = \"{start}\"\n[[steps]]\n"))
                .unwrap_err();
            assert!(e.starts_with("start: ") && e.contains("RFC 3339"), "{e}");
        }
    }

    /// A `retry_after` no `chrono::Duration` holds (or a negative one) is an error naming the
    /// step, not a panic when the attempt is recorded.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn huge_retry_after_is_an_error() {
        for n in ["9223372036854775807", "-5"] {
            let e = run_text(&format!(
                "[[steps]]\nwebhook_answers = {{ partner = \"acme\", statuses = [429], retry_after = {n} }}\n\
                 api = {{ method = \"POST\", path = \"/v1/webhook/test\", partner = \"acme\" }}\n"
            ))
            .await
            .unwrap_err();
            assert!(
                e.starts_with("step 0: webhook_answers.retry_after: ") && e.contains(n),
                "{e}"
            );
        }
        // A large but valid one is capped by the core (24 h): the retry comes, nothing breaks.
        let failures = run_text(
            "[[steps]]\nwebhook_answers = { partner = \"acme\", statuses = [429], retry_after = 1000000000000 }\n\
             api = { method = \"POST\", path = \"/v1/webhook/test\", partner = \"acme\" }\n\
             [[steps]]\nat = \"+25h\"\n\
             expect_webhooks = [{ partner = \"acme\", event = \"ping\", attempt = 1 }, { partner = \"acme\", event = \"ping\", attempt = 2, at = \"+24h\" }]\n",
        )
        .await
        .unwrap();
        assert!(failures.is_empty(), "{failures:?}");
    }

    /// A session lifetime past the cap is refused by the config (an error naming the setting),
    /// and the longest accepted one works end to end (it overflowed `now + ttl` before).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn settings_ttl_bounds() {
        let mut s = parse("[[steps]]\n");
        s.settings.ttl = Some("300000y".into());
        let e = run(&s, Path::new(".")).await.unwrap_err();
        assert!(
            e.starts_with("settings: ") && e.contains("sessions.ttl"),
            "{e}"
        );
        let failures = run_text(
            "[settings]\nttl = \"100y\"\n[[steps]]\n\
             api = { method = \"POST\", path = \"/v1/identify\", partner = \"acme\" }\n\
             expect = { status = 201 }\n",
        )
        .await
        .unwrap();
        assert!(failures.is_empty(), "{failures:?}");
    }

    /// Two users with one palm: the second enrollment fails `already_enrolled`, and the setup
    /// says so instead of running the steps without that user.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_user_enrollment_fails_the_setup() {
        let e = run_text(
            "[[users]]\npartner = \"acme\"\nexternal_id = \"EMP-1\"\npalm = \"alice\"\n\
             [[users]]\npartner = \"acme\"\nexternal_id = \"EMP-2\"\npalm = \"alice\"\n\
             [[steps]]\n",
        )
        .await
        .unwrap_err();
        assert_eq!(e, "users[1]: enrollment ended failed already_enrolled");
        let e = run_text(
            "[[users]]\npartner = \"nobody\"\nexternal_id = \"EMP-1\"\npalm = \"alice\"\n[[steps]]\n",
        )
        .await
        .unwrap_err();
        assert!(e.starts_with("users[0]: unknown partner"), "{e}");
        let failures = run_text(
            "[[users]]\npartner = \"acme\"\nexternal_id = \"EMP-1\"\npalm = \"alice\"\n\
             [[users]]\npartner = \"acme\"\nexternal_id = \"EMP-2\"\npalm = \"bob\"\n[[steps]]\n",
        )
        .await
        .unwrap();
        assert!(failures.is_empty(), "{failures:?}");
    }

    /// `palmgate replay <dir>` runs every file: one that does not parse or fails to run is an
    /// outcome naming the file, and the next still runs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_file_runs_after_a_failing_one() {
        let dir = tempfile::tempdir().unwrap();
        let files = [
            (
                "a.toml",
                "[[steps]]\nexpect_no_events = [\"SessionCreatd\"]\n",
            ),
            ("b.toml", "[[steps]]\nat = \"+300000y\"\n"),
            ("b2.toml", "[[steps]]\nat = \"+1s\"\n"),
            (
                "c.toml",
                "[[steps]]\nwebhook_answers = { partner = \"acme\", statuses = [429], retry_after = 9223372036854775807 }\n",
            ),
            (
                "d.toml",
                "[[steps]]\napi = { method = \"GET\", path = \"/healthz\" }\nexpect = { status = 200 }\n",
            ),
        ];
        for (name, body) in files {
            let last = if name == "b2.toml" { "" } else { LAST };
            std::fs::write(dir.path().join(name), format!("{HEAD}{body}{last}")).unwrap();
        }
        let paths = collect(&[dir.path().to_path_buf()]);
        assert_eq!(paths.len(), 5);
        let mut outcomes = vec![];
        for p in &paths {
            outcomes.push(run_file(p).await);
        }
        let lines: Vec<String> = outcomes
            .iter()
            .map(|o| format!("{} {:?}", o.name, o.failures))
            .collect();
        assert!(
            outcomes[0].name.ends_with("a.toml")
                && outcomes[0].failures[0].contains("a.toml: steps[0].expect_no_events[0]"),
            "{lines:?}"
        );
        assert!(
            outcomes[1].name.ends_with("b.toml")
                && outcomes[1].failures[0].contains("b.toml: steps[0].at: "),
            "{lines:?}"
        );
        // A scenario that expects nothing could never fail: refused, naming the file.
        assert!(
            outcomes[2].name.ends_with("b2.toml")
                && outcomes[2].failures[0].contains("b2.toml: steps: no step expects anything"),
            "{lines:?}"
        );
        assert!(
            outcomes[3].name.contains("c.toml")
                && outcomes[3].failures[0].starts_with("step 0: webhook_answers.retry_after"),
            "{lines:?}"
        );
        assert!(outcomes[4].failures.is_empty(), "{lines:?}");
    }
}
