//! One authenticated WebSocket session: the loop that decodes the phone's
//! frames and hands them to the router, and writes what the router pushes.
//!
//! A session is one task that owns its socket; it waits on three things at
//! once: a frame from the phone, a frame from the router, and the router
//! ending the session (displaced, revoked, unlinked, server shutdown), plus
//! the idle timer and the answers to its sends. It holds nothing per message: the router keeps the queue, and the
//! session's outbound channel is bounded by the router's delivery window.
//!
//! Memory per idle session is a feature: a future reserves room for its
//! largest await point, so the work done per frame (handling it, writing a
//! batch) is boxed while it runs instead of being reserved inline in every
//! session for its whole life. That costs a small allocation per frame and
//! saves kilobytes per idle session (see BENCHMARKS.md).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use parley_proto::v1::{
    ClientFrame, CloseReason, Error as ErrorFrame, ErrorCode, SendError, ServerAck, ServerFrame,
    client_frame, server_frame,
};
use parley_proto::{close, v1};
use parley_router::ratelimit::TokenBucket;
use parley_router::{Device, Devices, Frames, Outgoing, Read, Router};
use prost::Message as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::time::{Instant, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::Shared;
use crate::envelopes::{self, DevicesChanged};
use crate::metrics::{GatewayMetrics, Held};

/// How long the server waits for the phone to answer its close frame before
/// dropping the connection.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// After a protocol error the phone may still be sending (the rest of an
/// oversized frame, say). Closing a socket with unread data makes the kernel
/// send a reset, which can destroy the error and close frames before the
/// phone reads them; so the server first reads and discards what is still
/// coming, up to this long and this much.
const LINGER: Duration = Duration::from_secs(1);
/// The most the server reads and discards after its `Error` frame, in the
/// close handshake and the linger together. A peer that broke the protocol
/// (a flood, an oversized frame) costs the server at most this much reading
/// and [`CLOSE_TIMEOUT`] + [`LINGER`] of time; then the connection is
/// dropped, and a peer still writing gets a reset. A phone that reads sees
/// the `Error` and the close long before: they were written first.
const LINGER_MAX_BYTES: usize = 256 * 1024;
/// The most router frames written before one flush: enough to coalesce a
/// burst into few TLS records, few enough not to starve the read side.
const MAX_FRAMES_PER_FLUSH: usize = 64;
/// Sends a session may have waiting for their answers (acks wait for the
/// journal's commit). Past it the session stops reading until the oldest is
/// answered. Below the 128 `client_msg_id`s the router remembers per device.
const MAX_PENDING_REPLIES: usize = 64;

/// The answer to one `Send` (or `SetPushToken`), in the order they were
/// read: ready at once (a refusal) or once the router has the message as
/// durably as it promises (the push service has the token).
type Reply<'a> = Pin<Box<dyn Future<Output = server_frame::Frame> + Send + 'a>>;

/// Why a session ends, and so what the phone is told.
#[derive(Debug)]
enum Ending {
    /// A `Closing` frame, then the close code of the reason.
    Closing(CloseReason),
    /// An `Error` frame, then the close code of the error.
    Error(ErrorCode, &'static str),
    /// The phone sent a close frame (tungstenite answers it).
    ClientClosed,
    /// A WebSocket protocol violation (bad masking, bad opcode...): close 1002.
    Protocol,
    /// The socket is gone or stuck: nothing more can be written.
    Gone,
}

/// The session's future. Not an `async fn`: rustc stores an async fn's
/// arguments twice in its state (as arguments, and again as the body's
/// locals), which for the WebSocket stream costs 1.5 KB per session. An
/// `async move` block uses what it captured in place.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn would store the WebSocket stream twice (see above)"
)]
pub(crate) fn run<S, R>(
    mut ws: WebSocketStream<S>,
    device: Device,
    shared: Arc<Shared<R>>,
) -> impl std::future::Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    R: Router,
{
    async move {
        let config = &shared.config;
        let metrics = &shared.metrics;
        let _open = Held::new(&metrics.sessions_open);
        let started = Instant::now();
        let mut frames_allowance = TokenBucket::new(config.frames, started);
        let mut messages_allowance = TokenBucket::new(config.messages, started);
        let mut attached = match Box::pin(shared.router.attach(device)).await {
            Ok(attached) => attached,
            Err(err) => {
                tracing::warn!(user = device.user, device = device.device, error = %err, "router refused the session");
                Box::pin(finish(
                    &mut ws,
                    Ending::Error(ErrorCode::Internal, "router unavailable"),
                    metrics,
                ))
                .await;
                return;
            }
        };
        tracing::debug!("session attached");
        let idle = tokio::time::sleep(config.idle_timeout);
        tokio::pin!(idle);
        // Answers to sends, oldest first. A send is handed to the router as
        // soon as it is read, so the sends of one burst share a journal
        // commit; their answers are written in order as they complete.
        let mut replies: VecDeque<Reply<'_>> = VecDeque::new();

        // Shutdown closes the sessions attached by then through the router
        // (`closed` below); this one may have attached just after.
        let stopping = shared.stopping.load(std::sync::atomic::Ordering::SeqCst);
        let ending = loop {
            if stopping {
                break Ending::Closing(CloseReason::ServerShutdown);
            }
            // The wait holds only small futures; what woke the session is
            // handled in one boxed future, so nothing a wake-up carries (a
            // message, a frame, an answer, their writes) is reserved in the
            // session's own state for its whole life.
            let wake = tokio::select! {
                // Router orders first: a displaced session must stop before it
                // reads another frame.
                biased;
                // The router ends the session: displaced, revoked, unlinked,
                // or the server shutting down.
                reason = &mut attached.closed => {
                    // A dropped sender means the router let go of this session.
                    Wake::End(Ending::Closing(reason.unwrap_or(CloseReason::ServerShutdown)))
                }
                // Answers before router frames: a send's receipt can only
                // exist once its ack is ready, and a phone must see the ack
                // (which tells it the message id) before the receipt.
                reply = async { replies.front_mut().expect("guarded: not empty").await }, if !replies.is_empty() => {
                    replies.pop_front();
                    Wake::Reply(reply)
                }
                frame = attached.frames.recv() => match frame {
                    Some(frame) => Wake::Frame(frame),
                    None => Wake::End(Ending::Closing(CloseReason::ServerShutdown)),
                },
                () = &mut idle => Wake::End(Ending::Closing(CloseReason::IdleTimeout)),
                message = ws.next(), if replies.len() < MAX_PENDING_REPLIES => Wake::Message(message),
            };
            let turn = Turn {
                ws: &mut ws,
                replies: &mut replies,
                frames: &mut attached.frames,
                idle: idle.as_mut(),
                frames_allowance: &mut frames_allowance,
                messages_allowance: &mut messages_allowance,
                shared: &shared,
                device,
            };
            if let Err(ending) = Box::pin(on_wake(turn, wake)).await {
                break ending;
            }
        };
        // Detach before the close handshake, so a reconnecting phone's new
        // session does not wait for this one to finish closing.
        if let Err(err) = Box::pin(shared.router.detach(device, attached.id)).await {
            // The session is over either way; its entries stay queued.
            tracing::warn!(user = device.user, device = device.device, error = %err, "router failed to detach the session");
        }
        tracing::debug!(?ending, "session ended");
        metrics
            .sessions_closed
            .get_or_create(&[("reason", ending.label())])
            .inc();
        // Boxed, like everything a session does once: see `run`'s task size.
        Box::pin(finish(&mut ws, ending, metrics)).await;
    }
}

/// What woke a session.
enum Wake {
    /// The session ends.
    End(Ending),
    /// The oldest pending answer is ready.
    Reply(server_frame::Frame),
    /// The router has a frame for the phone.
    Frame(Bytes),
    /// The phone sent something (or went away).
    Message(Option<Result<Message, WsError>>),
}

/// What the session lends to the work of one wake-up.
struct Turn<'t, 'a, S, R: Router> {
    ws: &'t mut WebSocketStream<S>,
    replies: &'t mut VecDeque<Reply<'a>>,
    frames: &'t mut Frames,
    idle: Pin<&'t mut tokio::time::Sleep>,
    frames_allowance: &'t mut TokenBucket,
    messages_allowance: &'t mut TokenBucket,
    shared: &'a Shared<R>,
    device: Device,
}

/// Does what `wake` asks; an error is how the session ends.
async fn on_wake<S, R>(turn: Turn<'_, '_, S, R>, wake: Wake) -> Result<(), Ending>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    R: Router,
{
    let limit = turn.shared.config.write_timeout;
    let metrics = &turn.shared.metrics;
    match wake {
        Wake::End(ending) => Err(ending),
        Wake::Reply(reply) => write_reply(turn.ws, reply, limit, metrics).await,
        Wake::Frame(frame) => {
            // An answer that became ready since the wait began goes first
            // (this frame may be its receipt), and more router frames are
            // taken only once no answer is waiting.
            write_ready_replies(turn.ws, turn.replies, limit, metrics).await?;
            let more = turn.replies.is_empty().then_some(turn.frames);
            write_batch(turn.ws, frame, more, limit, metrics).await
        }
        Wake::Message(message) => on_message(turn, message).await,
    }
}

/// Handles what the phone sent.
async fn on_message<S, R>(
    turn: Turn<'_, '_, S, R>,
    message: Option<Result<Message, WsError>>,
) -> Result<(), Ending>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    R: Router,
{
    let Turn {
        ws,
        replies,
        mut idle,
        frames_allowance,
        messages_allowance,
        shared,
        device,
        ..
    } = turn;
    let config = &shared.config;
    let metrics = &shared.metrics;
    let now = Instant::now();
    idle.as_mut().reset(now + config.idle_timeout);
    // Every frame counts against the limit, pings included: each costs the
    // server work (a pong is a write).
    if matches!(message, Some(Ok(_))) && frames_allowance.take(config.frames, 1.0, now).is_err() {
        limited(metrics, "frames");
        return Err(Ending::Error(
            ErrorCode::RateLimited,
            "too many frames; slow down",
        ));
    }
    match message {
        None => Err(Ending::Gone),
        Some(Ok(Message::Binary(bytes))) => {
            metrics.frames_in.inc();
            metrics.bytes_in.inc_by(bytes.len() as u64);
            on_frame(shared, device, &bytes, messages_allowance, replies).await
        }
        Some(Ok(Message::Ping(_))) => {
            // tungstenite queued the pong; send it now.
            match timeout(config.write_timeout, ws.flush()).await {
                Ok(Ok(())) => Ok(()),
                _ => Err(Ending::Gone),
            }
        }
        Some(Ok(Message::Pong(_) | Message::Frame(_))) => Ok(()),
        Some(Ok(Message::Text(_))) => Err(Ending::Error(
            ErrorCode::UnsupportedData,
            "text frames are not part of the protocol; send binary ClientFrames",
        )),
        Some(Ok(Message::Close(_))) => Err(Ending::ClientClosed),
        Some(Err(WsError::Capacity(_))) => Err(Ending::Error(
            ErrorCode::FrameTooLarge,
            "frame over the 64 KiB limit",
        )),
        Some(Err(WsError::Protocol(_))) => Err(Ending::Protocol),
        Some(Err(_)) => Err(Ending::Gone),
    }
}

/// Writes `first` and whatever else the router has queued in `more` (up to
/// a bound), then flushes once: a burst of deliveries shares TLS records and
/// syscalls.
async fn write_batch<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    first: Bytes,
    more: Option<&mut Frames>,
    limit: Duration,
    metrics: &GatewayMetrics,
) -> Result<(), Ending> {
    let write = async {
        count_out(metrics, &first);
        ws.feed(Message::Binary(first)).await?;
        let Some(more) = more else {
            return ws.flush().await;
        };
        for _ in 1..MAX_FRAMES_PER_FLUSH {
            let Some(frame) = more.try_recv() else { break };
            count_out(metrics, &frame);
            ws.feed(Message::Binary(frame)).await?;
        }
        ws.flush().await
    };
    match timeout(limit, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(Ending::Gone),
        // The phone stopped reading. Its unacknowledged messages stay
        // queued for its next session; the close is attempted, best effort.
        Err(_) => Err(Ending::Closing(CloseReason::SlowConsumer)),
    }
}

/// Writes the answer to a send.
async fn write_reply<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    reply: server_frame::Frame,
    limit: Duration,
    metrics: &GatewayMetrics,
) -> Result<(), Ending> {
    if let server_frame::Frame::SendError(err) = &reply {
        metrics
            .send_errors
            .get_or_create(&[("code", err.code().as_str_name())])
            .inc();
    }
    write_frame(ws, reply, limit, metrics).await
}

/// Writes the answers at the front of `replies` that are ready now, in
/// order. Each is polled with this task's waker, so one still pending wakes
/// the session when it completes.
async fn write_ready_replies<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    replies: &mut VecDeque<Reply<'_>>,
    limit: Duration,
    metrics: &GatewayMetrics,
) -> Result<(), Ending> {
    while let Some(front) = replies.front_mut() {
        let polled = std::future::poll_fn(|cx| Poll::Ready(front.as_mut().poll(cx))).await;
        let Poll::Ready(reply) = polled else { break };
        replies.pop_front();
        write_reply(ws, reply, limit, metrics).await?;
    }
    Ok(())
}

fn count_out(metrics: &GatewayMetrics, frame: &[u8]) {
    metrics.frames_out.inc();
    metrics.bytes_out.inc_by(frame.len() as u64);
}

async fn write_frame<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    frame: server_frame::Frame,
    limit: Duration,
    metrics: &GatewayMetrics,
) -> Result<(), Ending> {
    let bytes = ServerFrame { frame: Some(frame) }.encode_to_vec();
    count_out(metrics, &bytes);
    match timeout(limit, ws.send(Message::Binary(bytes.into()))).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(Ending::Gone),
    }
}

/// Handles one binary frame from the phone. The answer to a `Send` joins
/// `replies`, to be written in order.
async fn on_frame<'a, R: Router>(
    shared: &'a Shared<R>,
    device: Device,
    bytes: &[u8],
    messages_allowance: &mut TokenBucket,
    replies: &mut VecDeque<Reply<'a>>,
) -> Result<(), Ending> {
    let frame = ClientFrame::decode(bytes)
        .map_err(|_| Ending::Error(ErrorCode::MalformedFrame, "frame is not a ClientFrame"))?;
    let internal = |err: parley_router::RouterError| {
        tracing::warn!(user = device.user, device = device.device, error = %err, "router failed");
        Ending::Error(ErrorCode::Internal, "router unavailable")
    };
    match frame.frame {
        None => Err(Ending::Error(
            ErrorCode::MalformedFrame,
            "ClientFrame has no frame set",
        )),
        Some(client_frame::Frame::Send(send)) => {
            replies.push_back(on_send(shared, device, send, messages_allowance).await);
            Ok(())
        }
        Some(client_frame::Frame::DeliveryAck(ack)) => shared
            .router
            .ack_delivery(device, &ack.message_ids)
            .await
            .map_err(internal),
        Some(client_frame::Frame::MarkRead(read)) => {
            let unavailable = |err: parley_identity::DirectoryError| {
                tracing::warn!(user = device.user, device = device.device, error = %err, "directory failed");
                Ending::Error(ErrorCode::Internal, "account store unavailable")
            };
            let sender_devices = shared
                .directory
                .devices_of(read.to_user)
                .await
                .map_err(unavailable)?;
            // A read receipt for someone who is not registered would create
            // a mailbox nobody reads; it is dropped (there is no reply frame
            // for a receipt).
            if sender_devices.is_empty() {
                return Ok(());
            }
            let reader_devices = own_devices(shared, device).await.map_err(unavailable)?;
            let read = Read {
                sender: read.to_user,
                sender_devices,
                reader_devices,
                message_ids: read.message_ids,
            };
            shared
                .router
                .mark_read(device, read)
                .await
                .map_err(internal)
        }
        Some(client_frame::Frame::ReceiptAck(ack)) => shared
            .router
            .ack_receipts(device, &ack.receipt_ids)
            .await
            .map_err(internal),
        Some(client_frame::Frame::SetPushToken(set)) => {
            replies.push_back(on_set_push_token(shared, device, set, messages_allowance));
            Ok(())
        }
    }
}

/// Registers (or forgets) the device's push token; answers
/// `PushTokenResult`. The push service's part runs in its own task,
/// bounded by the registrar's timeout: its answer waits in `replies` like
/// a send's (so sends after it are answered after it), while deliveries
/// to the phone go on.
fn on_set_push_token<'a, R: Router>(
    shared: &'a Shared<R>,
    device: Device,
    set: v1::SetPushToken,
    allowance: &mut TokenBucket,
) -> Reply<'a> {
    let request_id = set.request_id;
    let answer = move |code: ErrorCode, reason: String| {
        server_frame::Frame::PushTokenResult(v1::PushTokenResult {
            request_id,
            code: code as i32,
            reason,
        })
    };
    // Each registration may call the push service: it counts like a send.
    if allowance
        .take(shared.config.messages, 1.0, Instant::now())
        .is_err()
    {
        limited(&shared.metrics, "messages");
        let refused = answer(
            ErrorCode::RateLimited,
            "too many requests; slow down".to_owned(),
        );
        return Box::pin(async move { refused });
    }
    let Some(push) = shared.push.clone() else {
        let refused = answer(
            ErrorCode::PushPlatformUnavailable,
            "this server sends no push notifications".to_owned(),
        );
        return Box::pin(async move { refused });
    };
    let platform = match v1::PushPlatform::try_from(set.platform) {
        Ok(v1::PushPlatform::Apns) => Some(parley_push::Platform::Apns),
        Ok(v1::PushPlatform::ApnsSandbox) => Some(parley_push::Platform::ApnsSandbox),
        Ok(v1::PushPlatform::Fcm) => Some(parley_push::Platform::Fcm),
        _ => None,
    };
    let task = tokio::spawn(async move {
        if set.token.is_empty() {
            return push.clear(device).await.map(|_| ());
        }
        let Some(platform) = platform else {
            return Err(parley_push::TokenError::InvalidToken(
                "platform must be APNS, APNS_SANDBOX or FCM".to_owned(),
            ));
        };
        push.set(device, platform, &set.token).await
    });
    Box::pin(async move {
        use parley_push::TokenError;
        match task.await {
            Ok(Ok(())) => answer(ErrorCode::Unspecified, String::new()),
            Ok(Err(TokenError::InvalidToken(reason))) => {
                answer(ErrorCode::InvalidPushToken, reason)
            }
            Ok(Err(error @ TokenError::Unconfigured(_))) => {
                answer(ErrorCode::PushPlatformUnavailable, error.to_string())
            }
            Ok(Err(TokenError::Failed(detail))) => {
                tracing::warn!(user = device.user, device = device.device, error = %detail, "push token not registered");
                answer(
                    ErrorCode::PushFailed,
                    "the push service failed; retry later".to_owned(),
                )
            }
            Ok(Err(error)) => {
                tracing::warn!(user = device.user, device = device.device, %error, "push token not registered");
                answer(ErrorCode::Internal, "retry later".to_owned())
            }
            Err(join) => {
                tracing::error!(user = device.user, device = device.device, error = %join, "push token registration panicked");
                answer(ErrorCode::Internal, "retry later".to_owned())
            }
        }
    })
}

/// Validates one message and hands it to the router; returns its answer:
/// a refusal at once, or the router's ack (or refusal) once it has it.
async fn on_send<'a, R: Router>(
    shared: &'a Shared<R>,
    device: Device,
    send: v1::Send,
    messages_allowance: &mut TokenBucket,
) -> Reply<'a> {
    let client_msg_id = send.client_msg_id;
    let refuse_after =
        move |code, reason, retry_after_ms| send_error(client_msg_id, code, reason, retry_after_ms);
    let refuse = move |code, reason| send_error(client_msg_id, code, reason, 0);
    let now = |frame: server_frame::Frame| -> Reply<'a> { Box::pin(std::future::ready(frame)) };
    // INVALID_MESSAGE, as the .proto defines it: a required field unset
    // (proto3 cannot tell unset from 0 or empty), or a body over the limit.
    let invalid = if client_msg_id == 0 {
        Err("client_msg_id must not be 0")
    } else if send.to_user == 0 {
        Err("to_user is not set")
    } else {
        envelopes::check_form(&send.body, &send.envelopes)
    };
    if let Err(reason) = invalid {
        return now(refuse(ErrorCode::InvalidMessage, reason));
    }
    if let Err(wait) = messages_allowance.take(shared.config.messages, 1.0, Instant::now()) {
        limited(&shared.metrics, "messages");
        return now(refuse_after(
            ErrorCode::RateLimited,
            "sending too fast; retry later",
            millis(wait),
        ));
    }
    let devices = async {
        let to = shared.directory.devices_of(send.to_user).await?;
        let from = own_devices(shared, device).await?;
        Ok::<_, parley_identity::DirectoryError>((to, from))
    };
    let (to_devices, from_devices) = match devices.await {
        Ok((to, _)) if to.is_empty() => {
            return now(refuse(
                ErrorCode::UnknownRecipient,
                "no such user: to_user takes a user id (look a phone number up first)",
            ));
        }
        Ok(devices) => devices,
        Err(err) => {
            tracing::warn!(user = device.user, device = device.device, error = %err, "directory failed");
            return now(refuse(
                ErrorCode::Internal,
                "account store unavailable; retry",
            ));
        }
    };
    let mut outgoing = Outgoing {
        client_msg_id,
        to: send.to_user,
        to_devices,
        from_devices,
        payload: parley_router::Payload::Shared(bytes::Bytes::new()),
    };
    outgoing.payload = match envelopes::payload(send.body, send.envelopes, || {
        outgoing.targets(device)
    }) {
        Ok(payload) => payload,
        Err(DevicesChanged { missing, extra }) => {
            return now(server_frame::Frame::SendError(SendError {
                client_msg_id,
                code: ErrorCode::DevicesChanged.into(),
                reason: "the envelopes do not match the devices of the recipient and the sender; \
                         add the missing, drop the extra, and resend"
                    .to_owned(),
                retry_after_ms: 0,
                missing_devices: missing,
                extra_devices: extra,
            }));
        }
    };
    // The router queues the message now (its place in every queue is taken
    // here, in the order this session read its sends); the ack waits for
    // the returned future.
    let routed = shared.router.submit(device, outgoing);
    Box::pin(async move { answer(shared, device, client_msg_id, routed.await) })
}

/// The devices of `device`'s own user, itself among them even if the
/// directory no longer lists it (it is being unlinked: its session ends
/// soon, and its sends still go to the others).
async fn own_devices<R: Router>(
    shared: &Shared<R>,
    device: Device,
) -> Result<Devices, parley_identity::DirectoryError> {
    let devices = shared.directory.devices_of(device.user).await?;
    if devices.contains(device.device) {
        return Ok(devices);
    }
    let mut with = devices.as_slice().to_vec();
    with.push(device.device);
    Ok(Devices::new(with))
}

/// A refusal of the send `client_msg_id`; nothing was queued.
fn send_error(
    client_msg_id: u64,
    code: ErrorCode,
    reason: &str,
    retry_after_ms: u32,
) -> server_frame::Frame {
    server_frame::Frame::SendError(SendError {
        client_msg_id,
        code: code.into(),
        reason: reason.to_owned(),
        retry_after_ms,
        ..SendError::default()
    })
}

/// The frame that answers a send the router took or refused.
fn answer<R: Router>(
    shared: &Shared<R>,
    device: Device,
    client_msg_id: u64,
    routed: Result<parley_router::Accepted, parley_router::SendError>,
) -> server_frame::Frame {
    match routed {
        Ok(accepted) => server_frame::Frame::Ack(ServerAck {
            client_msg_id,
            message_id: accepted.message_id,
            timestamp_ms: accepted.timestamp_ms,
        }),
        Err(parley_router::SendError::RateLimited { retry_after_ms }) => {
            limited(&shared.metrics, "inbound_bytes");
            send_error(
                client_msg_id,
                ErrorCode::RateLimited,
                "the recipient is receiving too fast; retry later",
                retry_after_ms,
            )
        }
        Err(parley_router::SendError::MailboxFull { retry_after_ms }) => send_error(
            client_msg_id,
            ErrorCode::MailboxFull,
            "the recipient's mailbox is full; retry later",
            retry_after_ms,
        ),
        Err(parley_router::SendError::Reused) => send_error(
            client_msg_id,
            ErrorCode::ClientMsgIdReused,
            "this client_msg_id was used for a different message; use a new one",
            0,
        ),
        Err(parley_router::SendError::Router(err)) => {
            tracing::warn!(user = device.user, device = device.device, error = %err, "router failed");
            send_error(
                client_msg_id,
                ErrorCode::Internal,
                "router unavailable; retry",
                0,
            )
        }
    }
}

/// Tells the phone why the session ends, closes with the matching code, and
/// waits briefly for the phone's close frame. After an error, what the phone
/// still sends is read and discarded within [`LINGER_MAX_BYTES`].
async fn finish<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    ending: Ending,
    metrics: &GatewayMetrics,
) {
    let lingering = matches!(ending, Ending::Error(..) | Ending::Protocol);
    // Bytes of the phone's messages discarded since the error.
    let mut discarded = 0;
    let (frame, code) = match ending {
        Ending::Gone => return,
        Ending::ClientClosed => (None, None),
        Ending::Protocol => (None, Some((1002, "protocol error"))),
        Ending::Closing(reason) => (
            Some(server_frame::Frame::Closing(v1::Closing {
                reason: reason.into(),
                detail: reason.as_str_name().to_ascii_lowercase(),
            })),
            Some((close::for_reason(reason), reason_text(reason))),
        ),
        Ending::Error(code, reason) => (
            Some(server_frame::Frame::Error(ErrorFrame {
                code: code.into(),
                reason: reason.to_owned(),
            })),
            Some((close::for_error(code), code.as_str_name())),
        ),
    };
    let closing = async {
        if let Some(frame) = frame {
            let bytes = ServerFrame { frame: Some(frame) }.encode_to_vec();
            count_out(metrics, &bytes);
            ws.send(Message::Binary(bytes.into())).await?;
        }
        match code {
            Some((code, reason)) => {
                let close_frame = CloseFrame {
                    code: CloseCode::from(code),
                    reason: reason.into(),
                };
                ws.close(Some(close_frame)).await?;
            }
            // The phone closed first, and tungstenite queued the answering
            // close frame (RFC 6455, 5.5.1). Only a flush sends it: a
            // `close` after the phone's is refused as a send after closing,
            // and the phone would see the connection end without an answer.
            None => ws.flush().await?,
        }
        // Read until the phone answers the close (or gives up). A phone that
        // broke the protocol may be flooding: it gets a bounded read.
        while let Some(Ok(message)) = ws.next().await {
            if lingering {
                discarded += message.len();
                if discarded >= LINGER_MAX_BYTES {
                    break;
                }
            }
        }
        Ok::<_, WsError>(())
    };
    let _ = timeout(CLOSE_TIMEOUT, closing).await;
    if lingering && discarded < LINGER_MAX_BYTES {
        let discard = async {
            let stream = ws.get_mut();
            let mut buf = [0u8; 1024];
            let mut total = discarded;
            while total < LINGER_MAX_BYTES {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => total += n,
                }
            }
        };
        let _ = timeout(LINGER, discard).await;
    }
}

fn limited(metrics: &GatewayMetrics, limiter: &'static str) {
    metrics
        .rate_limited
        .get_or_create(&[("limiter", limiter)])
        .inc();
}

fn millis(wait: Duration) -> u32 {
    u32::try_from(wait.as_millis()).unwrap_or(u32::MAX).max(1)
}

/// Every `reason` label of `gateway_sessions_closed` ([`Ending::label`]).
pub(crate) const CLOSE_REASONS: [&str; 15] = [
    "client_closed",
    "gone",
    "displaced",
    "revoked",
    "idle_timeout",
    "slow_consumer",
    "unlinked",
    "shutdown",
    "unspecified",
    "malformed_frame",
    "frame_too_large",
    "unsupported_data",
    "rate_limited",
    "protocol_error",
    "internal",
];

impl Ending {
    /// The `reason` label of `gateway_sessions_closed`.
    fn label(&self) -> &'static str {
        match self {
            Ending::Closing(reason) => match reason {
                CloseReason::Displaced => "displaced",
                CloseReason::Revoked => "revoked",
                CloseReason::ServerShutdown => "shutdown",
                CloseReason::IdleTimeout => "idle_timeout",
                CloseReason::SlowConsumer => "slow_consumer",
                CloseReason::Unlinked => "unlinked",
                CloseReason::Unspecified => "unspecified",
            },
            Ending::Error(code, _) => match code {
                ErrorCode::MalformedFrame => "malformed_frame",
                ErrorCode::FrameTooLarge => "frame_too_large",
                ErrorCode::UnsupportedData => "unsupported_data",
                ErrorCode::RateLimited => "rate_limited",
                _ => "internal",
            },
            Ending::ClientClosed => "client_closed",
            Ending::Protocol => "protocol_error",
            Ending::Gone => "gone",
        }
    }
}

fn reason_text(reason: CloseReason) -> &'static str {
    match reason {
        CloseReason::Displaced => "displaced by a newer session",
        CloseReason::Revoked => "credential revoked; register again",
        CloseReason::ServerShutdown => "server shutting down; reconnect",
        CloseReason::IdleTimeout => "idle timeout",
        CloseReason::SlowConsumer => "not reading",
        CloseReason::Unlinked => "this device was removed from its account; link it again",
        CloseReason::Unspecified => "closing",
    }
}

#[cfg(test)]
mod tests {
    use super::{CLOSE_REASONS, CloseReason, Ending, ErrorCode};

    #[test]
    fn every_close_label_is_zero_initialised() {
        let mut endings = vec![Ending::ClientClosed, Ending::Protocol, Ending::Gone];
        for reason in 0..=6 {
            endings.push(Ending::Closing(
                CloseReason::try_from(reason).expect("a close reason"),
            ));
        }
        for code in 0..=10 {
            endings.push(Ending::Error(
                ErrorCode::try_from(code).expect("an error code"),
                "",
            ));
        }
        for ending in endings {
            assert!(CLOSE_REASONS.contains(&ending.label()), "{ending:?}");
        }
    }

    /// The size of the future an async function returns, without calling it.
    fn future_size<A, B, C, F>(_: fn(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn the_connection_task_holds_little_more_than_pointers() {
        fn future_size4<A, B, C, D, F>(_: fn(A, B, C, D) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        let task = future_size4(crate::connection::<parley_router::MemoryRouter>);
        // Every session's task carries this future (tokio rounds a task to
        // 128 bytes: with its header and trailer, 384). The handshake, its
        // timer and the session are boxed; arguments stored twice (an
        // `async fn`) or the timer inline would pass this.
        assert!(task <= 200, "connection future {task} bytes");
    }

    #[test]
    fn the_session_future_holds_the_websocket_stream_once() {
        type Tls = crate::tls::TlsStream;
        let ws = std::mem::size_of::<tokio_tungstenite::WebSocketStream<Tls>>();
        let run = future_size(super::run::<Tls, parley_router::MemoryRouter>);
        // Every idle session carries this future: the stream once, plus the
        // loop's small wait state. Twice the stream means the arguments are
        // being copied into the body again (an `async fn`).
        assert!(
            run < 2 * ws,
            "session future {run} bytes, stream {ws} bytes"
        );
        // What a wake-up carries (a message, a frame, their writes) is
        // boxed while it is handled: the wait itself is under 640 bytes.
        assert!(
            run < ws + 640,
            "session future {run} bytes, stream {ws} bytes"
        );
    }
}
