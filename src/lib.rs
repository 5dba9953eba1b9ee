//! # palmgate
//!
//! A palm-verification and door access-control gateway implementing the Alaqan Pass API.
//!
//! ## Layout
//! - [`core`] — PURE rules: ids, events, commands, `decide`/`evolve`, rate-limit arithmetic,
//!   the state snapshot encoding. No IO, no clock, no randomness.
//! - [`store`] — the hash-chained event log: the [`store::EventStore`] trait and the embedded
//!   SQLite backend with group commit; state snapshot files beside the log.
//! - [`app`] — the shell: the command pipeline (decide → append → evolve), projections rebuilt
//!   at start-up (newest valid snapshot + the log's tail) and snapshots written in the
//!   background, the `Clock` and `Rng` seams, secrets, upstream mode's calls to a remote Pass
//!   API, and `app::run`, the composition root.
//! - [`http`] — axum: the Pass API (`/v1`), hosted pages with en/kk/ru catalogs, the admin API,
//!   the single error-to-response mapping, the OpenAPI document, the upstream webhook hook,
//!   and the listener (HTTPS through rustls, time limits on slow clients).
//! - [`mqtt`] — readers: the embedded rumqttd broker, the rumqttc client, the SPEC 5 protocol.
//! - [`modbus`] — relay boards over tokio-modbus (TCP, RTU): pulse with read-back, resting
//!   states after reconnect, polled inputs; and a simulated board for tests and the demo.
//! - [`replay`] — audit: the log re-verified (hash chain, schema, every door decision
//!   re-derived), exported, and replayed under a new policy (what-if).
//! - [`synthetic`] — reference synthetic palms (stable identity per name plus per-scan noise).
//! - [`webhooks`] — the webhook dispatcher (outbox = the log) and the SSRF guard.
//! - [`demo`] — `palmgate demo`: the real server plus a simulated board, readers, site,
//!   partner and people, and the dashboard's virtual reader panel.
//! - [`config`] — layered configuration (embedded defaults → file → `PALMGATE_*` env).

/// mimalloc instead of glibc malloc for every binary that links palmgate (the server, tests,
/// benches): under load glibc's allocator took ~20 % of the request path's CPU (profiled in
/// BENCHMARKS.md §2). Not under `cfg(fuzzing)`: cargo-fuzz builds use AddressSanitizer, which
/// must see every allocation.
#[cfg(not(fuzzing))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Returns the memory this thread has freed to the operating system. mimalloc keeps freed
/// pages in the freeing thread's heap for reuse; a thread that frees a lot and then sleeps (the
/// snapshot thread, after dropping the state it built) would hold them until it runs again,
/// which showed as a lasting +10 MB step in the soak's RSS at the first snapshot.
pub fn release_thread_memory() {
    #[cfg(not(fuzzing))]
    // SAFETY: `mi_collect` takes a plain bool and only walks mimalloc's own heap structures.
    unsafe {
        libmimalloc_sys::mi_collect(true);
    }
}

/// Lowers the calling thread (on Linux, scheduling policy and nice are per thread) to
/// `SCHED_IDLE`: it runs only on a core nothing else wants. For work no request waits for (a
/// state snapshot folds the log and encodes the whole state; the store saves its stream heads)
/// on cores that requests and door decisions need more: under load it simply waits, on an idle
/// box it runs at full speed.
/// If `SCHED_IDLE` is refused, the thread falls back to nice +10 (at most 19), as before.
pub fn background_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: sched_setscheduler(2) reads the `sched_param` we pass and nothing else; `pid = 0`
    // is the calling thread. setpriority(2) only reads its integer arguments; `who = 0` with
    // PRIO_PROCESS is the calling thread on Linux. A failure leaves the thread as it was.
    unsafe {
        let param = libc::sched_param { sched_priority: 0 };
        if libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) != 0 {
            let now = libc::getpriority(libc::PRIO_PROCESS, 0);
            libc::setpriority(libc::PRIO_PROCESS, 0, (now + 10).min(19));
        }
    }
}

pub mod app;
pub mod config;
pub mod core;
pub mod demo;
pub mod http;
pub mod modbus;
pub mod mqtt;
pub mod replay;
pub mod store;
pub mod synthetic;
pub mod webhooks;
