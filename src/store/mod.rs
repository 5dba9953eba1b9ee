//! The event store: one append-only, hash-chained log behind a backend-neutral trait.
//!
//! Invariants every backend keeps: positions are global, 1-based and gapless; an append of
//! several streams is all-or-nothing and checks each stream's expected revision; an append
//! returns only once its events are durable; every event's `hash` is
//! `SHA-256(prev_hash ‖ canonical bytes)` ([`chain`]), so a changed, dropped or reordered
//! event breaks the chain at its position. A backend may keep state snapshots beside the log
//! ([`snapshots`]): a cache for start-up, never a source of facts.

pub mod acked;
pub mod chain;
mod group;
mod heads_file;
#[cfg(feature = "kurrentdb")]
pub mod kurrent;
pub mod snapshots;
pub mod sqlite;

use crate::core::{Expected, Recorded, StreamAppend};
use chrono::{DateTime, Utc};
use std::future::Future;
use std::pin::Pin;

pub use chain::{RawEvent, RawRef};
#[cfg(feature = "kurrentdb")]
pub use kurrent::KurrentStore;
pub use snapshots::{SnapshotDir, SnapshotInfo};
pub use sqlite::SqliteStore;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("stream `{stream}` expected {expected:?} but is at {actual:?}")]
    Conflict {
        stream: String,
        expected: Expected,
        actual: Option<u64>,
    },
    #[error("storage failure: {0}")]
    Io(String),
    #[error("event at position {position} cannot be read: {reason}")]
    Corrupt { position: u64, reason: String },
    #[error("the store is closed")]
    Closed,
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A durable, hash-chained event log.
pub trait EventStore: Send + Sync + 'static {
    /// Appends all of `batch` atomically, durably, with `recorded_at` on every event. The
    /// request is handed to the backend before this returns, and the future owns everything it
    /// needs (`'static`): a caller that is cancelled while waiting can pass it on to a task, so
    /// that what was appended is still folded in (`App::execute_with`).
    fn append(
        &self,
        batch: Vec<StreamAppend>,
        recorded_at: DateTime<Utc>,
    ) -> BoxFuture<'static, Result<Vec<Recorded>, StoreError>>;

    /// Up to `limit` stored events with position > `after`, in order, exactly as stored.
    fn read_raw(&self, after: u64, limit: usize) -> Result<Vec<RawEvent>, StoreError>;

    /// [`EventStore::read_raw`] lending each event to `each`, in order, instead of collecting
    /// copies (a backend that can borrows from its own buffers); returns how many it lent.
    fn read_raw_each(
        &self,
        after: u64,
        limit: usize,
        each: &mut dyn FnMut(RawRef<'_>),
    ) -> Result<usize, StoreError> {
        let page = self.read_raw(after, limit)?;
        page.iter().for_each(|r| each(r.as_raw_ref()));
        Ok(page.len())
    }

    /// Up to `limit` decoded events with position > `after`.
    fn read(&self, after: u64, limit: usize) -> Result<Vec<Recorded>, StoreError> {
        let mut out = Vec::with_capacity(limit.min(100_000));
        let mut failed = None;
        self.read_raw_each(after, limit, &mut |r| {
            if failed.is_none() {
                match r.decode() {
                    Ok(rec) => out.push(rec),
                    Err(e) => failed = Some(e),
                }
            }
        })?;
        match failed {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// False after a write failed, until the backend finds it can write again (the SQLite
    /// backend probes): meanwhile the server is not ready and refuses new work.
    fn healthy(&self) -> bool;

    /// Where snapshots of the read model are kept beside this log; `None`: no snapshots
    /// (every start-up folds the whole log).
    fn snapshots(&self) -> Option<&SnapshotDir> {
        None
    }

    /// The app no longer needs the store to check appends to `streams` (their records ended
    /// and were forgotten): their heads may be dropped. An append to one of them afterwards
    /// must expect no stream. Applied before the next group of appends is checked.
    fn forget_streams(&self, streams: Vec<String>) {
        let _ = streams;
    }

    /// Start-up: the stream heads become the ones the state rebuilt up to log position `as_of`
    /// knows (`keep`, with their revisions) — only if the store's heads are still as of
    /// `as_of`. Heads not in `keep` are dropped, as with [`EventStore::forget_streams`]; a
    /// stream in `keep` the store has no head for (forgotten by an earlier run with a shorter
    /// retention, which a longer one brings back) gets the state's revision, so it can be
    /// appended to again.
    fn retain_streams(&self, keep: std::collections::HashMap<String, u64>, as_of: u64) {
        let _ = (keep, as_of);
    }

    /// A log shared by several writers (KurrentDB: several gateways): every event OTHER
    /// writers append after position `after`, in order, batch by batch, as this store learns
    /// of them — the app folds them in so its projections follow. Call it once, with the
    /// position the state was rebuilt at. `None` (the default, SQLite): this store is the log's
    /// only writer.
    fn follow_others(
        &self,
        after: u64,
    ) -> Option<tokio::sync::mpsc::UnboundedReceiver<Vec<Recorded>>> {
        let _ = after;
        None
    }

    /// The head position and hash the log itself saved, if the backend keeps one and this
    /// store can vouch for it (`None`, the default: nothing to check).
    ///
    /// `Some((p, h))` proves that the log held, at some point, an event at position `p` whose
    /// hash was `h`, in the same view of the log as the events this store reads. So for a log
    /// nobody tampered with, the store's reads reach position `p` and the event there has hash
    /// `h`; a verifier may report:
    /// - reads that end before `p` (at `last < p`): the events after `last` were removed
    ///   (the tail was cut off), at least `last + 1 ..= p`;
    /// - an event at `p` whose hash is not `h`: the event at `p` was rewritten (and the chain
    ///   resealed, if the chain alone is intact).
    ///
    /// It proves nothing about events after `p`: the head is saved from time to time, not
    /// at every append (SQLite: every [`sqlite::CHECKPOINT_EVERY`] events and at a clean
    /// close), so after a crash or kill it is behind the last event, which is normal, and a
    /// tail cut at or after `p` is not seen. Nor does `None` prove anything (an old log, a log
    /// never closed cleanly before its first save). It catches a cut tail, not a forger: one
    /// who also rewrites or deletes the saved head, or a server started on the cut log (its
    /// next save overwrites the head), leaves nothing for it to show. An `Err` is a saved head
    /// the backend cannot have written (malformed): worth reporting, not a reason to stop.
    fn saved_head(&self) -> Result<Option<(u64, [u8; 32])>, StoreError> {
        Ok(None)
    }

    /// The app is done with the store (its server has stopped): finish what is queued and let
    /// go of the log, so that another open of it (a restart in the same process) may write it.
    /// Appends afterwards answer [`StoreError::Closed`]. Default: nothing to let go of.
    fn close(&self) {}
}
