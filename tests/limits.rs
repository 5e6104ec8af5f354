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

#[tokio::test]
async fn sending_past_the_message_rate_gets_rate_limited_and_the_session_goes_on() {
    // A burst of 3, then one message per 10 s: the fourth send is over the
    // limit however long the first three take on a loaded machine (it
    // would have to stall for 10 s between them to refill a token).
    let server = TestServer::start_with(&["--messages-per-second", "0.1", "--messages-burst", "3"]);
    let alice = server.register().await;
    let bob = server.register().await;
    let mut a = server.connect(&alice).await;
    until(&mut a, |f| matches!(f, Frame::QueueEmpty(_))).await;

    for i in 1..=3 {
        a.send(i, bob.user_id, "quick").await.expect("send");
        assert!(matches!(next(&mut a).await, Frame::Ack(_)));
    }
    a.send(4, bob.user_id, "too quick").await.expect("send");
    let wait = match next(&mut a).await {
        Frame::SendError(e) => {
            assert_eq!(e.code(), ErrorCode::RateLimited);
            // At most one token's time: 10 s at 0.1 a second.
            assert!(e.retry_after_ms > 0 && e.retry_after_ms <= 10_000, "{e:?}");
            e.retry_after_ms
        }
        other => panic!("expected RATE_LIMITED, got {other:?}"),
    };
    // Waiting for time to pass, as the hint says: the retry is read after
    // at least this long, whatever the machine's speed.
    tokio::time::sleep(std::time::Duration::from_millis(u64::from(wait) + 50)).await;
    a.send(4, bob.user_id, "too quick").await.expect("retry");
    assert!(matches!(next(&mut a).await, Frame::Ack(_)));

    let (_, body) = server.admin_get("/metrics").await;
    assert!(
        body.contains("parley_gateway_rate_limited_total{limiter=\"messages\"} 1"),
        "{body}"
    );
}

#[tokio::test]
async fn a_frame_flood_closes_only_the_flooding_session() {
    // A burst of 5 and next to no refill (one frame per 100 s), so that six
    // frames are a flood however slowly the server reads them.
    let server = TestServer::start_with(&["--frames-per-second", "0.01", "--frames-burst", "5"]);
    let alice = server.register().await;
    let bob = server.register().await;
    let mut flood = server.connect(&alice).await;
    until(&mut flood, |f| matches!(f, Frame::QueueEmpty(_))).await;
    for _ in 0..6 {
        flood.ack_receipts(vec![1]).await.expect("frame");
    }
    match next(&mut flood).await {
        Frame::Error(e) => assert_eq!(e.code(), ErrorCode::RateLimited),
        other => panic!("expected Error RATE_LIMITED, got {other:?}"),
    }
    match flood.next_frame_timeout(common::PROMPTLY).await {
        Err(parley_client::ClientError::Closed { code, .. }) => {
            assert_eq!(code, parley_proto::close::POLICY_VIOLATION);
        }
        other => panic!("expected close 1008, got {other:?}"),
    }
    // Another session on the same server is untouched.
    let mut b = server.connect(&bob).await;
    until(&mut b, |f| matches!(f, Frame::QueueEmpty(_))).await;
    b.send(1, alice.user_id, "hello").await.expect("send");
    assert!(matches!(next(&mut b).await, Frame::Ack(_)));
}

#[tokio::test]
async fn a_phone_that_stops_reading_is_closed_and_keeps_its_messages() {
    // A large window and large bodies, so that what the server pushes is far
    // more than the socket buffers hold and its writes block.
    let server = TestServer::start_with(
        &[
            common::SEND_LIMITS_OFF,
            &[
                "--delivery-window",
                "2000",
                "--write-timeout",
                "1",
                "--inbound-bytes-per-second",
                "1000000000",
                "--inbound-bytes-burst",
                "1000000000",
            ],
        ]
        .concat(),
    );
    let alice = server.register().await;
    let bob = server.register().await;
    let carol = server.register().await;

    // Bob connects, then stops reading (his app froze).
    let mut stalled = server.connect(&bob).await;
    until(&mut stalled, |f| matches!(f, Frame::QueueEmpty(_))).await;

    let mut a = server.connect(&alice).await;
    until(&mut a, |f| matches!(f, Frame::QueueEmpty(_))).await;
    let body = vec![b'x'; 60 * 1024];
    const COUNT: u64 = 600; // ~36 MB for Bob
    for i in 1..=COUNT {
        a.send(i, bob.user_id, body.clone()).await.expect("send");
        match next(&mut a).await {
            Frame::Ack(_) => {}
            other => panic!("expected an ack, got {other:?}"),
        }
    }

    // Meanwhile, and after, other sessions are unaffected.
    let mut c = server.connect(&carol).await;
    until(&mut c, |f| matches!(f, Frame::QueueEmpty(_))).await;
    c.send(1, alice.user_id, "still fine").await.expect("send");
    assert!(matches!(next(&mut c).await, Frame::Ack(_)));
    assert!(matches!(next(&mut a).await, Frame::Deliver(_)));

    // The server gave up on Bob's stalled session (a write blocked past the
    // 1 s write timeout: waited for, with room for a loaded machine)...
    server
        .wait_for_metrics(
            &[(
                "parley_gateway_sessions_closed_total{reason=\"slow_consumer\"}",
                1.0,
            )],
            common::PROMPTLY * 2,
        )
        .await;
    stalled.drop_abruptly();

    // ...and nothing was lost: a new session of Bob's gets every message.
    let mut b = server.connect(&bob).await;
    let mut got = 0;
    while got < COUNT {
        match next(&mut b).await {
            Frame::Deliver(d) => {
                assert_eq!(d.body.len(), body.len());
                b.ack_delivery(vec![d.message_id]).await.expect("ack");
                got += 1;
            }
            Frame::QueueEmpty(_) => {}
            other => panic!("expected deliveries, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn one_address_requesting_codes_for_many_numbers_is_rate_limited() {
    let server = TestServer::start_with(&[
        "--codes-per-ip-burst",
        "2",
        "--codes-per-ip-per-minute",
        "1",
    ]);
    let registration = server.registration();
    for _ in 0..2 {
        registration
            .request_code(&server.phone())
            .await
            .expect("within the burst");
    }
    match registration.request_code(&server.phone()).await {
        Err(parley_client::ClientError::Api {
            status,
            code,
            retry_after,
            ..
        }) => {
            assert_eq!(status, 429);
            assert_eq!(code, "RATE_LIMITED");
            assert!(retry_after.is_some_and(|s| s > 0));
        }
        other => panic!("expected 429 RATE_LIMITED, got {other:?}"),
    }
    let (_, body) = server.admin_get("/metrics").await;
    assert!(
        body.contains("parley_registration_rate_limited_total{limiter=\"codes_per_ip\"} 1"),
        "{body}"
    );
}

#[tokio::test]
async fn a_ping_flood_is_a_frame_flood() {
    // As above: six pings are over the limit however slowly they are read.
    let server = TestServer::start_with(&["--frames-per-second", "0.01", "--frames-burst", "5"]);
    let alice = server.register().await;
    let mut flood = server.connect(&alice).await;
    until(&mut flood, |f| matches!(f, Frame::QueueEmpty(_))).await;
    for _ in 0..6 {
        flood.ping().await.expect("ping");
    }
    match next(&mut flood).await {
        Frame::Error(e) => assert_eq!(e.code(), ErrorCode::RateLimited),
        other => panic!("expected Error RATE_LIMITED, got {other:?}"),
    }
}
