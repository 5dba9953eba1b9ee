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
        Encoded {
            kind: event.kind(),
            version: event.version(),
            data: event.data_text(),
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

/// A stored event borrowed from the backend's buffers ([`EventStore::read_raw_each`]): what
/// [`RawEvent`] holds, without copying the texts.
///
/// [`EventStore::read_raw_each`]: super::EventStore::read_raw_each
#[derive(Clone, Copy, Debug)]
pub struct RawRef<'a> {
    pub position: u64,
    pub stream: &'a str,
    pub revision: u64,
    pub kind: &'a str,
    pub version: u32,
    pub recorded_at: &'a str,
    pub data: &'a str,
    pub prev_hash: [u8; 32],
    pub hash: [u8; 32],
}

/// The `recorded_at` text form: RFC 3339, microseconds, `Z`.
pub fn format_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
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

    /// This event as a [`RawRef`].
    pub fn as_raw_ref(&self) -> RawRef<'_> {
        RawRef {
            position: self.position,
            stream: &self.stream,
            revision: self.revision,
            kind: &self.kind,
            version: self.version,
            recorded_at: &self.recorded_at,
            data: &self.data,
            prev_hash: self.prev_hash,
            hash: self.hash,
        }
    }

    /// Recomputes this event's hash from its stored bytes.
    pub fn computed_hash(&self) -> [u8; 32] {
        self.as_raw_ref().computed_hash()
    }

    /// Parses the stored data into a typed event (upcasting old versions).
    pub fn decode(&self) -> Result<Recorded, StoreError> {
        self.as_raw_ref().decode()
    }

    /// [`RawEvent::decode`] consuming the stored form: the stream name moves into the result.
    pub fn into_recorded(self) -> Result<Recorded, StoreError> {
        let (event, recorded_at) = self.as_raw_ref().decode_parts()?;
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
}

impl RawRef<'_> {
    /// An owned copy.
    pub fn to_owned_event(&self) -> RawEvent {
        RawEvent {
            position: self.position,
            stream: self.stream.to_string(),
            revision: self.revision,
            kind: self.kind.to_string(),
            version: self.version,
            recorded_at: self.recorded_at.to_string(),
            data: self.data.to_string(),
            prev_hash: self.prev_hash,
            hash: self.hash,
        }
    }

    /// Recomputes this event's hash from its stored bytes.
    pub fn computed_hash(&self) -> [u8; 32] {
        event_hash(
            &self.prev_hash,
            self.position,
            self.stream,
            self.revision,
            self.kind,
            self.version,
            self.recorded_at,
            self.data,
        )
    }

    /// Parses the stored data into a typed event (upcasting old versions).
    pub fn decode(&self) -> Result<Recorded, StoreError> {
        let (event, recorded_at) = self.decode_parts()?;
        Ok(Recorded {
            position: self.position,
            stream: self.stream.to_string(),
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
        let event = Event::decode_text(self.kind, self.version, self.data)
            .map_err(|e| corrupt(e.to_string()))?;
        let recorded_at = match crate::core::event::parse_utc(self.recorded_at) {
            Some(t) => t,
            None => DateTime::parse_from_rfc3339(self.recorded_at)
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

    /// The hash of the last event checked (all zeros before the first).
    pub fn last_hash(&self) -> [u8; 32] {
        self.last_hash
    }

    /// After a break at `position`: the next event is checked against this one as stored, so
    /// a second tampered event further on is found too, not hidden behind the first break.
    pub fn resume_after(&mut self, position: u64, hash: &[u8; 32]) {
        self.last_position = position;
        self.last_hash = *hash;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Timelike;

    #[test]
    fn stored_times_read_as_the_rfc3339_parser_reads_them() {
        use crate::core::event::parse_utc;
        let general = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let t = general("2026-11-26T05:59:58.123456789Z");
        for t in [
            t,
            t + chrono::Duration::microseconds(1),
            DateTime::from_timestamp(0, 0).unwrap(),
            DateTime::from_timestamp(253_402_300_799, 999_999_999).unwrap(),
        ] {
            // The store's form, and chrono's (serde) form at every precision it writes.
            let stored = format_time(t);
            assert_eq!(parse_utc(&stored), Some(general(&stored)), "{stored}");
            for t in [
                t,
                t.with_nanosecond(0).unwrap(),
                t.with_nanosecond(5_000_000).unwrap(),
            ] {
                let serde = serde_json::to_value(t).unwrap();
                let serde = serde.as_str().unwrap();
                assert_eq!(parse_utc(serde), Some(t), "{serde}");
            }
        }
        for s in ["2026-11-26T05:59:58Z", "2026-11-26T05:59:58.1Z"] {
            assert_eq!(parse_utc(s), Some(general(s)), "{s}");
        }
        // Anything else goes to the general parser.
        for s in [
            "2026-11-26T05:59:58.123456+00:00",
            "2026-11-26T05:59:60.000000Z",
            "2026-02-30T05:59:58.123456Z",
            "2026-11-26T24:00:00.000000Z",
            "2026-11-26 05:59:58.123456Z",
            "2026-11-26T05:59:58.12345aZ",
            "2026-11-26T05:59:58.Z",
            "2026-11-26T05:59:58.1234567891Z",
            "+026-11-26T05:59:58.123456Z",
            "2026-11-26T05:59:58z",
        ] {
            assert_eq!(parse_utc(s), None, "{s}");
        }
    }

    #[test]
    fn event_times_read_the_same_through_either_parser() {
        // A leap second and an offset are not the fast form: the fallback reads them as
        // chrono always did.
        for (text, want) in [
            ("2026-11-26T05:59:58.5+05:00", "2026-11-26T00:59:58.5Z"),
            ("2026-11-26T05:59:58.123Z", "2026-11-26T05:59:58.123Z"),
        ] {
            let data = format!(r#"{{"door":"d1","at":"{text}"}}"#);
            let e = Event::decode_text("DoorExitRequested", 1, &data).unwrap();
            let Event::DoorExitRequested { at, .. } = e else {
                panic!("{e:?}")
            };
            assert_eq!(at, DateTime::parse_from_rfc3339(want).unwrap());
        }
        let bad = r#"{"door":"d1","at":"yesterday"}"#;
        let err = Event::decode_text("DoorExitRequested", 1, bad).unwrap_err();
        assert!(
            err.to_string()
                .contains("input contains invalid characters"),
            "{err}"
        );
    }
}
