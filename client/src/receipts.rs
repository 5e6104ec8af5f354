//! Which receipts to believe, and what to do with one that arrives before
//! the ack it depends on.
//!
//! Two facts of the protocol make this the app's job:
//!
//! - **The server does not check `MarkRead`.** It keeps no history, so it
//!   cannot know whether the reader ever received the messages it names: any
//!   user can make READ receipts for any message ids reach any sender. A
//!   receipt is only believable for the messages this device sent *to its
//!   `from_user`*. [`SentMessages`] remembers, per sent message id, the
//!   recipient, and [`check`] sorts a receipt's ids by it.
//! - **A receipt can come before its message's ack.** When an ack is lost
//!   (the session dropped after the server stored the message), the app
//!   resends with the same `client_msg_id` on the next session and gets the
//!   original `ServerAck`; but the recipient may have acknowledged or read
//!   the message meanwhile, and that receipt is queued ahead of the resend's
//!   answer. Until that ack names the id, the receipt cannot be checked.
//!   [`ReceiptTracker`] holds such a receipt (unacknowledged, so nothing is
//!   lost if the session ends) until the acks it may be waiting for have
//!   arrived.
//!
//! With several devices per user, two more facts:
//!
//! - **Receipts come from every device of the recipient** (one DELIVERED
//!   per device that stored the message, READ from the one that read it),
//!   each naming its `from_device`; they are all the recipient's, and
//!   believed alike.
//! - **Receipts go to every device of the sender**, also to those that did
//!   not send the message. Those devices got a copy of it (a `Deliver`
//!   whose `from_user` is their own user, [`copy_recipient`]) which says who
//!   it went to: [`ReceiptTracker::copied`] (or [`SentMessages::insert`])
//!   records that like an ack, so the copy's receipts are checked by the
//!   same rule. A device's queue is delivered in order, so the copy comes
//!   before its receipts.
//!
//! Ids this device has no record of at all (sent before it kept records, or
//! forgotten after [`SENT_CAPACITY`] newer sends) are reported as
//! [`CheckedReceipt::unknown`]: what to do with them is the app's policy.
//! `parley-cli` shows them, as it did before it kept records.

use std::collections::{HashMap, VecDeque};

use parley_proto::v1::{Deliver, Receipt, ServerAck};
use serde::{Deserialize, Serialize};

/// How many sent messages [`SentMessages`] remembers: receipts usually come
/// within minutes, and a few thousand ids are a few tens of kilobytes.
pub const SENT_CAPACITY: usize = 4096;
/// How many receipts a [`ReceiptTracker`] holds while acks are awaited. The
/// server sends at most 64 unacknowledged deliveries and receipts per
/// session (the window), so more can only be held when the window is
/// larger than documented; the oldest is then decided without its ack.
pub const HELD_CAPACITY: usize = 64;

/// The recipient of each message this device sent, by message id: the
/// last [`SENT_CAPACITY`] of them, oldest forgotten first.
///
/// A `VecDeque` scanned linearly, like the CLI's seen ids: a few thousand
/// pairs are scanned faster than a map is kept in step with an order, and
/// the order says what to forget.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentMessages {
    /// `(message_id, to_user)`, oldest first.
    messages: VecDeque<(u64, u64)>,
}

impl SentMessages {
    /// Records that `message_id` (from its `ServerAck`) went to `to_user`.
    /// A repeated id (the original ack of a resend) changes nothing.
    pub fn insert(&mut self, message_id: u64, to_user: u64) {
        if self.recipient(message_id).is_some() {
            return;
        }
        if self.messages.len() >= SENT_CAPACITY {
            self.messages.pop_front();
        }
        self.messages.push_back((message_id, to_user));
    }

    /// Who `message_id` was sent to, if this device remembers it.
    pub fn recipient(&self, message_id: u64) -> Option<u64> {
        // Newest first: receipts are mostly about recent messages.
        self.messages
            .iter()
            .rev()
            .find(|(id, _)| *id == message_id)
            .map(|(_, to)| *to)
    }

    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Forgets the oldest entries past [`SENT_CAPACITY`] (a file written by
    /// a build with a larger capacity, or edited by hand).
    pub fn trim(&mut self) {
        while self.messages.len() > SENT_CAPACITY {
            self.messages.pop_front();
        }
    }
}

/// Who a copy of this account's own message went to: `Some(to_user)` when
/// `deliver` is one (its `from_user` is `own_user`: sent from another device
/// of the account, or a message to oneself), `None` for a message from
/// someone else. A server that predates several devices leaves `to_user`
/// unset; its only such messages were to oneself.
pub fn copy_recipient(deliver: &Deliver, own_user: u64) -> Option<u64> {
    (deliver.from_user == own_user).then_some(if deliver.to_user == 0 {
        own_user
    } else {
        deliver.to_user
    })
}

/// A receipt with its message ids sorted by what this device knows of them.
/// Every id of the receipt is in exactly one of the three lists, in the
/// receipt's order.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckedReceipt {
    pub receipt: Receipt,
    /// Messages this device sent to `receipt.from_user`: believe these.
    pub accepted: Vec<u64>,
    /// Messages this device sent to someone else: `from_user` has no
    /// business reporting on them (a forged `MarkRead`). Ignore them.
    pub rejected: Vec<u64>,
    /// Messages this device has no record of.
    pub unknown: Vec<u64>,
}

impl CheckedReceipt {
    /// Whether every id was accepted.
    pub fn is_trusted(&self) -> bool {
        self.rejected.is_empty() && self.unknown.is_empty()
    }
}

/// Sorts `receipt`'s ids by `sent`: a receipt is believable only from the
/// user each message was sent to.
pub fn check(sent: &SentMessages, receipt: Receipt) -> CheckedReceipt {
    let mut checked = CheckedReceipt {
        accepted: Vec::new(),
        rejected: Vec::new(),
        unknown: Vec::new(),
        receipt,
    };
    for &id in &checked.receipt.message_ids {
        match sent.recipient(id) {
            Some(to) if to == checked.receipt.from_user => checked.accepted.push(id),
            Some(_) => checked.rejected.push(id),
            None => checked.unknown.push(id),
        }
    }
    checked
}

/// One session's receipt checking: [`SentMessages`] plus the sends still
/// waiting for their `ServerAck`, and the receipts held until those acks
/// arrive.
///
/// Feed it every send, ack, send error and receipt, in the order they
/// happen. Each method returns the receipts decided by that event; ack each
/// of them (`ReceiptAck`) once handled, and only those: a held receipt
/// stays unacknowledged, so if the session ends before it is decided, the
/// server sends it again next time.
#[derive(Debug, Default)]
pub struct ReceiptTracker {
    sent: SentMessages,
    /// `client_msg_id` → `to_user` of this session's sends without an
    /// answer yet. Bounded by the caller's sends in flight (the protocol
    /// asks for fewer than 64).
    awaiting: HashMap<u64, u64>,
    /// Receipts naming an id not known yet while acks are awaited, oldest
    /// first, at most [`HELD_CAPACITY`].
    held: VecDeque<Receipt>,
}

impl ReceiptTracker {
    pub fn new(sent: SentMessages) -> Self {
        Self {
            sent,
            ..Self::default()
        }
    }

    /// What this tracker knows of sent messages (to save it).
    pub fn sent(&self) -> &SentMessages {
        &self.sent
    }

    /// Receipts held right now.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// A `Send` went out (or was resent) to `to_user`.
    pub fn sending(&mut self, client_msg_id: u64, to_user: u64) {
        self.awaiting.insert(client_msg_id, to_user);
    }

    /// The `ServerAck` of a send: its message id is now known to be
    /// `to_user`'s. Returns the held receipts this decides. An ack for a
    /// `client_msg_id` this session did not send is ignored.
    pub fn acked(&mut self, ack: &ServerAck) -> Vec<CheckedReceipt> {
        if let Some(to_user) = self.awaiting.remove(&ack.client_msg_id) {
            self.sent.insert(ack.message_id, to_user);
        }
        self.release()
    }

    /// A copy of this account's message `message_id` to `to_user`, sent by
    /// another of its devices ([`copy_recipient`]): its receipts come to this
    /// device too, and are believed from `to_user`. Returns the held
    /// receipts this decides.
    pub fn copied(&mut self, message_id: u64, to_user: u64) -> Vec<CheckedReceipt> {
        self.sent.insert(message_id, to_user);
        self.release()
    }

    /// The `SendError` of a send: nothing was stored, so no ack will come.
    pub fn refused(&mut self, client_msg_id: u64) -> Vec<CheckedReceipt> {
        self.awaiting.remove(&client_msg_id);
        self.release()
    }

    /// A `Receipt` arrived. It is decided now (returned), or held when it
    /// names an unknown id while acks are still awaited, since one of them
    /// may name it. When the hold is full, the oldest held receipt is
    /// decided as it stands.
    pub fn receipt(&mut self, receipt: Receipt) -> Vec<CheckedReceipt> {
        if self.awaiting.is_empty() || self.all_known(&receipt) {
            return vec![check(&self.sent, receipt)];
        }
        let mut decided = Vec::new();
        if self.held.len() >= HELD_CAPACITY
            && let Some(oldest) = self.held.pop_front()
        {
            decided.push(check(&self.sent, oldest));
        }
        self.held.push_back(receipt);
        decided
    }

    fn all_known(&self, receipt: &Receipt) -> bool {
        receipt
            .message_ids
            .iter()
            .all(|id| self.sent.recipient(*id).is_some())
    }

    /// Decides the held receipts that no awaited ack can change any more.
    fn release(&mut self) -> Vec<CheckedReceipt> {
        let waiting = !self.awaiting.is_empty();
        let mut decided = Vec::new();
        let mut still_held = VecDeque::with_capacity(self.held.len());
        for receipt in self.held.drain(..) {
            let known = receipt
                .message_ids
                .iter()
                .all(|id| self.sent.recipient(*id).is_some());
            if waiting && !known {
                still_held.push_back(receipt);
            } else {
                decided.push(check(&self.sent, receipt));
            }
        }
        self.held = still_held;
        decided
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parley_proto::v1::ReceiptKind;
    use proptest::prelude::*;

    const ALICE: u64 = 1;
    const BOB: u64 = 2;
    const MALLORY: u64 = 3;

    fn receipt(receipt_id: u64, from_user: u64, message_ids: &[u64]) -> Receipt {
        Receipt {
            receipt_id,
            kind: ReceiptKind::Read as i32,
            from_user,
            message_ids: message_ids.to_vec(),
            timestamp_ms: 0,
            ..Receipt::default()
        }
    }

    fn ack(client_msg_id: u64, message_id: u64) -> ServerAck {
        ServerAck {
            client_msg_id,
            message_id,
            timestamp_ms: 0,
        }
    }

    #[test]
    fn only_the_recipient_may_report_on_a_message() {
        let mut sent = SentMessages::default();
        sent.insert(100, BOB);
        sent.insert(101, MALLORY);
        let checked = check(&sent, receipt(1, BOB, &[100, 101, 999]));
        assert_eq!(checked.accepted, [100]);
        assert_eq!(checked.rejected, [101]);
        assert_eq!(checked.unknown, [999]);
        assert!(!checked.is_trusted());
        assert!(check(&sent, receipt(2, MALLORY, &[101])).is_trusted());
        let forged = check(&sent, receipt(3, MALLORY, &[100]));
        assert_eq!(forged.rejected, [100]);
        assert!(forged.accepted.is_empty());
    }

    #[test]
    fn sent_messages_are_bounded_and_forget_the_oldest() {
        let mut sent = SentMessages::default();
        for id in 0..SENT_CAPACITY as u64 + 10 {
            sent.insert(id, BOB);
        }
        assert_eq!(sent.len(), SENT_CAPACITY);
        assert_eq!(sent.recipient(0), None);
        assert_eq!(sent.recipient(9), None);
        assert_eq!(sent.recipient(10), Some(BOB));
        // A resend's original ack does not move or duplicate the entry.
        sent.insert(10, MALLORY);
        assert_eq!(sent.recipient(10), Some(BOB));
        assert_eq!(sent.len(), SENT_CAPACITY);
    }

    #[test]
    fn a_receipt_before_its_ack_waits_for_the_ack() {
        let mut tracker = ReceiptTracker::default();
        tracker.sending(7, BOB);
        // Bob read message 500 before the resend's original ack came back.
        assert!(tracker.receipt(receipt(1, BOB, &[500])).is_empty());
        assert_eq!(tracker.held(), 1);
        let decided = tracker.acked(&ack(7, 500));
        assert_eq!(decided.len(), 1);
        assert_eq!(decided[0].accepted, [500]);
        assert_eq!(tracker.held(), 0);
        assert_eq!(tracker.sent().recipient(500), Some(BOB));
    }

    #[test]
    fn a_forged_receipt_before_the_ack_is_rejected_once_it_arrives() {
        let mut tracker = ReceiptTracker::default();
        tracker.sending(7, BOB);
        assert!(tracker.receipt(receipt(1, MALLORY, &[500])).is_empty());
        let decided = tracker.acked(&ack(7, 500));
        assert_eq!(decided[0].rejected, [500]);
        assert!(decided[0].accepted.is_empty());
    }

    #[test]
    fn unknown_ids_are_decided_when_no_ack_is_awaited() {
        let mut tracker = ReceiptTracker::default();
        let now = tracker.receipt(receipt(1, BOB, &[42]));
        assert_eq!(now.len(), 1);
        assert_eq!(now[0].unknown, [42]);

        // Held while a send is awaited; decided as unknown once the send is
        // answered with an error (no ack will name the id).
        tracker.sending(8, BOB);
        assert!(tracker.receipt(receipt(2, BOB, &[43])).is_empty());
        let decided = tracker.refused(8);
        assert_eq!(decided[0].unknown, [43]);
    }

    #[test]
    fn receipts_for_known_ids_are_not_held() {
        let mut sent = SentMessages::default();
        sent.insert(100, BOB);
        let mut tracker = ReceiptTracker::new(sent);
        tracker.sending(9, BOB);
        let now = tracker.receipt(receipt(1, BOB, &[100]));
        assert_eq!(now[0].accepted, [100]);
        assert_eq!(tracker.held(), 0);
    }

    #[test]
    fn the_hold_is_bounded() {
        let mut tracker = ReceiptTracker::default();
        tracker.sending(1, BOB);
        for i in 0..HELD_CAPACITY as u64 {
            assert!(tracker.receipt(receipt(i, BOB, &[1000 + i])).is_empty());
        }
        let forced = tracker.receipt(receipt(99, BOB, &[2000]));
        assert_eq!(forced.len(), 1);
        assert_eq!(forced[0].receipt.receipt_id, 0, "the oldest goes first");
        assert_eq!(forced[0].unknown, [1000]);
        assert_eq!(tracker.held(), HELD_CAPACITY);
    }

    #[test]
    fn an_ack_for_another_sessions_send_records_nothing() {
        let mut tracker = ReceiptTracker::default();
        assert!(tracker.acked(&ack(5, 500)).is_empty());
        assert_eq!(tracker.sent().recipient(500), None);
    }

    fn from_device(mut r: Receipt, device: u64) -> Receipt {
        r.from_device = device;
        r
    }

    #[test]
    fn every_device_of_the_recipient_is_believed() {
        let mut tracker = ReceiptTracker::default();
        tracker.sending(7, BOB);
        let decided = tracker.acked(&ack(7, 500));
        assert!(decided.is_empty());
        for (receipt_id, device) in [(1, 20), (2, 21)] {
            let decided = tracker.receipt(from_device(receipt(receipt_id, BOB, &[500]), device));
            assert_eq!(decided[0].accepted, [500], "device {device}");
            assert_eq!(decided[0].receipt.from_device, device);
        }
        // Another user's device is not Bob's, whatever device it names.
        let forged = tracker.receipt(from_device(receipt(3, MALLORY, &[500]), 20));
        assert_eq!(forged[0].rejected, [500]);
    }

    #[test]
    fn a_copy_makes_its_receipts_believable_on_the_other_devices() {
        // Alice's laptop did not send message 600; her phone did, to Bob.
        let mut laptop = ReceiptTracker::default();
        let copy = Deliver {
            message_id: 600,
            from_user: ALICE,
            from_device: 10,
            to_user: BOB,
            ..Deliver::default()
        };
        assert_eq!(copy_recipient(&copy, ALICE), Some(BOB));
        assert_eq!(copy_recipient(&copy, BOB), None, "from Alice, to Bob");
        let old_server_note_to_self = Deliver {
            to_user: 0,
            ..copy.clone()
        };
        assert_eq!(copy_recipient(&old_server_note_to_self, ALICE), Some(ALICE));

        assert!(laptop.copied(600, BOB).is_empty());
        let bobs = laptop.receipt(receipt(1, BOB, &[600]));
        assert_eq!(bobs[0].accepted, [600]);
        // A receipt from Alice's own device about her message to Bob (her
        // phone stored its copy) is not Bob's: not believed.
        let own = laptop.receipt(receipt(2, ALICE, &[600]));
        assert_eq!(own[0].rejected, [600]);
        // Without the copy, the receipt is unknown, as before.
        let mut fresh = ReceiptTracker::default();
        assert_eq!(fresh.receipt(receipt(3, BOB, &[600]))[0].unknown, [600]);
    }

    #[test]
    fn a_copy_releases_a_held_receipt_it_decides() {
        let mut tracker = ReceiptTracker::default();
        tracker.sending(7, BOB);
        // Held: a send is awaited, and 600 is unknown.
        assert!(tracker.receipt(receipt(1, BOB, &[600])).is_empty());
        let decided = tracker.copied(600, BOB);
        assert_eq!(decided.len(), 1);
        assert_eq!(decided[0].accepted, [600]);
        assert_eq!(tracker.held(), 0);
    }

    /// One event of a session, for the property below.
    #[derive(Clone, Debug)]
    enum Event {
        /// The ack of send `i` (this device sent message `1000 + i`).
        Ack(usize),
        /// The copy of message `2000 + j`, sent by another device of Alice.
        Copy(usize),
        /// A receipt from `device` of `from` about message `id`.
        Receipt { id: u64, from: u64, device: u64 },
    }

    proptest! {
        /// Whatever the order of acks and receipts (receipts before or after
        /// the ack of their message), and with copies of messages sent by
        /// Alice's other devices among them (each before its receipts, as a
        /// device's queue is delivered in order), every receipt is decided
        /// exactly once by the time every ack has arrived, an id is
        /// accepted exactly when the receipt comes from the message's
        /// recipient (from any of its devices), and the hold never exceeds
        /// its bound.
        #[test]
        fn every_receipt_is_decided_once_and_only_recipients_are_believed(
            recipients in proptest::collection::vec(prop_oneof![Just(BOB), Just(MALLORY), Just(ALICE)], 1..8),
            copies in proptest::collection::vec(prop_oneof![Just(BOB), Just(MALLORY), Just(ALICE)], 0..4),
            receipts in proptest::collection::vec(
                (0usize..12, prop_oneof![Just(BOB), Just(MALLORY), Just(ALICE)], 0u64..3),
                0..40,
            ),
            shuffle in proptest::collection::vec(any::<u32>(), 56),
        ) {
            let n = recipients.len();
            // Message ids and their recipients: this device's sends, then
            // the copies.
            let mut messages: Vec<(u64, u64)> = recipients
                .iter()
                .enumerate()
                .map(|(i, &to)| (1000 + i as u64, to))
                .collect();
            messages.extend(copies.iter().enumerate().map(|(j, &to)| (2000 + j as u64, to)));
            let recipient_of = |id: u64| messages.iter().find(|(m, _)| *m == id).map(|(_, to)| *to);
            let mut events: Vec<Event> = (0..n).map(Event::Ack).collect();
            events.extend((0..copies.len()).map(Event::Copy));
            events.extend(receipts.iter().map(|&(k, from, device)| Event::Receipt {
                id: messages[k % messages.len()].0,
                from,
                device,
            }));
            // A deterministic shuffle driven by the generated keys.
            let mut keyed: Vec<(u32, Event)> = events
                .into_iter()
                .enumerate()
                .map(|(k, e)| (shuffle[k % shuffle.len()].wrapping_add(k as u32), e))
                .collect();
            keyed.sort_by_key(|(key, _)| *key);
            let mut order: Vec<Event> = keyed.into_iter().map(|(_, e)| e).collect();
            // A copy comes before every receipt about it.
            for j in 0..copies.len() {
                let id = 2000 + j as u64;
                let copy_at = order.iter().position(|e| matches!(e, Event::Copy(c) if *c == j));
                let first_receipt = order
                    .iter()
                    .position(|e| matches!(e, Event::Receipt { id: r, .. } if *r == id));
                if let (Some(copy_at), Some(first)) = (copy_at, first_receipt)
                    && first < copy_at
                {
                    let copy = order.remove(copy_at);
                    order.insert(first, copy);
                }
            }

            let mut tracker = ReceiptTracker::default();
            for (i, to) in recipients.iter().enumerate() {
                tracker.sending(i as u64 + 1, *to);
            }
            let mut decided = Vec::new();
            let mut next_receipt_id = 0;
            for event in order {
                match event {
                    Event::Ack(i) => decided.extend(tracker.acked(&ack(i as u64 + 1, 1000 + i as u64))),
                    Event::Copy(j) => decided.extend(tracker.copied(2000 + j as u64, copies[j])),
                    Event::Receipt { id, from, device } => {
                        next_receipt_id += 1;
                        let r = from_device(receipt(next_receipt_id, from, &[id]), device);
                        decided.extend(tracker.receipt(r));
                    }
                }
                prop_assert!(tracker.held() <= HELD_CAPACITY);
            }
            prop_assert_eq!(tracker.held(), 0, "nothing held once every ack is in");
            prop_assert_eq!(decided.len(), receipts.len(), "each receipt decided once");
            let mut ids: Vec<u64> = decided.iter().map(|c| c.receipt.receipt_id).collect();
            ids.sort_unstable();
            ids.dedup();
            prop_assert_eq!(ids.len(), receipts.len());
            for checked in &decided {
                let id = checked.receipt.message_ids[0];
                let recipient = recipient_of(id).expect("a message of the test");
                prop_assert!(checked.unknown.is_empty(), "every id is known by its ack or copy");
                if checked.receipt.from_user == recipient {
                    prop_assert_eq!(&checked.accepted, &vec![id]);
                } else {
                    prop_assert_eq!(&checked.rejected, &vec![id]);
                }
            }
        }
    }
}
