//! The hash chain: canonical bytes of an event and their verification.
//!
//! Canonical bytes are the length-prefixed fields `position, stream, revision, type, version,
//! recorded_at, data` with `data` exactly as stored (compact JSON, keys sorted). Length
//! prefixes make the encoding unambiguous whatever characters a stream name holds.

use super::StoreError;
use crate::core::event::{Event, Recorded};
use chrono::{DateTime, SecondsFormat, Utc};
use sha2::{Digest, Sha256};

/// An event with its stored form computed: type, version and the exact data text.
#[derive(Clone, Debug)]
pub struct Encoded {
    pub event: Event,
    pub kind: &'static str,
    pub version: u32,
    pub data: String,
}

impl Encoded {
    pub fn new(event: &Event) -> Encoded {
        Encoded::from_event(event.clone())
    }

    pub fn from_event(event: Event) -> Encoded {
        let (kind, version, data) = event.encode();
        Encoded {
            kind,
            version,
            data: serde_json::to_string(&data).expect("JSON values always serialize"),
            event,
        }
    }
}

/// An event exactly as the store holds it.
#[derive(Clone, Debug, PartialEq)]
pub struct RawEvent {
    pub position: u64,
    pub stream: String,
    pub revision: u64,
    pub kind: String,
    pub version: u32,
    pub recorded_at: String,
    pub data: String,
    pub prev_hash: [u8; 32],
    pub hash: [u8; 32],
}

/// The `recorded_at` text form: RFC 3339, microseconds, `Z`.
pub fn format_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// The exact form [`format_time`] writes (`YYYY-MM-DDTHH:MM:SS.ffffffZ`), read without the
/// general RFC 3339 parser; `None` for anything else (a leap second, another offset, other
/// precision, an invalid date), which is left to that parser.
fn parse_stored_time(s: &str) -> Option<DateTime<Utc>> {
    let b = s.as_bytes();
    if b.len() != 27 || b[26] != b'Z' {
        return None;
    }
    for (i, sep) in [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
    ] {
        if b[i] != sep {
            return None;
        }
    }
    let num = |from: usize, to: usize| -> Option<u32> {
        b[from..to].iter().try_fold(0u32, |n, &d| {
            d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0'))
        })
    };
    let date =
        chrono::NaiveDate::from_ymd_opt(i32::try_from(num(0, 4)?).ok()?, num(5, 7)?, num(8, 10)?)?;
    let (h, m, sec, micro) = (num(11, 13)?, num(14, 16)?, num(17, 19)?, num(20, 26)?);
    if sec > 59 {
        return None;
    }
    Some(date.and_hms_micro_opt(h, m, sec, micro)?.and_utc())
}

/// `SHA-256(prev_hash ‖ canonical bytes)`.
#[allow(clippy::too_many_arguments)]
pub fn event_hash(
    prev_hash: &[u8; 32],
    position: u64,
    stream: &str,
    revision: u64,
    kind: &str,
    version: u32,
    recorded_at: &str,
    data: &str,
) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev_hash);
    h.update(position.to_le_bytes());
    field(&mut h, stream.as_bytes());
    h.update(revision.to_le_bytes());
    field(&mut h, kind.as_bytes());
    h.update(u64::from(version).to_le_bytes());
    field(&mut h, recorded_at.as_bytes());
    field(&mut h, data.as_bytes());
    h.finalize().into()
}

fn field(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

impl RawEvent {
    /// Builds the stored form of `event`, chained after `prev_hash`.
    pub fn seal(
        prev_hash: [u8; 32],
        position: u64,
        stream: &str,
        revision: u64,
        recorded_at: DateTime<Utc>,
        event: &Event,
    ) -> RawEvent {
        let e = Encoded::new(event);
        RawEvent::seal_encoded(
            prev_hash,
            position,
            stream,
            revision,
            &format_time(recorded_at),
            e.kind,
            e.version,
            &e.data,
        )
    }

    /// [`RawEvent::seal`] for an event already encoded (the writer thread only chains).
    #[allow(clippy::too_many_arguments)]
    pub fn seal_encoded(
        prev_hash: [u8; 32],
        position: u64,
        stream: &str,
        revision: u64,
        recorded_at: &str,
        kind: &str,
        version: u32,
        data: &str,
    ) -> RawEvent {
        let hash = event_hash(
            &prev_hash,
            position,
            stream,
            revision,
            kind,
            version,
            recorded_at,
            data,
        );
        RawEvent {
            position,
            stream: stream.to_string(),
            revision,
            kind: kind.to_string(),
            version,
            recorded_at: recorded_at.to_string(),
            data: data.to_string(),
            prev_hash,
            hash,
        }
    }

    /// Recomputes this event's hash from its stored bytes.
    pub fn computed_hash(&self) -> [u8; 32] {
        event_hash(
            &self.prev_hash,
            self.position,
            &self.stream,
            self.revision,
            &self.kind,
            self.version,
            &self.recorded_at,
            &self.data,
        )
    }

    /// Parses the stored data into a typed event (upcasting old versions).
    pub fn decode(&self) -> Result<Recorded, StoreError> {
        let (event, recorded_at) = self.decode_parts()?;
        Ok(Recorded {
            position: self.position,
            stream: self.stream.clone(),
            revision: self.revision,
            recorded_at,
            event,
            prev_hash: self.prev_hash,
            hash: self.hash,
        })
    }

    /// [`RawEvent::decode`] consuming the stored form: the stream name moves into the result.
    pub fn into_recorded(self) -> Result<Recorded, StoreError> {
        let (event, recorded_at) = self.decode_parts()?;
        Ok(Recorded {
            position: self.position,
            stream: self.stream,
            revision: self.revision,
            recorded_at,
            event,
            prev_hash: self.prev_hash,
            hash: self.hash,
        })
    }

    fn decode_parts(&self) -> Result<(Event, DateTime<Utc>), StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt {
            position: self.position,
            reason,
        };
        let event = Event::decode_text(&self.kind, self.version, &self.data)
            .map_err(|e| corrupt(e.to_string()))?;
        let recorded_at = match parse_stored_time(&self.recorded_at) {
            Some(t) => t,
            None => DateTime::parse_from_rfc3339(&self.recorded_at)
                .map_err(|e| corrupt(format!("recorded_at: {e}")))?
                .with_timezone(&Utc),
        };
        Ok((event, recorded_at))
    }
}

/// A break in the chain, found by [`Verifier`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainBreak {
    pub position: u64,
    pub reason: String,
}

/// Walks stored events in order and checks positions, links and hashes.
#[derive(Default)]
pub struct Verifier {
    last_position: u64,
    last_hash: [u8; 32],
}

impl Verifier {
    pub fn check(&mut self, e: &RawEvent) -> Result<(), ChainBreak> {
        self.check_link(e.position, &e.prev_hash, &e.hash, &e.computed_hash())
    }

    /// As [`Verifier::check`], with the event's hash already recomputed from its bytes
    /// (`computed`), so that work can run on another thread.
    pub fn check_link(
        &mut self,
        position: u64,
        prev_hash: &[u8; 32],
        hash: &[u8; 32],
        computed: &[u8; 32],
    ) -> Result<(), ChainBreak> {
        struct E<'a> {
            position: u64,
            prev_hash: &'a [u8; 32],
            hash: &'a [u8; 32],
        }
        let e = E {
            position,
            prev_hash,
            hash,
        };
        let fail = |reason: String| ChainBreak {
            position: e.position,
            reason,
        };
        if e.position != self.last_position + 1 {
            return Err(fail(format!(
                "expected position {}, found {} (an event is missing or out of order)",
                self.last_position + 1,
                e.position
            )));
        }
        if *e.prev_hash != self.last_hash {
            return Err(fail("prev_hash does not link to the previous event".into()));
        }
        if computed != e.hash {
            return Err(fail("hash does not match the event's bytes".into()));
        }
        self.last_position = e.position;
        self.last_hash = *e.hash;
        Ok(())
    }

    pub fn verified(&self) -> u64 {
        self.last_position
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_times_read_as_the_rfc3339_parser_reads_them() {
        let t = DateTime::parse_from_rfc3339("2026-11-26T05:59:58.123456Z")
            .unwrap()
            .with_timezone(&Utc);
        for t in [
            t,
            t + chrono::Duration::microseconds(1),
            DateTime::from_timestamp(0, 0).unwrap(),
            DateTime::from_timestamp(253_402_300_799, 999_999_000).unwrap(),
        ] {
            let s = format_time(t);
            assert_eq!(parse_stored_time(&s), Some(t), "{s}");
        }
        // Anything but the written form goes to the general parser.
        for s in [
            "2026-11-26T05:59:58Z",
            "2026-11-26T05:59:58.123456+00:00",
            "2026-11-26T05:59:60.000000Z",
            "2026-02-30T05:59:58.123456Z",
            "2026-11-26T24:00:00.000000Z",
            "2026-11-26 05:59:58.123456Z",
            "2026-11-26T05:59:58.12345aZ",
            "+026-11-26T05:59:58.123456Z",
        ] {
            assert_eq!(parse_stored_time(s), None, "{s}");
        }
    }
}
