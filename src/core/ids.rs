//! Newtype identifiers and small closed vocabularies shared by the whole core.
//!
//! Invariant: an id of one kind can never be passed where another is expected; the
//! string forms here are the ones written to the log and shown on the API.

use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        /// The bytes' order, compared as one big-endian integer: the state's B-trees compare
        /// session ids on every insert, and a call to `memcmp` per comparison showed up there.
        impl Ord for $name {
            fn cmp(&self, other: &Self) -> std::cmp::Ordering {
                self.0.as_u128().cmp(&other.0.as_u128())
            }
        }

        impl PartialOrd for $name {
            fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
                Some(self.cmp(other))
            }
        }

        impl $name {
            /// Builds the id from 16 random bytes supplied by the shell's `Rng`.
            pub fn from_random(bytes: [u8; 16]) -> Self {
                Self(uuid::Builder::from_random_bytes(bytes).into_uuid())
            }
            /// Parses the canonical hyphenated form; anything else is `None`.
            pub fn parse(s: &str) -> Option<Self> {
                Uuid::try_parse(s).ok().map(Self)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }
    };
}

uuid_id!(
    /// A partner organisation calling the Pass API.
    PartnerId
);
uuid_id!(
    /// One enroll or identify attempt (the id partners see; never the URL token).
    SessionId
);

impl SessionId {
    /// A time-ordered id (UUID version 7): `unix_ms`, the creation time in milliseconds, then
    /// 74 of the random bits. Ids made later sort later, so the state's B-trees take each new
    /// one at their right edge instead of at a random leaf.
    pub fn time_ordered(unix_ms: u64, random: [u8; 16]) -> Self {
        let mut tail = [0u8; 10];
        tail.copy_from_slice(&random[..10]);
        Self(uuid::Builder::from_unix_timestamp_millis(unix_ms, &tail).into_uuid())
    }
}
uuid_id!(
    /// A per-user data key in the key store (outside the log); destroying it erases a template.
    KeyId
);

macro_rules! string_id {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

string_id!(
    /// The partner's own identifier for a user (unique per partner, 1–100 scalar values).
    ExternalId
);
string_id!(
    /// A palm reader's id, the `{reader_id}` of its MQTT topics.
    ReaderId
);

impl ReaderId {
    /// Longest reader id (and capture or trigger id) a reader may use.
    pub const MAX_LEN: usize = 128;

    /// Whether `s` can be a reader id: 1–128 letters, digits or `-_.:`, so it is one MQTT topic
    /// level and never a wildcard (also the rule for capture and trigger ids).
    pub fn is_valid(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= Self::MAX_LEN
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    }
}

string_id!(
    /// Hex SHA-256 of a secret (API key, session token). Secrets themselves never reach the log.
    SecretHash
);
string_id!(
    /// The `session_id` a remote Pass API gave an identify session palmgate opened there for a
    /// reader's trigger (upstream mode); 1–128 letters, digits or `-_.:`.
    UpstreamSessionId
);

/// Hosted-page and reader language.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    En,
    Kk,
    Ru,
}

impl Language {
    pub const ALL: [Language; 3] = [Language::En, Language::Kk, Language::Ru];

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "en" => Some(Self::En),
            "kk" => Some(Self::Kk),
            "ru" => Some(Self::Ru),
            _ => None,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Self::En => "en",
            Self::Kk => "kk",
            Self::Ru => "ru",
        }
    }
}

/// What a session is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionKind {
    Enroll,
    Identify,
}

impl SessionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enroll => "enroll",
            Self::Identify => "identify",
        }
    }
}

/// Why a session failed (SPEC 4, `data.fail_reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailReason {
    NoMatch,
    AlreadyEnrolled,
    LowQuality,
    LivenessFailed,
    Cancelled,
    ReaderOffline,
}

impl FailReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoMatch => "no_match",
            Self::AlreadyEnrolled => "already_enrolled",
            Self::LowQuality => "low_quality",
            Self::LivenessFailed => "liveness_failed",
            Self::Cancelled => "cancelled",
            Self::ReaderOffline => "reader_offline",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_ordered_ids_are_version_7_and_sort_by_their_millisecond() {
        let early = SessionId::time_ordered(1_764_000_000_000, [0xff; 16]);
        let later = SessionId::time_ordered(1_764_000_000_001, [0x00; 16]);
        assert!(
            early < later,
            "a later millisecond sorts later whatever the random bits"
        );
        assert_eq!(early.0.get_version_num(), 7);
        assert_eq!(early.0.get_variant(), uuid::Variant::RFC4122);
        let (secs, nanos) = early.0.get_timestamp().unwrap().to_unix();
        assert_eq!((secs, nanos / 1_000_000), (1_764_000_000, 0));
        // Within one millisecond the random bits decide, and are kept.
        let a = SessionId::time_ordered(5, [1; 16]);
        let b = SessionId::time_ordered(5, [2; 16]);
        assert_ne!(a, b);
        assert_eq!(SessionId::parse(&a.to_string()), Some(a));
    }
}
