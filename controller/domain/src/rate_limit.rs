//! Per-client request quotas (token buckets), for the API surfaces that machines poll
//! (ISPs pull reports on schedules, and one misconfigured cron must not crowd out the
//! others), sign-in attempts, and what the controller sends out on an owner's behalf
//! (a reflector's proof).
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
/// A bucket that has refilled is the same as none, so buckets are forgotten once full
/// again (swept when there are [`SWEEP_AT`] of them, at most once a second): the table
/// holds the clients of about the last minute, however many addresses sign-in attempts
/// come from.
pub struct RateLimiter {
    per_minute: u32,
    table: Mutex<Table>,
}

struct Table {
    buckets: HashMap<String, Bucket>,
    swept: Option<Instant>,
}

/// Buckets kept before the full ones are swept.
pub const SWEEP_AT: usize = 4_096;

impl RateLimiter {
    /// A limiter allowing `per_minute` requests per client per minute (bursts up to that).
    pub fn new(per_minute: u32) -> RateLimiter {
        RateLimiter {
            per_minute: per_minute.max(1),
            table: Mutex::new(Table {
                buckets: HashMap::new(),
                swept: None,
            }),
        }
    }

    /// Takes one request from `client`'s quota, if there is one.
    pub fn check(&self, client: &str) -> Quota {
        self.check_at(client, Instant::now())
    }

    fn check_at(&self, client: &str, now: Instant) -> Quota {
        let capacity = f64::from(self.per_minute);
        let per_second = capacity / 60.0;
        let Ok(mut table) = self.table.lock() else {
            // A poisoned lock means a panic elsewhere; do not lock everyone out for it.
            return Quota {
                allowed: true,
                limit: self.per_minute,
                remaining: 0,
                reset_s: 0,
            };
        };
        let sweep_due = table
            .swept
            .is_none_or(|at| now.saturating_duration_since(at).as_secs() >= 1);
        if table.buckets.len() >= SWEEP_AT && sweep_due && !table.buckets.contains_key(client) {
            table.buckets.retain(|_, b| {
                let idle = now.saturating_duration_since(b.updated).as_secs_f64();
                b.tokens + idle * per_second < capacity
            });
            table.swept = Some(now);
        }
        let bucket = table.buckets.entry(client.to_owned()).or_insert(Bucket {
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

    #[test]
    fn buckets_that_refilled_are_forgotten_so_many_clients_cannot_grow_the_table() {
        let limiter = RateLimiter::new(6);
        let t0 = Instant::now();
        let len = || limiter.table.lock().unwrap().buckets.len();
        for _ in 0..6 {
            limiter.check_at("busy", t0);
        }
        for i in 1..SWEEP_AT {
            limiter.check_at(&format!("ip:{i}"), t0);
        }
        assert_eq!(len(), SWEEP_AT);
        // Half a minute on, the busy client has refilled half its bucket, the others
        // (one token used, ten seconds to refill) all of theirs: a new client sweeps
        // them and keeps the busy one's quota.
        let later = t0 + Duration::from_secs(30);
        assert!(limiter.check_at("new", later).allowed);
        assert_eq!(len(), 2, "the busy client and the new one");
        assert_eq!(
            limiter.check_at("busy", later).remaining,
            2,
            "3 refilled, 1 taken"
        );
    }
}
