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

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use parley_client::proto::v1::{
    ClientFrame, CloseReason, Closing, Deliver, QueueEmpty, Receipt, ReceiptKind, ServerAck,
    ServerFrame, client_frame, server_frame,
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

/// What a `LISTENER_TOKEN` session finds queued.
fn backlog() -> Vec<Message> {
    vec![
        frame(server_frame::Frame::Deliver(Deliver {
            message_id: 77,
            from_user: 9,
            timestamp_ms: 1,
            body: bytes::Bytes::from_static(b"hi\nthere"),
        })),
        frame(server_frame::Frame::Receipt(Receipt {
            receipt_id: 5,
            kind: ReceiptKind::Delivered as i32,
            from_user: 9,
            message_ids: vec![1005],
            timestamp_ms: 2,
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
    let listener_session = Arc::new(AtomicBool::new(false));
    let is_listener = listener_session.clone();
    let early_session = Arc::new(AtomicBool::new(false));
    let is_early = early_session.clone();
    // The error type is tungstenite's `Callback` contract, not ours to shrink.
    #[allow(clippy::result_large_err)]
    let check_token = move |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        let auth = req.headers().get("authorization").map(|v| v.as_bytes());
        let bearer = |token: &str| auth == Some(format!("Bearer {token}").as_bytes());
        if bearer(LISTENER_TOKEN) {
            is_listener.store(true, Ordering::SeqCst);
            return Ok(resp);
        }
        if bearer(EARLY_RECEIPT_TOKEN) {
            is_early.store(true, Ordering::SeqCst);
            return Ok(resp);
        }
        if bearer(TOKEN) {
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
    if listener_session.load(Ordering::SeqCst) {
        for msg in backlog() {
            let _ = ws.send(msg).await;
        }
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
                let early = early_session.load(Ordering::SeqCst);
                for reply in answer(client, &state, early) {
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
/// With `early_receipts`, two READ receipts for that message come before
/// the ack: one forged by [`MALLORY`], then the recipient's.
fn answer(client: ClientFrame, state: &State, early_receipts: bool) -> Vec<Message> {
    let entry = match client.frame {
        Some(client_frame::Frame::Send(send)) => {
            let message_id = 1000 + send.client_msg_id;
            let read_by = |receipt_id: u64, from_user: u64| {
                frame(server_frame::Frame::Receipt(Receipt {
                    receipt_id,
                    kind: ReceiptKind::Read as i32,
                    from_user,
                    message_ids: vec![message_id],
                    timestamp_ms: 3,
                }))
            };
            let mut replies = vec![Message::Ping("x".into())];
            if early_receipts {
                replies.push(read_by(61, MALLORY));
                replies.push(read_by(62, send.to_user));
            }
            replies.push(frame(server_frame::Frame::Ack(ServerAck {
                client_msg_id: send.client_msg_id,
                message_id,
                timestamp_ms: 1_700_000_000_000,
            })));
            return replies;
        }
        Some(client_frame::Frame::DeliveryAck(a)) => format!("delivery_ack {:?}", a.message_ids),
        Some(client_frame::Frame::MarkRead(r)) => {
            format!("mark_read {} {:?}", r.to_user, r.message_ids)
        }
        Some(client_frame::Frame::ReceiptAck(a)) => format!("receipt_ack {:?}", a.receipt_ids),
        None => return Vec::new(),
    };
    state.log.lock().expect("log lock").push(entry);
    Vec::new()
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
