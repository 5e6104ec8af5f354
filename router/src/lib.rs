//! The Parley router: one mailbox per device, and everything that happens to a
//! message between the sender's server ack and the recipient's acknowledgement.
//!
//! The gateway hands every decoded client frame to a [`Router`] and writes out
//! whatever the router pushes to the session. The router decides what is
//! queued, in which order, how many unacknowledged deliveries a session may
//! have at once, when a message is wiped, and which receipts that produces.
//!
//! Modules:
//! - [`memory`]: the single-node backend, all state in process memory.
//! - [`journal`]: the memory backend's write-ahead journal on local disk.
//! - [`metrics`]: what the router counts.
//! - [`ratelimit`]: token buckets for the message path's rate limits.
//! - `mailbox`: one device's queue, its delivery window and its
//!   de-duplication memory (private; the logic every backend shares).
//! - `ids`: message and receipt ids.
//! - `frames`: encoding of the server frames the router queues.
//!
//! Protocol v1 gives each user exactly one device at a time, so a mailbox is
//! keyed by user id and belongs to the user's current device: messages still
//! queued when a phone number is re-registered go to the new device.

#![forbid(unsafe_code)]

mod frames;
mod ids;
pub mod journal;
mod mailbox;
pub mod memory;
pub mod metrics;
pub mod ratelimit;

use std::future::Future;

use bytes::Bytes;
use parley_proto::v1::CloseReason;
use tokio::sync::{mpsc, oneshot};

pub use journal::{JournalConfig, JournalError};
pub use memory::{Census, MemoryConfig, MemoryRouter, Restored};
pub use metrics::RouterMetrics;

pub use parley_identity::{Device, DeviceId, UserId};

/// Identifies one session of a device, so that a late detach from a session
/// that was already displaced cannot detach its successor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SessionId(u64);

/// What the sender's server ack (one checkmark) carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accepted {
    pub message_id: u64,
    pub timestamp_ms: u64,
    /// The `client_msg_id` had been accepted before: this is the original
    /// ack and nothing new was queued.
    pub duplicate: bool,
}

/// A message as the sender's session hands it to the router. The gateway has
/// already validated it (non-zero id, body size, registered recipient).
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub client_msg_id: u64,
    pub to: UserId,
    pub body: Bytes,
}

/// The router side of a live session, returned by [`Router::attach`].
#[derive(Debug)]
pub struct Attached {
    pub id: SessionId,
    /// Encoded `ServerFrame`s (deliveries, receipts, the queue-empty marker)
    /// to write to the phone in this order. The router never has more frames
    /// outstanding than the channel holds, so it never waits on a session.
    pub frames: mpsc::Receiver<Bytes>,
    /// Fires when the router ends the session (displaced, revoked).
    pub closed: oneshot::Receiver<CloseReason>,
}

/// Failures of a router backend. The memory backend cannot fail; backends
/// with remote state (Redis) report their outages here.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("router backend unavailable: {0}")]
    Unavailable(String),
}

/// Why a message was not accepted. Nothing was queued.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The recipient's mailbox is at its cap (messages or bytes). Retrying
    /// after the hint may succeed once the recipient drains it.
    #[error("the recipient's mailbox is full")]
    MailboxFull { retry_after_ms: u32 },
    /// The recipient is receiving more bytes per second than its limit.
    #[error("the recipient is receiving too fast")]
    RateLimited { retry_after_ms: u32 },
    #[error(transparent)]
    Router(#[from] RouterError),
}

/// The operations a gateway session needs. Backends: [`MemoryRouter`] (one
/// node); a Redis backend for many nodes implements the same contract.
///
/// Every method is called by the device's own session task, one frame at a
/// time, which is what gives per-sender ordering.
pub trait Router: Clone + Send + Sync + 'static {
    /// Makes a new session the live one for `device`, displacing (closing
    /// with [`CloseReason::Displaced`]) any previous one, and starts pushing
    /// the device's queue to it from the oldest unacknowledged entry.
    fn attach(&self, device: Device) -> impl Future<Output = Result<Attached, RouterError>> + Send;

    /// The session ended. Whatever it had not acknowledged stays queued for
    /// the next session. A no-op when `session` is no longer the live one.
    fn detach(&self, device: Device, session: SessionId) -> impl Future<Output = ()> + Send;

    /// Queues a message for `msg.to`. The message takes its place in the
    /// recipient's queue when `send` is **called**, not when the future is
    /// first polled, so a session may hand over several sends before
    /// awaiting their answers and keep their order; the futures complete in
    /// call order. A future completes only once its message is stored as
    /// durably as the backend promises; a resent `client_msg_id` returns the
    /// original ack and queues nothing; a full mailbox refuses it.
    fn send(
        &self,
        from: Device,
        msg: Outgoing,
    ) -> impl Future<Output = Result<Accepted, SendError>> + Send;

    /// The device has stored these delivered messages: wipe them and queue a
    /// DELIVERED receipt for each sender. Unknown ids are ignored.
    fn ack_delivery(
        &self,
        device: Device,
        message_ids: &[u64],
    ) -> impl Future<Output = Result<(), RouterError>> + Send;

    /// The user of `device` has read these messages from `to`: queue a READ
    /// receipt for `to`.
    fn mark_read(
        &self,
        device: Device,
        to: UserId,
        message_ids: Vec<u64>,
    ) -> impl Future<Output = Result<(), RouterError>> + Send;

    /// The device has stored these receipts: wipe them. Unknown ids are ignored.
    fn ack_receipts(
        &self,
        device: Device,
        receipt_ids: &[u64],
    ) -> impl Future<Output = Result<(), RouterError>> + Send;

    /// The device's credential was revoked: close its live session, if any,
    /// with [`CloseReason::Revoked`].
    fn revoke(&self, device: Device) -> impl Future<Output = ()> + Send;
}
