//! One authenticated WebSocket session with the gateway, over TLS.
//!
//! [`Session`] is deliberately a plain owned value with `&mut self` methods,
//! not a background task: tests and the load generator drive it step by step
//! and see every frame in order, and there is no hidden queue to bound. The
//! one thing it does on its own is keep the session alive: while the caller
//! waits in [`Session::next_frame`], it pings every
//! [`ConnectOptions::keepalive`] (the server closes silent sessions).
//!
//! # How a session ends
//!
//! A `Closing` or `Error` frame from the server is returned like any other
//! frame by [`Session::next_frame`]. The close that follows is returned as
//! `Err(ClientError::Closed { code, reason })`, and so is every later call.
//! A connection that ends or fails without a close frame is `Closed` with
//! code 1006 (RFC 6455's "abnormal closure"), so "the session is over" is one
//! variant to match whichever way it ended.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use parley_proto::limits::MAX_FRAME_BYTES;
use parley_proto::v1::{
    ClientFrame, DeliveryAck, Envelope, MarkRead, ReceiptAck, Send, ServerFrame, client_frame,
};
use prost::Message as _;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tracing::debug;

use crate::ClientError;
use crate::error::{ABNORMAL_CLOSURE, NO_STATUS, find_rustls_error, io_reason};

/// The WebSocket stream a [`Session`] owns.
type WsStream = WebSocketStream<TlsStream<TcpStream>>;

/// How long [`Session::close`] waits for the server to answer our close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Per-session read buffer. tungstenite allocates it up front (128 KiB by
/// default); the load generator holds thousands of sessions, and frames are
/// small, so a small buffer that grows for the rare large frame is better.
const READ_BUFFER_BYTES: usize = 16 * 1024;

/// Tunables of [`Session::connect_with`]; [`Default`] is what a phone does.
#[derive(Clone, Copy, Debug)]
pub struct ConnectOptions {
    /// Bound on TCP connect, TLS handshake and WebSocket upgrade together.
    pub connect_timeout: Duration,
    /// Bound on each write: a server that stops reading must not hang us.
    pub write_timeout: Duration,
    /// Ping this often while waiting in [`Session::next_frame`]. The server
    /// wants a ping at least once a minute; 30 s leaves room for a slow
    /// network. `None` never pings on its own (to test the idle timeout).
    pub keepalive: Option<Duration>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            keepalive: Some(Duration::from_secs(30)),
        }
    }
}

/// One authenticated WebSocket session with the gateway.
pub struct Session {
    ws: WsStream,
    options: ConnectOptions,
    /// When we last pinged, so keepalive pings go out on schedule however
    /// the caller splits its waiting into calls.
    last_ping: Instant,
    /// Set once the server's close (or the end of the connection) has been
    /// seen, so every later call reports the same close.
    closed: Option<(u16, String)>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("options", &self.options)
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

/// Where a `wss://` URL points.
struct Target {
    host: String,
    port: u16,
    server_name: ServerName<'static>,
}

impl Target {
    fn parse(ws_url: &str) -> Result<Self, ClientError> {
        let bad = |why: &str| ClientError::InvalidInput(format!("WebSocket URL {ws_url:?}: {why}"));
        let uri: http::Uri = ws_url.parse().map_err(|_| bad("not a URL"))?;
        if uri.scheme_str() != Some("wss") {
            return Err(bad("scheme must be wss"));
        }
        let host = uri.host().ok_or_else(|| bad("no host"))?;
        // `http::Uri` keeps the brackets of an IPv6 literal; TCP and TLS want
        // the bare address.
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let server_name =
            ServerName::try_from(host.clone()).map_err(|_| bad("host is not a valid TLS name"))?;
        Ok(Self {
            port: uri.port_u16().unwrap_or(443),
            host,
            server_name,
        })
    }
}

/// Checks that `ws_url` is a gateway URL [`Session::connect`] can use
/// (`wss://host[:port]/path`), without connecting.
pub fn validate_ws_url(ws_url: &str) -> Result<(), ClientError> {
    Target::parse(ws_url).map(|_| ())
}

fn ws_config() -> WebSocketConfig {
    // The protocol's limit applies to what the server sends too; a bigger
    // message means a broken or hostile server.
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .max_message_size(Some(MAX_FRAME_BYTES))
        .max_frame_size(Some(MAX_FRAME_BYTES))
}

impl Session {
    /// Connects with [`ConnectOptions::default`].
    ///
    /// TCP connect, TLS (server name from the URL host; IP addresses work),
    /// WebSocket upgrade with `Authorization: Bearer <token>`. Nothing
    /// listening is [`ClientError::Unreachable`], an untrusted certificate
    /// [`ClientError::TlsHandshake`], and an upgrade the server refuses with
    /// an HTTP status [`ClientError::Rejected`] (with the body's code).
    pub async fn connect(
        ws_url: &str,
        tls: Arc<rustls::ClientConfig>,
        token: &str,
    ) -> Result<Self, ClientError> {
        Self::connect_with(ws_url, tls, token, ConnectOptions::default()).await
    }

    /// [`Session::connect`] with explicit options.
    pub async fn connect_with(
        ws_url: &str,
        tls: Arc<rustls::ClientConfig>,
        token: &str,
        options: ConnectOptions,
    ) -> Result<Self, ClientError> {
        let target = Target::parse(ws_url)?;
        let mut request = ws_url.into_client_request()?;
        let mut auth = http::HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| ClientError::InvalidInput("token is not a valid header value".into()))?;
        // Keeps the token out of any debug dump of the request.
        auth.set_sensitive(true);
        request
            .headers_mut()
            .insert(http::header::AUTHORIZATION, auth);

        // The upgrade is HTTP/1.1 (tungstenite does not do WebSocket over
        // HTTP/2), so a config that offers h2 in ALPN must not be used as is.
        let tls = if tls.alpn_protocols.iter().any(|p| p != b"http/1.1") {
            let mut config = (*tls).clone();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Arc::new(config)
        } else {
            tls
        };

        let handshake = async {
            let tcp = TcpStream::connect((target.host.as_str(), target.port))
                .await
                .map_err(|e| ClientError::Unreachable {
                    url: ws_url.to_string(),
                    reason: io_reason(&e),
                })?;
            // Frames are small and latency is the product: no Nagle delay.
            tcp.set_nodelay(true)?;
            let stream = TlsConnector::from(tls)
                .connect(target.server_name, tcp)
                .await
                .map_err(|e| match find_rustls_error(&e) {
                    Some(error) => ClientError::TlsHandshake {
                        url: ws_url.to_string(),
                        error: error.clone(),
                    },
                    None => ClientError::Tls(format!("handshake with {ws_url}: {e}")),
                })?;
            let (ws, _response) =
                tokio_tungstenite::client_async_with_config(request, stream, Some(ws_config()))
                    .await?;
            Ok::<_, ClientError>(ws)
        };
        let ws = timeout(options.connect_timeout, handshake)
            .await
            .map_err(|_| ClientError::Timeout)??;
        debug!("session connected");
        Ok(Self {
            ws,
            options,
            last_ping: Instant::now(),
            closed: None,
        })
    }

    /// Sends one message. The answer ([`parley_proto::v1::ServerAck`] or
    /// `SendError` with the same `client_msg_id`) comes from
    /// [`Session::next_frame`].
    ///
    /// Nothing is checked locally (not even `client_msg_id != 0` or the body
    /// size), so tests can see how the server treats such frames.
    pub async fn send(
        &mut self,
        client_msg_id: u64,
        to_user: u64,
        body: impl Into<Bytes>,
    ) -> Result<(), ClientError> {
        self.send_frame(client_frame::Frame::Send(Send {
            client_msg_id,
            to_user,
            body: body.into(),
            envelopes: Vec::new(),
        }))
        .await
    }

    /// Registers this device's push token (`platform` a
    /// [`parley_proto::v1::PushPlatform`] as `i32`), or forgets it with an
    /// empty `token`. The answer is a `PushTokenResult` with the same
    /// `request_id`, from [`Session::next_frame`], in order with the
    /// answers to sends. Nothing is checked locally.
    pub async fn set_push_token(
        &mut self,
        request_id: u64,
        platform: i32,
        token: &str,
    ) -> Result<(), ClientError> {
        self.send_frame(client_frame::Frame::SetPushToken(
            parley_proto::v1::SetPushToken {
                request_id,
                platform,
                token: token.to_owned(),
            },
        ))
        .await
    }

    /// Sends one message with one body per device instead of one body for
    /// all (apps that encrypt for each device do this): `envelopes` holds
    /// `(user_id, device_id, body)` for every device of `to_user` and every
    /// other device of this account, no more and no less
    /// ([`crate::devices::Fanout`] makes that list). The answer is a
    /// `ServerAck`, or a `SendError{DEVICES_CHANGED}` naming the missing and
    /// the extra devices ([`crate::devices::devices_changed`]): nothing was
    /// queued, so fix the list and resend with the same `client_msg_id`.
    ///
    /// Like [`Session::send`], nothing is checked locally.
    pub async fn send_envelopes<B: Into<Bytes>>(
        &mut self,
        client_msg_id: u64,
        to_user: u64,
        envelopes: impl IntoIterator<Item = (u64, u64, B)>,
    ) -> Result<(), ClientError> {
        let envelopes = envelopes
            .into_iter()
            .map(|(user_id, device_id, body)| Envelope {
                user_id,
                device_id,
                body: body.into(),
            })
            .collect();
        self.send_frame(client_frame::Frame::Send(Send {
            client_msg_id,
            to_user,
            body: Bytes::new(),
            envelopes,
        }))
        .await
    }

    /// Acknowledges stored deliveries (the sender then gets two checkmarks).
    pub async fn ack_delivery(&mut self, message_ids: Vec<u64>) -> Result<(), ClientError> {
        self.send_frame(client_frame::Frame::DeliveryAck(DeliveryAck {
            message_ids,
        }))
        .await
    }

    /// Tells `to_user` (the sender of these messages) they were read.
    pub async fn mark_read(
        &mut self,
        to_user: u64,
        message_ids: Vec<u64>,
    ) -> Result<(), ClientError> {
        self.send_frame(client_frame::Frame::MarkRead(MarkRead {
            to_user,
            message_ids,
        }))
        .await
    }

    /// Acknowledges stored receipts, and read-syncs (their `sync_id`s are
    /// in the receipts' id space), so they are not redelivered.
    pub async fn ack_receipts(&mut self, receipt_ids: Vec<u64>) -> Result<(), ClientError> {
        self.send_frame(client_frame::Frame::ReceiptAck(ReceiptAck { receipt_ids }))
            .await
    }

    async fn send_frame(&mut self, frame: client_frame::Frame) -> Result<(), ClientError> {
        let bytes = ClientFrame { frame: Some(frame) }.encode_to_vec();
        self.send_raw(Message::Binary(bytes.into())).await
    }

    /// Sends any WebSocket message as is (garbage, text, oversized), for
    /// protocol-conformance tests.
    pub async fn send_raw(&mut self, msg: Message) -> Result<(), ClientError> {
        self.check_open()?;
        timeout(self.options.write_timeout, self.ws.send(msg))
            .await
            .map_err(|_| ClientError::Timeout)?
            .map_err(|e| self.note_error(e))
    }

    /// Sends a WebSocket ping now (the pong is skipped by `next_frame`).
    pub async fn ping(&mut self) -> Result<(), ClientError> {
        self.send_raw(Message::Ping(Bytes::new())).await?;
        self.last_ping = Instant::now();
        Ok(())
    }

    /// The next frame from the server. Pings are answered and pongs skipped;
    /// keepalive pings go out while waiting. The server's close is
    /// `Err(ClientError::Closed { code, reason })` (see the module docs).
    ///
    /// Cancel-safe: dropping the future (in `select!` or a timeout) loses no
    /// frame.
    pub async fn next_frame(&mut self) -> Result<ServerFrame, ClientError> {
        loop {
            self.check_open()?;
            let received = match self.options.keepalive {
                Some(every) => {
                    tokio::select! {
                        received = self.ws.next() => received,
                        () = sleep_until(self.last_ping + every) => {
                            self.ping().await?;
                            continue;
                        }
                    }
                }
                None => self.ws.next().await,
            };
            let msg = match received {
                Some(Ok(msg)) => msg,
                Some(Err(e)) => return Err(self.note_error(e)),
                None => {
                    return Err(self.note_close(ABNORMAL_CLOSURE, "connection ended".into()));
                }
            };
            match msg {
                Message::Binary(bytes) => {
                    return ServerFrame::decode(bytes).map_err(|e| {
                        ClientError::Protocol(format!("undecodable ServerFrame: {e}"))
                    });
                }
                Message::Text(_) => {
                    return Err(ClientError::Protocol(
                        "text frame from the server; the protocol is binary".into(),
                    ));
                }
                // tungstenite queues the pong itself and flushes it on the
                // next read or write.
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
                Message::Close(frame) => {
                    let (code, reason) = match frame {
                        Some(f) => (u16::from(f.code), f.reason.to_string()),
                        None => (NO_STATUS, String::new()),
                    };
                    return Err(self.note_close(code, reason));
                }
            }
        }
    }

    /// [`Session::next_frame`] with a deadline: `Err(ClientError::Timeout)`
    /// when nothing arrived within `wait`. The session stays usable.
    pub async fn next_frame_timeout(&mut self, wait: Duration) -> Result<ServerFrame, ClientError> {
        timeout(wait, self.next_frame())
            .await
            .map_err(|_| ClientError::Timeout)?
    }

    /// Closes cleanly: sends close code 1000 and waits (at most 5 s) for the
    /// server's answer. `Err(Timeout)` if it never came; the connection is
    /// dropped either way.
    pub async fn close(mut self) -> Result<(), ClientError> {
        if self.closed.is_some() {
            return Ok(());
        }
        let handshake = async {
            self.ws
                .close(Some(CloseFrame {
                    code: CloseCode::Normal,
                    reason: "".into(),
                }))
                .await?;
            // Frames still in flight are discarded: the caller is done. The
            // stream ends once the server's close arrives.
            while let Some(msg) = self.ws.next().await {
                if let Err(e) = msg {
                    debug!(error = %e, "error while closing");
                    break;
                }
            }
            Ok::<_, ClientError>(())
        };
        timeout(CLOSE_TIMEOUT, handshake)
            .await
            .map_err(|_| ClientError::Timeout)?
    }

    /// Drops the connection without a WebSocket close or TLS close_notify,
    /// like a phone losing coverage. The server sees the TCP connection end.
    pub fn drop_abruptly(self) {
        drop(self);
    }

    fn check_open(&self) -> Result<(), ClientError> {
        match &self.closed {
            Some((code, reason)) => Err(ClientError::Closed {
                code: *code,
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    fn note_close(&mut self, code: u16, reason: String) -> ClientError {
        debug!(code, %reason, "session closed by the server");
        self.closed = Some((code, reason.clone()));
        ClientError::Closed { code, reason }
    }

    /// Errors that mean the connection is gone are remembered like a close.
    fn note_error(&mut self, e: tokio_tungstenite::tungstenite::Error) -> ClientError {
        match ClientError::from(e) {
            ClientError::Closed { code, reason } => self.note_close(code, reason),
            ClientError::Io(e) => {
                self.note_close(ABNORMAL_CLOSURE, format!("connection lost: {e}"))
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets() {
        let t = Target::parse("wss://127.0.0.1:5443/v1/ws").expect("ip target");
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 5443));
        assert!(matches!(t.server_name, ServerName::IpAddress(_)));

        let t = Target::parse("wss://localhost/v1/ws").expect("dns target");
        assert_eq!((t.host.as_str(), t.port), ("localhost", 443));
        assert!(matches!(t.server_name, ServerName::DnsName(_)));

        let t = Target::parse("wss://[::1]:5443/v1/ws").expect("ipv6 target");
        assert_eq!(t.host, "::1");

        assert!(matches!(
            Target::parse("ws://127.0.0.1:5443/v1/ws"),
            Err(ClientError::InvalidInput(_))
        ));
        assert!(matches!(
            Target::parse("not a url"),
            Err(ClientError::InvalidInput(_))
        ));
    }
}
