//! Request bodies: a 64 KiB cap (413) and JSON with a clear 400 for every way it can be wrong.

use super::error::ApiError;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header;
use serde_json::Value;

/// Largest request body accepted anywhere (SPEC 2).
pub const MAX_BODY: usize = 64 * 1024;

/// The raw body, at most [`MAX_BODY`] bytes.
pub struct LimitedBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for LimitedBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, _: &S) -> Result<Self, ApiError> {
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_BODY as u64) {
            return Err(ApiError::PayloadTooLarge);
        }
        let bytes = axum::body::to_bytes(req.into_body(), MAX_BODY)
            .await
            .map_err(|e| {
                let text = format!("{e:?}");
                if text.contains("LengthLimit") {
                    ApiError::PayloadTooLarge
                } else if super::serve::is_body_timeout(&e) {
                    ApiError::RequestTimeout
                } else {
                    ApiError::BadRequest("could not read the request body".into())
                }
            })?;
        Ok(LimitedBody(bytes))
    }
}

/// A JSON body sent with `Content-Type: application/json`.
pub struct JsonBody(pub Value);

pub fn is_json_content_type(v: Option<&str>) -> bool {
    v.and_then(|v| v.split(';').next())
        .map(|m| m.trim().eq_ignore_ascii_case("application/json"))
        .unwrap_or(false)
}

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    /// The `Content-Type` is checked before the body is read: SPEC 2 checks 400 before 413.
    async fn from_request(req: Request, s: &S) -> Result<Self, ApiError> {
        let ct = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        if !is_json_content_type(ct) {
            return Err(refuse_head(
                req.headers(),
                "Content-Type must be application/json",
            ));
        }
        let LimitedBody(bytes) = LimitedBody::from_request(req, s).await?;
        let value = parse_json(&bytes)?;
        if let Some(n) = wide_integer(&bytes) {
            let n = if n.len() > 40 {
                format!("{}… ({} digits)", &n[..32], n.len())
            } else {
                n.to_string()
            };
            return Err(ApiError::BadRequest(format!(
                "number {n} is out of range: integers must fit in 64 bits (send larger ones as \
                 strings)"
            )));
        }
        Ok(JsonBody(value))
    }
}

/// A 400 decided from the request's head: if a body came with it (unread), the connection is
/// closed after the answer.
pub fn refuse_head(headers: &header::HeaderMap, msg: &str) -> ApiError {
    let has_body = headers
        .get(header::CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes() != b"0")
        || headers.contains_key(header::TRANSFER_ENCODING);
    if has_body {
        ApiError::BadRequestUnread(msg.to_string())
    } else {
        ApiError::BadRequest(msg.to_string())
    }
}

/// Parses JSON with a message that says where it went wrong. A key given twice in one object
/// is refused (serde_json alone keeps the last one, where another parser in front of palmgate,
/// a proxy or a WAF, may have judged the first); so is a leading byte order mark, by name.
pub fn parse_json(bytes: &[u8]) -> Result<Value, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::BadRequest("request body is empty".into()));
    }
    if bytes.starts_with(b"\xEF\xBB\xBF") {
        return Err(ApiError::BadRequest(
            "request body starts with a byte order mark (U+FEFF): send the JSON without it".into(),
        ));
    }
    serde_json::from_slice::<Strict>(bytes)
        .map(|s| s.0)
        .map_err(|e| {
            // serde_json's own words say what is wrong ("expected value", "trailing characters",
            // "recursion limit exceeded", "invalid unicode code point", ...): they name the input,
            // never the server. Its position suffix is replaced by ours.
            let what = e.to_string();
            let what = what
                .rsplit_once(" at line ")
                .map_or(what.as_str(), |(w, _)| w)
                .to_string();
            let what = match what.as_str() {
                "recursion limit exceeded" => "nested more than 128 levels deep".to_string(),
                "" => "syntax error".to_string(),
                _ => what,
            };
            ApiError::BadRequest(format!(
                "invalid JSON at line {} column {}: {what}",
                e.line(),
                e.column(),
            ))
        })
}

/// A JSON value whose objects have no key twice.
struct Strict(Value);

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let Strict(v) = map.next_value()?;
            if out.contains_key(&key) {
                let shown: String = key.chars().take(64).collect();
                return Err(serde::de::Error::custom(format!(
                    "key {shown:?} is given twice in one object"
                )));
            }
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

/// The first integer literal of a valid JSON text that fits neither `i64` nor `u64`. serde_json
/// would keep it as the nearest binary64 (`123456789012345678901234567890` comes back as
/// `1.2345678901234568e29`), so a partner's `metadata` would not come back as sent; such a
/// body is refused instead. Numbers with a fraction or an exponent are binary64 by nature
/// (RFC 8259 section 6) and pass.
fn wide_integer(json: &[u8]) -> Option<&str> {
    let mut i = 0;
    while i < json.len() {
        match json[i] {
            b'"' => {
                i += 1;
                while i < json.len() && json[i] != b'"' {
                    i += if json[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < json.len()
                    && matches!(json[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                let token = std::str::from_utf8(&json[start..i]).ok()?;
                let integer = !token.contains(['.', 'e', 'E']);
                if integer && token.parse::<i64>().is_err() && token.parse::<u64>().is_err() {
                    return Some(token);
                }
            }
            _ => i += 1,
        }
    }
    None
}

#[cfg(test)]
mod wide_integer_tests {
    use super::wide_integer;

    #[test]
    fn integers_beyond_64_bits_are_found_outside_strings_only() {
        let found = |s: &str| wide_integer(s.as_bytes()).map(str::to_string);
        assert_eq!(
            found(r#"{"a":1,"b":-9223372036854775808,"c":18446744073709551615}"#),
            None
        );
        assert_eq!(
            found(r#"{"a":1.5e300,"b":0.1,"c":-1E-5,"d":123456789012345678901234567890.0}"#),
            None
        );
        assert_eq!(
            found(r#"{"m":{"badge":123456789012345678901234567890}}"#).as_deref(),
            Some("123456789012345678901234567890")
        );
        assert_eq!(
            found(r#"[-9223372036854775809]"#).as_deref(),
            Some("-9223372036854775809")
        );
        assert_eq!(
            found(r#"[18446744073709551616]"#).as_deref(),
            Some("18446744073709551616")
        );
        // Inside strings, escaped quotes included, digits are text.
        assert_eq!(
            found(r#"{"k":"99999999999999999999999","e":"\"99999999999999999999999"}"#),
            None
        );
        assert_eq!(found(r#"{"k\"":1}"#), None);
    }
}
