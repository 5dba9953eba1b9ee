//! Webhooks as data (SPEC 4): the seed's payload, both signatures, and the retry schedule.
//!
//! Pure: the shell sends what these functions build. Invariants: a delivery's body is built
//! once, when it is queued, and every attempt sends exactly those bytes; the schedule is
//! "attempt 1 now, then +1 min, +5 min, +30 min, +2 h"; `Retry-After` may delay an attempt but
//! never bring it forward; after the 5th failure there is no next attempt.

use super::ids::*;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Duration, SecondsFormat, Utc};
use hmac::{Hmac, Mac};
use serde::Serialize;
use serde_json::Value;
use sha2::Sha256;

/// Attempts per delivery sequence.
pub const MAX_ATTEMPTS: u32 = 5;

/// Delay before attempt `n` (1-based) after the previous attempt failed; attempt 1 is immediate.
pub fn delay_before(attempt: u32) -> Option<Duration> {
    match attempt {
        1 => Some(Duration::zero()),
        2 => Some(Duration::minutes(1)),
        3 => Some(Duration::minutes(5)),
        4 => Some(Duration::minutes(30)),
        5 => Some(Duration::hours(2)),
        _ => None,
    }
}

/// Longest `Retry-After` honoured (a receiver cannot park a delivery for ever).
pub const MAX_RETRY_AFTER: Duration = Duration::hours(24);

/// When attempt `failed + 1` is due, given the failure time and the receiver's `Retry-After`.
pub fn next_attempt_at(
    failed: u32,
    failed_at: DateTime<Utc>,
    retry_after: Option<Duration>,
) -> Option<DateTime<Utc>> {
    let scheduled = failed_at + delay_before(failed + 1)?;
    let asked = retry_after.map(|d| failed_at + d.min(MAX_RETRY_AFTER));
    Some(asked.map_or(scheduled, |a| a.max(scheduled)))
}

/// Success is any 2xx.
pub fn is_success(status: u16) -> bool {
    (200..300).contains(&status)
}

/// How a failed attempt failed, in one line: `HTTP 503`, `HTTP 301: redirect … not followed`,
/// or the transport error alone when no status line came.
pub fn failure_text(status_code: Option<u16>, error: Option<&str>) -> String {
    match (status_code, error) {
        (Some(code), None) => format!("HTTP {code}"),
        (Some(code), Some(e)) => format!("HTTP {code}: {e}"),
        (None, Some(e)) => e.to_string(),
        (None, None) => "no answer".to_string(),
    }
}

#[derive(Serialize)]
struct Payload<'a, T: Serialize> {
    event: &'a str,
    timestamp: String,
    data: &'a T,
}

/// The seed's `data` object for a session outcome.
#[derive(Serialize)]
pub struct SessionData<'a> {
    pub session_id: SessionId,
    #[serde(rename = "type")]
    pub kind: SessionKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_id: Option<&'a ExternalId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fail_reason: Option<FailReason>,
    pub language: Language,
}

/// The exact body of a webhook: `{"event", "timestamp", "data"}`, timestamp in whole UTC seconds.
pub fn body<T: Serialize>(event: &str, at: DateTime<Utc>, data: &T) -> String {
    serde_json::to_string(&Payload {
        event,
        timestamp: at.to_rfc3339_opts(SecondsFormat::Secs, true),
        data,
    })
    .expect("webhook payloads always serialize")
}

/// `X-Webhook-Signature`: `sha256=<hex HMAC-SHA256(secret string bytes, body)>`, as the seed's
/// verifiers compute it.
pub fn seed_signature(secret: &str, body: &[u8]) -> String {
    let mut m = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    m.update(body);
    format!("sha256={}", hex::encode(m.finalize().into_bytes()))
}

/// One Standard Webhooks signature `v1,<base64>` over `{id}.{timestamp}.{body}`, keyed with the
/// base64-decoded bytes after `whsec_`. `None` if the secret is not of that form.
pub fn standard_signature(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Option<String> {
    let key = STANDARD.decode(secret.strip_prefix("whsec_")?).ok()?;
    let mut m = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes any key");
    m.update(id.as_bytes());
    m.update(b".");
    m.update(timestamp.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    Some(format!("v1,{}", STANDARD.encode(m.finalize().into_bytes())))
}

/// Checks an `X-Webhook-Signature` header (`sha256=<hex>`) against `body` signed with
/// `secret` as [`seed_signature`] does; the comparison is constant-time.
pub fn verify_seed_signature(secret: &str, body: &[u8], header: &str) -> bool {
    let Some(sig) = header
        .trim()
        .strip_prefix("sha256=")
        .and_then(|h| hex::decode(h).ok())
    else {
        return false;
    };
    let mut m = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    m.update(body);
    m.verify_slice(&sig).is_ok()
}

/// Checks a Standard Webhooks `webhook-signature` header (space-separated `v1,<base64>`, one
/// per active secret of the sender) as [`standard_signature`] computes it: true when one of
/// them is `secret`'s. Constant-time per comparison; false when `secret` is not `whsec_…`.
pub fn verify_standard_signature(
    secret: &str,
    id: &str,
    timestamp: i64,
    body: &[u8],
    header: &str,
) -> bool {
    let Some(key) = secret
        .strip_prefix("whsec_")
        .and_then(|k| STANDARD.decode(k).ok())
    else {
        return false;
    };
    let mut m = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes any key");
    m.update(id.as_bytes());
    m.update(b".");
    m.update(timestamp.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    header
        .split_whitespace()
        .filter_map(|s| s.strip_prefix("v1,"))
        .filter_map(|s| STANDARD.decode(s).ok())
        .any(|sig| m.clone().verify_slice(&sig).is_ok())
}

/// A new secret from 32 random bytes: `whsec_<base64>`.
pub fn new_secret(random: [u8; 32]) -> String {
    format!("whsec_{}", STANDARD.encode(random))
}

/// The id of the delivery announcing a session's end (stable across retries and restarts).
pub fn session_delivery_id(session: SessionId) -> String {
    format!("msg_{}", session.0.simple())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn schedule_is_the_seeds() {
        let t = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let mins = |n| t + Duration::minutes(n);
        assert_eq!(next_attempt_at(1, t, None), Some(mins(1)));
        assert_eq!(next_attempt_at(2, t, None), Some(mins(5)));
        assert_eq!(next_attempt_at(3, t, None), Some(mins(30)));
        assert_eq!(next_attempt_at(4, t, None), Some(mins(120)));
        assert_eq!(next_attempt_at(5, t, None), None);
        // Retry-After delays, never hastens.
        assert_eq!(
            next_attempt_at(1, t, Some(Duration::seconds(5))),
            Some(mins(1))
        );
        assert_eq!(
            next_attempt_at(1, t, Some(Duration::minutes(3))),
            Some(mins(3))
        );
        assert_eq!(
            next_attempt_at(1, t, Some(Duration::days(9))),
            Some(t + MAX_RETRY_AFTER)
        );
    }

    #[test]
    fn signatures_match_known_values() {
        // HMAC-SHA256("key", "The quick brown fox jumps over the lazy dog")
        assert_eq!(
            seed_signature("key", b"The quick brown fox jumps over the lazy dog"),
            "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
        );
        let s = new_secret([1; 32]);
        let sig = standard_signature(&s, "msg_1", 1_700_000_000, b"{}").unwrap();
        assert!(sig.starts_with("v1,"));
        assert_eq!(standard_signature("nope", "a", 1, b""), None);
    }

    #[test]
    fn verifiers_accept_exactly_what_the_signers_make() {
        let body = br#"{"event":"completed"}"#;
        let s = new_secret([7; 32]);
        let seed = seed_signature(&s, body);
        assert!(verify_seed_signature(&s, body, &seed));
        assert!(verify_seed_signature(
            &s,
            body,
            &seed.to_uppercase().replace("SHA256=", "sha256=")
        ));
        assert!(!verify_seed_signature(&s, b"{}", &seed));
        assert!(!verify_seed_signature("whsec_other", body, &seed));
        assert!(!verify_seed_signature(
            &s,
            body,
            seed.trim_start_matches("sha256=")
        ));
        assert!(!verify_seed_signature(&s, body, "sha256=zz"));
        assert!(!verify_seed_signature(&s, body, ""));
        let old = new_secret([8; 32]);
        let both = format!(
            "{} {}",
            standard_signature(&old, "msg_1", 1_700_000_000, body).unwrap(),
            standard_signature(&s, "msg_1", 1_700_000_000, body).unwrap()
        );
        assert!(verify_standard_signature(
            &s,
            "msg_1",
            1_700_000_000,
            body,
            &both
        ));
        assert!(!verify_standard_signature(
            &s,
            "msg_2",
            1_700_000_000,
            body,
            &both
        ));
        assert!(!verify_standard_signature(
            &s,
            "msg_1",
            1_700_000_001,
            body,
            &both
        ));
        assert!(!verify_standard_signature(
            "plain",
            "msg_1",
            1_700_000_000,
            body,
            &both
        ));
    }

    #[test]
    fn body_has_the_seed_shape() {
        let t = Utc.with_ymd_and_hms(2024, 1, 15, 10, 30, 0).unwrap();
        let b = body("completed", t, &serde_json::json!({"session_id": "x"}));
        assert_eq!(
            b,
            r#"{"event":"completed","timestamp":"2024-01-15T10:30:00Z","data":{"session_id":"x"}}"#
        );
    }
}
