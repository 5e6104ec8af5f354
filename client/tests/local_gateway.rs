//! `Session` against a tiny in-test gateway: real TCP, real TLS (a
//! self-signed rcgen certificate), real WebSocket, the Parley frames.
//!
//! The stand-in gateway checks the bearer token (401 with the real
//! gateway's JSON error body before the upgrade if wrong), answers a `Send`
//! with a `ServerAck`, counts pings, and, like the real one, displaces an
//! older session of the same device when a new one connects: a
//! `Closing{DISPLACED}` frame, then close code 4001. A session of
//! [`LISTENER_TOKEN`] first gets a backlog (a message, a receipt,
//! `QueueEmpty`), and the gateway logs the acks it receives, so the CLI's
//! `listen` can be checked too. A session of [`EARLY_RECEIPT_TOKEN`] gets
//! read receipts for a sent message *before* its ack, as happens after a
//! lost ack, one of them forged by another user.
//!
//! Several devices per user: a session of [`DEVICES_TOKEN`] (user 3, device
//! 30) finds a backlog with a copy of its account's own message sent from
//! its laptop (device 31), receipts from two devices of the recipient and
//! one from its own laptop, a forged one, and a read-sync. A session of
//! [`MULTI_TOKEN`] gets, after the ack of its send, a copy of another
//! message with its receipt, an own-device receipt, then the recipient's
//! second device's. A session of [`ENVELOPE_TOKEN`] (user 3, device 30)
//! has its envelopes checked against the devices the stand-in knows
//! (user 42: 420 and 421; user 3: 30 and 31), `DEVICES_CHANGED` when they
//! differ. A session of [`UNLINKED_TOKEN`] is told at once that its device
//! was unlinked (`Closing{UNLINKED}`, close code 4005).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use parley_client::proto::v1::{
    ClientFrame, CloseReason, Closing, Deliver, DeviceAddress, ErrorCode, QueueEmpty, ReadSync,
    Receipt, ReceiptKind, SendError, ServerAck, ServerFrame, client_frame, server_frame,
};
use parley_client::tungstenite::Message;
use parley_client::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use parley_client::tungstenite::protocol::CloseFrame;
use parley_client::{ClientError, ConnectOptions, CredentialRefusal, Session, tls_config_from_pem};
use prost::Message as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;

const TOKEN: &str = "good-token";
/// A second valid token whose sessions start with a backlog.
const LISTENER_TOKEN: &str = "listener-token";
/// A valid token whose sends get their read receipts before their ack.
const EARLY_RECEIPT_TOKEN: &str = "early-receipt-token";
/// A token the stand-in refuses as revoked.
const REVOKED_TOKEN: &str = "revoked-token";
/// User 3's device 30, whose account has a laptop (31): a backlog of copies,
/// receipts from several devices and a read-sync.
const DEVICES_TOKEN: &str = "devices-token";
/// A valid token whose sends are followed by receipts from several devices.
const MULTI_TOKEN: &str = "multi-token";
/// User 3's device 30, whose envelopes are checked against the devices.
const ENVELOPE_TOKEN: &str = "envelope-token";
/// A device that is unlinked as soon as it connects.
const UNLINKED_TOKEN: &str = "unlinked-token";
/// The account of the devices tokens, its device, and its laptop.
const OWN: u64 = 3;
const OWN_DEVICE: u64 = 30;
const OWN_LAPTOP: u64 = 31;
/// The recipient in the devices scenarios, and its two devices.
const PEER: u64 = 42;
const PEER_DEVICES: [u64; 2] = [420, 421];
/// The user who forges a read receipt for someone else's message.
const MALLORY: u64 = 99;
/// How long a test waits for something that should happen at once (a
/// frame, a CLI run to its end). Generous: on a loaded machine "at once" can
/// take seconds, and the bound is only there so that a broken client fails
/// instead of hanging. Tests wait for behaviour, never for a time.
const WAIT: Duration = Duration::from_secs(30);

struct Gateway {
    url: String,
    ca_pem: String,
    pings: Arc<AtomicUsize>,
    /// Acks and read receipts received, as `delivery_ack [ids]`,
    /// `mark_read <user> [ids]`, `receipt_ack [ids]`.
    log: Arc<Mutex<Vec<String>>>,
}

fn frame(frame: server_frame::Frame) -> Message {
    Message::Binary(ServerFrame { frame: Some(frame) }.encode_to_vec().into())
}

/// Which scenario a session plays, from its token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Plain,
    Listener,
    EarlyReceipts,
    Devices,
    Multi,
    Envelopes,
    Unlinked,
}

/// What a `DEVICES_TOKEN` session finds queued.
fn devices_backlog() -> Vec<Message> {
    let receipt = |receipt_id, kind: ReceiptKind, from_user, from_device| {
        frame(server_frame::Frame::Receipt(Receipt {
            receipt_id,
            kind: kind as i32,
            from_user,
            message_ids: vec![300],
            timestamp_ms: 2,
            from_device,
        }))
    };
    vec![
        // The laptop sent message 300 to the peer: this device's copy.
        frame(server_frame::Frame::Deliver(Deliver {
            message_id: 300,
            from_user: OWN,
            timestamp_ms: 1,
            body: bytes::Bytes::from_static(b"sent from my laptop"),
            from_device: OWN_LAPTOP,
            to_user: PEER,
        })),
        frame(server_frame::Frame::Deliver(Deliver {
            message_id: 301,
            from_user: 9,
            timestamp_ms: 1,
            body: bytes::Bytes::from_static(b"hello all"),
            from_device: 90,
            to_user: OWN,
        })),
        receipt(70, ReceiptKind::Delivered, PEER, PEER_DEVICES[0]),
        receipt(71, ReceiptKind::Delivered, PEER, PEER_DEVICES[1]),
        receipt(72, ReceiptKind::Read, PEER, PEER_DEVICES[1]),
        // The laptop stored its own message: not the peer's checkmark.
        receipt(73, ReceiptKind::Delivered, OWN, OWN_LAPTOP),
        // User 9 was not sent message 300.
        receipt(74, ReceiptKind::Read, 9, 90),
        frame(server_frame::Frame::ReadSync(ReadSync {
            sync_id: 75,
            peer_user: 9,
            message_ids: vec![301],
            by_device: OWN_LAPTOP,
            timestamp_ms: 3,
        })),
        frame(server_frame::Frame::QueueEmpty(QueueEmpty {})),
    ]
}

/// What a `LISTENER_TOKEN` session finds queued.
fn backlog() -> Vec<Message> {
    vec![
        frame(server_frame::Frame::Deliver(Deliver {
            message_id: 77,
            from_user: 9,
            timestamp_ms: 1,
            body: bytes::Bytes::from_static(b"hi\nthere"),
            ..Deliver::default()
        })),
        frame(server_frame::Frame::Receipt(Receipt {
            receipt_id: 5,
            kind: ReceiptKind::Delivered as i32,
            from_user: 9,
            message_ids: vec![1005],
            timestamp_ms: 2,
            ..Receipt::default()
        })),
        frame(server_frame::Frame::QueueEmpty(QueueEmpty {})),
    ]
}

/// Starts the stand-in gateway on 127.0.0.1:0.
async fn start_gateway() -> Gateway {
    let key = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("certificate");
    let cert_der: CertificateDer<'static> = key.cert.der().clone();
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.signing_key.serialize_der()));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_no_client_auth()
    .with_single_cert(vec![cert_der], key_der)
    .expect("server config");
    let acceptor = TlsAcceptor::from(Arc::new(config));

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let state = State {
        pings: Arc::new(AtomicUsize::new(0)),
        log: Arc::new(Mutex::new(Vec::new())),
        current: Arc::new(Mutex::new(None)),
    };
    let gateway = Gateway {
        url: format!("wss://127.0.0.1:{}/v1/ws", addr.port()),
        ca_pem: key.cert.pem(),
        pings: state.pings.clone(),
        log: state.log.clone(),
    };
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let state = state.clone();
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    serve(tls, state).await;
                }
            });
        }
    });
    gateway
}

/// What the connections of one stand-in gateway share.
#[derive(Clone)]
struct State {
    pings: Arc<AtomicUsize>,
    log: Arc<Mutex<Vec<String>>>,
    /// The live session's "you are displaced" trigger, as the real gateway's
    /// presence table would hold it.
    current: Arc<Mutex<Option<oneshot::Sender<()>>>>,
}

async fn serve(tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>, state: State) {
    let kind = Arc::new(Mutex::new(Kind::Plain));
    let session_kind = kind.clone();
    // The error type is tungstenite's `Callback` contract, not ours to shrink.
    #[allow(clippy::result_large_err)]
    let check_token = move |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        let auth = req.headers().get("authorization").map(|v| v.as_bytes());
        let bearer = |token: &str| auth == Some(format!("Bearer {token}").as_bytes());
        let known = [
            (TOKEN, Kind::Plain),
            (LISTENER_TOKEN, Kind::Listener),
            (EARLY_RECEIPT_TOKEN, Kind::EarlyReceipts),
            (DEVICES_TOKEN, Kind::Devices),
            (MULTI_TOKEN, Kind::Multi),
            (ENVELOPE_TOKEN, Kind::Envelopes),
            (UNLINKED_TOKEN, Kind::Unlinked),
        ];
        if let Some((_, found)) = known.iter().find(|(token, _)| bearer(token)) {
            *session_kind.lock().expect("kind lock") = *found;
            return Ok(resp);
        }
        // The real gateway's refusal: 401 and a JSON body with the code.
        let code = if bearer(REVOKED_TOKEN) {
            "TOKEN_REVOKED"
        } else {
            "TOKEN_INVALID"
        };
        Err(http::Response::builder()
            .status(401)
            .body(Some(format!(
                r#"{{"error":{{"code":"{code}","message":"refused"}}}}"#
            )))
            .expect("response"))
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tls, check_token).await else {
        return;
    };
    let (displace_tx, mut displaced) = oneshot::channel();
    if let Some(previous) = state
        .current
        .lock()
        .expect("current lock")
        .replace(displace_tx)
    {
        let _ = previous.send(());
    }
    let kind = *kind.lock().expect("kind lock");
    let backlog = match kind {
        Kind::Listener => backlog(),
        Kind::Devices => devices_backlog(),
        Kind::Unlinked => {
            unlink(ws).await;
            return;
        }
        _ => Vec::new(),
    };
    for msg in backlog {
        let _ = ws.send(msg).await;
    }
    loop {
        let msg = tokio::select! {
            _ = &mut displaced => {
                displace(ws).await;
                return;
            }
            msg = ws.next() => msg,
        };
        match msg {
            Some(Ok(Message::Binary(bytes))) => {
                let Ok(client) = ClientFrame::decode(bytes) else {
                    return;
                };
                for reply in answer(client, &state, kind) {
                    let _ = ws.send(reply).await;
                }
            }
            Some(Ok(Message::Ping(_))) => {
                state.pings.fetch_add(1, Ordering::SeqCst);
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return,
        }
    }
}

/// Logs acks and read receipts; answers a `Send` with a ping (which the
/// client must skip) and a `ServerAck` with `message_id = 1000 + client_msg_id`.
/// For [`Kind::EarlyReceipts`], two READ receipts for that message come
/// before the ack: one forged by [`MALLORY`], then the recipient's. For
/// [`Kind::Multi`], after the ack: a copy of message 500 (sent by the
/// account's laptop to the recipient) and its DELIVERED receipt from the
/// recipient's first device, a DELIVERED receipt for the new message from
/// the account's own laptop (which is not the recipient), then one from
/// the recipient's second device. For [`Kind::Envelopes`], a send with
/// envelopes is logged (`envelopes [(user, device, body)]`) and refused
/// with `DEVICES_CHANGED` unless they name exactly the peer's and the
/// account's other devices.
fn answer(client: ClientFrame, state: &State, kind: Kind) -> Vec<Message> {
    let entry = match client.frame {
        Some(client_frame::Frame::Send(send)) => {
            let message_id = 1000 + send.client_msg_id;
            let receipt =
                |receipt_id: u64, kind: ReceiptKind, from_user: u64, from_device: u64, id: u64| {
                    frame(server_frame::Frame::Receipt(Receipt {
                        receipt_id,
                        kind: kind as i32,
                        from_user,
                        message_ids: vec![id],
                        timestamp_ms: 3,
                        from_device,
                    }))
                };
            let ack = frame(server_frame::Frame::Ack(ServerAck {
                client_msg_id: send.client_msg_id,
                message_id,
                timestamp_ms: 1_700_000_000_000,
            }));
            let mut replies = vec![Message::Ping("x".into())];
            match kind {
                Kind::EarlyReceipts => {
                    replies.push(receipt(61, ReceiptKind::Read, MALLORY, 0, message_id));
                    replies.push(receipt(62, ReceiptKind::Read, send.to_user, 0, message_id));
                    replies.push(ack);
                }
                Kind::Multi => {
                    replies.push(ack);
                    replies.push(frame(server_frame::Frame::Deliver(Deliver {
                        message_id: 500,
                        from_user: OWN,
                        timestamp_ms: 1,
                        body: bytes::Bytes::from_static(b"from the laptop"),
                        from_device: OWN_LAPTOP,
                        to_user: send.to_user,
                    })));
                    replies.push(receipt(
                        81,
                        ReceiptKind::Delivered,
                        send.to_user,
                        PEER_DEVICES[0],
                        500,
                    ));
                    replies.push(receipt(
                        82,
                        ReceiptKind::Delivered,
                        OWN,
                        OWN_LAPTOP,
                        message_id,
                    ));
                    replies.push(receipt(
                        83,
                        ReceiptKind::Delivered,
                        send.to_user,
                        PEER_DEVICES[1],
                        message_id,
                    ));
                }
                Kind::Envelopes if !send.envelopes.is_empty() => {
                    let given: Vec<(u64, u64, String)> = send
                        .envelopes
                        .iter()
                        .map(|e| {
                            (
                                e.user_id,
                                e.device_id,
                                String::from_utf8_lossy(&e.body).into_owned(),
                            )
                        })
                        .collect();
                    state
                        .log
                        .lock()
                        .expect("log lock")
                        .push(format!("envelopes {given:?}"));
                    let given: BTreeSet<(u64, u64)> = send
                        .envelopes
                        .iter()
                        .map(|e| (e.user_id, e.device_id))
                        .collect();
                    let wanted: BTreeSet<(u64, u64)> = PEER_DEVICES
                        .iter()
                        .map(|&d| (PEER, d))
                        .chain([(OWN, OWN_LAPTOP)])
                        .collect();
                    let address =
                        |&(user_id, device_id): &(u64, u64)| DeviceAddress { user_id, device_id };
                    if given == wanted {
                        replies.push(ack);
                    } else {
                        replies.push(frame(server_frame::Frame::SendError(SendError {
                            client_msg_id: send.client_msg_id,
                            code: ErrorCode::DevicesChanged as i32,
                            reason: "the devices changed".into(),
                            retry_after_ms: 0,
                            missing_devices: wanted.difference(&given).map(address).collect(),
                            extra_devices: given.difference(&wanted).map(address).collect(),
                        })));
                    }
                }
                _ => replies.push(ack),
            }
            return replies;
        }
        Some(client_frame::Frame::DeliveryAck(a)) => format!("delivery_ack {:?}", a.message_ids),
        Some(client_frame::Frame::MarkRead(r)) => {
            format!("mark_read {} {:?}", r.to_user, r.message_ids)
        }
        Some(client_frame::Frame::ReceiptAck(a)) => format!("receipt_ack {:?}", a.receipt_ids),
        Some(client_frame::Frame::SetPushToken(p)) => format!("set_push_token {}", p.request_id),
        None => return Vec::new(),
    };
    state.log.lock().expect("log lock").push(entry);
    Vec::new()
}

/// What the real gateway does to a device removed from its account:
/// `Closing{UNLINKED}`, then close code 4005.
async fn unlink<S>(mut ws: tokio_tungstenite::WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let _ = ws
        .send(frame(server_frame::Frame::Closing(Closing {
            reason: CloseReason::Unlinked as i32,
            detail: "this device was unlinked".into(),
        })))
        .await;
    let _ = ws
        .close(Some(CloseFrame {
            code: parley_client::proto::close::UNLINKED.into(),
            reason: "unlinked".into(),
        }))
        .await;
    while let Some(Ok(_)) = ws.next().await {}
}

/// What the real gateway does to a replaced session: `Closing{DISPLACED}`,
/// then close code 4001.
async fn displace<S>(mut ws: tokio_tungstenite::WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let _ = ws
        .send(frame(server_frame::Frame::Closing(Closing {
            reason: CloseReason::Displaced as i32,
            detail: "another session of this device connected".into(),
        })))
        .await;
    let _ = ws
        .close(Some(CloseFrame {
            code: parley_client::proto::close::DISPLACED.into(),
            reason: "displaced".into(),
        }))
        .await;
    // Let the client's close answer arrive.
    while let Some(Ok(_)) = ws.next().await {}
}

#[tokio::test]
async fn wrong_token_is_rejected_before_the_upgrade() {
    let gw = start_gateway().await;
    let tls = tls_config_from_pem(gw.ca_pem.as_bytes()).expect("tls");
    let err = Session::connect(&gw.url, tls.clone(), "wrong-token")
        .await
        .expect_err("must be refused");
    assert!(
        matches!(&err, ClientError::Rejected { status: 401, code: Some(code) } if code == "TOKEN_INVALID"),
        "{err:?}"
    );
    let err = Session::connect(&gw.url, tls, REVOKED_TOKEN)
        .await
        .expect_err("must be refused");
    assert_eq!(
        err.credential_refusal(),
        Some(CredentialRefusal::Revoked),
        "{err:?}"
    );
}

#[tokio::test]
async fn nothing_listening_is_unreachable() {
    let gw = start_gateway().await;
    let tls = tls_config_from_pem(gw.ca_pem.as_bytes()).expect("tls");
    // A port that was just free: nothing listens there.
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        probe.local_addr().expect("addr").port()
    };
    let url = format!("wss://127.0.0.1:{port}/v1/ws");
    let err = Session::connect(&url, tls, TOKEN)
        .await
        .expect_err("nothing listens");
    assert!(
        matches!(&err, ClientError::Unreachable { url: u, reason } if *u == url && reason == "connection refused"),
        "{err:?}"
    );
}

#[tokio::test]
async fn untrusted_certificate_is_a_tls_error() {
    let gw = start_gateway().await;
    let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).expect("cert");
    let tls = tls_config_from_pem(other.cert.pem().as_bytes()).expect("tls");
    let err = Session::connect(&gw.url, tls, TOKEN)
        .await
        .expect_err("server cert is not trusted");
    // rcgen gives both certificates the same subject, so rustls finds the
    // trusted one as the issuer and then the signature does not verify.
    assert!(
        matches!(
            &err,
            ClientError::TlsHandshake { url, error: rustls::Error::InvalidCertificate(_) } if *url == gw.url
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn send_gets_a_server_ack() {
    let gw = start_gateway().await;
    let tls = tls_config_from_pem(gw.ca_pem.as_bytes()).expect("tls");
    let mut session = Session::connect(&gw.url, tls, TOKEN)
        .await
        .expect("connect");
    session.send(7, 42, "hello").await.expect("send");
    let frame = session.next_frame_timeout(WAIT).await.expect("a frame");
    match frame.frame {
        Some(server_frame::Frame::Ack(ack)) => {
            assert_eq!(ack.client_msg_id, 7);
            assert_eq!(ack.message_id, 1007);
            assert_eq!(ack.timestamp_ms, 1_700_000_000_000);
        }
        other => panic!("expected a ServerAck, got {other:?}"),
    }
    // Nothing else is queued: the deadline runs out and the session survives.
    let err = session
        .next_frame_timeout(Duration::from_millis(100))
        .await
        .expect_err("nothing more");
    assert!(matches!(err, ClientError::Timeout), "{err:?}");
    session.send(8, 42, "again").await.expect("still usable");
    assert!(matches!(
        session.next_frame_timeout(WAIT).await.expect("ack").frame,
        Some(server_frame::Frame::Ack(ServerAck {
            client_msg_id: 8,
            ..
        }))
    ));
    session.close().await.expect("clean close");
}

#[tokio::test]
async fn displaced_session_sees_closing_then_close_code() {
    let gw = start_gateway().await;
    let tls = tls_config_from_pem(gw.ca_pem.as_bytes()).expect("tls");
    let mut old = Session::connect(&gw.url, tls.clone(), TOKEN)
        .await
        .expect("connect");
    // Make sure the gateway has registered the first session before the
    // second one displaces it.
    old.send(1, 42, "hi").await.expect("send");
    old.next_frame_timeout(WAIT).await.expect("ack");

    let new = Session::connect(&gw.url, tls, TOKEN)
        .await
        .expect("second connect");

    let frame = old.next_frame_timeout(WAIT).await.expect("Closing frame");
    match frame.frame {
        Some(server_frame::Frame::Closing(c)) => {
            assert_eq!(c.reason, CloseReason::Displaced as i32);
        }
        other => panic!("expected Closing, got {other:?}"),
    }
    let err = old.next_frame_timeout(WAIT).await.expect_err("closed");
    assert!(
        matches!(&err, ClientError::Closed { code: 4001, reason } if reason == "displaced"),
        "{err:?}"
    );
    // The close is sticky: later calls report it too, sends included.
    let err = old
        .next_frame_timeout(WAIT)
        .await
        .expect_err("still closed");
    assert!(
        matches!(err, ClientError::Closed { code: 4001, .. }),
        "{err:?}"
    );
    let err = old.send(2, 42, "late").await.expect_err("send after close");
    assert!(
        matches!(err, ClientError::Closed { code: 4001, .. }),
        "{err:?}"
    );

    new.close().await.expect("clean close");
}

#[tokio::test]
async fn keepalive_pings_while_waiting() {
    let gw = start_gateway().await;
    let tls = tls_config_from_pem(gw.ca_pem.as_bytes()).expect("tls");
    let options = ConnectOptions {
        keepalive: Some(Duration::from_millis(50)),
        ..ConnectOptions::default()
    };
    let mut session = Session::connect_with(&gw.url, tls, TOKEN, options)
        .await
        .expect("connect");
    // Wait (a while at a time, as an app waiting for messages does) until
    // the gateway has seen several pings: how many fit in a given time
    // depends on the machine, that they come while waiting does not.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut id = 0;
    let pings = loop {
        let err = session
            .next_frame_timeout(Duration::from_millis(200))
            .await
            .expect_err("no frames");
        assert!(matches!(err, ClientError::Timeout), "{err:?}");
        // Round-trip a Send so every ping sent before it has been read.
        id += 1;
        session.send(id, 42, "x").await.expect("send");
        session.next_frame_timeout(WAIT).await.expect("ack");
        let pings = gw.pings.load(Ordering::SeqCst);
        if pings >= 3 {
            break pings;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected several keepalive pings while waiting, got {pings} in {WAIT:?}"
        );
    };
    eprintln!("{pings} keepalive pings after {id} waits");
    session.drop_abruptly();
}

/// The CLI end to end against the stand-in: `send` prints the server's ack
/// in its documented format and advances the persisted id counter; a refused
/// token is one stderr line telling the user to register again.
#[tokio::test]
async fn cli_send_prints_the_ack_and_persists_the_counter() {
    use parley_client::profile::{Profile, ProfileDir};

    let gw = start_gateway().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let ca = tmp.path().join("cert.pem");
    std::fs::write(&ca, &gw.ca_pem).expect("write CA");
    let dir = ProfileDir::new(tmp.path().join("profile"));
    let profile = Profile {
        http: "https://127.0.0.1:1".into(),
        ws: gw.url.clone(),
        ca,
        phone: "+15550000001".into(),
        user_id: 1,
        device_id: 1,
        token: TOKEN.into(),
        linked: false,
        next_client_msg_id: 5,
    };
    dir.save(&profile).expect("save profile");

    let cli = |args: &[&str]| {
        let mut command = cli_command(tmp.path());
        command.arg("--profile-dir").arg(dir.path()).args(args);
        command
    };

    let out = tokio::time::timeout(WAIT, cli(&["send", "42", "hello"]).output())
        .await
        .expect("cli finished")
        .expect("cli ran");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stderr: {stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "✓ sent 1005\n");
    assert_eq!(dir.load().expect("load").next_client_msg_id, 6);

    dir.save(&Profile {
        token: "revoked-token".into(),
        linked: false,
        next_client_msg_id: 6,
        ..profile
    })
    .expect("save profile");
    let out = tokio::time::timeout(WAIT, cli(&["send", "42", "hello"]).output())
        .await
        .expect("cli finished")
        .expect("cli ran");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(out.stdout.is_empty());
    assert!(
        stderr.contains("revoked")
            && stderr.contains(&format!(
                "`parley-cli --profile-dir {} register +15550000001`",
                dir.path().display()
            )),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
}

/// `parley-cli` with an environment of its own: `HOME` and
/// `XDG_CONFIG_HOME` in `home` (so no test touches the real home), no
/// endpoint variables, and backtraces on, so that a panic would show.
fn cli_command(home: &std::path::Path) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_parley-cli"));
    command
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("RUST_BACKTRACE", "1")
        .env_remove("RUST_LOG")
        .env_remove("PARLEY_HTTP")
        .env_remove("PARLEY_WS")
        .env_remove("PARLEY_CA")
        .env_remove("PARLEY_PROFILE")
        .env_remove("PARLEY_PROFILE_DIR")
        .current_dir(home)
        .kill_on_drop(true);
    command
}

/// `send --wait read` when the read receipts come before the ack (as after
/// a lost ack): the CLI holds them until the ack names the message, then
/// believes the recipient's and ignores the one forged by another user. It
/// acknowledges both, so neither comes back.
#[tokio::test]
async fn cli_send_wait_survives_receipts_before_the_ack() {
    use parley_client::profile::{Profile, ProfileDir};

    let gw = start_gateway().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let ca = tmp.path().join("cert.pem");
    std::fs::write(&ca, &gw.ca_pem).expect("write CA");
    let dir = ProfileDir::new(tmp.path().join("profile"));
    dir.save(&Profile {
        http: "https://127.0.0.1:1".into(),
        ws: gw.url.clone(),
        ca,
        phone: "+15550000003".into(),
        user_id: 3,
        device_id: 1,
        token: EARLY_RECEIPT_TOKEN.into(),
        linked: false,
        next_client_msg_id: 5,
    })
    .expect("save profile");

    let mut command = cli_command(tmp.path());
    command.arg("--profile-dir").arg(dir.path()).args([
        "send",
        "42",
        "hello",
        "--wait",
        "read",
        "--timeout",
        "10",
    ]);
    let out = tokio::time::timeout(WAIT * 3, command.output())
        .await
        .expect("cli finished")
        .expect("cli ran");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stderr: {stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "✓ sent 1005\n✓✓ read 1005 by 42\n"
    );
    assert!(
        stderr.contains("ignoring a read receipt") && stderr.contains(&MALLORY.to_string()),
        "the forged receipt is warned about: {stderr}"
    );
    // The recipient of the message is on record for later runs.
    let sent = dir.load_sent().expect("sent.json");
    assert_eq!(sent.recipient(1005), Some(42));

    // The CLI closes after its last ack; wait for the stand-in to log both.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let log = gw.log.lock().expect("log lock").clone();
        if log.contains(&"receipt_ack [61]".to_string())
            && log.contains(&"receipt_ack [62]".to_string())
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "receipts not acked: {log:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `listen` shows the backlog in its documented format, acks everything,
/// marks read with `--read`, exits on `QueueEmpty`, and on the next run does
/// not show the redelivered message again but still acks it.
#[tokio::test]
async fn cli_listen_shows_acks_and_deduplicates() {
    use parley_client::profile::{Profile, ProfileDir};

    let gw = start_gateway().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let ca = tmp.path().join("cert.pem");
    std::fs::write(&ca, &gw.ca_pem).expect("write CA");
    let dir = ProfileDir::new(tmp.path().join("profile"));
    dir.save(&Profile {
        http: "https://127.0.0.1:1".into(),
        ws: gw.url.clone(),
        ca,
        phone: "+15550000002".into(),
        user_id: 2,
        device_id: 1,
        token: LISTENER_TOKEN.into(),
        linked: false,
        next_client_msg_id: 1,
    })
    .expect("save profile");
    let listen = |extra: &[&str]| {
        let mut command = cli_command(tmp.path());
        command
            .arg("--profile-dir")
            .arg(dir.path())
            // The CLI's own bound: far longer than a loaded machine needs
            // to deliver the backlog, shorter than the test's.
            .args(["listen", "--exit-on-empty", "--timeout", "60"])
            .args(extra);
        command
    };

    let out = tokio::time::timeout(WAIT * 3, listen(&["--read"]).output())
        .await
        .expect("cli finished")
        .expect("cli ran");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stderr: {stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "9 77 hi\\nthere\n✓✓ delivered 1005 by 9\n"
    );

    let out = tokio::time::timeout(WAIT * 3, listen(&[]).output())
        .await
        .expect("cli finished")
        .expect("cli ran");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stderr: {stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "",
        "redelivery shown again"
    );

    // The CLI closes after its last ack; the gateway may still be logging
    // it, so wait (boundedly) for the five entries rather than a while.
    let expected = [
        "delivery_ack [77]",
        "mark_read 9 [77]",
        "receipt_ack [5]",
        "delivery_ack [77]",
        "receipt_ack [5]",
    ];
    let deadline = tokio::time::Instant::now() + WAIT;
    let log = loop {
        let log = gw.log.lock().expect("log lock").clone();
        if log.len() >= expected.len() || tokio::time::Instant::now() >= deadline {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(log, expected);
}

/// A profile in `tmp` for a session of `token` on the stand-in, as user
/// `user_id`'s device `device_id`.
fn profile_for(
    gw: &Gateway,
    tmp: &std::path::Path,
    token: &str,
    user_id: u64,
    device_id: u64,
    linked: bool,
) -> parley_client::profile::ProfileDir {
    use parley_client::profile::{Profile, ProfileDir};
    let ca = tmp.join("cert.pem");
    std::fs::write(&ca, &gw.ca_pem).expect("write CA");
    let dir = ProfileDir::new(tmp.join("profile"));
    dir.save(&Profile {
        // Nothing listens there: a test fails loudly if the CLI uses HTTPS.
        http: "https://127.0.0.1:1".into(),
        ws: gw.url.clone(),
        ca,
        phone: if linked {
            String::new()
        } else {
            "+15550000003".into()
        },
        user_id,
        device_id,
        token: token.into(),
        linked,
        next_client_msg_id: 5,
    })
    .expect("save profile");
    dir
}

/// Runs the CLI on `dir` with `args`, bounded.
async fn run_cli(
    tmp: &std::path::Path,
    dir: &parley_client::profile::ProfileDir,
    args: &[&str],
) -> std::process::Output {
    let mut command = cli_command(tmp);
    command.arg("--profile-dir").arg(dir.path()).args(args);
    tokio::time::timeout(WAIT * 3, command.output())
        .await
        .expect("cli finished")
        .expect("cli ran")
}

/// The stand-in's log once it holds at least `n` entries (the CLI closes
/// after its last ack, which the stand-in may still be logging), or as it
/// is when a generous deadline passes.
async fn log_of(gw: &Gateway, n: usize) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let log = gw.log.lock().expect("log lock").clone();
        if log.len() >= n || tokio::time::Instant::now() >= deadline {
            return log;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `listen` with several devices: the copy of a message this account sent
/// from its laptop is shown as one (`→ <to_user>`), recorded so that its
/// receipts are believed from the recipient's devices (each named), and not
/// marked read; the laptop's own receipt is dropped quietly, the forged one
/// with a warning; the read-sync is shown; everything is acknowledged.
#[tokio::test]
async fn cli_listen_shows_copies_device_receipts_and_read_syncs() {
    let gw = start_gateway().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = profile_for(&gw, tmp.path(), DEVICES_TOKEN, OWN, OWN_DEVICE, false);
    let out = run_cli(
        tmp.path(),
        &dir,
        &["listen", "--read", "--exit-on-empty", "--timeout", "10"],
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stderr: {stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "3/31 → 42 300 sent from my laptop\n\
         9/90 301 hello all\n\
         ✓✓ delivered 300 by 42/420\n\
         ✓✓ delivered 300 by 42/421\n\
         ✓✓ read 300 by 42/421\n\
         read-sync 301 from 9 on 3/31\n"
    );
    assert!(
        stderr.contains("ignoring a read receipt") && stderr.contains("from_user=9"),
        "the forged receipt is warned about: {stderr}"
    );
    assert!(
        !stderr.contains("from_user=3"),
        "the own laptop's receipt is not a forgery: {stderr}"
    );
    assert_eq!(
        dir.load_sent().expect("sent.json").recipient(300),
        Some(PEER)
    );
    let expected = [
        "delivery_ack [300]",
        "delivery_ack [301]",
        "mark_read 9 [301]",
        "receipt_ack [70]",
        "receipt_ack [71]",
        "receipt_ack [72]",
        "receipt_ack [73]",
        "receipt_ack [74]",
        "receipt_ack [75]",
    ];
    assert_eq!(log_of(&gw, expected.len()).await, expected);

    // The next session gets the same backlog (the stand-in does not
    // forget): nothing is shown twice, everything is acked again.
    let out = run_cli(
        tmp.path(),
        &dir,
        &["listen", "--exit-on-empty", "--timeout", "10"],
    )
    .await;
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
}

/// `send --wait delivered` ends on the first receipt from one of the
/// recipient's devices, not on one from this account's own laptop; a copy
/// arriving meanwhile makes its own receipt believable (shown), and is left
/// for `listen` (not acked).
#[tokio::test]
async fn cli_send_wait_ends_on_a_recipient_device_only() {
    let gw = start_gateway().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = profile_for(&gw, tmp.path(), MULTI_TOKEN, OWN, OWN_DEVICE, false);
    let out = run_cli(
        tmp.path(),
        &dir,
        &[
            "send",
            "42",
            "hello",
            "--wait",
            "delivered",
            "--timeout",
            "10",
        ],
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stderr: {stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "✓ sent 1005\n✓✓ delivered 500 by 42/420\n✓✓ delivered 1005 by 42/421\n"
    );
    assert!(!stderr.contains("ignoring"), "{stderr}");
    let log = log_of(&gw, 3).await;
    assert_eq!(
        log,
        ["receipt_ack [81]", "receipt_ack [82]", "receipt_ack [83]"],
        "the copy is left for listen"
    );
}

/// `send --per-device` from a stale list of devices: the server's
/// `DEVICES_CHANGED` names what is missing and extra, the CLI fixes the
/// list, says so, sends again with the same `client_msg_id`, and keeps the
/// fixed list, so the next send is right the first time.
#[tokio::test]
async fn cli_send_per_device_fixes_a_stale_list() {
    let gw = start_gateway().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = profile_for(&gw, tmp.path(), ENVELOPE_TOKEN, OWN, OWN_DEVICE, false);
    // What this profile believes: the peer's second device is unknown and a
    // removed one is still listed; the account's laptop is unknown.
    dir.update_known_devices(|known| {
        known.set(PEER, vec![420, 429]);
        known.set(OWN, vec![OWN_DEVICE]);
    })
    .expect("seed devices.json");
    let out = run_cli(tmp.path(), &dir, &["send", "42", "hi", "--per-device"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stderr: {stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "✓ sent 1005\n");
    assert!(
        stderr.contains("missing 3/31, 42/421; extra 42/429") && stderr.contains("sending again"),
        "{stderr}"
    );
    let stale = r#"envelopes [(42, 420, "hi"), (42, 429, "hi")]"#;
    let fixed = r#"envelopes [(42, 420, "hi"), (42, 421, "hi"), (3, 31, "hi")]"#;
    assert_eq!(log_of(&gw, 2).await, [stale, fixed]);
    let known = dir.load_known_devices().expect("devices.json");
    assert_eq!(known.get(PEER), Some(&[420, 421][..]));
    assert_eq!(known.get(OWN), Some(&[OWN_DEVICE, OWN_LAPTOP][..]));

    let out = run_cli(tmp.path(), &dir, &["send", "42", "hi", "--per-device"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stderr: {stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "✓ sent 1006\n");
    assert!(!stderr.contains("sending again"), "{stderr}");
    assert_eq!(log_of(&gw, 3).await, [stale, fixed, fixed]);
}

/// The library's envelope path frame by frame: a stale `Fanout` is refused
/// with the missing and extra devices, fixed with `apply`, and the resend
/// with the same `client_msg_id` is acked.
#[tokio::test]
async fn envelopes_are_resent_after_devices_changed() {
    use parley_client::{Fanout, devices_changed};
    let gw = start_gateway().await;
    let tls = tls_config_from_pem(gw.ca_pem.as_bytes()).expect("tls");
    let mut session = Session::connect(&gw.url, tls, ENVELOPE_TOKEN)
        .await
        .expect("connect");
    let mut fanout = Fanout::new(PEER, [420], OWN, OWN_DEVICE, [OWN_DEVICE]);
    let body = bytes::Bytes::from_static(b"sealed");
    session
        .send_envelopes(9, PEER, fanout.envelopes(&body))
        .await
        .expect("send");
    let refused = match session
        .next_frame_timeout(WAIT)
        .await
        .expect("answer")
        .frame
    {
        Some(server_frame::Frame::SendError(e)) => e,
        other => panic!("expected DEVICES_CHANGED, got {other:?}"),
    };
    assert_eq!(refused.client_msg_id, 9);
    let changed = devices_changed(&refused).expect("DEVICES_CHANGED");
    assert!(changed.extra.is_empty());
    assert_eq!(changed.missing.len(), 2, "{changed:?}");
    fanout.apply(changed).expect("fixable");
    session
        .send_envelopes(9, PEER, fanout.envelopes(&body))
        .await
        .expect("resend");
    match session
        .next_frame_timeout(WAIT)
        .await
        .expect("answer")
        .frame
    {
        Some(server_frame::Frame::Ack(ack)) => assert_eq!(ack.client_msg_id, 9),
        other => panic!("expected the ack, got {other:?}"),
    }
    session.close().await.expect("clean close");
}

/// A device unlinked while it listens: the library sees `Closing{UNLINKED}`
/// and close code 4005 (a refused credential); the CLI says the device was
/// removed from its account and gives the exact commands to link it again.
#[tokio::test]
async fn an_unlinked_device_is_told_how_to_link_again() {
    let gw = start_gateway().await;
    let tls = tls_config_from_pem(gw.ca_pem.as_bytes()).expect("tls");
    let mut session = Session::connect(&gw.url, tls, UNLINKED_TOKEN)
        .await
        .expect("connect");
    match session
        .next_frame_timeout(WAIT)
        .await
        .expect("Closing")
        .frame
    {
        Some(server_frame::Frame::Closing(c)) => {
            assert_eq!(c.reason, CloseReason::Unlinked as i32);
        }
        other => panic!("expected Closing, got {other:?}"),
    }
    let err = session.next_frame_timeout(WAIT).await.expect_err("closed");
    assert!(
        matches!(err, ClientError::Closed { code: 4005, .. }),
        "{err:?}"
    );
    assert_eq!(err.credential_refusal(), Some(CredentialRefusal::Revoked));

    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = profile_for(&gw, tmp.path(), UNLINKED_TOKEN, OWN, OWN_LAPTOP, true);
    let out = run_cli(tmp.path(), &dir, &["listen"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(out.stdout.is_empty());
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("removed from its account"), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "`parley-cli --profile-dir {} link-accept <code>`",
            dir.path().display()
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("register"), "{stderr}");
}
