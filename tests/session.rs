//! End to end through parley-cli's library over real TLS sockets against a
//! real `parley` process: registration, offline queueing, delivery,
//! checkmarks, de-duplication, redelivery and re-registration.

mod common;

use common::{TestServer, close_cleanly, next, until};
use parley_client::ClientError;
use parley_proto::close;
use parley_proto::v1::{CloseReason, ErrorCode, ReceiptKind, server_frame::Frame};

fn is_empty_marker(frame: &Frame) -> bool {
    matches!(frame, Frame::QueueEmpty(_))
}

#[tokio::test]
async fn offline_messages_are_delivered_in_order_with_every_checkmark() {
    let server = TestServer::start();
    let alice = server.register().await;
    let bob = server.register().await;
    assert_ne!(alice.user_id, bob.user_id);

    // Bob is offline; Alice sends three messages and gets three acks.
    let mut a = server.connect(&alice).await;
    assert!(until(&mut a, is_empty_marker).await.is_empty());
    let mut acks = Vec::new();
    for (i, text) in ["one", "two", "three"].into_iter().enumerate() {
        a.send(i as u64 + 1, bob.user_id, text).await.expect("send");
        match next(&mut a).await {
            Frame::Ack(ack) => {
                assert_eq!(ack.client_msg_id, i as u64 + 1);
                assert!(ack.timestamp_ms > 0);
                acks.push(ack.message_id);
            }
            other => panic!("expected a server ack, got {other:?}"),
        }
    }

    // Bob connects and receives them in order, then the queue-empty marker.
    let mut b = server.connect(&bob).await;
    let backlog = until(&mut b, is_empty_marker).await;
    let delivered: Vec<_> = backlog
        .iter()
        .map(|f| match f {
            Frame::Deliver(d) => d.clone(),
            other => panic!("expected deliveries, got {other:?}"),
        })
        .collect();
    let texts: Vec<_> = delivered.iter().map(|d| d.body.as_ref()).collect();
    assert_eq!(texts, [&b"one"[..], b"two", b"three"]);
    assert!(delivered.iter().all(|d| d.from_user == alice.user_id));
    let ids: Vec<u64> = delivered.iter().map(|d| d.message_id).collect();
    assert_eq!(
        ids, acks,
        "the ids in the deliveries are the ids in the acks"
    );

    // Bob acknowledges each; Alice gets three delivered receipts.
    for id in &ids {
        b.ack_delivery(vec![*id]).await.expect("ack");
    }
    let mut receipted = Vec::new();
    for _ in 0..3 {
        match next(&mut a).await {
            Frame::Receipt(r) => {
                assert_eq!(r.kind(), ReceiptKind::Delivered);
                assert_eq!(r.from_user, bob.user_id);
                a.ack_receipts(vec![r.receipt_id])
                    .await
                    .expect("ack receipt");
                receipted.extend(r.message_ids);
            }
            other => panic!("expected a delivered receipt, got {other:?}"),
        }
    }
    assert_eq!(receipted, acks);

    // Bob reads them; Alice gets the blue checkmarks.
    b.mark_read(alice.user_id, ids.clone())
        .await
        .expect("mark read");
    match next(&mut a).await {
        Frame::Receipt(r) => {
            assert_eq!(r.kind(), ReceiptKind::Read);
            assert_eq!(r.message_ids, acks);
            a.ack_receipts(vec![r.receipt_id])
                .await
                .expect("ack receipt");
        }
        other => panic!("expected a read receipt, got {other:?}"),
    }

    // Everything was acknowledged: a new session of either finds nothing.
    close_cleanly(a).await.expect("close");
    close_cleanly(b).await.expect("close");
    let mut a = server.connect(&alice).await;
    assert!(until(&mut a, is_empty_marker).await.is_empty());
    let mut b = server.connect(&bob).await;
    assert!(until(&mut b, is_empty_marker).await.is_empty());
}

#[tokio::test]
async fn receipts_for_an_offline_sender_wait_for_it() {
    let server = TestServer::start();
    let alice = server.register().await;
    let bob = server.register().await;
    let mut a = server.connect(&alice).await;
    until(&mut a, is_empty_marker).await;
    a.send(1, bob.user_id, "are you there?")
        .await
        .expect("send");
    let Frame::Ack(ack) = next(&mut a).await else {
        panic!("expected an ack")
    };
    close_cleanly(a).await.expect("close");

    let mut b = server.connect(&bob).await;
    let Frame::Deliver(d) = next(&mut b).await else {
        panic!("expected the delivery")
    };
    b.ack_delivery(vec![d.message_id]).await.expect("ack");
    b.mark_read(alice.user_id, vec![d.message_id])
        .await
        .expect("read");

    // Alice comes back: both receipts wait for her (the READ one may still
    // be on its way when she connects, so it may follow the marker).
    let mut a = server.connect(&alice).await;
    let mut kinds = Vec::new();
    while kinds.len() < 2 {
        match next(&mut a).await {
            Frame::Receipt(r) => {
                assert_eq!(r.message_ids, [ack.message_id]);
                kinds.push(r.kind());
            }
            Frame::QueueEmpty(_) => {}
            other => panic!("expected receipts, got {other:?}"),
        }
    }
    assert_eq!(kinds, [ReceiptKind::Delivered, ReceiptKind::Read]);
}

#[tokio::test]
async fn a_resent_client_msg_id_is_acked_again_but_never_delivered_twice() {
    let server = TestServer::start();
    let alice = server.register().await;
    let bob = server.register().await;

    let mut a = server.connect(&alice).await;
    until(&mut a, is_empty_marker).await;
    a.send(42, bob.user_id, "only once").await.expect("send");
    let Frame::Ack(first) = next(&mut a).await else {
        panic!("expected an ack")
    };
    // The phone lost the ack (say) and resends, in a new session.
    a.drop_abruptly();
    let mut a = server.connect(&alice).await;
    until(&mut a, is_empty_marker).await;
    a.send(42, bob.user_id, "only once").await.expect("resend");
    let Frame::Ack(again) = next(&mut a).await else {
        panic!("expected an ack")
    };
    assert_eq!(again.message_id, first.message_id);
    assert_eq!(again.timestamp_ms, first.timestamp_ms);

    let mut b = server.connect(&bob).await;
    let backlog = until(&mut b, is_empty_marker).await;
    assert_eq!(backlog.len(), 1, "one copy only: {backlog:?}");
    // A barrier instead of a wait for silence: Alice's next message is
    // queued behind anything the resend could have queued, so it must be
    // the very next thing Bob gets.
    a.send(43, bob.user_id, "after the resend")
        .await
        .expect("send");
    assert!(matches!(next(&mut a).await, Frame::Ack(_)));
    match next(&mut b).await {
        Frame::Deliver(d) => assert_eq!(d.body.as_ref(), b"after the resend", "no second copy"),
        other => panic!("expected the next message, got {other:?}"),
    }
}

#[tokio::test]
async fn unacknowledged_messages_are_delivered_again_on_the_next_session() {
    let server = TestServer::start();
    let alice = server.register().await;
    let bob = server.register().await;
    let mut a = server.connect(&alice).await;
    until(&mut a, is_empty_marker).await;
    for i in 1..=3 {
        a.send(i, bob.user_id, format!("m{i}")).await.expect("send");
        assert!(matches!(next(&mut a).await, Frame::Ack(_)));
    }

    let mut b = server.connect(&bob).await;
    let first = until(&mut b, is_empty_marker).await;
    assert_eq!(first.len(), 3);
    // Ack only the first, then lose coverage.
    let Frame::Deliver(d1) = &first[0] else {
        panic!("delivery")
    };
    b.ack_delivery(vec![d1.message_id]).await.expect("ack");
    b.drop_abruptly();

    let mut b = server.connect(&bob).await;
    let again = until(&mut b, is_empty_marker).await;
    let bodies: Vec<_> = again
        .iter()
        .map(|f| match f {
            Frame::Deliver(d) => d.body.clone(),
            other => panic!("expected deliveries, got {other:?}"),
        })
        .collect();
    assert_eq!(bodies, [&b"m2"[..], b"m3"]);
}

#[tokio::test]
async fn a_new_session_displaces_the_old_one() {
    let server = TestServer::start();
    let bob = server.register().await;
    let mut first = server.connect(&bob).await;
    until(&mut first, is_empty_marker).await;
    let mut second = server.connect(&bob).await;
    until(&mut second, is_empty_marker).await;

    match next(&mut first).await {
        Frame::Closing(c) => assert_eq!(c.reason(), CloseReason::Displaced),
        other => panic!("expected Closing, got {other:?}"),
    }
    match first.next_frame_timeout(common::PROMPTLY).await {
        Err(ClientError::Closed { code, .. }) => assert_eq!(code, close::DISPLACED),
        other => panic!("expected close 4001, got {other:?}"),
    }
    // The new session is the live one.
    let alice = server.register().await;
    let mut a = server.connect(&alice).await;
    until(&mut a, is_empty_marker).await;
    a.send(1, bob.user_id, "to the new session")
        .await
        .expect("send");
    assert!(matches!(next(&mut second).await, Frame::Deliver(_)));
}

#[tokio::test]
async fn re_registration_revokes_the_old_credential_and_session() {
    // One code per number per second instead of per minute, so the test can
    // register the same number twice.
    let server = TestServer::start_with(&["--code-interval", "1"]);
    let alice = server.register().await;
    let phone = server.phone();
    let old = server.register_phone(&phone).await;
    let mut old_session = server.connect(&old).await;
    until(&mut old_session, is_empty_marker).await;

    // A message waits for Bob, unacknowledged, when he re-registers.
    let mut a = server.connect(&alice).await;
    until(&mut a, is_empty_marker).await;
    a.send(1, old.user_id, "before the new phone")
        .await
        .expect("send");
    assert!(matches!(next(&mut a).await, Frame::Ack(_)));
    assert!(matches!(next(&mut old_session).await, Frame::Deliver(_)));

    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let new = server.register_phone(&phone).await;
    assert_eq!(new.user_id, old.user_id, "the number keeps its user id");
    assert_ne!(new.device_id, old.device_id, "with a new device");

    match next(&mut old_session).await {
        Frame::Closing(c) => assert_eq!(c.reason(), CloseReason::Revoked),
        other => panic!("expected Closing REVOKED, got {other:?}"),
    }
    match old_session.next_frame_timeout(common::PROMPTLY).await {
        Err(ClientError::Closed { code, .. }) => assert_eq!(code, close::REVOKED),
        other => panic!("expected close 4002, got {other:?}"),
    }
    match parley_client::Session::connect_with(
        &server.ws_url(),
        server.tls.clone(),
        &old.token,
        common::patient(),
    )
    .await
    {
        Err(ClientError::Rejected { status, .. }) => assert_eq!(status, 401),
        Ok(_) => panic!("the old token still connects"),
        Err(other) => panic!("expected 401, got {other:?}"),
    }

    // The new device gets what was still queued, and sends as the same user.
    let mut new_session = server.connect(&new).await;
    let backlog = until(&mut new_session, is_empty_marker).await;
    assert!(
        matches!(&backlog[..], [Frame::Deliver(d)] if d.body.as_ref() == b"before the new phone"),
        "{backlog:?}"
    );
    new_session
        .send(1, alice.user_id, "new phone, same me")
        .await
        .expect("send");
    assert!(matches!(next(&mut new_session).await, Frame::Ack(_)));
    match next(&mut a).await {
        Frame::Deliver(d) => assert_eq!(d.from_user, old.user_id),
        other => panic!("expected a delivery, got {other:?}"),
    }
}

#[tokio::test]
async fn a_send_to_an_unknown_user_gets_a_send_error_and_the_session_goes_on() {
    let server = TestServer::start();
    let alice = server.register().await;
    let bob = server.register().await;
    let mut a = server.connect(&alice).await;
    until(&mut a, is_empty_marker).await;

    a.send(1, 0x1234_5678, "anyone?").await.expect("send");
    match next(&mut a).await {
        Frame::SendError(e) => {
            assert_eq!(e.client_msg_id, 1);
            assert_eq!(e.code(), ErrorCode::UnknownRecipient);
        }
        other => panic!("expected UNKNOWN_RECIPIENT, got {other:?}"),
    }
    a.send(0, bob.user_id, "id zero").await.expect("send");
    match next(&mut a).await {
        Frame::SendError(e) => assert_eq!(e.code(), ErrorCode::InvalidMessage),
        other => panic!("expected INVALID_MESSAGE, got {other:?}"),
    }
    a.send(2, bob.user_id, "fine").await.expect("send");
    assert!(matches!(next(&mut a).await, Frame::Ack(_)));
}

#[tokio::test]
async fn contact_lookup_finds_registered_numbers_only() {
    let server = TestServer::start();
    let alice = server.register().await;
    let bob_phone = server.phone();
    let bob = server.register_phone(&bob_phone).await;
    let stranger = server.phone();
    let found = server
        .registration()
        .lookup(&alice.token, &[bob_phone.clone(), stranger])
        .await
        .expect("lookup");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].phone, bob_phone);
    assert_eq!(found[0].user_id, bob.user_id);
}

#[tokio::test]
async fn sigterm_tells_sessions_to_reconnect_and_exits_cleanly() {
    let server = TestServer::start();
    let alice = server.register().await;
    let mut a = server.connect(&alice).await;
    until(&mut a, is_empty_marker).await;
    let waiter = tokio::spawn(async move {
        let closing = next(&mut a).await;
        let closed = a.next_frame_timeout(common::PROMPTLY).await;
        (closing, closed)
    });
    let status = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .expect("terminate");
    assert!(status.success(), "exit status {status}");
    let (closing, closed) = waiter.await.expect("waiter");
    match closing {
        Frame::Closing(c) => assert_eq!(c.reason(), CloseReason::ServerShutdown),
        other => panic!("expected Closing SERVER_SHUTDOWN, got {other:?}"),
    }
    match closed {
        Err(ClientError::Closed { code, .. }) => assert_eq!(code, close::GOING_AWAY),
        other => panic!("expected close 1001, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_restart_keeps_queued_messages_receipts_and_resend_memory() {
    let mut server = TestServer::start();
    let alice = server.register().await;
    let bob = server.register().await;
    let mut a = server.connect(&alice).await;
    until(&mut a, is_empty_marker).await;
    let mut acked = Vec::new();
    for (id, body) in [(1, "before the restart"), (2, "and this one too")] {
        a.send(id, bob.user_id, body).await.expect("send");
        match next(&mut a).await {
            Frame::Ack(ack) => acked.push(ack.message_id),
            other => panic!("expected an ack, got {other:?}"),
        }
    }
    close_cleanly(a).await.expect("alice goes offline");

    // Bob stores the first message only; its DELIVERED receipt waits for
    // Alice, the second message waits for Bob's next session.
    let mut b = server.connect(&bob).await;
    let backlog = until(&mut b, is_empty_marker).await;
    let delivered: Vec<u64> = backlog
        .iter()
        .filter_map(|f| match f {
            Frame::Deliver(d) => Some(d.message_id),
            _ => None,
        })
        .collect();
    assert_eq!(delivered, acked);
    b.ack_delivery(vec![acked[0]]).await.expect("ack");
    close_cleanly(b).await.expect("bob goes offline");

    let status = tokio::task::block_in_place(|| server.stop_gracefully());
    assert!(status.success(), "exit status {status}");
    server.restart();
    assert!(
        server.log().contains("journal replayed"),
        "the restart read the journal"
    );

    let mut b = server.connect(&bob).await;
    let backlog = until(&mut b, is_empty_marker).await;
    let again: Vec<(u64, String)> = backlog
        .iter()
        .filter_map(|f| match f {
            Frame::Deliver(d) => {
                Some((d.message_id, String::from_utf8_lossy(&d.body).into_owned()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        again,
        [(acked[1], "and this one too".to_owned())],
        "the unacknowledged message survives, the acknowledged one is gone"
    );

    let mut a = server.connect(&alice).await;
    let backlog = until(&mut a, is_empty_marker).await;
    assert!(
        backlog.iter().any(|f| matches!(f, Frame::Receipt(r)
            if r.kind() == ReceiptKind::Delivered && r.message_ids == [acked[0]])),
        "the DELIVERED receipt survives: {backlog:?}"
    );
    // A resend of an accepted message is still recognised after the restart.
    a.send(2, bob.user_id, "and this one too")
        .await
        .expect("resend");
    match next(&mut a).await {
        Frame::Ack(ack) => assert_eq!(ack.message_id, acked[1], "the original ack"),
        other => panic!("expected the original ack, got {other:?}"),
    }
    // Nothing new for Bob from the resend: Alice's next message, queued
    // behind anything the resend could have queued, is the next he gets.
    a.send(3, bob.user_id, "after the resend")
        .await
        .expect("send");
    assert!(matches!(next(&mut a).await, Frame::Ack(_)));
    match next(&mut b).await {
        Frame::Deliver(d) => assert_eq!(d.body.as_ref(), b"after the resend", "no second copy"),
        other => panic!("expected the next message, got {other:?}"),
    }
}

#[tokio::test]
async fn pipelined_sends_are_answered_and_delivered_in_order() {
    let server = TestServer::start_with(&["--messages-burst", "200"]);
    let alice = server.register().await;
    let bob = server.register().await;
    let mut a = server.connect(&alice).await;
    until(&mut a, is_empty_marker).await;
    // 60 sends without waiting; the 30th goes to nobody and is refused at
    // once, but its answer must keep its place behind the acks before it.
    for id in 1..=60u64 {
        let to = if id == 30 { 0xdead } else { bob.user_id };
        a.send(id, to, format!("burst {id}")).await.expect("send");
    }
    let mut answered = Vec::new();
    let mut message_ids = Vec::new();
    while answered.len() < 60 {
        match next(&mut a).await {
            Frame::Ack(ack) => {
                answered.push(ack.client_msg_id);
                message_ids.push(ack.message_id);
            }
            Frame::SendError(e) => {
                assert_eq!(e.code(), ErrorCode::UnknownRecipient);
                answered.push(e.client_msg_id);
            }
            Frame::Receipt(_) => {}
            other => panic!("expected an answer, got {other:?}"),
        }
    }
    assert_eq!(
        answered,
        (1..=60).collect::<Vec<u64>>(),
        "answers in send order"
    );
    assert!(message_ids.windows(2).all(|w| w[0] < w[1]));

    let mut b = server.connect(&bob).await;
    let backlog = until(&mut b, is_empty_marker).await;
    let bodies: Vec<String> = backlog
        .iter()
        .filter_map(|f| match f {
            Frame::Deliver(d) => Some(String::from_utf8_lossy(&d.body).into_owned()),
            _ => None,
        })
        .collect();
    let expected: Vec<String> = (1..=60u64)
        .filter(|&id| id != 30)
        .map(|id| format!("burst {id}"))
        .collect();
    assert_eq!(bodies, expected, "delivered in send order");
}

#[tokio::test]
async fn a_phone_that_closes_gets_the_servers_close_in_answer() {
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    let server = TestServer::start();
    let alice = server.register().await;
    let mut a = server.connect(&alice).await;
    until(&mut a, is_empty_marker).await;
    // The phone starts the close handshake; the server must finish it with
    // a close frame of its own (echoing 1000), not just drop the connection.
    let close = CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    };
    a.send_raw(Message::Close(Some(close)))
        .await
        .expect("close sent");
    match a.next_frame_timeout(common::PROMPTLY).await {
        Err(ClientError::Closed { code, .. }) => assert_eq!(code, 1000, "normal closure"),
        other => panic!("expected the server's close 1000, got {other:?}"),
    }
    server
        .wait_for_metrics(
            &[
                (
                    "parley_gateway_sessions_closed_total{reason=\"client_closed\"}",
                    1.0,
                ),
                ("parley_gateway_sessions_open", 0.0),
            ],
            common::PROMPTLY,
        )
        .await;
}
