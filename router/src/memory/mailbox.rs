//! One device's mailbox in the memory backend: its queue, what the caps
//! count, its inbound rate limit, and its live session (the shared
//! [`Live`] part).
//!
//! The queue is in the order entries were queued for this device, which
//! for each sender is the order it sent in (a sender's sends are queued
//! one after another, under its log's lock). A mailbox does no locking and
//! no I/O: its owner holds the lock, and pushing to a session is a
//! non-blocking channel send.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use parley_proto::v1::CloseReason;

use crate::live::{Backlog, Live};
use crate::ratelimit::{Rate, TokenBucket};
use crate::{Device, DeviceId, SessionId};

/// The devices a message's DELIVERED receipts go to, when not only the
/// sending device: the sender's devices when it was sent. A thin pointer,
/// so that an entry stays 72 bytes (a million queued messages are 72 MB
/// of entries).
pub(crate) type Notify = Arc<Vec<DeviceId>>;

/// A queued message, receipt or read-sync.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) id: u64,
    /// The encoded `ServerFrame` (`Deliver`, `Receipt` or `ReadSync`),
    /// shared with the other devices' entries of the same message.
    pub(crate) frame: Bytes,
    kind: Kind,
}

/// What an entry is, and whether it is durable: written to the journal
/// (always, without one). Only durable entries are pushed to a session,
/// and the first one that is not holds back everything after it, so order
/// is kept. The flag lives in the variants, in the padding beside the tag,
/// not in a field of its own that would cost the entry 8 more bytes.
#[derive(Debug)]
enum Kind {
    /// A message: its sender gets DELIVERED receipts, on `notify`'s
    /// devices (`None`: only the sending device, the common case, kept
    /// without an allocation).
    Message {
        sender: Device,
        notify: Option<Notify>,
        durable: bool,
    },
    /// A receipt or a read-sync.
    Receipt { durable: bool },
}

impl Entry {
    pub(crate) fn message(
        id: u64,
        frame: Bytes,
        sender: Device,
        notify: Option<Notify>,
        durable: bool,
    ) -> Self {
        Self {
            id,
            frame,
            kind: Kind::Message {
                sender,
                notify,
                durable,
            },
        }
    }

    /// A receipt or a read-sync.
    pub(crate) fn receipt(id: u64, frame: Bytes, durable: bool) -> Self {
        Self {
            id,
            frame,
            kind: Kind::Receipt { durable },
        }
    }

    pub(crate) fn is_message(&self) -> bool {
        matches!(self.kind, Kind::Message { .. })
    }

    /// The sender of a message (`None` for a receipt or read-sync).
    pub(crate) fn sender(&self) -> Option<Device> {
        match self.kind {
            Kind::Message { sender, .. } => Some(sender),
            Kind::Receipt { .. } => None,
        }
    }

    pub(crate) fn durable(&self) -> bool {
        match self.kind {
            Kind::Message { durable, .. } | Kind::Receipt { durable } => durable,
        }
    }

    fn set_durable(&mut self) {
        match &mut self.kind {
            Kind::Message { durable, .. } | Kind::Receipt { durable } => *durable = true,
        }
    }

    /// The devices DELIVERED receipts of this message go to.
    pub(crate) fn notified(&self) -> impl Iterator<Item = Device> + '_ {
        let (user, devices, lone) = match &self.kind {
            Kind::Message { sender, notify, .. } => {
                (sender.user, notify.as_deref(), Some(sender.device))
            }
            Kind::Receipt { .. } => (0, None, None),
        };
        let listed = devices.map_or(&[][..], Vec::as_slice).iter().copied();
        let lone = devices.is_none().then_some(lone).flatten();
        listed
            .chain(lone)
            // Device 0 is no device (a sender gone before an upgrade).
            .filter(|device| *device != 0)
            .map(move |device| Device::new(user, device))
    }
}

impl Backlog for VecDeque<Entry> {
    fn deliverable(&self, index: usize) -> Option<&Bytes> {
        self.get(index).filter(|e| e.durable()).map(|e| &e.frame)
    }
}

#[derive(Debug, Default)]
pub(crate) struct Mailbox {
    queue: VecDeque<Entry>,
    /// Messages (not receipts) queued, and their encoded bytes: what the
    /// per-device caps count.
    messages: usize,
    message_bytes: usize,
    /// Bytes arriving for this device (its inbound rate limit); made on the
    /// first message, so devices that only send carry none.
    inbound: Option<TokenBucket>,
    live: Option<Live>,
    /// The second ([`wake_second`]) a wakeup was last reported for this
    /// device while it had no session; 0: none since its last session.
    /// Wakeups are reported at most once a second per device: a burst to
    /// an offline phone costs the router one report, not one per message
    /// (the push policy coalesces over longer windows anyway).
    woke_in_second: u32,
}

/// Seconds since the first call, from 1: the clock of
/// [`Mailbox::woke_in_second`].
pub(crate) fn wake_second() -> u32 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = START.get_or_init(std::time::Instant::now);
    u32::try_from(start.elapsed().as_secs())
        .unwrap_or(u32::MAX - 1)
        .saturating_add(1)
}

impl Mailbox {
    /// Makes `live` the session of this mailbox and starts pushing from
    /// the front of the queue. Returns the session it displaced.
    pub(crate) fn attach(&mut self, live: Live, window: usize) -> Option<Live> {
        let old = self.live.replace(live);
        self.woke_in_second = 0;
        self.pump(window);
        old
    }

    /// Whether a wakeup for this device (which has no session) is to be
    /// reported in `second`: not if one was this second already.
    pub(crate) fn wake_due(&mut self, second: u32) -> bool {
        if self.woke_in_second == second {
            return false;
        }
        self.woke_in_second = second;
        true
    }

    /// Entries queued now (for a new session's queue-empty marker).
    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }

    /// Forgets the live session if it is `session`. Its unacknowledged
    /// entries will be pushed again to the next one. Returns whether it
    /// was the live one (a displaced session's late detach is not).
    pub(crate) fn detach(&mut self, session: SessionId) -> bool {
        if self.live.as_ref().is_some_and(|l| l.id() == session) {
            self.live = None;
            return true;
        }
        false
    }

    /// Whether a session is live (attached, and its channel open when last
    /// pushed to).
    pub(crate) fn has_session(&self) -> bool {
        self.live.is_some()
    }

    /// Closes the live session, if any, with `reason`.
    pub(crate) fn close(&mut self, reason: CloseReason) {
        if let Some(live) = self.live.take() {
            live.close(reason);
        }
    }

    /// Appends an entry and pushes it at once if the window has room.
    pub(crate) fn push(&mut self, entry: Entry, window: usize) {
        if entry.is_message() {
            self.messages += 1;
            self.message_bytes += entry.frame.len();
        }
        self.queue.push_back(entry);
        self.pump(window);
    }

    /// Removes the entry `id` (a message, or with `messages` false a
    /// receipt or read-sync) if it is one the live session holds
    /// unacknowledged (the front of the queue); returns it. Anything else
    /// was never delivered to this session: an unknown, already removed or
    /// guessed id is ignored, and costs at most a window's search.
    pub(crate) fn take_delivered(&mut self, id: u64, messages: bool) -> Option<Entry> {
        let in_flight = self.live.as_ref()?.in_flight();
        let at = self
            .queue
            .iter()
            .take(in_flight)
            .position(|e| e.id == id && e.is_message() == messages)?;
        self.remove_at(at)
    }

    fn remove_at(&mut self, at: usize) -> Option<Entry> {
        let entry = self.queue.remove(at)?;
        if let Some(live) = self.live.as_mut() {
            live.removed(at);
        }
        self.forget(&entry);
        Some(entry)
    }

    /// Removes the entries accepted before `cutoff_ms` from the front (the
    /// oldest queued) and returns them.
    pub(crate) fn expire(&mut self, cutoff_ms: u64) -> Vec<Entry> {
        let mut expired = Vec::new();
        while self
            .queue
            .front()
            .is_some_and(|e| crate::ids::accepted_at_ms(e.id) < cutoff_ms)
        {
            // Possibly pushed to the live session already; an ack for it
            // will find nothing, which is harmless.
            expired.extend(self.remove_at(0));
        }
        expired
    }

    /// Takes every entry out (the device is going away).
    pub(crate) fn take_all(&mut self) -> Vec<Entry> {
        self.messages = 0;
        self.message_bytes = 0;
        self.queue.drain(..).collect()
    }

    fn forget(&mut self, entry: &Entry) {
        if entry.is_message() {
            self.messages -= 1;
            self.message_bytes -= entry.frame.len();
        }
    }

    /// Spends `bytes` of this device's inbound allowance.
    pub(crate) fn take_inbound(
        &mut self,
        rate: Rate,
        bytes: usize,
        now: tokio::time::Instant,
    ) -> Result<(), std::time::Duration> {
        self.inbound
            .get_or_insert_with(|| TokenBucket::new(rate, now))
            .take(rate, bytes as f64, now)
    }

    /// Whether one more message of `bytes` fits under the caps.
    pub(crate) fn has_room(&self, bytes: usize, max_messages: usize, max_bytes: usize) -> bool {
        self.messages < max_messages && self.message_bytes + bytes <= max_bytes
    }

    /// Pushes what the window has room for.
    pub(crate) fn pump(&mut self, window: usize) {
        if let Some(live) = self.live.as_mut()
            && !live.pump(&self.queue, window)
        {
            // The session is gone (its channel closed).
            self.live = None;
        }
    }

    /// The journal has written these entries (ids sorted): they may be
    /// pushed now. Undurable entries are the most recent ones, so the
    /// search goes from the back and stops once every id is found.
    pub(crate) fn mark_durable(&mut self, ids: &[u64], window: usize) {
        let mut left = ids.len();
        for entry in self.queue.iter_mut().rev() {
            if left == 0 {
                break;
            }
            if !entry.durable() && ids.binary_search(&entry.id).is_ok() {
                entry.set_durable();
                left -= 1;
            }
        }
        self.pump(window);
    }

    /// Nothing queued, no session: the mailbox can go.
    pub(crate) fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.live.is_none()
    }

    /// The id of the oldest queued entry.
    pub(crate) fn oldest(&self) -> Option<u64> {
        self.queue.front().map(|e| e.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_72_bytes() {
        // A million queued messages: 72 MB of entries, not 88.
        assert_eq!(std::mem::size_of::<Entry>(), 72);
    }

    #[test]
    fn an_entry_keeps_its_kind_sender_and_durability() {
        let sender = Device::new(7, 2);
        let mut m = Entry::message(1, Bytes::from_static(b"m"), sender, None, false);
        assert!(m.is_message() && !m.durable());
        assert_eq!(m.sender(), Some(sender));
        assert_eq!(m.notified().collect::<Vec<_>>(), [sender]);
        m.set_durable();
        assert!(m.durable() && m.is_message());
        let listed = Entry::message(
            2,
            Bytes::from_static(b"m"),
            sender,
            Some(Arc::new(vec![2, 0, 3])),
            true,
        );
        assert_eq!(
            listed.notified().collect::<Vec<_>>(),
            [Device::new(7, 2), Device::new(7, 3)],
            "device 0 is no device"
        );
        let mut r = Entry::receipt(3, Bytes::from_static(b"r"), false);
        assert!(!r.is_message() && !r.durable());
        assert_eq!(r.sender(), None);
        assert_eq!(r.notified().count(), 0);
        r.set_durable();
        assert!(r.durable());
    }

    #[test]
    fn a_wakeup_is_due_once_a_second_and_again_after_a_session() {
        let mut mailbox = Mailbox::default();
        assert!(mailbox.wake_due(7));
        assert!(!mailbox.wake_due(7), "the same second");
        assert!(mailbox.wake_due(8));
        let (live, _attached) = Live::channel(SessionId(1), 0);
        mailbox.attach(live, 8);
        mailbox.detach(SessionId(1));
        assert!(mailbox.wake_due(8), "the first miss after a session");
        assert!(wake_second() >= 1);
    }
}
