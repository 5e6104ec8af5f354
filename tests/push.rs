//! Push notifications end to end through the real server and client, with
//! the development sink (the default): a device's push token registered
//! over HTTP, at registration and over its session; a device without a
//! session woken by one content-free push however many messages wait; a
//! session that leaves messages unacknowledged pushed after the delay,
//! unless it reconnects first; a connected device never pushed; every
//! device of an account pushed on its own; a token that moves to another
//! device; and the documented refusals. Pushes through SNS: push_sns.rs.

#[path = "common/api.rs"]
mod api;
mod common;

use api::{Api, code_of};

use common::{PROMPTLY, TestServer, eventually, next, send_acked, until};
use parley_client::Credential;
use parley_proto::v1::server_frame::Frame;
use parley_proto::v1::{ErrorCode, PushPlatform};

/// The push lines of the outbox: `(user, device, platform)`.
fn pushes(server: &TestServer) -> Vec<(u64, u64, String)> {
    let text = std::fs::read_to_string(server.outbox()).unwrap_or_default();
    text.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|v| v["kind"] == "push")
        .map(|v| {
            let id = |key: &str| v[key].as_str().and_then(|s| s.parse().ok()).expect(key);
            (
                id("user"),
                id("device"),
                v["platform"].as_str().expect("platform").to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_burst_to_a_device_without_a_session_makes_one_content_free_push() {
    let server = TestServer::start();
    let api = Api::new(&server);
    let (alice, bob) = (server.register().await, server.register().await);
    assert_eq!(
        api.set_push_token(&bob, "fcm", "bob-phone-token").await,
        (204, String::new())
    );
    let mut alice_session = server.connect(&alice).await;
    send_acked(&mut alice_session, bob.user_id, 1, 50).await;
    // The router reports a wakeup before it acks the message (at most one
    // a second per device): every wakeup of the burst is in, and all but
    // one were absorbed by the first push, so no second push can come.
    server
        .wait_for_metrics(
            &[
                ("parley_push_sent_total", 1.0),
                ("parley_push_pending", 0.0),
            ],
            PROMPTLY,
        )
        .await;
    let wakeups = server.metric("parley_push_wakeups_total").await;
    let coalesced = server.metric("parley_push_coalesced_total").await;
    assert!((1.0..=50.0).contains(&wakeups), "{wakeups} wakeups");
    assert_eq!(wakeups - coalesced, 1.0, "one wakeup made a push");
    assert_eq!(
        pushes(&server),
        [(bob.user_id, bob.device_id, "fcm".to_owned())],
        "one push, naming the device and platform only"
    );
    let line = std::fs::read_to_string(server.outbox()).expect("outbox");
    assert!(
        !line.contains("secret text"),
        "no text of a message in a push"
    );
    assert!(!line.contains("bob-phone-token"), "no token in the outbox");
    // Bob connects and finds all 50: the push only woke him.
    let mut bob_session = server.connect(&bob).await;
    let frames = until(&mut bob_session, common::is_empty_marker).await;
    let delivered = frames
        .iter()
        .filter(|f| matches!(f, Frame::Deliver(_)))
        .count();
    assert_eq!(delivered, 50, "every message waited for him");
}

#[tokio::test]
async fn a_connected_device_gets_no_push() {
    let server = TestServer::start();
    let api = Api::new(&server);
    let (alice, bob) = (server.register().await, server.register().await);
    assert_eq!(api.set_push_token(&bob, "apns", "bob-token").await.0, 204);
    assert_eq!(
        api.set_push_token(&alice, "apns", "alice-token").await.0,
        204
    );
    let mut bob_session = server.connect(&bob).await;
    until(&mut bob_session, common::is_empty_marker).await;
    let mut alice_session = server.connect(&alice).await;
    until(&mut alice_session, common::is_empty_marker).await;
    send_acked(&mut alice_session, bob.user_id, 1, 5).await;
    // Bob stores them; Alice's receipts reach her live session.
    for _ in 0..5 {
        let Frame::Deliver(d) = next(&mut bob_session).await else {
            panic!("a delivery")
        };
        bob_session
            .ack_delivery(vec![d.message_id])
            .await
            .expect("ack");
    }
    let mut receipts = 0;
    while receipts < 5 {
        if let Frame::Receipt(r) = next(&mut alice_session).await {
            receipts += r.message_ids.len();
        }
    }
    // Every message and receipt reached a live session: nothing woke
    // anyone (recorded synchronously, so this is not a race).
    assert_eq!(server.metric("parley_push_wakeups_total").await, 0.0);
    assert!(pushes(&server).is_empty());
}

/// Bob (with a push token) receives a message from Alice and his app dies
/// before it stores it (no ack): his session ends with it queued.
async fn bob_leaves_a_message_unacknowledged(server: &TestServer) -> Credential {
    let api = Api::new(server);
    let (alice, bob) = (server.register().await, server.register().await);
    assert_eq!(api.set_push_token(&bob, "fcm", "bob-token").await.0, 204);
    let mut bob_session = server.connect(&bob).await;
    until(&mut bob_session, common::is_empty_marker).await;
    let mut alice_session = server.connect(&alice).await;
    send_acked(&mut alice_session, bob.user_id, 1, 1).await;
    let Frame::Deliver(_) = next(&mut bob_session).await else {
        panic!("a delivery")
    };
    bob_session.drop_abruptly();
    bob
}

#[tokio::test]
async fn a_session_that_leaves_messages_unacknowledged_is_pushed_after_the_delay() {
    let server = TestServer::start_with(&["--push-delay", "1"]);
    let bob = bob_leaves_a_message_unacknowledged(&server).await;
    server
        .wait_for_metrics(&[("parley_push_sent_total", 1.0)], PROMPTLY)
        .await;
    assert_eq!(
        pushes(&server),
        [(bob.user_id, bob.device_id, "fcm".to_owned())]
    );
}

#[tokio::test]
async fn a_device_that_reconnects_within_the_delay_is_not_pushed() {
    let server = TestServer::start_with(&["--push-delay", "3600"]);
    let bob = bob_leaves_a_message_unacknowledged(&server).await;
    server
        .wait_for_metrics(&[("parley_push_pending", 1.0)], PROMPTLY)
        .await;
    let mut bob_session = server.connect(&bob).await;
    let Frame::Deliver(_) = next(&mut bob_session).await else {
        panic!("the message again")
    };
    server
        .wait_for_metrics(
            &[
                ("parley_push_pending", 0.0),
                ("parley_push_cancelled_total", 1.0),
            ],
            PROMPTLY,
        )
        .await;
    assert_eq!(server.metric("parley_push_sent_total").await, 0.0);
    assert!(pushes(&server).is_empty());
}

#[tokio::test]
async fn every_device_of_an_account_is_pushed_on_its_own_and_a_token_moves_with_the_app() {
    let server = TestServer::start_with(&["--push-window", "1"]);
    let api = Api::new(&server);
    let (alice, bob) = (server.register().await, server.register().await);
    // Bob links a tablet, which registers its token at linking.
    let tablet = api
        .link_with_push(&bob, "apns", "tablet-token")
        .await
        .device_id;
    assert_eq!(api.set_push_token(&bob, "fcm", "phone-token").await.0, 204);
    let mut alice_session = server.connect(&alice).await;
    send_acked(&mut alice_session, bob.user_id, 1, 3).await;
    server
        .wait_for_metrics(&[("parley_push_sent_total", 2.0)], PROMPTLY)
        .await;
    let mut got = pushes(&server);
    got.sort();
    let mut want = vec![
        (bob.user_id, bob.device_id, "fcm".to_owned()),
        (bob.user_id, tablet, "apns".to_owned()),
    ];
    want.sort();
    assert_eq!(got, want);

    // The phone's app data moves to Carol's new phone (same token): the
    // token is Carol's now.
    let carol = server.register().await;
    assert_eq!(
        api.set_push_token(&carol, "fcm", "phone-token").await.0,
        204
    );
    send_acked(&mut alice_session, carol.user_id, 10, 1).await;
    server
        .wait_for_metrics(&[("parley_push_sent_total", 3.0)], PROMPTLY)
        .await;
    assert_eq!(
        pushes(&server).last(),
        Some(&(carol.user_id, carol.device_id, "fcm".to_owned()))
    );
    // Bob's phone has no token left: once its window is over, the next
    // message to Bob finds none for it (and still pushes the tablet).
    let deadline = std::time::Instant::now() + PROMPTLY;
    for id in 100.. {
        send_acked(&mut alice_session, bob.user_id, id, 1).await;
        if server.metric("parley_push_no_token_total").await > 0.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no wakeup of Bob's phone found it without a token"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let phone_pushes = pushes(&server)
        .iter()
        .filter(|p| (p.0, p.1) == (bob.user_id, bob.device_id))
        .count();
    assert_eq!(phone_pushes, 1, "none after the token moved");
}

#[tokio::test]
async fn a_token_comes_with_registration_and_over_the_session() {
    let server = TestServer::start();
    let api = Api::new(&server);
    let phone = server.phone();
    let registration = server.registration();
    registration.request_code(&phone).await.expect("code");
    let code = server.code_for(&phone);
    let verify = |platform: &'static str, token: &'static str| {
        api.call(
            reqwest::Method::POST,
            "/v1/registration/verify",
            None,
            Some(serde_json::json!({
                "phone": phone, "code": code,
                "push": {"platform": platform, "token": token},
            })),
        )
    };
    // A bad token is refused before the code is spent.
    let (status, body) = verify("blackberry", "t").await;
    assert_eq!(
        (status, code_of(&body).as_str()),
        (400, "INVALID_PUSH_TOKEN"),
        "{body}"
    );
    let (status, body) = verify("apns_sandbox", "dev-build-token").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["push"], "registered");
    let bob = Credential {
        user_id: body["user_id"].as_str().expect("id").parse().expect("id"),
        device_id: body["device_id"].as_str().expect("id").parse().expect("id"),
        token: body["token"].as_str().expect("token").to_owned(),
    };

    // Over the session: a new token, then refusals, each answered in turn.
    let mut session = server.connect(&bob).await;
    until(&mut session, common::is_empty_marker).await;
    session
        .set_push_token(7, PushPlatform::Fcm as i32, "new-fcm-token")
        .await
        .expect("frame");
    session
        .set_push_token(8, PushPlatform::Unspecified as i32, "t")
        .await
        .expect("frame");
    session
        .set_push_token(9, PushPlatform::Fcm as i32, "with space")
        .await
        .expect("frame");
    for (id, code) in [
        (7, ErrorCode::Unspecified),
        (8, ErrorCode::InvalidPushToken),
        (9, ErrorCode::InvalidPushToken),
    ] {
        let Frame::PushTokenResult(result) = next(&mut session).await else {
            panic!("a PushTokenResult")
        };
        assert_eq!((result.request_id, result.code()), (id, code), "{result:?}");
    }
    session.drop_abruptly();
    // The session's token is the one pushed (FCM now, not the sandbox).
    let alice = server.register().await;
    let mut alice_session = server.connect(&alice).await;
    eventually("Bob's session is gone", PROMPTLY, || async {
        match server.metric("parley_gateway_sessions_open").await {
            1.0 => Ok(()),
            n => Err(format!("{n} sessions open")),
        }
    })
    .await;
    send_acked(&mut alice_session, bob.user_id, 1, 1).await;
    server
        .wait_for_metrics(&[("parley_push_sent_total", 1.0)], PROMPTLY)
        .await;
    assert_eq!(
        pushes(&server),
        [(bob.user_id, bob.device_id, "fcm".to_owned())]
    );

    // An empty token over the session forgets it.
    let mut session = server.connect(&bob).await;
    session.set_push_token(10, 0, "").await.expect("frame");
    let result = loop {
        if let Frame::PushTokenResult(result) = next(&mut session).await {
            break result;
        }
    };
    assert_eq!(
        (result.request_id, result.code()),
        (10, ErrorCode::Unspecified)
    );
}

#[tokio::test]
async fn bad_tokens_and_disabled_push_get_their_documented_codes() {
    let server = TestServer::start_with(&["--push", "off"]);
    let api = Api::new(&server);
    let bob = server.register().await;
    assert_eq!(
        api.set_push_token(&bob, "fcm", "t").await,
        (400, "PUSH_PLATFORM_UNAVAILABLE".to_owned())
    );
    assert_eq!(
        api.set_push_token(&bob, "windows", "t").await,
        (400, "INVALID_PUSH_TOKEN".to_owned())
    );
    assert_eq!(
        api.set_push_token(&bob, "fcm", &"x".repeat(1025)).await,
        (400, "INVALID_PUSH_TOKEN".to_owned())
    );
    assert_eq!(
        api.set_push_token(&bob, "fcm", "").await,
        (400, "INVALID_PUSH_TOKEN".to_owned())
    );
    let (status, body) = api
        .call(
            reqwest::Method::PUT,
            "/v1/devices/self/push-token",
            Some("not-a-jwt"),
            Some(serde_json::json!({"platform": "fcm", "token": "t"})),
        )
        .await;
    assert_eq!(status, 401, "{body}");
    let (status, _) = api
        .call(
            reqwest::Method::DELETE,
            "/v1/devices/self/push-token",
            Some(&bob.token),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let mut session = server.connect(&bob).await;
    session
        .set_push_token(1, PushPlatform::Apns as i32, "t")
        .await
        .expect("frame");
    let result = loop {
        if let Frame::PushTokenResult(result) = next(&mut session).await {
            break result;
        }
    };
    assert_eq!(result.code(), ErrorCode::PushPlatformUnavailable);
    // With push off nothing is woken, and messages flow as ever.
    let alice = server.register().await;
    let mut alice_session = server.connect(&alice).await;
    send_acked(&mut alice_session, bob.user_id, 1, 3).await;
    assert_eq!(server.metric("parley_push_wakeups_total").await, 0.0);
}

#[test]
fn push_settings_are_checked_at_start() {
    let run = common::refused_at_start;
    let said = run(&["--push-fcm-arn", "arn:aws:sns:us-east-1:1:app/GCM/x"]);
    assert!(
        said.contains("--push-fcm-arn: applies only with --push sns"),
        "{said}"
    );
    let said = run(&["--push", "sns"]);
    assert!(
        said.contains("--push: pushes through SNS need at least one platform application"),
        "{said}"
    );
    let said = run(&[
        "--push",
        "sns",
        "--push-apns-arn",
        "arn:aws:sns:us-east-1:1:app/GCM/x",
        "--push-window",
        "0",
        "--push-queue",
        "0",
    ]);
    for problem in [
        "--push-apns-arn: must be an SNS platform application ARN (arn:aws:sns:REGION:ACCOUNT:app/APNS/NAME)",
        "--push-window: must be at least 1 seconds, not 0",
        "--push-queue: must be at least 1",
    ] {
        assert!(said.contains(problem), "{problem:?} in {said}");
    }
}

#[tokio::test]
async fn registering_tokens_over_http_is_rate_limited_per_account() {
    let server = TestServer::start();
    let api = Api::new(&server);
    let bob = server.register().await;
    // A burst of 10, then 10 a minute: the 11th at once is refused, with
    // when to retry, and the token registered last stays.
    for n in 0..10 {
        let token = format!("token-{n}");
        assert_eq!(api.set_push_token(&bob, "fcm", &token).await.0, 204, "{n}");
    }
    let (status, body) = api
        .call(
            reqwest::Method::PUT,
            "/v1/devices/self/push-token",
            Some(&bob.token),
            Some(serde_json::json!({"platform": "fcm", "token": "token-10"})),
        )
        .await;
    assert_eq!(
        (status, code_of(&body).as_str()),
        (429, "RATE_LIMITED"),
        "{body}"
    );
    assert!(
        body["error"]["retry_after"]
            .as_u64()
            .is_some_and(|s| s >= 1),
        "{body}"
    );
    // Another account is not limited by Bob's.
    let carol = server.register().await;
    assert_eq!(api.set_push_token(&carol, "fcm", "carol").await.0, 204);
    assert_eq!(
        server
            .metric(r#"parley_push_tokens_registered_total{platform="fcm"}"#)
            .await,
        11.0
    );
}
