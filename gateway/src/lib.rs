//! The Parley edge gateway: where phones connect.
//!
//! It accepts TCP connections, runs the TLS handshake (rustls) and the
//! WebSocket upgrade with the device's bearer token under one handshake
//! timeout, then runs one task per session that decodes the phone's frames
//! for the [`Router`] and writes what the router pushes back.
//!
//! Modules:
//! - `upgrade`: the HTTP upgrade request, authentication, 101 or an HTTP error.
//! - `session`: the session loop (frames in, frames out, keepalive, closing).
//! - `envelopes`: a send's content checked against the devices it goes to.
//! - [`metrics`]: what the gateway counts.
//!
//! Everything a peer controls is bounded or timed: connections (permits),
//! the handshake, the request head, frame sizes, silence (idle timeout) and
//! writes to a phone that stops reading (write timeout).

#![forbid(unsafe_code)]

mod envelopes;
pub mod metrics;
mod session;
mod tls;
mod upgrade;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parley_identity::{Authenticator, CachedDirectory, Directory};
use parley_proto::limits::MAX_FRAME_BYTES;
use parley_router::ratelimit::Rate;
use parley_router::{Device, Router};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tracing::Instrument;

pub use metrics::GatewayMetrics;

/// Entry points for the fuzz targets in `fuzz/` (built only by cargo-fuzz,
/// which sets `cfg(fuzzing)`).
#[cfg(fuzzing)]
pub mod fuzzing {
    /// Parses an upgrade request head as the gateway does, before any
    /// authentication. `true` if it is a v1 upgrade with a bearer token.
    pub fn parse_upgrade_head(head: &[u8]) -> bool {
        crate::upgrade::parse(head).is_ok()
    }
}
use metrics::Held;

/// Settings of the gateway. Every value bounds something a peer controls.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// TLS handshake plus WebSocket upgrade (with authentication) must finish
    /// within this time, or the connection is dropped.
    pub handshake_timeout: Duration,
    /// A session with no frame and no ping from the phone for this long is
    /// closed with `IDLE_TIMEOUT`. Phones ping at least once a minute.
    pub idle_timeout: Duration,
    /// A write to the phone that does not complete within this time closes
    /// the session with `SLOW_CONSUMER`; its messages stay queued.
    pub write_timeout: Duration,
    /// Connections held at once (in handshake or in session). Past it, the
    /// gateway stops accepting until one ends.
    pub max_connections: usize,
    /// tungstenite's read buffer per session, which it keeps for the
    /// session's life. Small, because most sessions are idle; tungstenite's
    /// 128 KiB default would cost 128 KiB each. It only bounds how much is
    /// copied per read from the TLS stream's decrypted plaintext (no
    /// syscall): a larger message gets room for its whole length from its
    /// header. 256 bytes holds a phone's usual frame (a short text, an
    /// ack, a receipt) in one read; a 64 KiB frame takes 256 copies.
    pub read_buffer_bytes: usize,
    /// Outgoing frames are gathered up to this size before being written,
    /// so bursts share TLS records.
    pub write_buffer_bytes: usize,
    /// How long shutdown waits for sessions to close before giving up.
    pub shutdown_grace: Duration,
    /// Frames one session may send (any kind, pings included): past it the
    /// session is closed with `RATE_LIMITED` (close 1008). Bounds the work a
    /// flood costs.
    pub frames: Rate,
    /// Messages one session may send: past it a `Send` gets
    /// `SendError{RATE_LIMITED}` with a retry hint, and the session goes on.
    pub messages: Rate,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(90),
            write_timeout: Duration::from_secs(30),
            max_connections: 100_000,
            read_buffer_bytes: 256,
            write_buffer_bytes: 4 * 1024,
            shutdown_grace: Duration::from_secs(10),
            frames: Rate::new(500.0, 100.0),
            messages: Rate::new(100.0, 20.0),
        }
    }
}

impl GatewayConfig {
    fn websocket(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .read_buffer_size(self.read_buffer_bytes)
            .write_buffer_size(self.write_buffer_bytes)
            // A frame can be written whole past the target size, and a
            // failing socket must not grow the buffer without bound.
            .max_write_buffer_size(self.write_buffer_bytes + 2 * MAX_FRAME_BYTES)
            .max_message_size(Some(MAX_FRAME_BYTES))
            .max_frame_size(Some(MAX_FRAME_BYTES))
    }
}

/// What every connection task shares.
#[derive(Debug)]
struct Shared<R> {
    router: R,
    auth: Authenticator,
    /// Who exists and which devices they have, cached for the message path.
    directory: CachedDirectory,
    config: GatewayConfig,
    websocket: WebSocketConfig,
    metrics: GatewayMetrics,
    /// Registers push tokens sent over the session (`SetPushToken`);
    /// without, every platform is unavailable.
    push: Option<parley_push::Registrar>,
    /// Set when shutdown begins. Sessions attached by then are closed
    /// through the router ([`Router::close_all`]); one that attaches later
    /// reads this right after its attach and closes itself.
    stopping: AtomicBool,
}

/// The gateway: build it once, then [`Gateway::serve`] a listener.
#[derive(Debug)]
pub struct Gateway<R> {
    shared: Arc<Shared<R>>,
}

impl<R: Router> Gateway<R> {
    pub fn new(
        router: R,
        auth: Authenticator,
        directory: CachedDirectory,
        config: GatewayConfig,
        metrics: GatewayMetrics,
    ) -> Self {
        let websocket = config.websocket();
        Self {
            shared: Arc::new(Shared {
                router,
                auth,
                directory,
                config,
                websocket,
                metrics,
                push: None,
                stopping: AtomicBool::new(false),
            }),
        }
    }

    /// Registers the push tokens phones send over their sessions with
    /// `push`. Before [`Gateway::serve`].
    pub fn with_push(mut self, push: parley_push::Registrar) -> Self {
        Arc::get_mut(&mut self.shared)
            .expect("with_push before serving")
            .push = Some(push);
        self
    }

    /// Accepts connections on `listener` until `shutdown` completes, then
    /// tells every session to reconnect (`SERVER_SHUTDOWN`, close 1001) and
    /// waits up to the shutdown grace period for them to close.
    pub async fn serve(
        self,
        listener: TcpListener,
        tls: Arc<rustls::ServerConfig>,
        shutdown: impl Future<Output = ()>,
    ) {
        let max = self.shared.config.max_connections;
        let permits = Arc::new(Semaphore::new(max));
        tokio::pin!(shutdown);

        loop {
            // Wait for a permit before accepting: at the limit, new phones
            // wait in the listen backlog instead of being accepted and dropped.
            let permit = tokio::select! {
                () = &mut shutdown => break,
                permit = permits.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            let (tcp, peer) = tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        // Out of file descriptors or similar: back off
                        // instead of spinning; sessions keep running.
                        tracing::warn!(error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let shared = self.shared.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                connection(tcp, peer, tls, shared).await;
                drop(permit);
            });
        }

        drop(listener);
        // Every session is told `Closing{SERVER_SHUTDOWN}`: those attached
        // now by the router, those attaching later by the flag (read after
        // their attach, which the router orders with this close).
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared
            .router
            .close_all(parley_proto::v1::CloseReason::ServerShutdown)
            .await;
        let grace = self.shared.config.shutdown_grace;
        let all = u32::try_from(max).unwrap_or(u32::MAX);
        if tokio::time::timeout(grace, permits.acquire_many(all))
            .await
            .is_err()
        {
            tracing::warn!("sessions still open after the shutdown grace period");
        }
    }
}

/// One connection, from TCP to the end of its session. Runs in its own task,
/// so a slow handshake never holds up the accept loop.
///
/// The task's own state is kept to a few pointers: the handshake (with its
/// timer) and the session are each a boxed future, and the handshake's
/// returns the session's. A future is as large as its largest state, so
/// inline they would reserve the handshake's room (TLS, upgrade,
/// authentication, the 112-byte timer) and a second copy of the WebSocket
/// stream in every idle session's task. Not an `async fn`, which would
/// store its arguments twice (see `session::run`): tokio rounds a task to
/// 128 bytes, and this keeps it at 384 instead of 640.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn would store its arguments twice (see above)"
)]
fn connection<R: Router>(
    tcp: TcpStream,
    peer: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    shared: Arc<Shared<R>>,
) -> impl Future<Output = ()> + Send {
    async move {
        let _open = Held::new(&shared.metrics.connections_open);
        let timeout = shared.config.handshake_timeout;
        let handshake = Box::pin(tokio::time::timeout(
            timeout,
            handshake(tcp, tls, shared.clone()),
        ));
        // Bound in its own statement, so the finished handshake (its box
        // and the timer) is freed before the session runs, not kept alive
        // as a temporary of the match for the session's whole life.
        let outcome = handshake.await;
        let reason = match outcome {
            Ok(Ok((device, session))) => {
                session.await;
                // Seen to the end: a session of days counts from its last day.
                report_seen(&shared, device);
                return;
            }
            Ok(Err(reason)) => reason,
            Err(_elapsed) => "timeout",
        };
        tracing::debug!(%peer, reason, "handshake failed");
        shared
            .metrics
            .login_failures
            .get_or_create(&[("reason", reason)])
            .inc();
    }
}

/// A boxed session, ready to run.
type SessionFuture = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// Tells the directory that `device` has (or just had) a session, for its
/// last-seen time, in a task of its own: the session never waits on it, and
/// a failure (the database is down) only delays the record, so it is logged
/// at debug level, not per login at warn.
fn report_seen<R>(shared: &Shared<R>, device: Device) {
    let directory = shared.directory.clone();
    tokio::spawn(async move {
        if let Err(error) = directory.seen(device.user, device.device).await {
            tracing::debug!(%error, "last-seen time not recorded");
        }
    });
}

/// TLS, upgrade and authentication. Returns the device and the session to
/// run, or the `reason` label of the failure.
async fn handshake<R: Router>(
    tcp: TcpStream,
    tls: Arc<rustls::ServerConfig>,
    shared: Arc<Shared<R>>,
) -> Result<(Device, SessionFuture), &'static str> {
    let accepted = std::time::Instant::now();
    // Small frames (acks, receipts) must go out at once.
    let _ = tcp.set_nodelay(true);
    let tls = tls::accept(tcp, tls).await.map_err(|_| "tls")?;
    let (ws, claims) = upgrade::accept(tls, &shared.auth, shared.websocket)
        .await
        .map_err(|err| match err {
            upgrade::UpgradeError::Refused(refusal) => refusal.code(),
            upgrade::UpgradeError::Io(_) => "io",
        })?;
    shared.metrics.logins.inc();
    shared
        .metrics
        .handshake_seconds
        .observe(accepted.elapsed().as_secs_f64());
    let device = Device {
        user: claims.user,
        device: claims.device,
    };
    report_seen(&shared, device);
    // A debug span: at the default level (info) it is not created at all.
    // An enabled span costs each session ~400 B (the subscriber's slot and
    // its formatted fields), for the debug lines it frames; the session's
    // warnings name the device themselves.
    let span = tracing::debug_span!("session", user = device.user, device = device.device);
    let session = session::run(ws, device, shared);
    // Disabled, the span is not carried at all (nor entered at every poll).
    let session: SessionFuture = if span.is_disabled() {
        Box::pin(session)
    } else {
        Box::pin(session.instrument(span))
    };
    Ok((device, session))
}
