//! Session lifecycle rules: `pending → completed | failed | expired`, nothing else.
//!
//! Invariant: once a session leaves `pending` it never returns; expiry is a deadline the
//! core reports through [`super::decider::State::next_deadline`], never a sleep.

use super::ids::*;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionState {
    Pending,
    Completed,
    Failed,
    Expired,
}

impl SessionState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Expired => "expired",
        }
    }
}

/// The read model of one session.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Session {
    pub id: SessionId,
    /// `None` for a site session opened by a reader's trigger.
    pub partner_id: Option<PartnerId>,
    pub kind: SessionKind,
    pub language: Language,
    pub token_hash: SecretHash,
    pub external_id: Option<ExternalId>,
    pub username: Option<String>,
    pub metadata: Option<Value>,
    pub state: SessionState,
    pub fail_reason: Option<FailReason>,
    /// The reader armed for (or, for a trigger session, bound to) this session.
    pub reader_id: Option<ReaderId>,
    /// When `reader_id` was armed (a trigger session: created) or last showed activity for
    /// this session (a capture that asked for a retry); the reader's hold runs
    /// [`READER_HOLD`] from here. `None` when no reader was ever armed.
    #[serde(default)]
    pub reader_armed_at: Option<DateTime<Utc>>,
    /// Low-quality retries asked for so far.
    pub retries: u32,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    /// Revision of the session's stream, for the next expected-revision append.
    pub revision: u64,
}

/// How long a session holds its reader against other partners' enrollments after the reader
/// was armed for it or last showed activity for it. An abandoned page (someone armed a desk's
/// reader and walked away) no longer blocks that reader for the whole session TTL; the session
/// itself stays pending and can still complete on another reader, or expire.
pub const READER_HOLD: Duration = Duration::minutes(2);

/// What a hosted page should show for a session at `now` (SPEC 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageView {
    /// 200: the page to scan a palm.
    Open,
    /// 400: "link expired" — expired, or pending past its deadline before the tick ran.
    Expired,
    /// 410: completed or failed.
    Gone,
}

impl Session {
    /// True while the session can still be used at `now`.
    pub fn is_open(&self, now: DateTime<Utc>) -> bool {
        self.state == SessionState::Pending && now < self.expires_at
    }

    /// True while this session holds `reader` at `now`: open, armed for (or bound to) that
    /// reader, and armed or active there less than [`READER_HOLD`] ago (at exactly
    /// `READER_HOLD` the hold has lapsed).
    pub fn holds_reader(&self, reader: &ReaderId, now: DateTime<Utc>) -> bool {
        self.reader_id.as_ref() == Some(reader)
            && self.is_open(now)
            && self.reader_armed_at.is_some_and(|t| now < t + READER_HOLD)
    }

    /// The state as the API shows it at `now`: a pending session past its deadline is
    /// `expired` (with `expires_at` as its end) before the tick has recorded it, as its page
    /// and a cancel already treat it. The tick's `SessionExpired` normally follows within a
    /// second; while the log cannot be written it may not for a while.
    pub fn as_of(&self, now: DateTime<Utc>) -> (SessionState, Option<DateTime<Utc>>) {
        match self.state {
            SessionState::Pending if now >= self.expires_at => {
                (SessionState::Expired, Some(self.expires_at))
            }
            state => (state, self.ended_at),
        }
    }

    pub fn page_view(&self, now: DateTime<Utc>) -> PageView {
        match self.state {
            SessionState::Pending if now < self.expires_at => PageView::Open,
            SessionState::Pending | SessionState::Expired => PageView::Expired,
            SessionState::Completed | SessionState::Failed => PageView::Gone,
        }
    }
}
