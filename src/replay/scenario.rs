//! The scenario file format (`scenarios/*.toml`, documented in `scenarios/README.md`).
//!
//! Parsing is strict: unknown keys are errors, and every error names the file, the step and the
//! key (`steps[3].capture.quality: invalid type ...`).

use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// The virtual clock's start, RFC 3339 (any offset).
    pub start: String,
    /// The site policy, inline.
    #[serde(default)]
    pub site: Option<String>,
    /// The site policy, by path relative to the scenario file.
    #[serde(default)]
    pub site_file: Option<PathBuf>,
    #[serde(default)]
    pub settings: Settings,
    #[serde(default)]
    pub partners: Vec<PartnerDef>,
    /// Users enrolled before the first step (a real enroll session and capture each).
    #[serde(default)]
    pub users: Vec<UserDef>,
    /// Readers online from the start.
    #[serde(default)]
    pub readers: Vec<String>,
    pub steps: Vec<Step>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Session lifetime, e.g. "15m".
    pub ttl: Option<String>,
    pub rate_limit: Option<u32>,
    pub threshold: Option<f32>,
    pub min_quality: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartnerDef {
    pub name: String,
    /// Webhook families, e.g. ["session"] or ["session", "access"]; absent: no webhook.
    #[serde(default)]
    pub webhook: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserDef {
    pub partner: String,
    pub external_id: String,
    pub palm: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub metadata: Option<toml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// "+90s" / "+1h30m" after the start, or an RFC 3339 instant. Default: the previous step's.
    #[serde(default)]
    pub at: Option<String>,
    #[serde(default)]
    pub note: Option<String>,
    // ---- inputs (at most one per step is typical; all present ones run in this order) ----
    #[serde(default)]
    pub api: Option<ApiCall>,
    #[serde(default)]
    pub reader_status: Option<ReaderStatus>,
    #[serde(default)]
    pub capture: Option<CaptureDef>,
    #[serde(default)]
    pub trigger: Option<TriggerDef>,
    #[serde(default)]
    pub webhook_answers: Option<WebhookAnswers>,
    #[serde(default)]
    pub relay_fault: Option<RelayFault>,
    #[serde(default)]
    pub policy: Option<String>,
    #[serde(default)]
    pub mode: Option<Mode>,
    #[serde(default)]
    pub contact: Option<ContactDef>,
    #[serde(default)]
    pub exit_request: Option<DoorRef>,
    // ---- expectations ----
    /// On this step's `api` answer.
    #[serde(default)]
    pub expect: Option<ExpectResponse>,
    /// Events recorded since the previous `expect_events`, in this order (others may be between).
    #[serde(default)]
    pub expect_events: Vec<ExpectEvent>,
    /// Event types that must NOT have been recorded since the previous `expect_events`.
    #[serde(default)]
    pub expect_no_events: Vec<String>,
    /// Webhook attempts sent since the previous `expect_webhooks`, in order.
    #[serde(default)]
    pub expect_webhooks: Vec<ExpectWebhook>,
    /// Exactly this many webhook attempts since the previous `expect_webhooks` check.
    #[serde(default)]
    pub expect_webhook_count: Option<usize>,
    /// Relay writes since the previous `expect_relay`, in order.
    #[serde(default)]
    pub expect_relay: Vec<ExpectRelay>,
    /// Reader commands since the previous `expect_reader`, in order.
    #[serde(default)]
    pub expect_reader: Vec<ExpectReader>,
    /// The state of a saved session now.
    #[serde(default)]
    pub expect_session: Option<ExpectSession>,
}

impl Step {
    /// Whether this step checks anything.
    fn expects(&self) -> bool {
        self.expect.is_some()
            || !self.expect_events.is_empty()
            || !self.expect_no_events.is_empty()
            || !self.expect_webhooks.is_empty()
            || self.expect_webhook_count.is_some()
            || !self.expect_relay.is_empty()
            || !self.expect_reader.is_empty()
            || self.expect_session.is_some()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiCall {
    pub method: String,
    /// May use `{name.session_id}` / `{name.token}` of a saved answer.
    pub path: String,
    /// Call with this partner's API key; absent: no key (or the admin token with `admin`).
    #[serde(default)]
    pub partner: Option<String>,
    #[serde(default)]
    pub admin: bool,
    #[serde(default)]
    pub body: Option<toml::Value>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Save `session_id` and `token` (from `url`) of the answer under this name.
    #[serde(default)]
    pub save: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReaderStatus {
    pub reader: String,
    pub online: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureDef {
    pub reader: String,
    pub palm: String,
    /// A saved session's name; absent: a scan at the reader's door.
    #[serde(default)]
    pub session: Option<String>,
    #[serde(default = "default_quality")]
    pub quality: f64,
    #[serde(default = "default_true")]
    pub liveness: bool,
    /// Default: a fresh id per capture. Repeat one to test redelivery.
    #[serde(default)]
    pub capture_id: Option<String>,
}

fn default_quality() -> f64 {
    0.93
}
fn default_true() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerDef {
    pub reader: String,
    /// Save the opened session under this name.
    #[serde(default)]
    pub save: Option<String>,
    /// The reader's `trigger_id` (default: a fresh one); repeat one to test a QoS 1
    /// redelivery.
    #[serde(default)]
    pub trigger_id: Option<String>,
}

/// What the partner's receiver answers to the next attempts (then 200).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookAnswers {
    pub partner: String,
    pub statuses: Vec<u16>,
    /// `Retry-After` seconds sent with each of these answers.
    #[serde(default)]
    pub retry_after: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayFault {
    pub device: String,
    /// Reported down (`true`) or up again (`false`).
    #[serde(default)]
    pub down: Option<bool>,
    /// Up, but answering every coil write with an exception (`true`), or no longer (`false`).
    #[serde(default)]
    pub refuses: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mode {
    #[serde(default)]
    pub lockdown: Option<bool>,
    #[serde(default)]
    pub emergency: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContactDef {
    pub door: String,
    pub open: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DoorRef {
    pub door: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectResponse {
    #[serde(default)]
    pub status: Option<u16>,
    /// A partial match: every key given must be there with this value.
    #[serde(default)]
    pub body: Option<toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectEvent {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub data: Option<toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectWebhook {
    pub partner: String,
    pub event: String,
    #[serde(default)]
    pub attempt: Option<u32>,
    /// When it was sent ("+61s" or RFC 3339).
    #[serde(default)]
    pub at: Option<String>,
    /// Partial match on the body's `data`.
    #[serde(default)]
    pub data: Option<toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectRelay {
    pub door: String,
    pub on: bool,
    #[serde(default)]
    pub at: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectReader {
    pub reader: String,
    /// Partial match on the command's JSON (`action`, `granted`, `reason`, ...).
    pub command: toml::Value,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectSession {
    pub session: String,
    pub state: String,
    #[serde(default)]
    pub fail_reason: Option<String>,
}

/// TOML → JSON (for bodies and partial matches).
pub fn json(v: &toml::Value) -> Value {
    match v {
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(i) => Value::from(*i),
        toml::Value::Float(f) => Value::from(*f),
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(a) => Value::Array(a.iter().map(json).collect()),
        toml::Value::Table(t) => {
            Value::Object(t.iter().map(|(k, v)| (k.clone(), json(v))).collect())
        }
    }
}

/// Reads and checks a scenario file; the error names the file and the key.
pub fn load(path: &Path) -> Result<Scenario, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

pub fn parse(text: &str) -> Result<Scenario, String> {
    let value: toml::Table = text.parse().map_err(|e: toml::de::Error| e.to_string())?;
    let s: Scenario = serde_path_to_error::deserialize(toml::Value::Table(value))
        .map_err(|e| format!("{}: {}", e.path(), e.inner()))?;
    if s.site.is_some() && s.site_file.is_some() {
        return Err("site and site_file: give one, not both".into());
    }
    // The clock is virtual: a start relative to the wall clock would make runs differ.
    chrono::DateTime::parse_from_rfc3339(&s.start).map_err(|e| {
        format!(
            "start: {:?} must be an RFC 3339 instant (e.g. \"2026-03-02T09:00:00+05:00\"): {e}",
            s.start
        )
    })?;
    if let Some(ttl) = &s.settings.ttl {
        check_duration(ttl).map_err(|e| format!("settings.ttl: {e}"))?;
    }
    for (key, v) in [
        ("threshold", s.settings.threshold.map(f64::from)),
        ("min_quality", s.settings.min_quality),
    ] {
        if let Some(v) = v
            && !(0.0..=1.0).contains(&v)
        {
            return Err(format!("settings.{key}: {v} is outside 0–1"));
        }
    }
    if s.steps.is_empty() {
        return Err("steps: a scenario needs at least one step".into());
    }
    let start = chrono::DateTime::parse_from_rfc3339(&s.start)
        .map_err(|e| format!("start: {e}"))?
        .with_timezone(&chrono::Utc);
    let mut previous: Option<(usize, chrono::DateTime<chrono::Utc>)> = None;
    let at = |key: String, text: &str| {
        crate::replay::runner::instant(start, text).map_err(|e| format!("{key}: {e}"))
    };
    let known = |kind: &str| crate::core::event::KNOWN_TYPES.contains(&kind);
    for (i, step) in s.steps.iter().enumerate() {
        if let Some(text) = &step.at {
            let t = at(format!("steps[{i}].at"), text)?;
            if t < start {
                return Err(format!(
                    "steps[{i}].at: {text:?} is before the scenario's start ({})",
                    s.start
                ));
            }
            if let Some((k, p)) = previous
                && t < p
            {
                return Err(format!(
                    "steps[{i}].at: {text:?} is before steps[{k}].at (steps run in time order)"
                ));
            }
            previous = Some((i, t));
        }
        for (j, w) in step.expect_webhooks.iter().enumerate() {
            if let Some(text) = &w.at {
                at(format!("steps[{i}].expect_webhooks[{j}].at"), text)?;
            }
            if let Some(n) = w.attempt
                && !(1..=crate::core::webhook::MAX_ATTEMPTS).contains(&n)
            {
                return Err(format!(
                    "steps[{i}].expect_webhooks[{j}].attempt: {n} is no attempt (they are 1–{})",
                    crate::core::webhook::MAX_ATTEMPTS
                ));
            }
        }
        for (j, r) in step.expect_relay.iter().enumerate() {
            if let Some(text) = &r.at {
                at(format!("steps[{i}].expect_relay[{j}].at"), text)?;
            }
        }
        if let Some(c) = &step.capture
            && !(0.0..=1.0).contains(&c.quality)
        {
            return Err(format!(
                "steps[{i}].capture.quality: {} is outside 0–1",
                c.quality
            ));
        }
        if let Some(m) = &step.mode
            && m.lockdown.is_none()
            && m.emergency.is_none()
        {
            return Err(format!(
                "steps[{i}].mode: give `lockdown` or `emergency` (an empty mode changes nothing)"
            ));
        }
        if let Some(e) = &step.expect {
            if step.api.is_none() {
                return Err(format!(
                    "steps[{i}].expect: needs an `api` call in the same step"
                ));
            }
            if e.status.is_none() && e.body.is_none() {
                return Err(format!(
                    "steps[{i}].expect: give `status` or `body` (an empty expectation can \
                     never fail)"
                ));
            }
        }
        for (j, e) in step.expect_events.iter().enumerate() {
            if !known(&e.kind) {
                return Err(format!(
                    "steps[{i}].expect_events[{j}].type: unknown event type {:?}",
                    e.kind
                ));
            }
        }
        for (j, kind) in step.expect_no_events.iter().enumerate() {
            if !known(kind) {
                return Err(format!(
                    "steps[{i}].expect_no_events[{j}]: unknown event type {kind:?} (it could \
                     never be recorded)"
                ));
            }
        }
    }
    if !s.steps.iter().any(Step::expects) {
        return Err(
            "steps: no step expects anything (a scenario without an expectation can \
                    never fail): give one of expect, expect_events, expect_no_events, \
                    expect_webhooks, expect_webhook_count, expect_relay, expect_reader, \
                    expect_session"
                .into(),
        );
    }
    Ok(s)
}

/// A duration the config accepts: humantime, above zero, at most
/// [`crate::config::MAX_DURATION`].
fn check_duration(s: &str) -> Result<(), String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))?;
    if d.is_zero() {
        return Err("duration must be greater than zero".into());
    }
    if d > crate::config::MAX_DURATION {
        return Err(format!("duration {s:?} is too long (at most 100 years)"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "name = \"x\"\nstart = \"2026-03-02T09:00:00+05:00\"\n";

    fn err(body: &str) -> String {
        parse(&format!("{HEAD}{body}")).map(|_| ()).unwrap_err()
    }

    /// `expect = {}` checks nothing: a parse error naming the step.
    #[test]
    fn an_empty_expect_is_an_error() {
        let e = err(
            "[[steps]]\nat = \"+1s\"\n[[steps]]\napi = { method = \"GET\", path = \"/healthz\" }\nexpect = {}\n",
        );
        assert!(
            e.contains("steps[1].expect") && e.contains("status") && e.contains("body"),
            "{e}"
        );
        parse(&format!(
            "{HEAD}[[steps]]\napi = {{ method = \"GET\", path = \"/healthz\" }}\nexpect = {{ body = {{ a = 1 }} }}\n"
        ))
        .unwrap();
    }

    /// A misspelled type in `expect_no_events` could never be recorded (the check always
    /// passed): a parse error naming the step and the entry; likewise `expect_events[].type`.
    #[test]
    fn unknown_event_types_are_errors() {
        let e = err("[[steps]]\nexpect_no_events = [\"SessionFailed\", \"SessionCreatd\"]\n");
        assert!(
            e.contains("steps[0].expect_no_events[1]") && e.contains("SessionCreatd"),
            "{e}"
        );
        let e = err(
            "[[steps]]\n[[steps]]\nexpect_events = [{ type = \"SessionCreated\" }, { type = \"DoorDecidd\" }]\n",
        );
        assert!(
            e.contains("steps[1].expect_events[1].type") && e.contains("DoorDecidd"),
            "{e}"
        );
        parse(&format!(
            "{HEAD}[[steps]]\nexpect_events = [{{ type = \"DoorDecided\" }}]\nexpect_no_events = [\"SessionCreated\"]\n"
        ))
        .unwrap();
    }

    /// `settings.ttl` is checked as the config checks it (a huge one overflowed in the core).
    #[test]
    fn settings_ttl_is_checked() {
        for (ttl, what) in [
            ("300000y", "100 years"),
            ("1000000000y", "100 years"),
            ("soon", "invalid duration"),
            ("0s", "greater than zero"),
        ] {
            let e = err(&format!("settings = {{ ttl = \"{ttl}\" }}\n{CHECK}"));
            assert!(e.contains("settings.ttl") && e.contains(what), "{ttl}: {e}");
        }
        parse(&format!("{HEAD}settings = {{ ttl = \"100y\" }}\n{CHECK}")).unwrap();
    }

    /// A step expecting something, for tests about other keys.
    const CHECK: &str = "[[steps]]\nexpect_no_events = [\"SessionFailed\"]\n";

    /// What could never fail, or never be seen, is refused when the file is read, by key: no
    /// step, no expectation in any step, an empty `mode`, a quality or threshold outside 0–1,
    /// a webhook attempt the schedule never makes. Steps out of time order (or before the
    /// start) and a bad expected `at` name their step and key (they were runtime errors
    /// naming "step N" only, or "before the previous step" for a step before the start).
    #[test]
    fn what_could_never_fail_is_refused_by_key() {
        for (body, want) in [
            ("steps = []\n", "steps: a scenario needs at least one step"),
            (
                "[[steps]]\nat = \"+1s\"\n[[steps]]\nmode = { lockdown = true }\n",
                "steps: no step expects anything",
            ),
            (
                "[[steps]]\nmode = {}\n",
                "steps[0].mode: give `lockdown` or `emergency`",
            ),
            (
                "[[steps]]\ncapture = { reader = \"r\", palm = \"p\", quality = 7.5 }\n",
                "steps[0].capture.quality: 7.5 is outside 0–1",
            ),
            (
                "settings = { threshold = 2.5 }\n",
                "settings.threshold: 2.5 is outside 0–1",
            ),
            (
                "[[steps]]\nexpect_webhooks = [{ partner = \"a\", event = \"ping\", attempt = 9 }]\n",
                "steps[0].expect_webhooks[0].attempt: 9 is no attempt (they are 1–5)",
            ),
            (
                "[[steps]]\nexpect_webhooks = [{ partner = \"a\", event = \"ping\", at = \"yesterday\" }]\n",
                "steps[0].expect_webhooks[0].at: \"yesterday\" is neither",
            ),
            (
                "[[steps]]\nat = \"+10s\"\n[[steps]]\nat = \"+5s\"\n",
                "steps[1].at: \"+5s\" is before steps[0].at",
            ),
            (
                "[[steps]]\nat = \"2026-03-02T03:00:00Z\"\n",
                "steps[0].at: \"2026-03-02T03:00:00Z\" is before the scenario's start",
            ),
        ] {
            let text = if body.starts_with("steps = []") {
                format!("{HEAD}{body}")
            } else {
                format!("{HEAD}{body}{CHECK}")
            };
            let text = if body.starts_with("[[steps]]\nat = \"+1s\"") {
                format!("{HEAD}{body}")
            } else {
                text
            };
            let e = parse(&text).map(|_| ()).unwrap_err();
            assert!(e.starts_with(want), "{body}: {e}");
        }
        // The same keys in range parse.
        parse(&format!(
            "{HEAD}settings = {{ threshold = 0.9 }}\n[[steps]]\nat = \"+5s\"\nmode = {{ emergency = false }}\n\
             capture = {{ reader = \"r\", palm = \"p\", quality = 1.0 }}\n\
             [[steps]]\nat = \"2026-03-02T04:00:10Z\"\n\
             expect_webhooks = [{{ partner = \"a\", event = \"ping\", attempt = 5, at = \"+1m\" }}]\n"
        ))
        .unwrap();
    }

    /// `load` puts the file's name before the step.
    #[test]
    fn load_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("typo.toml");
        std::fs::write(
            &f,
            format!("{HEAD}[[steps]]\nexpect_no_events = [\"SessionCreatd\"]\n"),
        )
        .unwrap();
        let e = load(&f).map(|_| ()).unwrap_err();
        assert!(
            e.contains("typo.toml") && e.contains("steps[0].expect_no_events[0]"),
            "{e}"
        );
    }
}
