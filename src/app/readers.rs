//! Reader messages in the shell: status, captures (matcher search, template sealing) and
//! triggers become core commands; the matcher index follows the log.
//!
//! The search runs before `decide` and its result travels in the command, so the decision is
//! a pure function of recorded inputs; a decision retried after a conflict searches again. The
//! index follows the log under the state's lock (`App::apply`), so no search finds a user the
//! state has erased. An enroll capture's data key is written to the key
//! store before the event that references it is appended, and only if it is.

use super::templates::{self, KeyWrap};
use super::{App, AppError};
use crate::core::event::{Event, Recorded};
use crate::core::matcher::Index;
use crate::core::{Capture, Command, KeyId, Outcome, PartnerId, ReaderId, SessionKind};
use crate::mqtt::protocol::{CaptureMsg, Inbound};
use zeroize::Zeroizing;

impl App {
    /// Handles one parsed reader message. Returns what the core made of it.
    pub async fn reader_message(
        &self,
        reader_id: ReaderId,
        msg: Inbound,
    ) -> Result<Outcome, AppError> {
        self.reader_heard(&reader_id);
        match msg {
            Inbound::Status {
                online,
                model,
                firmware,
            } => {
                self.execute(Command::ReaderStatus {
                    reader_id,
                    online,
                    model,
                    firmware,
                })
                .await
            }
            // Upstream mode: the remote opens the identify session (`app::upstream`).
            Inbound::Trigger { trigger_id } if self.upstream.is_some() => {
                Ok(self.upstream_trigger(reader_id, trigger_id, None))
            }
            Inbound::Trigger { trigger_id } => {
                let session_id = self.new_session_id();
                let token_hash = super::secrets::hash_secret(&self.keys.session_token(session_id));
                self.execute(Command::Trigger {
                    reader_id,
                    trigger_id,
                    session_id,
                    token_hash,
                    ttl: self.ttl(),
                    // Validated at start-up (en, kk or ru).
                    language: crate::core::Language::parse(&self.config.mqtt.reader_language)
                        .unwrap_or(crate::core::Language::En),
                })
                .await
            }
            Inbound::Capture(c) => self.capture(reader_id, c).await,
        }
    }

    async fn capture(&self, reader_id: ReaderId, c: CaptureMsg) -> Result<Outcome, AppError> {
        let token_hash = c.session.as_deref().map(super::secrets::hash_secret);
        let session = token_hash
            .as_ref()
            .and_then(|h| self.read(|s| s.session_by_token_hash(h).cloned()));
        // Scope: the session's partner; for site sessions and door scans, the partners the
        // site admits.
        let scope: Vec<PartnerId> = match session.as_ref().and_then(|s| s.partner_id) {
            Some(p) => vec![p],
            None => self.site_partners(),
        };
        let mut key = None;
        let sealed = match &session {
            Some(s) if s.kind == SessionKind::Enroll => {
                match (s.partner_id, s.external_id.as_ref()) {
                    (Some(p), Some(u)) => {
                        let sealed = templates::seal(
                            &c.template,
                            p,
                            u,
                            self.rng.bytes16(),
                            self.rng.bytes32(),
                            rand12(&*self.rng),
                        );
                        let mut nonce = [0u8; 24];
                        self.rng.fill(&mut nonce);
                        let wrapped =
                            self.wrap
                                .wrap(sealed.template.key_id, &sealed.data_key, nonce);
                        key = Some((sealed.template.key_id, wrapped));
                        Some(sealed.template)
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        // The search runs for every attempt: when a decision meets a conflict (an erasure of
        // the user it matched, appended meanwhile), it is decided again on a fresh search.
        let make = || {
            let best = self
                .index
                .read()
                .expect("index lock")
                .best(&c.template, &scope);
            Command::Capture(Capture {
                reader_id: reader_id.clone(),
                capture_id: c.capture_id.clone(),
                session: token_hash.clone(),
                quality: c.quality,
                liveness: c.liveness,
                best,
                sealed: sealed.clone(),
            })
        };
        self.execute_made(make, |decision| {
            let Some((key_id, wrapped)) = &key else {
                return Ok(());
            };
            let keeps = decision.events().any(|e| {
                matches!(e, Event::UserEnrolled { template: Some(t), .. } if t.key_id == *key_id)
            });
            if keeps {
                // Off the runtime's workers: the key store may be locked (5 s busy timeout),
                // or its mutex held by a deletion waiting that long.
                off_worker(|| self.keystore.put(*key_id, wrapped))
                    .map_err(|e| AppError::Keys(e.to_string()))?;
            }
            Ok(())
        })
        .await
    }

    /// Partners whose users may open doors here (all, without a site policy).
    /// Sorted by id: the matcher gives equal similarities to the first partner in scope
    /// order, which must not change from restart to restart (the state's map has a random
    /// order per process).
    fn site_partners(&self) -> Vec<PartnerId> {
        let mut ids: Vec<PartnerId> = self.read(|s| {
            s.partners()
                .filter(|p| {
                    s.policy
                        .as_ref()
                        .is_none_or(|pol| pol.partner_allowed(p.id, &p.name))
                })
                .map(|p| p.id)
                .collect()
        });
        ids.sort_unstable();
        ids
    }

    /// Opens the templates that durable events enroll, before the state lock is taken (the key
    /// store is read): `None` for an event that enrolls no template, or one that cannot be
    /// opened (logged). Empty (no allocation) when none of the events enrolls a template, the
    /// common case on the identify and door-scan paths.
    pub(super) fn open_enrolled(&self, recorded: &[Recorded]) -> Vec<Option<Zeroizing<Vec<f32>>>> {
        let enrolls = |rec: &Recorded| {
            matches!(
                rec.event,
                Event::UserEnrolled {
                    template: Some(_),
                    ..
                }
            )
        };
        if !recorded.iter().any(enrolls) {
            return Vec::new();
        }
        let dim = self.index_dim();
        // Off the runtime's workers, as the key store may make each read wait (above).
        off_worker(|| self.open_each(recorded, dim))
    }

    fn open_each(&self, recorded: &[Recorded], dim: usize) -> Vec<Option<Zeroizing<Vec<f32>>>> {
        recorded
            .iter()
            .map(|rec| match &rec.event {
                Event::UserEnrolled {
                    partner_id,
                    external_id,
                    template: Some(t),
                    ..
                } => match open_template(
                    &self.keystore,
                    &self.wrap,
                    t,
                    *partner_id,
                    external_id,
                    dim,
                ) {
                    Ok(values) => Some(values),
                    Err(e) => {
                        tracing::error!(position = rec.position, error = %e, "enrolled template cannot be opened");
                        None
                    }
                },
                _ => None,
            })
            .collect()
    }

    /// Keeps the matcher index in step with durable events (`opened` from
    /// [`App::open_enrolled`]). Called by `apply` under the state's write lock, as each event
    /// is folded in: a search never finds a user the state has erased (an erased user's match
    /// once completed identify sessions after `DELETE` had answered), and an enrollment and
    /// an erasure of one user landing together reach the index in the log's order.
    pub(super) fn follow(&self, rec: &Recorded, opened: Option<&[f32]>) {
        match &rec.event {
            Event::UserEnrolled {
                partner_id,
                external_id,
                template: Some(_),
                ..
            } => {
                if let Some(values) = opened {
                    self.index.write().expect("index lock").insert(
                        *partner_id,
                        external_id.clone(),
                        values,
                    );
                }
            }
            Event::UserErased {
                partner_id,
                external_id,
                ..
            } => {
                // Its data key is destroyed by `apply` (`destroy_keys`), which knows it.
                self.index
                    .write()
                    .expect("index lock")
                    .remove(*partner_id, external_id);
            }
            _ => {}
        }
    }

    fn index_dim(&self) -> usize {
        self.index.read().expect("index lock").dim()
    }

    /// Destroys the data keys of erased users (crypto-shredding, SPEC 8.3). Only those: a
    /// sweep of every key no user in memory references, as erasures once ran, also destroyed the
    /// key of an enrollment whose events were not folded in yet, and that user never matched
    /// again. A key that cannot be deleted now (the key store locked, its disk full) is deleted
    /// by a retry as soon as it can be.
    ///
    /// The deletions run on the blocking pool (one thread at a time, [`shred`]), never on a
    /// runtime worker: each may wait out the key store's busy timeout (5 s) while holding its
    /// mutex, and on a worker that stalled every task queued behind it (HTTP requests, relay
    /// pulses). The erasure is durable and the index updated before this is called, so its
    /// caller need not wait; the returned receiver resolves once the keys were tried (deleted,
    /// or handed to the retries), for a caller that waits a little (`Landing::land`).
    ///
    /// A key id is drawn at random for each enrollment (`templates::seal`), and erasures list
    /// only the erased users' ids: a deletion that lands late never meets the key of a later
    /// enrollment of the same user, which has an id of its own.
    pub(super) fn destroy_keys(&self, ids: &[KeyId]) -> Option<KeysTried> {
        if ids.is_empty() {
            return None;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime, so no worker to stall: deleted here; a key that cannot be is
            // destroyed by the next start-up's sweep.
            for id in ids {
                if let Err(e) = self.keystore.delete(*id) {
                    tracing::error!(
                        error = %e,
                        "cannot destroy an erased user's data key (no runtime to retry on): \
                         the next start-up's sweep destroys it"
                    );
                }
            }
            return None;
        };
        let (tried, answer) = tokio::sync::oneshot::channel();
        self.doom(&runtime, ids, Some(tried));
        Some(answer)
    }

    /// Queues `ids` for [`shred`], starting it on `runtime`'s blocking pool unless it runs.
    fn doom(
        &self,
        runtime: &tokio::runtime::Handle,
        ids: &[KeyId],
        tried: Option<tokio::sync::oneshot::Sender<()>>,
    ) {
        let start = {
            let mut q = self.doomed.queue.lock().expect("doomed keys lock");
            q.ids.extend_from_slice(ids);
            q.tried.extend(tried);
            !std::mem::replace(&mut q.running, true)
        };
        self.doomed.more.notify_one();
        if start {
            let app = self.me.clone();
            runtime.spawn_blocking(move || shred(&app));
        }
    }

    /// Deletes every data key no enrolled user references (erased users, failed appends). At
    /// start-up only, before any enrollment can be in flight: the list is taken here (a key an
    /// enrollment in flight has stored but not yet referenced would be on it). A key that
    /// cannot be deleted now (the key store locked, its disk full) goes to the retries of
    /// [`App::destroy_keys`], which start on the runtime this is called in, and is destroyed as
    /// soon as the key store can be written, not at the next start-up.
    pub(super) fn destroy_erased_keys(&self) {
        let live: std::collections::HashSet<_> = self.read(|s| {
            s.users()
                .filter_map(|u| u.template.as_ref().map(|t| t.key_id))
                .collect()
        });
        let unreferenced: Vec<KeyId> = match off_worker(|| self.keystore.ids()) {
            Ok(ids) => ids.into_iter().filter(|id| !live.contains(id)).collect(),
            Err(e) => {
                tracing::error!(
                    error = %e,
                    "start-up sweep: cannot list data keys; none destroyed"
                );
                return;
            }
        };
        // Tried here first, so the common case is swept before the server answers; after the
        // first failure (likely the key store locked: each try waits 5 s) the rest go to the
        // retries untried.
        let mut destroyed = 0usize;
        let mut failed = None;
        off_worker(|| {
            for id in &unreferenced {
                match self.keystore.delete(*id) {
                    Ok(()) => destroyed += 1,
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
        });
        let left = &unreferenced[destroyed..];
        tracing::info!(
            destroyed,
            left = left.len(),
            "start-up sweep: data keys no enrolled user references destroyed"
        );
        let Some(e) = failed else { return };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                tracing::error!(
                    error = %e,
                    keys = left.len(),
                    "start-up sweep: cannot destroy data keys yet; retrying"
                );
                self.doom(&runtime, left, None);
            }
            Err(_) => tracing::error!(
                error = %e,
                keys = left.len(),
                "start-up sweep: cannot destroy data keys (no runtime to retry on); the next \
                 start-up tries again"
            ),
        }
    }
}

/// Resolves once the data keys an erasure destroys have been tried ([`App::destroy_keys`]).
pub(super) type KeysTried = tokio::sync::oneshot::Receiver<()>;

/// Data keys waiting for deletion ([`App::destroy_keys`]) and whether [`shred`] runs.
#[derive(Default)]
pub(super) struct Doomed {
    queue: std::sync::Mutex<DoomedQueue>,
    /// Signalled when ids are queued (a retry waiting out its pause tries them at once).
    more: std::sync::Condvar,
}

#[derive(Default)]
struct DoomedQueue {
    ids: Vec<KeyId>,
    /// Told once the ids queued with them have been tried.
    tried: Vec<tokio::sync::oneshot::Sender<()>>,
    running: bool,
}

/// On the blocking pool, one thread per app at a time: deletes the queued data keys, and tries
/// the ones that cannot be deleted again after a pause (doubling up to [`KEY_RETRY_MAX`]) or as
/// soon as more are queued, until none is left. A round stops at its first failure (the key
/// store is likely locked, and each try waits out its 5 s busy timeout holding its mutex, which
/// enrollments need too). Ends with the app: the start-up sweep destroys what is left.
fn shred(app: &std::sync::Weak<App>) {
    let mut pending: Vec<KeyId> = Vec::new();
    let mut pause = KEY_RETRY_FIRST;
    let mut failing = false;
    loop {
        let Some(app) = app.upgrade() else { return };
        let tried = {
            let mut q = app.doomed.queue.lock().expect("doomed keys lock");
            if pending.is_empty() && q.ids.is_empty() {
                q.running = false;
                return;
            }
            pending.append(&mut q.ids);
            std::mem::take(&mut q.tried)
        };
        let mut stuck = None;
        pending.retain(|id| {
            if stuck.is_some() {
                return true;
            }
            match app.keystore.delete(*id) {
                Ok(()) => false,
                Err(e) => {
                    stuck = Some(e);
                    true
                }
            }
        });
        for t in tried {
            let _ = t.send(());
        }
        match stuck {
            None => {
                if std::mem::take(&mut failing) {
                    tracing::info!("erased users' data keys destroyed after a retry");
                }
                pause = KEY_RETRY_FIRST;
            }
            Some(e) => {
                if !std::mem::replace(&mut failing, true) {
                    tracing::error!(
                        error = %e,
                        keys = pending.len(),
                        "cannot destroy erased users' data keys yet; retrying"
                    );
                } else {
                    tracing::debug!(
                        error = %e,
                        keys = pending.len(),
                        "erased users' data keys: a retry failed"
                    );
                }
                let q = app.doomed.queue.lock().expect("doomed keys lock");
                let _ = app
                    .doomed
                    .more
                    .wait_timeout_while(q, pause, |q| q.ids.is_empty());
                pause = (pause * 2).min(KEY_RETRY_MAX);
            }
        }
    }
}

/// Runs `f`, which may wait on the key store (its mutex, or SQLite's 5 s busy timeout), without
/// stalling a runtime worker: on the multi-thread runtime the worker hands its other tasks to
/// another thread first (`block_in_place`). Elsewhere it runs in place: outside a runtime or on
/// the blocking pool nothing waits behind it, and the current-thread runtime (some tests) has
/// no other thread to hand tasks to.
pub(super) fn off_worker<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// The first pause before an erased user's data key that could not be deleted is tried again,
/// and the longest.
const KEY_RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(100);
const KEY_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(30);

fn rand12(rng: &dyn super::clock::Rng) -> [u8; 12] {
    let mut b = [0u8; 12];
    rng.fill(&mut b);
    b
}

/// Opens a user's sealed template with its data key from the key store.
pub fn open_template(
    keystore: &super::keystore::KeyStore,
    wrap: &KeyWrap,
    t: &crate::core::event::SealedTemplate,
    partner: PartnerId,
    user: &crate::core::ExternalId,
    dim: usize,
) -> Result<Zeroizing<Vec<f32>>, String> {
    let wrapped = keystore
        .get(t.key_id)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "its data key is gone".to_string())?;
    let key = wrap.unwrap(t.key_id, &wrapped).map_err(|e| e.to_string())?;
    // Clear template values: zeroed when dropped (SPEC 8.3), wherever the caller drops them.
    templates::open(t, &key, partner, user, dim)
        .map(Zeroizing::new)
        .map_err(|e| e.to_string())
}

/// Enrolled templates of another dimension than `matching.dim`: none of their users would
/// match, and none could enroll again (already enrolled), so start-up refuses.
#[derive(Debug)]
pub struct WrongDimension {
    /// `matching.dim`.
    pub configured: usize,
    /// Dimension of the enrolled templates → how many have it.
    pub found: std::collections::BTreeMap<usize, usize>,
}

/// The dimension a sealed template was enrolled with, read from its ciphertext's length
/// (little-endian f32 values plus the 16-byte tag); `None` when that length fits no dimension.
fn sealed_dim(t: &crate::core::event::SealedTemplate) -> Option<usize> {
    use base64::Engine;
    let len = base64::engine::general_purpose::STANDARD
        .decode(&t.ciphertext)
        .ok()?
        .len();
    let clear = len.checked_sub(16)?;
    (clear > 0 && clear % 4 == 0).then_some(clear / 4)
}

/// How many templates that cannot be opened [`build_index`] names one by one.
const NAMED_NOT_INDEXED: usize = 5;

/// Builds the matcher index from the enrolled users of `state`. A template that cannot be
/// opened (its data key destroyed or lost, a corrupted key store entry) is logged and left
/// out: one user's broken template must not stop the gateway for everyone else. Templates of
/// another dimension are a configuration error instead (`matching.dim` changed): every one of
/// them is affected, and setting the dimension back repairs them all.
pub fn build_index(
    state: &crate::core::State,
    keystore: &super::keystore::KeyStore,
    wrap: &KeyWrap,
    dim: usize,
) -> Result<Index, WrongDimension> {
    let mut index = Index::new(dim);
    let mut wrong = std::collections::BTreeMap::new();
    let mut not_indexed = 0usize;
    // In enrollment order (the order a live index inserted them), ties by external_id: a
    // partner's rows are scanned in insertion order, so the state map's random order would
    // change which of two equal rows wins from restart to restart.
    let mut users: Vec<_> = state.users().collect();
    users.sort_by(|a, b| {
        (a.partner_id, a.enrolled_at, &a.external_id).cmp(&(
            b.partner_id,
            b.enrolled_at,
            &b.external_id,
        ))
    });
    for u in users {
        let Some(t) = &u.template else { continue };
        match open_template(keystore, wrap, t, u.partner_id, &u.external_id, dim) {
            Ok(v) => index.insert(u.partner_id, u.external_id.clone(), &v),
            Err(e) => {
                // Counted only when it opens at its own dimension (authenticated): a corrupt
                // ciphertext is not evidence of another dimension.
                let other = sealed_dim(t).filter(|d| {
                    *d != dim
                        && open_template(keystore, wrap, t, u.partner_id, &u.external_id, *d)
                            .is_ok()
                });
                match other {
                    Some(d) => *wrong.entry(d).or_insert(0usize) += 1,
                    None => {
                        // Named one by one up to a few: a lost key store fails them all, and
                        // one line per enrolled person would bury the reason in the log.
                        not_indexed += 1;
                        if not_indexed <= NAMED_NOT_INDEXED {
                            tracing::error!(user = %u.external_id, error = %e, "template not indexed")
                        }
                    }
                }
            }
        }
    }
    if not_indexed > NAMED_NOT_INDEXED {
        tracing::error!(
            not_indexed,
            named = NAMED_NOT_INDEXED,
            "templates not indexed in all (the first ones are named above): their people will \
             not match until they enrol again; a key store that does not belong to this log \
             fails every one"
        );
    }
    if wrong.is_empty() {
        Ok(index)
    } else {
        Err(WrongDimension {
            configured: dim,
            found: wrong,
        })
    }
}
