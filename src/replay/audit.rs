//! `palmgate audit verify | export | what-if`.
//!
//! Verification folds the whole log into a fresh state, event by event, exactly as start-up
//! does, and at each `DoorDecided` checks that (1) the recorded inputs are the ones the state
//! held at that point — policy version, site mode, the zone's last movement (and the movement
//! the decision makes), and, for a palm matched here, the user's record (partner, external id,
//! metadata) — and (2) the policy, run again on those inputs, gives the recorded verdict.
//!
//! Where the log records how a palm capture was judged (`judged`: liveness and the matching
//! rules in force, written since session 10), the capture's outcome is re-derived too: a door
//! decision identifies someone exactly when the capture is live and as similar as the
//! threshold asks; a session's ending (completed, `no_match`, `low_quality`,
//! `liveness_failed`, `already_enrolled`) and every retry follow from quality, liveness,
//! similarity and the retries spent. A similarity within 2·10⁻⁶ of the threshold (the log
//! rounds both to 6 decimals) is not judged.
//!
//! Once the log has recorded one judgement, every later palm read here records its own: a local
//! door decision or a session ending on a capture without one is a finding (logs written
//! before judgements were recorded have none at all, and verify as before). A decision's
//! subject without a similarity is only an upstream Pass API's: the decision then directly
//! follows the `UpstreamSessionEnded` at its reader that names the same person and metadata.
//! A decision is at the door its reader is bound to under the policy it names, in that door's
//! stream, and every event continues its stream's revisions (see `Fold::check_revision` for
//! the streams a gateway lets go of and starts again).
//!
//! A relay switched ON (`RelaySwitched`) was asked for: by a granting decision or an exit request
//! at its door (the pulse's tag names the capture, or `exit-request`), written (the event's `at`:
//! when the board's report came, which a report recorded late keeps) no earlier than the grant
//! or request (less a minute's clock slack) and before the pulse ended or soon after, or by the
//! door's resting unlock (window, emergency: as recorded, or as
//! the policy gives it at that instant). A resting unlock (`DoorRestingChanged`) is re-derived
//! from the policy, the site mode and its instant. A forged ON that unlocked a door for no one is
//! a finding; an OFF or a lock never is.
//!
//! Any changed byte breaks the hash chain at its position; any rewritten decision is a mismatch
//! at its position. A row the store cannot read at all (a value of the wrong type) is a finding
//! at its position, and verification reads on past it.

use crate::core::doors::{identified, rederive};
use crate::core::event::{
    CaptureRef, CaptureRejection, DoorSubject, Event, Judged, Recorded, UpstreamOutcome, stream,
};
use crate::core::policy::{DenyReason, Direction, DoorId, Policy, Request, Verdict};
use crate::core::state::{Passage, State};
use crate::core::{ExternalId, FailReason, PartnerId, ReaderId, SessionId, SessionKind};
use crate::store::EventStore;
use crate::store::chain::Verifier;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// One problem found, at a log position.
#[derive(Clone, Debug, PartialEq)]
pub struct Finding {
    pub position: u64,
    pub problem: String,
}

/// What `verify` found.
#[derive(Debug, Default)]
pub struct Report {
    pub events: u64,
    pub decisions: u64,
    pub findings: Vec<Finding>,
    /// Oddities an honest log can have, shown but not failing verification: `recorded_at`
    /// stepping back more than a few minutes (a gateway clock corrected backwards, or a second
    /// gateway's clock, as much as a rewritten time).
    pub warnings: Vec<Finding>,
    /// The last event read: its position and hash (hex). The chain proves everything up to
    /// it; events cut off the end leave no trace in the log, so an operator who keeps this
    /// elsewhere can tell a later log that no longer reaches it.
    pub head: Option<(u64, String)>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.findings.is_empty()
    }
}

/// Events per page of the parallel read.
const PAGE: u64 = 10_000;
/// Threads decoding and re-hashing pages beside the one that folds them.
const DECODERS: u64 = 2;

/// One stored event, hashed and decoded off the folding thread.
struct Checked {
    position: u64,
    prev_hash: [u8; 32],
    hash: [u8; 32],
    computed: [u8; 32],
    /// The stream's name as [`stream_key`] gives it, and the revision, as stored.
    stream_key: u64,
    revision: u64,
    decoded: Result<Recorded, crate::store::StoreError>,
    /// Why the row could not be read at all (a stored value of the wrong type: text that is
    /// not UTF-8, a revision that is not a number, a hash that is not 32 bytes); nothing else
    /// of it is known.
    unreadable: Option<String>,
}

impl Checked {
    fn unreadable(position: u64, reason: String) -> Checked {
        Checked {
            position,
            prev_hash: [0; 32],
            hash: [0; 32],
            computed: [0; 32],
            stream_key: 0,
            revision: 0,
            decoded: Err(crate::store::StoreError::Corrupt {
                position,
                reason: reason.clone(),
            }),
            unreadable: Some(reason),
        }
    }
}

/// A stream's name as the revision check keys it: 64 bits of SipHash (fixed keys), so that
/// remembering every stream of a long log costs 16 bytes each, not a copy of its name. Two
/// names colliding (about 1 in 30 million at a million streams) could only make a revision
/// look out of order.
fn stream_key(stream: &str) -> u64 {
    hash64(stream)
}

/// 64 bits of SipHash (fixed keys) of `v`.
fn hash64(v: impl std::hash::Hash) -> u64 {
    use std::hash::Hasher;
    let mut h = std::hash::DefaultHasher::new();
    v.hash(&mut h);
    h.finish()
}

/// Page `k` covers positions `(k·size, (k+1)·size]`, read into `out` (emptied first, its
/// capacity reused); false once nothing lies at or beyond it.
///
/// A row the store cannot read (it names the position: `StoreError::Corrupt`) becomes an
/// unreadable entry at its position and the page is read on from the row after it, so one
/// bad value neither stops verification nor hides what follows. Any other error (the file
/// itself failing) ends verification.
fn read_page(
    store: &dyn EventStore,
    k: u64,
    size: u64,
    out: &mut Vec<Checked>,
) -> Result<bool, crate::store::StoreError> {
    use crate::store::StoreError;
    out.clear();
    let end = (k + 1) * size;
    let mut after = k * size;
    let mut any = false;
    while after < end {
        let mut last = after;
        let read = store.read_raw_each(after, (end - after) as usize, &mut |r| {
            last = r.position;
            if r.position <= end {
                out.push(Checked {
                    position: r.position,
                    prev_hash: r.prev_hash,
                    hash: r.hash,
                    computed: r.computed_hash(),
                    stream_key: stream_key(r.stream),
                    revision: r.revision,
                    decoded: r.decode(),
                    unreadable: None,
                })
            }
        });
        match read {
            Ok(lent) => {
                any |= lent > 0;
                break;
            }
            // Past this page (positions missing before it): the next page reads it.
            Err(StoreError::Corrupt { position, .. }) if position > end => return Ok(true),
            Err(StoreError::Corrupt { position, reason }) if position > last => {
                any = true;
                out.push(Checked::unreadable(position, reason));
                after = position;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(any)
}

/// Verifies the chain, the schema and every door decision.
///
/// Pages are read, re-hashed and decoded by [`DECODERS`] threads (page `k` by thread
/// `k mod DECODERS`, in order) while this thread checks the links and folds, page by page in
/// log order — the same checks, in the same order, as a single pass.
pub fn verify(store: &dyn EventStore) -> Result<Report, crate::store::StoreError> {
    verify_paged(store, PAGE, DECODERS)
}

/// Checks the head the log saved of itself ([`EventStore::saved_head`]) against what was read:
/// a saved position past the last event means events were cut off the end; a different hash
/// at that position, an event rewritten and the chain re-sealed after it. A saved head behind
/// the last event is normal (it is saved every so often and at a clean stop). A forger who
/// rewrites the saved head too is not caught here: keep the printed head elsewhere.
fn check_saved_head(
    store: &dyn EventStore,
    report: &mut Report,
) -> Result<(), crate::store::StoreError> {
    let saved = match store.saved_head() {
        Ok(Some(s)) => s,
        Ok(None) => return Ok(()),
        Err(e) => {
            report.findings.push(Finding {
                position: report.head.as_ref().map_or(0, |(p, _)| *p) + 1,
                problem: format!("the head the log saved of itself cannot be read: {e}"),
            });
            return Ok(());
        }
    };
    check_head(
        store,
        report,
        saved,
        "it saved its head",
        "the log saved its head",
    )
}

/// Checks a head kept outside the log (`audit verify --expect-head POS:HASH`: one printed by
/// an earlier verify, or taken from another gateway) against the log just verified. It is
/// what the chain and the saved head cannot show: a forger who re-sealed the chain and
/// rewrote the saved head too (a person swapped in a grant, a decision removed and the rest
/// renumbered) or cut the tail after the last save leaves a log that no longer holds that
/// hash at that position.
pub fn check_expected_head(
    store: &dyn EventStore,
    report: &mut Report,
    head: (u64, [u8; 32]),
) -> Result<(), crate::store::StoreError> {
    check_head(
        store,
        report,
        head,
        "the head kept elsewhere (--expect-head) is",
        "the head kept elsewhere (--expect-head) is here",
    )
}

/// Checks the acknowledged mark kept beside a SQLite log (`<log>.acked`, outside its `-wal`):
/// the log must still hold that event. A `-wal` removed or damaged after a crash takes the
/// newest events with it, and the saved head too; the mark still names what was acknowledged.
pub fn check_acknowledged(
    store: &dyn EventStore,
    report: &mut Report,
    mark: crate::store::acked::Mark,
) -> Result<(), crate::store::StoreError> {
    check_head(
        store,
        report,
        (mark.position, mark.hash),
        "it acknowledged an event (the mark beside it, <log>.acked)",
        "the log acknowledged this event (the mark beside it, <log>.acked)",
    )
}

/// `head` must be in the log: an event at its position with its hash. `ends` and `here` word
/// the two findings for whose head it is.
fn check_head(
    store: &dyn EventStore,
    report: &mut Report,
    (position, hash): (u64, [u8; 32]),
    ends: &str,
    here: &str,
) -> Result<(), crate::store::StoreError> {
    let at = match position {
        0 => Vec::new(),
        p => store.read_raw(p - 1, 1)?,
    };
    match at.first().filter(|e| e.position == position) {
        None => {
            let last = report.head.as_ref().map_or(0, |(p, _)| *p);
            report.findings.push(Finding {
                position: last + 1,
                problem: format!(
                    "the log ends at position {last}, but {ends} at position {position} (hash \
                     {}): events {}..={position} at least were removed",
                    hex::encode(hash),
                    last + 1
                ),
            });
        }
        Some(e) if e.hash != hash => report.findings.push(Finding {
            position,
            problem: format!(
                "{here} with hash {}, but this event's hash is {}: rewritten, and the chain \
                 re-sealed after it",
                hex::encode(hash),
                hex::encode(e.hash)
            ),
        }),
        Some(_) => {}
    }
    Ok(())
}

/// `POS:HASH` as `audit verify` prints a head (`head: position POS, hash HASH`), for
/// `--expect-head`.
pub fn parse_head(text: &str) -> Result<(u64, [u8; 32]), String> {
    let bad = || {
        format!(
            "--expect-head {text:?}: give POSITION:HASH as `audit verify` prints them (e.g. \
             1042:3f9a…, the hash as 64 hex digits)"
        )
    };
    let (p, h) = text.trim().split_once(':').ok_or_else(bad)?;
    let position: u64 = p.trim().parse().map_err(|_| bad())?;
    let mut hash = [0u8; 32];
    hex::decode_to_slice(h.trim(), &mut hash).map_err(|_| bad())?;
    if position == 0 {
        return Err(format!("--expect-head {text:?}: positions start at 1"));
    }
    Ok((position, hash))
}

/// Every head a text names as `--expect-head POSITION:HASH` (the gateway's journal lines, an
/// earlier verify's output), each once, in the order first named. A malformed one is skipped.
pub fn heads_in(text: &str) -> Vec<(u64, [u8; 32])> {
    let mut out: Vec<(u64, [u8; 32])> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    const FLAG: &str = "--expect-head";
    for (i, _) in text.match_indices(FLAG) {
        let rest = text[i + FLAG.len()..].trim_start_matches([' ', '=']);
        let end = rest
            .find(|c: char| !(c.is_ascii_hexdigit() || c == ':'))
            .unwrap_or(rest.len());
        // A token running on into letters or digits is not a head.
        let whole = !rest[end..].starts_with(|c: char| c.is_alphanumeric() || c == '_');
        if whole
            && let Ok(head) = parse_head(&rest[..end])
            && seen.insert(head)
        {
            out.push(head);
        }
    }
    out
}

/// [`verify`] with pages of `page` events read by `decoders` threads; `decoders = 0` does
/// everything on the calling thread (the benchmark's baseline). Tests use tiny pages to cross
/// page boundaries.
pub fn verify_paged(
    store: &dyn EventStore,
    page: u64,
    decoders: u64,
) -> Result<Report, crate::store::StoreError> {
    use std::sync::mpsc::{Receiver, sync_channel};
    let page_size = page.max(1);
    if decoders == 0 {
        let mut fold = Fold::default();
        let mut buf = Vec::new();
        for k in 0.. {
            if !read_page(store, k, page_size, &mut buf)? {
                break;
            }
            buf.iter_mut().for_each(|c| fold.next(c));
        }
        let mut report = fold.finish();
        check_saved_head(store, &mut report)?;
        return Ok(report);
    }
    type Page = Result<Option<Vec<Checked>>, crate::store::StoreError>;
    std::thread::scope(|scope| {
        let mut pages: Vec<Receiver<Page>> = Vec::new();
        let mut spent = Vec::new();
        for w in 0..decoders {
            let (tx, rx) = sync_channel::<Page>(2);
            pages.push(rx);
            // Folded pages come back to their decoder, which empties and refills them: what the
            // fold left in them is freed on the thread that allocated it.
            let (back, reuse) = sync_channel::<Vec<Checked>>(4);
            spent.push(back);
            scope.spawn(move || {
                let mut k = w;
                loop {
                    let mut buf = reuse.try_recv().unwrap_or_default();
                    let page =
                        read_page(store, k, page_size, &mut buf).map(|more| more.then_some(buf));
                    let last = !matches!(page, Ok(Some(_)));
                    if tx.send(page).is_err() || last {
                        return;
                    }
                    k += decoders;
                }
            });
        }
        let mut fold = Fold::default();
        for k in 0.. {
            let w = (k % decoders) as usize;
            let page = pages[w].recv().unwrap_or(Ok(None))?;
            let Some(mut page) = page else {
                break;
            };
            page.iter_mut().for_each(|c| fold.next(c));
            // Back to its decoder, which empties and refills it.
            let _ = spent[w].try_send(page);
        }
        // Dropping the receivers ends the decoders.
        drop(pages);
        let mut report = fold.finish();
        check_saved_head(store, &mut report)?;
        Ok(report)
    })
}

/// The sequential part of verification: links, then each event checked and folded in order.
#[derive(Default)]
struct Fold {
    report: Report,
    chain: Verifier,
    state: State,
    policies: HashMap<String, Arc<Policy>>,
    seen: Seen,
    /// Every stream's last revision, by [`stream_key`], never forgotten (the state lets go of
    /// ended sessions' streams and others; see [`Fold::check_revision`]).
    revisions: HashMap<u64, u64>,
    /// After an unreadable row: the next row's link is taken as stored.
    resume_after: Option<u64>,
    /// Unreadable rows whose revision no later row has yet been found to skip.
    unreadable: u64,
    /// The previous event's `recorded_at`.
    last_recorded: Option<chrono::DateTime<chrono::Utc>>,
}

/// How far `recorded_at` may go back from one event to the next before verify warns about it:
/// concurrent appends carry the instants their commands were decided at, and a clock may be
/// stepped back a little. A rewritten time further off shows as a step back, at the event after
/// it or at itself; a warning, not a finding, since a clock corrected backwards (a box without
/// NTP, a second gateway) leaves the same trace in an honest log. A door decision's own time is
/// checked strictly (its `at` is its `recorded_at`).
const RECORDED_AT_SLACK: chrono::Duration = chrono::Duration::minutes(5);

/// A door decision's `at` is the instant it was decided, which is also its `recorded_at` (one
/// clock reading for both); this much apart allows for their different text precisions.
const DECIDED_AT_SLACK: chrono::Duration = chrono::Duration::seconds(1);

/// What the log has shown so far that later events are checked against.
#[derive(Default)]
struct Seen {
    /// The position of the first event recording how a palm capture was judged (`judged`,
    /// written since session 10); from then on every local door decision and every session
    /// ending on a capture records it.
    judged: Option<u64>,
    /// The last `UpstreamSessionEnded`: the door decision it makes follows it directly.
    upstream_end: Option<UpstreamEnd>,
    /// Remote sessions the log bound (`UpstreamIdentifyStarted`) and has not seen end: their
    /// reader and trigger. Kept here, not read from the folded state, which lets a binding go
    /// after the default retention while a gateway configured with a longer one still records
    /// its ending.
    upstream_open: HashMap<crate::core::UpstreamSessionId, (ReaderId, String)>,
    /// The pulses the log has asked of each relay, by [`pulse_key`] (the relay and the pulse's
    /// tag: a granting decision's capture id, or `exit-request`): when each was asked, and the
    /// last instant its board write may be (its end and [`RELAY_REPORT_SLACK`]).
    pulses: HashMap<u64, Windows>,
    /// The same pulses in the order asked, with their last instants: those older than
    /// [`PULSE_HORIZON`] are let go.
    pulse_order: std::collections::VecDeque<(u64, DateTime<Utc>)>,
    /// When each door ([`stream_key`] of its id) last came to rest locked: a report of the
    /// unlock already on its way may follow within [`RELAY_REPORT_SLACK`].
    locked: HashMap<u64, DateTime<Utc>>,
    /// When each door ([`stream_key`] of its id) last came to rest unlocked: an ON of its
    /// resting drive is no earlier (its `at`, less [`RELAY_REPORT_SLACK`]).
    unlocked: HashMap<u64, DateTime<Utc>>,
}

/// How long after a relay was asked to switch ON (a grant's or exit request's pulse, until its
/// end; a resting unlock, until the door rests locked again) its ON may still be recorded: the
/// board's write and read-back, a retry of a refused write, and the report's way into the log.
/// An ON the log asked for nothing near (a forged `RelaySwitched`, re-sealed) is a finding.
const RELAY_REPORT_SLACK: chrono::Duration = chrono::Duration::seconds(60);

/// How long after a pulse its ON may still be recorded: a report waits while the log cannot be
/// written, and keeps the board's time (`at`). A log unwritable longer than this makes the late
/// report a finding.
const PULSE_HORIZON: chrono::Duration = chrono::Duration::days(1);

/// The windows (asked, last instant) in which one relay was asked for pulses with one tag: a
/// capture id's one, or every exit request's (`older`, within [`PULSE_HORIZON`]).
struct Windows {
    last: (DateTime<Utc>, DateTime<Utc>),
    older: Vec<(DateTime<Utc>, DateTime<Utc>)>,
}

impl Seen {
    /// `door`'s relay under `policy` is asked for a pulse tagged `tag` at `at`.
    fn pulse(&mut self, policy: Option<&Policy>, door: &DoorId, tag: &str, at: DateTime<Utc>) {
        let Some(d) = policy.and_then(|p| p.door(door)) else {
            return;
        };
        let until =
            at + chrono::Duration::milliseconds(i64::from(d.relay.pulse_ms)) + RELAY_REPORT_SLACK;
        let key = pulse_key(&d.relay.device, d.relay.coil, tag);
        match self.pulses.entry(key) {
            std::collections::hash_map::Entry::Occupied(mut e) => {
                let w = e.get_mut();
                let last = std::mem::replace(&mut w.last, (at, until));
                w.older.push(last);
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(Windows {
                    last: (at, until),
                    older: Vec::new(),
                });
            }
        }
        self.pulse_order.push_back((key, until));
        let cutoff = at - PULSE_HORIZON;
        while let Some(&(k, u)) = self.pulse_order.front()
            && u < cutoff
        {
            self.pulse_order.pop_front();
            if let Some(w) = self.pulses.get_mut(&k) {
                if w.last.1 < cutoff {
                    self.pulses.remove(&k);
                } else {
                    w.older.retain(|(_, u)| *u >= cutoff);
                }
            }
        }
    }

    /// Whether a pulse tagged `tag` of `device`'s `coil` was asked for near `at` (the board's
    /// time of the ON): no earlier than [`RELAY_REPORT_SLACK`] before it was asked (clocks step),
    /// no later than its last instant. So a forged ON, whatever `at` it names, must sit in the
    /// window of a pulse the log really asked for.
    fn pulse_asked(&self, device: &str, coil: u16, tag: &str, at: DateTime<Utc>) -> bool {
        !tag.is_empty()
            && self
                .pulses
                .get(&pulse_key(device, coil, tag))
                .is_some_and(|w| {
                    std::iter::once(&w.last)
                        .chain(&w.older)
                        .any(|(from, until)| *from - RELAY_REPORT_SLACK <= at && at <= *until)
                })
    }
}

/// A pulse (board id, coil and tag) as [`Seen`] keys it: 64 bits of SipHash, so that a granting
/// decision (a third of a busy log) costs no allocation; a collision could only make an ON look
/// asked for.
fn pulse_key(device: &str, coil: u16, tag: &str) -> u64 {
    hash64((device, coil, tag))
}

struct UpstreamEnd {
    position: u64,
    reader_id: ReaderId,
    outcome: UpstreamOutcome,
    external_id: Option<ExternalId>,
    metadata: Option<Value>,
    /// Arrived too late to open a door: no decision may follow it.
    late: bool,
    /// The trigger the remote session was opened for (its binding, as the log made it).
    trigger_id: Option<String>,
}

impl Fold {
    /// Checks and folds `c`, taking out of it what the state keeps (see [`State::evolve_take`]);
    /// the rest is freed by whoever drops it: the decoding thread that allocated it, when it
    /// refills the page.
    fn finish(mut self) -> Report {
        let position = self.chain.verified();
        if position > 0 {
            self.report.head = Some((position, hex::encode(self.chain.last_hash())));
        }
        self.report
    }

    fn next(&mut self, c: &mut Checked) {
        self.report.events += 1;
        if let Some(why) = &c.unreadable {
            let expected = self.resume_after.unwrap_or(self.chain.verified()) + 1;
            if c.position != expected {
                self.report.findings.push(Finding {
                    position: c.position,
                    problem: format!(
                        "hash chain: expected position {expected}, found {} (an event is missing or out of order)",
                        c.position
                    ),
                });
            }
            self.report.findings.push(Finding {
                position: c.position,
                problem: format!("unreadable row: {why}"),
            });
            // Its hash is unknown: the next row links to whatever it names.
            self.resume_after = Some(c.position);
            self.unreadable += 1;
            return;
        }
        if let Some(p) = self.resume_after.take() {
            self.chain.resume_after(p, &c.prev_hash);
        }
        if let Err(b) = self
            .chain
            .check_link(c.position, &c.prev_hash, &c.hash, &c.computed)
        {
            self.report.findings.push(Finding {
                position: b.position,
                problem: format!("hash chain: {}", b.reason),
            });
            // Go on from this event as stored: every break is reported at its own position
            // (SPEC 9: any tampered byte), not only the first.
            self.chain.resume_after(c.position, &c.hash);
        }
        self.check_revision(c);
        let rec = match &mut c.decoded {
            Ok(r) => r,
            Err(e) => {
                self.report.findings.push(Finding {
                    position: c.position,
                    problem: format!("schema: {e}"),
                });
                return;
            }
        };
        if let Some(last) = self.last_recorded
            && rec.recorded_at < last - RECORDED_AT_SLACK
        {
            self.report.warnings.push(Finding {
                position: c.position,
                problem: format!(
                    "recorded at {}, {} s before the event before it ({}): the log's clock went \
                     back, or one of the two times was rewritten",
                    crate::http::time_text(rec.recorded_at),
                    (last - rec.recorded_at).num_seconds(),
                    crate::http::time_text(last)
                ),
            });
        }
        self.last_recorded = Some(rec.recorded_at);
        check_event(
            rec,
            &self.state,
            &mut self.policies,
            &mut self.seen,
            &mut self.report,
        );
        self.state.evolve_take(rec);
    }

    /// The event continues its stream: its revision is the stream's last one + 1, or 0 for a
    /// stream never seen. A stream starts again at 0 only once the gateway let go of it (the
    /// store drops a stream's head when the state forgets it): when the state folded here has
    /// forgotten it too, or when it is a stream the state forgets after a configured retention
    /// and may use again (`delivery-`: an access delivery's id names its reader and capture;
    /// `upstream-`: the remote names its sessions; the audit folds with the default retentions,
    /// the gateway with its own). A session's stream never starts again: a session id is new
    /// each time (`SessionCreated` expects no stream), and once forgotten a session takes no
    /// event, so a second revision 0 is a forgery (a session replayed to end differently).
    fn check_revision(&mut self, c: &Checked) {
        let last = self.revisions.insert(c.stream_key, c.revision);
        let Ok(rec) = &c.decoded else {
            return;
        };
        let next = last.map_or(0, |l| l + 1);
        if c.revision == next {
            return;
        }
        let restarted = c.revision == 0
            && !rec.stream.starts_with("session-")
            && (self.state.revision(&rec.stream).is_none()
                || ["delivery-", "upstream-"]
                    .iter()
                    .any(|p| rec.stream.starts_with(p)));
        if restarted {
            return;
        }
        // Revisions an unreadable row may hold.
        let skipped = c.revision.saturating_sub(next);
        if c.revision > next && skipped <= self.unreadable {
            self.unreadable -= skipped;
            return;
        }
        self.report.findings.push(Finding {
            position: c.position,
            problem: match last {
                Some(l) => format!(
                    "stream {}: revision {}, but its last revision was {l}",
                    rec.stream, c.revision
                ),
                None => format!(
                    "stream {}: revision {}, but the stream starts here (revision 0)",
                    rec.stream, c.revision
                ),
            },
        });
    }
}

fn check_event(
    rec: &Recorded,
    state: &State,
    policies: &mut HashMap<String, Arc<Policy>>,
    seen: &mut Seen,
    report: &mut Report,
) {
    let mut problem = |p: String| {
        report.findings.push(Finding {
            position: rec.position,
            problem: p,
        })
    };
    match &rec.event {
        Event::PolicyActivated {
            sha256, document, ..
        } => match Policy::parse(document) {
            Ok(p) if p.sha256 == *sha256 => {
                policies.insert(sha256.clone(), Arc::new(p));
            }
            Ok(p) => problem(format!(
                "policy document hashes to {}, not the recorded {sha256}",
                p.sha256
            )),
            Err(e) => problem(format!(
                "activated policy is invalid: {}",
                e.first().map(|e| e.to_string()).unwrap_or_default()
            )),
        },
        Event::UpstreamIdentifyStarted {
            session_id,
            reader_id,
            trigger_id,
            ..
        } => {
            seen.upstream_open
                .insert(session_id.clone(), (reader_id.clone(), trigger_id.clone()));
        }
        Event::UpstreamSessionEnded {
            session_id,
            reader_id,
            outcome,
            external_id,
            metadata,
            late,
            ..
        } => {
            // The ending is the binding's: opened by an `UpstreamIdentifyStarted` for a trigger
            // at the same reader (the gateway ignores a webhook for a session it did not bind),
            // and a remote session ends once.
            let binding = seen.upstream_open.remove(session_id);
            match &binding {
                None => problem(format!(
                    "upstream session {} ends, but the log bound no such session (or it ended before)",
                    session_id.0
                )),
                Some((r, _)) if r != reader_id => problem(format!(
                    "upstream session {} ends at reader {reader_id}, but it was opened for reader {r}",
                    session_id.0
                )),
                Some(_) => {}
            }
            seen.upstream_end = Some(UpstreamEnd {
                position: rec.position,
                reader_id: reader_id.clone(),
                outcome: *outcome,
                external_id: external_id.clone(),
                metadata: metadata.clone(),
                late: *late,
                trigger_id: binding.map(|(_, t)| t),
            })
        }
        Event::DoorDecided {
            door,
            reader_id,
            capture_id,
            subject,
            erased,
            similarity,
            quality,
            judged,
            policy,
            mode,
            last_in_zone,
            movement,
            unopenable,
            verdict,
            at,
            ..
        } => {
            report.decisions += 1;
            // The schedules and validity dates were judged at `at`: it is the instant the
            // decision was recorded, not a time a forger may move.
            if (*at - rec.recorded_at).abs() > DECIDED_AT_SLACK {
                problem(format!(
                    "door {door}: decided at {}, but recorded at {}",
                    crate::http::time_text(*at),
                    crate::http::time_text(rec.recorded_at)
                ));
            }
            // Upstream mode: the decision an upstream session's ending at this reader makes
            // directly follows it, in the same append (src/core/upstream.rs `ended`).
            let upstream = seen
                .upstream_end
                .as_ref()
                .filter(|u| u.position + 1 == rec.position && u.reader_id == *reader_id);
            let door_stream = stream::door(door);
            if rec.stream != door_stream {
                problem(format!(
                    "door {door}: decided in stream {}, not the door's stream {door_stream}",
                    rec.stream
                ));
            }
            // The capture's judgement: recorded on every palm read here since the log first
            // recorded one (an upstream decision has none: the remote read the palm).
            match (judged, quality) {
                (Some(_), Some(_)) => {
                    seen.judged.get_or_insert(rec.position);
                }
                (Some(_), None) => problem(format!(
                    "door {door}: the capture's judgement is recorded without its quality"
                )),
                (None, _) => {
                    if let (Some(first), None) = (seen.judged, upstream) {
                        problem(format!(
                            "door {door}: capture judgement missing (recorded on every capture since position {first}), and the decision follows no upstream session ending at reader {reader_id}"
                        ));
                    }
                }
            }
            let Some(p) = policies.get(policy) else {
                problem(format!("decided under policy {policy}, never activated"));
                return;
            };
            match p.door_of_reader(reader_id) {
                Some(d) if d.id == *door => {}
                Some(d) => problem(format!(
                    "door {door}: reader {reader_id} is bound to door {} under policy {policy}",
                    d.id
                )),
                None => problem(format!(
                    "door {door}: reader {reader_id} is bound to no door under policy {policy}"
                )),
            }
            if state.policy.as_ref().map(|x| x.sha256.as_str()) != Some(policy.as_str()) {
                problem(format!(
                    "decided under policy {policy}, but {} was in force",
                    state
                        .policy
                        .as_ref()
                        .map_or("none".to_string(), |x| x.sha256.clone())
                ));
            }
            if state.site_mode() != *mode {
                problem(format!(
                    "recorded site mode {mode:?}, but the log says {:?}",
                    state.site_mode()
                ));
            }
            // The zone state the decision read, and the movement it made, as the log has them.
            let zone = p.zone_of_reader(reader_id);
            let last = match (&zone, subject) {
                (Some((z, _)), Some(s)) => state
                    .zone_last
                    .get(&(z.to_string(), s.partner_id, s.external_id.clone()))
                    .copied(),
                _ => None,
            };
            if last != *last_in_zone {
                problem(format!(
                    "recorded last zone movement {last_in_zone:?}, but the log says {last:?}"
                ));
            }
            // A grant at a door whose board the log has down records `unopenable` and no
            // movement (the person did not pass). A log from before that field records the
            // movement and no flag: still accepted, so those logs verify.
            let down = verdict.granted()
                && p.door_of_reader(reader_id)
                    .is_some_and(|d| state.device_down(&d.relay.device));
            if *unopenable && !down {
                problem(format!(
                    "door {door}: recorded as unable to open, but the log has its relay board up \
                     (or the decision is no grant)"
                ));
            }
            let moved = zone
                .filter(|_| verdict.granted() && subject.is_some() && !*unopenable)
                .map(|(z, d)| (z.to_string(), d));
            if moved != *movement {
                problem(format!(
                    "recorded zone movement {movement:?}, but the decision makes {moved:?}"
                ));
            }
            // A palm matched here (a similarity is recorded): the subject is the enrolled user's
            // record as the log has it. A subject without a similarity is only an upstream Pass
            // API's: the person its webhook named, recorded in the event just before.
            match (subject, similarity, upstream) {
                (Some(s), Some(_), _) => match state.user(s.partner_id, &s.external_id) {
                    Some(u) if crate::core::doors::is_subject(state, u, s) => {}
                    Some(_) => problem(format!(
                        "the recorded subject {} differs from the user's record in the log",
                        s.external_id.0
                    )),
                    None => problem(format!(
                        "the recorded subject {} is no enrolled user of partner {}",
                        s.external_id.0, s.partner_id
                    )),
                },
                (Some(s), None, Some(u)) => {
                    if !(u.outcome == UpstreamOutcome::Completed
                        && u.external_id.as_ref() == Some(&s.external_id)
                        && u.metadata == s.metadata)
                    {
                        problem(format!(
                            "the recorded subject {} is not the person the upstream session ending at position {} names",
                            s.external_id.0, u.position
                        ));
                    }
                    if u.late {
                        problem(format!(
                            "the upstream session ending at position {} arrived too late to open a door (late), but a decision follows it",
                            u.position
                        ));
                    }
                    // The trigger's key stands for the capture (and is the relay pulse's tag);
                    // decisions logged before the key existed record the bare trigger id.
                    if let Some(t) = &u.trigger_id
                        && *capture_id != crate::core::state::trigger_key(t)
                        && capture_id != t
                    {
                        problem(format!(
                            "the decision's capture id {capture_id} is not the key of trigger {t}, which opened the upstream session ending at position {}",
                            u.position
                        ));
                    }
                    // The remote's people are no local partner's users.
                    if state.partners.contains_key(&s.partner_id) {
                        problem(format!(
                            "the upstream subject {} is recorded under local partner {}",
                            s.external_id.0, s.partner_id
                        ));
                    }
                }
                (Some(s), None, None) => problem(format!(
                    "the recorded subject {} was matched by no palm here (no similarity) and the decision follows no upstream session ending at reader {reader_id}",
                    s.external_id.0
                )),
                // A late ending decides nothing: a decision after it is another scan's.
                (None, _, Some(u))
                    if u.outcome == UpstreamOutcome::Completed
                        && u.external_id.is_some()
                        && !u.late =>
                {
                    problem(format!(
                        "the upstream session ending at position {} names {}, but the decision records no subject",
                        u.position,
                        u.external_id.as_ref().map_or("", |x| x.0.as_str())
                    ))
                }
                (None, ..) => {}
            }
            // The palm's judgement, where it was recorded: someone is identified exactly when
            // the capture is live and as similar as the threshold asks.
            if let (Some(j), Some(q)) = (judged, quality) {
                let identified = subject.is_some() || *erased;
                if j.liveness && *q < j.min_quality {
                    problem(format!(
                        "door {door}: decided on a capture of quality {q}, below min_quality {} (a retry was due)",
                        j.min_quality
                    ));
                } else if let Some(m) = j.matches(*similarity).map(|m| m && j.liveness)
                    && m != identified
                {
                    problem(format!(
                        "door {door}: recorded {}, but {} gives {}",
                        if identified { "a match" } else { "no match" },
                        judgement(j, *similarity),
                        if m { "a match" } else { "no match" },
                    ));
                }
            }
            if verdict.granted() {
                seen.pulse(Some(p), door, capture_id, rec.recorded_at);
            }
            let Some(again) = rederive(p, &rec.event) else {
                return;
            };
            if again != *verdict {
                problem(format!(
                    "door {door}: recorded {}, the policy gives {}",
                    describe(verdict),
                    describe(&again)
                ));
            }
        }
        // A press that waited too long for the log pulsed nothing (`EXIT_REQUEST_STALE`).
        Event::DoorExitRequested { door, at }
            if !crate::core::doors::exit_request_stale(*at, rec.recorded_at) =>
        {
            seen.pulse(
                state.policy.as_deref(),
                door,
                "exit-request",
                rec.recorded_at,
            )
        }
        // A resting state is re-derived: an unlock must be what the policy in force, the site
        // mode and the clock give (`resting_changes` decides it from the same state, at the
        // instant it is recorded). A lock only locks: never a finding.
        Event::DoorRestingChanged { door, unlocked, .. } => {
            if !*unlocked {
                seen.locked.insert(stream_key(&door.0), rec.recorded_at);
            } else {
                seen.unlocked.insert(stream_key(&door.0), rec.recorded_at);
            }
            if *unlocked
                && state.policy.is_some()
                && !crate::core::doors::rests_unlocked(
                    state.policy.as_deref(),
                    state.lockdown,
                    state.emergency,
                    door,
                    rec.recorded_at,
                )
            {
                problem(format!(
                    "door {door}: recorded resting unlocked at {}, but no unlock window or emergency holds it unlocked then",
                    crate::http::time_text(rec.recorded_at)
                ));
            }
        }
        // A pulse recorded as refused undoes its grant's zone movement: only honest when the
        // log had the door shut (a refusal while its relay was on, or the door stood open, let
        // the person through).
        Event::RelayFailed {
            door,
            on: true,
            refused: true,
            ..
        } if state
            .policy
            .as_deref()
            .and_then(|p| p.door(door))
            .is_some_and(|d| !crate::core::doors::held_shut(state, d)) =>
        {
            problem(format!(
                "door {door}: a pulse recorded as refused (undoing its grant's zone movement), but the log has the door's relay on, resting unlocked, the door open or its contact's board down then"
            ));
        }
        // A relay switched ON that the log asked for: a granting decision's or exit request's
        // pulse, or the door's resting unlock (window, emergency). OFF locks: never a finding.
        Event::RelaySwitched {
            door,
            device,
            coil,
            on: true,
            tag,
            at,
        } => {
            let relay = state
                .policy
                .as_deref()
                .and_then(|p| p.door(door))
                .map(|d| (d.relay.device.as_str(), d.relay.coil));
            if *at - rec.recorded_at >= chrono::Duration::microseconds(1) {
                // A report is recorded when it came or later (the log unwritable a while), never
                // before: the board's write time is what the checks below judge. (`recorded_at`
                // is kept to the microsecond, `at` to the nanosecond.)
                problem(format!(
                    "door {door}: relay {device} coil {coil} switched ON at {}, after the event was recorded ({})",
                    crate::http::time_text(*at),
                    crate::http::time_text(rec.recorded_at)
                ));
            } else if relay != Some((device.as_str(), *coil)) {
                problem(format!(
                    "door {door}: relay {device} coil {coil} switched ON, but it is not the door's relay under the policy in force"
                ));
            } else if !(seen.pulse_asked(device, *coil, tag, *at) || {
                // The door rests unlocked (as the log has it, or as the policy gives it now: a
                // gateway starting inside a window drives the coil before its tick records
                // the change), or came to rest locked a moment ago. A pulse ending while the
                // door rests unlocked reports its ON with the pulse's tag. These are judged
                // when the event is recorded, and its `at` (the board's time) must not be
                // earlier than the unlock it served: a resting change waits for the log as the
                // report does, so the state at the recording is the state the board's write saw.
                let key = stream_key(&door.0);
                let since = |t: DateTime<Utc>| *at >= t - RELAY_REPORT_SLACK;
                let unlocked_at = seen.unlocked.get(&key).copied();
                (state.doors.get(door).is_some_and(|d| d.resting_unlocked)
                    && since(unlocked_at.unwrap_or(rec.recorded_at)))
                    || (crate::core::doors::rests_unlocked(
                        state.policy.as_deref(),
                        state.lockdown,
                        state.emergency,
                        door,
                        rec.recorded_at,
                    ) && since(rec.recorded_at))
                    // A gateway starting inside a window drives the coil at once, from the
                    // policy, while the log may be unwritable: the unlock is recorded after
                    // the ON's `at`. Honest when the policy's windows rest the door unlocked at
                    // that `at` and no lock was recorded since. (Windows only: an
                    // emergency's unlock is recorded when the emergency starts.)
                    || (crate::core::doors::rests_unlocked(
                        state.policy.as_deref(),
                        state.lockdown,
                        false,
                        door,
                        *at,
                    ) && seen.locked.get(&key).is_none_or(|t| *t <= *at))
                    || seen.locked.get(&key).is_some_and(|t| {
                        rec.recorded_at <= *t + RELAY_REPORT_SLACK
                            && since(unlocked_at.unwrap_or(*t))
                    })
            }) {
                problem(format!(
                    "door {door}: relay {device} coil {coil} switched ON{}, but no grant, exit request or unlock asked for it",
                    if tag.is_empty() {
                        String::new()
                    } else {
                        format!(" for {tag}")
                    }
                ));
            }
        }
        Event::SessionCompleted {
            session_id,
            capture,
            ..
        } => ending(
            state,
            seen,
            rec.position,
            *session_id,
            capture.as_ref(),
            None,
            &mut problem,
        ),
        Event::SessionFailed {
            session_id,
            reason,
            capture,
            ..
        } => ending(
            state,
            seen,
            rec.position,
            *session_id,
            capture.as_ref(),
            Some(*reason),
            &mut problem,
        ),
        Event::CaptureRejected {
            reader_id,
            reason: CaptureRejection::LowQuality,
            quality: Some(q),
            judged: Some(j),
            ..
        } if !(j.liveness && *q < j.min_quality) => problem(format!(
            "reader {reader_id}: a scan of quality {q}, liveness {}, rejected as low_quality, but min_quality is {}",
            j.liveness, j.min_quality
        )),
        Event::CaptureRetryRequested {
            session_id,
            capture,
            attempt,
            ..
        } => {
            if capture.judged.is_some() {
                seen.judged.get_or_insert(rec.position);
            }
            if let Some(j) = &capture.judged
                && !(j.liveness
                    && capture.quality < j.min_quality
                    && j.max_retries.is_some_and(|m| *attempt <= m))
            {
                problem(format!(
                    "session {}: retry {attempt} asked for a capture of quality {}, liveness {}, but min_quality is {} and max_retries {:?}",
                    session_id, capture.quality, j.liveness, j.min_quality, j.max_retries
                ));
            }
        }
        _ => {}
    }
}

/// A session's ending: on a capture (every completion, and every failure but `cancelled` and
/// `reader_offline`) that records its judgement once the log records judgements at all, and
/// then re-derived from it ([`check_capture`]).
fn ending(
    state: &State,
    seen: &mut Seen,
    position: u64,
    session_id: SessionId,
    capture: Option<&CaptureRef>,
    failed: Option<FailReason>,
    problem: &mut impl FnMut(String),
) {
    let on_capture = !matches!(
        failed,
        Some(FailReason::Cancelled | FailReason::ReaderOffline)
    );
    match capture {
        Some(c) if c.judged.is_some() => {
            seen.judged.get_or_insert(position);
            check_capture(state, session_id, c, failed, problem)
        }
        Some(_) => {
            if let Some(first) = seen.judged {
                problem(format!(
                    "session {session_id}: capture judgement missing (recorded on every capture since position {first})"
                ))
            }
        }
        None => {
            if let Some(first) = seen.judged
                && on_capture
            {
                problem(format!(
                    "session {session_id}: {} without the capture that ended it (recorded on every capture since position {first})",
                    failed.map_or("completed", |r| r.as_str())
                ))
            }
        }
    }
}

/// `similarity S against threshold T`, for findings.
fn judgement(j: &Judged, similarity: Option<f64>) -> String {
    match similarity {
        Some(s) => format!(
            "similarity {s} against threshold {} (liveness {})",
            j.threshold, j.liveness
        ),
        None => format!("no similarity (liveness {})", j.liveness),
    }
}

/// Re-derives a session's ending (`failed: None` = completed) from the capture that ended it,
/// when its judgement was recorded: liveness, then quality (a failure once the retries are
/// spent), then the match (identify: a match completes; enroll: a known palm fails
/// `already_enrolled`).
fn check_capture(
    state: &State,
    session_id: SessionId,
    c: &CaptureRef,
    failed: Option<FailReason>,
    problem: &mut impl FnMut(String),
) {
    let (Some(j), Some(s)) = (&c.judged, state.session(session_id)) else {
        return;
    };
    let Some(max_retries) = j.max_retries else {
        // A session's capture always records it; without it the retries cannot be judged.
        problem(format!(
            "session {session_id}: its capture records no max_retries"
        ));
        return;
    };
    let low = c.quality < j.min_quality;
    let expected = if !j.liveness {
        Some(Some(FailReason::LivenessFailed))
    } else if low && s.retries >= max_retries {
        Some(Some(FailReason::LowQuality))
    } else if low {
        // Not an ending at all: a retry was due.
        None
    } else {
        match (s.kind, j.matches(c.similarity)) {
            // Too close to the threshold to tell from the rounded similarity.
            (_, None) => return,
            (SessionKind::Identify, Some(true)) => Some(None),
            (SessionKind::Identify, Some(false)) => Some(Some(FailReason::NoMatch)),
            (SessionKind::Enroll, Some(true)) => Some(Some(FailReason::AlreadyEnrolled)),
            // An enroll capture of a new palm: completes, unless the external_id was taken
            // meanwhile (`already_enrolled` too; the users are in the state).
            (SessionKind::Enroll, Some(false)) => match failed {
                Some(FailReason::AlreadyEnrolled) => return,
                _ => Some(None),
            },
        }
    };
    let name = |f: Option<FailReason>| f.map_or("completed", |r| r.as_str());
    match expected {
        Some(e) if e == failed => {}
        Some(e) => problem(format!(
            "session {}: recorded {}, but a capture of quality {} with {} ends it {}",
            session_id,
            name(failed),
            c.quality,
            judgement(j, c.similarity),
            name(e)
        )),
        None => problem(format!(
            "session {}: recorded {}, but a capture of quality {} below min_quality {} asks for a retry ({} of {} spent)",
            session_id,
            name(failed),
            c.quality,
            j.min_quality,
            s.retries,
            max_retries
        )),
    }
}

fn describe(v: &Verdict) -> String {
    match v {
        Verdict::Granted { level, .. } => format!("granted ({level})"),
        Verdict::Denied { reason, .. } => format!("denied ({reason})"),
    }
}

/// One row of `audit export`.
pub fn decision_row(rec: &Recorded) -> Option<Value> {
    let Event::DoorDecided {
        door,
        reader_id,
        subject,
        similarity,
        judged,
        policy,
        verdict,
        at,
        unopenable,
        ..
    } = &rec.event
    else {
        return None;
    };
    let passback = matches!(
        verdict,
        crate::core::policy::Verdict::Granted {
            passback_violation: true,
            ..
        }
    );
    Some(json!({
        "position": rec.position,
        "at": at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "door": door.as_str(),
        "reader": reader_id.as_str(),
        "partner_id": subject.as_ref().map(|s| s.partner_id.to_string()),
        "external_id": subject.as_ref().map(|s| s.external_id.0.clone()),
        "granted": verdict.granted(),
        "reason": verdict.reason().map(|r| r.as_str()),
        "level": verdict.level(),
        "policy": policy,
        "similarity": similarity,
        "threshold": judged.map(|j| j.threshold),
        "liveness": judged.map(|j| j.liveness),
        // A grant at a door whose relay board was down: the person was told it cannot open.
        "unopenable": unopenable,
        // A grant under soft anti-passback whose movement repeated the last one.
        "passback_violation": passback,
    }))
}

fn in_range(at: DateTime<Utc>, from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>) -> bool {
    from.is_none_or(|f| at >= f) && to.is_none_or(|t| at < t)
}

/// Door decisions between `from` (inclusive) and `to` (exclusive).
pub fn decisions(
    store: &dyn EventStore,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
) -> Result<Vec<Recorded>, crate::store::StoreError> {
    let mut out = vec![];
    let mut after = 0;
    loop {
        let page = store.read(after, 10_000)?;
        let Some(last) = page.last() else {
            return Ok(out);
        };
        after = last.position;
        out.extend(page.into_iter().filter(
            |r| matches!(&r.event, Event::DoorDecided { at, .. } if in_range(*at, from, to)),
        ));
    }
}

pub const CSV_HEADER: &str = "position,at,door,reader,partner_id,external_id,granted,reason,level,policy,similarity,threshold,liveness,unopenable,passback_violation";

/// A CSV line (RFC 4180 quoting) of an export row.
///
/// A text cell a spreadsheet would take for a formula (starting with `=`, `+`, `-`, `@`, a
/// tab or a carriage return: an `external_id` is chosen by a partner) is prefixed with `'`,
/// as OWASP advises against CSV injection; quoting follows.
pub fn csv_line(row: &Value) -> String {
    CSV_HEADER
        .split(',')
        .map(|c| {
            let v = match &row[c] {
                Value::Null => String::new(),
                Value::String(s) if s.starts_with(['=', '+', '-', '@', '\t', '\r']) => {
                    format!("'{s}")
                }
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            if v.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", v.replace('"', "\"\""))
            } else {
                v
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The time zone of the site policy last activated in the log (the one in force), if any.
/// Read from the stored text alone (no hash check: `audit verify` does that).
pub fn zone_in_force(
    store: &dyn EventStore,
) -> Result<Option<chrono_tz::Tz>, crate::store::StoreError> {
    const PAGE: usize = 10_000;
    let (mut after, mut last) = (0, None::<String>);
    loop {
        let lent = store.read_raw_each(after, PAGE, &mut |r| {
            after = r.position;
            if r.kind == "PolicyActivated" {
                last = Some(r.data.to_string());
            }
        })?;
        if lent < PAGE {
            break;
        }
    }
    Ok(last.and_then(|data| {
        let v: Value = serde_json::from_str(&data).ok()?;
        Policy::parse(v.get("document")?.as_str()?)
            .ok()
            .map(|p| p.timezone)
    }))
}

/// The export of door decisions in range: CSV with a header line, or JSON lines.
pub fn export(
    store: &dyn EventStore,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    csv: bool,
) -> Result<String, crate::store::StoreError> {
    let rows = decisions(store, from, to)?;
    let mut out = String::new();
    if csv {
        out.push_str(CSV_HEADER);
        out.push('\n');
    }
    for r in rows.iter().filter_map(decision_row) {
        out.push_str(&if csv { csv_line(&r) } else { r.to_string() });
        out.push('\n');
    }
    Ok(out)
}

/// What [`what_if`] found in range.
#[derive(Debug, Default)]
pub struct WhatIf {
    /// The door decisions in range, each decided again.
    pub replayed: usize,
    /// Those the candidate would decide differently, in log order.
    pub changed: Vec<Changed>,
    /// Scans the log recorded as rejected `no_door` at readers the candidate binds to a door,
    /// per reader (by reader id). No person was matched when they were rejected, so they
    /// cannot be decided again: the candidate's outcome for them is unknown.
    pub not_redecidable: Vec<NoDoorScans>,
    /// Door scans in range that matched nobody while partners that the candidate admits were
    /// not admitted (a door scan searches only the admitted partners' users): they name no
    /// person and cannot be decided again, though the candidate might grant them.
    pub unadmitted: Option<UnadmittedScans>,
}

/// The `no_match` scans in range made while partners the candidate admits were not admitted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnadmittedScans {
    pub scans: usize,
    /// The names of those partners, sorted.
    pub partners: std::collections::BTreeSet<String>,
}

/// The scans in range at one reader the log recorded as rejected `no_door` (its reader at no
/// door then) and that the candidate puts at a door.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoDoorScans {
    pub reader: ReaderId,
    /// The candidate's door for `reader`.
    pub door: DoorId,
    pub scans: usize,
}

/// A past decision the new policy would decide differently.
#[derive(Debug)]
pub struct Changed {
    /// The decision as the log records it ([`export`]'s row).
    pub row: Value,
    /// The candidate's verdict. When the candidate binds the scan's reader to no door
    /// (`rejected` is `Some`), no decision would be made; this is then a denial without a level
    /// (`no_match`) standing for "nobody let through", and [`Changed::now_text`] says what would
    /// happen.
    pub now: Verdict,
    /// `Some(no_door)` when the candidate binds the reader to no door: the gateway would reject
    /// the capture (`CaptureRejected`, reason `no_door`) instead of deciding.
    pub rejected: Option<CaptureRejection>,
}

impl Changed {
    /// What the candidate would do, as `audit what-if` prints it: `granted (level)`,
    /// `denied (reason)` or `rejected (no_door)`.
    pub fn now_text(&self) -> String {
        match (&self.rejected, &self.now) {
            (Some(r), _) => format!("rejected ({})", rejection_str(*r)),
            (None, Verdict::Granted { level, .. }) => format!("granted ({level})"),
            (None, Verdict::Denied { reason, .. }) => format!("denied ({reason})"),
        }
    }
}

fn rejection_str(r: CaptureRejection) -> String {
    serde_json::to_value(r)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{r:?}"))
}

/// Each person's last movement in each zone of the candidate policy (zone name, partner,
/// external id), as the gateway's state keeps it (`State::zone_last`).
type ZoneLast = crate::core::split_map::SplitMap<(String, PartnerId, ExternalId), Direction>;

/// The movements of each door's re-derived grants, until the log reports their pulse (undone
/// when refused, as the state does: `DoorState::passages`). Keyed by the door the log
/// recorded, whose relay it is.
type Passages = HashMap<DoorId, Vec<Passage>>;

/// A door scan decided again under `policy` as the gateway would have decided it: at the door
/// `policy` binds the reader to, with the anti-passback state `zone_last` (kept under
/// `policy`'s zones, and updated here with the movement a re-derived grant makes, held in
/// `passages` until its pulse is confirmed or refused); the person,
/// their record, the site mode and the instant as the log recorded them. `Some(None)`: the
/// reader is at no door under `policy` (the capture would be rejected); `None` for any other
/// event.
fn redecide(
    policy: &Policy,
    e: &Event,
    zone_last: &mut ZoneLast,
    passages: &mut Passages,
    down: &std::collections::HashSet<String>,
) -> Option<Option<Verdict>> {
    let Event::DoorDecided {
        door: recorded_door,
        reader_id,
        capture_id,
        subject,
        erased,
        similarity,
        mode,
        at,
        ..
    } = e
    else {
        return None;
    };
    let Some(door) = policy.door_of_reader(reader_id) else {
        return Some(None);
    };
    // A palm matched here whose partner the candidate does not admit would not have been
    // searched for (the gateway's scope is the admitted partners): no match, not
    // `partner_not_allowed`. A person an upstream Pass API named (no similarity) is judged as
    // the gateway judges them.
    let dropped = subject.as_ref().is_some_and(|s| {
        similarity.is_some() && !policy.partner_allowed(s.partner_id, &s.partner_name)
    });
    let subject = subject.as_ref().filter(|_| !dropped);
    let zone = policy.zone_of_reader(reader_id);
    let key = |z: &str, s: &DoorSubject| (z.to_owned(), s.partner_id, s.external_id.clone());
    let last_in_zone = match (zone, subject) {
        (Some((z, _)), Some(s)) => zone_last.get(&key(z, s)).copied(),
        _ => None,
    };
    let verdict = policy.decide(&Request {
        door: &door.id,
        reader: reader_id,
        who: if dropped {
            crate::core::policy::Identified::NoMatch
        } else {
            identified(subject, *erased)
        },
        at: *at,
        mode: *mode,
        last_in_zone,
    });
    // A grant at a door whose board the log has down opens nothing: no movement (as the
    // gateway records it, `unopenable`).
    if verdict.granted()
        && !down.contains(&door.relay.device)
        && let (Some((z, dir)), Some(s)) = (zone, subject)
    {
        let passage = Passage {
            capture_id: capture_id.clone(),
            zone: z.to_owned(),
            partner_id: s.partner_id,
            external_id: s.external_id.clone(),
            direction: dir,
            before: zone_last.insert(key(z, s), dir),
        };
        passage.supersede(passages.values_mut());
        passage.hold(passages.entry(recorded_door.clone()).or_default());
    }
    Some(Some(verdict))
}

/// Re-decides every door decision in range with `policy`, in log order, as the gateway would
/// have decided it under `policy`: at the door `policy` binds the scan's reader to (a reader
/// at no door: the scan would be rejected), with the anti-passback state the re-derived grants
/// make under `policy`'s zones (an erasure that `clears_zones` ends the person's presence, as
/// in the state); the person, their record, the site mode and the instant as recorded.
///
/// Decisions outside `from`..`to` are not reported, but every decision before `from` is still
/// re-decided (unreported) so the zone state at `from` is the one `policy` would have made.
///
/// A scan the log recorded as rejected `no_door` (its reader at no door then) names no person:
/// it cannot be re-decided. Those in range at a reader `policy` does bind to a door are counted
/// per reader ([`WhatIf::not_redecidable`]), so a candidate that adds the door does not read as
/// "nothing changes"; those at a reader `policy` also leaves without a door are not reported.
pub fn what_if(
    store: &dyn EventStore,
    policy: &Policy,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
) -> Result<WhatIf, crate::store::StoreError> {
    let mut zone_last = ZoneLast::new();
    let mut passages = Passages::new();
    let mut down = std::collections::HashSet::new();
    let mut n = 0;
    let mut changed = vec![];
    let mut no_door: BTreeMap<ReaderId, (DoorId, usize)> = BTreeMap::new();
    // The policy in force as the log goes, and the partners so far: for `no_match` scans made
    // while a partner the candidate admits was not admitted.
    let mut in_force: Option<Policy> = None;
    let mut partners: Vec<(PartnerId, String)> = Vec::new();
    let mut unadmitted: Option<UnadmittedScans> = None;
    let mut after = 0;
    loop {
        let page = store.read(after, 10_000)?;
        let Some(last) = page.last() else {
            return Ok(WhatIf {
                replayed: n,
                unadmitted,
                changed,
                not_redecidable: no_door
                    .into_iter()
                    .map(|(reader, (door, scans))| NoDoorScans {
                        reader,
                        door,
                        scans,
                    })
                    .collect(),
            });
        };
        after = last.position;
        for rec in &page {
            match &rec.event {
                Event::PolicyActivated { document, .. } => in_force = Policy::parse(document).ok(),
                Event::PartnerCreated {
                    partner_id, name, ..
                } => partners.push((*partner_id, name.clone())),
                Event::DoorDecided {
                    subject: None,
                    verdict,
                    at,
                    ..
                } if verdict.reason() == Some(DenyReason::NoMatch) && in_range(*at, from, to) => {
                    let newly: std::collections::BTreeSet<String> = partners
                        .iter()
                        .filter(|(id, name)| {
                            policy.partner_allowed(*id, name)
                                && !in_force
                                    .as_ref()
                                    .is_some_and(|p| p.partner_allowed(*id, name))
                        })
                        .map(|(_, name)| name.clone())
                        .collect();
                    if !newly.is_empty() {
                        let u = unadmitted.get_or_insert_with(|| UnadmittedScans {
                            scans: 0,
                            partners: Default::default(),
                        });
                        u.scans += 1;
                        u.partners.extend(newly);
                    }
                }
                _ => {}
            }
            match &rec.event {
                Event::CaptureRejected {
                    reader_id,
                    reason: CaptureRejection::NoDoor,
                    at,
                    ..
                } if in_range(*at, from, to) => {
                    if let Some(door) = policy.door_of_reader(reader_id) {
                        no_door
                            .entry(reader_id.clone())
                            .or_insert_with(|| (door.id.clone(), 0))
                            .1 += 1;
                    }
                }
                Event::UserErased {
                    partner_id,
                    external_id,
                    clears_zones: true,
                    ..
                } => zone_last.retain(|(_, p, x), _| !(p == partner_id && x == external_id)),
                // The operator forgave presence in a zone by name: the candidate's zone of that
                // name (if it has one) forgets it too.
                Event::ZonePresenceForgiven {
                    zone,
                    partner_id,
                    external_id,
                    ..
                } => zone_last.retain(|key, _| {
                    !crate::core::doors::forgives(zone, *partner_id, external_id.as_ref(), key)
                }),
                Event::DeviceStatusChanged { device, up, .. } => {
                    if *up {
                        down.remove(device);
                    } else {
                        down.insert(device.clone());
                    }
                }
                Event::RelaySwitched {
                    door,
                    on: true,
                    tag,
                    ..
                } => {
                    if let Some(held) = passages.get_mut(door) {
                        Passage::take(held, tag);
                    }
                }
                Event::RelayFailed {
                    door,
                    on: true,
                    refused,
                    tag,
                    ..
                } => {
                    if let Some(p) = passages.get_mut(door).and_then(|h| Passage::take(h, tag))
                        && *refused
                    {
                        p.undo(&mut zone_last);
                    }
                }
                Event::DoorDecided { verdict, at, .. } => {
                    let Some(again) =
                        redecide(policy, &rec.event, &mut zone_last, &mut passages, &down)
                    else {
                        continue;
                    };
                    if !in_range(*at, from, to) {
                        continue;
                    }
                    n += 1;
                    let (now, rejected) = match again {
                        Some(v) => (v, None),
                        None => (
                            Verdict::Denied {
                                reason: DenyReason::NoMatch,
                                level: None,
                            },
                            Some(CaptureRejection::NoDoor),
                        ),
                    };
                    let differs = rejected.is_some()
                        || now.granted() != verdict.granted()
                        || now.reason() != verdict.reason();
                    if differs && let Some(row) = decision_row(rec) {
                        changed.push(Changed { row, now, rejected });
                    }
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod upstream_tests {
    use super::*;
    use crate::core::Rules;
    use crate::core::UpstreamSessionId;
    use crate::core::policy::SiteMode;

    fn rec(position: u64, stream: String, event: Event) -> Recorded {
        Recorded {
            position,
            stream,
            revision: 0,
            recorded_at: Utc::now(),
            event,
            prev_hash: [0; 32],
            hash: [0; 32],
        }
    }

    fn ended(session: &str, reader: &str, late: bool) -> Event {
        Event::UpstreamSessionEnded {
            session_id: UpstreamSessionId(session.into()),
            reader_id: ReaderId(reader.into()),
            outcome: UpstreamOutcome::Completed,
            webhook_id: String::new(),
            external_id: Some(ExternalId("E".into())),
            username: None,
            metadata: Some(json!({"access_level": "standard"})),
            fail_reason: None,
            ended_at: Utc::now(),
            late,
            at: Utc::now(),
        }
    }

    fn decided(capture_id: &str, partner_id: PartnerId) -> Event {
        Event::DoorDecided {
            door: DoorId("d1".into()),
            reader_id: ReaderId("r1".into()),
            capture_id: capture_id.into(),
            subject: Some(DoorSubject {
                partner_id,
                partner_name: "upstream".into(),
                external_id: ExternalId("E".into()),
                metadata: Some(json!({"access_level": "standard"})),
            }),
            erased: false,
            similarity: None,
            quality: None,
            judged: None,
            policy: site().sha256,
            mode: SiteMode::Normal,
            last_in_zone: None,
            movement: None,
            unopenable: false,
            verdict: Verdict::Granted {
                level: "standard".into(),
                passback_violation: false,
            },
            at: Utc::now(),
        }
    }

    const SITE: &str = r#"timezone = "UTC"

[[relay_devices]]
id = "board-1"
modbus = "tcp://127.0.0.1:5020"

[[doors]]
id = "d1"
readers = ["r1"]
relay = { device = "board-1", coil = 0 }

[schedules]
always = ["* * * * * *"]

[[levels]]
name = "standard"
doors = ["*"]
schedule = "always"
"#;

    fn site() -> Policy {
        Policy::parse(SITE).expect("the test site parses")
    }

    /// The findings of checking `events` in order (each folded after its check, as `verify`
    /// does), after a binding of remote session `s1` to reader `r1` for trigger `t1`.
    fn findings(events: Vec<Event>) -> Vec<String> {
        let mut state = State::new(Rules::default());
        let started = Event::UpstreamIdentifyStarted {
            session_id: UpstreamSessionId("s1".into()),
            reader_id: ReaderId("r1".into()),
            trigger_id: "t1".into(),
            expires_at: None,
            clock_skew_s: None,
            at: Utc::now(),
        };
        let (mut policies, mut seen, mut report) =
            (HashMap::new(), Seen::default(), Report::default());
        let activated = Event::PolicyActivated {
            sha256: site().sha256,
            document: SITE.into(),
            source: "test".into(),
            at: Utc::now(),
        };
        let events = [activated, started].into_iter().chain(events);
        for (i, e) in events.enumerate() {
            let stream = match &e {
                Event::DoorDecided { door, .. } => stream::door(door),
                Event::UpstreamIdentifyStarted { session_id, .. } => stream::upstream(session_id),
                _ => "x".into(),
            };
            let r = rec(2 + i as u64, stream, e);
            check_event(&r, &state, &mut policies, &mut seen, &mut report);
            state.evolve(&r);
        }
        report.findings.into_iter().map(|f| f.problem).collect()
    }

    fn has(found: &[String], part: &str) -> bool {
        found.iter().any(|f| f.contains(part))
    }

    #[test]
    fn an_ending_must_be_of_a_bound_session_at_its_reader() {
        let found = findings(vec![ended("s1", "r2", false), ended("s9", "r1", false)]);
        assert!(
            has(
                &found,
                "s1 ends at reader r2, but it was opened for reader r1"
            ),
            "{found:?}"
        );
        assert!(
            has(&found, "s9 ends, but the log bound no such session"),
            "{found:?}"
        );
        assert!(!has(
            &findings(vec![ended("s1", "r1", false)]),
            "upstream session"
        ));
        // A remote session ends once.
        let twice = findings(vec![ended("s1", "r1", false), ended("s1", "r1", false)]);
        assert!(
            has(&twice, "s1 ends, but the log bound no such session"),
            "{twice:?}"
        );
    }

    /// Honest logs the checks must not fail: a decision logged before the trigger key existed
    /// (its capture id the bare trigger id), and a local scan that matched nobody right after
    /// a late ending at the same reader (the late ending decided nothing).
    #[test]
    fn old_bare_trigger_ids_and_a_local_scan_after_a_late_ending_verify() {
        let upstream = PartnerId(uuid::Uuid::from_u128(7));
        let bare = findings(vec![ended("s1", "r1", false), decided("t1", upstream)]);
        assert!(!has(&bare, "is not the key of trigger"), "{bare:?}");
        let mut local = decided("cap-9", upstream);
        if let Event::DoorDecided {
            subject, verdict, ..
        } = &mut local
        {
            *subject = None;
            *verdict = Verdict::Denied {
                reason: DenyReason::NoMatch,
                level: None,
            };
        }
        let after_late = findings(vec![ended("s1", "r1", true), local]);
        assert!(!has(&after_late, "records no subject"), "{after_late:?}");
    }

    #[test]
    fn a_decision_after_a_late_ending_or_for_another_trigger_or_a_local_partner_is_a_finding() {
        let upstream = PartnerId(uuid::Uuid::from_u128(7));
        let key = crate::core::state::trigger_key("t1");
        // The honest sequence: no finding of these kinds.
        let honest = findings(vec![ended("s1", "r1", false), decided(&key, upstream)]);
        for part in ["too late", "is not the key of trigger", "local partner"] {
            assert!(!has(&honest, part), "{part}: {honest:?}");
        }
        let late = findings(vec![ended("s1", "r1", true), decided(&key, upstream)]);
        assert!(has(&late, "arrived too late to open a door"), "{late:?}");
        let other = findings(vec![
            ended("s1", "r1", false),
            decided("trigger:t2", upstream),
        ]);
        assert!(
            has(&other, "capture id trigger:t2 is not the key of trigger t1"),
            "{other:?}"
        );
        // A partner created in the log is no remote identity.
        let mut state_events = vec![Event::PartnerCreated {
            partner_id: upstream,
            name: "Acme".into(),
            api_key_hash: crate::core::SecretHash("h".into()),
            at: Utc::now(),
        }];
        state_events.extend([ended("s1", "r1", false), decided(&key, upstream)]);
        let local = findings(state_events);
        assert!(has(&local, "recorded under local partner"), "{local:?}");
    }
}

#[cfg(test)]
mod heads_tests {
    use super::heads_in;

    /// The heads of journal lines (and of an earlier verify's output), each once; malformed
    /// ones skipped.
    #[test]
    fn heads_are_read_from_journal_lines() {
        let a = "ab".repeat(32);
        let b = "0F".repeat(32);
        let text = format!(
            "Nov 29 05:00:00 gw palmgate[1]: INFO log head at start-up: position 12, hash {a} \
             (audit verify --expect-head 12:{a})\n\
             noise --expect-head 13:{a}x\n\
             2026-11-29T05:10:00Z INFO log head at stop: position 40, hash {b} (audit verify \
             --expect-head 40:{b})\n\
             head: position 12, hash {a} (keep it elsewhere: a later `audit verify \
             --expect-head 12:{a}` fails)\n\
             --expect-head 0:{a} --expect-head 7:{} --expect-head=41:{b}\n",
            "ab".repeat(31)
        );
        let heads = heads_in(&text);
        let mut hb = [0u8; 32];
        hex::decode_to_slice(&b, &mut hb).unwrap();
        let positions: Vec<u64> = heads.iter().map(|h| h.0).collect();
        assert_eq!(positions, vec![12, 40, 41], "{heads:?}");
        assert_eq!(heads[1].1, hb);
        assert!(heads_in("nothing here").is_empty());
    }
}
