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

/// The operating system's random source.
pub struct OsRng;

impl Rng for OsRng {
    fn fill(&self, buf: &mut [u8]) {
        getrandom::fill(buf).expect("the OS random source is available");
    }
}
