//! Token buckets: the rate limits on the message path.
//!
//! A bucket holds up to `burst` tokens and refills at `per_second`; an
//! action costs tokens (one frame, one message, its bytes) and is refused
//! when the bucket does not hold them, with the time after which it would.
//! A bucket is 16 bytes and is kept where its subject already lives (the
//! session, the recipient's mailbox), under the lock that already guards it.

use std::time::Duration;

use tokio::time::Instant;

/// A limit: how much may be spent at once, and how fast it comes back.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub burst: f64,
    pub per_second: f64,
}

impl Rate {
    pub const fn new(burst: f64, per_second: f64) -> Rate {
        Rate { burst, per_second }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct TokenBucket {
    tokens: f32,
    /// When `tokens` was last brought up to date.
    at: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: Rate, now: Instant) -> TokenBucket {
        TokenBucket {
            tokens: rate.burst as f32,
            at: now,
        }
    }

    /// Spends `cost` tokens, or says how long until they would be there.
    /// A cost above the burst is never affordable: it is refused with the
    /// time a full bucket takes to refill.
    pub fn take(&mut self, rate: Rate, cost: f64, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        let tokens = (f64::from(self.tokens) + elapsed * rate.per_second).min(rate.burst);
        self.at = now;
        if tokens >= cost {
            self.tokens = (tokens - cost) as f32;
            return Ok(());
        }
        self.tokens = tokens as f32;
        let missing = cost.min(rate.burst) - tokens;
        let wait = if rate.per_second > 0.0 {
            missing / rate.per_second
        } else {
            f64::from(u32::MAX)
        };
        Err(Duration::from_secs_f64(wait.max(0.001)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_refill_rate() {
        let rate = Rate::new(3.0, 2.0);
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(rate, t0);
        for _ in 0..3 {
            assert!(bucket.take(rate, 1.0, t0).is_ok());
        }
        let wait = bucket.take(rate, 1.0, t0).expect_err("empty");
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-3, "{wait:?}");
        // Half a second later one token is back, and only one.
        let t1 = t0 + Duration::from_millis(500);
        assert!(bucket.take(rate, 1.0, t1).is_ok());
        assert!(bucket.take(rate, 1.0, t1).is_err());
        // Never more than the burst, however long it waits.
        let t2 = t1 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert!(bucket.take(rate, 1.0, t2).is_ok());
        }
        assert!(bucket.take(rate, 1.0, t2).is_err());
    }

    #[test]
    fn costs_are_weighed_and_a_cost_over_the_burst_is_refused() {
        let rate = Rate::new(1000.0, 100.0);
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(rate, t0);
        assert!(bucket.take(rate, 600.0, t0).is_ok());
        let wait = bucket.take(rate, 600.0, t0).expect_err("400 left");
        assert!((wait.as_secs_f64() - 2.0).abs() < 1e-3, "{wait:?}");
        assert!(bucket.take(rate, 400.0, t0).is_ok());
        let t1 = t0 + Duration::from_secs(100);
        assert!(bucket.take(rate, 1001.0, t1).is_err(), "over the burst");
    }
}
