//! Per-device mailbox caps, end to end: a send to a full mailbox gets
//! MAILBOX_FULL with a retry hint and is not queued; once the recipient
//! drains, the same message is accepted.

mod common;

use common::{TestServer, next, until};
use parley_proto::v1::{ErrorCode, server_frame::Frame};

#[tokio::test]
async fn a_full_mailbox_answers_mailbox_full_and_accepts_again_once_drained() {
    let server = TestServer::start_with(&["--mailbox-max-messages", "2"]);
    let alice = server.register().await;
    let bob = server.register().await;
    let mut a = server.connect(&alice).await;
    until(&mut a, |f| matches!(f, Frame::QueueEmpty(_))).await;

    for i in 1..=2 {
        a.send(i, bob.user_id, format!("m{i}")).await.expect("send");
        assert!(matches!(next(&mut a).await, Frame::Ack(_)));
    }
    a.send(3, bob.user_id, "m3").await.expect("send");
    match next(&mut a).await {
        Frame::SendError(e) => {
            assert_eq!(e.client_msg_id, 3);
            assert_eq!(e.code(), ErrorCode::MailboxFull);
            assert!(e.retry_after_ms > 0, "with a retry hint");
        }
        other => panic!("expected MAILBOX_FULL, got {other:?}"),
    }

    // Bob drains one; Alice retries the same message and it goes through.
    let mut b = server.connect(&bob).await;
    let backlog = until(&mut b, |f| matches!(f, Frame::QueueEmpty(_))).await;
    assert_eq!(backlog.len(), 2, "the refused message was not queued");
    let Frame::Deliver(first) = &backlog[0] else {
        panic!("delivery")
    };
    b.ack_delivery(vec![first.message_id]).await.expect("ack");
    // The delivered receipt for the first message reaches Alice first.
    assert!(matches!(next(&mut a).await, Frame::Receipt(_)));
    a.send(3, bob.user_id, "m3").await.expect("retry");
    assert!(matches!(next(&mut a).await, Frame::Ack(_)));
    match next(&mut b).await {
        Frame::Deliver(d) => assert_eq!(d.body.as_ref(), b"m3"),
        other => panic!("expected m3, got {other:?}"),
    }
}
