//! Layered configuration: embedded defaults → file → `PALMGATE_*` environment, validated into
//! typed values.
//!
//! Invariant: a config that reaches the server is whole and valid; every error names the key
//! and where its value came from (the defaults, the file, or an environment variable).

use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::{Table, Value};

/// The commented defaults, compiled in.
pub const DEFAULTS: &str = include_str!("../config/palmgate.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("config file {path} is not valid TOML: {reason}")]
    Syntax { path: String, reason: String },
    #[error("config key `{key}` (from {source_name}): {reason}")]
    Key {
        key: String,
        source_name: String,
        reason: String,
    },
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Site policy file; empty: none.
    pub site: PathBuf,
    pub http: HttpConfig,
    pub store: StoreConfig,
    pub secrets: SecretsConfig,
    pub sessions: SessionsConfig,
    pub mqtt: MqttConfig,
    pub matching: MatchingConfig,
    pub rate_limit: RateLimitConfig,
    pub webhooks: WebhooksConfig,
    pub admin: AdminConfig,
    pub log: LogConfig,
    pub upstream: UpstreamConfig,
    /// Where each key's value came from (`the embedded defaults`, the file's path,
    /// `environment variable PALMGATE_…`); not a key.
    #[serde(skip)]
    pub sources: BTreeMap<String, String>,
    /// `PALMGATE_*` environment variables that set no key (start-up warns about each); not a
    /// key.
    #[serde(skip)]
    pub unknown_env: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    pub public_url: String,
    pub tls: Option<TlsConfig>,
    /// How long a client may take to send a request's head (also how long a kept-alive
    /// connection may sit idle, and the TLS handshake's limit).
    #[serde(deserialize_with = "de_duration")]
    pub header_timeout: Duration,
    /// How long a client may take to send a request's body, counted from its head.
    #[serde(deserialize_with = "de_duration")]
    pub body_timeout: Duration,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    pub path: PathBuf,
    pub url: Option<String>,
    /// Events between two state snapshots (written in the background); 0: never write one.
    pub snapshot_every: u64,
    /// No longer used: accepted so existing files still load. (The snapshot thread kept a
    /// second state of its own; it now encodes a copy-on-write copy of the live one.)
    pub snapshot_keep_state: bool,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsConfig {
    pub key_file: PathBuf,
    pub key_store: PathBuf,
    #[serde(default)]
    pub master_key: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionsConfig {
    #[serde(deserialize_with = "de_duration")]
    pub ttl: Duration,
    /// How long an ended session stays readable (`GET /v1/sessions/{id}`, its page's 410).
    #[serde(deserialize_with = "de_duration")]
    pub retention: Duration,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    pub topic_prefix: String,
    /// Language of the messages readers display after a door decision (en, kk, ru).
    pub reader_language: String,
    pub url: Option<String>,
    /// PEM file of the CA(s) that signed an `mqtts://` broker's certificate (a private CA);
    /// unset: the system's trusted roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    pub embedded: EmbeddedMqtt,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedMqtt {
    pub listen: SocketAddr,
    /// Let the built-in broker (no TLS, no topic rules) listen beyond loopback: for a closed
    /// lab network only. Readers on a real LAN go through Mosquitto (deploy/README.md).
    #[serde(default)]
    pub allow_network: bool,
    /// The password every client of the built-in broker must give (any user name); empty:
    /// none.
    #[serde(default)]
    pub password: String,
}

impl EmbeddedMqtt {
    /// The URL of the built-in broker on `addr` for a client named `user`: with the password
    /// (percent-encoded) when one is set.
    pub fn url(&self, addr: SocketAddr, user: &str) -> String {
        if self.password.is_empty() {
            return format!("mqtt://{addr}");
        }
        use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
        format!(
            "mqtt://{}:{}@{addr}",
            utf8_percent_encode(user, NON_ALPHANUMERIC),
            utf8_percent_encode(&self.password, NON_ALPHANUMERIC)
        )
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchingConfig {
    pub dim: usize,
    pub threshold: f32,
    pub min_quality: f64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    pub per_minute: u32,
    pub unauthenticated_per_minute: u32,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhooksConfig {
    pub allow_networks: Vec<ipnet::IpNet>,
    /// How long a delivered or failed delivery stays listed (and can be redelivered).
    #[serde(deserialize_with = "de_duration")]
    pub retention: Duration,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    pub token: String,
    pub token_sha256: String,
    /// SHA-256 (hex) of a read-only token for a monitoring system: the log's head
    /// (`GET /admin/v1/head`), the site mode and the operator's series of `/metrics`, nothing
    /// that changes the site or names a person. Empty: none.
    pub monitor_token_sha256: String,
}

/// `[upstream]`: palmgate as a partner of a remote Pass API (all empty: off).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub base_url: String,
    pub api_key: String,
    pub webhook_secret: String,
    #[serde(deserialize_with = "de_duration")]
    pub timeout: Duration,
}

impl UpstreamConfig {
    /// Upstream mode is on.
    pub fn enabled(&self) -> bool {
        !self.base_url.is_empty()
    }

    /// `Err((key, reason))` for the first invalid key. `source` names where a key's value came
    /// from: a key that is missing only because another one is set says where that one was set
    /// (the missing key's own source is the defaults, which tells the operator nothing).
    fn check(&self, source: &dyn Fn(&str) -> String) -> Result<(), (&'static str, String)> {
        if !self.enabled() {
            let set = [
                ("upstream.api_key", &self.api_key),
                ("upstream.webhook_secret", &self.webhook_secret),
            ]
            .into_iter()
            .find(|(_, v)| !v.is_empty());
            if let Some((set, _)) = set {
                return Err((
                    "upstream.base_url",
                    format!("is required when `{set}` (from {}) is set", source(set)),
                ));
            }
            return Ok(());
        }
        let url = reqwest::Url::parse(&self.base_url).ok().filter(|u| {
            matches!(u.scheme(), "http" | "https")
                && u.host_str().is_some()
                && u.query().is_none()
                && u.fragment().is_none()
        });
        if url.is_none() {
            return Err((
                "upstream.base_url",
                format!("{:?} is not an http(s) URL", self.base_url),
            ));
        }
        for (key, v) in [
            ("upstream.api_key", &self.api_key),
            ("upstream.webhook_secret", &self.webhook_secret),
        ] {
            if v.trim().is_empty() {
                return Err((
                    key,
                    format!(
                        "is required when `upstream.base_url` (from {}) is set",
                        source("upstream.base_url")
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// The longest duration any key accepts: 100 years (humantime's year, 365.25 days). Every
/// duration is added to instants (`now + ttl`, a deadline); this bound keeps those sums far
/// inside what `chrono` can represent.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 31_557_600);

fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    let dur = humantime::parse_duration(&s).map_err(|e| {
        serde::de::Error::custom(format!(
            "invalid duration {s:?} ({e}); use e.g. \"15m\" or \"2s\""
        ))
    })?;
    if dur.is_zero() {
        return Err(serde::de::Error::custom(
            "duration must be greater than zero",
        ));
    }
    if dur > MAX_DURATION || chrono::Duration::from_std(dur).is_err() {
        return Err(serde::de::Error::custom(format!(
            "duration {s:?} is too long (at most 100 years)"
        )));
    }
    Ok(dur)
}

impl Config {
    /// Defaults only (plus environment): what `palmgate` runs with when no file is given.
    pub fn defaults() -> Config {
        Self::load(None, &[]).expect("embedded defaults are valid")
    }

    /// Loads defaults, then `file` (if any), then the `PALMGATE_*` variables in `env`.
    pub fn load(file: Option<&Path>, env: &[(String, String)]) -> Result<Config, ConfigError> {
        let mut merged: Table =
            DEFAULTS
                .parse()
                .map_err(|e: toml::de::Error| ConfigError::Syntax {
                    path: "<embedded defaults>".into(),
                    reason: e.to_string(),
                })?;
        let mut sources: BTreeMap<String, String> = BTreeMap::new();
        leaf_keys(&merged, "", &mut |k| {
            sources.insert(k, "the embedded defaults".into());
        });
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
            let table: Table = text
                .parse()
                .map_err(|e: toml::de::Error| ConfigError::Syntax {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
            let name = path.display().to_string();
            leaf_keys(&table, "", &mut |k| {
                sources.insert(k, name.clone());
            });
            merge(&mut merged, table);
        }
        apply_env(&mut merged, env, &mut sources)?;
        let mut config: Config = serde_path_to_error::deserialize(Value::Table(merged.clone()))
            .map_err(|e| {
                let mut key = e.path().to_string();
                let mut item = array_item(&merged, &key);
                // toml's message ends with "\nin `key`": the key is named before it already.
                let full = e.into_inner().to_string();
                let mut reason = full
                    .split("\nin `")
                    .next()
                    .unwrap_or(&full)
                    .trim_end()
                    .to_string();
                // A section given as something else (`http = 5`, or `[[http]]`, an array of
                // tables, which serde would otherwise read as the struct's fields in order).
                if let Some(section) = misplaced_section(&merged, &key) {
                    reason = format!(
                        "is a section: write it as [{section}] with its keys under it, not as {}",
                        toml_kind(lookup(&merged, &section))
                    );
                    key = section;
                    item = None;
                }
                // `webhooks.allow_networks[0]`: the source is the array's (arrays are leaves).
                let base = key.split('[').next().unwrap_or(&key);
                let source_name = key_source(&sources, base)
                    .or_else(|| file.map(|p| p.display().to_string()))
                    .unwrap_or_else(|| "the embedded defaults".into());
                ConfigError::Key {
                    key,
                    source_name,
                    reason: match item {
                        Some(item) => format!("{item}: {reason}"),
                        None => reason,
                    },
                }
            })?;
        config.validate(&sources)?;
        config.sources = sources;
        config.unknown_env = unknown_env_vars(env);
        Ok(config)
    }

    /// Where `key`'s value came from, as errors name it.
    pub fn source_of(&self, key: &str) -> String {
        self.sources
            .get(key)
            .cloned()
            .unwrap_or_else(|| "the embedded defaults".into())
    }

    /// Loads with the process environment.
    pub fn load_with_process_env(file: Option<&Path>) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::load(file, &env)
    }

    fn validate(&self, sources: &BTreeMap<String, String>) -> Result<(), ConfigError> {
        let fail = |key: &str, reason: String| ConfigError::Key {
            key: key.into(),
            source_name: sources
                .get(key)
                .cloned()
                .unwrap_or_else(|| "the embedded defaults".into()),
            reason,
        };
        if !self.http.public_url.is_empty() {
            let ok = (self.http.public_url.starts_with("http://")
                || self.http.public_url.starts_with("https://"))
                && reqwest::Url::parse(&self.http.public_url).is_ok();
            if !ok {
                return Err(fail(
                    "http.public_url",
                    format!("{:?} is not an http(s) URL", self.http.public_url),
                ));
            }
        }
        // The schemes of KurrentDB connection strings (`+discover`: a cluster found by DNS).
        if let Some(url) = &self.store.url
            && ![
                "esdb://",
                "esdb+discover://",
                "kurrentdb://",
                "kurrentdb+discover://",
                "kdb://",
                "kdb+discover://",
            ]
            .iter()
            .any(|scheme| url.starts_with(scheme))
        {
            return Err(fail(
                "store.url",
                format!(
                    "{:?} is not a KurrentDB URL (esdb://, kurrentdb://, +discover)",
                    redact_url(url)
                ),
            ));
        }
        // An empty path would fail later, far from its key (or open a file named "").
        let tls_paths = self.http.tls.iter().flat_map(|t| {
            [
                ("http.tls.cert", Some(&t.cert)),
                ("http.tls.key", Some(&t.key)),
            ]
        });
        for (key, path) in [
            (
                "store.path",
                self.store.url.is_none().then_some(&self.store.path),
            ),
            (
                "secrets.key_file",
                self.secrets
                    .master_key
                    .is_none()
                    .then_some(&self.secrets.key_file),
            ),
            ("secrets.key_store", Some(&self.secrets.key_store)),
            ("mqtt.ca_file", self.mqtt.ca_file.as_ref()),
        ]
        .into_iter()
        .chain(tls_paths)
        {
            if path.is_some_and(|p| p.as_os_str().is_empty()) {
                return Err(fail(key, "must not be empty (give a file path)".into()));
            }
        }
        if self.mqtt.url.is_none()
            && !self.mqtt.embedded.listen.ip().is_loopback()
            && !self.mqtt.embedded.allow_network
        {
            return Err(fail(
                "mqtt.embedded.listen",
                format!(
                    "{} is not a loopback address: the built-in broker has no authentication and \
                     no TLS, so anyone on that network could act as any reader and read every \
                     reader's commands; keep it on 127.0.0.1 and give readers on a network a \
                     Mosquitto with per-reader credentials (mqtt.url, deploy/README.md), or set \
                     mqtt.embedded.allow_network = true for a closed lab network",
                    self.mqtt.embedded.listen
                ),
            ));
        }
        if let Some(url) = &self.mqtt.url {
            if !url.starts_with("mqtt://") && !url.starts_with("mqtts://") {
                return Err(fail(
                    "mqtt.url",
                    format!("{:?} must start with mqtt:// or mqtts://", redact_url(url)),
                ));
            }
            // The parse the MQTT client makes, here: its error would otherwise come after
            // "listening", naming neither the key nor where it came from.
            match crate::mqtt::client::parse_url(url) {
                Err(e) => return Err(fail("mqtt.url", e.to_string())),
                Ok((host, _, _)) if host.is_empty() => {
                    return Err(fail(
                        "mqtt.url",
                        format!("{:?} names no broker host", redact_url(url)),
                    ));
                }
                Ok(_) => {}
            }
        }
        if let Some(tls) = &self.http.tls {
            for (key, path, what) in [
                ("http.tls.cert", &tls.cert, PemKind::Certificates),
                ("http.tls.key", &tls.key, PemKind::PrivateKey),
            ] {
                check_pem(path, what).map_err(|reason| ConfigError::Key {
                    key: key.into(),
                    source_name: sources
                        .get(key)
                        .or_else(|| sources.get("http.tls"))
                        .cloned()
                        .unwrap_or_else(|| "the embedded defaults".into()),
                    reason,
                })?;
            }
        }
        if let Some(path) = &self.mqtt.ca_file {
            check_pem(path, PemKind::Certificates)
                .map_err(|reason| fail("mqtt.ca_file", reason))?;
        }
        if self.mqtt.topic_prefix.is_empty() || self.mqtt.topic_prefix.contains(['#', '+']) {
            return Err(fail(
                "mqtt.topic_prefix",
                "must be non-empty and free of MQTT wildcards".into(),
            ));
        }
        if crate::core::Language::parse(&self.mqtt.reader_language).is_none() {
            return Err(fail("mqtt.reader_language", "must be en, kk or ru".into()));
        }
        if !(1..=4096).contains(&self.matching.dim) {
            return Err(fail(
                "matching.dim",
                format!("{} is outside 1..=4096", self.matching.dim),
            ));
        }
        if !(self.matching.threshold > 0.0 && self.matching.threshold <= 1.0) {
            return Err(fail("matching.threshold", "must be in (0, 1]".into()));
        }
        if !(0.0..=1.0).contains(&self.matching.min_quality) {
            return Err(fail("matching.min_quality", "must be in [0, 1]".into()));
        }
        if self.rate_limit.per_minute == 0 {
            return Err(fail("rate_limit.per_minute", "must be at least 1".into()));
        }
        if self.rate_limit.unauthenticated_per_minute == 0 {
            return Err(fail(
                "rate_limit.unauthenticated_per_minute",
                "must be at least 1".into(),
            ));
        }
        for (key, value) in [
            ("admin.token_sha256", &self.admin.token_sha256),
            (
                "admin.monitor_token_sha256",
                &self.admin.monitor_token_sha256,
            ),
        ] {
            if !value.is_empty() && (value.len() != 64 || hex::decode(value).is_err()) {
                return Err(fail(key, "must be 64 hex characters".into()));
            }
        }
        // The monitor token must not be the admin token: it would then open everything.
        let admin_hash = if self.admin.token_sha256.is_empty() {
            (!self.admin.token.is_empty()).then(|| {
                hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
                    self.admin.token.as_bytes(),
                ))
            })
        } else {
            Some(self.admin.token_sha256.to_lowercase())
        };
        if !self.admin.monitor_token_sha256.is_empty()
            && admin_hash.as_deref()
                == Some(self.admin.monitor_token_sha256.to_lowercase().as_str())
        {
            return Err(fail(
                "admin.monitor_token_sha256",
                "is the hash of the admin token: give the monitoring system a token of its own"
                    .into(),
            ));
        }
        // Both given: they must be the same token, or the hash silently wins and the token
        // (often from the environment, for the `partner` CLI) is refused with 401.
        if !self.admin.token.is_empty() && !self.admin.token_sha256.is_empty() {
            let hashed = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
                self.admin.token.as_bytes(),
            ));
            if hashed != self.admin.token_sha256.to_lowercase() {
                return Err(fail(
                    "admin.token",
                    format!(
                        "its SHA-256 differs from `admin.token_sha256` (from {}): the admin API \
                         would accept only the token admin.token_sha256 is the hash of. Give \
                         one of them, or both for the same token",
                        sources
                            .get("admin.token_sha256")
                            .map(String::as_str)
                            .unwrap_or("the embedded defaults")
                    ),
                ));
            }
        }
        let source = |key: &str| {
            sources
                .get(key)
                .cloned()
                .unwrap_or_else(|| "the embedded defaults".into())
        };
        self.upstream
            .check(&source)
            .map_err(|(key, reason)| fail(key, reason))?;
        if let Some(k) = &self.secrets.master_key
            && (k.len() != 64 || hex::decode(k).is_err())
        {
            return Err(fail(
                "secrets.master_key",
                "must be 64 hex characters".into(),
            ));
        }
        Ok(())
    }
}

/// What a PEM file named in the config must hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PemKind {
    /// At least one `CERTIFICATE` block.
    Certificates,
    /// A private key (PKCS#8, PKCS#1 or SEC1).
    PrivateKey,
}

/// Reads `path` and checks it holds `kind`; the error says which file and what is wrong.
pub fn check_pem(path: &Path, kind: PemKind) -> Result<(), String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let ok = match kind {
        PemKind::Certificates => CertificateDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .is_ok_and(|certs| !certs.is_empty()),
        PemKind::PrivateKey => PrivateKeyDer::from_pem_slice(&bytes).is_ok(),
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{} holds no PEM {}",
            path.display(),
            match kind {
                PemKind::Certificates => "certificate",
                PemKind::PrivateKey => "private key",
            }
        ))
    }
}

/// Every dotted leaf key of `table` (tables recurse; arrays and inline values are leaves).
fn leaf_keys(table: &Table, prefix: &str, f: &mut dyn FnMut(String)) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            Value::Table(t) if !t.is_empty() && !is_inline_leaf(&key) => leaf_keys(t, &key, f),
            _ => f(key),
        }
    }
}

/// Tables that are values, not sections.
fn is_inline_leaf(key: &str) -> bool {
    key == "http.tls"
}

fn merge(into: &mut Table, from: Table) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(Value::Table(a)), Value::Table(b)) => merge(a, b),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

/// `url` fit for a message or a log: a password in it (`scheme://user:password@host`) is
/// replaced by `***`, also when the URL does not parse (everything between `://` and the last
/// `@` before the path is then hidden).
pub fn redact_url(url: &str) -> String {
    if let Ok(mut u) = reqwest::Url::parse(url) {
        if u.password().is_none() && u.has_host() {
            return url.to_string();
        }
        if u.set_password(Some("***")).is_ok() {
            return u.to_string();
        }
    }
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return match url.rfind('@') {
            Some(at) => format!("***{}", &url[at..]),
            None => url.to_string(),
        };
    };
    let end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| start + i);
    match url[start..end].rfind('@') {
        Some(at) => format!("{}***{}", &url[..start], &url[start + at..]),
        None => url.to_string(),
    }
}

/// Environment variable name of a dotted key: `http.public_url` → `PALMGATE_HTTP_PUBLIC_URL`.
pub fn env_name(key: &str) -> String {
    format!("PALMGATE_{}", key.replace('.', "_").to_uppercase())
}

/// Keys that may be set from the environment although the defaults do not list them.
const OPTIONAL_KEYS: &[&str] = &[
    "http.tls.cert",
    "http.tls.key",
    "store.url",
    "mqtt.url",
    "mqtt.ca_file",
    "secrets.master_key",
];

/// `PALMGATE_*` variables read by something other than the config (tests, benches, CI,
/// `deploy/compose.yaml`, the dashboard's assets): not reported as unknown.
const NON_CONFIG_VARS: &[&str] = &[
    "PALMGATE_PEERS",
    "PALMGATE_KURRENTDB_URL",
    "PALMGATE_DASH_ASSETS",
    "PALMGATE_MQTT_PASSWORD",
    "PALMGATE_PUBLIC_URL",
    "PALMGATE_URL",
    "PALMGATE_API_KEY",
    "PALMGATE_API_KEYS",
    "PALMGATE_CRASH_SEED",
    "PALMGATE_CRASH_KILLS",
    "PALMGATE_SCHEMATHESIS_VERBOSE",
    "PALMGATE_DEB_PROFILE",
];

/// The `PALMGATE_*` variables of `env` that set no config key (a typo such as
/// `PALMGATE_HTTP_PUBLICURL`), sorted, without the [`NON_CONFIG_VARS`].
pub fn unknown_env_vars(env: &[(String, String)]) -> Vec<String> {
    let mut known: std::collections::BTreeSet<String> = NON_CONFIG_VARS
        .iter()
        .map(|v| v.to_string())
        .chain(OPTIONAL_KEYS.iter().map(|k| env_name(k)))
        .collect();
    if let Ok(defaults) = DEFAULTS.parse::<Table>() {
        leaf_keys(&defaults, "", &mut |k| {
            known.insert(env_name(&k));
        });
    }
    let mut unknown: Vec<String> = env
        .iter()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with("PALMGATE_") && !known.contains(*k))
        .cloned()
        .collect();
    unknown.sort();
    unknown.dedup();
    unknown
}

fn apply_env(
    merged: &mut Table,
    env: &[(String, String)],
    sources: &mut BTreeMap<String, String>,
) -> Result<(), ConfigError> {
    let mut keys: Vec<String> = Vec::new();
    leaf_keys(merged, "", &mut |k| keys.push(k));
    keys.extend(OPTIONAL_KEYS.iter().map(|k| k.to_string()));
    for key in keys {
        let name = env_name(&key);
        let Some((_, raw)) = env.iter().find(|(k, _)| *k == name) else {
            continue;
        };
        let existing = lookup(merged, &key);
        let value = match existing {
            Some(Value::String(_)) | None => Value::String(raw.clone()),
            Some(Value::Array(defaults)) if !raw.trim_start().starts_with('[') => {
                env_list(raw, defaults)
            }
            Some(_) => {
                // Numbers, booleans, arrays: read the variable as a TOML value.
                let doc = format!("v = {raw}");
                let t: Table = doc.parse().map_err(|_| ConfigError::Key {
                    key: key.clone(),
                    source_name: format!("environment variable {name}"),
                    reason: format!("{raw:?} is not a valid value"),
                })?;
                t.get("v").cloned().unwrap_or(Value::String(raw.clone()))
            }
        };
        let env_source = format!("environment variable {name}");
        set(merged, &key, value).map_err(|parent| ConfigError::Key {
            source_name: sources
                .get(&parent)
                .cloned()
                .unwrap_or_else(|| "the embedded defaults".into()),
            reason: format!("must be a table ({env_source} sets `{key}` inside it)"),
            key: parent,
        })?;
        sources.insert(key, env_source);
    }
    Ok(())
}

/// An array-valued key's environment variable written as a comma-separated list
/// (`10.0.0.0/8, 192.168.0.0/16`) rather than TOML array syntax: the items, trimmed, with
/// empty ones dropped (an empty variable is an empty array). Items are strings, unless the
/// array the variable replaces holds other values (numbers, booleans): then each item is read
/// as a TOML value, left a string when it is not one (the key's type then names the problem).
fn env_list(raw: &str, replaced: &[Value]) -> Value {
    let typed = replaced.first().is_some_and(|v| !v.is_str());
    Value::Array(
        raw.split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(|item| {
                let parsed = typed
                    .then(|| format!("v = {item}").parse::<Table>().ok())
                    .flatten()
                    .and_then(|mut t| t.remove("v"));
                parsed.unwrap_or_else(|| Value::String(item.to_string()))
            })
            .collect(),
    )
}

/// `item 1 ("nope")`: the array item a deserialization error at `key` (`a.b[1]`) is about.
fn array_item(table: &Table, key: &str) -> Option<String> {
    let (base, rest) = key.split_once('[')?;
    let n: usize = rest.split(']').next()?.parse().ok()?;
    let item = lookup(table, base)?.as_array()?.get(n)?;
    let shown = match item {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    };
    Some(format!("item {n} ({shown})"))
}

/// Where the value at `base` came from: its own leaf's source, else the source of a leaf
/// above it (an array is a leaf: `webhooks.allow_networks[0]`), else that of a leaf under it
/// set by the file or the environment (a later layer that replaced the section), else that of
/// one from the defaults.
fn key_source(sources: &BTreeMap<String, String>, base: &str) -> Option<String> {
    if let Some(s) = sources.get(base) {
        return Some(s.clone());
    }
    if let Some((_, s)) = sources
        .iter()
        .rev()
        .find(|(k, _)| base.starts_with(&format!("{k}.")))
    {
        return Some(s.clone());
    }
    let under = format!("{base}.");
    let mut children = sources.iter().filter(|(k, _)| k.starts_with(&under));
    let first = children.clone().next().map(|(_, s)| s.clone());
    children
        .find(|(_, s)| s.as_str() != "the embedded defaults")
        .map(|(_, s)| s.clone())
        .or(first)
}

/// The dotted key of a section of the defaults that `key` is in (or is) whose value in
/// `merged` is not a table, if any.
fn misplaced_section(merged: &Table, key: &str) -> Option<String> {
    let defaults: Table = DEFAULTS.parse().ok()?;
    let base = key.split('[').next().unwrap_or(key);
    let parts: Vec<&str> = base.split('.').collect();
    (1..=parts.len()).map(|n| parts[..n].join(".")).find(|k| {
        lookup(&defaults, k).is_some_and(Value::is_table)
            && lookup(merged, k).is_some_and(|v| !v.is_table())
    })
}

/// What a TOML value is, as the error shows it.
fn toml_kind(v: Option<&Value>) -> String {
    match v {
        Some(Value::Array(a)) if a.iter().all(Value::is_table) && !a.is_empty() => {
            "an array of tables ([[...]])".into()
        }
        Some(v) => format!("{} {v}", v.type_str()),
        None => "something else".into(),
    }
}

fn lookup<'a>(table: &'a Table, key: &str) -> Option<&'a Value> {
    let mut parts = key.split('.').peekable();
    let mut t = table;
    while let Some(p) = parts.next() {
        let v = t.get(p)?;
        if parts.peek().is_none() {
            return Some(v);
        }
        t = v.as_table()?;
    }
    None
}

/// Sets the dotted `key`, creating missing sections; `Err(parent)`: the dotted key of a
/// section on the way that holds a value other than a table (`http = 5`).
fn set(table: &mut Table, key: &str, value: Value) -> Result<(), String> {
    let parts: Vec<&str> = key.split('.').collect();
    let mut t = table;
    for (n, p) in parts[..parts.len() - 1].iter().enumerate() {
        t = t
            .entry(p.to_string())
            .or_insert_with(|| Value::Table(Table::new()))
            .as_table_mut()
            .ok_or_else(|| parts[..=n].join("."))?;
    }
    t.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_in_messages_carry_no_password() {
        let r = redact_url("mqtt://palmgate:s3cret@127.0.0.1:1883");
        assert_eq!(r, "mqtt://palmgate:***@127.0.0.1:1883");
        assert_eq!(redact_url("mqtt://127.0.0.1:1883"), "mqtt://127.0.0.1:1883");
        assert_eq!(redact_url("mqtt://reader@host"), "mqtt://reader@host");
        // Unparseable: everything before the host's `@` hidden.
        for bad in [
            "mqtt://palmgate:s3 cret@host:99999",
            "ftp//u:s3cret@host",
            "u:s3cret@host",
            "esdb://admin:s3cret@node1:2113,node2:2113?tls=false",
        ] {
            let r = redact_url(bad);
            assert!(
                !r.contains("s3cret") && !r.contains("s3 cret"),
                "{bad} -> {r}"
            );
        }
        let e = Config::load(
            None,
            &env(&[("PALMGATE_MQTT_URL", "tcp://palmgate:s3cret@host")]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("mqtt.url") && !e.contains("s3cret"), "{e}");
    }

    /// A section written as something else names the file it came from and says how to write
    /// it: `[[http]]` (an array of tables) was read by serde as the struct's fields in order
    /// ("item 0: invalid type: map, expected socket address") and blamed on the defaults.
    #[test]
    fn a_section_given_as_another_kind_is_named_with_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("bad.toml");
        let name = f.display().to_string();
        let load = |text: &str| {
            std::fs::write(&f, text).unwrap();
            Config::load(Some(&f), &env(&[])).unwrap_err().to_string()
        };
        assert_eq!(
            load("[[http]]\nlisten = \"127.0.0.1:0\"\n"),
            format!(
                "config key `http` (from {name}): is a section: write it as [http] with its keys \
                 under it, not as an array of tables ([[...]])"
            )
        );
        assert_eq!(
            load("http = 5\n"),
            format!(
                "config key `http` (from {name}): is a section: write it as [http] with its keys \
                 under it, not as integer 5"
            )
        );
        assert_eq!(
            load("[mqtt]\nembedded = \"yes\"\n"),
            format!(
                "config key `mqtt.embedded` (from {name}): is a section: write it as \
                 [mqtt.embedded] with its keys under it, not as string \"yes\""
            )
        );
        // A leaf of the wrong type keeps serde's message and its own source.
        let e = load("[http]\nlisten = 5\n");
        assert!(
            e.starts_with(&format!(
                "config key `http.listen` (from {name}): invalid type"
            )),
            "{e}"
        );
        // The environment is named when it is the layer that set the value.
        let e = Config::load(None, &env(&[("PALMGATE_HTTP_LISTEN", "nowhere")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`http.listen` (from environment variable PALMGATE_HTTP_LISTEN)"),
            "{e}"
        );
    }

    /// A key that is required because another one is set names where that one was set (the
    /// file, or the environment variable), not only the defaults the missing key came from.
    #[test]
    fn a_missing_upstream_key_names_where_the_key_requiring_it_was_set() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("up.toml");
        std::fs::write(&f, "[upstream]\nbase_url = \"https://x\"\n").unwrap();
        let name = f.display().to_string();
        let e = Config::load(Some(&f), &env(&[])).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "config key `upstream.api_key` (from the embedded defaults): is required when \
                 `upstream.base_url` (from {name}) is set"
            )
        );
        let e = Config::load(Some(&f), &env(&[("PALMGATE_UPSTREAM_API_KEY", "k")]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            format!(
                "config key `upstream.webhook_secret` (from the embedded defaults): is required \
                 when `upstream.base_url` (from {name}) is set"
            )
        );
        let e = Config::load(
            None,
            &env(&[
                ("PALMGATE_UPSTREAM_BASE_URL", "https://x"),
                ("PALMGATE_UPSTREAM_API_KEY", "k"),
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("`upstream.webhook_secret`")
                && e.contains("(from environment variable PALMGATE_UPSTREAM_BASE_URL)"),
            "{e}"
        );
        // The other way round: the key set without a base URL is named with its source.
        let e = Config::load(
            None,
            &env(&[("PALMGATE_UPSTREAM_WEBHOOK_SECRET", "whsec_x")]),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "config key `upstream.base_url` (from the embedded defaults): is required when \
             `upstream.webhook_secret` (from environment variable \
             PALMGATE_UPSTREAM_WEBHOOK_SECRET) is set"
        );
    }

    /// A token and a token_sha256 that disagree are refused, naming both keys and where each
    /// came from; before, the hash won silently and the token got 401.
    #[test]
    fn an_admin_token_and_a_different_token_sha256_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("adm.toml");
        let old = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"old"));
        std::fs::write(&f, format!("[admin]\ntoken_sha256 = \"{old}\"\n")).unwrap();
        let e = Config::load(Some(&f), &env(&[("PALMGATE_ADMIN_TOKEN", "new")]))
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`admin.token`")
                && e.contains("environment variable PALMGATE_ADMIN_TOKEN")
                && e.contains("`admin.token_sha256` (from ")
                && e.contains("adm.toml"),
            "{e}"
        );
        // The same token (the hash in upper case too): fine.
        for hash in [old.clone(), old.to_uppercase()] {
            std::fs::write(&f, format!("[admin]\ntoken_sha256 = \"{hash}\"\n")).unwrap();
            let c = Config::load(Some(&f), &env(&[("PALMGATE_ADMIN_TOKEN", "old")])).unwrap();
            assert_eq!(c.admin.token, "old");
        }
    }

    /// `mqtt.url` is parsed at load as the MQTT client parses it: an error names the key and
    /// its source, never the password.
    #[test]
    fn a_bad_mqtt_url_is_a_config_error() {
        for bad in [
            "mqtt://",
            "mqtt://host:99999",
            "mqtt://a b",
            "mqtts://palmgate:s3cret@host:99999",
        ] {
            let e = Config::load(None, &env(&[("PALMGATE_MQTT_URL", bad)]))
                .map(|_| ())
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("`mqtt.url`")
                    && e.contains("environment variable PALMGATE_MQTT_URL")
                    && !e.contains("s3cret"),
                "{bad}: {e}"
            );
        }
        for good in ["mqtt://127.0.0.1:1883", "mqtts://u:p@broker.example"] {
            assert!(Config::load(None, &env(&[("PALMGATE_MQTT_URL", good)])).is_ok());
        }
    }

    /// `PALMGATE_*` variables that set no key are listed (start-up warns about each), except
    /// those other tools read.
    #[test]
    fn unknown_palmgate_variables_are_listed() {
        let vars = env(&[
            ("PALMGATE_HTTP_PUBLICURL", "https://x"),
            ("PALMGATE_HTTP_PUBLIC_URL", "https://x"),
            ("PALMGATE_HTTP_TLS_CERT", "/c.pem"),
            ("PALMGATE_PEERS", "required"),
            ("PALMGATE_KURRENTDB_URL", "esdb://x"),
            ("PALMGATE_DASH_ASSETS", "src"),
            ("PALMGATE_SESSION_TTL", "1m"),
            ("HOME", "/root"),
        ]);
        assert_eq!(
            unknown_env_vars(&vars),
            ["PALMGATE_HTTP_PUBLICURL", "PALMGATE_SESSION_TTL"]
        );
        let c = Config::load(None, &env(&[("PALMGATE_HTTP_PUBLICURL", "https://x")])).unwrap();
        assert_eq!(c.unknown_env, ["PALMGATE_HTTP_PUBLICURL"]);
        assert_eq!(c.source_of("http.public_url"), "the embedded defaults");
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn defaults_load() {
        let c = Config::load(None, &[]).unwrap();
        assert_eq!(c.sessions.ttl, Duration::from_secs(900));
        assert_eq!(c.rate_limit.per_minute, 100);
    }

    #[test]
    fn env_overrides_file_and_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.toml");
        std::fs::write(
            &f,
            "[sessions]\nttl = \"2s\"\n[rate_limit]\nper_minute = 5\n",
        )
        .unwrap();
        let c = Config::load(
            Some(&f),
            &env(&[
                ("PALMGATE_RATE_LIMIT_PER_MINUTE", "7"),
                ("PALMGATE_ADMIN_TOKEN", "t0k"),
            ]),
        )
        .unwrap();
        assert_eq!(c.sessions.ttl, Duration::from_secs(2));
        assert_eq!(c.rate_limit.per_minute, 7);
        assert_eq!(c.admin.token, "t0k");
    }

    /// `http.tls` can come from the environment alone (SPEC 10: every key has an override),
    /// and the environment overrides what the file says; half a pair is an error naming the key.
    #[test]
    fn tls_paths_come_from_the_environment() {
        let c = Config::load(
            None,
            &env(&[
                ("PALMGATE_HTTP_TLS_CERT", "/etc/pg/cert.pem"),
                ("PALMGATE_HTTP_TLS_KEY", "/etc/pg/key.pem"),
            ]),
        );
        let e = c.map(|_| ()).unwrap_err().to_string();
        // The paths do not exist: the error names the env-provided key, so they were read.
        assert!(
            e.contains("http.tls.cert") && e.contains("PALMGATE_HTTP_TLS_CERT"),
            "{e}"
        );

        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.toml");
        std::fs::write(
            &f,
            "[http]\ntls = { cert = \"/nope/c.pem\", key = \"/nope/k.pem\" }\n",
        )
        .unwrap();
        let e = Config::load(Some(&f), &env(&[("PALMGATE_HTTP_TLS_CERT", "/env/c.pem")]))
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(e.contains("PALMGATE_HTTP_TLS_CERT"), "{e}");

        let e = Config::load(
            None,
            &env(&[("PALMGATE_HTTP_TLS_CERT", "/etc/pg/cert.pem")]),
        )
        .map(|_| ())
        .unwrap_err()
        .to_string();
        assert!(e.contains("key"), "{e}");
    }

    #[test]
    fn errors_name_key_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("bad.toml");
        std::fs::write(&f, "[sessions]\nttl = \"soon\"\n").unwrap();
        let e = Config::load(Some(&f), &[]).unwrap_err().to_string();
        assert!(e.contains("sessions.ttl") && e.contains("bad.toml"), "{e}");

        std::fs::write(&f, "[http]\nlisen = \"1.2.3.4:5\"\n").unwrap();
        let e = Config::load(Some(&f), &[]).unwrap_err().to_string();
        assert!(e.contains("lisen") && e.contains("http"), "{e}");

        let e = Config::load(None, &env(&[("PALMGATE_MATCHING_DIM", "zero")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("matching.dim") && e.contains("PALMGATE_MATCHING_DIM"),
            "{e}"
        );

        std::fs::write(&f, "[http\n").unwrap();
        let e = Config::load(Some(&f), &[]).unwrap_err().to_string();
        assert!(
            e.contains("bad.toml") && e.contains("not valid TOML"),
            "{e}"
        );
    }

    /// A section the file gives as a plain value, with an environment variable setting a key
    /// inside it: an error naming the section and the file, not a panic.
    #[test]
    fn a_section_that_is_not_a_table_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("sect.toml");
        for (text, var, parent) in [
            (
                "[http]\ntls = \"/etc/palmgate/cert.pem\"\n",
                "PALMGATE_HTTP_TLS_KEY",
                "http.tls",
            ),
            ("http = 5\n", "PALMGATE_HTTP_TLS_CERT", "http"),
            ("mqtt = \"x\"\n", "PALMGATE_MQTT_URL", "mqtt"),
        ] {
            std::fs::write(&f, text).unwrap();
            let e = Config::load(Some(&f), &env(&[(var, "/k")]))
                .map(|_| ())
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!("`{parent}`"))
                    && e.contains("sect.toml")
                    && e.contains("must be a table")
                    && e.contains(var),
                "{text:?} + {var}: {e}"
            );
        }
    }

    /// Durations beyond 100 years are refused at load (they overflowed `now + ttl` in the
    /// core); the error names the key and where the value came from.
    #[test]
    fn durations_are_capped_at_100_years() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("dur.toml");
        for v in ["300000y", "1000000000y", "101y", "500000000000000000s"] {
            std::fs::write(&f, format!("[sessions]\nttl = \"{v}\"\n")).unwrap();
            let e = Config::load(Some(&f), &[])
                .map(|_| ())
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("sessions.ttl") && e.contains("dur.toml") && e.contains("100 years"),
                "{v}: {e}"
            );
        }
        let e = Config::load(None, &env(&[("PALMGATE_WEBHOOKS_RETENTION", "300000y")]))
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("webhooks.retention") && e.contains("PALMGATE_WEBHOOKS_RETENTION"),
            "{e}"
        );
        std::fs::write(&f, "[sessions]\nttl = \"100y\"\n").unwrap();
        let c = Config::load(Some(&f), &[]).unwrap();
        assert_eq!(c.sessions.ttl, MAX_DURATION);
        assert!(
            chrono::Utc::now() + chrono::Duration::from_std(c.sessions.ttl).unwrap()
                > chrono::Utc::now()
        );
    }

    /// An error inside an array (`allow_networks[0]`) names where the array came from.
    #[test]
    fn the_built_in_broker_stays_on_loopback_unless_allowed() {
        let e = Config::load(
            None,
            &env(&[("PALMGATE_MQTT_EMBEDDED_LISTEN", "0.0.0.0:1883")]),
        )
        .map(|_| ())
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("mqtt.embedded.listen")
                && e.contains("PALMGATE_MQTT_EMBEDDED_LISTEN")
                && e.contains("no authentication"),
            "{e}"
        );
        let lan = [
            ("PALMGATE_MQTT_EMBEDDED_LISTEN", "0.0.0.0:1883"),
            ("PALMGATE_MQTT_EMBEDDED_ALLOW_NETWORK", "true"),
        ];
        assert!(
            Config::load(None, &env(&lan))
                .unwrap()
                .mqtt
                .embedded
                .allow_network
        );
        // Not used with an external broker: nothing to refuse.
        let external = [
            ("PALMGATE_MQTT_EMBEDDED_LISTEN", "0.0.0.0:1883"),
            ("PALMGATE_MQTT_URL", "mqtt://127.0.0.1:1883"),
        ];
        assert!(Config::load(None, &env(&external)).is_ok());
        for ok in ["127.0.0.1:0", "[::1]:1883"] {
            let c = Config::load(None, &env(&[("PALMGATE_MQTT_EMBEDDED_LISTEN", ok)]));
            assert!(c.is_ok(), "{ok}: {:?}", c.err().map(|e| e.to_string()));
        }
    }

    #[test]
    fn errors_in_arrays_name_their_source() {
        let e = Config::load(
            None,
            &env(&[("PALMGATE_WEBHOOKS_ALLOW_NETWORKS", "[\"10.0.0.0/88\"]")]),
        )
        .map(|_| ())
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("webhooks.allow_networks[0]")
                && e.contains("environment variable PALMGATE_WEBHOOKS_ALLOW_NETWORKS")
                && !e.contains("embedded defaults"),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("nets.toml");
        std::fs::write(
            &f,
            "[webhooks]\nallow_networks = [\"10.0.0.0/8\", \"nope\"]\n",
        )
        .unwrap();
        let e = Config::load(Some(&f), &[])
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("webhooks.allow_networks[1]") && e.contains("nets.toml"),
            "{e}"
        );
    }

    /// Every array-valued key (found in the defaults, not named here) takes its environment
    /// variable as TOML array syntax or as a comma-separated list; an empty variable is an
    /// empty array, and an error names the key, the variable and the item.
    #[test]
    fn array_keys_take_comma_separated_lists_from_the_environment() {
        let defaults: Table = DEFAULTS.parse().unwrap();
        let mut arrays = vec![];
        leaf_keys(&defaults, "", &mut |k| {
            if lookup(&defaults, &k).is_some_and(Value::is_array) {
                arrays.push(k);
            }
        });
        assert!(arrays.contains(&"webhooks.allow_networks".to_string()));
        for key in &arrays {
            let var = env_name(key);
            for raw in ["", "  ", "a, b,,c ", "[\"a\"]"] {
                let mut merged = defaults.clone();
                apply_env(&mut merged, &env(&[(&var, raw)]), &mut BTreeMap::new()).unwrap();
                let got = lookup(&merged, key).unwrap().as_array().unwrap();
                let want: &[&str] = match raw.trim() {
                    "" => &[],
                    "[\"a\"]" => &["a"],
                    _ => &["a", "b", "c"],
                };
                let got: Vec<&str> = got.iter().map(|v| v.as_str().unwrap()).collect();
                assert_eq!(got, want, "{var}={raw:?}");
            }
        }

        let nets = |raw: &str| {
            Config::load(None, &env(&[("PALMGATE_WEBHOOKS_ALLOW_NETWORKS", raw)]))
                .map(|c| c.webhooks.allow_networks)
                .map_err(|e| e.to_string())
        };
        let want: Vec<ipnet::IpNet> = vec![
            "10.0.0.0/8".parse().unwrap(),
            "192.168.0.0/16".parse().unwrap(),
        ];
        assert_eq!(nets("10.0.0.0/8,192.168.0.0/16").unwrap(), want);
        assert_eq!(nets(" 10.0.0.0/8 , 192.168.0.0/16 ").unwrap(), want);
        assert_eq!(nets("[\"10.0.0.0/8\", \"192.168.0.0/16\"]").unwrap(), want);
        assert_eq!(nets("10.0.0.0/8").unwrap(), want[..1]);
        assert!(nets("").unwrap().is_empty());
        let e = nets("10.0.0.0/8, 192.168.0.0/99").unwrap_err();
        assert!(
            e.contains("webhooks.allow_networks[1]")
                && e.contains("environment variable PALMGATE_WEBHOOKS_ALLOW_NETWORKS")
                && e.contains("\"192.168.0.0/99\""),
            "{e}"
        );
        // Broken TOML array syntax is still an error naming the key and the variable.
        let e = nets("[\"10.0.0.0/8\"").unwrap_err();
        assert!(
            e.contains("webhooks.allow_networks")
                && e.contains("environment variable PALMGATE_WEBHOOKS_ALLOW_NETWORKS"),
            "{e}"
        );
    }

    /// Empty paths are refused at load, naming the key and its source.
    #[test]
    fn empty_paths_are_rejected() {
        for (var, key) in [
            ("PALMGATE_STORE_PATH", "store.path"),
            ("PALMGATE_SECRETS_KEY_FILE", "secrets.key_file"),
            ("PALMGATE_SECRETS_KEY_STORE", "secrets.key_store"),
            ("PALMGATE_MQTT_CA_FILE", "mqtt.ca_file"),
        ] {
            let e = Config::load(None, &env(&[(var, "")]))
                .map(|_| ())
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!("`{key}`"))
                    && e.contains(&format!("environment variable {var}"))
                    && e.contains("must not be empty"),
                "{var}: {e}"
            );
        }
        let e = Config::load(
            None,
            &env(&[
                ("PALMGATE_HTTP_TLS_CERT", ""),
                ("PALMGATE_HTTP_TLS_KEY", "/k.pem"),
            ]),
        )
        .map(|_| ())
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("`http.tls.cert`") && e.contains("must not be empty"),
            "{e}"
        );
        // Unused paths may stay empty: the key file with a master key given, the SQLite path
        // with a KurrentDB URL.
        Config::load(
            None,
            &env(&[
                ("PALMGATE_SECRETS_KEY_FILE", ""),
                ("PALMGATE_SECRETS_MASTER_KEY", &"ab".repeat(32)),
                ("PALMGATE_STORE_PATH", ""),
                ("PALMGATE_STORE_URL", "esdb://localhost:2113"),
            ]),
        )
        .unwrap();
    }
}
