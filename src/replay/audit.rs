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
//! Any changed byte breaks the hash chain at its position; any rewritten decision is a mismatch
//! at its position.

use crate::core::doors::rederive;
use crate::core::event::{CaptureRef, CaptureRejection, Event, Judged, Recorded};
use crate::core::policy::{Policy, Verdict};
use crate::core::state::State;
use crate::core::{FailReason, SessionId, SessionKind};
use crate::store::EventStore;
use crate::store::chain::Verifier;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use std::collections::HashMap;
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
    decoded: Result<Recorded, crate::store::StoreError>,
}

/// Page `k` covers positions `(k·size, (k+1)·size]`, read into `out` (emptied first, its
/// capacity reused); false once nothing lies at or beyond it.
fn read_page(
    store: &dyn EventStore,
    k: u64,
    size: u64,
    out: &mut Vec<Checked>,
) -> Result<bool, crate::store::StoreError> {
    out.clear();
    let end = (k + 1) * size;
    let lent = store.read_raw_each(k * size, size as usize, &mut |r| {
        if r.position <= end {
            out.push(Checked {
                position: r.position,
                prev_hash: r.prev_hash,
                hash: r.hash,
                computed: r.computed_hash(),
                decoded: r.decode(),
            })
        }
    })?;
    Ok(lent > 0)
}

/// Verifies the chain, the schema and every door decision.
///
/// Pages are read, re-hashed and decoded by [`DECODERS`] threads (page `k` by thread
/// `k mod DECODERS`, in order) while this thread checks the links and folds, page by page in
/// log order — the same checks, in the same order, as a single pass.
pub fn verify(store: &dyn EventStore) -> Result<Report, crate::store::StoreError> {
    verify_paged(store, PAGE, DECODERS)
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
        return Ok(fold.report);
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
        Ok(fold.report)
    })
}

/// The sequential part of verification: links, then each event checked and folded in order.
#[derive(Default)]
struct Fold {
    report: Report,
    chain: Verifier,
    state: State,
    policies: HashMap<String, Arc<Policy>>,
}

impl Fold {
    /// Checks and folds `c`, taking out of it what the state keeps (see [`State::evolve_take`]);
    /// the rest is freed by whoever drops it: the decoding thread that allocated it, when it
    /// refills the page.
    fn next(&mut self, c: &mut Checked) {
        self.report.events += 1;
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
        check_event(rec, &self.state, &mut self.policies, &mut self.report);
        self.state.evolve_take(rec);
    }
}

fn check_event(
    rec: &Recorded,
    state: &State,
    policies: &mut HashMap<String, Arc<Policy>>,
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
        Event::DoorDecided {
            door,
            reader_id,
            subject,
            erased,
            similarity,
            quality,
            judged,
            policy,
            mode,
            last_in_zone,
            movement,
            verdict,
            ..
        } => {
            report.decisions += 1;
            let Some(p) = policies.get(policy) else {
                problem(format!("decided under policy {policy}, never activated"));
                return;
            };
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
            let moved = zone
                .filter(|_| verdict.granted() && subject.is_some())
                .map(|(z, d)| (z.to_string(), d));
            if moved != *movement {
                problem(format!(
                    "recorded zone movement {movement:?}, but the decision makes {moved:?}"
                ));
            }
            // A palm matched here (a similarity is recorded): the subject is the enrolled user's
            // record as the log has it. (A subject without a similarity comes from an upstream
            // Pass API's webhook, recorded in the event before it; nothing local to compare.)
            if let (Some(s), Some(_)) = (subject, similarity) {
                match state.user(s.partner_id, &s.external_id) {
                    Some(u) if crate::core::doors::is_subject(state, u, s) => {}
                    Some(_) => problem(format!(
                        "the recorded subject {} differs from the user's record in the log",
                        s.external_id.0
                    )),
                    None => problem(format!(
                        "the recorded subject {} is no enrolled user of partner {}",
                        s.external_id.0, s.partner_id
                    )),
                }
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
        Event::SessionCompleted {
            session_id,
            capture: Some(c),
            ..
        } => check_capture(state, *session_id, c, None, &mut problem),
        Event::SessionFailed {
            session_id,
            reason,
            capture: Some(c),
            ..
        } => check_capture(state, *session_id, c, Some(*reason), &mut problem),
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
        ..
    } = &rec.event
    else {
        return None;
    };
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

pub const CSV_HEADER: &str = "position,at,door,reader,partner_id,external_id,granted,reason,level,policy,similarity,threshold,liveness";

/// A CSV line (RFC 4180 quoting) of an export row.
pub fn csv_line(row: &Value) -> String {
    let cols = [
        "position",
        "at",
        "door",
        "reader",
        "partner_id",
        "external_id",
        "granted",
        "reason",
        "level",
        "policy",
        "similarity",
        "threshold",
        "liveness",
    ];
    cols.iter()
        .map(|c| {
            let v = match &row[*c] {
                Value::Null => String::new(),
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

/// A past decision the new policy would decide differently.
#[derive(Debug)]
pub struct Changed {
    pub row: Value,
    pub now: Verdict,
}

/// Re-decides every door decision in range with `policy` (same inputs).
pub fn what_if(
    store: &dyn EventStore,
    policy: &Policy,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
) -> Result<(usize, Vec<Changed>), crate::store::StoreError> {
    let all = decisions(store, from, to)?;
    let mut changed = vec![];
    for rec in &all {
        let Event::DoorDecided { verdict, .. } = &rec.event else {
            continue;
        };
        let Some(again) = rederive(policy, &rec.event) else {
            continue;
        };
        let differs = again.granted() != verdict.granted() || again.reason() != verdict.reason();
        if differs && let Some(row) = decision_row(rec) {
            changed.push(Changed { row, now: again });
        }
    }
    Ok((all.len(), changed))
}
