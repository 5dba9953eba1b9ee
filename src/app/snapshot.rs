//! State snapshots in the shell: start-up from the newest snapshot plus the log's tail, and a
//! background thread that writes a new snapshot every `store.snapshot_every` events, or more
//! as the state grows (up to three times that: [`interval`]).
//!
//! Start-up ([`load`]) trusts a snapshot only if its schema is this build's
//! (`core::snapshot::SCHEMA`), its payload digest matches, and the log's event at the
//! snapshot's position has the hash the snapshot recorded — the hash chain then vouches for
//! every event before it. Anything else is logged and the snapshot ignored; with none usable
//! the whole log is folded, as before snapshots existed.
//!
//! The writer encodes a clone of the live state. [`Snapshotter::observe`] runs under the
//! state's write lock after every fold: it compares two integers and, when a snapshot is due
//! and the state holds exactly the events `1..=p` ([`State::is_prefix`]: appends committed
//! together land in any order), hands the writer a copy of what a snapshot stores
//! ([`State::snapshot_copy`]). The copy costs a reference count per chunk or shard of the
//! large collections (`core::chunk_map`, `core::split_map`), which the live state then copies
//! one at a time on its next writes to them; the indexes a snapshot does not store are not
//! copied at all. Only events already
//! durable are folded into the live state, so the snapshot at `p` is of a durable prefix.
//!
//! Earlier the writer kept a second copy of the state and folded the log's new events into it
//! (reading and decoding them again): most of its cost, ~5 points of the identify throughput
//! on a 2-core box, and twice the memory (BENCHMARKS.md §2, sessions 20–21).
//!
//! The live state folds an append's events when the append lands, in position order within
//! it; appends on one stream land in their order (expected revisions), appends on different
//! streams in the order their tasks run. The snapshot holds the state the gateway decided on,
//! which a full fold in position order reproduces wherever folds of concurrent appends to
//! different streams commute (every part of the state but two concurrent door decisions for
//! one person in one anti-passback zone, which of two partners given one key hash came last,
//! and the instant the duplicate-capture memory turns over: README, "State snapshots").
//! `audit verify` never reads snapshots.

use crate::core::snapshot::{self as snap, SCHEMA};
use crate::core::{Rules, State};
use crate::store::{EventStore, SnapshotDir, SnapshotInfo, StoreError};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;

/// Events read from the log per page.
const PAGE: usize = 10_000;
/// Snapshots kept on disk; the older is the fallback if the newest cannot be used.
const KEEP: usize = 2;

/// What start-up rebuilt.
pub struct Loaded {
    pub state: State,
    /// Position of the snapshot the state started from, if one was used.
    pub snapshot: Option<u64>,
    /// Events folded on top of it (the whole log without a snapshot).
    pub folded: u64,
}

/// The state of the whole log: the newest usable snapshot, then every event after it.
pub fn load(store: &dyn EventStore, rules: Rules) -> Result<Loaded, StoreError> {
    let mut restored = None;
    if let Some(dir) = store.snapshots() {
        match dir.list() {
            Ok(list) => {
                for info in &list {
                    match restore(store, dir, info, rules) {
                        Ok(s) => {
                            restored = Some(s);
                            break;
                        }
                        Err(why) => tracing::warn!(
                            position = info.position,
                            file = %info.path().display(),
                            "snapshot ignored: {why}"
                        ),
                    }
                }
                if restored.is_none() && !list.is_empty() {
                    tracing::warn!("no usable snapshot; folding the whole log");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "snapshots cannot be listed; folding the whole log")
            }
        }
    }
    let snapshot = restored.as_ref().map(State::position);
    let mut state = restored.unwrap_or_else(|| State::new(rules));
    let folded = fold(store, &mut state)?;
    Ok(Loaded {
        state,
        snapshot,
        folded,
    })
}

/// The state stored in `info`, if it may be trusted for this log; otherwise why not.
fn restore(
    store: &dyn EventStore,
    dir: &SnapshotDir,
    info: &SnapshotInfo,
    rules: Rules,
) -> Result<State, String> {
    if info.schema != SCHEMA {
        return Err(format!(
            "it has state schema {}, this build reads {SCHEMA}",
            info.schema
        ));
    }
    let at = store
        .read_raw(info.position.saturating_sub(1), 1)
        .map_err(|e| e.to_string())?;
    match at.first() {
        Some(e) if e.position == info.position && e.hash == info.hash => {}
        Some(e) if e.position == info.position => {
            return Err(format!(
                "the log's event at position {} has another hash (the snapshot is not of this log)",
                info.position
            ));
        }
        _ => {
            return Err(format!(
                "the log has no event at position {}",
                info.position
            ));
        }
    }
    let bytes = dir.read(info).map_err(|e| e.to_string())?;
    let state = snap::decode(&bytes, rules).map_err(|e| e.to_string())?;
    if state.position() != info.position {
        return Err(format!(
            "it holds the state at position {}, its header says {}",
            state.position(),
            info.position
        ));
    }
    Ok(state)
}

/// Folds every event after `state.position()` into `state`; returns how many.
fn fold(store: &dyn EventStore, state: &mut State) -> Result<u64, StoreError> {
    let mut after = state.position();
    let mut folded = 0;
    loop {
        let page = store.read(after, PAGE)?;
        let Some(last) = page.last() else { break };
        after = last.position;
        folded += page.len() as u64;
        // The page is not needed afterwards: the state takes its strings instead of copying.
        for mut r in page {
            state.evolve_take(&mut r);
        }
    }
    Ok(folded)
}

/// Encodes `state` and writes it as the snapshot of its position; prunes older ones.
pub fn write(store: &dyn EventStore, state: &State) -> Result<Option<SnapshotInfo>, String> {
    let (Some(dir), position) = (store.snapshots(), state.position()) else {
        return Ok(None);
    };
    if position == 0 {
        return Ok(None);
    }
    let at = store.read_raw(position - 1, 1).map_err(|e| e.to_string())?;
    let hash = match at.first() {
        Some(e) if e.position == position => e.hash,
        _ => return Err(format!("the log has no event at position {position}")),
    };
    let info = dir
        .write(position, hash, SCHEMA, |out| snap::encode_to(state, out))
        .map_err(|e| e.to_string())?;
    dir.prune(KEEP, position).map_err(|e| e.to_string())?;
    Ok(Some(info))
}

/// The background snapshot writer. Dropping it stops the thread after the snapshot it may be
/// writing.
pub struct Snapshotter {
    wake: Option<mpsc::SyncSender<State>>,
    /// Position from which the next snapshot is due; `u64::MAX` while one is being written, or
    /// when disabled.
    due: Arc<AtomicU64>,
    every: u64,
    /// Whether the state has been due and not the fold of a prefix for `every` events or more
    /// (reported once per such stretch: [`Snapshotter::stalls`]).
    stalled: AtomicBool,
    stalls: AtomicU64,
}

impl Snapshotter {
    /// Starts the writer for a log whose newest snapshot is at `base` (0: none); `every == 0`
    /// or a store without snapshots disables it.
    pub fn start(store: Arc<dyn EventStore>, every: u64, base: u64) -> Snapshotter {
        let due = Arc::new(AtomicU64::new(u64::MAX));
        let mut wake = None;
        if every > 0 && store.snapshots().is_some() {
            let (tx, rx) = mpsc::sync_channel(1);
            let worker = Worker {
                store,
                every,
                written: base,
                due: due.clone(),
            };
            match std::thread::Builder::new()
                .name("palmgate-snapshots".into())
                .spawn(move || worker.run(rx))
            {
                Ok(_) => {
                    due.store(base.saturating_add(every), Ordering::Relaxed);
                    wake = Some(tx);
                }
                Err(e) => tracing::error!(error = %e, "snapshot writer not started"),
            }
        }
        Snapshotter {
            wake,
            due,
            every,
            stalled: AtomicBool::new(false),
            stalls: AtomicU64::new(0),
        }
    }

    /// Called with the state after each fold, under its write lock (or before anything else
    /// can reach it): when a snapshot is due and the state is the fold of exactly `1..=p`,
    /// hands the writer a clone (module docs). Never blocks.
    ///
    /// A state that stays due without being such a fold for `every` events more (an event
    /// durable in the log but never folded in: not seen in practice) would write no snapshot
    /// until a restart, and start-up would fold ever more of the log: that is logged, once per
    /// such stretch, and counted in `palmgate_snapshots_stalled_total`.
    pub fn observe(&self, state: &State) {
        let due = self.due.load(Ordering::Relaxed);
        if state.position() < due {
            return;
        }
        if !state.is_prefix() {
            if state.position() - due >= self.every && !self.stalled.swap(true, Ordering::Relaxed) {
                self.stalls.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("palmgate_snapshots_stalled_total").increment(1);
                tracing::warn!(
                    position = state.position(),
                    folded = state.folded(),
                    due,
                    "no state snapshot for {} events past due: the state is not the fold of \
                     every event up to its position (a durable event was not folded in); \
                     snapshots resume once it is, or at the next start",
                    state.position() - due
                );
            }
            return;
        }
        self.stalled.store(false, Ordering::Relaxed);
        let Some(tx) = &self.wake else { return };
        // Not due again until the writer says when (it is the only one that lowers it).
        self.due.store(u64::MAX, Ordering::Relaxed);
        if let Err(mpsc::TrySendError::Full(_)) = tx.try_send(state.snapshot_copy()) {
            // Cannot happen (one at a time, `due` says so); never lose the schedule if it did.
            tracing::warn!("snapshot writer busy; state snapshot skipped");
        }
    }

    /// How many times snapshots were found stalled ([`Snapshotter::observe`]).
    pub fn stalls(&self) -> u64 {
        self.stalls.load(Ordering::Relaxed)
    }

    /// Whether a snapshot is due at `position` (tests, diagnostics).
    pub fn due_at(&self, position: u64) -> bool {
        position >= self.due.load(Ordering::Relaxed)
    }
}

struct Worker {
    store: Arc<dyn EventStore>,
    every: u64,
    /// Position of the newest snapshot on disk (0: none).
    written: u64,
    due: Arc<AtomicU64>,
}

impl Worker {
    fn run(mut self, states: mpsc::Receiver<State>) {
        crate::background_priority();
        while let Ok(state) = states.recv() {
            let next = match self.step(&state) {
                Ok(records) => self.written.saturating_add(interval(self.every, records)),
                Err(e) => {
                    tracing::error!(error = %e, "state snapshot not written");
                    // Try again `every` events later, not at every fold.
                    state.position().saturating_add(self.every)
                }
            };
            // The clone's chunks the live state has copied since are freed here, off the
            // request path.
            drop(state);
            crate::release_thread_memory();
            self.due.store(next, Ordering::Relaxed);
        }
    }

    /// Writes `state`; returns how many records it holds.
    fn step(&mut self, state: &State) -> Result<u64, String> {
        let started = std::time::Instant::now();
        let records = records(state);
        if let Some(info) = write(&*self.store, state)? {
            self.written = info.position;
            tracing::info!(
                position = info.position,
                bytes = info.len,
                ms = started.elapsed().as_millis() as u64,
                records,
                "state snapshot written"
            );
        }
        Ok(records)
    }
}

/// How far a snapshot may stretch its interval past `store.snapshot_every` as the state grows.
const STRETCH: u64 = 3;

/// Events from a snapshot of a state holding `records` records to the next: as many as the
/// state holds, at least `every` and at most [`STRETCH`] × `every`. A snapshot costs time in
/// proportion to the state; with a fixed interval its cost per event grew with the state (at
/// 1M sessions and every 100 000 events, ten sessions re-encoded per new event), where this
/// keeps it about constant until the cap. The cap bounds start-up: at most
/// `STRETCH × every` events are folded after the snapshot (~0.8 s for 300 000 identify events
/// on the gateway box, BENCHMARKS.md §2 session 8).
fn interval(every: u64, records: u64) -> u64 {
    records.clamp(every, every.saturating_mul(STRETCH))
}

/// What a snapshot's cost grows with: the sessions, users, deliveries and idempotency keys the
/// state holds.
fn records(state: &State) -> u64 {
    (state.sessions.len() + state.users.len() + state.deliveries.len() + state.idempotency.len())
        as u64
}

#[cfg(test)]
mod interval_tests {
    use super::interval;

    #[test]
    fn the_interval_follows_the_state_between_every_and_three_times_every() {
        assert_eq!(interval(100_000, 0), 100_000);
        assert_eq!(interval(100_000, 99_999), 100_000);
        assert_eq!(interval(100_000, 250_000), 250_000);
        assert_eq!(interval(100_000, 300_000), 300_000);
        assert_eq!(interval(100_000, 5_000_000), 300_000);
        assert_eq!(interval(u64::MAX / 2, 0), u64::MAX / 2);
        assert_eq!(interval(u64::MAX / 2, u64::MAX), u64::MAX);
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    /// The snapshot thread runs under `SCHED_IDLE`; the thread that spawned it keeps its own
    /// policy.
    #[test]
    fn background_priority_lowers_only_the_calling_thread() {
        // SAFETY: sched_getscheduler(2) only reads its integer argument (0 = the calling thread).
        let policy = || unsafe { libc::sched_getscheduler(0) };
        let before = policy();
        let inside = std::thread::spawn(move || {
            crate::background_priority();
            policy()
        })
        .join()
        .unwrap();
        assert_eq!(inside, libc::SCHED_IDLE);
        assert_eq!(policy(), before);
        assert_ne!(before, libc::SCHED_IDLE);
    }
}
