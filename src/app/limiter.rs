//! Rate-limit buckets in memory: one per (partner, endpoint), one per client address for
//! unauthenticated calls. The arithmetic is the core's ([`crate::core::ratelimit`]).

use crate::core::PartnerId;
use crate::core::ratelimit::{Bucket, Quota, Verdict};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

/// Buckets kept before idle ones are swept.
const SWEEP_AT: usize = 10_000;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    Partner(PartnerId, String),
    Address(IpAddr),
}

pub struct Limiter {
    partner: Quota,
    anonymous: Quota,
    buckets: Mutex<HashMap<Key, Bucket>>,
}

impl Limiter {
    pub fn new(per_minute: u32, anonymous_per_minute: u32) -> Limiter {
        Limiter {
            partner: Quota::per_minute(per_minute),
            anonymous: Quota::per_minute(anonymous_per_minute),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Spends one request of `partner` on `endpoint`.
    pub fn partner(&self, partner: PartnerId, endpoint: &str, now_us: i64) -> Verdict {
        self.check(
            Key::Partner(partner, endpoint.to_string()),
            self.partner,
            now_us,
        )
    }

    /// Spends one unauthenticated request from `addr`.
    pub fn address(&self, addr: IpAddr, now_us: i64) -> Verdict {
        self.check(Key::Address(addr), self.anonymous, now_us)
    }

    fn check(&self, key: Key, quota: Quota, now_us: i64) -> Verdict {
        let mut b = self.buckets.lock().expect("limiter lock");
        if b.len() >= SWEEP_AT {
            b.retain(|_, bucket| !bucket.is_idle(now_us));
        }
        quota.check(b.entry(key).or_default(), now_us)
    }
}
