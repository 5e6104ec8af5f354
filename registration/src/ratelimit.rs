//! The per-user token bucket that limits contact lookups.
//!
//! In memory and per process, on purpose: lookups are limited to slow down
//! enumeration of the phone-number space, and a limit that is N times looser
//! on an N-node fleet still does that, without a database write per lookup.
//! (The SMS code limits, which cost money per message, live in the database.)

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::UserId;

/// Users tracked at once. When full, buckets that have refilled completely
/// (equivalent to no bucket) are dropped; if every bucket is still in use,
/// the lookup is refused as rate limited rather than letting memory grow.
/// About 40 bytes each, so this bounds the table near 40 MB.
pub const MAX_TRACKED_USERS: usize = 1_000_000;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// A token bucket per user: `burst` requests at once, refilled at
/// `per_minute`. Shared state behind a `std` mutex: every critical section
/// is a hash-map lookup and some arithmetic, never an `.await`.
/// A token bucket per user: contact lookups, push token registrations.
pub type UserRateLimiter = KeyedRateLimiter<UserId>;

/// A token bucket per client address: registration codes and verifications.
pub type IpRateLimiter = KeyedRateLimiter<std::net::IpAddr>;

/// A token bucket per key, in a bounded table.
#[derive(Debug)]
pub struct KeyedRateLimiter<K> {
    buckets: Mutex<HashMap<K, Bucket>>,
    burst: f64,
    per_second: f64,
    max_users: usize,
}

impl<K: std::hash::Hash + Eq + Copy> KeyedRateLimiter<K> {
    pub fn new(burst: u32, per_minute: u32) -> Self {
        Self::with_capacity(burst, per_minute, MAX_TRACKED_USERS)
    }

    fn with_capacity(burst: u32, per_minute: u32, max_users: usize) -> Self {
        Self {
            buckets: Mutex::new(HashMap::new()),
            burst: f64::from(burst.max(1)),
            per_second: f64::from(per_minute) / 60.0,
            max_users,
        }
    }

    /// Takes one token of `user`'s bucket, or says how long until one is
    /// available.
    pub fn check(&self, user: K) -> Result<(), Duration> {
        self.check_at(user, Instant::now())
    }

    fn check_at(&self, user: K, now: Instant) -> Result<(), Duration> {
        // A poisoned lock only means another thread panicked mid-update of
        // some numbers; they are still usable as a rate limit.
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if !buckets.contains_key(&user) && buckets.len() >= self.max_users {
            buckets.retain(|_, b| self.refilled(b, now) < self.burst);
            if buckets.len() >= self.max_users {
                return Err(Duration::from_secs(1));
            }
        }
        let bucket = buckets.entry(user).or_insert(Bucket {
            tokens: self.burst,
            updated: now,
        });
        bucket.tokens = self.refilled(bucket, now);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else if self.per_second > 0.0 {
            Err(Duration::from_secs_f64(
                (1.0 - bucket.tokens) / self.per_second,
            ))
        } else {
            // A zero refill rate never refills; say "much later".
            Err(Duration::from_secs(3600))
        }
    }

    fn refilled(&self, bucket: &Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        (bucket.tokens + elapsed * self.per_second).min(self.burst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill() {
        let limiter = UserRateLimiter::new(3, 60);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check_at(1, t0).is_ok());
        }
        let wait = limiter.check_at(1, t0).expect_err("over the burst");
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1));
        // Other users have their own bucket.
        assert!(limiter.check_at(2, t0).is_ok());
        // One token per second at 60 per minute.
        assert!(
            limiter
                .check_at(1, t0 + Duration::from_millis(1001))
                .is_ok()
        );
        assert!(
            limiter
                .check_at(1, t0 + Duration::from_millis(1002))
                .is_err()
        );
        // Refill never exceeds the burst.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert!(limiter.check_at(1, later).is_ok());
        }
        assert!(limiter.check_at(1, later).is_err());
    }

    #[test]
    fn table_is_bounded() {
        let limiter = UserRateLimiter::with_capacity(2, 60, 2);
        let t0 = Instant::now();
        assert!(limiter.check_at(1, t0).is_ok());
        assert!(limiter.check_at(2, t0).is_ok());
        // Both buckets are in use: a third user is refused, not added.
        assert!(limiter.check_at(3, t0).is_err());
        assert_eq!(limiter.buckets.lock().expect("lock").len(), 2);
        // Once they have refilled, their buckets make room.
        assert!(limiter.check_at(3, t0 + Duration::from_secs(5)).is_ok());
        assert_eq!(limiter.buckets.lock().expect("lock").len(), 1);
    }

    #[test]
    fn zero_rate_never_refills() {
        let limiter = UserRateLimiter::new(1, 0);
        let t0 = Instant::now();
        assert!(limiter.check_at(1, t0).is_ok());
        assert!(
            limiter
                .check_at(1, t0 + Duration::from_secs(86_400))
                .is_err()
        );
    }
}
