//! Per-user upload quotas (uploads per hour, bytes per day) and the bounds
//! on uploads receiving bytes at once (per user and in all).
//!
//! In memory and per process, like the contact-lookup limits: a quota N
//! times looser on an N-node fleet still bounds what one user can store,
//! without a database write per upload.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use parley_router::ratelimit::{Rate, TokenBucket};

use crate::config::MediaConfig;
use crate::error::MediaError;

/// Users tracked at once; past it, users who have not started an upload
/// for a day (whose buckets are full again) are forgotten, and if none
/// is, new uploads are refused (memory stays bounded).
const MAX_TRACKED_USERS: usize = 1_000_000;

/// Both buckets refill completely within this: a user idle this long is
/// as good as untracked.
const REFILLED: Duration = Duration::from_secs(24 * 3600);

/// `capacity` at once, all of it back over `period`.
fn rate(capacity: u64, period: Duration) -> Rate {
    let capacity = capacity.max(1) as f64;
    Rate::new(capacity, capacity / period.as_secs_f64())
}

/// One user's quotas: uploads, bytes, and when they last took from them.
#[derive(Clone, Copy, Debug)]
struct Quota {
    uploads: TokenBucket,
    bytes: TokenBucket,
    used: Instant,
}

#[derive(Debug)]
pub(crate) struct Quotas {
    users: Mutex<HashMap<u64, Quota>>,
    uploads: Rate,
    bytes: Rate,
    /// Uploads receiving bytes now, per user.
    active: Mutex<HashMap<u64, usize>>,
    per_user: usize,
    all: Arc<Semaphore>,
}

impl Quotas {
    pub(crate) fn new(config: &MediaConfig) -> Self {
        Self {
            users: Mutex::new(HashMap::new()),
            uploads: rate(
                u64::from(config.uploads_per_hour),
                Duration::from_secs(3600),
            ),
            bytes: rate(config.bytes_per_day, REFILLED),
            active: Mutex::new(HashMap::new()),
            per_user: config.concurrent_per_user.max(1),
            all: Arc::new(Semaphore::new(config.concurrent.max(1))),
        }
    }

    /// Takes one upload and `bytes` of `user`'s quotas, or neither.
    pub(crate) fn take(&self, user: u64, bytes: u64) -> Result<(), MediaError> {
        let now = Instant::now();
        let cost = bytes as f64;
        if cost > self.bytes.burst {
            // Never, in one bucket: larger than a day's bytes. Say "a day".
            return Err(MediaError::Quota("bytes per day", REFILLED));
        }
        let mut users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        if users.len() >= MAX_TRACKED_USERS && !users.contains_key(&user) {
            users.retain(|_, quota| now.saturating_duration_since(quota.used) < REFILLED);
            if users.len() >= MAX_TRACKED_USERS {
                return Err(MediaError::Quota(
                    "the server tracks too many uploaders",
                    Duration::from_secs(60),
                ));
            }
        }
        let quota = users.entry(user).or_insert_with(|| Quota {
            uploads: TokenBucket::new(self.uploads, now),
            bytes: TokenBucket::new(self.bytes, now),
            used: now,
        });
        // On copies, so that a refusal of the second takes nothing of the first.
        let mut next = *quota;
        next.uploads
            .take(self.uploads, 1.0, now)
            .map_err(|wait| MediaError::Quota("uploads per hour", wait))?;
        next.bytes
            .take(self.bytes, cost, now)
            .map_err(|wait| MediaError::Quota("bytes per day", wait))?;
        next.used = now;
        *quota = next;
        Ok(())
    }

    /// A slot for one upload of `user` to receive bytes, held until dropped.
    /// `gauge` counts the slots held.
    pub(crate) fn receiving(
        self: &Arc<Self>,
        user: u64,
        gauge: &Gauge,
    ) -> Result<Receiving, MediaError> {
        let permit = self
            .all
            .clone()
            .try_acquire_owned()
            .map_err(|_| MediaError::Busy)?;
        let mut active = self.active.lock().unwrap_or_else(PoisonError::into_inner);
        let count = active.entry(user).or_insert(0);
        if *count >= self.per_user {
            return Err(MediaError::TooManyUploads);
        }
        *count += 1;
        gauge.inc();
        Ok(Receiving {
            quotas: self.clone(),
            user,
            gauge: gauge.clone(),
            _permit: permit,
        })
    }

    /// Uploads receiving bytes now.
    pub(crate) fn in_progress(&self) -> usize {
        self.active
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .sum()
    }
}

/// One upload receiving bytes (see [`Quotas::receiving`]).
#[derive(Debug)]
pub(crate) struct Receiving {
    quotas: Arc<Quotas>,
    user: u64,
    gauge: Gauge,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Receiving {
    fn drop(&mut self) {
        self.gauge.dec();
        let mut active = self
            .quotas
            .active
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = active.get_mut(&self.user) {
            *count -= 1;
            if *count == 0 {
                active.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quotas(
        uploads_per_hour: u32,
        bytes_per_day: u64,
        per_user: usize,
        all: usize,
    ) -> Arc<Quotas> {
        Arc::new(Quotas::new(&MediaConfig {
            uploads_per_hour,
            bytes_per_day,
            concurrent_per_user: per_user,
            concurrent: all,
            ..MediaConfig::default()
        }))
    }

    #[tokio::test(start_paused = true)]
    async fn uploads_per_hour_refill_over_the_hour() {
        let q = quotas(2, 1 << 30, 4, 4);
        q.take(1, 10).expect("within the quota");
        q.take(1, 10).expect("within the quota");
        let Err(MediaError::Quota(what, wait)) = q.take(1, 10) else {
            panic!("a third upload in the hour must be refused");
        };
        assert_eq!(what, "uploads per hour");
        assert_eq!(wait, Duration::from_secs(1800));
        // Another user has a quota of their own.
        q.take(2, 10).expect("within the quota");
        tokio::time::advance(Duration::from_secs(1800)).await;
        q.take(1, 10).expect("within the quota");
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_per_day_are_taken_whole_or_not_at_all() {
        let q = quotas(100, 1000, 4, 4);
        q.take(1, 600).expect("within the quota");
        assert!(matches!(
            q.take(1, 600),
            Err(MediaError::Quota("bytes per day", _))
        ));
        // The refused upload took nothing: 400 bytes are still there.
        q.take(1, 400).expect("within the quota");
        // Larger than a whole day's bytes: refused, told a full day.
        let Err(MediaError::Quota(_, wait)) = q.take(3, 5000) else {
            panic!("larger than the daily quota");
        };
        assert_eq!(wait, Duration::from_secs(24 * 3600));
    }

    #[tokio::test]
    async fn receiving_slots_per_user_and_in_all() {
        let q = quotas(100, 1 << 30, 2, 3);
        let g = Gauge::default();
        let a = q.receiving(1, &g).expect("within the quota");
        let _b = q.receiving(1, &g).expect("within the quota");
        assert!(matches!(
            q.receiving(1, &g),
            Err(MediaError::TooManyUploads)
        ));
        let _c = q.receiving(2, &g).expect("within the quota");
        assert!(matches!(q.receiving(3, &g), Err(MediaError::Busy)));
        assert_eq!((q.in_progress(), g.get()), (3, 3));
        drop(a);
        assert_eq!((q.in_progress(), g.get()), (2, 2));
        let _d = q.receiving(1, &g).expect("within the quota");
        assert_eq!(q.in_progress(), 3);
    }
}
