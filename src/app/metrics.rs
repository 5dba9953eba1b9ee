//! The door side of `/metrics`: what a building operator watches (readers, relay boards, doors,
//! pending sessions), rendered from one app's state at scrape time, and the counters of live
//! door decisions and relay writes.
//!
//! The gauges are read from the [`App`] the scrape reached, not kept in the process-wide
//! `metrics` recorder: they are right from the first scrape after a restart (nothing to replay),
//! and two servers in one process (the integration tests) each show their own. Their label sets
//! are bounded by the site policy (board ids) or fixed (presence, mode, state); never by people
//! or sessions. The counters are process-lifetime and go through the global recorder; they are
//! counted as a decision's effects are performed, so folding the log at start-up counts none.

use super::App;
use crate::core::decider::{Effect, ReaderCommand};
use crate::core::policy::{DenyReason, SiteMode};
use crate::modbus::Report;
use std::fmt::Write as _;

/// `palmgate_door_decisions_total`: door decisions that landed.
const DECISIONS: &str = "palmgate_door_decisions_total";
/// `palmgate_relay_writes_total`: coil writes a relay board confirmed or refused.
const RELAY_WRITES: &str = "palmgate_relay_writes_total";

/// Whether a line of the recorder's text is about one of the site's counters (its `# HELP`,
/// `# TYPE` or a sample): a scrape without the admin token gets the recorder's text without
/// them, and none of the gauges of [`render`]. Lockdown or emergency unlock in force, a relay
/// board down, denials piling up at the doors: not for whoever can reach the gateway's public
/// pages, which share its listener.
pub fn is_site_series(line: &str) -> bool {
    let name = line
        .strip_prefix("# HELP ")
        .or_else(|| line.strip_prefix("# TYPE "))
        .unwrap_or(line);
    [DECISIONS, RELAY_WRITES].iter().any(|s| {
        name.strip_prefix(s)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '{']))
    })
}

/// The `reason` of a granted decision whose door opens.
const GRANTED: &str = "none";
/// The `reason` of a granted decision at a door whose board is down (the reader is told so).
const UNAVAILABLE: &str = "door_unavailable";

/// The site modes, as `/metrics` names them (`SiteMode`'s serde names).
const MODES: [(SiteMode, &str); 3] = [
    (SiteMode::Normal, "normal"),
    (SiteMode::Lockdown, "lockdown"),
    (SiteMode::EmergencyUnlock, "emergency_unlock"),
];

/// Counts what an effect of a landed decision says: a door decision's result at its reader.
/// Called by the task that routes effects to the adapters, off the request path.
pub(super) fn performed(effect: &Effect) {
    if let Effect::Reader {
        command:
            ReaderCommand::Result {
                granted,
                reason,
                unopenable,
                ..
            },
        ..
    } = effect
    {
        let (result, reason) = match (granted, reason) {
            (true, _) if *unopenable => ("granted", UNAVAILABLE),
            (true, _) => ("granted", GRANTED),
            (false, Some(r)) => ("denied", r.as_str()),
            // The core gives every denial a reason; none would be a bug, still counted.
            (false, None) => ("denied", "unknown"),
        };
        ::metrics::counter!(DECISIONS, "result" => result, "reason" => reason).increment(1);
    }
}

/// Counts a relay board's report of a coil write: `ok` when the board did as asked, `failed`
/// when it refused, could not be reached, or a pulse was dropped because it was down (a
/// refusal repeated the same way is reported, and counted, once).
pub(super) fn relay_report(report: &Report) {
    let outcome = match report {
        Report::Coil { .. } => "ok",
        Report::CoilFailed { .. } => "failed",
        _ => return,
    };
    ::metrics::counter!(RELAY_WRITES, "outcome" => outcome).increment(1);
}

/// Describes the counters and shows every series of their fixed label sets at 0, so a scrape
/// lists them before the first decision (a rate over a series that appears with its first
/// increment misses that increment). Once per process: the recorder is global.
fn register_counters() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        ::metrics::describe_counter!(
            DECISIONS,
            "Door decisions that landed, by result and reason (granted: none or door_unavailable)."
        );
        ::metrics::describe_counter!(
            RELAY_WRITES,
            "Relay coil writes the boards confirmed (ok) or refused or could not take (failed)."
        );
        let granted = [GRANTED, UNAVAILABLE].map(|r| ("granted", r));
        let denied = DenyReason::ALL.map(|r| ("denied", r.as_str()));
        for (result, reason) in granted.into_iter().chain(denied) {
            ::metrics::counter!(DECISIONS, "result" => result, "reason" => reason).increment(0);
        }
        for outcome in ["ok", "failed"] {
            ::metrics::counter!(RELAY_WRITES, "outcome" => outcome).increment(0);
        }
    });
}

/// The door gauges of `app` now, in the Prometheus text format, to append to the recorder's
/// output. Also makes sure the door counters are registered (see [`register_counters`]).
pub fn render(app: &App) -> String {
    register_counters();
    let broker_up = crate::http::admin::broker_up(app);
    let snap = app.read(|s| {
        let mut readers = [0usize; 3];
        for r in s.readers() {
            let p = crate::http::admin::presence(broker_up, r.online);
            if let Some(i) = crate::http::admin::PRESENCES.iter().position(|q| *q == p) {
                readers[i] += 1;
            }
        }
        let (boards, doors) = match &s.policy {
            Some(p) => (
                p.relay_devices
                    .iter()
                    .map(|d| (d.id.clone(), !s.device_down(&d.id)))
                    .collect::<Vec<_>>(),
                p.doors.len(),
            ),
            None => (vec![], 0),
        };
        Snapshot {
            readers,
            boards,
            doors,
            mode: s.site_mode(),
            pending: s.deadlines.len(),
        }
    });
    snap.text()
}

/// What the gauges show, copied out of the state (the text is made after the lock is released).
struct Snapshot {
    /// Readers per [`crate::http::admin::PRESENCES`].
    readers: [usize; 3],
    /// The policy's relay boards: (id, up as the door path judges it).
    boards: Vec<(String, bool)>,
    /// The policy's doors.
    doors: usize,
    mode: SiteMode,
    pending: usize,
}

impl Snapshot {
    fn text(&self) -> String {
        let mut out = String::new();
        let head = |out: &mut String, name: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        };
        head(
            &mut out,
            "palmgate_readers",
            "Known readers by presence: online or offline as last reported, unknown while the gateway's MQTT link is down.",
        );
        for (p, n) in crate::http::admin::PRESENCES.iter().zip(self.readers) {
            let _ = writeln!(out, "palmgate_readers{{presence=\"{p}\"}} {n}");
        }
        let up = self.boards.iter().filter(|(_, up)| *up).count();
        head(
            &mut out,
            "palmgate_relay_boards",
            "Relay boards of the site policy by state (down: a grant at their doors cannot open them).",
        );
        let _ = writeln!(out, "palmgate_relay_boards{{state=\"up\"}} {up}");
        let down = self.boards.len() - up;
        let _ = writeln!(out, "palmgate_relay_boards{{state=\"down\"}} {down}");
        head(
            &mut out,
            "palmgate_relay_board_up",
            "1 while the relay board is up, 0 while it is down, per board of the site policy.",
        );
        for (id, up) in &self.boards {
            let _ = writeln!(
                out,
                "palmgate_relay_board_up{{board=\"{}\"}} {}",
                label(id),
                u8::from(*up)
            );
        }
        head(
            &mut out,
            "palmgate_site_mode",
            "1 for the site mode in force (normal, lockdown, emergency_unlock), 0 for the others.",
        );
        for (mode, name) in MODES {
            let on = u8::from(mode == self.mode);
            let _ = writeln!(out, "palmgate_site_mode{{mode=\"{name}\"}} {on}");
        }
        head(
            &mut out,
            "palmgate_doors",
            "Doors of the site policy by the mode they are in (the site mode holds every door).",
        );
        for (mode, name) in MODES {
            let n = if mode == self.mode { self.doors } else { 0 };
            let _ = writeln!(out, "palmgate_doors{{mode=\"{name}\"}} {n}");
        }
        head(
            &mut out,
            "palmgate_sessions_pending",
            "Enroll and identify sessions pending now.",
        );
        let _ = writeln!(out, "palmgate_sessions_pending {}", self.pending);
        out
    }
}

/// `v` as a label value: backslash, double quote and newline escaped (Prometheus text format).
fn label(v: &str) -> String {
    v.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_lists_every_series_with_escaped_board_ids() {
        let text = Snapshot {
            readers: [2, 1, 0],
            boards: vec![("board-1".into(), true), ("b\"2\\".into(), false)],
            doors: 3,
            mode: SiteMode::Lockdown,
            pending: 4,
        }
        .text();
        for line in [
            "# TYPE palmgate_readers gauge",
            "palmgate_readers{presence=\"online\"} 2",
            "palmgate_readers{presence=\"offline\"} 1",
            "palmgate_readers{presence=\"unknown\"} 0",
            "palmgate_relay_boards{state=\"up\"} 1",
            "palmgate_relay_boards{state=\"down\"} 1",
            "palmgate_relay_board_up{board=\"board-1\"} 1",
            "palmgate_relay_board_up{board=\"b\\\"2\\\\\"} 0",
            "palmgate_site_mode{mode=\"lockdown\"} 1",
            "palmgate_site_mode{mode=\"normal\"} 0",
            "palmgate_doors{mode=\"lockdown\"} 3",
            "palmgate_doors{mode=\"normal\"} 0",
            "palmgate_sessions_pending 4",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} not in:\n{text}");
        }
    }
}
