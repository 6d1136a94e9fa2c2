//! Per-client request quotas (token buckets), for the API surfaces that machines poll:
//! ISPs pull reports on schedules, and one misconfigured cron must not crowd out the
//! others.
//!
//! Quotas are per controller process: with several replicas, each enforces its own
//! share (a load balancer spreads a client over them). That is deliberately simple; a
//! shared quota would need shared state, which the controller otherwise avoids.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// What the limiter decided for one request; also what the `RateLimit-*` headers say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// Requests allowed per window (`RateLimit-Limit`).
    pub limit: u32,
    /// Requests left now (`RateLimit-Remaining`).
    pub remaining: u32,
    /// Seconds until the quota is full again, or, when refused, until the next request
    /// is allowed (`RateLimit-Reset`, and `Retry-After` on a 429).
    pub reset_s: u64,
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Token buckets keyed by client id: `per_minute` requests, refilled continuously.
pub struct RateLimiter {
    per_minute: u32,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    /// A limiter allowing `per_minute` requests per client per minute (bursts up to that).
    pub fn new(per_minute: u32) -> RateLimiter {
        RateLimiter {
            per_minute: per_minute.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request from `client`'s quota, if there is one.
    pub fn check(&self, client: &str) -> Quota {
        self.check_at(client, Instant::now())
    }

    fn check_at(&self, client: &str, now: Instant) -> Quota {
        let capacity = f64::from(self.per_minute);
        let per_second = capacity / 60.0;
        let Ok(mut buckets) = self.buckets.lock() else {
            // A poisoned lock means a panic elsewhere; do not lock everyone out for it.
            return Quota {
                allowed: true,
                limit: self.per_minute,
                remaining: 0,
                reset_s: 0,
            };
        };
        let bucket = buckets.entry(client.to_owned()).or_insert(Bucket {
            tokens: capacity,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * per_second).min(capacity);
        bucket.updated = now;
        let allowed = bucket.tokens >= 1.0;
        if allowed {
            bucket.tokens -= 1.0;
        }
        let reset_s = if allowed {
            ((capacity - bucket.tokens) / per_second).ceil() as u64
        } else {
            ((1.0 - bucket.tokens) / per_second).ceil().max(1.0) as u64
        };
        Quota {
            allowed,
            limit: self.per_minute,
            remaining: bucket.tokens.floor() as u32,
            reset_s,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_beyond_the_quota_is_refused_until_tokens_refill() {
        let limiter = RateLimiter::new(3);
        let t0 = Instant::now();
        let decisions: Vec<Quota> = (0..4).map(|_| limiter.check_at("isp-a", t0)).collect();
        assert_eq!(decisions.iter().filter(|q| q.allowed).count(), 3);
        assert_eq!(decisions[2].remaining, 0);
        let refused = decisions[3];
        assert!(!refused.allowed);
        assert_eq!(refused.reset_s, 20, "one request per 20 s at 3/minute");
        // Another client has its own quota.
        assert!(limiter.check_at("isp-b", t0).allowed);
        // After 20 s one more request is allowed.
        assert!(
            limiter
                .check_at("isp-a", t0 + Duration::from_secs(20))
                .allowed
        );
    }
}
