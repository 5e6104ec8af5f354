//! Points of docs/protocol.md that a phone-app author relies on and that
//! no other test pins down:
//!
//! - the order in which upgrade refusals are checked (method, path, upgrade
//!   headers, version, then the credential);
//! - the server negotiates no WebSocket extension (compression) and no
//!   subprotocol, whatever the client offers;
//! - `INVALID_MESSAGE` is one definition: a required field unset
//!   (`client_msg_id`, `to_user`, an empty body) or a body over 63 KiB;
//! - credential failures use one vocabulary on both endpoints:
//!   `UNAUTHORIZED`, `TOKEN_INVALID`, `TOKEN_EXPIRED`, `TOKEN_REVOKED`.

mod common;

use std::sync::Arc;

use common::{TestServer, claims_of, fresh_session, jwt, next, unix_now};
use parley_proto::limits::MAX_BODY_BYTES;
use parley_proto::v1::ErrorCode;
use parley_proto::v1::server_frame::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends `head` to the gateway over TLS and returns the answer's head.
async fn upgrade(server: &TestServer, head: &str) -> String {
    let tcp = tokio::net::TcpStream::connect(server.gateway)
        .await
        .expect("connect");
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    let mut tls = tokio_rustls::TlsConnector::from(server.tls.clone())
        .connect(name, tcp)
        .await
        .expect("TLS");
    tls.write_all(head.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    let mut buf = [0u8; 2048];
    let read = async {
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(common::PROMPTLY, read)
        .await
        .expect("an answer");
    String::from_utf8_lossy(&answer).into_owned()
}

fn head(method: &str, path: &str, version: &str, upgrade: &str, extra: &str) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: {upgrade}\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: {version}\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    )
}

fn status(answer: &str) -> &str {
    answer.get(9..12).unwrap_or_default()
}

#[tokio::test]
async fn upgrade_refusals_come_in_the_documented_order_and_nothing_is_negotiated() {
    let server = TestServer::start();
    let token = server.register().await.token;
    let bearer = format!("Authorization: Bearer {token}\r\n");
    // Each row breaks everything from its column on; the first broken
    // check is the answer, whatever comes after it.
    for (head, want) in [
        (head("POST", "/nope", "8", "h2c", ""), "405"),
        (head("GET", "/nope", "8", "h2c", ""), "404"),
        (head("GET", "/v1/ws", "8", "h2c", ""), "400"),
        (head("GET", "/v1/ws", "8", "websocket", ""), "426"),
        (head("GET", "/v1/ws", "13", "websocket", ""), "401"),
        (
            head(
                "GET",
                "/v1/ws",
                "13",
                "websocket",
                "Authorization: Bearer x.y.z\r\n",
            ),
            "401",
        ),
    ] {
        let answer = upgrade(&server, &head).await;
        assert_eq!(status(&answer), want, "{head}\n->\n{answer}");
    }

    // Compression and a subprotocol offered: the upgrade succeeds and
    // neither is accepted, so frames are plain and unprefixed.
    let offer = format!(
        "{bearer}Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
         Sec-WebSocket-Protocol: parley.v1, chat\r\n"
    );
    let answer = upgrade(&server, &head("GET", "/v1/ws", "13", "websocket", &offer)).await;
    assert_eq!(status(&answer), "101", "{answer}");
    let lower = answer.to_ascii_lowercase();
    assert!(!lower.contains("sec-websocket-extensions"), "{answer}");
    assert!(!lower.contains("sec-websocket-protocol"), "{answer}");
}

#[tokio::test]
async fn invalid_message_is_a_required_field_unset_or_a_body_over_the_limit() {
    let server = TestServer::start();
    let (_, mut a) = fresh_session(&server).await;
    let (bob, _b) = fresh_session(&server).await;
    let over = vec![b'x'; MAX_BODY_BYTES + 1];
    for (client_msg_id, to_user, body) in [
        (0, bob.user_id, b"hi".to_vec()),
        (1, 0, b"hi".to_vec()),
        (2, bob.user_id, Vec::new()),
        (3, bob.user_id, over),
    ] {
        a.send(client_msg_id, to_user, body).await.expect("send");
        match next(&mut a).await {
            Frame::SendError(e) => {
                assert_eq!(e.code(), ErrorCode::InvalidMessage, "{e:?}");
                assert_eq!(e.client_msg_id, client_msg_id);
            }
            other => panic!("expected INVALID_MESSAGE for {client_msg_id}, got {other:?}"),
        }
    }
    // One byte and exactly the limit are fine; the session went on.
    for (client_msg_id, len) in [(4, 1), (5, MAX_BODY_BYTES)] {
        a.send(client_msg_id, bob.user_id, vec![b'y'; len])
            .await
            .expect("send");
        assert!(matches!(next(&mut a).await, Frame::Ack(_)));
    }
}

/// The documented code of a refused lookup.
async fn lookup_code(server: &TestServer, token: Option<&str>) -> (u16, String) {
    let client = reqwest_client(server);
    let mut request = client
        .post(format!("{}/v1/contacts/lookup", server.http_url()))
        .json(&serde_json::json!({"phones": ["+15550000000"]}));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("an answer");
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.expect("json");
    (
        status,
        body["error"]["code"].as_str().unwrap_or("").to_owned(),
    )
}

fn reqwest_client(server: &TestServer) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_backend_preconfigured(Arc::unwrap_or_clone(server.tls.clone()))
        .build()
        .expect("client")
}

/// The code in the body of a refused upgrade.
async fn upgrade_code(server: &TestServer, token: Option<&str>) -> (u16, String) {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let answer = upgrade(server, &head("GET", "/v1/ws", "13", "websocket", &auth)).await;
    let status: u16 = status(&answer).parse().expect("a status");
    let code = answer
        .split("\"code\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or("")
        .to_owned();
    (status, code)
}

#[tokio::test]
async fn credential_failures_have_one_vocabulary_on_both_endpoints() {
    use ring::signature::Ed25519KeyPair;
    // A second code for the number at once, instead of after a minute.
    let server = TestServer::start_with(&["--code-interval", "1"]);
    let phone = server.phone();
    let first = server.register_phone(&phone).await;
    // Re-registering the number revokes the first device.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let second = server.register_phone(&phone).await;
    let pem = std::fs::read(server.data_dir.path().join("keys/jwt-ed25519.pem")).expect("key");
    let key =
        Ed25519KeyPair::from_pkcs8(&pem::parse(pem).expect("pem").into_contents()).expect("pkcs8");
    let mut expired = claims_of(&second.token);
    expired["iat"] = (unix_now() - 7200).into();
    expired["exp"] = (unix_now() - 3600).into();
    let expired = jwt(
        &serde_json::json!({"alg": "EdDSA", "typ": "JWT"}),
        &expired,
        |m| key.sign(m).as_ref().to_vec(),
    );

    for (token, code) in [
        (None, "UNAUTHORIZED"),
        (Some("not.a.token"), "TOKEN_INVALID"),
        (Some(expired.as_str()), "TOKEN_EXPIRED"),
        (Some(first.token.as_str()), "TOKEN_REVOKED"),
    ] {
        assert_eq!(
            upgrade_code(&server, token).await,
            (401, code.to_owned()),
            "gateway"
        );
        assert_eq!(
            lookup_code(&server, token).await,
            (401, code.to_owned()),
            "HTTPS API"
        );
    }
    let (status, _) = lookup_code(&server, Some(&second.token)).await;
    assert_eq!(status, 200);
}
