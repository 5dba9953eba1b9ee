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
//! The writer never touches the request path: [`Snapshotter::observe`] (called after every fold)
//! only compares two integers and at most posts a wake-up. The writer thread builds the state
//! on its own the first time, exactly as start-up does (newest snapshot + the log after it),
//! encodes and writes it, and keeps it: each later snapshot folds only the events after the
//! previous one into that copy (the first way, it decoded the previous snapshot again each
//! time: ~6 % of the identify throughput, BENCHMARKS.md §2 session 10). The price is a second
//! copy of the state in memory from the first snapshot on. It takes no lock the request path
//! needs; it folds only durable events, so a snapshot at position `p` is exactly the fold of
//! events `1..=p`. `audit verify` never reads snapshots.

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
    load_until(store, rules, &AtomicBool::new(false), true)
}

fn load_until(
    store: &dyn EventStore,
    rules: Rules,
    stop: &AtomicBool,
    report: bool,
) -> Result<Loaded, StoreError> {
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
                        Err(why) if report => tracing::warn!(
                            position = info.position,
                            file = %info.path().display(),
                            "snapshot ignored: {why}"
                        ),
                        Err(_) => {}
                    }
                }
                if report && restored.is_none() && !list.is_empty() {
                    tracing::warn!("no usable snapshot; folding the whole log");
                }
            }
            Err(e) if report => {
                tracing::warn!(error = %e, "snapshots cannot be listed; folding the whole log")
            }
            Err(_) => {}
        }
    }
    let snapshot = restored.as_ref().map(State::position);
    let mut state = restored.unwrap_or_else(|| State::new(rules));
    let folded = fold(store, &mut state, stop)?;
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

/// Folds every event after `state.position()` into `state` (until `stop`); returns how many.
fn fold(store: &dyn EventStore, state: &mut State, stop: &AtomicBool) -> Result<u64, StoreError> {
    let mut after = state.position();
    let mut folded = 0;
    while !stop.load(Ordering::Relaxed) {
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

/// The background snapshot writer. Dropping it stops the thread (a snapshot in progress is
/// abandoned; its temporary file is removed by the next prune).
pub struct Snapshotter {
    wake: Option<mpsc::SyncSender<()>>,
    /// Position from which the next snapshot is due; `u64::MAX` when disabled.
    due: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Snapshotter {
    /// Starts the writer for a log whose newest snapshot is at `base` (0: none); `every == 0`
    /// or a store without snapshots disables it. With `keep`, the writer keeps its state
    /// between snapshots.
    pub fn start(
        store: Arc<dyn EventStore>,
        rules: Rules,
        every: u64,
        keep: bool,
        base: u64,
    ) -> Snapshotter {
        let due = Arc::new(AtomicU64::new(u64::MAX));
        let stop = Arc::new(AtomicBool::new(false));
        let mut wake = None;
        if every > 0 && store.snapshots().is_some() {
            let (tx, rx) = mpsc::sync_channel(1);
            let worker = Worker {
                store,
                rules,
                every,
                written: base,
                keep,
                kept: None,
                due: due.clone(),
                stop: stop.clone(),
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
        Snapshotter { wake, due, stop }
    }

    /// Called with the state's position after each fold: wakes the writer if a snapshot is
    /// due. Never blocks.
    pub fn observe(&self, position: u64) {
        if position >= self.due.load(Ordering::Relaxed)
            && let Some(tx) = &self.wake
        {
            let _ = tx.try_send(());
        }
    }
}

impl Drop for Snapshotter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

struct Worker {
    store: Arc<dyn EventStore>,
    rules: Rules,
    every: u64,
    /// Position of the newest snapshot on disk (0: none).
    written: u64,
    /// Whether to keep the state between snapshots (config `store.snapshot_keep_state`).
    keep: bool,
    /// The state the last snapshot was taken of, folded on from there at the next one.
    kept: Option<State>,
    due: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Worker {
    fn run(mut self, wake: mpsc::Receiver<()>) {
        crate::background_priority();
        while wake.recv().is_ok() && !self.stop.load(Ordering::Relaxed) {
            let due = self.due.load(Ordering::Relaxed);
            let next = match self.step() {
                Ok(records) => self.written.saturating_add(interval(self.every, records)),
                Err(e) => {
                    tracing::error!(error = %e, "state snapshot not written");
                    // Try again `every` events later, not at every fold.
                    due.saturating_add(self.every)
                }
            };
            self.due.store(next, Ordering::Relaxed);
            if self.kept.is_none() {
                // The state built for the snapshot is dropped by now: give its pages back.
                crate::release_thread_memory();
            }
        }
    }

    /// Brings the kept state up to the log's head (the first time, or after a failure: builds
    /// it as start-up does, newest snapshot + tail) and writes it; returns how many records the
    /// state holds. The state is kept for the next snapshot, which then folds only the events
    /// after it instead of decoding the previous snapshot again.
    fn step(&mut self) -> Result<u64, String> {
        let started = std::time::Instant::now();
        let (state, from, folded) = match self.kept.take() {
            Some(mut state) => {
                let from = state.position();
                let folded =
                    fold(&*self.store, &mut state, &self.stop).map_err(|e| e.to_string())?;
                (state, (from > 0).then_some(from), folded)
            }
            None => {
                let loaded = load_until(&*self.store, self.rules, &self.stop, false)
                    .map_err(|e| e.to_string())?;
                (loaded.state, loaded.snapshot, loaded.folded)
            }
        };
        let records = records(&state);
        if self.stop.load(Ordering::Relaxed) {
            return Ok(records);
        }
        if state.position() >= self.written.saturating_add(self.every)
            && let Some(info) = write(&*self.store, &state)?
        {
            self.written = info.position;
            tracing::info!(
                position = info.position,
                from,
                folded,
                bytes = info.len,
                ms = started.elapsed().as_millis() as u64,
                records,
                "state snapshot written"
            );
        }
        if self.keep {
            self.kept = Some(state);
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
