//! The reader protocol of SPEC 5 as pure parsing and formatting: topics in, typed messages
//! out, with an error that says what was wrong for every malformed payload.

use crate::core::ReaderId;
use crate::core::matcher::{self, TemplateError};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value, json};
use zeroize::Zeroizing;

/// What a reader publishes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopicKind {
    Status,
    Capture,
    Trigger,
}

impl TopicKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TopicKind::Status => "status",
            TopicKind::Capture => "capture",
            TopicKind::Trigger => "trigger",
        }
    }
}

/// A parsed reader message.
#[derive(Clone, Debug, PartialEq)]
pub enum Inbound {
    Status {
        online: bool,
        model: Option<String>,
        firmware: Option<String>,
    },
    Capture(CaptureMsg),
    Trigger {
        trigger_id: String,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct CaptureMsg {
    pub capture_id: String,
    /// The session token, or `None` for a scan at a door.
    pub session: Option<String>,
    /// L2-normalised template, zeroed when dropped (a live reading of someone's palm; its
    /// base64 text and decoded bytes are zeroed as soon as it is parsed).
    pub template: Zeroizing<Vec<f32>>,
    pub quality: f64,
    pub liveness: bool,
}

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ProtocolError {
    #[error("topic `{0}` is not a reader topic")]
    Topic(String),
    #[error("payload is not UTF-8 JSON: {0}")]
    NotJson(String),
    #[error("payload must be a JSON object")]
    NotObject,
    #[error("`{0}` is required")]
    Missing(&'static str),
    #[error("`{field}` must be {expected}")]
    Type {
        field: &'static str,
        expected: &'static str,
    },
    #[error("`template` is not valid base64")]
    Base64,
    #[error("`template`: {0}")]
    Template(#[from] TemplateError),
    #[error("payload of {0} bytes is over the {MAX_PAYLOAD} bytes a reader message may have")]
    TooLarge(usize),
    /// A capture or trigger with the retain flag: a broker replays a retained message to every
    /// new subscription (each reconnection of the gateway), long after it was made. Only a
    /// reader's `status` is retained (SPEC 5).
    #[error("a retained {} is not taken (only a reader's status is retained)", .0.as_str())]
    Retained(TopicKind),
}

/// The largest reader message taken (a capture of a 128-float template is ~1 KiB). The embedded
/// broker takes packets up to four times larger (`broker::MAX_PACKET`), so that a larger
/// message reaches the parser and is rejected `too_large` while its reader stays connected; the
/// shipped Mosquitto configuration refuses packets over 256 KiB itself (and drops the sender).
pub const MAX_PAYLOAD: usize = 256 * 1024;

impl ProtocolError {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            ProtocolError::Topic(_) => "topic",
            ProtocolError::TooLarge(_) => "too_large",
            ProtocolError::Retained(_) => "retained",
            ProtocolError::NotJson(_) => "not_json",
            ProtocolError::NotObject => "not_object",
            ProtocolError::Missing(_) => "missing_field",
            ProtocolError::Type { .. } => "wrong_type",
            ProtocolError::Base64 => "bad_base64",
            ProtocolError::Template(TemplateError::Dimension { .. }) => "wrong_dimension",
            ProtocolError::Template(_) => "bad_template",
        }
    }
}

/// Reader ids, capture ids and trigger ids: 1–128 letters, digits or `-_.:`.
fn valid_id(s: &str) -> bool {
    crate::core::ReaderId::is_valid(s)
}

/// `{prefix}/readers/{reader_id}/{status|capture|trigger}`.
pub fn parse_topic(prefix: &str, topic: &str) -> Result<(ReaderId, TopicKind), ProtocolError> {
    let bad = || ProtocolError::Topic(topic.chars().take(200).collect());
    let rest = topic
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix("/readers/"))
        .ok_or_else(bad)?;
    let (id, kind) = rest.split_once('/').ok_or_else(bad)?;
    if !valid_id(id) {
        return Err(bad());
    }
    let kind = match kind {
        "status" => TopicKind::Status,
        "capture" => TopicKind::Capture,
        "trigger" => TopicKind::Trigger,
        _ => return Err(bad()),
    };
    Ok((ReaderId(id.to_string()), kind))
}

/// The gateway's subscriptions for reader messages: the three topics a reader publishes on,
/// each its own filter, and two that only a topic that is not a reader's matches: a reader id
/// with no kind (`{prefix}/readers/x`) and any extra level (`{prefix}/readers/x/capture/extra`).
/// Those are rejected `topic`, logged and counted (SPEC 5). No filter overlaps another (an
/// overlap makes a broker deliver a message twice), and none matches `{prefix}/readers/x/cmd`,
/// so the gateway's own commands do not come back to it: one filter for all of `readers/#`
/// did that, and put every reader's messages and those echoes in one log of the embedded
/// broker (rumqttd keeps one per filter), where one reader's flood pushed out the others'.
/// A third level that is no kind (`{prefix}/readers/x/foo`) is not seen: a filter for it
/// would match the three kinds too.
pub fn reader_filters(prefix: &str) -> [String; 5] {
    [
        format!("{prefix}/readers/+/status"),
        format!("{prefix}/readers/+/capture"),
        format!("{prefix}/readers/+/trigger"),
        format!("{prefix}/readers/+"),
        format!("{prefix}/readers/+/+/+/#"),
    ]
}

/// The filter of the build that subscribed to all of `{prefix}/readers/` (commit 28774ca): an
/// external broker's persistent session may still hold it, and overlapping
/// [`reader_filters`] it would deliver each reader message twice.
pub fn legacy_filter(prefix: &str) -> String {
    format!("{prefix}/readers/#")
}

/// `{prefix}/readers/{reader_id}/cmd`: a command the gateway published. None of
/// [`reader_filters`] matches it, but a broker session that still holds [`legacy_filter`]
/// delivers it until the gateway has unsubscribed. Ignored.
pub fn is_cmd_topic(prefix: &str, topic: &str) -> bool {
    topic
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix("/readers/"))
        .and_then(|r| r.strip_suffix("/cmd"))
        .is_some_and(valid_id)
}

fn object(payload: &[u8]) -> Result<Map<String, Value>, ProtocolError> {
    let text = std::str::from_utf8(payload).map_err(|e| ProtocolError::NotJson(e.to_string()))?;
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ProtocolError::NotObject),
        Err(e) => Err(ProtocolError::NotJson(e.to_string())),
    }
}

fn opt_string(
    m: &Map<String, Value>,
    field: &'static str,
) -> Result<Option<String>, ProtocolError> {
    match m.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.chars().take(200).collect())),
        Some(_) => Err(ProtocolError::Type {
            field,
            expected: "a string",
        }),
    }
}

fn id_field(m: &Map<String, Value>, field: &'static str) -> Result<String, ProtocolError> {
    match m.get(field) {
        None | Some(Value::Null) => Err(ProtocolError::Missing(field)),
        Some(Value::String(s)) if valid_id(s) => Ok(s.clone()),
        Some(_) => Err(ProtocolError::Type {
            field,
            expected: "a string of 1–128 letters, digits or -_.:",
        }),
    }
}

/// Refuses a capture or trigger delivered with the retain flag ([`ProtocolError::Retained`]).
/// A broker clears the flag when it forwards a message live, so what is refused is a retained
/// one replayed on a new subscription.
pub fn check_retain(kind: TopicKind, retain: bool) -> Result<(), ProtocolError> {
    match kind {
        TopicKind::Capture | TopicKind::Trigger if retain => Err(ProtocolError::Retained(kind)),
        _ => Ok(()),
    }
}

/// Parses a payload published on a reader topic of `kind`; templates must have `dim` values.
pub fn parse(kind: TopicKind, payload: &[u8], dim: usize) -> Result<Inbound, ProtocolError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(ProtocolError::TooLarge(payload.len()));
    }
    let mut m = object(payload)?;
    match kind {
        TopicKind::Status => {
            let online = match m.get("online") {
                Some(Value::Bool(b)) => *b,
                None => return Err(ProtocolError::Missing("online")),
                Some(_) => {
                    return Err(ProtocolError::Type {
                        field: "online",
                        expected: "true or false",
                    });
                }
            };
            Ok(Inbound::Status {
                online,
                model: opt_string(&m, "model")?,
                firmware: opt_string(&m, "firmware")?,
            })
        }
        TopicKind::Trigger => Ok(Inbound::Trigger {
            trigger_id: id_field(&m, "trigger_id")?,
        }),
        TopicKind::Capture => {
            let capture_id = id_field(&m, "capture_id")?;
            let session = match m.get("session") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) if !s.is_empty() && s.len() <= 256 => Some(s.clone()),
                Some(_) => {
                    return Err(ProtocolError::Type {
                        field: "session",
                        expected: "a session token or null",
                    });
                }
            };
            let b64 = match m.get_mut("template") {
                Some(Value::String(s)) => Zeroizing::new(std::mem::take(s)),
                None | Some(Value::Null) => return Err(ProtocolError::Missing("template")),
                Some(_) => {
                    return Err(ProtocolError::Type {
                        field: "template",
                        expected: "a base64 string",
                    });
                }
            };
            let bytes = Zeroizing::new(
                STANDARD
                    .decode(b64.as_bytes())
                    .map_err(|_| ProtocolError::Base64)?,
            );
            let values = matcher::from_le_bytes(&bytes, dim)?;
            let template = Zeroizing::new(matcher::normalise(values, dim)?);
            let quality = match m.get("quality").and_then(Value::as_f64) {
                Some(q) if (0.0..=1.0).contains(&q) => q,
                Some(_) => {
                    return Err(ProtocolError::Type {
                        field: "quality",
                        expected: "a number from 0 to 1",
                    });
                }
                None if m.contains_key("quality") => {
                    return Err(ProtocolError::Type {
                        field: "quality",
                        expected: "a number from 0 to 1",
                    });
                }
                None => return Err(ProtocolError::Missing("quality")),
            };
            let liveness = match m.get("liveness") {
                Some(Value::Bool(b)) => *b,
                None => return Err(ProtocolError::Missing("liveness")),
                Some(_) => {
                    return Err(ProtocolError::Type {
                        field: "liveness",
                        expected: "true or false",
                    });
                }
            };
            Ok(Inbound::Capture(CaptureMsg {
                capture_id,
                session,
                template,
                quality,
                liveness,
            }))
        }
    }
}

/// Topic of a reader's commands.
pub fn cmd_topic(prefix: &str, reader: &ReaderId) -> String {
    format!("{prefix}/readers/{reader}/cmd")
}

/// Topic of a reader's messages of `kind`.
pub fn reader_topic(prefix: &str, reader: &ReaderId, kind: TopicKind) -> String {
    format!("{prefix}/readers/{reader}/{}", kind.as_str())
}

/// `{"action":"capture","session":..,"type":..,"language":..}`
pub fn capture_cmd(token: &str, kind: &str, language: &str) -> Value {
    json!({"action": "capture", "session": token, "type": kind, "language": language})
}

/// `{"action":"show","url":..}`
pub fn show_cmd(url: &str) -> Value {
    json!({"action": "show", "url": url})
}

/// `{"action":"retry","reason":..}`
pub fn retry_cmd(reason: &str) -> Value {
    json!({"action": "retry", "reason": reason})
}

/// Encodes a template as the wire's base64 of little-endian f32.
pub fn encode_template(values: &[f32]) -> String {
    STANDARD.encode(matcher::to_le_bytes(values))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capture(template: &str, extra: &str) -> Vec<u8> {
        format!(r#"{{"capture_id":"c-1","session":null,"template":"{template}","quality":0.9,"liveness":true{extra}}}"#).into_bytes()
    }

    #[test]
    fn topics() {
        assert_eq!(
            parse_topic("palmgate", "palmgate/readers/lobby-1/capture").unwrap(),
            (ReaderId("lobby-1".into()), TopicKind::Capture)
        );
        assert!(parse_topic("palmgate", "palmgate/readers/lobby-1/cmd").is_err());
        assert!(parse_topic("palmgate", "other/readers/x/status").is_err());
        assert!(parse_topic("palmgate", "palmgate/readers//status").is_err());
        for bad in [
            "palmgate/readers/desk-1/capture/extra",
            "palmgate/readers/x/y/capture",
            "palmgate/readers/desk-1/foo",
            "palmgate/readers/desk-1",
            "palmgate/readers",
        ] {
            assert_eq!(parse_topic("palmgate", bad).unwrap_err().label(), "topic");
            assert!(!is_cmd_topic("palmgate", bad), "{bad}");
        }
        assert!(is_cmd_topic("palmgate", "palmgate/readers/lobby-1/cmd"));
        assert!(!is_cmd_topic("palmgate", "palmgate/readers/x/y/cmd"));
        assert!(!is_cmd_topic("palmgate", "palmgate/readers//cmd"));
        assert!(!is_cmd_topic("palmgate", "other/readers/x/cmd"));
    }

    /// Each topic is matched by exactly the filters it should be: one for a reader's three
    /// kinds and for the two shapes of a topic that is not a reader's, none for a command
    /// (the gateway's own) or a third level that is no kind (known gap, README).
    #[test]
    fn reader_filters_match_each_topic_once_and_never_a_command() {
        let filters = reader_filters("palmgate");
        let count = |topic: &str| {
            filters
                .iter()
                .filter(|f| rumqttc::matches(topic, f))
                .count()
        };
        for once in [
            "palmgate/readers/lobby-1/status",
            "palmgate/readers/lobby-1/capture",
            "palmgate/readers/lobby-1/trigger",
            "palmgate/readers/desk-1",
            "palmgate/readers/desk-1/capture/extra",
            "palmgate/readers/x/y/capture",
            "palmgate/readers/x/cmd/y/z",
        ] {
            assert_eq!(count(once), 1, "{once}");
        }
        for never in [
            "palmgate/readers/lobby-1/cmd",
            "palmgate/readers/desk-1/foo",
            "palmgate/gateway/g/mark",
            "other/readers/x/capture",
        ] {
            assert_eq!(count(never), 0, "{never}");
        }
        assert!(rumqttc::matches(
            "palmgate/readers/lobby-1/cmd",
            &legacy_filter("palmgate")
        ));
    }

    #[test]
    fn only_a_status_may_be_retained() {
        assert_eq!(check_retain(TopicKind::Status, true), Ok(()));
        for kind in [TopicKind::Capture, TopicKind::Trigger] {
            assert_eq!(check_retain(kind, false), Ok(()));
            let e = check_retain(kind, true).unwrap_err();
            assert_eq!(e.label(), "retained");
            assert!(e.to_string().contains(kind.as_str()), "{e}");
        }
    }

    #[test]
    fn good_capture_is_normalised() {
        let t = encode_template(&[3.0, 4.0]);
        match parse(TopicKind::Capture, &capture(&t, ""), 2).unwrap() {
            Inbound::Capture(c) => {
                assert_eq!(c.session, None);
                assert!((c.template[0] - 0.6).abs() < 1e-6);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_malformed_payload_says_why() {
        let t = encode_template(&[3.0, 4.0]);
        let nan = encode_template(&[f32::NAN, 1.0]);
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"not json".to_vec(), "not_json"),
            (b"[1,2]".to_vec(), "not_object"),
            (vec![0xff, 0xfe], "not_json"),
            (capture("@@@", ""), "bad_base64"),
            (
                capture(&encode_template(&[1.0, 2.0, 3.0]), ""),
                "wrong_dimension",
            ),
            (capture(&nan, ""), "bad_template"),
            (
                br#"{"capture_id":"c","template":"AAAA","quality":0.9}"#.to_vec(),
                "wrong_dimension",
            ),
            (
                format!(r#"{{"capture_id":5,"template":"{t}","quality":0.9,"liveness":true}}"#)
                    .into_bytes(),
                "wrong_type",
            ),
            (
                format!(r#"{{"capture_id":"c","template":"{t}","quality":"hi","liveness":true}}"#)
                    .into_bytes(),
                "wrong_type",
            ),
            (
                format!(r#"{{"capture_id":"c","template":"{t}","quality":1.5,"liveness":true}}"#)
                    .into_bytes(),
                "wrong_type",
            ),
            (
                format!(r#"{{"capture_id":"c","template":"{t}","quality":0.5}}"#).into_bytes(),
                "missing_field",
            ),
            (
                format!(r#"{{"template":"{t}","quality":0.5,"liveness":true}}"#).into_bytes(),
                "missing_field",
            ),
        ];
        for (payload, label) in cases {
            let e = parse(TopicKind::Capture, &payload, 2).unwrap_err();
            assert_eq!(
                e.label(),
                label,
                "{e} for {}",
                String::from_utf8_lossy(&payload)
            );
            assert!(!e.to_string().is_empty());
        }
        assert_eq!(
            parse(TopicKind::Status, br#"{"online":"yes"}"#, 2)
                .unwrap_err()
                .label(),
            "wrong_type"
        );
        assert_eq!(
            parse(TopicKind::Trigger, br#"{}"#, 2).unwrap_err(),
            ProtocolError::Missing("trigger_id")
        );
    }
}
