//! One lean session: TCP from a chosen source, TLS, WebSocket upgrade with
//! the token, then protobuf frames.
//!
//! Unlike `parley_client::Session` this is built to be held by the
//! thousands: 4 KiB read buffers, frames encoded into one reused
//! [`BytesMut`] per session (a frame is a slice of it, so there is no
//! allocation per message once the buffer has grown), and writes that are
//! fed and flushed together so several frames share a TLS record and a
//! syscall. Each session is driven by exactly one task, which reads and
//! writes in turn; that is deadlock-free here because what a session has in
//! flight is bounded (the server's delivery window, our send window) and
//! fits in the kernel's loopback socket buffers, so a write never waits for
//! the server to drain a read it is itself waiting on.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut as _, Bytes, BytesMut};
use futures_util::{SinkExt as _, StreamExt as _};
use parley_proto::limits::MAX_FRAME_BYTES;
use parley_proto::v1::{
    ClientFrame, DeliveryAck, ReceiptAck, ServerFrame, client_frame, server_frame,
};
use prost::Message as _;
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::addr::{Target, connect_from};

/// The server allows 10 s for TLS and upgrade; so do we, plus TCP connect.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Read buffer per session. Frames in these scenarios are a few hundred
/// bytes at most; the buffer grows for the rare large one.
const READ_BUFFER_BYTES: usize = 4 * 1024;
/// Frames are written out once this much is buffered or on flush.
const WRITE_BUFFER_BYTES: usize = 4 * 1024;
/// Initial size of the per-session encode buffer.
const ENCODE_BUFFER_BYTES: usize = 1024;
/// Bytes at the start of every body the generator sends: the sequence
/// number and the intended send time, so the recipient can tell loss,
/// duplicates and latency without asking the sender.
pub const STAMP_BYTES: usize = 16;
/// Bodies this long or longer also carry, in bytes 16..24, when the
/// generator wrote the send: the latency from there leaves out the
/// generator's own lateness.
pub const WRITTEN_STAMP_BYTES: usize = 24;

/// Why a session could not be opened or ended.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("connect: {0}")]
    Io(#[from] std::io::Error),
    #[error("TLS: {0}")]
    Tls(std::io::Error),
    #[error("upgrade refused with HTTP {0}")]
    Rejected(u16),
    #[error("WebSocket: {0}")]
    Ws(tungstenite::Error),
    #[error("closed with code {0}")]
    Closed(u16),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("timed out")]
    Timeout,
}

impl From<tungstenite::Error> for ConnError {
    fn from(e: tungstenite::Error) -> Self {
        match e {
            tungstenite::Error::Http(r) => Self::Rejected(r.status().as_u16()),
            tungstenite::Error::Io(e) => Self::Io(e),
            tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
                Self::Closed(1006)
            }
            other => Self::Ws(other),
        }
    }
}

/// What every session of a run shares: where to go and how to do TLS.
#[derive(Clone)]
pub struct Connector {
    target: Target,
    tls: TlsConnector,
}

impl Connector {
    pub fn new(target: Target, tls: Arc<rustls::ClientConfig>) -> Self {
        // The upgrade is HTTP/1.1: never offer h2.
        let tls = if tls.alpn_protocols.iter().any(|p| p != b"http/1.1") {
            let mut config = (*tls).clone();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Arc::new(config)
        } else {
            tls
        };
        Self {
            target,
            tls: TlsConnector::from(tls),
        }
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// TCP from `source`, TLS, upgrade with `Authorization: Bearer <token>`,
    /// all within [`CONNECT_TIMEOUT`]. The session is not yet logged in:
    /// see [`Conn::login`].
    pub async fn connect(&self, source: Ipv4Addr, token: &str) -> Result<Conn, ConnError> {
        let mut request = self.target.url.as_str().into_client_request()?;
        let auth = http::HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| ConnError::Protocol("token is not a header value".into()))?;
        request
            .headers_mut()
            .insert(http::header::AUTHORIZATION, auth);
        let handshake = async {
            let tcp = connect_from(source, self.target.addr).await?;
            let tls = self
                .tls
                .connect(self.target.server_name.clone(), tcp)
                .await
                .map_err(ConnError::Tls)?;
            let (ws, _) =
                tokio_tungstenite::client_async_with_config(request, tls, Some(ws_config()))
                    .await?;
            Ok::<_, ConnError>(ws)
        };
        let ws = timeout(CONNECT_TIMEOUT, handshake)
            .await
            .map_err(|_| ConnError::Timeout)??;
        Ok(Conn {
            ws,
            buf: BytesMut::with_capacity(ENCODE_BUFFER_BYTES),
            ids: Vec::new(),
        })
    }
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_message_size(Some(MAX_FRAME_BYTES))
        .max_frame_size(Some(MAX_FRAME_BYTES))
}

/// What [`Conn::next`] read.
#[derive(Debug)]
pub enum Incoming {
    Frame(ServerFrame),
    /// A binary message that is not decoded (the echo server's answers).
    Raw(Bytes),
}

/// One open session, driven by one task.
pub struct Conn {
    ws: WebSocketStream<TlsStream<TcpStream>>,
    /// Encode buffer: each frame is split off it, so its allocation is
    /// reused once earlier frames have been written and dropped.
    buf: BytesMut,
    /// Reused id list for acknowledgements.
    ids: Vec<u64>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").finish_non_exhaustive()
    }
}

impl Conn {
    /// Reads until `QueueEmpty`: the login is complete. Deliveries and
    /// receipts queued before (left by an earlier, interrupted run) are
    /// acknowledged so they do not come back; returns how many there were.
    pub async fn login(&mut self) -> Result<u64, ConnError> {
        let mut stale = 0;
        loop {
            let frame = match self.next(true).await? {
                Incoming::Frame(f) => f,
                Incoming::Raw(_) => continue,
            };
            match frame.frame {
                Some(server_frame::Frame::QueueEmpty(_)) => {
                    self.flush().await?;
                    return Ok(stale);
                }
                Some(server_frame::Frame::Deliver(d)) => {
                    stale += 1;
                    self.feed_delivery_ack(&[d.message_id]).await?;
                }
                Some(server_frame::Frame::Receipt(r)) => {
                    stale += 1;
                    self.feed_receipt_ack(&[r.receipt_id]).await?;
                }
                Some(server_frame::Frame::Closing(c)) => {
                    return Err(ConnError::Protocol(format!("closing before login: {c:?}")));
                }
                Some(server_frame::Frame::Error(e)) => {
                    return Err(ConnError::Protocol(format!("error before login: {e:?}")));
                }
                _ => {}
            }
        }
    }

    /// The next binary message; pings are answered (by tungstenite, on the
    /// next write or flush) and pongs skipped. Cancel-safe. With `decode`
    /// false the bytes are returned as they are.
    pub async fn next(&mut self, decode: bool) -> Result<Incoming, ConnError> {
        loop {
            let msg = match self.ws.next().await {
                Some(msg) => msg?,
                None => return Err(ConnError::Closed(1006)),
            };
            match msg {
                Message::Binary(bytes) if decode => {
                    return ServerFrame::decode(bytes)
                        .map(Incoming::Frame)
                        .map_err(|e| ConnError::Protocol(format!("undecodable frame: {e}")));
                }
                Message::Binary(bytes) => return Ok(Incoming::Raw(bytes)),
                Message::Close(frame) => {
                    return Err(ConnError::Closed(frame.map_or(1005, |f| u16::from(f.code))));
                }
                Message::Text(_) => return Err(ConnError::Protocol("text frame".into())),
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    }

    /// Queues a `Send` whose body starts with `seq` and `stamp_ns` (and,
    /// from [`WRITTEN_STAMP_BYTES`] on, `written_ns`) and is padded with
    /// zeros to `body_len` (at least [`STAMP_BYTES`]).
    pub async fn feed_send(
        &mut self,
        client_msg_id: u64,
        to_user: u64,
        [stamp_ns, written_ns]: [u64; 2],
        body_len: usize,
    ) -> Result<(), ConnError> {
        let frame = encode_send(
            &mut self.buf,
            client_msg_id,
            to_user,
            [stamp_ns, written_ns],
            body_len,
        );
        self.feed(Message::Binary(frame)).await
    }

    /// Queues an arbitrary binary message (the echo scenario's payload).
    pub async fn feed_binary(&mut self, bytes: Bytes) -> Result<(), ConnError> {
        self.feed(Message::Binary(bytes)).await
    }

    pub async fn feed_delivery_ack(&mut self, ids: &[u64]) -> Result<(), ConnError> {
        self.ids.clear();
        self.ids.extend_from_slice(ids);
        let ack = DeliveryAck {
            message_ids: std::mem::take(&mut self.ids),
        };
        let frame = self.encode(client_frame::Frame::DeliveryAck(ack));
        self.feed(Message::Binary(frame)).await
    }

    pub async fn feed_receipt_ack(&mut self, ids: &[u64]) -> Result<(), ConnError> {
        self.ids.clear();
        self.ids.extend_from_slice(ids);
        let ack = ReceiptAck {
            receipt_ids: std::mem::take(&mut self.ids),
        };
        let frame = self.encode(client_frame::Frame::ReceiptAck(ack));
        self.feed(Message::Binary(frame)).await
    }

    /// Queues a WebSocket ping (the keepalive the server wants each minute).
    pub async fn feed_ping(&mut self) -> Result<(), ConnError> {
        self.feed(Message::Ping(Bytes::new())).await
    }

    /// Writes out everything queued.
    pub async fn flush(&mut self) -> Result<(), ConnError> {
        Ok(self.ws.flush().await?)
    }

    /// Sends a close frame and flushes it, without waiting for the answer:
    /// the login loop must not spend its time on goodbyes.
    pub async fn close_quickly(mut self) {
        let _ = timeout(Duration::from_secs(1), self.ws.close(None)).await;
    }

    async fn feed(&mut self, msg: Message) -> Result<(), ConnError> {
        Ok(self.ws.feed(msg).await?)
    }

    /// Encodes a client frame into the shared buffer and hands back its
    /// id list for reuse.
    fn encode(&mut self, frame: client_frame::Frame) -> Bytes {
        let frame = ClientFrame { frame: Some(frame) };
        frame
            .encode(&mut self.buf)
            .expect("BytesMut grows as needed");
        match frame.frame {
            Some(client_frame::Frame::DeliveryAck(a)) => self.ids = a.message_ids,
            Some(client_frame::Frame::ReceiptAck(a)) => self.ids = a.receipt_ids,
            _ => {}
        }
        self.buf.split().freeze()
    }
}

/// Encodes `ClientFrame { send: Send { client_msg_id, to_user, body } }` by
/// hand into `buf`, the body written in place (stamp, then zeros), so a
/// message costs no allocation and no copy of a body.
pub fn encode_send(
    buf: &mut BytesMut,
    client_msg_id: u64,
    to_user: u64,
    [stamp_ns, written_ns]: [u64; 2],
    body_len: usize,
) -> Bytes {
    use prost::encoding::{encode_varint, encoded_len_varint};
    let body_len = body_len.max(STAMP_BYTES);
    // Field 1 varint, field 2 fixed64, field 3 bytes: one key byte each.
    let send_len = 1
        + encoded_len_varint(client_msg_id)
        + 1
        + 8
        + 1
        + encoded_len_varint(body_len as u64)
        + body_len;
    buf.reserve(1 + encoded_len_varint(send_len as u64) + send_len);
    buf.put_u8(0x0a); // ClientFrame.send = 1, length-delimited
    encode_varint(send_len as u64, buf);
    buf.put_u8(0x08); // Send.client_msg_id = 1, varint
    encode_varint(client_msg_id, buf);
    buf.put_u8(0x11); // Send.to_user = 2, fixed64
    buf.put_u64_le(to_user);
    buf.put_u8(0x1a); // Send.body = 3, length-delimited
    encode_varint(body_len as u64, buf);
    buf.put_u64_le(client_msg_id);
    buf.put_u64_le(stamp_ns);
    if body_len >= WRITTEN_STAMP_BYTES {
        buf.put_u64_le(written_ns);
        buf.put_bytes(0, body_len - WRITTEN_STAMP_BYTES);
    } else {
        buf.put_bytes(0, body_len - STAMP_BYTES);
    }
    buf.split().freeze()
}

/// The sequence number and intended send time at the start of a body the
/// generator wrote; `None` for any other body.
pub fn read_stamp(body: &[u8]) -> Option<(u64, u64)> {
    let seq = u64::from_le_bytes(body.get(0..8)?.try_into().ok()?);
    let ns = u64::from_le_bytes(body.get(8..16)?.try_into().ok()?);
    Some((seq, ns))
}

/// When the generator wrote the send whose body this is (ns from the
/// epoch); `None` for a body too short to say.
pub fn read_written(body: &[u8]) -> Option<u64> {
    let ns = u64::from_le_bytes(body.get(16..24)?.try_into().ok()?);
    (ns != 0).then_some(ns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use parley_proto::v1::Send;

    #[test]
    fn hand_encoded_send_matches_prost() {
        let mut buf = BytesMut::new();
        for (cmid, to, len) in [
            (1u64, 0u64, 16usize),
            (300, u64::MAX, 100),
            (u64::MAX, 7, 5000),
        ] {
            let ours = encode_send(&mut buf, cmid, to, [42, 43], len);
            let mut body = Vec::new();
            body.extend_from_slice(&cmid.to_le_bytes());
            body.extend_from_slice(&42u64.to_le_bytes());
            if len >= WRITTEN_STAMP_BYTES {
                body.extend_from_slice(&43u64.to_le_bytes());
            }
            body.resize(len, 0);
            let theirs = ClientFrame {
                frame: Some(client_frame::Frame::Send(Send {
                    client_msg_id: cmid,
                    to_user: to,
                    body: body.into(),
                    ..Send::default()
                })),
            }
            .encode_to_vec();
            // prost leaves out a zero to_user; we always write it (valid
            // protobuf either way: the decoder reads it back as 0).
            if to != 0 {
                assert_eq!(&ours[..], &theirs[..]);
            }
            let decoded = ClientFrame::decode(ours).expect("decodes");
            assert_eq!(
                decoded,
                ClientFrame::decode(&theirs[..]).expect("theirs decodes")
            );
            let Some(client_frame::Frame::Send(s)) = decoded.frame else {
                panic!("a send");
            };
            assert_eq!(read_stamp(&s.body), Some((cmid, 42)));
            assert_eq!(
                read_written(&s.body),
                (len >= WRITTEN_STAMP_BYTES).then_some(43)
            );
        }
    }

    #[test]
    fn short_bodies_have_no_stamp() {
        assert_eq!(read_stamp(b"hello"), None);
    }
}
