//! What every backend's writer shares: an append request as the writer receives it, the
//! expected-revision check and sealing of a request within a group commit, and the answer.
//!
//! A backend's writer takes a group of requests and stages it ([`stage_group`]: each request
//! against its stream heads and what the group staged before it), writes the accepted rows in
//! one durable operation, and then [`answer`]s each accepted request with its recorded events.

use super::StoreError;
use super::chain::{Encoded, RawEvent, format_time};
use crate::core::split_map::SplitMap;
use crate::core::state::Map;
use crate::core::{Expected, Recorded, StreamAppend};
use chrono::{DateTime, Utc};
use std::collections::HashMap;

/// Each stream's last revision, as a writer holds them (the writer looks one up per event).
/// Split hash maps ([`SplitMap`]): a B-tree with `String` keys chases a pointer per
/// comparison, which cost the identify benchmark a quarter of its throughput, and one hash
/// map's resize stalled the writer, and so every append, for 12 ms at 115k streams and 29 ms
/// at 229k.
pub type Heads = SplitMap<String, u64>;
/// What a group staged on top of [`Heads`] (a few streams: one plain map).
pub type Staged = Map<String, u64>;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::oneshot;

/// One stream's part of a request, encoded by the caller (off the writer thread).
pub(super) struct Prepared {
    pub stream: String,
    pub expected: Expected,
    pub events: Vec<Encoded>,
}

/// An append as the writer receives it.
pub(super) struct WriteReq {
    pub batch: Vec<Prepared>,
    pub recorded_at: DateTime<Utc>,
    /// `recorded_at` as stored.
    pub recorded_text: String,
    pub reply: oneshot::Sender<Result<Vec<Recorded>, StoreError>>,
}

pub(super) type Reply = oneshot::Receiver<Result<Vec<Recorded>, StoreError>>;

impl WriteReq {
    /// Encodes `batch` on the caller's thread. Stored times have microseconds: the live answer
    /// carries exactly what a read returns.
    pub fn new(batch: Vec<StreamAppend>, recorded_at: DateTime<Utc>) -> (WriteReq, Reply) {
        let (reply, rx) = oneshot::channel();
        let recorded_at =
            DateTime::from_timestamp_micros(recorded_at.timestamp_micros()).unwrap_or(recorded_at);
        let batch = batch
            .into_iter()
            .map(|a| Prepared {
                stream: a.stream,
                expected: a.expected,
                events: a.events.into_iter().map(Encoded::from_event).collect(),
            })
            .collect();
        let req = WriteReq {
            batch,
            recorded_at,
            recorded_text: format_time(recorded_at),
            reply,
        };
        (req, rx)
    }
}

/// Stream heads the app has let go of ([`super::EventStore::forget_streams`],
/// [`super::EventStore::retain_streams`]), waiting for the writer to drop them before it checks
/// its next group.
#[derive(Default)]
pub(super) struct Forgetting {
    pending: AtomicBool,
    edits: Mutex<Edits>,
}

#[derive(Default)]
struct Edits {
    forget: Vec<String>,
    /// Streams to keep, with their revisions, as of a log position.
    keep: Option<(HashMap<String, u64>, u64)>,
}

impl Forgetting {
    pub fn forget(&self, streams: Vec<String>) {
        let mut e = self.edits.lock().unwrap_or_else(|p| p.into_inner());
        e.forget.extend(streams);
        self.pending.store(true, Ordering::Release);
    }

    pub fn retain(&self, keep: HashMap<String, u64>, as_of: u64) {
        let mut e = self.edits.lock().unwrap_or_else(|p| p.into_inner());
        e.keep = Some((keep, as_of));
        self.pending.store(true, Ordering::Release);
    }

    /// Drops the forgotten heads from `heads`, which are as of log position `position` (the
    /// writer, before checking a group), and from `overlay` (heads the writer keeps aside while
    /// a saver shares the map's shards, looked up first: a head dropped from the map alone
    /// would come back when the overlay is merged). A `retain` made as of another position is
    /// skipped: streams that appeared since (another gateway's) may be ones the app knows by
    /// now.
    pub fn apply(&self, heads: &mut Heads, mut overlay: Option<&mut Staged>, position: u64) {
        if !self.pending.swap(false, Ordering::AcqRel) {
            return;
        }
        let edits = std::mem::take(&mut *self.edits.lock().unwrap_or_else(|p| p.into_inner()));
        for s in &edits.forget {
            heads.remove(s);
            if let Some(o) = overlay.as_deref_mut() {
                o.remove(s);
            }
        }
        match edits.keep {
            Some((keep, as_of)) if as_of == position => {
                if let Some(o) = overlay {
                    o.retain(|s, _| keep.contains_key(s));
                }
                heads.retain(|s, _| keep.contains_key(s));
                for (s, revision) in keep {
                    if !heads.contains_key(&s) {
                        heads.insert(s, revision);
                    }
                }
            }
            Some((_, as_of)) => tracing::info!(
                as_of,
                position,
                "stream heads not pruned: the log moved since the state was rebuilt"
            ),
            None => {}
        }
        if heads.capacity() > 2 * heads.len() + 1024 {
            heads.shrink_to_fit();
        }
    }
}

/// A group of requests staged against the committed heads, in order: the chain head and the
/// stream heads after the accepted ones, and the refused ones with their errors.
pub(super) struct StagedGroup {
    pub position: u64,
    pub hash: [u8; 32],
    pub staged: Staged,
    pub accepted: Vec<(WriteReq, Vec<RawEvent>)>,
    pub refused: Vec<(WriteReq, StoreError)>,
}

/// [`stage`]s every request of `group` after the chain head `position`/`hash`, each against
/// `heads` (with `overlay` over them: heads committed while `heads` is shared with a saver)
/// and what the requests before it staged.
pub(super) fn stage_group(
    heads: &Heads,
    overlay: Option<&Staged>,
    position: u64,
    hash: [u8; 32],
    group: Vec<WriteReq>,
) -> StagedGroup {
    let mut g = StagedGroup {
        position,
        hash,
        staged: Staged::default(),
        accepted: Vec::with_capacity(group.len()),
        refused: Vec::new(),
    };
    for req in group {
        match stage(
            heads,
            overlay,
            &req,
            &mut g.position,
            &mut g.hash,
            &mut g.staged,
        ) {
            Ok(rows) => g.accepted.push((req, rows)),
            Err(e) => g.refused.push((req, e)),
        }
    }
    g
}

/// Checks a request's expectations against the committed `heads` and what the group staged
/// before it (`staged`), and seals its events into rows after `position`/`hash`. On refusal
/// nothing of it is staged.
fn stage(
    heads: &Heads,
    overlay: Option<&Staged>,
    req: &WriteReq,
    position: &mut u64,
    hash: &mut [u8; 32],
    staged: &mut Staged,
) -> Result<Vec<RawEvent>, StoreError> {
    let head = |s: &str| {
        staged
            .get(s)
            .or_else(|| overlay.and_then(|o| o.get(s)))
            .or_else(|| heads.get(s))
            .copied()
    };
    let mut local: Map<&str, Option<u64>> = Map::default();
    for a in &req.batch {
        let actual = *local.entry(&a.stream).or_insert_with(|| head(&a.stream));
        let ok = match a.expected {
            Expected::Any => true,
            Expected::NoStream => actual.is_none(),
            Expected::Revision(r) => actual == Some(r),
        };
        if !ok {
            return Err(StoreError::Conflict {
                stream: a.stream.clone(),
                expected: a.expected,
                actual,
            });
        }
        let next = actual.map_or(0, |r| r + 1) + a.events.len() as u64;
        if !a.events.is_empty() {
            local.insert(&a.stream, Some(next - 1));
        }
    }
    let mut rows = Vec::new();
    let mut revs: Map<&str, u64> = Map::default();
    for a in &req.batch {
        for ev in &a.events {
            let rev = match revs.get(a.stream.as_str()) {
                Some(r) => r + 1,
                None => head(&a.stream).map_or(0, |r| r + 1),
            };
            revs.insert(&a.stream, rev);
            *position += 1;
            let row = RawEvent::seal_encoded(
                *hash,
                *position,
                &a.stream,
                rev,
                &req.recorded_text,
                ev.kind,
                ev.version,
                &ev.data,
            );
            *hash = row.hash;
            rows.push(row);
        }
    }
    for (s, r) in revs {
        staged.insert(s.to_string(), r);
    }
    Ok(rows)
}

/// Answers a committed request with its recorded events. The events are already typed: no
/// need to parse the rows back.
pub(super) fn answer(req: WriteReq, rows: Vec<RawEvent>) {
    let events = req.batch.into_iter().flat_map(|a| a.events);
    let recorded = rows
        .into_iter()
        .zip(events)
        .map(|(row, e)| Recorded {
            position: row.position,
            stream: row.stream,
            revision: row.revision,
            recorded_at: req.recorded_at,
            event: e.event,
            prev_hash: row.prev_hash,
            hash: row.hash,
        })
        .collect();
    let _ = req.reply.send(Ok(recorded));
}
