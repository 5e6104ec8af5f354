//! The throttle in front of `devices.last_seen_at`: at most one write per
//! device per [`SEEN_EVERY`], and a few at a time.
//!
//! The gateway reports every session of every device; writing each one
//! would put a database write on every login, and after a restart a whole
//! node's phones reconnect at once. The inactivity sweep needs the time to
//! within days, so an hour is plenty. The throttle is per process (a fleet
//! of N nodes writes up to N times an hour per device), which needs no
//! coordination and still bounds the writes.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use parley_identity::Device;
use tokio::sync::{Semaphore, SemaphorePermit};

/// At most one last-seen write per device this often.
pub const SEEN_EVERY: Duration = Duration::from_secs(60 * 60);

/// Devices remembered at once (about 40 bytes each). When full, entries
/// older than [`SEEN_EVERY`] (as good as absent) are dropped; if all are
/// recent, everything is forgotten, which costs some extra writes but never
/// loses one: a device that is not remembered is written.
const MAX_TRACKED: usize = 1_000_000;

/// Last-seen writes in flight at once. Past it a report is skipped (and
/// not remembered, so the device's next session writes): a reconnect storm
/// must not queue thousands of writes in front of registrations.
const MAX_WRITES: usize = 4;

/// Which devices were written when, and the permits for writing.
pub struct SeenThrottle {
    /// Device → unix ms of its last write (the store's clock, passed in, so
    /// that tests need not wait an hour).
    written: Mutex<HashMap<Device, i64>>,
    writes: Semaphore,
    capacity: usize,
}

impl fmt::Debug for SeenThrottle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SeenThrottle")
            .field("tracked", &self.lock().len())
            .finish_non_exhaustive()
    }
}

impl Default for SeenThrottle {
    fn default() -> Self {
        Self::with_capacity(MAX_TRACKED)
    }
}

impl SeenThrottle {
    fn with_capacity(capacity: usize) -> Self {
        Self {
            written: Mutex::new(HashMap::new()),
            writes: Semaphore::new(MAX_WRITES),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Device, i64>> {
        // A poisoned map only holds times; still good for throttling.
        self.written.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A permit to write `device`'s last-seen time `now_ms`, if it was not
    /// written in the last [`SEEN_EVERY`] and a write slot is free. The
    /// device counts as written from now; call [`SeenThrottle::failed`] if
    /// the write does not happen.
    pub fn claim(&self, device: Device, now_ms: i64) -> Option<SemaphorePermit<'_>> {
        let every = i64::try_from(SEEN_EVERY.as_millis()).unwrap_or(i64::MAX);
        {
            let mut written = self.lock();
            // A clock that went back counts as "long ago": write.
            if let Some(&at) = written.get(&device)
                && (at..at.saturating_add(every)).contains(&now_ms)
            {
                return None;
            }
            if !written.contains_key(&device) && written.len() >= self.capacity {
                written.retain(|_, at| now_ms.saturating_sub(*at) < every);
                if written.len() >= self.capacity {
                    written.clear();
                }
            }
            written.insert(device, now_ms);
        }
        match self.writes.try_acquire() {
            Ok(permit) => Some(permit),
            Err(_) => {
                self.failed(device);
                None
            }
        }
    }

    /// The claimed write did not happen: the next report writes.
    pub fn failed(&self, device: Device) {
        self.lock().remove(&device);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;

    #[test]
    fn once_an_hour_per_device() {
        let throttle = SeenThrottle::default();
        let (a, b) = (Device::new(1, 1), Device::new(1, 2));
        assert!(throttle.claim(a, 0).is_some());
        assert!(throttle.claim(a, HOUR - 1).is_none());
        assert!(throttle.claim(b, 1).is_some(), "per device");
        assert!(throttle.claim(a, HOUR).is_some());
        // A failed write is retried at the next report.
        throttle.failed(a);
        assert!(throttle.claim(a, HOUR + 1).is_some());
        // A clock that went back does not silence a device for the gap.
        assert!(throttle.claim(a, 5).is_some());
    }

    #[test]
    fn writes_in_flight_are_bounded() {
        let throttle = SeenThrottle::default();
        let permits: Vec<_> = (0..MAX_WRITES as u64)
            .map(|d| throttle.claim(Device::new(1, d + 1), 0).expect("a slot"))
            .collect();
        let late = Device::new(2, 1);
        assert!(throttle.claim(late, 0).is_none(), "no free slot");
        drop(permits);
        // Skipped, not remembered: the next report writes.
        assert!(throttle.claim(late, 1).is_some());
    }

    #[test]
    fn the_table_is_bounded() {
        let throttle = SeenThrottle::with_capacity(2);
        assert!(throttle.claim(Device::new(1, 1), 0).is_some());
        assert!(throttle.claim(Device::new(1, 2), HOUR).is_some());
        // The first entry is an hour old: dropped to make room.
        assert!(throttle.claim(Device::new(1, 3), HOUR + 1).is_some());
        assert_eq!(throttle.lock().len(), 2);
        // All recent: forgotten, and the new one is written.
        assert!(throttle.claim(Device::new(1, 4), HOUR + 2).is_some());
        assert_eq!(throttle.lock().len(), 1);
        assert!(throttle.claim(Device::new(1, 2), HOUR + 3).is_some());
    }
}
