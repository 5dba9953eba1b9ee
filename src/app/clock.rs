//! The seams where time and randomness enter: [`Clock`] and [`Rng`].
//!
//! Invariant: nothing else in palmgate reads the wall clock or the OS random source; replay
//! swaps these for virtual implementations and gets the same decisions.

use crate::store::BoxFuture;
use chrono::{DateTime, Utc};

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
    /// Resolves when `now() >= t`.
    fn sleep_until(&self, t: DateTime<Utc>) -> BoxFuture<'static, ()>;
}

pub trait Rng: Send + Sync + 'static {
    fn fill(&self, buf: &mut [u8]);

    fn bytes16(&self) -> [u8; 16] {
        let mut b = [0; 16];
        self.fill(&mut b);
        b
    }
    fn bytes32(&self) -> [u8; 32] {
        let mut b = [0; 32];
        self.fill(&mut b);
        b
    }
}

/// The wall clock, with tokio timers.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn sleep_until(&self, t: DateTime<Utc>) -> BoxFuture<'static, ()> {
        let wait = (t - Utc::now()).to_std().unwrap_or_default();
        Box::pin(tokio::time::sleep(wait))
    }
}

/// The operating system's random source. Small requests (a session id's 16 bytes, on every
/// enroll and identify) are served from a per-thread buffer of the OS's bytes, refilled
/// [`OS_BUFFER`] bytes at a time, instead of one `getrandom` system call each (~0.9 % of the
/// identify path's samples, BENCHMARKS.md §2 session 20). The bytes are the OS's all the same;
/// each is handed out once and zeroed in the buffer as it is.
pub struct OsRng;

/// Bytes fetched from the OS per refill of a thread's buffer.
const OS_BUFFER: usize = 512;
/// Requests larger than this go to the OS directly.
const BUFFERED_AT_MOST: usize = 64;

thread_local! {
    /// The OS's bytes not yet handed out: `buf[used..]`.
    static OS_BYTES: std::cell::RefCell<([u8; OS_BUFFER], usize)> =
        const { std::cell::RefCell::new(([0; OS_BUFFER], OS_BUFFER)) };
}

impl Rng for OsRng {
    fn fill(&self, buf: &mut [u8]) {
        if buf.len() > BUFFERED_AT_MOST {
            getrandom::fill(buf).expect("the OS random source is available");
            return;
        }
        OS_BYTES.with(|b| {
            let (bytes, used) = &mut *b.borrow_mut();
            if OS_BUFFER - *used < buf.len() {
                getrandom::fill(bytes).expect("the OS random source is available");
                *used = 0;
            }
            let taken = &mut bytes[*used..*used + buf.len()];
            buf.copy_from_slice(taken);
            taken.fill(0);
            *used += buf.len();
        });
    }
}

/// A clock that moves only when told to: for replay and for tests of schedules (webhook
/// retries, expiry) that would otherwise take hours. Sleepers wake as soon as the time they
/// wait for is reached.
pub struct ManualClock {
    now: tokio::sync::watch::Sender<DateTime<Utc>>,
}

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> ManualClock {
        ManualClock {
            now: tokio::sync::watch::channel(start).0,
        }
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: chrono::Duration) {
        self.now.send_modify(|t| *t += d);
    }

    /// Sets the clock to `t` (never backwards).
    pub fn set(&self, t: DateTime<Utc>) {
        self.now.send_modify(|now| *now = (*now).max(t));
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.borrow()
    }

    fn sleep_until(&self, t: DateTime<Utc>) -> BoxFuture<'static, ()> {
        let mut rx = self.now.subscribe();
        Box::pin(async move {
            while *rx.borrow_and_update() < t {
                if rx.changed().await.is_err() {
                    // The clock is gone: never wake.
                    std::future::pending::<()>().await;
                }
            }
        })
    }
}

/// A deterministic random source (SplitMix64 from a seed): for replay and tests.
pub struct SeededRng(std::sync::Mutex<u64>);

impl SeededRng {
    pub fn new(seed: u64) -> SeededRng {
        SeededRng(std::sync::Mutex::new(seed))
    }
}

impl Rng for SeededRng {
    fn fill(&self, buf: &mut [u8]) {
        let mut s = self.0.lock().expect("rng lock");
        for chunk in buf.chunks_mut(8) {
            *s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = *s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Buffered or not, every request gets fresh bytes: no two of many 16-byte draws, across a
    /// refill and beside large draws, are the same, and none is all zeros.
    #[test]
    fn os_bytes_are_never_handed_out_twice() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..1000 {
            let b = OsRng.bytes16();
            assert_ne!(b, [0; 16]);
            assert!(seen.insert(b), "draw {i} repeated");
            if i % 100 == 0 {
                let mut big = [0u8; 100];
                OsRng.fill(&mut big);
                assert_ne!(big, [0; 100]);
            }
        }
        let mut odd = [0u8; 63];
        OsRng.fill(&mut odd);
        assert_ne!(odd, [0; 63]);
    }
}
