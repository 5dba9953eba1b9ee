//! The shell: runs the core against the real world.
//!
//! The command pipeline is `decide → append (durable) → evolve → answer`: the state a caller
//! reads never holds a fact the log lacks. Expected-revision conflicts (two requests racing for
//! one stream) are retried against the newer state. A background task sleeps until the core's
//! next deadline and feeds it a `Tick`. [`run`] is the composition root.

pub mod clock;
pub mod limiter;
pub mod secrets;

use crate::config::Config;
use crate::core::{Command, Outcome, Recorded, Rejection, State, decide};
use crate::store::{EventStore, SqliteStore, StoreError};
use clock::{Clock, OsRng, Rng, SystemClock};
use limiter::Limiter;
use secrets::{AdminToken, Keys};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::Notify;

/// How often a command is re-decided after losing an expected-revision race.
const MAX_ATTEMPTS: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("too much contention on one stream")]
    Contended,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("event store: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Secrets(#[from] secrets::SecretsError),
    #[error("cannot listen on {addr}: {reason}")]
    Bind { addr: SocketAddr, reason: String },
    #[error("{0}")]
    Unsupported(String),
}

/// Everything a request handler may use.
pub struct App {
    state: RwLock<State>,
    pub store: Arc<dyn EventStore>,
    pub clock: Arc<dyn Clock>,
    pub rng: Arc<dyn Rng>,
    pub keys: Keys,
    pub admin: AdminToken,
    pub limiter: Limiter,
    pub config: Config,
    /// Base of hosted-page URLs, without a trailing slash.
    pub public_url: String,
    evolved: Notify,
    wake: Notify,
}

impl App {
    /// Builds the app over `store`, folding the whole log into the state.
    pub fn new(
        config: Config,
        store: Arc<dyn EventStore>,
        clock: Arc<dyn Clock>,
        rng: Arc<dyn Rng>,
        keys: Keys,
        public_url: String,
    ) -> Result<App, StoreError> {
        let mut state = State::default();
        let mut after = 0;
        loop {
            let page = store.read(after, 10_000)?;
            let Some(last) = page.last() else { break };
            after = last.position;
            for r in &page {
                state.evolve(r);
            }
        }
        tracing::info!(events = after, "projections rebuilt from the log");
        Ok(App {
            state: RwLock::new(state),
            admin: AdminToken::new(&config.admin.token, &config.admin.token_sha256),
            limiter: Limiter::new(
                config.rate_limit.per_minute,
                config.rate_limit.unauthenticated_per_minute,
            ),
            store,
            clock,
            rng,
            keys,
            config,
            public_url: public_url.trim_end_matches('/').to_string(),
            evolved: Notify::new(),
            wake: Notify::new(),
        })
    }

    /// Runs `f` against the current state (read lock held only for `f`).
    pub fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.state.read().expect("state lock"))
    }

    /// Decides `cmd`, makes its events durable, folds them in, and says what happened.
    pub async fn execute(&self, cmd: Command) -> Result<Outcome, AppError> {
        for _ in 0..MAX_ATTEMPTS {
            let now = self.clock.now();
            let decision = self.read(|s| decide(s, &cmd, now))?;
            let appends: Vec<_> = decision
                .appends
                .into_iter()
                .filter(|a| !a.events.is_empty())
                .collect();
            if appends.is_empty() {
                return Ok(decision.outcome);
            }
            match self.store.append(appends, now).await {
                Ok(recorded) => {
                    self.apply(&recorded);
                    return Ok(decision.outcome);
                }
                Err(StoreError::Conflict { stream, actual, .. }) => {
                    self.wait_for(&stream, actual).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(AppError::Contended)
    }

    fn apply(&self, recorded: &[Recorded]) {
        {
            let mut s = self.state.write().expect("state lock");
            for r in recorded {
                s.evolve(r);
            }
        }
        self.evolved.notify_waiters();
        self.wake.notify_one();
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

    /// Feeds `Tick` to the core whenever its next deadline passes. Runs until dropped.
    pub async fn deadline_loop(self: Arc<Self>) {
        loop {
            let next = self.read(|s| s.next_deadline());
            match next {
                Some(t) if t <= self.clock.now() => {
                    if let Err(e) = self.execute(Command::Tick).await {
                        tracing::warn!(error = %e, "deadline processing failed; retrying in 1 s");
                        let later = self.clock.now() + chrono::Duration::seconds(1);
                        self.clock.sleep_until(later).await;
                    }
                }
                Some(t) => {
                    tokio::select! {
                        _ = self.clock.sleep_until(t) => {}
                        _ = self.wake.notified() => {}
                    }
                }
                None => self.wake.notified().await,
            }
        }
    }

    /// True when the server can accept new work.
    pub fn ready(&self) -> bool {
        self.store.healthy()
    }
}

/// A started server: its address and a handle that ends when it stops.
pub struct Server {
    pub addr: SocketAddr,
    pub public_url: String,
    pub app: Arc<App>,
    listener: tokio::net::TcpListener,
}

/// Opens the store, rebuilds projections and binds the listener (composition root, part 1).
pub async fn start(config: Config) -> Result<Server, StartError> {
    start_with(config, Arc::new(SystemClock), Arc::new(OsRng)).await
}

pub async fn start_with(
    config: Config,
    clock: Arc<dyn Clock>,
    rng: Arc<dyn Rng>,
) -> Result<Server, StartError> {
    if config.store.url.is_some() {
        return Err(StartError::Unsupported(
            "store.url (KurrentDB) is not available in this build; use store.path".into(),
        ));
    }
    let keys = Keys::load_or_create(
        &config.secrets.key_file,
        config.secrets.master_key.as_deref(),
        rng.bytes32(),
    )?;
    let store = Arc::new(SqliteStore::open(&config.store.path)?);
    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .map_err(|e| StartError::Bind {
            addr: config.http.listen,
            reason: e.to_string(),
        })?;
    let addr = listener.local_addr().map_err(|e| StartError::Bind {
        addr: config.http.listen,
        reason: e.to_string(),
    })?;
    let public_url = if config.http.public_url.is_empty() {
        format!("http://{addr}")
    } else {
        config.http.public_url.clone()
    };
    let app = Arc::new(App::new(
        config,
        store,
        clock,
        rng,
        keys,
        public_url.clone(),
    )?);
    Ok(Server {
        addr,
        public_url,
        app,
        listener,
    })
}

impl Server {
    /// Serves until `shutdown` resolves (composition root, part 2).
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let deadlines = tokio::spawn(self.app.clone().deadline_loop());
        let router = crate::http::router(self.app.clone());
        let result = axum::serve(
            self.listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await;
        deadlines.abort();
        result
    }
}
