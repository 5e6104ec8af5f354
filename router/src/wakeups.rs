//! The router's word to whoever wakes phones (push notifications): which
//! device missed something while it had no live session, and when
//! sessions come and go. The router only reports; deciding whether, when
//! and how to wake a phone (coalescing, delays, the push service) is the
//! listener's (`parley-push`).

use crate::Device;

/// Told by the router, with the device's mailbox locked: an implementation
/// must only record what it is told and return (no I/O, no waiting, no
/// call back into the router). Every backend reports the same events.
pub trait Wakeups: Send + Sync + std::fmt::Debug + 'static {
    /// A message or a receipt was queued for `device`, which has no live
    /// session. Reported at most once a second per device (the first
    /// thing missed after a session ends always is): a burst to an
    /// offline phone is one report, not one per message. (Read-syncs,
    /// which tell a device what its own user did elsewhere, are not
    /// reported.)
    fn missed(&self, device: Device);

    /// A session of `device` became the live one: whatever was pending for
    /// the device is moot, it is about to receive its queue.
    fn connected(&self, device: Device);

    /// The live session of `device` ended with entries (delivered but not
    /// acknowledged, or not yet delivered) still in its queue. Not called
    /// when the queue was empty.
    fn disconnected(&self, device: Device);
}
