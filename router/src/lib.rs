//! The Parley router: one mailbox per **device**, and everything that
//! happens to a message between the sender's server ack and each
//! recipient device's acknowledgement.
//!
//! The gateway hands every decoded client frame to a [`Router`] and writes
//! out whatever the router pushes to the session. The router decides what
//! is queued, for which devices, in which order, how many unacknowledged
//! deliveries a session may have at once, when a message is wiped from a
//! device, and which receipts that produces.
//!
//! Two kinds of state, kept apart:
//!
//! - what a backend **stores**, keyed by device: each device's queue of
//!   entries, its caps and expiry, and each sending device's memory of its
//!   recent `client_msg_id`s (de-duplication). The memory backend keeps it
//!   in process memory (and a journal); a Redis backend keeps it in Redis.
//! - what a node holds for a **live session**: the delivery window, the
//!   in-flight count, the queue-empty marker and the pump that writes to
//!   the session's channel. One module ([`live`]) used by every backend.
//!
//! Modules:
//! - [`memory`]: the single-node backend, all state in process memory,
//!   durable through [`journal`].
//! - [`journal`]: the memory backend's write-ahead journal on local disk.
//! - [`live`]: a device's live session, shared by every backend.
//! - [`conformance`] (tests, or feature `conformance`): the suite every
//!   backend must pass.
//! - [`metrics`]: what the router counts.
//! - [`ratelimit`]: token buckets for the message path's rate limits.
//! - [`wakeups`]: what the router tells whoever wakes phones (push).
//! - `ids`: message and receipt ids, unique per deployment.
//! - `frames`: encoding of the server frames the router queues.

#![forbid(unsafe_code)]

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
mod frames;
mod ids;
pub mod journal;
pub mod live;
pub mod memory;
pub mod metrics;
pub mod ratelimit;
pub mod wakeups;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use parley_proto::v1::CloseReason;
use tokio::sync::oneshot;

pub use ids::{MAX_NODE_ID, NodeId};
pub use journal::{JournalConfig, JournalError};
pub use live::Frames;
pub use memory::{MemoryConfig, MemoryRouter, Restored};
pub use metrics::RouterMetrics;
pub use parley_identity::{Device, DeviceId, Devices, UserId};
pub use wakeups::Wakeups;

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

/// What a message carries to its devices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    /// One body for every device (stored once).
    Shared(Bytes),
    /// One body per device, for apps that encrypt end to end: exactly one
    /// for each device the message goes to (the gateway has checked the
    /// set against the directory).
    PerDevice(Vec<(Device, Bytes)>),
}

impl Payload {
    /// Bytes of body for `device`.
    fn body_for(&self, device: Device) -> Option<&Bytes> {
        match self {
            Payload::Shared(body) => Some(body),
            Payload::PerDevice(bodies) => bodies.iter().find(|(d, _)| *d == device).map(|(_, b)| b),
        }
    }

    /// The largest body, for the caps and rate limits.
    fn largest(&self) -> usize {
        match self {
            Payload::Shared(body) => body.len(),
            Payload::PerDevice(bodies) => bodies.iter().map(|(_, b)| b.len()).max().unwrap_or(0),
        }
    }
}

/// A message as the sender's session hands it to the router: validated,
/// with the devices it goes to resolved by the gateway from the directory.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub client_msg_id: u64,
    pub to: UserId,
    /// The recipient's devices now (primary first). Not empty.
    pub to_devices: Devices,
    /// The sender's devices now: its other devices get a copy, and all of
    /// them get the message's receipts.
    pub from_devices: Devices,
    pub payload: Payload,
}

impl Outgoing {
    /// The devices this message goes to, recipient's first: every device of
    /// the recipient, then the sender's other devices. A message to oneself
    /// goes to every device of one's own, the sending one too.
    pub fn targets(&self, from: Device) -> Vec<Device> {
        let mut targets: Vec<Device> = self
            .to_devices
            .iter()
            .map(|device| Device::new(self.to, device))
            .collect();
        if self.to != from.user {
            targets.extend(
                self.from_devices
                    .iter()
                    .filter(|&device| device != from.device)
                    .map(|device| Device::new(from.user, device)),
            );
        }
        targets
    }
}

/// A `MarkRead` from `reader`, with the devices it concerns.
#[derive(Clone, Debug)]
pub struct Read {
    /// Who sent the messages (`MarkRead.to_user`).
    pub sender: UserId,
    /// The sender's devices now: each gets the READ receipt.
    pub sender_devices: Devices,
    /// The reader's devices now: the others get a read-sync.
    pub reader_devices: Devices,
    pub message_ids: Vec<u64>,
}

/// The router side of a live session, returned by [`Router::attach`].
#[derive(Debug)]
pub struct Attached {
    pub id: SessionId,
    /// Encoded `ServerFrame`s (deliveries, receipts, read-syncs, the
    /// queue-empty marker) to write to the phone in this order. The router
    /// never has more than its delivery window (and the queue-empty
    /// marker) outstanding, and never waits on a session.
    pub frames: Frames,
    /// Fires when the router ends the session (displaced, revoked,
    /// unlinked).
    pub closed: oneshot::Receiver<CloseReason>,
}

/// Failures of a router backend. The memory backend fails only when its
/// journal has stopped; backends with remote state (Redis) report their
/// outages here.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("router backend unavailable: {0}")]
    Unavailable(String),
}

/// Why a message was not accepted. Nothing was queued.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Every device of the recipient is at its cap (messages or bytes).
    /// Retrying after the hint may succeed once the recipient drains.
    #[error("the recipient's mailbox is full")]
    MailboxFull { retry_after_ms: u32 },
    /// The recipient is receiving more bytes per second than its limit.
    #[error("the recipient is receiving too fast")]
    RateLimited { retry_after_ms: u32 },
    /// The sending device used this `client_msg_id` for a different message
    /// (another recipient or body) among its recent sends.
    #[error("this client_msg_id was used for a different message")]
    Reused,
    #[error(transparent)]
    Router(#[from] RouterError),
}

/// The answer to [`Router::submit`]: a future that completes once the
/// message is stored as durably as the backend promises (or was refused).
///
/// The type is the contract: `submit` is a plain function, so by the time
/// it returns the message has its place in every queue it goes to, and a
/// session may hand over several sends before awaiting any answer (their
/// order is kept, and their journal writes share a commit). A backend whose
/// work is asynchronous (Redis) must still fix the order inside `submit`,
/// for instance by queueing the work on an ordered pipeline, and return
/// [`Submitted::later`].
#[must_use = "the answer says whether the message was accepted"]
pub struct Submitted(Answer);

enum Answer {
    Ready(Option<Result<Accepted, SendError>>),
    /// Accepted in memory; the ack waits for the journal's commit.
    Durable(Accepted, oneshot::Receiver<()>),
    Later(Pin<Box<dyn Future<Output = Result<Accepted, SendError>> + Send>>),
}

impl Submitted {
    /// An answer known now (a refusal, or an ack with nothing to wait for).
    pub fn ready(answer: Result<Accepted, SendError>) -> Self {
        Self(Answer::Ready(Some(answer)))
    }

    /// `accepted`, once `durable` fires (a dropped sender means the store
    /// stopped: the message may not be durable, so it is not acked).
    pub fn durable(accepted: Accepted, durable: oneshot::Receiver<()>) -> Self {
        Self(Answer::Durable(accepted, durable))
    }

    /// An answer some work away.
    pub fn later(
        answer: impl Future<Output = Result<Accepted, SendError>> + Send + 'static,
    ) -> Self {
        Self(Answer::Later(Box::pin(answer)))
    }
}

impl std::fmt::Debug for Submitted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.0 {
            Answer::Ready(answer) => format!("Ready({answer:?})"),
            Answer::Durable(accepted, _) => format!("Durable({accepted:?})"),
            Answer::Later(_) => "Later".to_owned(),
        };
        f.debug_tuple("Submitted").field(&state).finish()
    }
}

impl Future for Submitted {
    type Output = Result<Accepted, SendError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            Answer::Ready(answer) => Poll::Ready(answer.take().unwrap_or_else(|| {
                Err(SendError::Router(RouterError::Unavailable(
                    "answer polled twice".to_owned(),
                )))
            })),
            Answer::Durable(accepted, durable) => match Pin::new(durable).poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Ok(())) => Poll::Ready(Ok(*accepted)),
                Poll::Ready(Err(_)) => Poll::Ready(Err(SendError::Router(
                    RouterError::Unavailable("the journal has stopped".to_owned()),
                ))),
            },
            Answer::Later(answer) => answer.as_mut().poll(cx),
        }
    }
}

/// A count of what a router holds, taken shard by shard (so not an atomic
/// snapshot, which an operator's gauge does not need).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Census {
    pub mailboxes: usize,
    /// Entries (messages, receipts, read-syncs) queued, over every device.
    pub queued: usize,
    /// The most entries queued for one device.
    pub deepest: usize,
    /// Age of the oldest queued entry, in milliseconds.
    pub oldest_age_ms: u64,
}

/// What every router backend does: the operations of a gateway session, of
/// the registration service (devices come and go), and the node's
/// maintenance. Backends: [`MemoryRouter`] (one node); a Redis backend for
/// many nodes implements the same contract and passes the same
/// [`conformance`] suite.
///
/// A device's session calls its methods one frame at a time, which is
/// what gives per-sender ordering.
pub trait Router: Clone + Send + Sync + 'static {
    /// Makes a new session the live one for `device`, displacing (closing
    /// with [`CloseReason::Displaced`]) any previous one, and starts pushing
    /// the device's queue to it from the oldest unacknowledged entry.
    fn attach(&self, device: Device) -> impl Future<Output = Result<Attached, RouterError>> + Send;

    /// The session ended. Whatever it had not acknowledged stays queued for
    /// the next session. A no-op when `session` is no longer the live one.
    fn detach(
        &self,
        device: Device,
        session: SessionId,
    ) -> impl Future<Output = Result<(), RouterError>> + Send;

    /// Queues a message from `from` for every device it goes to
    /// ([`Outgoing::targets`]), storing its payload once. The message takes
    /// its place when this is **called** (see [`Submitted`]). A resent
    /// `client_msg_id` gets the original ack and queues nothing; one reused
    /// for a different message is refused; a recipient whose every device
    /// is full refuses it.
    fn submit(&self, from: Device, msg: Outgoing) -> Submitted;

    /// The device has stored these delivered messages: wipe them from its
    /// queue and queue a DELIVERED receipt (naming this device) for every
    /// device of each sender. Ids not delivered to this session are
    /// ignored.
    fn ack_delivery(
        &self,
        device: Device,
        message_ids: &[u64],
    ) -> impl Future<Output = Result<(), RouterError>> + Send;

    /// The user of `reader` has read these messages (on that device): a
    /// READ receipt for each of the sender's devices, and a read-sync for
    /// the reader's other devices.
    fn mark_read(
        &self,
        reader: Device,
        read: Read,
    ) -> impl Future<Output = Result<(), RouterError>> + Send;

    /// The device has stored these receipts or read-syncs: wipe them. Ids
    /// not delivered to this session are ignored.
    fn ack_receipts(
        &self,
        device: Device,
        receipt_ids: &[u64],
    ) -> impl Future<Output = Result<(), RouterError>> + Send;

    /// Closes the device's live session, if any, with `reason` (its
    /// credential was revoked). Its queue stays.
    fn close(
        &self,
        device: Device,
        reason: CloseReason,
    ) -> impl Future<Output = Result<(), RouterError>> + Send;

    /// Closes every live session with `reason` (the server is shutting
    /// down). Queues stay. A session attached once this has run is not
    /// closed by it: the caller stops those itself (the gateway checks its
    /// own shutdown flag after each attach).
    fn close_all(&self, reason: CloseReason) -> impl Future<Output = ()> + Send;

    /// The device is no longer one of its user's (unlinked, or replaced by
    /// a re-registration): its live session is closed with `reason`, and
    /// its queue and de-duplication memory are dropped, or, with
    /// `successor`, its queue goes to that device (a re-registered phone
    /// receives what was queued for the one it replaced).
    fn remove_device(
        &self,
        device: Device,
        reason: CloseReason,
        successor: Option<Device>,
    ) -> impl Future<Output = Result<(), RouterError>> + Send;

    /// Returns once every change made so far is as durable as the backend
    /// promises. For shutdown.
    fn flush(&self) -> impl Future<Output = ()> + Send;

    /// Deletes every entry accepted more than the TTL before `now_ms`.
    /// Returns how many. Meant for a periodic sweep.
    fn expire(&self, now_ms: u64) -> impl Future<Output = usize> + Send;

    /// Counts what the router holds and updates the census gauges. Meant
    /// for a once-a-second ticker.
    fn census(&self) -> impl Future<Output = Census> + Send;

    /// Reports to `wakeups` from now on what devices without a live
    /// session miss, and their sessions' comings and goings (see
    /// [`Wakeups`]). Once per router: a second call is ignored and returns
    /// `false`.
    fn set_wakeups(&self, wakeups: std::sync::Arc<dyn Wakeups>) -> bool;
}
