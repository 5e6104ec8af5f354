//! TLS for phone sessions, on rustls's unbuffered connection API.
//!
//! rustls's ordinary (buffered) connection keeps a 4 KiB record buffer
//! ready before every read, for the connection's whole life: in an idle
//! session that is the largest single allocation, nearly a third of what
//! the session costs (BENCHMARKS.md, "Idle memory"). Here the stream owns
//! its buffers and holds them only while bytes are in flight: an idle
//! session waits for the socket to become readable with no buffer at all,
//! reads into a buffer taken for the read, and lets it go once every
//! complete record in it is decrypted. A partial record (the rest is still
//! on the way) keeps its bytes until it completes.
//!
//! The stream is an `AsyncRead + AsyncWrite` like `tokio_rustls`'s, so the
//! upgrade and the WebSocket layer above it are unchanged.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use rustls::ServerConfig;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Room made for one read from the socket: a burst of a phone's small
/// records fits in one read.
const READ_BYTES: usize = 4096;
/// Ciphertext held for a peer that reads slowly before a write waits for
/// the socket: also the most plaintext encrypted by one write.
const MAX_OUTGOING: usize = 64 * 1024;
/// What a TLS record adds to its plaintext, at most (header, content type,
/// tag, TLS 1.2's explicit nonce): the first guess at an encryption's size.
const RECORD_OVERHEAD: usize = 5 + 1 + 16 + 8;
/// The largest plaintext a record carries.
const MAX_FRAGMENT: usize = 16 * 1024;

/// A server-side TLS stream over TCP whose buffers exist only while bytes
/// are in flight.
pub(crate) struct TlsStream {
    tcp: TcpStream,
    conn: UnbufferedServerConnection,
    /// Ciphertext read and not yet decrypted: a record still arriving.
    /// Unallocated between reads when no record is partly here.
    incoming: Vec<u8>,
    /// Plaintext decrypted and not yet read, from `plaintext_read` on.
    plaintext: Vec<u8>,
    plaintext_read: usize,
    /// Ciphertext to send, from `outgoing_sent` on. Unallocated once sent.
    outgoing: Vec<u8>,
    outgoing_sent: usize,
    /// The peer sent close_notify, or its side of the socket ended.
    peer_closed: bool,
    /// Our close_notify is queued: nothing more may be encrypted.
    closed: bool,
}

/// What to do once the buffered records are processed.
#[derive(Clone, Copy)]
enum Action<'a> {
    /// Only process what arrived.
    Read,
    /// Encrypt this plaintext.
    Write(&'a [u8]),
    /// Encrypt a close_notify alert.
    CloseNotify,
}

/// Where processing stopped.
enum Step {
    /// Every complete record is processed; more input is needed.
    Input,
    /// The write was encrypted (this much of it).
    Wrote(usize),
    /// Both sides have closed: nothing more can be read or written.
    Closed,
}

/// Accepts a TLS connection on `tcp`: runs the handshake to its end and
/// returns the stream. Application data the client sent along with its
/// last handshake message is kept for the first read.
pub(crate) async fn accept(tcp: TcpStream, config: Arc<ServerConfig>) -> io::Result<TlsStream> {
    let conn = UnbufferedServerConnection::new(config).map_err(invalid)?;
    let mut stream = TlsStream {
        tcp,
        conn,
        incoming: Vec::new(),
        plaintext: Vec::new(),
        plaintext_read: 0,
        outgoing: Vec::new(),
        outgoing_sent: 0,
        peer_closed: false,
        closed: false,
    };
    std::future::poll_fn(|cx| stream.poll_handshake(cx)).await?;
    Ok(stream)
}

impl TlsStream {
    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let step = self.step(Action::Read)?;
            ready!(self.poll_send(cx))?;
            if !self.conn.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            if matches!(step, Step::Closed) || self.peer_closed {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed during the TLS handshake",
                )));
            }
            ready!(self.poll_fill(cx))?;
        }
    }

    /// Processes what has arrived, then does `action`; on a TLS error, the
    /// alert rustls prepared for the peer is sent if the socket takes it
    /// at once.
    fn step(&mut self, action: Action<'_>) -> io::Result<Step> {
        match self.process(action) {
            Ok(step) => Ok(step),
            Err(Failure::Io(err)) => Err(err),
            Err(Failure::Tls(err)) => {
                // After an error rustls offers the alert as the next record
                // to encode. Processed with no input, so the bytes that
                // failed are not read (and failed) again; best effort, the
                // connection is over either way.
                loop {
                    match self.conn.process_tls_records(&mut []).state {
                        Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                            if append(&mut self.outgoing, READ_BYTES, |buf| encode.encode(buf))
                                .is_err()
                            {
                                break;
                            }
                        }
                        Ok(ConnectionState::TransmitTlsData(transmit)) => transmit.done(),
                        _ => break,
                    }
                }
                if self.outgoing_sent < self.outgoing.len() {
                    let _ = self.tcp.try_write(&self.outgoing[self.outgoing_sent..]);
                }
                Err(invalid(err))
            }
        }
    }

    fn process(&mut self, action: Action<'_>) -> Result<Step, Failure> {
        let Self {
            conn,
            incoming,
            plaintext,
            outgoing,
            peer_closed,
            ..
        } = self;
        loop {
            let UnbufferedStatus { mut discard, state } = conn.process_tls_records(incoming);
            let step = match state.map_err(Failure::Tls)? {
                ConnectionState::ReadTraffic(mut traffic) => {
                    while let Some(record) = traffic.next_record() {
                        let record = record.map_err(Failure::Tls)?;
                        discard += record.discard;
                        plaintext.extend_from_slice(record.payload);
                    }
                    None
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    append(outgoing, READ_BYTES, |buf| encode.encode(buf))?;
                    None
                }
                // Bytes leave in the order they were queued, so what the
                // handshake queued is "transmitted" for rustls's purposes:
                // nothing can overtake it.
                ConnectionState::TransmitTlsData(transmit) => {
                    transmit.done();
                    None
                }
                ConnectionState::PeerClosed => {
                    *peer_closed = true;
                    None
                }
                ConnectionState::Closed => Some(Step::Closed),
                ConnectionState::BlockedHandshake => Some(Step::Input),
                ConnectionState::WriteTraffic(mut traffic) => Some(match action {
                    Action::Read => Step::Input,
                    Action::Write(data) => {
                        let data = &data[..data.len().min(MAX_OUTGOING)];
                        let records = data.len() / MAX_FRAGMENT + 1;
                        append(outgoing, data.len() + records * RECORD_OVERHEAD, |buf| {
                            traffic.encrypt(data, buf)
                        })?;
                        Step::Wrote(data.len())
                    }
                    Action::CloseNotify => {
                        append(outgoing, RECORD_OVERHEAD + 2, |buf| {
                            traffic.queue_close_notify(buf)
                        })?;
                        Step::Wrote(0)
                    }
                }),
                // Early data is not enabled in the server's configuration.
                _ => {
                    return Err(Failure::Io(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "unexpected TLS early data",
                    )));
                }
            };
            incoming.drain(..discard);
            if let Some(step) = step {
                return Ok(step);
            }
        }
    }

    /// Reads what the socket has into `incoming`. Waits for readability
    /// with no buffer held when nothing is partly received.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.incoming.is_empty() && self.incoming.capacity() > 0 {
                self.incoming = Vec::new();
            }
            ready!(self.tcp.poll_read_ready(cx))?;
            self.incoming.reserve(READ_BYTES);
            match self.tcp.try_read_buf(&mut self.incoming) {
                // The socket ended without the peer's close_notify (which
                // sets `peer_closed` before any read): a phone that lost
                // its network, or a truncation. An error, as rustls makes
                // it, so the session above counts the peer as gone.
                Ok(0) => {
                    self.peer_closed = true;
                    let why = if self.incoming.is_empty() {
                        "connection closed without a TLS close_notify"
                    } else {
                        "connection closed in the middle of a TLS record"
                    };
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::UnexpectedEof, why)));
                }
                Ok(_) => return Poll::Ready(Ok(())),
                // A spurious readiness: try_read cleared it; wait again.
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(err) => return Poll::Ready(Err(err)),
            }
        }
    }

    /// Sends the queued ciphertext, and lets its buffer go once it is out.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.outgoing_sent < self.outgoing.len() {
            let rest = &self.outgoing[self.outgoing_sent..];
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, rest))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.outgoing_sent += n;
        }
        if self.outgoing.capacity() > 0 {
            self.outgoing = Vec::new();
            self.outgoing_sent = 0;
        }
        Poll::Ready(Ok(()))
    }

    fn has_plaintext(&self) -> bool {
        self.plaintext_read < self.plaintext.len()
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.has_plaintext() {
                let pending = &this.plaintext[this.plaintext_read..];
                let n = pending.len().min(buf.remaining());
                buf.put_slice(&pending[..n]);
                this.plaintext_read += n;
                if !this.has_plaintext() {
                    this.plaintext = Vec::new();
                    this.plaintext_read = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.peer_closed {
                return Poll::Ready(Ok(()));
            }
            if let Step::Closed = this.step(Action::Read)? {
                this.peer_closed = true;
            }
            if this.has_plaintext() || this.peer_closed {
                continue;
            }
            // What processing queued (a key update's answer, an alert) goes
            // out before waiting for the peer; a full socket does not stop
            // the read.
            if let Poll::Ready(Err(err)) = this.poll_send(cx) {
                return Poll::Ready(Err(err));
            }
            ready!(this.poll_fill(cx))?;
        }
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.closed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the TLS stream is shut down",
            )));
        }
        if this.outgoing.len() - this.outgoing_sent >= MAX_OUTGOING {
            ready!(this.poll_send(cx))?;
        }
        let had_plaintext = this.has_plaintext();
        let written = match this.step(Action::Write(data))? {
            Step::Wrote(n) => n,
            Step::Input => return Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
            Step::Closed => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        };
        if !had_plaintext && this.has_plaintext() {
            // Records that arrived were decrypted on the way: the reader
            // may be waiting on the socket, not on them.
            cx.waker().wake_by_ref();
        }
        // Start sending at once; what the socket does not take now goes
        // with the next write or the flush.
        if let Poll::Ready(Err(err)) = this.poll_send(cx) {
            return Poll::Ready(Err(err));
        }
        Poll::Ready(Ok(written))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.closed {
            this.closed = true;
            this.step(Action::CloseNotify)?;
        }
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

enum Failure {
    Tls(rustls::Error),
    Io(io::Error),
}

/// The two ways rustls says a buffer is too small for a record.
trait TooSmall: fmt::Display {
    /// The size needed, if that is what went wrong.
    fn required(&self) -> Option<usize>;
}

impl TooSmall for EncodeError {
    fn required(&self) -> Option<usize> {
        match self {
            Self::InsufficientSize(size) => Some(size.required_size),
            _ => None,
        }
    }
}

impl TooSmall for EncryptError {
    fn required(&self) -> Option<usize> {
        match self {
            Self::InsufficientSize(size) => Some(size.required_size),
            _ => None,
        }
    }
}

/// Appends a record to `out` with `put`, making the room it asks for.
fn append<E: TooSmall>(
    out: &mut Vec<u8>,
    mut room: usize,
    mut put: impl FnMut(&mut [u8]) -> Result<usize, E>,
) -> Result<(), Failure> {
    loop {
        let start = out.len();
        out.resize(start + room, 0);
        let result = put(&mut out[start..]);
        match result {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(err) => {
                out.truncate(start);
                match err.required() {
                    Some(required) if required > room => room = required,
                    _ => return Err(Failure::Io(io::Error::other(err.to_string()))),
                }
            }
        }
    }
}

fn invalid(err: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio_rustls::TlsConnector;
    use tokio_rustls::client::TlsStream as ClientStream;

    struct Pki {
        server: Arc<ServerConfig>,
        client: Arc<rustls::ClientConfig>,
    }

    fn pki(versions: &[&'static rustls::SupportedProtocolVersion]) -> Pki {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["parley.test".to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("certificate");
        let der = CertificateDer::from(cert.der().to_vec());
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![der.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .expect("server config");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).expect("root");
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Pki {
            server: Arc::new(server),
            client: Arc::new(client),
        }
    }

    /// A server stream and the phone's end of it, over loopback TCP.
    async fn pair_with(pki: &Pki) -> (TlsStream, ClientStream<TcpStream>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connector = TlsConnector::from(pki.client.clone());
        let client = tokio::spawn(async move {
            let tcp = TcpStream::connect(addr).await.expect("connect");
            let name = ServerName::try_from("parley.test").expect("name");
            connector
                .connect(name, tcp)
                .await
                .expect("client handshake")
        });
        let (tcp, _) = listener.accept().await.expect("accept");
        let server = accept(tcp, pki.server.clone())
            .await
            .expect("server handshake");
        (server, client.await.expect("client task"))
    }

    async fn pair() -> (TlsStream, ClientStream<TcpStream>) {
        pair_with(&pki(&[&rustls::version::TLS13])).await
    }

    /// Bytes the stream holds for itself: none when it waits for the peer.
    fn buffered(stream: &TlsStream) -> usize {
        stream.incoming.capacity() + stream.plaintext.capacity() + stream.outgoing.capacity()
    }

    /// Polls a read once; it must find nothing to read.
    async fn read_is_pending(stream: &mut TlsStream) {
        let mut byte = [0u8; 1];
        tokio::select! {
            biased;
            read = stream.read(&mut byte) => panic!("nothing was sent, read {read:?}"),
            () = std::future::ready(()) => {}
        }
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[tokio::test]
    async fn bytes_cross_both_ways_in_reads_of_any_size() {
        let (mut server, mut client) = pair().await;
        // One byte, a phone-sized frame, and more than a record holds.
        for len in [1, 100, 3 * MAX_FRAGMENT + 17] {
            let sent = pattern(len);
            client.write_all(&sent).await.expect("client write");
            client.flush().await.expect("client flush");
            // Reads smaller than a record: the rest waits in the stream.
            let mut got = vec![0u8; len];
            let mut at = 0;
            while at < len {
                let end = (at + 333).min(len);
                let n = server.read(&mut got[at..end]).await.expect("server read");
                assert_ne!(n, 0, "early end of stream at {at} of {len}");
                at += n;
            }
            assert_eq!(got, sent);
            server.write_all(&sent).await.expect("server write");
            server.flush().await.expect("server flush");
            let mut echoed = vec![0u8; len];
            client.read_exact(&mut echoed).await.expect("client read");
            assert_eq!(echoed, sent);
        }
    }

    #[tokio::test]
    async fn an_idle_stream_holds_no_buffer() {
        let (mut server, mut client) = pair().await;
        read_is_pending(&mut server).await;
        assert_eq!(buffered(&server), 0, "after the handshake");
        client.write_all(&pattern(5000)).await.expect("write");
        client.flush().await.expect("flush");
        let mut got = vec![0u8; 5000];
        server.read_exact(&mut got).await.expect("read");
        server.write_all(&got).await.expect("write back");
        server.flush().await.expect("flush");
        read_is_pending(&mut server).await;
        assert_eq!(buffered(&server), 0, "after traffic both ways");
        client.read_exact(&mut got).await.expect("client read");
    }

    #[tokio::test]
    async fn a_record_that_arrives_in_pieces_is_read_whole() {
        let (mut server, client) = pair().await;
        // Split one record at every few bytes: encrypt with a client-side
        // connection whose TLS bytes are written by hand.
        let (tcp, mut conn) = client.into_inner();
        let mut tcp = tcp;
        let sent = pattern(1000);
        std::io::Write::write_all(&mut conn.writer(), &sent).expect("encrypt");
        let mut wire = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut wire).expect("take the record");
        }
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; 1000];
            server.read_exact(&mut got).await.expect("read");
            (server, got)
        });
        for piece in wire.chunks(7) {
            tcp.write_all(piece).await.expect("write a piece");
            tcp.flush().await.expect("flush");
            tokio::task::yield_now().await;
        }
        let (server, got) = reader.await.expect("reader");
        assert_eq!(got, sent);
        drop(server);
    }

    #[tokio::test]
    async fn a_key_update_is_answered_and_traffic_goes_on() {
        let (mut server, mut client) = pair().await;
        client
            .get_mut()
            .1
            .refresh_traffic_keys()
            .expect("key update");
        client.write_all(b"after the update").await.expect("write");
        client.flush().await.expect("flush");
        let mut got = [0u8; 16];
        server.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"after the update");
        server.write_all(b"answer").await.expect("write");
        server.flush().await.expect("flush");
        let mut answer = [0u8; 6];
        client.read_exact(&mut answer).await.expect("client read");
        assert_eq!(&answer, b"answer");
    }

    #[tokio::test]
    async fn tls_1_2_works_too() {
        let (mut server, mut client) = pair_with(&pki(&[&rustls::version::TLS12])).await;
        client.write_all(b"twelve").await.expect("write");
        client.flush().await.expect("flush");
        let mut got = [0u8; 6];
        server.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"twelve");
        server.write_all(b"ok").await.expect("write");
        server.flush().await.expect("flush");
        let mut answer = [0u8; 2];
        client.read_exact(&mut answer).await.expect("client read");
        assert_eq!(&answer, b"ok");
    }

    #[tokio::test]
    async fn close_notify_ends_the_stream_cleanly_both_ways() {
        let (mut server, mut client) = pair().await;
        client.shutdown().await.expect("client close_notify");
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.expect("a clean end");
        assert!(rest.is_empty());
        server.shutdown().await.expect("server close_notify");
        let mut rest = Vec::new();
        client
            .read_to_end(&mut rest)
            .await
            .expect("the phone sees a clean end, not a truncation");
        assert!(rest.is_empty());
        let err = server.write_all(b"late").await.expect_err("shut down");
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }

    #[tokio::test]
    async fn a_connection_cut_without_close_notify_is_an_error() {
        let (mut server, client) = pair().await;
        let (mut tcp, _) = client.into_inner();
        tcp.shutdown().await.expect("shutdown");
        let mut rest = Vec::new();
        let err = server.read_to_end(&mut rest).await.expect_err("truncated");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        drop(tcp);
    }

    #[tokio::test]
    async fn a_connection_cut_inside_a_record_is_an_error() {
        let (mut server, client) = pair().await;
        let (mut tcp, mut conn) = client.into_inner();
        std::io::Write::write_all(&mut conn.writer(), b"cut short").expect("encrypt");
        let mut wire = Vec::new();
        conn.write_tls(&mut wire).expect("record");
        tcp.write_all(&wire[..wire.len() - 3]).await.expect("write");
        // A FIN, not a reset: the socket stays open (unread session
        // tickets would make closing it a reset).
        tcp.shutdown().await.expect("shutdown");
        let mut rest = Vec::new();
        let err = server.read_to_end(&mut rest).await.expect_err("truncated");
        drop(tcp);
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn what_is_not_tls_fails_the_handshake() {
        let pki = pki(&[&rustls::version::TLS13]);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let phone = tokio::spawn(async move {
            let mut tcp = TcpStream::connect(addr).await.expect("connect");
            tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .expect("write");
            let mut answer = Vec::new();
            let _ = tcp.read_to_end(&mut answer).await;
            answer
        });
        let (tcp, _) = listener.accept().await.expect("accept");
        let err = accept(tcp, pki.server.clone())
            .await
            .err()
            .expect("not TLS");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        // The refusal is a TLS alert record (content type 21), not silence.
        let answer = phone.await.expect("phone");
        assert_eq!(answer.first(), Some(&21), "{answer:?}");
    }

    #[tokio::test]
    async fn a_peer_that_stops_reading_makes_writes_wait() {
        let (mut server, _client) = pair().await;
        let chunk = pattern(MAX_FRAGMENT);
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        // The socket's buffers fill (a few MiB on loopback), then the
        // stream's own, then a write waits instead of buffering more.
        let mut accepted = 0usize;
        let pending =
            (0..100_000).any(
                |_| match Pin::new(&mut server).poll_write(&mut cx, &chunk) {
                    Poll::Ready(Ok(n)) => {
                        accepted += n;
                        false
                    }
                    Poll::Ready(Err(err)) => panic!("write failed: {err}"),
                    Poll::Pending => true,
                },
            );
        assert!(pending, "{accepted} bytes accepted without waiting");
        let held = server.outgoing.len() - server.outgoing_sent;
        assert!(
            held <= MAX_OUTGOING + MAX_FRAGMENT + 4 * RECORD_OVERHEAD,
            "{held} bytes held for a peer that does not read"
        );
    }
}
