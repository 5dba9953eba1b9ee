//! The shell: runs the core against the real world.
//!
//! The command pipeline is `decide → append (durable) → evolve → effects`: the state a caller
//! reads never holds a fact the log lacks, and no effect (a reader command, later a webhook or
//! a relay pulse) happens before the events that justify it are on disk. Expected-revision
//! conflicts (two requests racing for one stream) are retried against the newer state. A
//! background task sleeps until the core's next deadline and feeds it a `Tick`. [`start`] and
//! [`Server::serve`] are the composition root.

pub mod clock;
pub mod keystore;
pub mod limiter;
pub mod metrics;
pub mod readers;
pub mod relays;
pub mod secrets;
pub mod snapshot;
pub mod templates;
pub mod throttle;
pub mod upstream;

use crate::config::Config;
use crate::core::matcher::Index;
use crate::core::{
    Command, Decision, Effect, Outcome, Recorded, Rejection, Rules, SessionId, State, decide,
};
use crate::store::{EventStore, SqliteStore, StoreError};
use clock::{Clock, OsRng, Rng, SystemClock};
use keystore::KeyStore;
use limiter::Limiter;
use secrets::{AdminToken, Keys};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;
use templates::KeyWrap;
use tokio::sync::{Notify, broadcast, mpsc};

/// How often a command is re-decided after losing an expected-revision race.
const MAX_ATTEMPTS: usize = 8;

/// How long a command whose events erase users waits for their data keys' deletion before it
/// answers (`Landing::land`).
const KEY_WAIT: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("too much contention on one stream")]
    Contended,
    #[error("key store: {0}")]
    Keys(String),
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("event store: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Secrets(#[from] secrets::SecretsError),
    #[error("{0}")]
    KeyStore(#[from] keystore::KeyStoreError),
    #[error("config key `http.listen` (from {source_name}): cannot listen on {addr}: {reason}")]
    Bind {
        addr: SocketAddr,
        source_name: String,
        reason: String,
    },
    /// A configuration the log's content refuses (`matching.dim` against enrolled templates).
    #[error("{0}")]
    Config(String),
    #[error("MQTT: {0}")]
    Mqtt(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("{0}")]
    Unsupported(String),
}

/// Everything a request handler or adapter may use.
pub struct App {
    state: RwLock<State>,
    pub store: Arc<dyn EventStore>,
    pub clock: Arc<dyn Clock>,
    pub rng: Arc<dyn Rng>,
    pub keys: Keys,
    pub admin: AdminToken,
    /// The monitoring system's read-only token (`admin.monitor_token_sha256`).
    pub monitor: AdminToken,
    pub limiter: Limiter,
    pub config: Config,
    /// Base of hosted-page URLs, without a trailing slash.
    pub public_url: String,
    index: RwLock<Index>,
    pub(crate) keystore: KeyStore,
    /// Erased users' data keys waiting to be deleted (`App::destroy_keys`).
    doomed: readers::Doomed,
    wrap: KeyWrap,
    effects: mpsc::UnboundedSender<Effect>,
    sessions_changed: broadcast::Sender<SessionId>,
    recorded: broadcast::Sender<Recorded>,
    evolved: Notify,
    /// A site policy was activated ([`App::policy_activated`]), and how many were.
    policy_activation: Notify,
    policy_activations: std::sync::atomic::AtomicU64,
    /// Wakes the deadline loop ([`App::deadline_loop`]).
    wake: Notify,
    /// The instant (µs since the epoch) the deadline loop sleeps until; `i64::MAX` while it is
    /// awake or waits with no deadline.
    deadline_asleep_until: AtomicI64,
    /// Relay coils locked by [`App::lock_unrecorded`] while the log could not be written.
    locked_unrecorded: std::sync::Mutex<Vec<(String, u16)>>,
    outbox: Notify,
    snapshots: snapshot::Snapshotter,
    /// Upstream mode (`[upstream]`): the remote Pass API this gateway is a partner of.
    pub upstream: Option<upstream::Upstream>,
    /// This app, for the task that lands an append whose caller was cancelled ([`Landing`]).
    me: Weak<App>,
    /// Held while a partner is created (names are unique, [`App::execute_made`]).
    partner_creation: tokio::sync::Mutex<()>,
    /// Held while a reader is armed or a kiosk trigger binds one ([`App::execute_made`]).
    reader_binding: tokio::sync::Mutex<()>,
    /// Hosted pages' live event streams open now, per session, with the session's partner
    /// (bounded by the page handler).
    #[allow(clippy::type_complexity)]
    pub page_streams: std::sync::Mutex<
        std::collections::HashMap<SessionId, (Option<crate::core::PartnerId>, usize)>,
    >,
    /// The gateway's own link to the MQTT broker (not a reader's report, so not in the log):
    /// false from the MQTT client's start until its ConnAck, and from a lost connection until
    /// the next ConnAck (`mqtt::client`). While false no reader's status can be trusted: pages
    /// offer no reader and arm none, `/admin/v1/readers` says `broker_up: false`, `/readyz`
    /// answers 503. True in an app no MQTT client runs for.
    pub mqtt_up: std::sync::atomic::AtomicBool,
    /// Rejected reader messages written to the log ([`throttle`]); all are counted.
    pub rejects_logged: throttle::LogThrottle,
    /// With the built-in broker, the readers the log had online at start-up and not heard
    /// from since ([`App::expect_readers_back`]); `None` otherwise, or once the grace is over.
    unheard_readers: std::sync::Mutex<Option<std::collections::HashSet<crate::core::ReaderId>>>,
}

/// How long after the MQTT client starts a reader the log had online may take to reconnect to
/// a restarted built-in broker before it is recorded offline.
pub const READER_GRACE: Duration = Duration::from_secs(10);

/// How often a running gateway writes the log's head to its own log ([`App::log_head`]).
pub const HEAD_LOG_EVERY: Duration = Duration::from_secs(3600);

/// An append handed to the store, with the effects of its decision. Awaited by the command
/// that made it ([`Landing::land`]); if that command is cancelled first (its HTTP client hung
/// up, and hyper dropped the handler), the append is still in the store's hands and will
/// likely be made durable, so dropping the landing passes it to a task that folds it in and
/// performs its effects when it lands. Otherwise the state would stay behind the log until a
/// restart: the session `pending` that the log says ended, and every later command on its
/// stream waiting for a revision that never comes.
struct Landing<'a> {
    app: &'a App,
    append: Option<crate::store::BoxFuture<'static, Result<Vec<Recorded>, StoreError>>>,
    effects: Vec<Effect>,
}

impl Landing<'_> {
    /// Waits for the append; once it is durable, folds it in and performs the effects, with no
    /// await in between (nothing can cancel that part).
    async fn land(mut self) -> Result<(), StoreError> {
        let Some(append) = self.append.as_mut() else {
            return Ok(());
        };
        let result = append.await;
        self.append = None;
        let recorded = result?;
        let keys = self
            .app
            .landed(&recorded, std::mem::take(&mut self.effects));
        // An erasure answers once its users' data keys are destroyed, as long as that takes
        // a moment (the common case); a key store that makes them wait (locked, 5 s busy
        // timeout) does not hold the answer up: the keys go on the blocking pool when they can
        // (`App::destroy_keys`). Folded in and performed already: a cancel here loses nothing.
        if let Some(keys) = keys {
            let _ = tokio::time::timeout(KEY_WAIT, keys).await;
        }
        Ok(())
    }
}

impl Drop for Landing<'_> {
    fn drop(&mut self) {
        let Some(append) = self.append.take() else {
            return;
        };
        // Outside a runtime (shutting down) nothing can wait for it: the log has it, and the
        // next start-up folds it in.
        let (Some(app), Ok(runtime)) =
            (self.app.me.upgrade(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let effects = std::mem::take(&mut self.effects);
        runtime.spawn(async move {
            if let Ok(recorded) = append.await {
                tracing::info!(
                    events = recorded.len(),
                    "a command's caller went away before its events were durable; folded them in"
                );
                let _ = app.landed(&recorded, effects);
            }
        });
    }
}

/// What [`App::new`] needs besides the configuration.
pub struct Parts {
    pub store: Arc<dyn EventStore>,
    pub keystore: KeyStore,
    pub clock: Arc<dyn Clock>,
    pub rng: Arc<dyn Rng>,
    pub keys: Keys,
    pub public_url: String,
}

impl App {
    /// Builds the app: the state from the newest usable snapshot plus the log after it (the
    /// whole log without one), then the index of enrolled templates. Effects the core asks for
    /// arrive on the returned receiver.
    pub fn new(
        config: Config,
        parts: Parts,
    ) -> Result<(Arc<App>, mpsc::UnboundedReceiver<Effect>), StartError> {
        let rules = Rules {
            threshold: config.matching.threshold,
            min_quality: config.matching.min_quality,
            session_retention: retention(config.sessions.retention),
            delivery_retention: retention(config.webhooks.retention),
            ..Rules::default()
        };
        let loaded = snapshot::load(&*parts.store, rules)?;
        let mut state = loaded.state;
        // The store checks expected revisions against its own stream heads: those of streams
        // the state has forgotten (ended sessions past their retention, ...) are dropped there
        // too, now and whenever the state forgets more (`apply`).
        parts.store.retain_streams(
            state
                .streams()
                .filter_map(|s| Some((s.to_string(), state.revision(s)?)))
                .collect(),
            state.position(),
        );
        state.collect_forgotten();
        let wrap = KeyWrap::new(parts.keys.wrap_key());
        let index = readers::build_index(&state, &parts.keystore, &wrap, config.matching.dim)
            .map_err(|w| wrong_dimension(&config, &w))?;
        tracing::info!(
            events = state.position(),
            snapshot = loaded.snapshot,
            folded = loaded.folded,
            templates = index.len(),
            "projections rebuilt from the log"
        );
        warn_if_clock_behind(&*parts.store, state.position(), parts.clock.now());
        let snapshots = snapshot::Snapshotter::start(
            parts.store.clone(),
            config.store.snapshot_every,
            loaded.snapshot.unwrap_or(0),
        );
        snapshots.observe(&state);
        let (effects, effects_rx) = mpsc::unbounded_channel();
        let upstream = upstream::Upstream::new(&config.upstream, &config.mqtt.reader_language);
        let app = Arc::new_cyclic(|me| App {
            me: me.clone(),
            partner_creation: tokio::sync::Mutex::new(()),
            reader_binding: tokio::sync::Mutex::new(()),
            page_streams: Default::default(),
            mqtt_up: std::sync::atomic::AtomicBool::new(true),
            unheard_readers: std::sync::Mutex::new(None),
            rejects_logged: Default::default(),
            state: RwLock::new(state),
            admin: AdminToken::new(&config.admin.token, &config.admin.token_sha256),
            monitor: AdminToken::new("", &config.admin.monitor_token_sha256),
            limiter: Limiter::new(
                config.rate_limit.per_minute,
                config.rate_limit.unauthenticated_per_minute,
            ),
            store: parts.store,
            clock: parts.clock,
            rng: parts.rng,
            keys: parts.keys,
            config,
            public_url: parts.public_url.trim_end_matches('/').to_string(),
            index: RwLock::new(index),
            keystore: parts.keystore,
            doomed: Default::default(),
            wrap,
            effects,
            sessions_changed: broadcast::channel(1024).0,
            recorded: broadcast::channel(4096).0,
            evolved: Notify::new(),
            policy_activation: Notify::new(),
            policy_activations: Default::default(),
            wake: Notify::new(),
            deadline_asleep_until: AtomicI64::new(i64::MAX),
            locked_unrecorded: Default::default(),
            outbox: Notify::new(),
            snapshots,
            upstream,
        });
        app.destroy_erased_keys();
        Ok((app, effects_rx))
    }

    /// Runs `f` against the current state (read lock held only for `f`).
    pub fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.state.read().expect("state lock"))
    }

    /// Session ids whose state changed (for live pages).
    pub fn session_changes(&self) -> broadcast::Receiver<SessionId> {
        self.sessions_changed.subscribe()
    }

    /// Every event as it is recorded (for live feeds).
    pub fn recorded_events(&self) -> broadcast::Receiver<Recorded> {
        self.recorded.subscribe()
    }

    /// A fresh session id: time-ordered (UUID version 7, README) from the clock, its random
    /// bits from the rng.
    pub fn new_session_id(&self) -> SessionId {
        let unix_ms = u64::try_from(self.clock.now().timestamp_millis()).unwrap_or(0);
        SessionId::time_ordered(unix_ms, self.rng.bytes16())
    }

    /// The configured session lifetime.
    pub fn ttl(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.config.sessions.ttl)
            .unwrap_or(chrono::Duration::minutes(15))
    }

    /// Decides `cmd`, makes its events durable, folds them in, performs its effects.
    pub async fn execute(&self, cmd: Command) -> Result<Outcome, AppError> {
        self.execute_with(cmd, |_| Ok(())).await
    }

    /// As [`App::execute`], running `before_append` on the decision first (e.g. to store a
    /// data key the events will reference).
    pub async fn execute_with(
        &self,
        cmd: Command,
        before_append: impl Fn(&Decision) -> Result<(), AppError>,
    ) -> Result<Outcome, AppError> {
        self.execute_made(|| &cmd, before_append).await
    }

    /// As [`App::execute_with`], making the command afresh for every attempt: a capture
    /// searches the index again when its first decision met a conflict (the best match it
    /// carried may have been erased since).
    pub async fn execute_made<C: std::borrow::Borrow<Command>>(
        &self,
        make: impl Fn() -> C,
        before_append: impl Fn(&Decision) -> Result<(), AppError>,
    ) -> Result<Outcome, AppError> {
        // Partner names are unique: creations are decided one at a time, each against the state
        // holding the ones before it (two at once would both find their name free). So are the
        // commands that bind a reader to a session: which session holds a reader is read
        // across streams, so two enrollments of two partners armed at once would each find
        // the reader free, and both would be armed there.
        let mut one_at_a_time = None;
        for _ in 0..MAX_ATTEMPTS {
            let cmd = make();
            if one_at_a_time.is_none() {
                match cmd.borrow() {
                    Command::CreatePartner { .. } => {
                        one_at_a_time = Some(self.partner_creation.lock().await)
                    }
                    Command::ArmReader { .. } | Command::Trigger { .. } => {
                        one_at_a_time = Some(self.reader_binding.lock().await)
                    }
                    _ => {}
                }
            }
            let now = self.clock.now();
            let mut decision = self.read(|s| decide(s, cmd.borrow(), now))?;
            // An append without events is a condition on what the decision read (its stream
            // unchanged since): sent along with events, dropped when there are none.
            if decision.appends.iter().all(|a| a.events.is_empty()) {
                decision.appends.clear();
            }
            if decision.appends.is_empty() {
                self.perform(decision.effects);
                return Ok(decision.outcome);
            }
            before_append(&decision)?;
            let appends = std::mem::take(&mut decision.appends);
            let landing = Landing {
                app: self,
                append: Some(self.store.append(appends, now)),
                effects: std::mem::take(&mut decision.effects),
            };
            match landing.land().await {
                Ok(()) => return Ok(decision.outcome),
                Err(StoreError::Conflict { stream, actual, .. }) => {
                    self.wait_for(&stream, actual).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(AppError::Contended)
    }

    /// Folds in events just made durable and performs the effects of their decision. Returns
    /// what [`App::apply`] does.
    fn landed(&self, recorded: &[Recorded], effects: Vec<Effect>) -> Option<readers::KeysTried> {
        let keys = self.apply(recorded);
        self.perform(effects);
        keys
    }

    /// Folds in durable events. When they erase users, returns what resolves once those
    /// users' data keys have been tried (see [`App::destroy_keys`]).
    fn apply(&self, recorded: &[Recorded]) -> Option<readers::KeysTried> {
        // The data keys of users these events erase, read before the state forgets them.
        let mut erased_keys = Vec::new();
        // Enrolled templates are opened (a key store read) before the lock is taken.
        let opened = self.open_enrolled(recorded);
        {
            let mut s = self.state.write().expect("state lock");
            for (i, r) in recorded.iter().enumerate() {
                let values = opened.get(i).and_then(|v| v.as_deref()).map(Vec::as_slice);
                if let crate::core::Event::UserErased {
                    partner_id,
                    external_id,
                    ..
                } = &r.event
                    && let Some(t) = s
                        .user(*partner_id, external_id)
                        .and_then(|u| u.template.as_ref())
                {
                    erased_keys.push(t.key_id);
                }
                s.evolve(r);
                // The index follows under the state lock, before the data keys are destroyed:
                // a capture that sees the state without an erased user cannot find them in
                // the index either.
                self.follow(r, values);
            }
            // Under the state lock: a command decided after this sees the state without these
            // streams, and its append reaches the store after the store has dropped them.
            let forgotten = s.take_forgotten();
            if !forgotten.is_empty() {
                self.store.forget_streams(forgotten);
            }
            // Under the lock: a clone for the snapshot writer must not miss a fold.
            self.snapshots.observe(&s);
        };
        let keys = self.destroy_keys(&erased_keys);
        // Live listeners (the admin event stream) get a copy; with none, nothing is cloned.
        let listening = self.recorded.receiver_count() > 0;
        for r in recorded {
            if let Some(id) = session_of(&r.event) {
                let _ = self.sessions_changed.send(id);
            }
            if listening {
                let _ = self.recorded.send(r.clone());
            }
        }
        self.evolved.notify_waiters();
        let activations = recorded
            .iter()
            .filter(|r| matches!(r.event, crate::core::Event::PolicyActivated { .. }))
            .count();
        if activations > 0 {
            self.policy_activations
                .fetch_add(activations as u64, Ordering::SeqCst);
            self.policy_activation.notify_one();
        }
        if !recorded.iter().all(|r| self.deadline_loop_covers(&r.event)) {
            self.wake.notify_one();
        }
        // A new session creates or schedules no webhook delivery: the dispatcher need not look
        // (the common case under load: every identify and enroll call records only that).
        if recorded
            .iter()
            .any(|r| !matches!(r.event, crate::core::Event::SessionCreated { .. }))
        {
            self.poke_outbox();
        }
        keys
    }

    /// Resolves when a site policy is activated, or was since the last time it resolved (one
    /// waiter: the relays, which connect the boards a new policy names). It may resolve with
    /// none new: compare [`App::policy_activations`].
    pub fn policy_activated(&self) -> impl std::future::Future<Output = ()> + '_ {
        self.policy_activation.notified()
    }

    /// How many site policies this app has folded in since it started.
    pub fn policy_activations(&self) -> u64 {
        self.policy_activations.load(Ordering::SeqCst)
    }

    /// Resolves at the next change that may make a delivery due (create it before reading the
    /// state, then await it).
    pub fn outbox_changed(&self) -> impl std::future::Future<Output = ()> + '_ {
        self.outbox.notified()
    }

    /// Wakes the webhook dispatcher.
    pub fn poke_outbox(&self) {
        self.outbox.notify_one();
    }

    fn perform(&self, effects: Vec<Effect>) {
        for e in effects {
            if self.effects.send(e).is_err() {
                tracing::warn!("no adapter is taking effects (shutting down?)");
            }
        }
    }

    /// Waits (briefly) until the state has folded in `stream` up to `revision`.
    async fn wait_for(&self, stream: &str, revision: Option<u64>) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        loop {
            let notified = self.evolved.notified();
            if self.read(|s| s.revision(stream) >= revision) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return;
            }
        }
    }

    /// Whether the deadline loop, asleep until its next deadline, need not be woken for
    /// `event`: a new session whose expiry comes after that deadline (with one TTL for all,
    /// every new session's). Waking it for each one had it look the state up and re-arm its
    /// timer once per request under load. Anything else wakes it, as does any event while it
    /// is not asleep ([`App::deadline_loop`]).
    fn deadline_loop_covers(&self, event: &crate::core::Event) -> bool {
        match event {
            crate::core::Event::SessionCreated { expires_at, .. } => {
                expires_at.timestamp_micros() > self.deadline_asleep_until.load(Ordering::SeqCst)
            }
            _ => false,
        }
    }

    /// Feeds `Tick` to the core whenever its next deadline passes. Runs until dropped.
    ///
    /// A deadline slept until is ticked when the sleep ends, not looked up again: unlock
    /// windows name "the next second" as their deadline, which a fresh look-up always puts a
    /// second after the new `now`, so windows would never open or close.
    pub async fn deadline_loop(self: Arc<Self>) {
        loop {
            // Awake: every event wakes it again (`deadline_loop_covers`) until it sleeps.
            self.deadline_asleep_until.store(i64::MAX, Ordering::SeqCst);
            let now = self.clock.now();
            let next = self.read(|s| s.next_deadline_after(now));
            let due = match next {
                Some(t) if t <= now => true,
                Some(t) => {
                    self.deadline_asleep_until
                        .store(t.timestamp_micros(), Ordering::SeqCst);
                    tokio::select! {
                        _ = self.clock.sleep_until(t) => true,
                        _ = self.wake.notified() => false,
                    }
                }
                None => {
                    // No deadline (`i64::MAX` still): any new session's is the next one.
                    self.wake.notified().await;
                    false
                }
            };
            if !due {
                continue;
            }
            match self.execute(Command::Tick).await {
                Ok(_) => self.restore_recorded_rest(),
                Err(e) => {
                    tracing::warn!(error = %e, "deadline processing failed; retrying in 1 s");
                    self.lock_unrecorded();
                    let later = self.clock.now() + chrono::Duration::seconds(1);
                    self.clock.sleep_until(later).await;
                }
            }
        }
    }

    /// A door whose unlock window closes while its `Tick` cannot be recorded (the log cannot
    /// be written) is locked anyway: SPEC 7, a door is never left unlocked by a failure, and
    /// locking is always safe. The lock is logged and counted
    /// (`palmgate_relay_locks_unrecorded_total`), and recorded by the `Tick` that lands once
    /// the log can be written again. Unlocking never happens unrecorded.
    fn lock_unrecorded(&self) {
        use crate::core::doors::RelayCommand;
        let now = self.clock.now();
        let Ok(decision) = self.read(|s| decide(s, &Command::Tick, now)) else {
            return;
        };
        let mut locked = self
            .locked_unrecorded
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for e in locks(decision.effects) {
            let Effect::Relay {
                device,
                command: RelayCommand::Rest { coil, .. },
            } = &e
            else {
                continue;
            };
            let key = (device.clone(), *coil);
            if locked.contains(&key) {
                continue;
            }
            tracing::warn!(
                device = %device,
                coil,
                "door locked without a record: its unlock window closed while the event log \
                 cannot be written (recorded once it can)"
            );
            ::metrics::counter!("palmgate_relay_locks_unrecorded_total").increment(1);
            locked.push(key);
            self.perform(vec![e]);
        }
    }

    /// Sets or lifts lockdown (`POST /admin/v1/lockdown`). A lockdown the log cannot record
    /// (the disk failing) still locks every door, pulses cut (the relays are told before the
    /// error is answered): locking is always safe, and an operator locking down must not find
    /// the doors open because a disk is full. It is logged and counted
    /// (`palmgate_relay_locks_unrecorded_total`), not recorded: the site is not in lockdown
    /// for the log, and the doors stay locked until a recorded change moves them (the
    /// operator sets lockdown again once the log can be written).
    pub async fn set_lockdown(&self, on: bool) -> Result<Outcome, AppError> {
        let cmd = Command::SetSiteMode {
            lockdown: Some(on),
            emergency: None,
        };
        let result = self.execute(cmd.clone()).await;
        if on && result.is_err() {
            let now = self.clock.now();
            if let Ok(decision) = self.read(|s| decide(s, &cmd, now)) {
                let effects = locks(decision.effects);
                tracing::warn!(
                    relays = effects.len(),
                    "lockdown applied to the relays without a record: the event log cannot \
                     be written (set lockdown again once it can)"
                );
                ::metrics::counter!("palmgate_relay_locks_unrecorded_total")
                    .increment(effects.len() as u64);
                // Not to be unlocked again by the deadline loop's return to the log's state.
                self.locked_unrecorded
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clear();
                self.perform(effects);
            }
        }
        result
    }

    /// After a `Tick` landed: coils [`App::lock_unrecorded`] locked go back to the resting
    /// state the log holds for their door. Usually that `Tick` recorded the lock; a door whose
    /// window opened again before the log recovered has no change to record and would stay
    /// locked through the window.
    fn restore_recorded_rest(&self) {
        use crate::core::doors::RelayCommand;
        let locked = std::mem::take(
            &mut *self
                .locked_unrecorded
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        if locked.is_empty() {
            return;
        }
        let effects = self.read(|s| {
            let Some(policy) = &s.policy else {
                return vec![];
            };
            policy
                .doors
                .iter()
                .filter(|d| locked.contains(&(d.relay.device.clone(), d.relay.coil)))
                .filter(|d| s.doors.get(&d.id).is_some_and(|ds| ds.resting_unlocked))
                .map(|d| Effect::Relay {
                    device: d.relay.device.clone(),
                    command: RelayCommand::Rest {
                        coil: d.relay.coil,
                        on: true,
                        cut_pulse: false,
                    },
                })
                .collect::<Vec<_>>()
        });
        self.perform(effects);
    }

    /// Activates the configured site file (SIGHUP: the operator asks for it). An unreadable or
    /// invalid file is reported and the policy in force stays. Returns whether a file was
    /// activated (`false`: `site` is not set), or the errors.
    pub async fn activate_site_file(&self, source: &str) -> Result<bool, String> {
        match self.read_site_file()? {
            Some(document) => self
                .activate_site_document(document, source)
                .await
                .map(|()| true),
            None => Ok(false),
        }
    }

    /// With the built-in broker, the readers' retained statuses and last wills lived in the
    /// gateway's last process and died with it: a reader the log has online may have gone
    /// while the gateway was down, and no broker is left to say so. The readers the log has
    /// online are noted at start-up; each one that says nothing within [`READER_GRACE`] of the
    /// MQTT client's start is recorded offline ([`App::readers_not_back`]; sessions armed on it
    /// fail `reader_offline`). One that is there reconnects and publishes its status (SPEC 5)
    /// well within that, so a restart does not fail the enrollments at its desks. Before
    /// (review, session 26), a reader gone during a restart stayed `online` for good, and pages
    /// armed it.
    fn expect_readers_back(&self) {
        let online: std::collections::HashSet<crate::core::ReaderId> = self.read(|s| {
            s.readers()
                .filter(|r| r.online)
                .map(|r| r.id.clone())
                .collect()
        });
        *self.unheard_readers.lock().expect("readers lock") = Some(online);
    }

    /// Whether `reader` is one the log had online before this start that has not been heard
    /// from since, during the [`READER_GRACE`]: it may be gone (the built-in broker that held
    /// its session died with the last process), and a command to it would be lost, so pages
    /// neither offer nor arm it until it reconnects.
    pub fn reader_unconfirmed(&self, reader: &crate::core::ReaderId) -> bool {
        self.unheard_readers
            .lock()
            .expect("readers lock")
            .as_ref()
            .is_some_and(|set| set.contains(reader))
    }

    /// A reader was heard from (any message): it is back.
    pub(crate) fn reader_heard(&self, reader: &crate::core::ReaderId) {
        if let Some(set) = self.unheard_readers.lock().expect("readers lock").as_mut() {
            set.remove(reader);
        }
    }

    /// The grace is over: the readers noted by [`App::expect_readers_back`] that have not been
    /// heard from are recorded offline.
    pub(crate) async fn readers_not_back(&self) {
        // Each stays unconfirmed (not offered, not armed) until its offline is recorded.
        let Some(gone) = self.unheard_readers.lock().expect("readers lock").clone() else {
            return;
        };
        let mut gone: Vec<crate::core::ReaderId> = gone.into_iter().collect();
        gone.sort();
        if !gone.is_empty() {
            tracing::info!(
                readers = gone.len(),
                "readers online before the restart did not reconnect to the built-in broker: recorded offline"
            );
        }
        for reader_id in gone {
            // Heard from since the list was read: back, not gone.
            if !self.reader_unconfirmed(&reader_id) {
                continue;
            }
            let cmd = Command::ReaderStatus {
                reader_id: reader_id.clone(),
                online: false,
                model: None,
                firmware: None,
            };
            if let Err(e) = self.execute(cmd).await {
                tracing::warn!(reader = %reader_id, error = %e, "cannot record the reader offline");
            }
            self.reader_heard(&reader_id);
        }
        *self.unheard_readers.lock().expect("readers lock") = None;
    }

    /// Start-up: activates the configured site file only when it changed since the gateway last
    /// activated it (its sha256 differs from the last `PolicyActivated` from the file, at
    /// start-up or SIGHUP), or when no policy came from it yet. An unchanged file leaves the
    /// log's policy in force, so a policy activated later through the admin API survives the
    /// restart; when that policy differs from the file, a warning names both.
    pub async fn start_site_file(&self) -> Result<(), String> {
        let Some(document) = self.read_site_file()? else {
            return Ok(());
        };
        let sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(document.as_bytes()));
        let (last_from_file, in_force) = self.read(|s| {
            let in_force = s.policy.as_ref().map(|p| p.sha256.clone());
            let at = s.policy_document.as_ref().map(|(_, at)| *at);
            (s.policy_file_sha256.clone(), in_force.zip(at))
        });
        if last_from_file.as_deref() != Some(sha256.as_str()) {
            return self.activate_site_document(document, "startup").await;
        }
        if let Some((in_force, at)) = in_force
            && in_force != sha256
        {
            tracing::warn!(
                site = %self.config.site.display(),
                policy_sha256 = %in_force,
                file_sha256 = %sha256,
                "the site policy in force (sha256 {in_force}, activated by the admin API at {}) \
                 differs from the site file {}, which is unchanged since the gateway last read \
                 it: the policy in force stays (SIGHUP activates the file)",
                at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                self.config.site.display(),
            );
        }
        Ok(())
    }

    /// The configured site file's text; `None` when no file is configured.
    fn read_site_file(&self) -> Result<Option<String>, String> {
        let path = &self.config.site;
        if path.as_os_str().is_empty() {
            return Ok(None);
        }
        std::fs::read_to_string(path)
            .map(Some)
            .map_err(|e| format!("cannot read site policy {}: {e}", path.display()))
            .inspect_err(|e| tracing::error!("{e}"))
    }

    async fn activate_site_document(&self, document: String, source: &str) -> Result<(), String> {
        let path = &self.config.site;
        self.activate_policy(document, source)
            .await
            .map_err(|e| format!("{}: {e}", path.display()))
            .inspect_err(|e| tracing::error!("site policy refused, the policy in force stays: {e}"))
    }

    /// Validates and activates a site policy document.
    pub async fn activate_policy(&self, document: String, source: &str) -> Result<(), AppError> {
        self.execute(Command::ActivatePolicy {
            document,
            source: source.to_string(),
        })
        .await?;
        for w in self.read(|s| s.policy_warnings()) {
            tracing::warn!(source, warning = %w, "site policy activated with a warning");
        }
        Ok(())
    }

    /// True when the server can accept new work.
    pub fn ready(&self) -> bool {
        self.store.healthy()
    }

    /// The log's head as this gateway has folded it: the last position and its hash (none for
    /// an empty log).
    pub fn head(&self) -> Result<Option<(u64, [u8; 32])>, crate::store::StoreError> {
        let position = self.read(|s| s.position());
        if position == 0 {
            return Ok(None);
        }
        Ok(self
            .store
            .read_raw(position - 1, 1)?
            .into_iter()
            .find(|r| r.position == position)
            .map(|r| (r.position, r.hash)))
    }

    /// Writes the log's head to the gateway's own log (the journal), where a forger of the
    /// event log file does not reach: `audit verify --expect-heads-from` reads these lines
    /// back and fails on a log that no longer holds them (a rewritten, re-sealed or cut log).
    pub fn log_head(&self, when: &str) {
        match self.head() {
            Ok(Some((position, hash))) => {
                let hash = hex::encode(hash);
                tracing::info!(
                    "log head {when}: position {position}, hash {hash} (audit verify \
                     --expect-head {position}:{hash})"
                );
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read the log's head {when}"),
        }
    }

    /// Closes the log (after what is queued) and lets go of the log's and the key store's
    /// locks: another start on the same files may then write them. Called when the server
    /// stops; appends afterwards answer [`StoreError::Closed`].
    pub fn close(&self) {
        self.store.close();
        self.keystore.close();
    }
}

/// How far behind the log's last event the clock may be at start-up before it is warned about
/// (the audit's own tolerance for a `recorded_at` stepping back).
const CLOCK_BEHIND_WARN: chrono::Duration = chrono::Duration::minutes(5);

/// Start-up says so when this machine's clock is well behind the log's last event: schedules,
/// holidays, session expiry and webhook retries all follow the clock, and every event recorded
/// until it is corrected steps back in time (`audit verify` warns of each). Returns the gap
/// warned about.
fn warn_if_clock_behind(
    store: &dyn EventStore,
    position: u64,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<chrono::Duration> {
    let last = store.read_raw(position.checked_sub(1)?, 1).ok()?;
    let at = chrono::DateTime::parse_from_rfc3339(&last.first()?.recorded_at).ok()?;
    let behind = at.with_timezone(&chrono::Utc) - now;
    (behind > CLOCK_BEHIND_WARN).then(|| {
        tracing::warn!(
            last_event = %at.to_rfc3339(),
            now = %now.to_rfc3339(),
            "this machine's clock is {} min behind the log's last event: check its time \
             (NTP); door schedules, session expiry and webhook retries follow the clock, and \
             events recorded until it is corrected step back in time",
            behind.num_minutes()
        );
        behind
    })
}

/// Values that are valid but most likely a mistake: said at start-up (and by `palmgate
/// check`), not refused.
fn config_warnings(config: &Config) -> Vec<String> {
    let mut out: Vec<String> = config
        .unknown_env
        .iter()
        .map(|name| {
            format!(
                "environment variable {name} sets no config key: ignored (a typo? every key's \
                 variable is PALMGATE_ plus the key in upper case, dots as underscores, e.g. \
                 PALMGATE_HTTP_PUBLIC_URL)"
            )
        })
        .collect();
    let listen = config.http.listen;
    if config.http.public_url.is_empty() && listen.ip().is_unspecified() {
        let scheme = if config.http.tls.is_some() {
            "https"
        } else {
            "http"
        };
        out.push(format!(
            "http.public_url is not set and http.listen is every address: the links of 201 \
             answers and webhooks will name {scheme}://{listen}, which no phone can open; set \
             http.public_url to the address people reach the gateway at"
        ));
    }
    if config.sessions.ttl < Duration::from_secs(60) {
        out.push(format!(
            "sessions.ttl is {:?}: every enrollment and identify link expires within a minute \
             (a typo for minutes, e.g. \"15ms\" for \"15m\"? SPEC 3: 15 minutes)",
            config.sessions.ttl
        ));
    }
    if config.mqtt.url.is_none() && config.mqtt.embedded.password.is_empty() {
        out.push(format!(
            "mqtt.embedded.password is not set: any process that reaches the built-in broker \
             ({}) can act as any reader (replay a capture at a door, complete a session) and \
             read the captures readers send; set PALMGATE_MQTT_EMBEDDED_PASSWORD and give it \
             to the readers, or use Mosquitto with per-reader credentials (mqtt.url)",
            config.mqtt.embedded.listen
        ));
    } else if config.mqtt.url.is_none() && config.mqtt.embedded.password.chars().count() < 16 {
        out.push(format!(
            "mqtt.embedded.password has {} characters: use 32 random characters or more",
            config.mqtt.embedded.password.chars().count()
        ));
    }
    if !config.admin.token.is_empty() && config.admin.token.chars().count() < 16 {
        out.push(format!(
            "admin.token has {} characters: anyone who guesses it runs the site (partners, \
             lockdown, emergency unlock); use 32 random characters or more",
            config.admin.token.chars().count()
        ));
    }
    out
}

/// What `palmgate check` finds in a loaded config without starting anything: its warnings (as
/// start-up logs them) and the problems that would stop a start or refuse its site file.
#[derive(Debug, Default)]
pub struct ConfigCheck {
    pub warnings: Vec<String>,
    pub errors: Vec<String>,
    /// One line on the site file when it is valid (its doors, readers and time zone).
    pub site: Option<String>,
}

/// Checks `config` as a start would, short of opening the log, the key store or a port: the
/// variables that set no key, the values that are likely mistakes, the TLS files, and the site
/// file read and validated as a new activation at `now` (start-up refuses to start a new site
/// on an invalid one, and keeps the policy in force of an old one).
pub fn check_config(config: &Config, now: chrono::DateTime<chrono::Utc>) -> ConfigCheck {
    let mut out = ConfigCheck::default();
    out.warnings.extend(config_warnings(config));
    if let Some(t) = &config.http.tls
        && let Err(e) = crate::http::serve::load_tls(&t.cert, &t.key)
    {
        out.errors.push(format!("http.tls: {e}"));
    }
    out.site = site_file_check(config, now, &mut out.warnings, &mut out.errors);
    out
}

/// The site file's check for [`check_config`] (and `audit verify`, which warns with it).
fn site_file_check(
    config: &Config,
    now: chrono::DateTime<chrono::Utc>,
    warnings: &mut Vec<String>,
    errors: &mut Vec<String>,
) -> Option<String> {
    let path = &config.site;
    if path.as_os_str().is_empty() {
        return Some(
            "site is not set: no site file (a policy activated through the admin API applies)"
                .into(),
        );
    }
    let source = config.source_of("site");
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            errors.push(format!(
                "site (from {source}): cannot read site policy {}: {e}",
                path.display()
            ));
            return None;
        }
    };
    match crate::core::policy::Policy::parse_new_at(&text, now) {
        Ok(p) => {
            for w in &p.warnings {
                warnings.push(format!("site policy {}: {w}", path.display()));
            }
            let readers: usize = p.doors.iter().map(|d| d.readers.len()).sum();
            Some(format!(
                "site policy {}: valid, {} door(s), {readers} reader(s), {} level(s), time zone \
                 {}, sha256 {}",
                path.display(),
                p.doors.len(),
                p.levels.len(),
                p.timezone,
                p.sha256
            ))
        }
        Err(errs) => {
            for e in errs {
                errors.push(format!(
                    "site (from {source}): {} is not a valid site policy: {e} (a new site does \
                     not start with it; a site with a policy in force keeps that one)",
                    path.display()
                ));
            }
            None
        }
    }
}

/// What is wrong with `config`'s site file, if anything (for `palmgate audit verify`, which
/// says it beside the log's report: the log may be intact while the next start would refuse
/// the file).
pub fn site_file_problems(config: &Config, now: chrono::DateTime<chrono::Utc>) -> Vec<String> {
    let mut errors = Vec::new();
    site_file_check(config, now, &mut Vec::new(), &mut errors);
    errors
}

/// The effects of `effects` that lock a door (a relay driven to rest OFF).
fn locks(effects: Vec<Effect>) -> Vec<Effect> {
    use crate::core::doors::RelayCommand;
    effects
        .into_iter()
        .filter(|e| {
            matches!(
                e,
                Effect::Relay {
                    command: RelayCommand::Rest { on: false, .. },
                    ..
                }
            )
        })
        .collect()
}

fn session_of(e: &crate::core::Event) -> Option<SessionId> {
    use crate::core::Event::*;
    match e {
        SessionCreated { session_id, .. }
        | SessionCompleted { session_id, .. }
        | SessionFailed { session_id, .. }
        | SessionExpired { session_id, .. }
        | SessionReaderArmed { session_id, .. }
        | CaptureRetryRequested { session_id, .. } => Some(*session_id),
        _ => None,
    }
}

/// A started server: its addresses and what it runs.
pub struct Server {
    pub addr: SocketAddr,
    pub public_url: String,
    /// Where readers connect: the embedded broker's address or the external broker URL.
    pub mqtt: String,
    pub app: Arc<App>,
    listener: tokio::net::TcpListener,
    /// `http.tls`, loaded: the listener speaks HTTPS only.
    tls: Option<Arc<rustls::ServerConfig>>,
    effects: mpsc::UnboundedReceiver<Effect>,
}

/// Opens the store, rebuilds projections, starts the broker and binds the listener
/// (composition root, part 1).
pub async fn start(config: Config) -> Result<Server, StartError> {
    start_with(config, Arc::new(SystemClock), Arc::new(OsRng)).await
}

pub async fn start_with(
    mut config: Config,
    clock: Arc<dyn Clock>,
    rng: Arc<dyn Rng>,
) -> Result<Server, StartError> {
    // Before anything is counted: the start-up policy activation's commit included.
    crate::http::install_metrics();
    for w in config_warnings(&config) {
        tracing::warn!("{w}");
    }
    let tls = match &config.http.tls {
        Some(t) => Some(crate::http::serve::load_tls(&t.cert, &t.key).map_err(StartError::Tls)?),
        None => None,
    };
    // The listeners first: a start that cannot listen creates nothing (no log, no key store,
    // no master key of a new site).
    let bind_err = |e: std::io::Error| StartError::Bind {
        addr: config.http.listen,
        source_name: config.source_of("http.listen"),
        reason: e.to_string(),
    };
    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .map_err(bind_err)?;
    let addr = listener.local_addr().map_err(bind_err)?;
    // The embedded broker's port next, for the same reason.
    let mqtt = match &config.mqtt.url {
        Some(url) => url.clone(),
        None => {
            let listen = crate::mqtt::broker::start_embedded(
                config.mqtt.embedded.listen,
                &config.mqtt.embedded.password,
            )
            .map_err(|e| StartError::Mqtt(format!("config key `mqtt.embedded.listen`: {e}")))?;
            config.mqtt.embedded.listen = listen;
            config.mqtt.embedded.url(listen, "palmgate")
        }
    };
    let store = open_store(&config.store)?;
    let keystore = KeyStore::open(&config.secrets.key_store)?;
    // The key store is bound to its log (the hash of the log's first event) and to its master
    // key: with another log the start-up sweep would destroy every enrolled user's data key,
    // and a new master key would open none of them. A missing master key is generated only
    // for a new site (empty log, empty key store).
    let log = keystore::log_name(&config.store);
    let first = store.read_raw(0, 1)?.first().map(|e| e.hash);
    keystore.bind_to_log(first, &log)?;
    let fresh = rng.bytes32();
    let missing = match keystore.master_key_needed(first.is_some(), &log)? {
        None => secrets::IfMissing::Create(fresh),
        Some(why) => secrets::IfMissing::Refuse(why),
    };
    let keys = Keys::load(
        &config.secrets.key_file,
        config.secrets.master_key.as_deref(),
        missing,
    )?;
    keystore.check_master_key(
        keys.key_check(),
        &secrets::master_key_source(
            &config.secrets.key_file,
            config.secrets.master_key.as_deref(),
        ),
    )?;
    let public_url = if config.http.public_url.is_empty() {
        let scheme = if tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{addr}")
    } else {
        config.http.public_url.clone()
    };
    let (app, effects) = App::new(
        config,
        Parts {
            store,
            keystore,
            clock,
            rng,
            keys,
            public_url: public_url.clone(),
        },
    )?;
    // A new key store binds to the log and the master key only now, vetted against the
    // log's state: refused beside enrolled templates, or webhook secrets the key opens none of.
    let source = secrets::master_key_source(
        &app.config.secrets.key_file,
        app.config.secrets.master_key.as_deref(),
    );
    app.read(|s| app.keystore.adopt(s, &app.keys, &log, &source))?;
    // Dashboard logins signed out before this start stay refused.
    crate::http::dash::session::load_signouts(&app);
    if first.is_none() {
        // An empty log: the key store records the log's identity as soon as it has a first
        // event (subscribed before anything below can append one).
        let mut recorded = app.recorded_events();
        let app = Arc::downgrade(&app);
        tokio::spawn(async move {
            if let Err(broadcast::error::RecvError::Closed) = recorded.recv().await {
                return;
            }
            drop(recorded);
            let Some(app) = app.upgrade() else { return };
            let _ = tokio::task::spawn_blocking(move || {
                let bound = app
                    .store
                    .read_raw(0, 1)
                    .map_err(|e| e.to_string())
                    .and_then(|first| {
                        let first = first.first().map(|e| e.hash);
                        app.keystore
                            .bind_to_log(first, &log)
                            .map_err(|e| e.to_string())
                    });
                if let Err(e) = bound {
                    tracing::error!(error = %e, "cannot record the log's identity in the key store");
                }
            })
            .await;
        });
    }
    follow_shared_log(&app);
    // The site file is activated if it changed since it was last read (an admin API policy
    // survives restarts); an invalid file is reported and the policy in force (from the log)
    // stays. With no policy in force (a new site) there is nothing to stay: the gateway would
    // run, and report ready, with no doors at all, so it does not start.
    if let Err(e) = app.start_site_file().await
        && app.read(|s| s.policy.is_none())
    {
        let closing = app.clone();
        let _ = tokio::task::spawn_blocking(move || closing.close()).await;
        return Err(StartError::Config(format!(
            "config key `site`: {e}; no site policy is in force yet, so the gateway would run \
             with no doors: fix the site file, or remove `site` to run the Pass API alone"
        )));
    }
    // Only for a log of this gateway alone: a shared log (KurrentDB) also holds the readers
    // of other gateways, still connected to their brokers.
    if app.config.mqtt.url.is_none() && app.config.store.url.is_none() {
        app.expect_readers_back();
    }
    Ok(Server {
        addr,
        public_url,
        mqtt,
        app,
        listener,
        tls,
        effects,
    })
}

/// The start-up error for enrolled templates of another dimension than `matching.dim`.
fn wrong_dimension(config: &Config, w: &readers::WrongDimension) -> StartError {
    let total: usize = w.found.values().sum();
    let found = w
        .found
        .iter()
        .map(|(dim, n)| format!("{n} of dimension {dim}"))
        .collect::<Vec<_>>()
        .join(", ");
    let back = w.found.keys().next_back().copied().unwrap_or(w.configured);
    StartError::Config(format!(
        "config key `matching.dim` (from {}): {}, but {total} enrolled template(s) of the log \
         have another dimension ({found}): none of those users would be identified, and none \
         could enroll again (already enrolled). Set matching.dim back to {back}; to change the \
         dimension, erase those users first (DELETE /v1/users/{{external_id}}), then enroll \
         them again with readers of the new dimension",
        config.source_of("matching.dim"),
        w.configured,
    ))
}

/// Opens the event log `store` names: KurrentDB with `store.url` (a build with the `kurrentdb`
/// feature), else the SQLite file at `store.path`.
pub fn open_store(store: &crate::config::StoreConfig) -> Result<Arc<dyn EventStore>, StartError> {
    match &store.url {
        None => Ok(Arc::new(SqliteStore::open(&store.path)?)),
        #[cfg(feature = "kurrentdb")]
        Some(url) => Ok(Arc::new(crate::store::KurrentStore::open(
            url,
            crate::store::kurrent::LOG_STREAM,
        )?)),
        #[cfg(not(feature = "kurrentdb"))]
        Some(_) => Err(StartError::Unsupported(
            "store.url (KurrentDB) needs a palmgate built with the `kurrentdb` feature \
             (cargo build --release --features kurrentdb); this build has only the SQLite log \
             (store.path)"
                .into(),
        )),
    }
}

/// A configured retention as the core's duration (at most a century: forever enough, and no
/// date arithmetic overflows).
fn retention(d: Duration) -> chrono::Duration {
    let century = chrono::Duration::days(36_525);
    chrono::Duration::from_std(d).map_or(century, |d| d.min(century))
}

/// A log shared with other gateways (KurrentDB): folds in, in order, the events they append,
/// from the position the state was rebuilt at, so users, policy and sessions follow. Nothing
/// for the SQLite log. The task ends with the store (or the app).
fn follow_shared_log(app: &Arc<App>) {
    let Some(mut feed) = app.store.follow_others(app.read(|s| s.position())) else {
        return;
    };
    let app = Arc::downgrade(app);
    tokio::spawn(async move {
        while let Some(events) = feed.recv().await {
            let Some(app) = app.upgrade() else { return };
            tracing::debug!(
                events = events.len(),
                "events from other gateways folded in"
            );
            let _ = app.apply(&events);
        }
    });
}

impl Server {
    /// `https://ADDR` with TLS, else `http://ADDR`: where the listener answers.
    pub fn listening_url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Serves until `shutdown` resolves (composition root, part 2).
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        self.serve_with(axum::Router::new(), shutdown).await
    }

    /// Serves with `extra` routes beside the product's own (the demo's panel and receiver).
    pub async fn serve_with(
        self,
        extra: axum::Router,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let deadlines = tokio::spawn(self.app.clone().deadline_loop());
        let (reader_tx, reader_rx) = mpsc::unbounded_channel();
        let relays = relays::Relays::start(self.app.clone());
        let stopping = relays.clone();
        let mut effects = self.effects;
        let router_task = tokio::spawn(async move {
            while let Some(e) = effects.recv().await {
                metrics::performed(&e);
                match e {
                    Effect::Reader { reader_id, command } => {
                        let _ = reader_tx.send((reader_id, command));
                    }
                    Effect::Relay { device, command } => relays.perform(&device, command),
                }
            }
        });
        let mqtt = crate::mqtt::client::spawn(self.app.clone(), &self.mqtt, reader_rx)
            .map_err(std::io::Error::other)?;
        // The head, now and every hour, into the journal (see [`App::log_head`]).
        let head_app = self.app.clone();
        let head_log = tokio::spawn(async move {
            let mut every = tokio::time::interval(HEAD_LOG_EVERY);
            let mut when = "at start-up";
            loop {
                every.tick().await;
                let app = head_app.clone();
                let _ = tokio::task::spawn_blocking(move || app.log_head(when)).await;
                when = "hourly";
            }
        });
        let grace_app = self.app.clone();
        let reader_grace = tokio::spawn(async move {
            tokio::time::sleep(READER_GRACE).await;
            grace_app.readers_not_back().await;
        });
        let webhooks = crate::webhooks::spawn(self.app.clone());
        let upstream = upstream::spawn(self.app.clone());
        let router = crate::http::router(self.app.clone()).merge(extra);
        let limits = crate::http::serve::Limits {
            header: self.app.config.http.header_timeout,
            body: self.app.config.http.body_timeout,
        };
        let result =
            crate::http::serve::serve(self.listener, self.tls, limits, router, shutdown).await;
        deadlines.abort();
        router_task.abort();
        reader_grace.abort();
        head_log.abort();
        mqtt.abort();
        if let Some(u) = upstream {
            u.abort();
        }
        // Pulses in progress end, and webhook attempts already sent are answered and recorded,
        // before the store closes.
        tokio::join!(
            stopping.stop(Duration::from_secs(3)),
            webhooks.stop(crate::webhooks::STOP_WAIT)
        );
        let app = self.app.clone();
        let _ = tokio::task::spawn_blocking(move || app.log_head("at stop")).await;
        // Tasks that outlive the server (a webhook delivery in flight) keep the app, and so
        // the store, alive: close it here, so the locks go with the server.
        let app = self.app.clone();
        let _ = tokio::task::spawn_blocking(move || app.close()).await;
        result
    }
}

#[cfg(test)]
mod config_warning_tests {
    use super::*;

    #[test]
    fn a_ttl_under_a_minute_and_a_short_admin_token_are_warned_about() {
        let mut c = Config::load(None, &[]).unwrap();
        c.admin.token = "0123456789abcdef0123456789abcdef".into();
        c.mqtt.embedded.password = "fedcba9876543210fedcba9876543210".into();
        assert_eq!(config_warnings(&c), Vec::<String>::new());
        c.sessions.ttl = Duration::from_millis(15);
        c.admin.token = "x".into();
        let w = config_warnings(&c);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].starts_with("sessions.ttl is 15ms"), "{w:?}");
        assert!(w[1].starts_with("admin.token has 1 characters"), "{w:?}");
    }

    /// A clock well behind the log's last event is warned about at start-up (5 minutes of
    /// tolerance, as the audit's); one ahead of it, or a log with no event, is not.
    #[test]
    fn a_clock_behind_the_log_is_warned_about() {
        use crate::core::{Event, Expected, PartnerId, SecretHash, StreamAppend};
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::SqliteStore::open(dir.path().join("events.db")).unwrap();
        let at = chrono::DateTime::from_timestamp(1_790_000_000, 0).unwrap();
        assert_eq!(warn_if_clock_behind(&store, 0, at), None);
        let p = PartnerId::from_random([1; 16]);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(store.append(
            vec![StreamAppend {
                stream: crate::core::event::stream::partner(p),
                expected: Expected::NoStream,
                events: vec![Event::PartnerCreated {
                    partner_id: p,
                    name: "p".into(),
                    api_key_hash: SecretHash("0".repeat(64)),
                    at,
                }],
            }],
            at,
        ))
        .unwrap();
        let minutes = |m| chrono::Duration::minutes(m);
        assert_eq!(warn_if_clock_behind(&store, 1, at + minutes(60)), None);
        assert_eq!(warn_if_clock_behind(&store, 1, at - minutes(4)), None);
        let behind = warn_if_clock_behind(&store, 1, at - minutes(120)).unwrap();
        assert_eq!(behind.num_minutes(), 120);
        store.close();
    }

    /// The built-in broker without a password (anyone can act as a reader), or with a short
    /// one, is warned about; with an external broker (`mqtt.url`) the key plays no part.
    #[test]
    fn a_built_in_broker_without_a_strong_password_is_warned_about() {
        let mut c = Config::load(None, &[]).unwrap();
        c.admin.token = "0123456789abcdef0123456789abcdef".into();
        let w = config_warnings(&c);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("mqtt.embedded.password is not set: any process"),
            "{w:?}"
        );
        c.mqtt.embedded.password = "short".into();
        let w = config_warnings(&c);
        assert_eq!(
            w,
            ["mqtt.embedded.password has 5 characters: use 32 random characters or more"]
        );
        c.mqtt.embedded.password = String::new();
        c.mqtt.url = Some("mqtt://127.0.0.1:1883".into());
        assert_eq!(config_warnings(&c), Vec::<String>::new());
    }
}
