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

    /// Spends one unauthenticated request from `addr`: an IPv4 address, or the IPv6 /64 it is
    /// in (one client usually holds a whole /64 and can pick any address in it, so a budget
    /// per address would be one per guess).
    pub fn address(&self, addr: IpAddr, now_us: i64) -> Verdict {
        self.check(Key::Address(client_of(addr)), self.anonymous, now_us)
    }

    fn check(&self, key: Key, quota: Quota, now_us: i64) -> Verdict {
        let mut b = self.buckets.lock().expect("limiter lock");
        if b.len() >= SWEEP_AT {
            b.retain(|_, bucket| !bucket.is_idle(now_us));
        }
        quota.check(b.entry(key).or_default(), now_us)
    }
}

/// The client an address stands for: an IPv4 address (an IPv4-mapped IPv6 one read as it), or
/// an IPv6 address's /64.
fn client_of(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut o = v6.octets();
                o[8..].fill(0);
                IpAddr::V6(o.into())
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unauthenticated budgets are per IPv4 address and per IPv6 /64: another address in the
    /// same /64 spends the same budget, one in the next /64 does not; an IPv4-mapped address
    /// is its IPv4 one.
    #[test]
    fn an_ipv6_client_has_one_budget_for_its_64() {
        let limiter = Limiter::new(100, 2);
        let spend = |a: &str| limiter.address(a.parse().unwrap(), 0).allowed;
        let got: Vec<bool> = [
            "2001:db8:1:2::1",
            "2001:db8:1:2:ffff::9",
            "2001:db8:1:2:abcd::7",
            "2001:db8:1:3::1",
            "192.0.2.7",
            "::ffff:192.0.2.7",
            "192.0.2.7",
            "192.0.2.8",
        ]
        .iter()
        .map(|a| spend(a))
        .collect();
        assert_eq!(got, [true, true, false, true, true, true, false, true]);
    }
}
