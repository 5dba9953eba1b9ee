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
    pub down: bool,
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
    for (i, step) in s.steps.iter().enumerate() {
        if step.expect.is_some() && step.api.is_none() {
            return Err(format!(
                "steps[{i}].expect: needs an `api` call in the same step"
            ));
        }
    }
    Ok(s)
}
