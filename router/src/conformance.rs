//! The conformance suite: what every router backend must do, as tests any
//! backend can run against itself.
//!
//! A backend implements [`Backend`] (how to open a router, and whether what
//! it stores survives a reopen) and runs the suite with
//! [`conformance_suite!`](crate::conformance_suite), which makes one test
//! per case below, plus [`properties`], a property test of random
//! interleavings of sends, resends, acks, reconnects and (for durable
//! backends) restarts, several devices on each side. The memory backend
//! runs it memory-only and journaled (`memory/tests.rs`).
//!
//! The cases: ordering and the queue-empty marker; the delivery window;
//! de-duplication of resends, per sending device, and refusal of a reused
//! `client_msg_id`; redelivery of what a session did not acknowledge;
//! DELIVERED and READ receipts for every device of the sender, and
//! read-sync for the reader's other devices; fan-out to every device of the
//! recipient and a copy to the sender's other devices, each acknowledged
//! on its own; per-device bodies; displacement; closing and removing a
//! device; the caps; expiry; what devices without a session miss (the
//! wakeups push notifications are made from); and, for durable backends,
//! restarts.

use std::collections::{BTreeMap, HashMap, HashSet};

use bytes::Bytes;
use parley_proto::v1::{CloseReason, ReceiptKind, ServerFrame, server_frame::Frame};
use prost::Message as _;

use crate::{
    Accepted, Attached, Device, Devices, Outgoing, Payload, Read, Router, SendError, UserId,
};

/// The settings a case needs; each backend maps them onto its own.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    pub window: usize,
    pub dedupe_horizon: usize,
    /// Messages per device before it gets no more copies.
    pub max_queued_messages: usize,
    /// Message bytes per device, likewise.
    pub max_queued_bytes: usize,
    /// Undelivered entries older than this are deleted by `expire`.
    pub ttl_ms: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            window: 64,
            dedupe_horizon: 128,
            max_queued_messages: 10_000,
            max_queued_bytes: 64 * 1024 * 1024,
            ttl_ms: 30 * 24 * 3600 * 1000,
        }
    }
}

/// A router backend under test.
pub trait Backend {
    type Router: Router;

    /// A router with `settings`: the first time a fresh one; later (after
    /// the previous one was dropped) the same store opened again.
    fn open(&mut self, settings: Settings) -> Self::Router;

    /// Whether a router opened again holds what the previous one stored.
    fn durable(&self) -> bool;
}

/// One test per case of the suite, for the backend `$backend` (an
/// expression making a fresh [`Backend`] for each test).
#[macro_export]
macro_rules! conformance_suite {
    ($backend:expr) => {
        $crate::conformance_suite!(@cases $backend;
            offline_messages_arrive_in_order_then_the_marker,
            an_empty_mailbox_gets_the_marker_at_once_and_live_messages_after,
            the_window_bounds_unacknowledged_deliveries,
            a_resent_client_msg_id_gets_the_original_ack_and_is_queued_once,
            a_client_msg_id_reused_for_another_message_is_refused,
            each_sending_device_has_its_own_client_msg_ids,
            unacknowledged_deliveries_come_again_on_the_next_session,
            acks_make_delivered_receipts_for_every_device_of_the_sender,
            reads_make_read_receipts_for_the_sender_and_read_syncs_for_the_readers_others,
            a_message_reaches_every_device_of_the_recipient_and_the_senders_others,
            per_device_bodies_reach_their_own_devices,
            a_new_session_displaces_the_old_and_a_late_detach_is_ignored,
            closing_a_device_closes_only_its_session_and_keeps_its_queue,
            closing_all_closes_every_session_and_keeps_the_queues,
            a_removed_device_loses_its_queue_or_hands_it_to_its_successor,
            a_full_device_gets_no_copy_and_a_recipient_full_everywhere_refuses,
            old_entries_expire_and_young_ones_stay,
            a_user_can_message_itself,
            a_restart_keeps_queues_receipts_and_the_resend_memory,
            devices_without_a_session_are_reported_for_what_they_miss
        );
    };
    (@cases $backend:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                let mut backend = $backend;
                $crate::conformance::$case(&mut backend).await;
            }
        )*
    };
}

/// What a router reported to its [`crate::Wakeups`], in order.
#[derive(Debug, Default)]
pub struct Reported(std::sync::Mutex<Vec<(&'static str, Device)>>);

impl Reported {
    /// Everything reported so far, and forgets it.
    pub fn take(&self) -> Vec<(&'static str, Device)> {
        std::mem::take(&mut *self.0.lock().expect("not poisoned"))
    }
    fn add(&self, what: &'static str, device: Device) {
        self.0.lock().expect("not poisoned").push((what, device));
    }
}

impl crate::Wakeups for Reported {
    fn missed(&self, device: Device) {
        self.add("missed", device);
    }
    fn connected(&self, device: Device) {
        self.add("connected", device);
    }
    fn disconnected(&self, device: Device) {
        self.add("disconnected", device);
    }
}

/// A frame the router pushed, decoded.
pub fn decode(bytes: &Bytes) -> Frame {
    ServerFrame::decode(bytes.as_ref())
        .expect("the router pushes ServerFrames")
        .frame
        .expect("with a frame set")
}

/// Everything pushed to `session` so far.
pub fn drain(session: &mut Attached) -> Vec<Frame> {
    std::iter::from_fn(|| session.frames.try_recv())
        .map(|bytes| decode(&bytes))
        .collect()
}

fn bodies(frames: &[Frame]) -> Vec<String> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::Deliver(d) => Some(String::from_utf8_lossy(&d.body).into_owned()),
            _ => None,
        })
        .collect()
}

fn delivered(frames: &[Frame]) -> Vec<u64> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::Deliver(d) => Some(d.message_id),
            _ => None,
        })
        .collect()
}

fn receipts(frames: &[Frame]) -> Vec<&parley_proto::v1::Receipt> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::Receipt(r) => Some(r),
            _ => None,
        })
        .collect()
}

fn is_marker(frame: &Frame) -> bool {
    matches!(frame, Frame::QueueEmpty(_))
}

/// A user of the cases and their devices.
#[derive(Clone, Debug)]
struct User {
    id: UserId,
    devices: Vec<u64>,
}

impl User {
    fn new(id: UserId, devices: usize) -> Self {
        Self {
            id,
            devices: (1..=devices as u64).map(|d| id * 100 + d).collect(),
        }
    }
    fn device(&self, n: usize) -> Device {
        Device::new(self.id, self.devices[n])
    }
    fn all(&self) -> Devices {
        Devices::new(self.devices.clone())
    }
}

fn alice() -> User {
    User::new(1, 1)
}
fn bob() -> User {
    User::new(2, 1)
}

/// A text message from `from` (all of whose devices are `from_user`'s) to
/// every device of `to`.
fn text(client_msg_id: u64, from_user: &User, to: &User, body: &str) -> Outgoing {
    Outgoing {
        client_msg_id,
        to: to.id,
        to_devices: to.all(),
        from_devices: from_user.all(),
        payload: Payload::Shared(Bytes::from(body.to_owned())),
    }
}

async fn send<R: Router>(
    router: &R,
    from: &User,
    device: usize,
    to: &User,
    cmid: u64,
    body: &str,
) -> Accepted {
    router
        .submit(from.device(device), text(cmid, from, to, body))
        .await
        .expect("accepted")
}

async fn attach<R: Router>(router: &R, device: Device) -> Attached {
    router.attach(device).await.expect("attached")
}

pub async fn offline_messages_arrive_in_order_then_the_marker(b: &mut impl Backend) {
    let r = b.open(Settings::default());
    let (a, bo) = (alice(), bob());
    for (i, body) in ["one", "two", "three"].into_iter().enumerate() {
        send(&r, &a, 0, &bo, i as u64 + 1, body).await;
    }
    let mut s = attach(&r, bo.device(0)).await;
    let frames = drain(&mut s);
    assert_eq!(bodies(&frames), ["one", "two", "three"]);
    assert!(is_marker(frames.last().expect("frames")), "{frames:?}");
    for f in &frames[..3] {
        let Frame::Deliver(d) = f else {
            panic!("{f:?}")
        };
        assert_eq!(
            (d.from_user, d.from_device, d.to_user),
            (a.id, a.devices[0], bo.id)
        );
    }
}

pub async fn an_empty_mailbox_gets_the_marker_at_once_and_live_messages_after(
    b: &mut impl Backend,
) {
    let r = b.open(Settings::default());
    let (a, bo) = (alice(), bob());
    let mut s = attach(&r, bo.device(0)).await;
    let frames = drain(&mut s);
    assert_eq!(frames.len(), 1);
    assert!(is_marker(&frames[0]));
    send(&r, &a, 0, &bo, 1, "live").await;
    assert_eq!(bodies(&drain(&mut s)), ["live"]);
}

pub async fn the_window_bounds_unacknowledged_deliveries(b: &mut impl Backend) {
    let r = b.open(Settings {
        window: 2,
        ..Settings::default()
    });
    let (a, bo) = (alice(), bob());
    let mut ids = Vec::new();
    for i in 1..=5 {
        ids.push(send(&r, &a, 0, &bo, i, &format!("m{i}")).await.message_id);
    }
    let mut s = attach(&r, bo.device(0)).await;
    assert_eq!(delivered(&drain(&mut s)), ids[..2]);
    r.ack_delivery(bo.device(0), &ids[..1]).await.expect("ack");
    assert_eq!(delivered(&drain(&mut s)), ids[2..3]);
    r.ack_delivery(bo.device(0), &ids[1..3]).await.expect("ack");
    let frames = drain(&mut s);
    assert_eq!(delivered(&frames), ids[3..5]);
    assert!(is_marker(frames.last().expect("marker")), "{frames:?}");
    // A guessed id, not delivered to this session, wipes nothing: Bob
    // keeps two, and Alice has the two DELIVERED receipts of his acks.
    r.ack_delivery(bo.device(0), &[ids[4] + 1])
        .await
        .expect("ack");
    assert_eq!(r.census().await.queued, 4);
}

pub async fn a_resent_client_msg_id_gets_the_original_ack_and_is_queued_once(b: &mut impl Backend) {
    let r = b.open(Settings::default());
    let (a, bo) = (alice(), bob());
    let first = send(&r, &a, 0, &bo, 7, "once").await;
    assert!(!first.duplicate);
    let again = send(&r, &a, 0, &bo, 7, "once").await;
    assert!(again.duplicate);
    assert_eq!(
        (again.message_id, again.timestamp_ms),
        (first.message_id, first.timestamp_ms)
    );
    let mut s = attach(&r, bo.device(0)).await;
    let frames = drain(&mut s);
    assert_eq!(bodies(&frames), ["once"]);
    // Even once delivered and wiped, the resend is answered the same way.
    r.ack_delivery(bo.device(0), &delivered(&frames))
        .await
        .expect("ack");
    let third = send(&r, &a, 0, &bo, 7, "once").await;
    assert_eq!(third.message_id, first.message_id);
    assert!(bodies(&drain(&mut s)).is_empty());
}

pub async fn a_client_msg_id_reused_for_another_message_is_refused(b: &mut impl Backend) {
    let r = b.open(Settings::default());
    let (a, bo, carol) = (alice(), bob(), User::new(3, 1));
    send(&r, &a, 0, &bo, 1, "first").await;
    for (to, body) in [(&bo, "another body"), (&carol, "first")] {
        let refused = r.submit(a.device(0), text(1, &a, to, body)).await;
        assert!(matches!(refused, Err(SendError::Reused)), "{refused:?}");
    }
    assert_eq!(r.census().await.queued, 1, "nothing more was queued");
}

pub async fn each_sending_device_has_its_own_client_msg_ids(b: &mut impl Backend) {
    let r = b.open(Settings::default());
    let (a, bo) = (User::new(1, 2), bob());
    let phone = send(&r, &a, 0, &bo, 1, "from the phone").await;
    let laptop = send(&r, &a, 1, &bo, 1, "from the laptop").await;
    assert!(!laptop.duplicate);
    assert_ne!(phone.message_id, laptop.message_id);
    let mut s = attach(&r, bo.device(0)).await;
    assert_eq!(
        bodies(&drain(&mut s)),
        ["from the phone", "from the laptop"]
    );
}

pub async fn unacknowledged_deliveries_come_again_on_the_next_session(b: &mut impl Backend) {
    let r = b.open(Settings::default());
    let (a, bo) = (alice(), bob());
    let one = send(&r, &a, 0, &bo, 1, "one").await.message_id;
    send(&r, &a, 0, &bo, 2, "two").await;
    let s = attach(&r, bo.device(0)).await;
    r.ack_delivery(bo.device(0), &[one]).await.expect("ack");
    r.detach(bo.device(0), s.id).await.expect("detach");
    let mut s = attach(&r, bo.device(0)).await;
    assert_eq!(bodies(&drain(&mut s)), ["two"]);
}

pub async fn acks_make_delivered_receipts_for_every_device_of_the_sender(b: &mut impl Backend) {
    let r = b.open(Settings::default());
    let (a, bo) = (User::new(1, 2), bob());
    let id = send(&r, &a, 0, &bo, 1, "hi").await.message_id;
    let mut s = attach(&r, bo.device(0)).await;
    drain(&mut s);
    r.ack_delivery(bo.device(0), &[id]).await.expect("ack");
    // A receipt is delivered once it is stored as durably as the backend
    // promises: wait for that.
    r.flush().await;
    for device in 0..2 {
        let mut session = attach(&r, a.device(device)).await;
        let frames = drain(&mut session);
        let got = receipts(&frames);
        let receipt = got
            .iter()
            .find(|r| r.kind() == ReceiptKind::Delivered)
            .unwrap_or_else(|| panic!("device {device} got {frames:?}"));
        assert_eq!(
            (receipt.from_user, receipt.from_device, &receipt.message_ids),
            (bo.id, bo.devices[0], &vec![id])
        );
        r.ack_receipts(a.device(device), &[receipt.receipt_id])
            .await
            .expect("ack");
    }
    // The laptop also had its copy of the message itself.
    assert_eq!(r.census().await.queued, 1, "only the laptop's copy is left");
}

pub async fn reads_make_read_receipts_for_the_sender_and_read_syncs_for_the_readers_others(
    b: &mut impl Backend,
) {
    let r = b.open(Settings::default());
    let (a, bo) = (User::new(1, 2), User::new(2, 3));
    let id = send(&r, &a, 0, &bo, 1, "read me").await.message_id;
    r.mark_read(
        bo.device(1),
        Read {
            sender: a.id,
            sender_devices: a.all(),
            reader_devices: bo.all(),
            message_ids: vec![id],
        },
    )
    .await
    .expect("read");
    r.flush().await;
    for device in 0..2 {
        let mut session = attach(&r, a.device(device)).await;
        let frames = drain(&mut session);
        let read = receipts(&frames)
            .into_iter()
            .find(|r| r.kind() == ReceiptKind::Read)
            .unwrap_or_else(|| panic!("{frames:?}"));
        assert_eq!((read.from_user, read.from_device), (bo.id, bo.devices[1]));
    }
    for (device, synced) in [(0, true), (1, false), (2, true)] {
        let mut session = attach(&r, bo.device(device)).await;
        let frames = drain(&mut session);
        let sync = frames.iter().find_map(|f| match f {
            Frame::ReadSync(s) => Some(s),
            _ => None,
        });
        assert_eq!(sync.is_some(), synced, "device {device}: {frames:?}");
        if let Some(sync) = sync {
            assert_eq!(
                (sync.peer_user, sync.by_device, &sync.message_ids),
                (a.id, bo.devices[1], &vec![id])
            );
            r.ack_receipts(bo.device(device), &[sync.sync_id])
                .await
                .expect("ack");
        }
    }
}

pub async fn a_message_reaches_every_device_of_the_recipient_and_the_senders_others(
    b: &mut impl Backend,
) {
    let r = b.open(Settings::default());
    let (a, bo) = (User::new(1, 2), User::new(2, 3));
    let id = send(&r, &a, 0, &bo, 1, "to all of you").await.message_id;
    // Bob's first two devices are online and ack; the third is offline.
    let mut frames_of = Vec::new();
    for device in 0..2 {
        let mut session = attach(&r, bo.device(device)).await;
        let frames = drain(&mut session);
        assert_eq!(delivered(&frames), [id], "bob's device {device}");
        frames_of.push(frames[0].clone());
        r.ack_delivery(bo.device(device), &[id]).await.expect("ack");
    }
    r.flush().await;
    assert_eq!(frames_of[0], frames_of[1], "one frame for every device");
    // Alice's laptop has the copy; her phone, which sent it, has none.
    let mut laptop = attach(&r, a.device(1)).await;
    let frames = drain(&mut laptop);
    let Frame::Deliver(copy) = &frames[0] else {
        panic!("{frames:?}")
    };
    assert_eq!(
        (
            copy.message_id,
            copy.from_user,
            copy.from_device,
            copy.to_user
        ),
        (id, a.id, a.devices[0], bo.id)
    );
    // Two DELIVERED receipts (one per acking device) wait for each of
    // Alice's devices.
    let delivered_by: HashSet<u64> = receipts(&frames)
        .iter()
        .filter(|r| r.kind() == ReceiptKind::Delivered)
        .map(|r| r.from_device)
        .collect();
    assert_eq!(delivered_by, bo.devices[..2].iter().copied().collect());
    // The laptop acks its copy: that makes no receipt (receipts report on
    // the recipient).
    r.ack_delivery(a.device(1), &[id]).await.expect("ack");
    r.flush().await;
    let mut phone = attach(&r, a.device(0)).await;
    let frames = drain(&mut phone);
    assert!(
        delivered(&frames).is_empty(),
        "no copy to the sending device"
    );
    assert_eq!(receipts(&frames).len(), 2, "{frames:?}");
    // The offline device gets it when it comes.
    let mut third = attach(&r, bo.device(2)).await;
    assert_eq!(delivered(&drain(&mut third)), [id]);
}

pub async fn per_device_bodies_reach_their_own_devices(b: &mut impl Backend) {
    let r = b.open(Settings::default());
    let (a, bo) = (User::new(1, 2), User::new(2, 2));
    let bodies_for = [bo.device(0), bo.device(1), a.device(1)];
    let msg = Outgoing {
        payload: Payload::PerDevice(
            bodies_for
                .iter()
                .map(|d| (*d, Bytes::from(format!("for {}", d.device))))
                .collect(),
        ),
        ..text(1, &a, &bo, "")
    };
    r.submit(a.device(0), msg).await.expect("accepted");
    for device in bodies_for {
        let mut session = attach(&r, device).await;
        assert_eq!(
            bodies(&drain(&mut session)),
            [format!("for {}", device.device)]
        );
    }
}

pub async fn a_new_session_displaces_the_old_and_a_late_detach_is_ignored(b: &mut impl Backend) {
    let r = b.open(Settings::default());
    let (a, bo) = (alice(), bob());
    let mut old = attach(&r, bo.device(0)).await;
    let mut new = attach(&r, bo.device(0)).await;
    assert_eq!(old.closed.try_recv(), Ok(CloseReason::Displaced));
    r.detach(bo.device(0), old.id).await.expect("detach");
    drain(&mut new);
    send(&r, &a, 0, &bo, 1, "to the new one").await;
    assert_eq!(bodies(&drain(&mut new)), ["to the new one"]);
}

pub async fn closing_a_device_closes_only_its_session_and_keeps_its_queue(b: &mut impl Backend) {
    let r = b.open(Settings::default());
    let (a, bo) = (alice(), User::new(2, 2));
    let mut phone = attach(&r, bo.device(0)).await;
    let mut laptop = attach(&r, bo.device(1)).await;
    r.close(bo.device(0), CloseReason::Revoked)
        .await
        .expect("close");
    assert_eq!(phone.closed.try_recv(), Ok(CloseReason::Revoked));
    assert!(laptop.closed.try_recv().is_err(), "the laptop stays");
    send(&r, &a, 0, &bo, 1, "queued").await;
    drain(&mut laptop);
    let mut phone = attach(&r, bo.device(0)).await;
    assert_eq!(bodies(&drain(&mut phone)), ["queued"]);
}

pub async fn closing_all_closes_every_session_and_keeps_the_queues(b: &mut impl Backend) {
    let r = b.open(Settings::default());
    let (a, bo) = (alice(), User::new(2, 2));
    let mut sender = attach(&r, a.device(0)).await;
    let mut phone = attach(&r, bo.device(0)).await;
    let mut laptop = attach(&r, bo.device(1)).await;
    drain(&mut phone);
    send(&r, &a, 0, &bo, 1, "in flight").await;
    r.close_all(CloseReason::ServerShutdown).await;
    for session in [&mut sender, &mut phone, &mut laptop] {
        assert_eq!(session.closed.try_recv(), Ok(CloseReason::ServerShutdown));
    }
    // What was pushed and not acknowledged is delivered to the next session.
    let mut phone = attach(&r, bo.device(0)).await;
    assert_eq!(bodies(&drain(&mut phone)), ["in flight"]);
    // A session attached after the close is not closed by it.
    assert!(phone.closed.try_recv().is_err());
}

pub async fn a_removed_device_loses_its_queue_or_hands_it_to_its_successor(b: &mut impl Backend) {
    let r = b.open(Settings::default());
    let (a, bo) = (alice(), User::new(2, 3));
    for i in 1..=2 {
        send(&r, &a, 0, &bo, i, &format!("m{i}")).await;
    }
    let mut tablet = attach(&r, bo.device(2)).await;
    r.remove_device(bo.device(2), CloseReason::Unlinked, None)
        .await
        .expect("removed");
    assert_eq!(tablet.closed.try_recv(), Ok(CloseReason::Unlinked));
    // A message computed from a device list read just before the removal
    // does not bring the device's mailbox back.
    send(&r, &a, 0, &bo, 3, "m3").await;
    // The phone is replaced by a new one, which gets its queue.
    let successor = Device::new(bo.id, 999);
    r.remove_device(bo.device(0), CloseReason::Revoked, Some(successor))
        .await
        .expect("removed");
    let mut new_phone = attach(&r, successor).await;
    assert_eq!(bodies(&drain(&mut new_phone)), ["m1", "m2", "m3"]);
    let mut laptop = attach(&r, bo.device(1)).await;
    assert_eq!(bodies(&drain(&mut laptop)), ["m1", "m2", "m3"]);
    let census = r.census().await;
    assert_eq!(
        census.queued, 6,
        "the new phone's three and the laptop's three"
    );
}

pub async fn a_full_device_gets_no_copy_and_a_recipient_full_everywhere_refuses(
    b: &mut impl Backend,
) {
    let r = b.open(Settings {
        max_queued_messages: 2,
        ..Settings::default()
    });
    let (a, bo) = (alice(), User::new(2, 2));
    let one_device = User {
        devices: vec![bo.devices[1]],
        ..bo.clone()
    };
    // The laptop alone gets one: it has room for one more than the phone.
    send(&r, &a, 0, &one_device, 1, "laptop only").await;
    send(&r, &a, 0, &bo, 2, "both").await;
    send(
        &r,
        &a,
        0,
        &bo,
        3,
        "the phone's second, no room on the laptop",
    )
    .await;
    let refused = r.submit(a.device(0), text(4, &a, &bo, "none")).await;
    assert!(
        matches!(refused, Err(SendError::MailboxFull { .. })),
        "{refused:?}"
    );
    // A refused message is not remembered: the retry is a new send.
    let mut phone = attach(&r, bo.device(0)).await;
    let frames = drain(&mut phone);
    assert_eq!(frames.len(), 3, "{frames:?}");
    r.ack_delivery(bo.device(0), &delivered(&frames))
        .await
        .expect("ack");
    let retried = send(&r, &a, 0, &bo, 4, "none").await;
    assert!(!retried.duplicate);
}

pub async fn old_entries_expire_and_young_ones_stay(b: &mut impl Backend) {
    let ttl_ms = 60_000;
    let r = b.open(Settings {
        ttl_ms,
        ..Settings::default()
    });
    let (a, bo) = (alice(), bob());
    let old = send(&r, &a, 0, &bo, 1, "old").await;
    // Nothing is that old yet.
    assert_eq!(r.expire(old.timestamp_ms + ttl_ms - 1_000).await, 0);
    assert_eq!(r.expire(old.timestamp_ms + ttl_ms + 1_000).await, 1);
    let young = send(&r, &a, 0, &bo, 2, "young").await;
    assert_eq!(r.expire(young.timestamp_ms + 1_000).await, 0);
    let mut s = attach(&r, bo.device(0)).await;
    assert_eq!(bodies(&drain(&mut s)), ["young"]);
}

pub async fn a_user_can_message_itself(b: &mut impl Backend) {
    let r = b.open(Settings::default());
    let a = User::new(1, 2);
    let id = send(&r, &a, 0, &a, 1, "note to self").await.message_id;
    // Every one of one's own devices has it, the sending one too; acking
    // it makes no receipt.
    for device in 0..2 {
        let mut s = attach(&r, a.device(device)).await;
        assert_eq!(delivered(&drain(&mut s)), [id]);
        r.ack_delivery(a.device(device), &[id]).await.expect("ack");
    }
    r.flush().await;
    assert_eq!(r.census().await.queued, 0);
}

pub async fn a_restart_keeps_queues_receipts_and_the_resend_memory<B: Backend>(b: &mut B) {
    if !b.durable() {
        return;
    }
    let mut r = b.open(Settings::default());
    let (a, bo, carol) = (User::new(1, 2), User::new(2, 2), User::new(3, 1));
    let first = send(&r, &a, 0, &bo, 1, "one").await;
    send(&r, &carol, 0, &bo, 1, "two").await;
    let read = send(&r, &bo, 0, &a, 1, "read before the restart")
        .await
        .message_id;
    r.mark_read(
        a.device(0),
        Read {
            sender: bo.id,
            sender_devices: bo.all(),
            reader_devices: a.all(),
            message_ids: vec![read],
        },
    )
    .await
    .expect("read");
    r.flush().await;
    drop(r);
    r = b.open(Settings::default());
    for device in 0..2 {
        let mut s = attach(&r, bo.device(device)).await;
        let frames = drain(&mut s);
        // (Bob's second device also has a copy of his own message.)
        assert_eq!(
            bodies(&frames)[..2],
            ["one", "two"],
            "bob's device {device}"
        );
        assert!(
            receipts(&frames)
                .iter()
                .any(|r| r.kind() == ReceiptKind::Read)
        );
    }
    let again = send(&r, &a, 0, &bo, 1, "one").await;
    assert!(again.duplicate);
    assert_eq!(again.message_id, first.message_id);
    let reused = r
        .submit(a.device(0), text(1, &a, &bo, "something else"))
        .await;
    assert!(matches!(reused, Err(SendError::Reused)), "{reused:?}");
}

/// Any interleaving of sends (fresh and resent) from two users' devices,
/// acks, reconnects and (for durable backends) restarts, towards a
/// recipient with two devices: every accepted message reaches each of the
/// recipient's devices (and the other device of its sender) exactly once
/// as a first delivery, in its sender device's order; nothing is lost;
/// everything acked is wiped. `cases` property runs.
pub fn properties<B: Backend>(make: impl Fn() -> B, cases: u32) {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    let ops = proptest::collection::vec(op_strategy(), 1..100);
    let mut runner = TestRunner::new(Config {
        cases,
        ..Config::default()
    });
    let durable = make().durable();
    runner
        .run(&(ops, 1usize..5), |(ops, window)| {
            let mut backend = make();
            check(&mut backend, &ops, window, durable);
            Ok(())
        })
        .expect("the promises hold");

    #[derive(Debug, Clone)]
    enum Op {
        /// Sending device `d` (of 3: Alice's 2, Carol's 1) sends anew.
        Send(usize),
        /// It resends its `k`-th most recent message.
        Resend(usize, usize),
        /// Bob's device `r` acks the `k`-th delivery it holds unacked.
        Ack(usize, usize),
        /// Bob's device `r` acks everything it holds.
        AckAll(usize),
        /// Bob's device `r` reconnects (its session drops, a new attaches).
        Reconnect(usize),
        /// Bob's device `r` goes offline.
        Disconnect(usize),
        /// The backend stops and opens again (durable backends).
        Restart,
    }

    fn op_strategy() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..3usize).prop_map(Op::Send),
            2 => (0..3usize, 0..4usize).prop_map(|(s, k)| Op::Resend(s, k)),
            3 => (0..2usize, 0..8usize).prop_map(|(r, k)| Op::Ack(r, k)),
            1 => (0..2usize).prop_map(Op::AckAll),
            1 => (0..2usize).prop_map(Op::Reconnect),
            1 => (0..2usize).prop_map(Op::Disconnect),
            1 => Just(Op::Restart),
        ]
    }

    /// One receiving device's view.
    #[derive(Default)]
    struct Receiver {
        session: Option<Attached>,
        holding: Vec<u64>,
        stored: HashSet<u64>,
        order: Vec<(Device, u64)>,
    }

    impl Receiver {
        fn take(&mut self) {
            let Some(session) = self.session.as_mut() else {
                return;
            };
            for frame in drain(session) {
                if let Frame::Deliver(d) = frame {
                    assert!(
                        !self.holding.contains(&d.message_id),
                        "a delivery is pushed twice to one session"
                    );
                    self.holding.push(d.message_id);
                    if self.stored.insert(d.message_id) {
                        self.order
                            .push((Device::new(d.from_user, d.from_device), d.message_id));
                    }
                }
            }
        }
    }

    fn check<B: Backend>(backend: &mut B, ops: &[Op], window: usize, durable: bool) {
        let settings = Settings {
            window,
            dedupe_horizon: 8,
            ..Settings::default()
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let (a, carol, bo) = (User::new(1, 2), User::new(3, 1), User::new(2, 2));
            let senders = [(a.clone(), 0), (a.clone(), 1), (carol.clone(), 0)];
            let mut r = backend.open(settings);
            // What each sending device sent, in order: (cmid, message id).
            let mut sent: Vec<Vec<(u64, u64)>> = vec![Vec::new(); senders.len()];
            let mut bobs: Vec<Receiver> = (0..2).map(|_| Receiver::default()).collect();
            for (n, receiver) in bobs.iter_mut().enumerate() {
                receiver.session = Some(attach(&r, bo.device(n)).await);
            }
            for op in ops.iter().cloned() {
                match op {
                    Op::Send(s) => {
                        let (user, device) = &senders[s];
                        let cmid = sent[s].len() as u64 + 1;
                        let ack = send(&r, user, *device, &bo, cmid, "x").await;
                        assert!(!ack.duplicate);
                        sent[s].push((cmid, ack.message_id));
                    }
                    Op::Resend(s, k) => {
                        let (user, device) = &senders[s];
                        // Within the dedupe horizon (8): the original ack.
                        if let Some(&(cmid, id)) = sent[s].iter().rev().nth(k) {
                            let ack = send(&r, user, *device, &bo, cmid, "x").await;
                            assert!(ack.duplicate);
                            assert_eq!(ack.message_id, id);
                        }
                    }
                    Op::Ack(n, k) => {
                        let receiver = &mut bobs[n];
                        if !receiver.holding.is_empty() {
                            let at = k % receiver.holding.len();
                            let id = receiver.holding.remove(at);
                            r.ack_delivery(bo.device(n), &[id]).await.expect("ack");
                        }
                    }
                    Op::AckAll(n) => {
                        let ids = std::mem::take(&mut bobs[n].holding);
                        r.ack_delivery(bo.device(n), &ids).await.expect("ack");
                    }
                    Op::Reconnect(n) | Op::Disconnect(n) => {
                        if let Some(s) = bobs[n].session.take() {
                            r.detach(bo.device(n), s.id).await.expect("detach");
                        }
                        bobs[n].holding.clear();
                        if matches!(op, Op::Reconnect(_)) {
                            bobs[n].session = Some(attach(&r, bo.device(n)).await);
                        }
                    }
                    Op::Restart => {
                        if !durable {
                            continue;
                        }
                        for receiver in &mut bobs {
                            receiver.session = None;
                            receiver.holding.clear();
                        }
                        r.flush().await;
                        drop(r);
                        r = backend.open(settings);
                        for (n, receiver) in bobs.iter_mut().enumerate() {
                            receiver.session = Some(attach(&r, bo.device(n)).await);
                        }
                    }
                }
                for receiver in &mut bobs {
                    receiver.take();
                }
            }
            // Finally each of Bob's devices comes online and drains.
            for (n, receiver) in bobs.iter_mut().enumerate() {
                if receiver.session.is_none() {
                    receiver.session = Some(attach(&r, bo.device(n)).await);
                }
                for _ in 0..10_000 {
                    receiver.take();
                    if receiver.holding.is_empty() {
                        break;
                    }
                    let ids = std::mem::take(&mut receiver.holding);
                    r.ack_delivery(bo.device(n), &ids).await.expect("ack");
                }
            }
            // Alice's devices each get the other's messages as copies.
            // (Receipts become deliverable once stored: wait for that.)
            r.flush().await;
            let mut copies: HashMap<usize, Vec<u64>> = HashMap::new();
            for device in 0..2 {
                let mut s = attach(&r, a.device(device)).await;
                let mut got = Vec::new();
                for _ in 0..10_000 {
                    let frames = drain(&mut s);
                    let ids = delivered(&frames);
                    let receipt_ids: Vec<u64> =
                        receipts(&frames).iter().map(|r| r.receipt_id).collect();
                    if ids.is_empty() && receipt_ids.is_empty() {
                        break;
                    }
                    r.ack_receipts(a.device(device), &receipt_ids)
                        .await
                        .expect("ack");
                    r.ack_delivery(a.device(device), &ids).await.expect("ack");
                    r.flush().await;
                    got.extend(ids);
                }
                copies.insert(device, got);
            }
            for (device, other) in [(0, 1), (1, 0)] {
                let want: Vec<u64> = sent[other].iter().map(|&(_, m)| m).collect();
                let mut got = copies[&device].clone();
                got.dedup();
                assert_eq!(
                    got, want,
                    "Alice's device {device} has her other device's messages"
                );
            }

            let accepted: HashSet<u64> = sent.iter().flatten().map(|&(_, m)| m).collect();
            for (n, receiver) in bobs.iter().enumerate() {
                assert_eq!(
                    &accepted, &receiver.stored,
                    "Bob's device {n} has every message"
                );
                let mut per_sender: BTreeMap<Device, Vec<u64>> = BTreeMap::new();
                for (from, id) in &receiver.order {
                    per_sender.entry(*from).or_default().push(*id);
                }
                for (s, (user, device)) in senders.iter().enumerate() {
                    let want: Vec<u64> = sent[s].iter().map(|&(_, m)| m).collect();
                    let got = per_sender.remove(&user.device(*device)).unwrap_or_default();
                    assert_eq!(got, want, "Bob's device {n}: sender {s}'s order");
                }
            }
            // What is left (Carol's DELIVERED receipts: nobody took them)
            // is what a restart finds: what was acked is gone from the
            // store too.
            r.flush().await;
            let left = r.census().await.queued;
            drop(r);
            if durable {
                let r = backend.open(settings);
                assert_eq!(r.census().await.queued, left);
            }
        });
    }
}

pub async fn devices_without_a_session_are_reported_for_what_they_miss(b: &mut impl Backend) {
    let r = b.open(Settings::default());
    let reported = std::sync::Arc::new(Reported::default());
    assert!(r.set_wakeups(reported.clone()));
    assert!(
        !r.set_wakeups(std::sync::Arc::new(Reported::default())),
        "once"
    );
    let (a, bo) = (User::new(1, 3), User::new(2, 2));
    // Bob's phone is online, his laptop is not; Alice's three devices are.
    let mut phone = attach(&r, bo.device(0)).await;
    let mut alice = attach(&r, a.device(0)).await;
    let laptop = attach(&r, a.device(1)).await;
    let tablet = attach(&r, a.device(2)).await;
    assert_eq!(
        reported.take(),
        [
            ("connected", bo.device(0)),
            ("connected", a.device(0)),
            ("connected", a.device(1)),
            ("connected", a.device(2)),
        ]
    );
    let id = send(&r, &a, 0, &bo, 1, "hi").await.message_id;
    assert_eq!(
        reported.take(),
        [("missed", bo.device(1))],
        "only the device without a session"
    );
    // Alice's laptop leaves with the copy unacknowledged.
    r.detach(a.device(1), laptop.id).await.expect("detach");
    assert_eq!(reported.take(), [("disconnected", a.device(1))]);
    // The phone's DELIVERED receipt goes to Alice's devices: the laptop,
    // now without a session, is reported (the first thing it misses since
    // its session ended always is).
    drain(&mut phone);
    r.ack_delivery(bo.device(0), &[id]).await.expect("ack");
    r.flush().await;
    assert_eq!(reported.take(), [("missed", a.device(1))]);
    // The tablet leaves too; a read on the phone: a READ receipt for the
    // tablet (reported), a read-sync for Bob's laptop (never reported: it
    // is Bob's own doing).
    r.detach(a.device(2), tablet.id).await.expect("detach");
    assert_eq!(reported.take(), [("disconnected", a.device(2))]);
    r.mark_read(
        bo.device(0),
        Read {
            sender: a.id,
            sender_devices: Devices::new(vec![a.devices[0], a.devices[2]]),
            reader_devices: bo.all(),
            message_ids: vec![id],
        },
    )
    .await
    .expect("read");
    assert_eq!(reported.take(), [("missed", a.device(2))]);
    // Alice's phone leaves with its receipts unacknowledged; Bob's phone
    // leaves with nothing queued (not reported).
    let frames = drain(&mut alice);
    assert!(!receipts(&frames).is_empty(), "{frames:?}");
    r.detach(a.device(0), alice.id).await.expect("detach");
    r.detach(bo.device(0), phone.id).await.expect("detach");
    assert_eq!(reported.take(), [("disconnected", a.device(0))]);
    // A displaced session's late detach says nothing.
    let first = attach(&r, a.device(0)).await;
    let _second = attach(&r, a.device(0)).await;
    r.detach(a.device(0), first.id).await.expect("detach");
    assert_eq!(
        reported.take(),
        [("connected", a.device(0)), ("connected", a.device(0))]
    );
}
