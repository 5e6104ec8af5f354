//! Open-loop pacing: every message has an intended send time fixed in
//! advance, and latency is measured from that time.
//!
//! A closed-loop generator (send, wait, send) slows down with the server and
//! so hides exactly the stalls it should measure (coordinated omission). A
//! [`Schedule`] says which messages are due now; if the sender falls behind
//! they are all due at once, and each one's latency still counts from when
//! it *should* have gone out.

use std::ops::Range;
use std::time::Duration;

use tokio::time::Instant;

/// Message `k` (0-based) is due at `start + offset + k * interval`, for
/// `k < count`. The count bound means a schedule always ends.
#[derive(Clone, Debug)]
pub struct Schedule {
    start: Instant,
    /// Nanoseconds between two messages of this sender.
    interval_ns: u128,
    /// Staggers senders sharing a rate, so they do not fire in lockstep.
    offset_ns: u128,
    count: u64,
    next: u64,
}

impl Schedule {
    /// `rate` messages per second from `start + offset`, `count` at most.
    pub fn new(start: Instant, rate: f64, offset: Duration, count: u64) -> Self {
        assert!(rate > 0.0, "rate must be positive");
        Self {
            start,
            interval_ns: (1e9 / rate).round().max(1.0) as u128,
            offset_ns: offset.as_nanos(),
            count,
            next: 0,
        }
    }

    /// One sender's share of `total_rate` spread over `senders`, sender
    /// `index` offset by its share of one interval.
    pub fn for_sender(
        start: Instant,
        total_rate: f64,
        senders: usize,
        index: usize,
        count: u64,
    ) -> Self {
        let rate = total_rate / senders as f64;
        let offset = Duration::from_secs_f64(index as f64 / senders as f64 / rate);
        Self::new(start, rate, offset, count)
    }

    /// When message `k` should go out.
    pub fn intended(&self, k: u64) -> Instant {
        let ns = self.offset_ns + self.interval_ns * u128::from(k);
        self.start + Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }

    /// The messages due at `now` that were not taken yet; marks them taken.
    pub fn take_due(&mut self, now: Instant) -> Range<u64> {
        let first = self.next;
        while self.next < self.count && self.intended(self.next) <= now {
            self.next += 1;
        }
        first..self.next
    }

    /// When the next message is due; `None` once all `count` were taken.
    pub fn next_due(&self) -> Option<Instant> {
        (self.next < self.count).then(|| self.intended(self.next))
    }

    /// How many messages the schedule has in all.
    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn taken(&self) -> u64 {
        self.next
    }
}

/// How many messages a sender gets: its share of `rate * secs`, the first
/// `remainder` senders one more, so the total is exact.
pub fn share(total: u64, senders: usize, index: usize) -> u64 {
    let senders = senders as u64;
    total / senders + u64::from((index as u64) < total % senders)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_intended_times() {
        let t0 = Instant::now();
        let s = Schedule::new(t0, 1000.0, Duration::ZERO, 10);
        assert_eq!(s.intended(0), t0);
        assert_eq!(s.intended(3), t0 + Duration::from_millis(3));
    }

    #[test]
    fn late_sender_gets_the_backlog_at_once() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0, 100.0, Duration::ZERO, 1000);
        assert_eq!(s.take_due(t0), 0..1);
        assert_eq!(s.take_due(t0 + Duration::from_millis(5)), 1..1);
        // 95 ms late: messages 1..=9 are all due, each keeps its own time.
        assert_eq!(s.take_due(t0 + Duration::from_millis(95)), 1..10);
        assert_eq!(s.next_due(), Some(t0 + Duration::from_millis(100)));
    }

    #[test]
    fn the_count_bounds_the_schedule() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0, 1000.0, Duration::ZERO, 5);
        assert_eq!(s.take_due(t0 + Duration::from_secs(60)), 0..5);
        assert_eq!(s.next_due(), None);
        assert_eq!(s.take_due(t0 + Duration::from_secs(120)), 5..5);
        assert_eq!(s.taken(), 5);
    }

    #[test]
    fn senders_are_staggered_and_sum_to_the_rate() {
        let t0 = Instant::now();
        let senders = 4;
        let mut all: Vec<Instant> = (0..senders)
            .flat_map(|i| {
                let s = Schedule::for_sender(t0, 400.0, senders, i, 100);
                (0..100).map(move |k| s.intended(k))
            })
            .collect();
        all.sort();
        // 400 msg/s over 4 senders: one message every 2.5 ms overall.
        for w in all.windows(2) {
            let gap = w[1] - w[0];
            assert!(
                gap >= Duration::from_micros(2400) && gap <= Duration::from_micros(2600),
                "{gap:?}"
            );
        }
    }

    #[test]
    fn shares_sum_to_the_total() {
        for (total, senders) in [(10, 3), (0, 5), (7, 7), (1_000_003, 64)] {
            let sum: u64 = (0..senders).map(|i| share(total, senders, i)).sum();
            assert_eq!(sum, total);
        }
    }
}
