//! The shared backend: KurrentDB / EventStoreDB (`store.url = "esdb://..."`), for sites where
//! several gateways share users, policy and the audit log. Built with the `kurrentdb` cargo
//! feature only.
//!
//! **One KurrentDB stream holds the whole palmgate log** ([`LOG_STREAM`] by default), every
//! palmgate event in order, one KurrentDB event each:
//!
//! - the KurrentDB event type is the palmgate type; its data is the palmgate data text, byte for
//!   byte (the hash covers those bytes); its id is derived from the event's hash, so a resent
//!   append is recognised by the server's idempotency check;
//! - its (custom) metadata, JSON, carries the palmgate envelope: `position`, logical `stream`,
//!   `revision`, `version`, `recorded_at`, `prev_hash` and `hash` (hex).
//!
//! The global position is the KurrentDB stream revision + 1, so positions are gapless and
//! 1-based as the trait requires, and the chain is one chain over the whole site. Logical streams
//! (`user-…`, `policy`, `door-…`) exist only in the envelope: their heads are kept in memory,
//! rebuilt by reading the log at start-up (as the SQLite backend, the store does not verify the
//! chain when it opens: `palmgate audit verify` does).
//!
//! **Appends** take the queued requests (group commit, as the SQLite backend), check each
//! logical stream's expected revision against the heads, seal the events after the chain head
//! and append them in ONE KurrentDB append with `StreamState::StreamRevision(head)` — so the
//! gateways sharing the log serialise on the server. When another gateway got there first
//! (`WrongExpectedVersion`), the store reads the new events (checking their chain links), updates
//! its heads, passes them on to [`EventStore::follow_others`], re-checks every request against
//! the new heads (a request whose stream moved is refused with [`StoreError::Conflict`], the
//! rest are re-sealed) and retries. Before refusing a request on its own heads the store reads
//! the log's tail once: they may lag what the app has already read (the subscription is
//! behind), and a conflict the app cannot resolve by waiting would make it give up.
//!
//! **Following other gateways**: a catch-up subscription to the log stream delivers every new
//! event; the ones this store did not write itself are checked (position, link, hash), folded
//! into the heads and handed to the app through [`EventStore::follow_others`], in order.
//!
//! **Failures**: an append that fails for any reason but a conflict marks the store unhealthy
//! (the server stops taking new work); every [`PROBE_EVERY`] it reads the log's tail and is
//! healthy again once that works (events the failed append may have written after all are then
//! read back like another gateway's). An event that does not link, does not hash, or cannot be
//! decoded (a newer palmgate's event type) stops the store for good: restart (or upgrade) the
//! gateway. There is no local buffering: while KurrentDB is unreachable this gateway refuses
//! work that must be logged (see deploy/README.md, "Multi-gateway").
//!
//! All network work runs on the store's own small tokio runtime, so the synchronous trait
//! methods ([`EventStore::read_raw`]) can wait for it from any thread, inside or outside another
//! runtime.

use super::chain::RawEvent;
use super::group::{Forgetting, StagedGroup, WriteReq, answer, stage_group};
use super::{BoxFuture, EventStore, StoreError};
use crate::core::{Recorded, StreamAppend};
use chrono::{DateTime, Utc};
use kurrentdb::{
    AppendToStreamOptions, Client, ClientSettings, EventData, ReadStreamOptions, RetryOptions,
    StreamPosition, StreamState, SubscribeToStreamOptions,
};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// The KurrentDB stream holding the palmgate log (every gateway of a site uses the same).
pub const LOG_STREAM: &str = "palmgate-log";

/// How often an unhealthy store checks whether KurrentDB answers again.
pub const PROBE_EVERY: Duration = Duration::from_millis(500);

/// Most requests one group append takes.
const MAX_GROUP: usize = 1024;

/// A group stops taking requests past this many bytes (KurrentDB refuses appends over its
/// `MaxAppendSize`, 1 MiB by default).
const MAX_GROUP_BYTES: usize = 512 * 1024;

/// How many times one group is re-sealed after losing the race for the log's head.
const MAX_ATTEMPTS: usize = 16;

/// How long [`KurrentStore::close`] waits for queued appends.
pub const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Page size of reads done for the store itself (start-up scan, catch-up, backfill).
const PAGE: usize = 4096;

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(format!("KurrentDB: {e}"))
}

/// The palmgate envelope of one event, as KurrentDB metadata.
#[derive(Serialize, Deserialize)]
struct Meta {
    position: u64,
    stream: String,
    revision: u64,
    version: u32,
    recorded_at: String,
    prev_hash: String,
    hash: String,
}

fn to_event_data(row: &RawEvent) -> Result<EventData, StoreError> {
    // The data text goes out verbatim (a RawValue serialises as exactly its text).
    let data = serde_json::value::RawValue::from_string(row.data.clone())
        .map_err(|e| io(format!("event data at {}: {e}", row.position)))?;
    let meta = Meta {
        position: row.position,
        stream: row.stream.clone(),
        revision: row.revision,
        version: row.version,
        recorded_at: row.recorded_at.clone(),
        prev_hash: hex::encode(row.prev_hash),
        hash: hex::encode(row.hash),
    };
    let mut id = [0u8; 16];
    id.copy_from_slice(&row.hash[..16]);
    EventData::json(&row.kind, &data)
        .and_then(|e| e.metadata_as_json(&meta))
        .map(|e| e.id(uuid::Builder::from_random_bytes(id).into_uuid()))
        .map_err(|e| io(format!("event at {}: {e}", row.position)))
}

fn from_recorded(e: &kurrentdb::RecordedEvent) -> Result<RawEvent, StoreError> {
    let position = e.revision + 1;
    let corrupt = |reason: String| StoreError::Corrupt { position, reason };
    let meta: Meta = serde_json::from_slice(&e.custom_metadata)
        .map_err(|err| corrupt(format!("not a palmgate event (metadata: {err})")))?;
    if meta.position != position {
        return Err(corrupt(format!(
            "stored at revision {} but its envelope says position {}",
            e.revision, meta.position
        )));
    }
    let hash = |name: &str, text: &str| -> Result<[u8; 32], StoreError> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(text, &mut out).map_err(|err| corrupt(format!("{name}: {err}")))?;
        Ok(out)
    };
    Ok(RawEvent {
        position,
        stream: meta.stream,
        revision: meta.revision,
        kind: e.event_type.clone(),
        version: meta.version,
        data: String::from_utf8(e.data.to_vec())
            .map_err(|err| corrupt(format!("data is not UTF-8: {err}")))?,
        recorded_at: meta.recorded_at,
        prev_hash: hash("prev_hash", &meta.prev_hash)?,
        hash: hash("hash", &meta.hash)?,
    })
}

/// Up to `limit` events with position > `after`, straight from the server.
async fn read_page(
    client: &Client,
    stream: &str,
    after: u64,
    limit: usize,
) -> Result<Vec<RawEvent>, StoreError> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    // Position p is revision p - 1: the first event after `after` is revision `after`.
    let options = ReadStreamOptions::default()
        .position(StreamPosition::Position(after))
        .forwards()
        .max_count(limit);
    let mut events = match client.read_stream(stream, &options).await {
        Ok(s) => s,
        Err(kurrentdb::Error::ResourceNotFound) => return Ok(Vec::new()),
        Err(e) => return Err(io(e)),
    };
    let mut out = Vec::new();
    loop {
        match events.next().await {
            Ok(Some(e)) => out.push(from_recorded(e.get_original_event())?),
            Ok(None) => return Ok(out),
            // The stream does not exist yet: an empty log.
            Err(kurrentdb::Error::ResourceNotFound) => return Ok(out),
            Err(e) => return Err(io(e)),
        }
    }
}

struct Heads {
    position: u64,
    hash: [u8; 32],
    streams: super::group::Heads,
}

impl Heads {
    fn empty() -> Heads {
        Heads {
            position: 0,
            hash: [0; 32],
            streams: Default::default(),
        }
    }

    /// What the KurrentDB stream must be at for an append after these heads.
    fn stream_state(&self) -> StreamState {
        match self.position {
            0 => StreamState::NoStream,
            p => StreamState::StreamRevision(p - 1),
        }
    }
}

/// Reads the whole log into the heads (start-up).
async fn scan(client: &Client, stream: &str) -> Result<Heads, StoreError> {
    let mut heads = Heads::empty();
    loop {
        let page = read_page(client, stream, heads.position, PAGE).await?;
        if page.is_empty() {
            return Ok(heads);
        }
        for e in page {
            heads.position = e.position;
            heads.hash = e.hash;
            heads.streams.insert(e.stream, e.revision);
        }
    }
}

impl WriteReq {
    fn bytes(&self) -> usize {
        self.batch
            .iter()
            .flat_map(|a| &a.events)
            .map(|e| e.data.len() + ENVELOPE_BYTES)
            .sum()
    }
}

/// Rough size of one event's envelope (metadata, type, id) on the wire.
const ENVELOPE_BYTES: usize = 400;

enum Msg {
    Append(WriteReq),
    Follow {
        after: u64,
        feed: mpsc::UnboundedSender<Vec<Recorded>>,
    },
}

/// The KurrentDB backend. See the module documentation.
pub struct KurrentStore {
    tx: Mutex<Option<mpsc::UnboundedSender<Msg>>>,
    client: Client,
    stream: String,
    healthy: Arc<AtomicBool>,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    handle: tokio::runtime::Handle,
    /// Disconnects when the actor has answered every queued request and stopped.
    stopped: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
    forgetting: Arc<Forgetting>,
}

impl KurrentStore {
    /// Connects to the KurrentDB at `url` (`esdb://`, `kurrentdb://`, `+discover` for a
    /// cluster), reads the log in `stream` (its stream heads and chain head) and starts following
    /// it. Blocks until the log has been read; an unreachable server is an error.
    pub fn open(url: &str, stream: &str) -> Result<KurrentStore, StoreError> {
        // The client's reqwest builds its rustls config from the process default provider, and
        // with the client in the tree both `ring` and `aws-lc-rs` are compiled in: name one
        // (the one the rest of palmgate uses). An error only means one is installed already.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let settings: ClientSettings = url
            .parse()
            .map_err(|e| StoreError::Io(format!("store.url: {e}")))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("palmgate-kurrentdb")
            .enable_all()
            .build()
            .map_err(io)?;
        let handle = runtime.handle().clone();
        let name = stream.to_string();
        let opened = block_on(&handle, async move {
            let client = Client::new(settings).map_err(io)?;
            let heads = scan(&client, &name).await?;
            Ok((client, heads))
        });
        let (client, heads) = match opened {
            Ok(o) => o,
            Err(e) => {
                // Not `drop`: the caller may be inside another runtime.
                runtime.shutdown_background();
                return Err(match e {
                    StoreError::Io(why) => StoreError::Io(format!(
                        "cannot read the log `{stream}` at store.url: {why}"
                    )),
                    other => other,
                });
            }
        };
        tracing::info!(
            stream,
            events = heads.position,
            streams = heads.streams.len(),
            "KurrentDB log read"
        );
        let healthy = Arc::new(AtomicBool::new(true));
        let (tx, rx) = mpsc::unbounded_channel();
        let forgetting = Arc::new(Forgetting::default());
        let actor = Actor {
            forgetting: forgetting.clone(),
            client: client.clone(),
            stream: stream.to_string(),
            heads,
            healthy: healthy.clone(),
            broken: false,
            follower: None,
            follow_after: 0,
            own: Vec::new(),
        };
        let (done, stopped) = std::sync::mpsc::channel::<()>();
        handle.spawn(async move {
            actor.run(rx).await;
            drop(done);
        });
        Ok(KurrentStore {
            tx: Mutex::new(Some(tx)),
            client,
            stream: stream.to_string(),
            healthy,
            runtime: Mutex::new(Some(runtime)),
            handle,
            stopped: Mutex::new(Some(stopped)),
            forgetting,
        })
    }

    /// The KurrentDB stream this store keeps the log in.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// Stops the store after it has answered every queued append (waiting up to
    /// [`CLOSE_WAIT`] for KurrentDB); then the subscription ends and the connection closes.
    pub fn close(&self) {
        self.tx.lock().expect("store lock").take();
        if let Some(stopped) = self.stopped.lock().expect("store lock").take() {
            let _ = stopped.recv_timeout(CLOSE_WAIT);
        }
        if let Some(rt) = self.runtime.lock().expect("store lock").take() {
            // Not `drop`: the caller may be inside another runtime.
            rt.shutdown_background();
        }
    }
}

impl Drop for KurrentStore {
    fn drop(&mut self) {
        self.close();
    }
}

/// Runs `fut` on the store's runtime and waits for it on this thread (which may belong to
/// another runtime: the work itself never runs here).
fn block_on<T: Send + 'static>(
    handle: &tokio::runtime::Handle,
    fut: impl std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
) -> Result<T, StoreError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    handle.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv().map_err(|_| StoreError::Closed)?
}

impl EventStore for KurrentStore {
    fn append(
        &self,
        batch: Vec<StreamAppend>,
        recorded_at: DateTime<Utc>,
    ) -> BoxFuture<'static, Result<Vec<Recorded>, StoreError>> {
        let (req, rx) = WriteReq::new(batch, recorded_at);
        let sent = self
            .tx
            .lock()
            .expect("store lock")
            .as_ref()
            .is_some_and(|tx| tx.send(Msg::Append(req)).is_ok());
        Box::pin(async move {
            if !sent {
                return Err(StoreError::Closed);
            }
            rx.await.map_err(|_| StoreError::Closed)?
        })
    }

    fn read_raw(&self, after: u64, limit: usize) -> Result<Vec<RawEvent>, StoreError> {
        let client = self.client.clone();
        let stream = self.stream.clone();
        block_on(&self.handle, async move {
            read_page(&client, &stream, after, limit).await
        })
    }

    fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    fn forget_streams(&self, streams: Vec<String>) {
        self.forgetting.forget(streams);
    }

    fn retain_streams(&self, keep: std::collections::HashMap<String, u64>, as_of: u64) {
        self.forgetting.retain(keep, as_of);
    }

    fn follow_others(&self, after: u64) -> Option<mpsc::UnboundedReceiver<Vec<Recorded>>> {
        let (feed, rx) = mpsc::unbounded_channel();
        if let Some(tx) = self.tx.lock().expect("store lock").as_ref() {
            let _ = tx.send(Msg::Follow { after, feed });
        }
        Some(rx)
    }
}

/// What the subscription task reports.
enum Appeared {
    /// The next event of the log (or why it cannot be read).
    Event(Result<RawEvent, StoreError>),
    /// The subscription ended for good (after the client's own retries).
    Lost(StoreError),
}

/// Follows the log from after `last` (a position; 0: from the start) and forwards every event.
/// Reconnects by itself (the client's retry); returns on an error it gives up on.
async fn subscribe(
    client: Client,
    stream: String,
    last: u64,
    out: mpsc::UnboundedSender<Appeared>,
) {
    let start = match last {
        0 => StreamPosition::Start,
        // Subscriptions start AFTER the given revision; position `last` is revision `last - 1`.
        p => StreamPosition::Position(p - 1),
    };
    let options = SubscribeToStreamOptions::default()
        .start_from(start)
        .retry_options(
            RetryOptions::default()
                .retry_forever()
                .retry_delay(PROBE_EVERY),
        );
    let mut sub = client.subscribe_to_stream(stream.as_str(), &options).await;
    loop {
        let item = match sub.next().await {
            Ok(e) => Appeared::Event(from_recorded(e.get_original_event())),
            Err(e) => {
                let e = io(format!("subscription to {stream} ended: {e}"));
                let _ = out.send(Appeared::Lost(e));
                return;
            }
        };
        if out.send(item).is_err() {
            return;
        }
    }
}

/// Owns the heads and the follower; every append and every observed event passes through it,
/// one at a time.
struct Actor {
    client: Client,
    stream: String,
    heads: Heads,
    healthy: Arc<AtomicBool>,
    /// The log holds something this store cannot fold in: only a restart (or an upgrade) helps.
    broken: bool,
    follower: Option<mpsc::UnboundedSender<Vec<Recorded>>>,
    /// The follower already has every event up to here.
    follow_after: u64,
    /// Positions this store appended before a follower registered (never to be fed to it).
    own: Vec<(u64, u64)>,
    forgetting: Arc<Forgetting>,
}

impl Actor {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        let (sub_tx, mut sub_rx) = mpsc::unbounded_channel();
        let mut sub = tokio::spawn(subscribe(
            self.client.clone(),
            self.stream.clone(),
            self.heads.position,
            sub_tx.clone(),
        ));
        let mut probe = tokio::time::interval(PROBE_EVERY);
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                msg = rx.recv() => {
                    let Some(msg) = msg else { break };
                    let mut group = Vec::new();
                    let mut bytes = 0;
                    let mut next = Some(msg);
                    while let Some(msg) = next.take() {
                        match msg {
                            Msg::Follow { after, feed } => self.register(after, feed).await,
                            Msg::Append(req) => {
                                bytes += req.bytes();
                                group.push(req);
                            }
                        }
                        if group.len() < MAX_GROUP && bytes < MAX_GROUP_BYTES {
                            next = rx.try_recv().ok();
                        }
                    }
                    if !group.is_empty() {
                        self.commit_group(group).await;
                    }
                }
                item = sub_rx.recv() => match item {
                    Some(Appeared::Event(Ok(e))) => self.appeared(e).await,
                    Some(Appeared::Event(Err(e))) => match e {
                        StoreError::Corrupt { position, .. }
                            if position > self.heads.position && !self.broken =>
                        {
                            self.fail_for_good(&e)
                        }
                        _ => {}
                    },
                    Some(Appeared::Lost(e)) => {
                        tracing::warn!(error = %e, "KurrentDB subscription lost; resubscribing");
                        tokio::time::sleep(PROBE_EVERY).await;
                        sub = tokio::spawn(subscribe(
                            self.client.clone(),
                            self.stream.clone(),
                            self.heads.position,
                            sub_tx.clone(),
                        ));
                    }
                    None => break,
                },
                _ = probe.tick(), if !self.healthy.load(Ordering::Acquire) && !self.broken => {
                    self.probe().await;
                }
            }
        }
        sub.abort();
    }

    fn fail_for_good(&mut self, e: &StoreError) {
        self.broken = true;
        self.healthy.store(false, Ordering::Release);
        tracing::error!(
            error = %e,
            position = self.heads.position,
            "the shared KurrentDB log holds an event this gateway cannot fold in; it stops \
             taking work (restart it, or upgrade it if another gateway runs a newer palmgate)"
        );
    }

    /// An event from the subscription.
    async fn appeared(&mut self, e: RawEvent) {
        if self.broken || e.position <= self.heads.position {
            return; // ours, or read already by a catch-up
        }
        if e.position == self.heads.position + 1 {
            if let Err(err) = self.observe(vec![e]) {
                self.fail_for_good(&err);
            }
        } else if let Err(err) = self.catch_up().await {
            tracing::warn!(error = %err, "KurrentDB catch-up failed");
        }
    }

    /// Reads everything after the heads (another gateway's appends) and folds it in.
    async fn catch_up(&mut self) -> Result<(), StoreError> {
        loop {
            let page = read_page(&self.client, &self.stream, self.heads.position, PAGE).await?;
            if page.is_empty() {
                return Ok(());
            }
            if let Err(e) = self.observe(page) {
                self.fail_for_good(&e);
                return Err(e);
            }
        }
    }

    /// Checks that `events` continue the chain, moves the heads past them and feeds them to the
    /// follower. Nothing is folded in past a bad event.
    fn observe(&mut self, events: Vec<RawEvent>) -> Result<(), StoreError> {
        let mut fed = Vec::new();
        let mut result = Ok(());
        for e in events {
            if e.position <= self.heads.position {
                continue;
            }
            let broken = |reason: &str| StoreError::Corrupt {
                position: e.position,
                reason: format!("does not continue the chain: {reason}"),
            };
            let checked = if e.position != self.heads.position + 1 {
                Err(broken(&format!(
                    "expected position {}",
                    self.heads.position + 1
                )))
            } else if e.prev_hash != self.heads.hash {
                Err(broken("prev_hash does not link to the previous event"))
            } else if e.computed_hash() != e.hash {
                Err(broken("hash does not match the event's bytes"))
            } else {
                e.decode()
            };
            let recorded = match checked {
                Ok(r) => r,
                Err(err) => {
                    result = Err(err);
                    break;
                }
            };
            self.heads.position = e.position;
            self.heads.hash = e.hash;
            self.heads.streams.insert(e.stream, e.revision);
            if self.follower.is_some() && recorded.position > self.follow_after {
                fed.push(recorded);
            }
        }
        // What did check out is folded in and fed, even when a later event does not.
        if !fed.is_empty()
            && let Some(f) = &self.follower
            && f.send(fed).is_err()
        {
            self.follower = None;
        }
        result
    }

    /// Registers the app's feed: first everything after `after` it has not seen (other than
    /// this store's own appends), then every further event from elsewhere.
    async fn register(&mut self, after: u64, feed: mpsc::UnboundedSender<Vec<Recorded>>) {
        let mut next = after;
        while next < self.heads.position {
            let page = match read_page(&self.client, &self.stream, next, PAGE).await {
                Ok(p) => p,
                Err(e) => {
                    // Without these the app would miss events for good.
                    self.fail_for_good(&e);
                    return;
                }
            };
            if page.is_empty() {
                break;
            }
            let mut batch = Vec::new();
            for e in page {
                if e.position > self.heads.position {
                    break;
                }
                next = e.position;
                if self.own.iter().any(|&(a, b)| (a..=b).contains(&e.position)) {
                    continue;
                }
                match e.decode() {
                    Ok(r) => batch.push(r),
                    Err(err) => {
                        self.fail_for_good(&err);
                        return;
                    }
                }
            }
            if !batch.is_empty() && feed.send(batch).is_err() {
                return;
            }
        }
        self.own.clear();
        self.follow_after = after.max(self.heads.position);
        self.follower = Some(feed);
    }

    /// Unhealthy: healthy again once the log's tail can be read (and is folded in).
    async fn probe(&mut self) {
        match self.catch_up().await {
            Ok(()) if !self.broken => {
                self.healthy.store(true, Ordering::Release);
                tracing::warn!("KurrentDB reachable again; accepting new work");
            }
            Ok(()) => {}
            Err(e) => tracing::debug!(error = %e, "KurrentDB still unreachable"),
        }
    }

    async fn commit_group(&mut self, mut group: Vec<WriteReq>) {
        if !self.healthy.load(Ordering::Acquire) {
            let why = if self.broken {
                "the shared log holds an event this gateway cannot fold in; restart it"
            } else {
                "KurrentDB cannot be written (an earlier write failed)"
            };
            for r in group {
                let _ = r.reply.send(Err(StoreError::Io(why.into())));
            }
            return;
        }
        // Whether the heads were brought up to the log's tail for this group already.
        let mut caught_up = false;
        let mut attempt = 0;
        while attempt < MAX_ATTEMPTS {
            attempt += 1;
            self.forgetting
                .apply(&mut self.heads.streams, None, self.heads.position);
            // Stage every request against the heads.
            let StagedGroup {
                position,
                hash,
                staged,
                accepted,
                refused,
            } = stage_group(
                &self.heads.streams,
                None,
                self.heads.position,
                self.heads.hash,
                group,
            );
            // The heads may lag the log (the subscription is behind what the app has read
            // already): before refusing anything, read the tail once and stage again.
            if !refused.is_empty() && !caught_up {
                caught_up = true;
                match self.catch_up().await {
                    Ok(()) => {
                        group = accepted
                            .into_iter()
                            .map(|(req, _)| req)
                            .chain(refused.into_iter().map(|(req, _)| req))
                            .collect();
                        attempt -= 1;
                        continue;
                    }
                    Err(e) => tracing::warn!(error = %e, "KurrentDB catch-up failed"),
                }
            }
            for (req, e) in refused {
                let _ = req.reply.send(Err(e));
            }
            if accepted.is_empty() {
                return;
            }
            let events: Result<Vec<EventData>, StoreError> = accepted
                .iter()
                .flat_map(|(_, rows)| rows)
                .map(to_event_data)
                .collect();
            let events = match events {
                Ok(e) => e,
                Err(e) => {
                    for (req, _) in accepted {
                        let _ = req.reply.send(Err(e.clone()));
                    }
                    return;
                }
            };
            let options = AppendToStreamOptions::default().stream_state(self.heads.stream_state());
            match self
                .client
                .append_to_stream(self.stream.as_str(), &options, events)
                .await
            {
                Ok(_) => {
                    let first = self.heads.position + 1;
                    self.heads.position = position;
                    self.heads.hash = hash;
                    self.heads.streams.extend(staged);
                    if self.follower.is_none() {
                        self.own.push((first, position));
                    }
                    for (req, rows) in accepted {
                        answer(req, rows);
                    }
                    return;
                }
                Err(kurrentdb::Error::WrongExpectedVersion { .. }) => {
                    // Another gateway appended first: read its events, then re-stage.
                    caught_up = true;
                    if let Err(e) = self.catch_up().await {
                        self.healthy.store(false, Ordering::Release);
                        for (req, _) in accepted {
                            let _ = req.reply.send(Err(e.clone()));
                        }
                        return;
                    }
                    group = accepted.into_iter().map(|(req, _)| req).collect();
                }
                Err(e) => {
                    // Unhealthy before anyone hears of the failure.
                    self.healthy.store(false, Ordering::Release);
                    let e = io(e);
                    tracing::error!(
                        error = %e,
                        "event store write failed; refusing new work until KurrentDB answers"
                    );
                    for (req, _) in accepted {
                        let _ = req.reply.send(Err(e.clone()));
                    }
                    return;
                }
            }
        }
        for req in group {
            let _ = req.reply.send(Err(StoreError::Io(
                "KurrentDB: lost the race for the log's head too many times".into(),
            )));
        }
    }
}
