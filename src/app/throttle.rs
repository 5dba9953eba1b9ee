//! Log lines an outsider can cause, kept to a few a minute.
//!
//! A reader publishing garbage, or a client retrying a wrong broker password, would otherwise
//! write one WARN per message: enough to fill a gateway's journal and push out what matters.
//! The counters (`palmgate_mqtt_rejected_total`, `..._logins_refused_total`) still count every
//! one; the log gets the first [`LogThrottle::BURST`] of each minute, and the first line of a
//! later minute says how many were left out before it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often one kind of line is written.
#[derive(Debug, Default)]
pub struct LogThrottle {
    state: Mutex<Window>,
}

#[derive(Debug, Default)]
struct Window {
    start: Option<Instant>,
    written: u32,
    /// Left out since the last line written.
    left_out: u64,
}

impl LogThrottle {
    /// Lines written per window.
    pub const BURST: u32 = 10;
    /// The window.
    pub const WINDOW: Duration = Duration::from_secs(60);

    /// Whether the occurrence at `now` is written: `Some(n)` with the number left out since
    /// the last line written (to be said in this one), `None` when it is left out.
    pub fn admit(&self, now: Instant) -> Option<u64> {
        let mut w = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if w.start
            .is_none_or(|s| now.saturating_duration_since(s) >= Self::WINDOW)
        {
            w.start = Some(now);
            w.written = 0;
        }
        if w.written < Self::BURST {
            w.written += 1;
            Some(std::mem::take(&mut w.left_out))
        } else {
            w.left_out += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_a_minute_then_the_next_line_says_how_many_were_left_out() {
        let t = LogThrottle::default();
        let t0 = Instant::now();
        for i in 0..LogThrottle::BURST {
            assert_eq!(t.admit(t0 + Duration::from_millis(i as u64)), Some(0));
        }
        for i in 0..25 {
            assert_eq!(t.admit(t0 + Duration::from_secs(1 + i)), None);
        }
        // Still the same minute.
        assert_eq!(t.admit(t0 + Duration::from_millis(59_999)), None);
        assert_eq!(t.admit(t0 + LogThrottle::WINDOW), Some(26));
        assert_eq!(t.admit(t0 + LogThrottle::WINDOW), Some(0));
    }

    #[test]
    fn occasional_lines_are_all_written() {
        let t = LogThrottle::default();
        let t0 = Instant::now();
        for i in 0..100 {
            assert_eq!(t.admit(t0 + Duration::from_secs(7 * i)), Some(0));
        }
    }
}
