//! A sending device's memory of its recent sends, for de-duplication.
//!
//! The acks of the last messages a device sent, newest last, so that a
//! resent `client_msg_id` is answered with its original ack, and one reused
//! for a different message is refused. Only the most recent `horizon` ids
//! are kept: a client resends what it has not seen acked, which is never
//! more than its few most recent sends. Kept per device: two devices of one
//! user count their `client_msg_id`s independently.

use std::collections::VecDeque;

#[derive(Debug, Default)]
pub(crate) struct SentLog {
    recent: VecDeque<Sent>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Sent {
    pub(crate) client_msg_id: u64,
    pub(crate) message_id: u64,
    pub(crate) timestamp_ms: u64,
    /// What the send carried; 0: not known (upgraded from the one-device
    /// journal), which matches anything.
    pub(crate) digest: u64,
}

impl SentLog {
    /// The send of `client_msg_id`, if it is recent.
    pub(crate) fn find(&self, client_msg_id: u64) -> Option<Sent> {
        self.recent
            .iter()
            .rev()
            .find(|s| s.client_msg_id == client_msg_id)
            .copied()
    }

    /// Remembers a send. The message ids of the sends no longer remembered
    /// go to `forgotten`, when given (for the journal to forget too).
    pub(crate) fn record(
        &mut self,
        sent: Sent,
        horizon: usize,
        mut forgotten: Option<&mut Vec<u64>>,
    ) {
        while self.recent.len() >= horizon.max(1) {
            if let Some(old) = self.recent.pop_front()
                && let Some(forgotten) = forgotten.as_deref_mut()
            {
                forgotten.push(old.message_id);
            }
        }
        self.recent.push_back(sent);
    }

    /// The message ids of every remembered send (the device is going away).
    pub(crate) fn message_ids(&self) -> Vec<u64> {
        self.recent.iter().map(|s| s.message_id).collect()
    }
}

/// A short digest of what a send carried (the recipient and the bodies),
/// to tell a resend from a reuse of its id. FNV-1a: stable across
/// restarts (it is journaled) and cheap; not a defence against anything
/// but a client's own mistake. Never 0 (0 means unknown).
pub(crate) fn digest(to: u64, payload: &crate::Payload) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    let mut eat = |bytes: &[u8]| {
        for byte in bytes {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(PRIME);
        }
    };
    eat(&to.to_le_bytes());
    match payload {
        crate::Payload::Shared(body) => eat(body),
        crate::Payload::PerDevice(bodies) => {
            let mut bodies: Vec<_> = bodies.iter().collect();
            bodies.sort_by_key(|(device, _)| *device);
            for (device, body) in bodies {
                eat(&device.user.to_le_bytes());
                eat(&device.device.to_le_bytes());
                eat(&(body.len() as u64).to_le_bytes());
                eat(body);
            }
        }
    }
    hash.max(1)
}
