//! Message and receipt ids, unique per deployment.
//!
//! An id is the acceptance time in milliseconds since the Unix epoch
//! shifted left by 16 bits; the low 16 bits are the node's id (7 bits, so
//! up to 128 nodes) and a counter for ids taken within the same millisecond
//! (9 bits, 512 per millisecond per node). The generator never hands out an
//! id lower than or equal to the previous one: a node that takes more than
//! 512 ids in a millisecond borrows the next millisecond. So ids are unique
//! across nodes (each has its own node id), increasing within a node,
//! unique across a node's restarts without being persisted (a restart takes
//! longer than a millisecond, and the journal's highest id is resumed from),
//! and `id >> 16` is when the id was taken, which expiry relies on. The
//! layout keeps the time where the one-node release put it, so ids from its
//! journals still tell their time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

const TIME_SHIFT: u32 = 16;
const COUNTER_BITS: u32 = 9;
const COUNTER_MAX: u64 = (1 << COUNTER_BITS) - 1;

/// The largest node id.
pub const MAX_NODE_ID: u8 = (1 << (TIME_SHIFT - COUNTER_BITS)) - 1;

/// A node's place in a deployment, in every id it takes. Every node of a
/// deployment needs its own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeId(u8);

impl NodeId {
    /// `None` above [`MAX_NODE_ID`].
    pub fn new(id: u8) -> Option<Self> {
        (id <= MAX_NODE_ID).then_some(Self(id))
    }

    pub fn get(self) -> u8 {
        self.0
    }
}

#[derive(Debug)]
pub(crate) struct IdGenerator {
    node: u64,
    last: AtomicU64,
}

impl IdGenerator {
    pub(crate) fn new(node: NodeId) -> Self {
        Self {
            node: u64::from(node.0) << COUNTER_BITS,
            last: AtomicU64::new(0),
        }
    }

    fn compose(&self, ms: u64, counter: u64) -> u64 {
        (ms << TIME_SHIFT) | self.node | counter
    }

    /// The next id, strictly greater than every id handed out before.
    pub(crate) fn next(&self) -> u64 {
        let now = now_ms();
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let (last_ms, counter) = (last >> TIME_SHIFT, last & COUNTER_MAX);
            let id = if now > last_ms {
                self.compose(now, 0)
            } else if counter < COUNTER_MAX {
                self.compose(last_ms, counter + 1)
            } else {
                self.compose(last_ms + 1, 0)
            };
            match self
                .last
                .compare_exchange_weak(last, id, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return id,
                Err(seen) => last = seen,
            }
        }
    }

    /// Never hands out `id` or anything below it (ids read back from the
    /// journal, in case the clock went back across a restart).
    pub(crate) fn resume_after(&self, id: u64) {
        // The whole millisecond of `id` is spent, whatever its low bits
        // (an id of the one-node release has its counter there).
        let spent = self.compose(id >> TIME_SHIFT, COUNTER_MAX);
        self.last.fetch_max(spent, Ordering::Relaxed);
    }
}

/// When the id was taken, in milliseconds since the Unix epoch.
pub(crate) fn accepted_at_ms(id: u64) -> u64 {
    id >> TIME_SHIFT
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
    fn ids_strictly_increase_and_carry_the_time_and_the_node() {
        let node = NodeId::new(5).expect("a node id");
        let ids = IdGenerator::new(node);
        let before = now_ms();
        let taken: Vec<u64> = (0..100_000).map(|_| ids.next()).collect();
        assert!(taken.windows(2).all(|w| w[0] < w[1]));
        assert!(accepted_at_ms(taken[0]) >= before);
        assert!(taken.iter().all(|id| (id >> COUNTER_BITS) & 0x7f == 5));
    }

    #[test]
    fn two_nodes_never_take_the_same_id() {
        let (a, b) = (
            IdGenerator::new(NodeId::new(0).expect("node")),
            IdGenerator::new(NodeId::new(MAX_NODE_ID).expect("node")),
        );
        let mut all: Vec<u64> = (0..20_000).flat_map(|_| [a.next(), b.next()]).collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 40_000);
        assert!(NodeId::new(MAX_NODE_ID + 1).is_none());
    }

    #[test]
    fn resuming_after_an_old_id_skips_its_whole_millisecond() {
        let ids = IdGenerator::new(NodeId::default());
        let future_ms = now_ms() + 60_000;
        // An id of the one-node release: a counter in the low 16 bits.
        let old = (future_ms << 16) | 0xffff;
        ids.resume_after(old);
        let next = ids.next();
        assert!(next > old);
        assert_eq!(accepted_at_ms(next), future_ms + 1);
    }
}
