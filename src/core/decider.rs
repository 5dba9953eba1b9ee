//! decide/evolve: the rules for partners, sessions and users.
//!
//! `decide(&State, &Command, now)` returns the events a command produces (or why it is
//! refused) and never changes anything; `State::evolve(&Recorded)` folds one stored event into
//! the read model. Invariants: `evolve` is total (it never fails on an event that `decide`
//! could have produced), and the state after folding a log is the same whether the events
//! arrived live or from a replay.

use super::command::{Command, EnrollRequest};
use super::event::{Event, Expected, Idempotency, Recorded, StreamAppend, stream};
use super::ids::*;
use super::session::{Session, SessionState};
use chrono::{DateTime, Duration, Utc};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};

/// How long an `Idempotency-Key` answer is kept (SPEC 2).
pub const IDEMPOTENCY_TTL: Duration = Duration::hours(24);

#[derive(Clone, Debug, PartialEq)]
pub struct Partner {
    pub id: PartnerId,
    pub name: String,
    pub api_key_hash: SecretHash,
    pub active: bool,
    pub created_at: DateTime<Utc>,
    pub revision: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct User {
    pub partner_id: PartnerId,
    pub external_id: ExternalId,
    pub username: Option<String>,
    pub metadata: Option<Value>,
    pub enrolled_at: DateTime<Utc>,
    pub session_id: SessionId,
}

#[derive(Clone, Debug, PartialEq)]
struct IdemEntry {
    session_id: SessionId,
    fingerprint: String,
    at: DateTime<Utc>,
}

/// The read model every decision is made against.
#[derive(Clone, Debug, Default)]
pub struct State {
    partners: HashMap<PartnerId, Partner>,
    partner_by_key: HashMap<SecretHash, PartnerId>,
    sessions: HashMap<SessionId, Session>,
    session_by_token: HashMap<SecretHash, SessionId>,
    users: HashMap<(PartnerId, ExternalId), User>,
    idempotency: HashMap<(PartnerId, String), IdemEntry>,
    /// Last revision of every stream seen, for expected-revision appends.
    revisions: HashMap<String, u64>,
    /// Pending sessions by expiry.
    deadlines: BTreeSet<(DateTime<Utc>, SessionId)>,
    /// Global position of the last event folded in.
    position: u64,
}

/// Why a command is refused. Each maps to exactly one API answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("not found")]
    NotFound,
    #[error("user with this external_id already enrolled")]
    AlreadyEnrolled,
    #[error("session is not pending")]
    SessionNotPending,
    #[error("Idempotency-Key was already used with a different request")]
    IdempotencyMismatch,
    #[error("partner already exists")]
    PartnerExists,
}

/// What a command produced.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub appends: Vec<StreamAppend>,
    pub outcome: Outcome,
}

/// What the caller should answer, beyond "it happened".
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// A session exists for this request: new, or the one an `Idempotency-Key` already made.
    Session {
        id: SessionId,
        replayed: bool,
    },
}

impl Decision {
    fn new(appends: Vec<StreamAppend>) -> Self {
        Self {
            appends,
            outcome: Outcome::Done,
        }
    }
    pub fn events(&self) -> impl Iterator<Item = &Event> {
        self.appends.iter().flat_map(|a| a.events.iter())
    }
}

impl State {
    fn expected(&self, stream: &str) -> Expected {
        match self.revisions.get(stream) {
            Some(r) => Expected::Revision(*r),
            None => Expected::NoStream,
        }
    }

    pub fn position(&self) -> u64 {
        self.position
    }
    pub fn revision(&self, stream: &str) -> Option<u64> {
        self.revisions.get(stream).copied()
    }
    pub fn partner(&self, id: PartnerId) -> Option<&Partner> {
        self.partners.get(&id)
    }
    pub fn partners(&self) -> impl Iterator<Item = &Partner> {
        self.partners.values()
    }
    pub fn partner_by_key_hash(&self, hash: &SecretHash) -> Option<&Partner> {
        self.partner_by_key
            .get(hash)
            .and_then(|id| self.partners.get(id))
    }
    pub fn session(&self, id: SessionId) -> Option<&Session> {
        self.sessions.get(&id)
    }
    pub fn session_by_token_hash(&self, hash: &SecretHash) -> Option<&Session> {
        self.session_by_token
            .get(hash)
            .and_then(|id| self.sessions.get(id))
    }
    pub fn user(&self, partner: PartnerId, external_id: &ExternalId) -> Option<&User> {
        self.users.get(&(partner, external_id.clone()))
    }
    /// The earliest instant at which [`Command::Tick`] has something to do.
    pub fn next_deadline(&self) -> Option<DateTime<Utc>> {
        self.deadlines.first().map(|(t, _)| *t)
    }

    /// Folds one stored event into the state.
    pub fn evolve(&mut self, rec: &Recorded) {
        self.position = self.position.max(rec.position);
        let rev = self
            .revisions
            .entry(rec.stream.clone())
            .or_insert(rec.revision);
        *rev = (*rev).max(rec.revision);
        match &rec.event {
            Event::PartnerCreated {
                partner_id,
                name,
                api_key_hash,
                at,
            } => {
                self.partner_by_key
                    .insert(api_key_hash.clone(), *partner_id);
                self.partners.insert(
                    *partner_id,
                    Partner {
                        id: *partner_id,
                        name: name.clone(),
                        api_key_hash: api_key_hash.clone(),
                        active: true,
                        created_at: *at,
                        revision: rec.revision,
                    },
                );
            }
            Event::PartnerActivated { partner_id, .. }
            | Event::PartnerDeactivated { partner_id, .. } => {
                if let Some(p) = self.partners.get_mut(partner_id) {
                    p.active = matches!(rec.event, Event::PartnerActivated { .. });
                    p.revision = rec.revision;
                }
            }
            Event::SessionCreated {
                session_id,
                partner_id,
                kind,
                language,
                token_hash,
                external_id,
                username,
                metadata,
                created_at,
                expires_at,
            } => {
                self.session_by_token
                    .insert(token_hash.clone(), *session_id);
                self.deadlines.insert((*expires_at, *session_id));
                self.sessions.insert(
                    *session_id,
                    Session {
                        id: *session_id,
                        partner_id: *partner_id,
                        kind: *kind,
                        language: *language,
                        token_hash: token_hash.clone(),
                        external_id: external_id.clone(),
                        username: username.clone(),
                        metadata: metadata.clone(),
                        state: SessionState::Pending,
                        fail_reason: None,
                        created_at: *created_at,
                        expires_at: *expires_at,
                        ended_at: None,
                        revision: rec.revision,
                    },
                );
            }
            Event::IdempotencyKeyUsed {
                partner_id,
                key,
                fingerprint,
                session_id,
                at,
            } => {
                self.idempotency.insert(
                    (*partner_id, key.clone()),
                    IdemEntry {
                        session_id: *session_id,
                        fingerprint: fingerprint.clone(),
                        at: *at,
                    },
                );
            }
            Event::SessionCompleted {
                session_id,
                external_id,
                at,
            } => self.end_session(*session_id, rec.revision, *at, |s| {
                s.state = SessionState::Completed;
                if external_id.is_some() {
                    s.external_id = external_id.clone();
                }
            }),
            Event::SessionFailed {
                session_id,
                reason,
                at,
            } => self.end_session(*session_id, rec.revision, *at, |s| {
                s.state = SessionState::Failed;
                s.fail_reason = Some(*reason);
            }),
            Event::SessionExpired { session_id, at } => {
                self.end_session(*session_id, rec.revision, *at, |s| {
                    s.state = SessionState::Expired;
                })
            }
            Event::UserEnrolled {
                partner_id,
                external_id,
                username,
                metadata,
                session_id,
                at,
            } => {
                self.users.insert(
                    (*partner_id, external_id.clone()),
                    User {
                        partner_id: *partner_id,
                        external_id: external_id.clone(),
                        username: username.clone(),
                        metadata: metadata.clone(),
                        enrolled_at: *at,
                        session_id: *session_id,
                    },
                );
            }
            Event::UserErased {
                partner_id,
                external_id,
                ..
            } => {
                self.users.remove(&(*partner_id, external_id.clone()));
            }
        }
    }

    fn end_session(
        &mut self,
        id: SessionId,
        revision: u64,
        at: DateTime<Utc>,
        f: impl FnOnce(&mut Session),
    ) {
        if let Some(s) = self.sessions.get_mut(&id) {
            self.deadlines.remove(&(s.expires_at, id));
            s.revision = revision;
            s.ended_at = Some(at);
            f(s);
        }
    }
}

/// Decides what `cmd` means given `state` at `now`. Pure: no IO, no clock, no randomness.
pub fn decide(state: &State, cmd: &Command, now: DateTime<Utc>) -> Result<Decision, Rejection> {
    match cmd {
        Command::CreatePartner {
            partner_id,
            name,
            api_key_hash,
        } => {
            if state.partners.contains_key(partner_id) {
                return Err(Rejection::PartnerExists);
            }
            Ok(Decision::new(vec![StreamAppend {
                stream: stream::partner(*partner_id),
                expected: Expected::NoStream,
                events: vec![Event::PartnerCreated {
                    partner_id: *partner_id,
                    name: name.clone(),
                    api_key_hash: api_key_hash.clone(),
                    at: now,
                }],
            }]))
        }
        Command::SetPartnerActive { partner_id, active } => {
            let p = state.partners.get(partner_id).ok_or(Rejection::NotFound)?;
            if p.active == *active {
                return Ok(Decision::new(vec![]));
            }
            let event = if *active {
                Event::PartnerActivated {
                    partner_id: *partner_id,
                    at: now,
                }
            } else {
                Event::PartnerDeactivated {
                    partner_id: *partner_id,
                    at: now,
                }
            };
            Ok(Decision::new(vec![StreamAppend {
                stream: stream::partner(*partner_id),
                expected: Expected::Revision(p.revision),
                events: vec![event],
            }]))
        }
        Command::CreateSession {
            partner_id,
            session_id,
            token_hash,
            kind,
            language,
            enroll,
            idempotency,
            ttl,
        } => decide_create_session(
            state,
            now,
            NewSession {
                partner_id: *partner_id,
                session_id: *session_id,
                token_hash,
                kind: *kind,
                language: *language,
                enroll: enroll.as_ref(),
                idempotency: idempotency.as_ref(),
                ttl: *ttl,
            },
        ),
        Command::CancelSession {
            partner,
            session_id,
        } => {
            let s = state.sessions.get(session_id).ok_or(Rejection::NotFound)?;
            if partner.is_some_and(|p| p != s.partner_id) {
                return Err(Rejection::NotFound);
            }
            if !s.is_open(now) {
                return Err(Rejection::SessionNotPending);
            }
            Ok(Decision::new(vec![StreamAppend {
                stream: stream::session(s.id),
                expected: Expected::Revision(s.revision),
                events: vec![Event::SessionFailed {
                    session_id: s.id,
                    reason: FailReason::Cancelled,
                    at: now,
                }],
            }]))
        }
        Command::Tick => {
            let due = state
                .deadlines
                .iter()
                .take_while(|(t, _)| *t <= now)
                .filter_map(|(_, id)| state.sessions.get(id))
                .map(|s| StreamAppend {
                    stream: stream::session(s.id),
                    expected: Expected::Revision(s.revision),
                    events: vec![Event::SessionExpired {
                        session_id: s.id,
                        at: s.expires_at,
                    }],
                })
                .collect();
            Ok(Decision::new(due))
        }
    }
}

struct NewSession<'a> {
    partner_id: PartnerId,
    session_id: SessionId,
    token_hash: &'a SecretHash,
    kind: SessionKind,
    language: Language,
    enroll: Option<&'a EnrollRequest>,
    idempotency: Option<&'a Idempotency>,
    ttl: Duration,
}

fn decide_create_session(
    state: &State,
    now: DateTime<Utc>,
    n: NewSession<'_>,
) -> Result<Decision, Rejection> {
    let mut appends = Vec::with_capacity(2);
    if let Some(idem) = n.idempotency {
        let key_stream = stream::idempotency(n.partner_id, &idem.key);
        let live = state
            .idempotency
            .get(&(n.partner_id, idem.key.clone()))
            .filter(|e| now < e.at + IDEMPOTENCY_TTL);
        if let Some(entry) = live {
            if entry.fingerprint != idem.fingerprint {
                return Err(Rejection::IdempotencyMismatch);
            }
            return Ok(Decision {
                appends: vec![],
                outcome: Outcome::Session {
                    id: entry.session_id,
                    replayed: true,
                },
            });
        }
        appends.push(StreamAppend {
            expected: state.expected(&key_stream),
            stream: key_stream,
            events: vec![Event::IdempotencyKeyUsed {
                partner_id: n.partner_id,
                key: idem.key.clone(),
                fingerprint: idem.fingerprint.clone(),
                session_id: n.session_id,
                at: now,
            }],
        });
    }
    if let Some(e) = n.enroll
        && state
            .users
            .contains_key(&(n.partner_id, e.external_id.clone()))
    {
        return Err(Rejection::AlreadyEnrolled);
    }
    appends.insert(
        0,
        StreamAppend {
            stream: stream::session(n.session_id),
            expected: Expected::NoStream,
            events: vec![Event::SessionCreated {
                session_id: n.session_id,
                partner_id: n.partner_id,
                kind: n.kind,
                language: n.language,
                token_hash: n.token_hash.clone(),
                external_id: n.enroll.map(|e| e.external_id.clone()),
                username: n.enroll.and_then(|e| e.username.clone()),
                metadata: n.enroll.and_then(|e| e.metadata.clone()),
                created_at: now,
                expires_at: now + n.ttl,
            }],
        },
    );
    Ok(Decision {
        appends,
        outcome: Outcome::Session {
            id: n.session_id,
            replayed: false,
        },
    })
}
