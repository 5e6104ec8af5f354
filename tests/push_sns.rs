//! Push notifications through SNS mobile push (`--push sns`), end to end:
//! the real server and client, the real AWS SDK, and a real local
//! SNS-compatible server (moto, see common/moto.rs). A device's token
//! becomes a platform endpoint (each device its own); a burst to a device
//! without a session publishes one push, whose payload says nothing of the
//! messages; a disabled endpoint kills the token until it is registered
//! again; and with SNS gone, messages are delivered as ever while the
//! failures are counted.
//!
//! Ignored (and reported so) unless `PARLEY_TEST_MOTO` was set when they
//! were built; under `CI=true`, sms_sns.rs's `moto_configured_in_ci` fails
//! without it.

#[path = "common/api.rs"]
mod api;
mod common;
#[path = "common/moto.rs"]
mod moto;

use api::Api;

use common::{PROMPTLY, TestServer, eventually, next, sample, send_acked, until};
use moto::Moto;
use parley_client::Credential;
use parley_proto::v1::server_frame::Frame;

/// A server pushing through `moto`, with an FCM and an APNs application.
async fn start(moto: &Moto, extra: &[&str]) -> TestServer {
    let fcm = moto.platform_application("GCM").await;
    let apns = moto.platform_application("APNS").await;
    let mut args = vec![
        "--push",
        "sns",
        "--sns-endpoint-url",
        &moto.url,
        "--push-fcm-arn",
        &fcm,
        "--push-apns-arn",
        &apns,
    ];
    args.extend_from_slice(extra);
    TestServer::start_with(&args)
}

impl Api {
    async fn set_token(&self, who: &Credential, platform: &str, token: &str) {
        assert_eq!(
            self.set_push_token(who, platform, token).await,
            (204, String::new())
        );
    }
}

/// The platform payload inside an SNS JSON message, parsed, after checking
/// the message's own shape.
fn payload(message: &str, key: &str) -> serde_json::Value {
    let outer: serde_json::Value = serde_json::from_str(message).expect("JSON message");
    assert_eq!(outer["default"], "New messages", "{message}");
    let inner = outer[key]
        .as_str()
        .unwrap_or_else(|| panic!("no {key} in {message}"));
    serde_json::from_str(inner).expect("the payload is JSON")
}

/// Nothing of the message, its sender or its ids is in a push.
fn says_nothing(message: &str, alice: &Credential, ids: &[u64]) {
    assert!(!message.contains("secret text"), "{message}");
    assert!(!message.contains(&alice.user_id.to_string()), "{message}");
    for id in ids {
        assert!(!message.contains(&format!("\"{id}\"")), "{message}");
    }
}

#[tokio::test]
#[cfg_attr(
    not(parley_moto),
    ignore = "set PARLEY_TEST_MOTO (e.g. moto_server) to run against moto"
)]
async fn each_device_token_becomes_its_own_platform_endpoint() {
    let moto = Moto::start().await;
    let server = start(&moto, &[]).await;
    let api = Api::new(&server);
    let bob = server.register().await;
    api.set_token(&bob, "fcm", "bob-phone-fcm").await;
    let _tablet = api.link_with_push(&bob, "apns", "bob-tablet-apns").await;
    let phone = moto.endpoint("bob-phone-fcm").await;
    let tablet = moto.endpoint("bob-tablet-apns").await;
    assert!(phone.arn.contains(":endpoint/GCM/"), "{phone:?}");
    assert!(tablet.arn.contains(":endpoint/APNS/"), "{tablet:?}");
    assert!(phone.enabled && tablet.enabled);
    // The same token again changes nothing; a new token of the phone
    // updates its endpoint in place.
    api.set_token(&bob, "fcm", "bob-phone-fcm").await;
    assert_eq!(moto.endpoints().await.len(), 2);
    api.set_token(&bob, "fcm", "bob-phone-fcm-2").await;
    let renewed = moto.endpoint("bob-phone-fcm-2").await;
    assert_eq!(renewed.arn, phone.arn, "the phone's endpoint, updated");
    assert_eq!(moto.endpoints().await.len(), 2);
    assert_eq!(
        server
            .metric(r#"parley_push_tokens_registered_total{platform="fcm"}"#)
            .await,
        3.0
    );
}

#[tokio::test]
#[cfg_attr(
    not(parley_moto),
    ignore = "set PARLEY_TEST_MOTO (e.g. moto_server) to run against moto"
)]
async fn a_burst_publishes_one_content_free_push_per_device() {
    let moto = Moto::start().await;
    let server = start(&moto, &[]).await;
    let api = Api::new(&server);
    let (alice, bob) = (server.register().await, server.register().await);
    api.set_token(&bob, "fcm", "bob-phone").await;
    let _tablet = api.link_with_push(&bob, "apns", "bob-tablet").await;
    let mut alice_session = server.connect(&alice).await;
    until(&mut alice_session, common::is_empty_marker).await;
    send_acked(&mut alice_session, bob.user_id, 1, 50).await;
    server
        .wait_for_metrics(
            &[
                ("parley_push_sent_total", 2.0),
                ("parley_push_pending", 0.0),
            ],
            PROMPTLY,
        )
        .await;
    // Every wakeup of the burst is in (reported before the acks); all but
    // one per device were absorbed.
    let wakeups = server.metric("parley_push_wakeups_total").await;
    let coalesced = server.metric("parley_push_coalesced_total").await;
    assert_eq!(
        wakeups - coalesced,
        2.0,
        "{wakeups} wakeups, {coalesced} coalesced"
    );
    let phone = moto.endpoint("bob-phone").await;
    let tablet = moto.endpoint("bob-tablet").await;
    assert_eq!(phone.messages.len(), 1, "{phone:?}");
    assert_eq!(tablet.messages.len(), 1, "{tablet:?}");

    let fcm = payload(&phone.messages[0], "GCM");
    let message = &fcm["fcmV1Message"]["message"];
    assert_eq!(
        message["data"],
        serde_json::json!({"kind": "new_messages"}),
        "{fcm}"
    );
    assert_eq!(message["android"]["priority"], "high", "{fcm}");
    assert!(
        message.get("notification").is_none(),
        "a data message: {fcm}"
    );
    let apns = payload(&tablet.messages[0], "APNS");
    assert_eq!(apns["aps"]["alert"]["body"], "New messages", "{apns}");
    assert_eq!(apns["aps"]["mutable-content"], 1, "{apns}");
    assert_eq!(
        apns.as_object().map(|o| o.len()),
        Some(1),
        "only aps: {apns}"
    );

    // Bob's phone connects: all 50 wait for it; the ids it sees appear in
    // no push.
    let mut bob_session = server.connect(&bob).await;
    let frames = until(&mut bob_session, common::is_empty_marker).await;
    let ids: Vec<u64> = frames
        .iter()
        .filter_map(|f| match f {
            Frame::Deliver(d) => Some(d.message_id),
            _ => None,
        })
        .collect();
    assert_eq!(ids.len(), 50);
    for sent in phone.messages.iter().chain(&tablet.messages) {
        says_nothing(sent, &alice, &ids);
    }
}

#[tokio::test]
#[cfg_attr(
    not(parley_moto),
    ignore = "set PARLEY_TEST_MOTO (e.g. moto_server) to run against moto"
)]
async fn a_disabled_endpoint_kills_the_token_until_it_is_registered_again() {
    let moto = Moto::start().await;
    let server = start(&moto, &["--push-window", "1"]).await;
    let api = Api::new(&server);
    let (alice, bob) = (server.register().await, server.register().await);
    api.set_token(&bob, "fcm", "bob-phone").await;
    // APNs told SNS the app is gone: SNS disabled the endpoint.
    let arn = moto.endpoint("bob-phone").await.arn;
    moto.client()
        .await
        .set_endpoint_attributes()
        .endpoint_arn(&arn)
        .attributes("Enabled", "false")
        .send()
        .await
        .expect("SetEndpointAttributes");
    let mut alice_session = server.connect(&alice).await;
    send_acked(&mut alice_session, bob.user_id, 1, 1).await;
    server
        .wait_for_metrics(
            &[
                ("parley_push_dead_tokens_total", 1.0),
                (r#"parley_push_failed_total{reason="disabled"}"#, 1.0),
            ],
            PROMPTLY,
        )
        .await;
    // Dead: later wakeups find no token (once the window is over), and SNS
    // is not called for it again.
    let deadline = std::time::Instant::now() + PROMPTLY;
    for id in 2.. {
        send_acked(&mut alice_session, bob.user_id, id, 1).await;
        if server.metric("parley_push_no_token_total").await > 0.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the token is not dead"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        server
            .metric(r#"parley_push_failed_total{reason="disabled"}"#)
            .await,
        1.0
    );
    // The app is installed again: its token registers, the endpoint is
    // enabled again, and the next message pushes.
    api.set_token(&bob, "fcm", "bob-phone").await;
    let revived = moto.endpoint("bob-phone").await;
    assert!(revived.enabled, "{revived:?}");
    assert_eq!(revived.arn, arn);
    let deadline = std::time::Instant::now() + PROMPTLY;
    for id in 1000.. {
        send_acked(&mut alice_session, bob.user_id, id, 1).await;
        if !moto.endpoint("bob-phone").await.messages.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no push after the revival"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
#[cfg_attr(
    not(parley_moto),
    ignore = "set PARLEY_TEST_MOTO (e.g. moto_server) to run against moto"
)]
async fn with_sns_gone_messages_are_delivered_and_the_failures_counted() {
    let mut moto = Moto::start().await;
    let server = start(&moto, &["--push-window", "1"]).await;
    let api = Api::new(&server);
    let alice = server.register().await;
    let mut recipients = Vec::new();
    for n in 0..5 {
        let who = server.register().await;
        api.set_token(&who, "fcm", &format!("phone-{n}")).await;
        recipients.push(who);
    }
    moto.stop();
    // Every recipient is offline: every message wakes someone, and every
    // push fails. The messages do not notice.
    let mut alice_session = server.connect(&alice).await;
    for (n, who) in recipients.iter().enumerate() {
        send_acked(&mut alice_session, who.user_id, 1 + 20 * n as u64, 20).await;
    }
    eventually("the pushes fail", PROMPTLY, || async {
        let (_, body) = server.admin_get("/metrics").await;
        let failed: f64 = ["unreachable", "timeout", "service"]
            .iter()
            .filter_map(|r| {
                sample(
                    &body,
                    &format!(r#"parley_push_failed_total{{reason="{r}"}}"#),
                )
            })
            .sum();
        if failed >= 5.0 {
            Ok(())
        } else {
            Err(format!("{failed} failed"))
        }
    })
    .await;
    assert_eq!(server.metric("parley_push_sent_total").await, 0.0);
    for who in &recipients {
        let mut session = server.connect(who).await;
        let frames = until(&mut session, common::is_empty_marker).await;
        let delivered = frames
            .iter()
            .filter(|f| matches!(f, Frame::Deliver(_)))
            .count();
        assert_eq!(delivered, 20);
    }
    assert!(
        server
            .log()
            .contains("push failed; message delivery is not affected"),
        "the failure is in the log"
    );
}

#[tokio::test]
#[cfg_attr(
    not(parley_moto),
    ignore = "set PARLEY_TEST_MOTO (e.g. moto_server) to run against moto"
)]
async fn a_session_left_unacknowledged_is_pushed_once_after_the_delay_and_a_live_one_never() {
    let moto = Moto::start().await;
    let server = start(&moto, &["--push-delay", "1"]).await;
    let api = Api::new(&server);
    let (alice, bob) = (server.register().await, server.register().await);
    api.set_token(&bob, "apns", "bob-phone").await;
    api.set_token(&alice, "fcm", "alice-phone").await;
    let mut bob_session = server.connect(&bob).await;
    until(&mut bob_session, common::is_empty_marker).await;
    let mut alice_session = server.connect(&alice).await;
    until(&mut alice_session, common::is_empty_marker).await;
    send_acked(&mut alice_session, bob.user_id, 1, 3).await;
    // Both connected: Bob receives (and does not store) the messages; no
    // wakeup for anyone.
    for _ in 0..3 {
        let Frame::Deliver(_) = next(&mut bob_session).await else {
            panic!("a delivery")
        };
    }
    assert_eq!(server.metric("parley_push_wakeups_total").await, 0.0);
    bob_session.drop_abruptly();
    server
        .wait_for_metrics(&[("parley_push_sent_total", 1.0)], PROMPTLY)
        .await;
    assert_eq!(moto.endpoint("bob-phone").await.messages.len(), 1);
    assert!(moto.endpoint("alice-phone").await.messages.is_empty());
}
