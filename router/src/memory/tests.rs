use super::*;
use bytes::Bytes;
use parley_proto::v1::{ServerFrame, server_frame::Frame};
use prost::Message;

const A: Device = Device {
    user: 1,
    device: 10,
};
const B: Device = Device {
    user: 2,
    device: 20,
};

fn router(window: usize) -> MemoryRouter {
    MemoryRouter::new(MemoryConfig {
        window,
        dedupe_horizon: 8,
        shards: 4,
        ..MemoryConfig::default()
    })
}

fn msg(client_msg_id: u64, to: UserId, body: &str) -> Outgoing {
    Outgoing {
        client_msg_id,
        to,
        body: Bytes::copy_from_slice(body.as_bytes()),
    }
}

/// Every frame pushed to the session so far.
fn drain(session: &mut Attached) -> Vec<Frame> {
    let mut out = Vec::new();
    while let Ok(bytes) = session.frames.try_recv() {
        let frame = ServerFrame::decode(bytes).expect("router pushes valid frames");
        out.push(frame.frame.expect("frame set"));
    }
    out
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

fn delivered_ids(frames: &[Frame]) -> Vec<u64> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::Deliver(d) => Some(d.message_id),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn offline_messages_arrive_in_order_then_the_marker() {
    let r = router(16);
    let mut acks = Vec::new();
    for i in 1..=3 {
        acks.push(
            r.send(A, msg(i, B.user, &format!("m{i}")))
                .await
                .expect("the memory router does not fail"),
        );
    }
    assert!(acks.windows(2).all(|w| w[0].message_id < w[1].message_id));
    let mut b = r.attach(B).await.expect("the memory router does not fail");
    let frames = drain(&mut b);
    assert_eq!(bodies(&frames), ["m1", "m2", "m3"]);
    assert!(matches!(frames.last(), Some(Frame::QueueEmpty(_))));
    assert_eq!(
        delivered_ids(&frames),
        acks.iter().map(|a| a.message_id).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn an_empty_mailbox_gets_the_marker_at_once_and_live_messages_after() {
    let r = router(16);
    let mut b = r.attach(B).await.expect("the memory router does not fail");
    assert!(matches!(drain(&mut b)[..], [Frame::QueueEmpty(_)]));
    r.send(A, msg(1, B.user, "live"))
        .await
        .expect("the memory router does not fail");
    assert_eq!(bodies(&drain(&mut b)), ["live"]);
}

#[tokio::test]
async fn the_window_bounds_unacknowledged_deliveries() {
    let r = router(4);
    for i in 1..=10 {
        r.send(A, msg(i, B.user, &format!("m{i}")))
            .await
            .expect("the memory router does not fail");
    }
    let mut b = r.attach(B).await.expect("the memory router does not fail");
    let first = drain(&mut b);
    assert_eq!(bodies(&first), ["m1", "m2", "m3", "m4"]);
    assert!(
        !first.iter().any(|f| matches!(f, Frame::QueueEmpty(_))),
        "the backlog is not drained yet"
    );
    // Acking out of order frees room all the same.
    let ids = delivered_ids(&first);
    r.ack_delivery(B, &[ids[2], ids[0]])
        .await
        .expect("the memory router does not fail");
    assert_eq!(bodies(&drain(&mut b)), ["m5", "m6"]);
    r.ack_delivery(B, &[ids[1], ids[3]])
        .await
        .expect("the memory router does not fail");
    let next = drain(&mut b);
    assert_eq!(bodies(&next), ["m7", "m8"]);
    let ids = delivered_ids(&next);
    let more = {
        r.ack_delivery(B, &ids)
            .await
            .expect("the memory router does not fail");
        drain(&mut b)
    };
    assert_eq!(bodies(&more), ["m9", "m10"]);
    assert!(matches!(more.last(), Some(Frame::QueueEmpty(_))));
}

#[tokio::test]
async fn a_resent_client_msg_id_gets_the_original_ack_and_is_queued_once() {
    let r = router(16);
    let first = r
        .send(A, msg(7, B.user, "once"))
        .await
        .expect("the memory router does not fail");
    let again = r
        .send(A, msg(7, B.user, "once"))
        .await
        .expect("the memory router does not fail");
    assert!(!first.duplicate);
    assert!(again.duplicate);
    assert_eq!(
        (first.message_id, first.timestamp_ms),
        (again.message_id, again.timestamp_ms)
    );
    assert_eq!(r.queued(B.user), 1);
    // The same id from a new device of A (re-registered) is a new message.
    let new_device = Device {
        user: A.user,
        device: 11,
    };
    assert!(
        !r.send(new_device, msg(7, B.user, "new"))
            .await
            .expect("the memory router does not fail")
            .duplicate
    );
    assert_eq!(r.queued(B.user), 2);
}

#[tokio::test]
async fn unacknowledged_deliveries_come_again_on_the_next_session() {
    let r = router(16);
    r.send(A, msg(1, B.user, "m1"))
        .await
        .expect("the memory router does not fail");
    r.send(A, msg(2, B.user, "m2"))
        .await
        .expect("the memory router does not fail");
    let mut b = r.attach(B).await.expect("the memory router does not fail");
    let ids = delivered_ids(&drain(&mut b));
    r.ack_delivery(B, &ids[..1])
        .await
        .expect("the memory router does not fail");
    r.detach(B, b.id).await;
    let mut b = r.attach(B).await.expect("the memory router does not fail");
    assert_eq!(bodies(&drain(&mut b)), ["m2"]);
}

#[tokio::test]
async fn acks_produce_delivered_receipts_and_reads_produce_read_receipts() {
    let r = router(16);
    let sent = r
        .send(A, msg(1, B.user, "hello"))
        .await
        .expect("the memory router does not fail");
    let mut b = r.attach(B).await.expect("the memory router does not fail");
    drain(&mut b);
    r.ack_delivery(B, &[sent.message_id])
        .await
        .expect("the memory router does not fail");
    assert_eq!(r.queued(B.user), 0, "acknowledged messages are wiped");
    r.mark_read(B, A.user, vec![sent.message_id])
        .await
        .expect("the memory router does not fail");

    let mut a = r.attach(A).await.expect("the memory router does not fail");
    let frames = drain(&mut a);
    let receipts: Vec<_> = frames
        .iter()
        .filter_map(|f| match f {
            Frame::Receipt(r) => Some(r.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(receipts.len(), 2);
    assert_eq!(receipts[0].kind(), ReceiptKind::Delivered);
    assert_eq!(receipts[1].kind(), ReceiptKind::Read);
    for receipt in &receipts {
        assert_eq!(receipt.from_user, B.user);
        assert_eq!(receipt.message_ids, [sent.message_id]);
    }
    let ids: Vec<u64> = receipts.iter().map(|r| r.receipt_id).collect();
    r.ack_receipts(A, &ids)
        .await
        .expect("the memory router does not fail");
    assert_eq!(r.queued(A.user), 0);
    r.detach(A, a.id).await;
    let mut a = r.attach(A).await.expect("the memory router does not fail");
    assert!(matches!(drain(&mut a)[..], [Frame::QueueEmpty(_)]));
}

#[tokio::test]
async fn a_new_session_displaces_the_old_and_a_late_detach_is_ignored() {
    let r = router(16);
    let old = r.attach(B).await.expect("the memory router does not fail");
    let mut new = r.attach(B).await.expect("the memory router does not fail");
    assert_eq!(old.closed.await, Ok(CloseReason::Displaced));
    r.detach(B, old.id).await;
    drain(&mut new);
    r.send(A, msg(1, B.user, "still live"))
        .await
        .expect("the memory router does not fail");
    assert_eq!(bodies(&drain(&mut new)), ["still live"]);
}

#[tokio::test]
async fn revoking_a_device_closes_only_that_device_session() {
    let r = router(16);
    let b = r.attach(B).await.expect("the memory router does not fail");
    r.revoke(Device {
        user: B.user,
        device: 99,
    })
    .await;
    r.revoke(B).await;
    assert_eq!(b.closed.await, Ok(CloseReason::Revoked));
}

#[tokio::test]
async fn a_vanished_session_is_detached_and_its_messages_kept() {
    let r = router(16);
    let b = r.attach(B).await.expect("the memory router does not fail");
    drop(b);
    r.send(A, msg(1, B.user, "kept"))
        .await
        .expect("the memory router does not fail");
    let mut b = r.attach(B).await.expect("the memory router does not fail");
    assert_eq!(bodies(&drain(&mut b)), ["kept"]);
}

#[tokio::test]
async fn a_user_can_message_itself() {
    let r = router(16);
    let mut a = r.attach(A).await.expect("the memory router does not fail");
    drain(&mut a);
    let sent = r
        .send(A, msg(1, A.user, "note to self"))
        .await
        .expect("the memory router does not fail");
    assert_eq!(delivered_ids(&drain(&mut a)), [sent.message_id]);
    r.ack_delivery(A, &[sent.message_id])
        .await
        .expect("the memory router does not fail");
    assert!(matches!(drain(&mut a)[..], [Frame::Receipt(_)]));
}

#[tokio::test]
async fn metrics_and_census_count_what_happens() {
    let metrics = RouterMetrics::default();
    let r = MemoryRouter::with_metrics(
        MemoryConfig {
            window: 16,
            dedupe_horizon: 8,
            shards: 4,
            ..MemoryConfig::default()
        },
        metrics.clone(),
    );
    let first = r
        .send(A, msg(1, B.user, "a"))
        .await
        .expect("the memory router does not fail");
    r.send(A, msg(1, B.user, "a"))
        .await
        .expect("the memory router does not fail");
    r.send(A, msg(2, B.user, "b"))
        .await
        .expect("the memory router does not fail");
    assert_eq!(metrics.messages_accepted.get(), 2);
    assert_eq!(metrics.messages_deduplicated.get(), 1);
    assert_eq!(
        r.census(),
        Census {
            mailboxes: 2,
            queued: 2,
            deepest: 2,
            oldest_age_ms: r.census().oldest_age_ms,
        }
    );
    assert_eq!(metrics.queued.get(), 2);

    r.ack_delivery(B, &[first.message_id])
        .await
        .expect("the memory router does not fail");
    assert_eq!(metrics.messages_delivered.get(), 1);
    let delivered = metrics
        .receipts_queued
        .get_or_create(&[("kind", "delivered")])
        .get();
    assert_eq!(delivered, 1);
    // B has one message left, A one receipt.
    let census = r.census();
    assert_eq!((census.queued, census.deepest), (2, 1));
}

#[tokio::test]
async fn a_full_mailbox_refuses_messages_until_it_drains() {
    let r = MemoryRouter::new(MemoryConfig {
        max_queued_messages: 2,
        mailbox_full_retry: std::time::Duration::from_secs(7),
        ..MemoryConfig::default()
    });
    let first = r.send(A, msg(1, B.user, "1")).await.expect("room");
    r.send(A, msg(2, B.user, "2")).await.expect("room");
    match r.send(A, msg(3, B.user, "3")).await {
        Err(SendError::MailboxFull { retry_after_ms }) => assert_eq!(retry_after_ms, 7000),
        other => panic!("expected MailboxFull, got {other:?}"),
    }
    let mut b = r.attach(B).await.expect("attach");
    assert_eq!(bodies(&drain(&mut b)), ["1", "2"]);
    r.ack_delivery(B, &[first.message_id]).await.expect("ack");
    // One acknowledged: room for one more, and the refused id was not
    // remembered as sent, so sending it again is accepted as new.
    let again = r.send(A, msg(3, B.user, "3")).await.expect("room again");
    assert!(!again.duplicate);
    assert_eq!(bodies(&drain(&mut b)), ["3"]);
}

#[tokio::test]
async fn the_byte_cap_counts_message_sizes() {
    let r = MemoryRouter::new(MemoryConfig {
        max_queued_bytes: 1000,
        ..MemoryConfig::default()
    });
    r.send(A, msg(1, B.user, &"x".repeat(600)))
        .await
        .expect("room");
    assert!(matches!(
        r.send(A, msg(2, B.user, &"x".repeat(600))).await,
        Err(SendError::MailboxFull { .. })
    ));
    r.send(A, msg(3, B.user, "small"))
        .await
        .expect("a small one fits");
}

#[tokio::test]
async fn old_entries_expire_and_young_ones_stay() {
    let metrics = RouterMetrics::default();
    let r = MemoryRouter::with_metrics(
        MemoryConfig {
            ttl: std::time::Duration::from_millis(50),
            ..MemoryConfig::default()
        },
        metrics.clone(),
    );
    let old = r.send(A, msg(1, B.user, "old")).await.expect("send");
    let mut b = r.attach(B).await.expect("attach");
    drain(&mut b);
    // Delivered, so a receipt waits for A; then both age past the TTL.
    r.ack_delivery(B, &[old.message_id]).await.expect("ack");
    r.send(A, msg(2, B.user, "older")).await.expect("send");
    tokio::time::sleep(std::time::Duration::from_millis(80)).await;
    let before_young = crate::ids::now_ms();
    r.send(A, msg(3, B.user, "young")).await.expect("send");

    // Expire as of 25 ms after the young one was sent, however long ago
    // that was on this machine: it is under the 50 ms TTL old, the others
    // over it (they are at least 80 ms older).
    assert_eq!(r.expire(before_young + 25), 2);
    assert_eq!(metrics.messages_expired.get(), 1);
    assert_eq!(metrics.receipts_expired.get(), 1);
    assert_eq!(r.queued(A.user), 0);
    assert_eq!(r.queued(B.user), 1);
    // The live session keeps working: the young one comes, and an ack for
    // the expired one is harmless.
    r.detach(B, b.id).await;
    let mut b = r.attach(B).await.expect("attach");
    assert_eq!(bodies(&drain(&mut b)), ["young"]);
    r.ack_delivery(B, &[old.message_id])
        .await
        .expect("harmless");
}

#[tokio::test(start_paused = true)]
async fn a_recipient_receives_at_most_its_inbound_rate() {
    let r = MemoryRouter::new(MemoryConfig {
        inbound_bytes: crate::ratelimit::Rate::new(1000.0, 100.0),
        ..MemoryConfig::default()
    });
    r.send(A, msg(1, B.user, &"x".repeat(900)))
        .await
        .expect("in the burst");
    match r.send(A, msg(2, B.user, &"x".repeat(200))).await {
        Err(SendError::RateLimited { retry_after_ms }) => assert_eq!(retry_after_ms, 1000),
        other => panic!("expected RateLimited, got {other:?}"),
    }
    // Another recipient is not affected.
    r.send(A, msg(3, A.user, &"x".repeat(900)))
        .await
        .expect("own allowance");
    tokio::time::advance(std::time::Duration::from_secs(1)).await;
    r.send(A, msg(2, B.user, &"x".repeat(200)))
        .await
        .expect("refilled");
}

fn journaled(path: &std::path::Path) -> (MemoryRouter, Restored) {
    MemoryRouter::open(
        MemoryConfig {
            window: 8,
            dedupe_horizon: 4,
            shards: 4,
            ..MemoryConfig::default()
        },
        RouterMetrics::default(),
        &JournalConfig::at(path),
    )
    .expect("journal opens")
}

#[tokio::test]
async fn a_restart_queues_again_what_was_not_acknowledged_in_order() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("journal.redb");
    let (r, restored) = journaled(&path);
    assert_eq!(
        restored,
        Restored {
            file_bytes: restored.file_bytes,
            ..Restored::default()
        }
    );
    for (id, body) in [(1, "one"), (2, "two"), (3, "three")] {
        r.send(A, msg(id, B.user, body)).await.expect("accepted");
    }
    let mut b = r.attach(B).await.expect("attach");
    let first = delivered_ids(&drain(&mut b))[0];
    r.ack_delivery(B, &[first]).await.expect("ack");
    r.mark_read(B, A.user, vec![first]).await.expect("read");
    r.flush().await;
    drop((r, b));

    let (r, restored) = journaled(&path);
    // Two messages, a DELIVERED and a READ receipt for A, three sends.
    assert_eq!(
        (restored.messages, restored.receipts, restored.sends),
        (2, 2, 3)
    );
    let mut b = r.attach(B).await.expect("attach");
    let frames = drain(&mut b);
    assert_eq!(bodies(&frames), ["two", "three"]);
    assert!(matches!(frames.last(), Some(Frame::QueueEmpty(_))));
    let mut a = r.attach(A).await.expect("attach");
    let kinds: Vec<i32> = drain(&mut a)
        .into_iter()
        .filter_map(|f| match f {
            Frame::Receipt(receipt) => Some(receipt.kind),
            _ => None,
        })
        .collect();
    assert_eq!(
        kinds,
        [ReceiptKind::Delivered as i32, ReceiptKind::Read as i32]
    );
    // New ids sort after the journal's, so new messages queue behind.
    r.send(A, msg(4, B.user, "four")).await.expect("accepted");
    assert_eq!(bodies(&drain(&mut b)), ["four"]);
}

#[tokio::test]
async fn a_resend_after_a_restart_is_answered_with_the_original_ack_even_once_delivered() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("journal.redb");
    let (r, _) = journaled(&path);
    let original = r.send(A, msg(7, B.user, "hi")).await.expect("accepted");
    let mut b = r.attach(B).await.expect("attach");
    r.ack_delivery(B, &delivered_ids(&drain(&mut b)))
        .await
        .expect("ack");
    r.flush().await;
    drop((r, b));

    let (r, restored) = journaled(&path);
    assert_eq!(restored.messages, 0, "the acked message is gone");
    let again = r.send(A, msg(7, B.user, "hi")).await.expect("answered");
    assert!(again.duplicate);
    assert_eq!(again.message_id, original.message_id);
    let mut b = r.attach(B).await.expect("attach");
    assert!(bodies(&drain(&mut b)).is_empty(), "never delivered twice");
}

#[tokio::test]
async fn the_journal_forgets_sends_past_the_horizon_and_expired_entries() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("journal.redb");
    let (r, _) = journaled(&path);
    for id in 1..=10 {
        r.send(A, msg(id, B.user, "x")).await.expect("accepted");
    }
    // Everything queued is older than "now + TTL".
    let far_future = now_ms() + 31 * 24 * 3600 * 1000;
    assert_eq!(r.expire(far_future), 10);
    r.flush().await;
    drop(r);

    let (_r, restored) = journaled(&path);
    assert_eq!(restored.messages, 0, "expired messages are deleted");
    assert_eq!(restored.sends, 4, "only the horizon's sends are kept");
}

#[tokio::test]
async fn the_journal_gives_space_back_once_the_queue_drains() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("journal.redb");
    let config = JournalConfig {
        compact_slack_bytes: 1024 * 1024,
        // Far longer than the test takes to drain: the compaction must come
        // from the idle check, not from a commit.
        compact_check: std::time::Duration::from_millis(300),
        ..JournalConfig::at(&path)
    };
    let (r, _) = MemoryRouter::open(
        MemoryConfig {
            shards: 4,
            ..MemoryConfig::default()
        },
        RouterMetrics::default(),
        &config,
    )
    .expect("journal opens");
    // 8 MiB queued for one device, sent by many at once (group commits).
    let body = "x".repeat(8 * 1024);
    let mut sends = tokio::task::JoinSet::new();
    for i in 0..1024u64 {
        let (r, body) = (r.clone(), body.clone());
        let from = Device {
            user: 1000 + i,
            device: 1,
        };
        sends.spawn(async move { r.send(from, msg(1, B.user, &body)).await });
    }
    while let Some(accepted) = sends.join_next().await {
        accepted.expect("send task").expect("accepted");
    }
    let full = std::fs::metadata(&path).expect("journal file").len();
    assert!(full > 8 * 1024 * 1024, "{full}");

    let mut b = r.attach(B).await.expect("attach");
    for _ in 0..1024 {
        let ids = delivered_ids(&drain(&mut b));
        if ids.is_empty() {
            break;
        }
        r.ack_delivery(B, &ids).await.expect("ack");
    }
    assert_eq!(r.queued(B.user), 0);
    r.flush().await;
    // No more commits: the idle committer notices on its own. Waited for,
    // not timed: a compaction on a loaded machine can take seconds.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut drained = std::fs::metadata(&path).expect("journal file").len();
    while drained >= full / 4 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        drained = std::fs::metadata(&path).expect("journal file").len();
    }
    assert!(
        drained < full / 4,
        "the file keeps {drained} bytes of {full} after the queue drained"
    );
}

#[tokio::test]
async fn a_journal_from_elsewhere_is_refused_not_guessed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("journal.redb");
    std::fs::write(&path, b"not a redb file at all, but long enough to look at").expect("write");
    let error = MemoryRouter::open(
        MemoryConfig::default(),
        RouterMetrics::default(),
        &JournalConfig::at(&path),
    )
    .expect_err("refused");
    assert!(error.to_string().contains("journal.redb"), "{error}");
}

mod properties {
    //! Any interleaving of sends (fresh and resent), acks, reads,
    //! reconnects and (with a journal) restarts keeps the promises of the
    //! protocol.
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, HashMap, HashSet};

    #[derive(Debug, Clone)]
    enum Op {
        /// Sender `s` sends a new message.
        Send(usize),
        /// Sender `s` resends its `k`-th most recent message.
        Resend(usize, usize),
        /// The recipient acks the `k`-th delivery it holds unacked.
        Ack(usize),
        /// The recipient acks everything it holds.
        AckAll,
        /// The recipient's session drops and a new one attaches.
        Reconnect,
        /// The recipient goes offline for a while.
        Disconnect,
        /// The server stops and starts again on its journal (journaled
        /// routers only).
        Restart,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..3usize).prop_map(Op::Send),
            2 => (0..3usize, 0..4usize).prop_map(|(s, k)| Op::Resend(s, k)),
            3 => (0..8usize).prop_map(Op::Ack),
            1 => Just(Op::AckAll),
            1 => Just(Op::Reconnect),
            1 => Just(Op::Disconnect),
        ]
    }

    const R: Device = Device {
        user: 100,
        device: 1,
    };

    fn sender(s: usize) -> Device {
        Device {
            user: 1 + s as u64,
            device: 1,
        }
    }

    proptest! {
        #[test]
        fn order_delivery_and_deduplication_hold(
            ops in proptest::collection::vec(op(), 1..120),
            window in 1usize..6,
        ) {
            check(&ops, window, None);
        }
    }

    proptest! {
        // Every send is an fsync: fewer cases than the memory-only property.
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn order_delivery_and_deduplication_hold_across_restarts(
            ops in proptest::collection::vec(journaled_op(), 1..100),
            window in 1usize..6,
        ) {
            let dir = tempfile::tempdir().expect("temp dir");
            check(&ops, window, Some(&dir.path().join("journal.redb")));
        }
    }

    fn journaled_op() -> impl Strategy<Value = Op> {
        prop_oneof![10 => op(), 1 => Just(Op::Restart)]
    }

    fn open(window: usize, journal: Option<&std::path::Path>) -> MemoryRouter {
        let config = MemoryConfig {
            window,
            dedupe_horizon: 8,
            shards: 4,
            ..MemoryConfig::default()
        };
        match journal {
            None => MemoryRouter::new(config),
            Some(path) => {
                MemoryRouter::open(config, RouterMetrics::default(), &JournalConfig::at(path))
                    .expect("journal opens")
                    .0
            }
        }
    }

    /// Runs `ops` against a router (journaled at `journal`, restarted at
    /// each [`Op::Restart`], or memory-only) and checks the promises.
    fn check(ops: &[Op], window: usize, journal: Option<&std::path::Path>) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let mut r = open(window, journal);
            // What each sender sent: client_msg_id -> message id.
            let mut sent: Vec<Vec<(u64, u64)>> = vec![Vec::new(); 3];
            let mut session: Option<Attached> =
                Some(r.attach(R).await.expect("the memory router does not fail"));
            // Deliveries the recipient holds but has not acked yet.
            let mut holding: Vec<u64> = Vec::new();
            // What the recipient has stored, by message id.
            let mut stored: HashSet<u64> = HashSet::new();
            let mut stored_order: Vec<(u64, u64)> = Vec::new(); // (sender, message id)

            let mut take = |session: &mut Option<Attached>, holding: &mut Vec<u64>| {
                if let Some(s) = session.as_mut() {
                    for f in drain(s) {
                        if let Frame::Deliver(d) = f {
                            assert!(
                                !holding.contains(&d.message_id),
                                "a delivery is pushed twice to one session"
                            );
                            holding.push(d.message_id);
                            if stored.insert(d.message_id) {
                                stored_order.push((d.from_user, d.message_id));
                            }
                        }
                    }
                }
            };

            for op in ops.iter().cloned() {
                match op {
                    Op::Send(s) => {
                        let id = sent[s].len() as u64 + 1;
                        let ack = r
                            .send(sender(s), msg(id, R.user, "x"))
                            .await
                            .expect("the memory router does not fail");
                        assert!(!ack.duplicate);
                        sent[s].push((id, ack.message_id));
                    }
                    Op::Resend(s, k) => {
                        // Resends within the dedupe horizon (8) get the original ack.
                        if let Some(&(cmid, mid)) = sent[s].iter().rev().nth(k) {
                            let ack = r
                                .send(sender(s), msg(cmid, R.user, "x"))
                                .await
                                .expect("the memory router does not fail");
                            assert!(ack.duplicate);
                            assert_eq!(ack.message_id, mid);
                        }
                    }
                    Op::Ack(k) => {
                        if !holding.is_empty() {
                            let id = holding.remove(k % holding.len());
                            r.ack_delivery(R, &[id])
                                .await
                                .expect("the memory router does not fail");
                        }
                    }
                    Op::AckAll => {
                        let ids: Vec<u64> = std::mem::take(&mut holding);
                        r.ack_delivery(R, &ids)
                            .await
                            .expect("the memory router does not fail");
                    }
                    Op::Reconnect => {
                        if let Some(s) = session.take() {
                            r.detach(R, s.id).await;
                        }
                        holding.clear();
                        session = Some(r.attach(R).await.expect("the memory router does not fail"));
                    }
                    Op::Disconnect => {
                        if let Some(s) = session.take() {
                            r.detach(R, s.id).await;
                        }
                        holding.clear();
                    }
                    Op::Restart => {
                        // Memory-only routers lose their queues: nothing to check.
                        let Some(path) = journal else { continue };
                        drop(session.take());
                        holding.clear();
                        drop(std::mem::take(&mut r));
                        r = open(window, Some(path));
                        session = Some(r.attach(R).await.expect("the memory router does not fail"));
                    }
                }
                take(&mut session, &mut holding);
            }

            // Finally the recipient comes online and drains everything.
            if session.is_none() {
                session = Some(r.attach(R).await.expect("the memory router does not fail"));
            }
            for _ in 0..10_000 {
                take(&mut session, &mut holding);
                if holding.is_empty() {
                    break;
                }
                let ids = std::mem::take(&mut holding);
                r.ack_delivery(R, &ids)
                    .await
                    .expect("the memory router does not fail");
            }
            assert_eq!(r.queued(R.user), 0, "everything acked is wiped");
            if let Some(path) = journal {
                // ... from the journal too: a restart delivers nothing again.
                drop(session.take());
                drop(std::mem::take(&mut r));
                r = open(window, Some(path));
                assert_eq!(
                    r.queued(R.user),
                    0,
                    "acked messages are gone from the journal"
                );
            }

            // Nothing accepted is lost, nothing is stored twice.
            let accepted: HashSet<u64> = sent.iter().flatten().map(|&(_, m)| m).collect();
            assert_eq!(&accepted, &stored);
            // Per-sender order: first deliveries come in sending order.
            let mut per_sender: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
            for (from, id) in &stored_order {
                per_sender.entry(*from).or_default().push(*id);
            }
            let sent_order: HashMap<u64, Vec<u64>> = (0..3)
                .map(|s| (sender(s).user, sent[s].iter().map(|&(_, m)| m).collect()))
                .collect();
            for (from, got) in per_sender {
                assert_eq!(&got, &sent_order[&from]);
            }
        });
    }
}
