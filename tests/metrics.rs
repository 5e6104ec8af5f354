//! The admin endpoint reports what really happened on the node: logins,
//! messages, receipts, errors, queue depth and rates.

mod common;

use common::{PROMPTLY, TestServer, eventually, next, sample, until};
use parley_proto::v1::server_frame::Frame;

#[tokio::test]
async fn metrics_count_real_traffic_and_readiness_follows_the_lifecycle() {
    let server = TestServer::start();
    let (status, _) = server.admin_get("/healthz").await;
    assert!(status.contains("200"), "{status}");
    let (status, _) = server.admin_get("/readyz").await;
    assert!(status.contains("200"), "{status}");

    let alice = server.register().await;
    let bob = server.register().await;
    let mut a = server.connect(&alice).await;
    until(&mut a, |f| matches!(f, Frame::QueueEmpty(_))).await;
    for i in 1..=3 {
        a.send(i, bob.user_id, "counted").await.expect("send");
        assert!(matches!(next(&mut a).await, Frame::Ack(_)));
    }
    a.send(4, 0xdead, "nobody").await.expect("send");
    assert!(matches!(next(&mut a).await, Frame::SendError(_)));

    let mut b = server.connect(&bob).await;
    let backlog = until(&mut b, |f| matches!(f, Frame::QueueEmpty(_))).await;
    let ids: Vec<u64> = backlog
        .iter()
        .filter_map(|f| match f {
            Frame::Deliver(d) => Some(d.message_id),
            _ => None,
        })
        .collect();
    b.ack_delivery(ids[..2].to_vec())
        .await
        .expect("ack two of three");
    // A forged token is a counted login failure.
    assert!(
        parley_client::Session::connect_with(
            &server.ws_url(),
            server.tls.clone(),
            "x.y.z",
            common::patient()
        )
        .await
        .is_err()
    );
    // The census (queue depth) and the rates are computed once a second:
    // wait for the scrape to show everything, rather than sleep and hope a
    // census ran meanwhile.
    server
        .wait_for_metrics(
            &[
                ("parley_gateway_sessions_open", 2.0),
                ("parley_gateway_logins_total", 2.0),
                (
                    "parley_gateway_login_failures_total{reason=\"TOKEN_INVALID\"}",
                    1.0,
                ),
                ("parley_router_messages_accepted_total", 3.0),
                ("parley_router_messages_delivered_total", 2.0),
                (
                    "parley_gateway_send_errors_total{code=\"UNKNOWN_RECIPIENT\"}",
                    1.0,
                ),
                // One message left for Bob; Alice's delivered receipt waits in
                // her mailbox or went out to her live session (window), and
                // is still queued until acked.
                ("parley_router_queued", 2.0),
                ("parley_registration_codes_sent_total", 2.0),
                (
                    "parley_http_requests_total{route=\"/v1/registration/verify\",status=\"200\"}",
                    2.0,
                ),
            ],
            PROMPTLY,
        )
        .await;
    let rate = eventually("the 100 s rate sees the messages", PROMPTLY, || async {
        let (status, body) = server.admin_get("/metrics").await;
        assert!(status.contains("200"), "{status}");
        let key = "parley_rate_per_second{counter=\"messages_accepted\",window=\"100s\"}";
        match sample(&body, key) {
            Some(rate) if rate > 0.0 => Ok(rate),
            other => Err(format!("{key} = {other:?}")),
        }
    })
    .await;
    eprintln!("messages_accepted over 100 s: {rate}/s");
}
