//! One device's mailbox: its queue, its delivery window, and the memory of
//! what it recently sent (for de-duplication).
//!
//! The queue is ordered by entry id, which is also the order the entries were
//! accepted in (ids are taken while the mailbox is locked, and increase). The
//! first `in_flight` entries have been pushed to the live session and not yet
//! acknowledged; the rest wait for room in the window. A new session starts
//! again from the front, so whatever the previous session did not acknowledge
//! is delivered again.
//!
//! A mailbox does no locking and no I/O: its owner (a router backend) holds
//! the lock, and pushing to a session is a non-blocking channel send.

use std::collections::VecDeque;

use bytes::Bytes;
use parley_proto::v1::CloseReason;
use tokio::sync::{mpsc, oneshot};

use crate::{DeviceId, SessionId, UserId, frames};

/// A queued message or receipt.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) id: u64,
    /// For a message, its sender, who gets a DELIVERED receipt when the
    /// recipient acknowledges it. `None` for a receipt.
    pub(crate) sender: Option<UserId>,
    /// The encoded `ServerFrame` (a `Deliver` or a `Receipt`).
    pub(crate) frame: Bytes,
    /// Written to the journal (always, without one). Only durable entries
    /// are pushed to a session, and the first one that is not holds back
    /// everything after it, so order is kept.
    pub(crate) durable: bool,
}

/// The router's end of a live session.
#[derive(Debug)]
pub(crate) struct Live {
    pub(crate) id: SessionId,
    pub(crate) device: DeviceId,
    pub(crate) frames: mpsc::Sender<Bytes>,
    /// Taken when the router closes the session.
    pub(crate) close: Option<oneshot::Sender<CloseReason>>,
}

impl Live {
    fn close(&mut self, reason: CloseReason) {
        if let Some(close) = self.close.take() {
            // The session may already be gone; then there is no one to tell.
            let _ = close.send(reason);
        }
    }
}

/// When to send the queue-empty marker of the live session.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Marker {
    /// Sent already (or no session).
    #[default]
    Done,
    /// Send it once every entry with an id up to this one has been pushed:
    /// the newest entry queued when the session attached (0: none).
    After(u64),
}

/// Acks of the last messages a device sent, newest last, so that a resent
/// `client_msg_id` is answered with its original ack. Only the most recent
/// `horizon` ids are kept: a client resends what it has not seen acked,
/// which is never more than its few most recent sends.
#[derive(Debug, Default)]
struct SentLog {
    device: DeviceId,
    recent: VecDeque<Sent>,
}

#[derive(Debug, Clone, Copy)]
struct Sent {
    client_msg_id: u64,
    message_id: u64,
    timestamp_ms: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Mailbox {
    queue: VecDeque<Entry>,
    in_flight: usize,
    /// Messages (not receipts) queued, and their encoded bytes: what the
    /// per-device caps count.
    messages: usize,
    message_bytes: usize,
    /// Bytes arriving for this device (its inbound rate limit); made on the
    /// first message, so devices that only send carry none.
    inbound: Option<crate::ratelimit::TokenBucket>,
    live: Option<Live>,
    marker: Marker,
    sent: SentLog,
}

impl Mailbox {
    /// Makes `live` the session of this mailbox, closing any previous one as
    /// displaced, and starts pushing from the front of the queue.
    pub(crate) fn attach(&mut self, live: Live, window: usize) {
        if let Some(mut old) = self.live.take() {
            old.close(CloseReason::Displaced);
        }
        self.live = Some(live);
        self.in_flight = 0;
        self.marker = Marker::After(self.queue.back().map_or(0, |e| e.id));
        self.pump(window);
    }

    /// Forgets the live session if it is `session`. Its unacknowledged
    /// entries will be pushed again to the next one.
    pub(crate) fn detach(&mut self, session: SessionId) {
        if self.live.as_ref().is_some_and(|l| l.id == session) {
            self.drop_live();
        }
    }

    /// Closes the live session with `reason` if it belongs to `device`.
    pub(crate) fn close_device(&mut self, device: DeviceId, reason: CloseReason) {
        if let Some(live) = self.live.as_mut().filter(|l| l.device == device) {
            live.close(reason);
            self.drop_live();
        }
    }

    /// Appends an entry (its id must be greater than every queued one) and
    /// pushes it at once if the window has room.
    pub(crate) fn push(&mut self, entry: Entry, window: usize) {
        debug_assert!(self.queue.back().is_none_or(|last| last.id < entry.id));
        if entry.sender.is_some() {
            self.messages += 1;
            self.message_bytes += entry.frame.len();
        }
        self.queue.push_back(entry);
        self.pump(window);
    }

    /// Removes the entry with this id, wherever it is in the queue (an ack
    /// may come late, from a session that was since replaced). Returns it,
    /// or `None` for an unknown or already removed id.
    pub(crate) fn remove(&mut self, id: u64) -> Option<Entry> {
        let at = self.queue.binary_search_by_key(&id, |e| e.id).ok()?;
        if at < self.in_flight {
            self.in_flight -= 1;
        }
        let entry = self.queue.remove(at)?;
        self.forget(&entry);
        Some(entry)
    }

    /// Removes the entries accepted before `cutoff_ms` (they are at the
    /// front: the queue is in acceptance order) and returns them.
    pub(crate) fn expire(&mut self, cutoff_ms: u64) -> Vec<Entry> {
        let mut expired = Vec::new();
        while let Some(front) = self.queue.front() {
            if crate::ids::accepted_at_ms(front.id) >= cutoff_ms {
                break;
            }
            if let Some(entry) = self.queue.pop_front() {
                // Possibly pushed to the live session already; an ack for it
                // will find nothing, which is harmless.
                self.in_flight = self.in_flight.saturating_sub(1);
                self.forget(&entry);
                expired.push(entry);
            }
        }
        expired
    }

    fn forget(&mut self, entry: &Entry) {
        if entry.sender.is_some() {
            self.messages -= 1;
            self.message_bytes -= entry.frame.len();
        }
    }

    /// Spends `bytes` of this device's inbound allowance.
    pub(crate) fn take_inbound(
        &mut self,
        rate: crate::ratelimit::Rate,
        bytes: usize,
        now: tokio::time::Instant,
    ) -> Result<(), std::time::Duration> {
        self.inbound
            .get_or_insert_with(|| crate::ratelimit::TokenBucket::new(rate, now))
            .take(rate, bytes as f64, now)
    }

    /// Whether one more message of `bytes` fits under the caps.
    pub(crate) fn has_room(&self, bytes: usize, max_messages: usize, max_bytes: usize) -> bool {
        self.messages < max_messages && self.message_bytes + bytes <= max_bytes
    }

    /// Pushes queued entries to the live session until the window is full,
    /// then the queue-empty marker once the backlog has gone out.
    ///
    /// The session's channel holds `window + 1` frames and at most `window`
    /// entries are ever unacknowledged, so a send can only fail when the
    /// session is gone.
    pub(crate) fn pump(&mut self, window: usize) {
        // Borrows only the `live` field, so the queue and the counters can
        // change meanwhile (no clone of the sender per call).
        let Some(live) = &self.live else { return };
        let mut gone = false;
        while self.in_flight < window {
            let Some(next) = self.queue.get(self.in_flight).filter(|e| e.durable) else {
                break;
            };
            if live.frames.try_send(next.frame.clone()).is_err() {
                gone = true;
                break;
            }
            self.in_flight += 1;
        }
        if !gone && let Marker::After(last) = self.marker {
            let drained = self.queue.get(self.in_flight).is_none_or(|e| e.id > last);
            if drained {
                self.marker = Marker::Done;
                gone = live.frames.try_send(frames::queue_empty()).is_err();
            }
        }
        if gone {
            self.drop_live();
        }
    }

    /// The journal has written the entry `id`: it may be pushed now.
    pub(crate) fn mark_durable(&mut self, id: u64, window: usize) {
        if let Ok(at) = self.queue.binary_search_by_key(&id, |e| e.id) {
            self.queue[at].durable = true;
            // Only the entry at the window's edge can unblock anything.
            if at == self.in_flight {
                self.pump(window);
            }
        }
    }

    fn drop_live(&mut self) {
        self.live = None;
        self.in_flight = 0;
        self.marker = Marker::Done;
    }

    /// The original ack of `client_msg_id` if `device` sent it recently.
    pub(crate) fn sent_before(&self, device: DeviceId, client_msg_id: u64) -> Option<(u64, u64)> {
        if self.sent.device != device {
            return None;
        }
        self.sent
            .recent
            .iter()
            .rev()
            .find(|s| s.client_msg_id == client_msg_id)
            .map(|s| (s.message_id, s.timestamp_ms))
    }

    /// Remembers the ack of a message `device` sent. A different device of
    /// the same user (after a re-registration) starts a new log: its
    /// `client_msg_id`s are a new sequence. The message ids of the sends no
    /// longer remembered go to `forgotten`, when given (for the journal to
    /// forget too; without one nothing is collected).
    pub(crate) fn record_sent(
        &mut self,
        device: DeviceId,
        client_msg_id: u64,
        message_id: u64,
        timestamp_ms: u64,
        horizon: usize,
        mut forgotten: Option<&mut Vec<u64>>,
    ) {
        let mut forget = |sent: Sent| {
            if let Some(forgotten) = forgotten.as_deref_mut() {
                forgotten.push(sent.message_id);
            }
        };
        if self.sent.device != device {
            let old = std::mem::replace(
                &mut self.sent,
                SentLog {
                    device,
                    recent: VecDeque::new(),
                },
            );
            old.recent.into_iter().for_each(&mut forget);
        }
        while self.sent.recent.len() >= horizon.max(1) {
            if let Some(old) = self.sent.recent.pop_front() {
                forget(old);
            }
        }
        self.sent.recent.push_back(Sent {
            client_msg_id,
            message_id,
            timestamp_ms,
        });
    }

    /// Nothing queued, no session, nothing to remember: the mailbox can go.
    pub(crate) fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.live.is_none() && self.sent.recent.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }

    /// The id of the oldest queued entry.
    pub(crate) fn oldest(&self) -> Option<u64> {
        self.queue.front().map(|e| e.id)
    }
}
