//! Bad and hostile input against a real server: every case gets its
//! documented answer, and a well-behaved conversation on the same server
//! keeps sending and receiving throughout.

mod common;

use std::time::Duration;

use common::{
    Bystanders, LONGER_THAN_ANY_TEST, PROMPTLY, TestServer, claims_of, expect_error_then_close,
    fresh_session, is_empty_marker, jwt, next, unix_now, until,
};
use parley_client::{ClientError, Session};
use parley_proto::close;
use parley_proto::limits::{MAX_BODY_BYTES, MAX_FRAME_BYTES};
use parley_proto::v1::{ClientFrame, CloseReason, ErrorCode, server_frame::Frame};
use prost::Message as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// Expects an `Error` frame with `code`, then the close code `close_code`.

#[tokio::test]
async fn malformed_oversized_and_text_frames_close_only_their_session() {
    let server = TestServer::start();
    let bystanders = Bystanders::start(&server).await;

    let (_, mut s) = fresh_session(&server).await;
    s.send_raw(Message::Binary(vec![0x0a, 0xff, 0xff, 0x01].into()))
        .await
        .expect("send garbage");
    expect_error_then_close(&mut s, ErrorCode::MalformedFrame, close::INVALID_PAYLOAD).await;

    let (_, mut s) = fresh_session(&server).await;
    let empty = ClientFrame { frame: None }.encode_to_vec();
    s.send_raw(Message::Binary(empty.into()))
        .await
        .expect("send empty");
    expect_error_then_close(&mut s, ErrorCode::MalformedFrame, close::INVALID_PAYLOAD).await;

    let (_, mut s) = fresh_session(&server).await;
    s.send_raw(Message::Binary(vec![0u8; MAX_FRAME_BYTES + 1].into()))
        .await
        .expect("send oversized");
    expect_error_then_close(&mut s, ErrorCode::FrameTooLarge, close::MESSAGE_TOO_BIG).await;

    let (_, mut s) = fresh_session(&server).await;
    s.send_raw(Message::Text("hello?".into()))
        .await
        .expect("send text");
    expect_error_then_close(&mut s, ErrorCode::UnsupportedData, close::UNSUPPORTED_DATA).await;

    bystanders.finish().await;
}

#[tokio::test]
async fn bodies_just_under_the_limit_pass_and_just_over_are_refused() {
    let server = TestServer::start();
    let bystanders = Bystanders::start(&server).await;
    let (_, mut a) = fresh_session(&server).await;
    let (bob, mut b) = fresh_session(&server).await;

    a.send(1, bob.user_id, vec![b'x'; MAX_BODY_BYTES])
        .await
        .expect("send");
    assert!(matches!(next(&mut a).await, Frame::Ack(_)));
    match next(&mut b).await {
        Frame::Deliver(d) => assert_eq!(d.body.len(), MAX_BODY_BYTES),
        other => panic!("expected the large delivery, got {other:?}"),
    }

    // Over the body limit but inside the frame limit: refused, session lives.
    a.send(2, bob.user_id, vec![b'x'; MAX_BODY_BYTES + 1])
        .await
        .expect("send");
    match next(&mut a).await {
        Frame::SendError(e) => assert_eq!(e.code(), ErrorCode::InvalidMessage),
        other => panic!("expected INVALID_MESSAGE, got {other:?}"),
    }
    a.send(3, bob.user_id, "small").await.expect("send");
    assert!(matches!(next(&mut a).await, Frame::Ack(_)));

    bystanders.finish().await;
}

/// A raw TCP connection that writes `bytes` and reads until the server
/// closes. Returns what the server sent.
async fn raw_exchange(server: &TestServer, bytes: &[u8]) -> Vec<u8> {
    let mut tcp = TcpStream::connect(server.gateway).await.expect("connect");
    tcp.write_all(bytes).await.expect("write");
    let mut answer = Vec::new();
    match tokio::time::timeout(PROMPTLY, tcp.read_to_end(&mut answer)).await {
        Ok(_) => answer,
        Err(_) => panic!("the server kept a garbage connection open"),
    }
}

#[tokio::test]
async fn garbage_and_plain_http_on_the_tls_port_are_dropped() {
    // A handshake timeout no test outlasts: a garbage connection that is
    // closed within PROMPTLY was dropped for its garbage, not timed out.
    let server = TestServer::start_with(&["--handshake-timeout", LONGER_THAN_ANY_TEST]);
    let bystanders = Bystanders::start(&server).await;

    let answer = raw_exchange(&server, b"\x00\x01garbage garbage garbage\r\n\r\n").await;
    assert!(!answer.starts_with(b"HTTP"), "no HTTP answer to garbage");
    let answer = raw_exchange(
        &server,
        b"GET /v1/ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\r\n",
    )
    .await;
    assert!(
        !answer.starts_with(b"HTTP/1.1 101"),
        "plain HTTP never upgrades"
    );

    bystanders.finish().await;
}

/// The gateway's default handshake timeout (docs/protocol.md, Limits).
const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn slow_handshakes_are_cut_off() {
    // Longer than the default, so that a cut no sooner than this shows the
    // configured timeout at work (not the default, not an early refusal),
    // and the bound on how late it may come can be generous.
    const TIMEOUT: Duration = Duration::from_secs(12);
    const { assert!(TIMEOUT.as_secs() > DEFAULT_HANDSHAKE_TIMEOUT.as_secs()) };
    let timeout = TIMEOUT.as_secs().to_string();
    let server = TestServer::start_with(&["--handshake-timeout", &timeout]);
    let bystanders = Bystanders::start(&server).await;

    // Connects and says nothing (slowloris), then a TLS client hello cut short.
    let opened = tokio::time::Instant::now();
    let mut silent = TcpStream::connect(server.gateway).await.expect("connect");
    let mut partial = TcpStream::connect(server.gateway).await.expect("connect");
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00])
        .await
        .expect("write");
    for (stream, what) in [(&mut silent, "silent"), (&mut partial, "partial hello")] {
        let mut buf = [0u8; 64];
        match tokio::time::timeout_at(opened + TIMEOUT + PROMPTLY, stream.read(&mut buf)).await {
            Ok(Ok(_) | Err(_)) => {}
            Err(_) => panic!("a stalled handshake ({what}) was kept open past the timeout"),
        }
        let after = opened.elapsed();
        assert!(
            after >= TIMEOUT - Duration::from_millis(10),
            "the {what} connection was cut after {after:?}, before the {TIMEOUT:?} timeout"
        );
        eprintln!("{what}: cut after {after:?} (timeout {TIMEOUT:?})");
    }

    bystanders.finish().await;
}

async fn expect_refused(server: &TestServer, token: &str, why: &str) {
    match Session::connect_with(
        &server.ws_url(),
        server.tls.clone(),
        token,
        common::patient(),
    )
    .await
    {
        Err(ClientError::Rejected { status, .. }) => assert_eq!(status, 401, "{why}"),
        Ok(_) => panic!("{why}: the forged token connected"),
        Err(other) => panic!("{why}: expected 401, got {other:?}"),
    }
}

#[tokio::test]
async fn forged_and_expired_tokens_get_401_before_the_upgrade() {
    use ring::signature::{Ed25519KeyPair, KeyPair};
    let server = TestServer::start();
    let bystanders = Bystanders::start(&server).await;
    let victim = server.register().await;
    let claims = claims_of(&victim.token);
    let eddsa = serde_json::json!({"alg": "EdDSA", "typ": "JWT"});

    // The server's own signing key, as an attacker who stole the key file
    // would have it: still refused when the token is expired.
    let pem = std::fs::read(server.data_dir.path().join("keys/jwt-ed25519.pem"))
        .expect("the server keeps its signing key in the data directory");
    let der = pem::parse(pem).expect("pem").into_contents();
    let server_key = Ed25519KeyPair::from_pkcs8(&der).expect("pkcs8");

    // A sanity check that the forging works: the real claims re-signed with
    // the real key connect.
    let resigned = jwt(&eddsa, &claims, |m| server_key.sign(m).as_ref().to_vec());
    let session = Session::connect_with(
        &server.ws_url(),
        server.tls.clone(),
        &resigned,
        common::patient(),
    )
    .await;
    assert!(session.is_ok(), "re-signed genuine claims should pass");

    let mut expired = claims.clone();
    expired["iat"] = (unix_now() - 7200).into();
    expired["exp"] = (unix_now() - 3600).into();
    let token = jwt(&eddsa, &expired, |m| server_key.sign(m).as_ref().to_vec());
    expect_refused(&server, &token, "expired").await;

    let rng = ring::rand::SystemRandom::new();
    let other = Ed25519KeyPair::from_pkcs8(
        Ed25519KeyPair::generate_pkcs8(&rng)
            .expect("keygen")
            .as_ref(),
    )
    .expect("key");
    let token = jwt(&eddsa, &claims, |m| other.sign(m).as_ref().to_vec());
    expect_refused(&server, &token, "signed by another key").await;

    let none = serde_json::json!({"alg": "none", "typ": "JWT"});
    let token = jwt(&none, &claims, |_| Vec::new());
    expect_refused(&server, &token, "alg none").await;

    let hs256 = serde_json::json!({"alg": "HS256", "typ": "JWT"});
    let public = server_key.public_key().as_ref().to_vec();
    let token = jwt(&hs256, &claims, |m| {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &public);
        ring::hmac::sign(&key, m).as_ref().to_vec()
    });
    expect_refused(&server, &token, "HS256 keyed with the public key").await;

    let mut other_user = claims.clone();
    other_user["sub"] = "12345".into();
    let token = jwt(&eddsa, &other_user, |m| other.sign(m).as_ref().to_vec());
    expect_refused(&server, &token, "claims for another user, foreign key").await;

    expect_refused(&server, "not.a.jwt", "garbage").await;
    expect_refused(&server, "", "empty").await;

    bystanders.finish().await;
}

#[tokio::test]
async fn garbage_after_tls_and_upgrades_without_a_token_or_to_the_wrong_path_are_refused() {
    // As above: a refusal closed within PROMPTLY was closed for the refusal.
    let server = TestServer::start_with(&["--handshake-timeout", LONGER_THAN_ANY_TEST]);
    let bystanders = Bystanders::start(&server).await;
    let connector = tokio_rustls::TlsConnector::from(server.tls.clone());
    let request = |path: &str, auth: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{auth}\r\n"
        )
    };
    for (request, status) in [
        (request("/v1/ws", ""), "401"),
        (
            request("/v1/ws", "Authorization: Basic dXNlcjpwYXNz\r\n"),
            "401",
        ),
        (request("/v2/ws", "Authorization: Bearer x\r\n"), "404"),
        // Garbage after a good TLS handshake.
        ("\x00\x01 not http at all\r\n\r\n".to_owned(), "400"),
    ] {
        let tcp = TcpStream::connect(server.gateway).await.expect("connect");
        let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
        let mut tls = connector.connect(name, tcp).await.expect("tls");
        tls.write_all(request.as_bytes()).await.expect("write");
        let mut answer = String::new();
        tokio::time::timeout(PROMPTLY, tls.read_to_string(&mut answer))
            .await
            .expect("answered promptly")
            .ok();
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "expected {status}, got {answer:?}"
        );
        assert!(
            answer.contains("\"error\""),
            "with a JSON error body: {answer:?}"
        );
    }

    bystanders.finish().await;
}

#[tokio::test]
async fn a_silent_session_is_closed_at_the_idle_timeout_and_a_pinging_one_is_not() {
    const IDLE: Duration = Duration::from_secs(5);
    /// Far below the idle timeout, so that a loaded machine's pauses do not
    /// make the pinging session look silent.
    const PING_EVERY: Duration = Duration::from_millis(250);
    let server = TestServer::start_with(&["--idle-timeout", &IDLE.as_secs().to_string()]);
    // This session does not ping (the client library pings by default).
    let silent_phone = server.register().await;
    let options = parley_client::ConnectOptions {
        keepalive: None,
        ..common::patient()
    };
    let opened = tokio::time::Instant::now();
    let mut silent = Session::connect_with(
        &server.ws_url(),
        server.tls.clone(),
        &silent_phone.token,
        options,
    )
    .await
    .expect("connects");
    until(&mut silent, is_empty_marker).await;
    let pinging_opened = tokio::time::Instant::now();
    let (_, mut pinging) = fresh_session(&server).await;

    // The pinging session pings until the silent one has been closed and it
    // has itself lived past the idle timeout, then proves it is still open:
    // a send it gets an answer to.
    let (silent_closed_tx, mut silent_closed) = tokio::sync::watch::channel(false);
    let pinger = tokio::spawn(async move {
        while !*silent_closed.borrow() || pinging_opened.elapsed() < IDLE + IDLE / 2 {
            pinging.ping().await.expect("ping");
            let _ = tokio::time::timeout(PING_EVERY, silent_closed.changed()).await;
        }
        pinging.send(1, 0xdead, "still open?").await.expect("send");
        match next(&mut pinging).await {
            Frame::SendError(e) => assert_eq!(e.code(), ErrorCode::UnknownRecipient),
            other => panic!("the pinging session got {other:?}"),
        }
        pinging_opened.elapsed()
    });

    match silent.next_frame_timeout(IDLE + PROMPTLY).await {
        Ok(frame) => match frame.frame {
            Some(Frame::Closing(c)) => assert_eq!(c.reason(), CloseReason::IdleTimeout),
            other => panic!("expected Closing IDLE_TIMEOUT, got {other:?}"),
        },
        Err(err) => panic!("expected Closing IDLE_TIMEOUT, got {err:?}"),
    }
    let after = opened.elapsed();
    assert!(
        after >= IDLE,
        "the silent session was closed after {after:?}, before the {IDLE:?} idle timeout"
    );
    match silent.next_frame_timeout(PROMPTLY).await {
        Err(ClientError::Closed { code, .. }) => assert_eq!(code, close::IDLE_TIMEOUT),
        other => panic!("expected close 4003, got {other:?}"),
    }
    silent_closed_tx.send_replace(true);
    let lived = pinger
        .await
        .expect("the pinging session outlived the idle timeout");
    eprintln!("silent session closed after {after:?}; the pinging one still open after {lived:?}");
}
