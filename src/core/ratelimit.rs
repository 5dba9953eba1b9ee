//! Rate limiting as pure arithmetic: GCRA (a token bucket that refills smoothly).
//!
//! `limit` requests per `period`; a bucket is just its theoretical arrival time (TAT). The
//! answer carries everything the three `X-RateLimit-*` headers and `Retry-After` need, so the
//! HTTP layer only formats. Time is an input (milliseconds since the Unix epoch).

/// The state of one bucket: when it will be whole again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    tat_us: i64,
}

impl Bucket {
    /// True when the bucket is whole again at `now_us` and can be forgotten.
    pub fn is_idle(&self, now_us: i64) -> bool {
        self.tat_us <= now_us
    }
}

/// A quota: `limit` requests per `period_us`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    pub limit: u32,
    pub period_us: i64,
}

/// The verdict on one request, with the header values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Unix seconds when the budget is whole again.
    pub reset_s: i64,
    /// Seconds to wait before the next request can pass (0 when allowed).
    pub retry_after_s: i64,
}

impl Quota {
    pub fn per_minute(limit: u32) -> Self {
        Self {
            limit: limit.max(1),
            period_us: 60_000_000,
        }
    }

    fn interval(&self) -> i64 {
        (self.period_us / i64::from(self.limit)).max(1)
    }

    /// Spends one request from `bucket` at `now_us` if the quota allows it.
    pub fn check(&self, bucket: &mut Bucket, now_us: i64) -> Verdict {
        let t = self.interval();
        let tat = bucket.tat_us.max(now_us);
        let new_tat = tat + t;
        let allowed = new_tat - now_us <= self.period_us;
        if allowed {
            bucket.tat_us = new_tat;
        }
        let used = if allowed { new_tat } else { tat } - now_us;
        let remaining = ((self.period_us - used).max(0) / t) as u32;
        let retry_after_us = if allowed {
            0
        } else {
            new_tat - self.period_us - now_us
        };
        Verdict {
            allowed,
            limit: self.limit,
            remaining: remaining.min(self.limit),
            reset_s: ceil_div(if allowed { new_tat } else { tat }, 1_000_000),
            retry_after_s: ceil_div(retry_after_us, 1_000_000).max(if allowed { 0 } else { 1 }),
        }
    }
}

fn ceil_div(a: i64, b: i64) -> i64 {
    (a + b - 1).div_euclid(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hundred_pass_then_the_hundred_and_first_is_refused() {
        let q = Quota::per_minute(100);
        let mut b = Bucket::default();
        let now = 1_700_000_000_000_000;
        for i in 0..100 {
            let v = q.check(&mut b, now);
            assert!(v.allowed, "request {} refused", i + 1);
            assert_eq!(v.remaining, 99 - i);
        }
        let v = q.check(&mut b, now);
        assert!(!v.allowed);
        assert_eq!(v.remaining, 0);
        assert_eq!(v.retry_after_s, 1); // one interval of 600 ms, rounded up
        assert_eq!(v.reset_s, (now + 60_000_000) / 1_000_000);
    }

    #[test]
    fn budget_refills_smoothly() {
        let q = Quota::per_minute(60);
        let mut b = Bucket::default();
        let now = 0;
        for _ in 0..60 {
            assert!(q.check(&mut b, now).allowed);
        }
        assert!(!q.check(&mut b, now + 500_000).allowed);
        let v = q.check(&mut b, now + 1_000_000);
        assert!(v.allowed);
        assert_eq!(v.remaining, 0);
        assert!(b.is_idle(now + 61_000_000));
        assert!(!b.is_idle(now + 59_000_000));
    }

    #[test]
    fn large_limits_keep_their_rate() {
        // 7,000 per minute is 7,000, not 7,500; 1,000,000 per minute is not capped at 60,000.
        for limit in [7_000u32, 1_000_000] {
            let q = Quota::per_minute(limit);
            let mut b = Bucket::default();
            let n = (0..2 * limit)
                .filter(|_| q.check(&mut b, 0).allowed)
                .count();
            assert_eq!(n as u32, limit, "burst of {limit}");
            // A minute later exactly one more minute's worth passes.
            let n = (0..2 * limit)
                .filter(|_| q.check(&mut b, 60_000_000).allowed)
                .count();
            assert_eq!(n as u32, limit, "refill of {limit}");
        }
    }
}
