//! Message and receipt ids.
//!
//! An id is the acceptance time in milliseconds shifted left by 16 bits, plus
//! a counter for ids taken within the same millisecond; the generator never
//! hands out an id lower than or equal to the previous one. So ids are unique
//! and increasing within a process, and stay unique across restarts without
//! being persisted (a restart takes at least a millisecond, and 65,536 ids
//! per millisecond is far above what one node accepts). They sort by
//! acceptance time, which the mailbox relies on to find an id by binary search.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

const COUNTER_BITS: u32 = 16;

#[derive(Debug, Default)]
pub(crate) struct IdGenerator {
    last: AtomicU64,
}

impl IdGenerator {
    /// The next id, strictly greater than every id handed out before.
    pub(crate) fn next(&self) -> u64 {
        let floor = now_ms() << COUNTER_BITS;
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let id = floor.max(last + 1);
            match self
                .last
                .compare_exchange_weak(last, id, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return id,
                Err(seen) => last = seen,
            }
        }
    }
}

impl IdGenerator {
    /// Never hands out `id` or anything below it (ids read back from the
    /// journal, in case the clock went back across a restart).
    pub(crate) fn resume_after(&self, id: u64) {
        self.last.fetch_max(id, Ordering::Relaxed);
    }
}

/// When the id was taken, in milliseconds since the Unix epoch.
pub(crate) fn accepted_at_ms(id: u64) -> u64 {
    id >> COUNTER_BITS
}

/// Milliseconds since the Unix epoch (0 if the clock is before 1970).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_strictly_increase_and_carry_the_time() {
        let ids = IdGenerator::default();
        let before = now_ms();
        let taken: Vec<u64> = (0..100_000).map(|_| ids.next()).collect();
        assert!(taken.windows(2).all(|w| w[0] < w[1]));
        assert!(taken[0] >> COUNTER_BITS >= before);
    }
}
