//! The Parley wire protocol, version 1.
//!
//! `proto/parley/v1/session.proto` is the contract phone apps are built from;
//! this crate compiles it with prost and adds what both ends of a connection
//! share beyond the messages themselves:
//!
//! - [`v1`]: the generated frame types ([`v1::ClientFrame`], [`v1::ServerFrame`], ...).
//! - [`limits`]: the sizes every implementation must agree on.
//! - [`close`]: the WebSocket close codes and how they map to reasons.

#![forbid(unsafe_code)]

/// Generated from `proto/parley/v1/session.proto`.
#[allow(missing_debug_implementations, clippy::all)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/parley.v1.rs"));
}

/// Limits both ends of a session must respect.
pub mod limits {
    /// The largest WebSocket message (and frame) either side may send.
    /// A larger one is refused with close code 1009.
    pub const MAX_FRAME_BYTES: usize = 64 * 1024;
    /// The largest `Send.body`: the frame limit less room for the envelope.
    pub const MAX_BODY_BYTES: usize = MAX_FRAME_BYTES - 1024;
    /// The WebSocket path of protocol v1.
    pub const WS_PATH: &str = "/v1/ws";
}

/// WebSocket close codes used by the gateway. Codes 1000-1015 are the
/// standard ones (RFC 6455 section 7.4.1); 4000-4999 are Parley's own.
pub mod close {
    use crate::v1::{CloseReason, ErrorCode};

    /// Server shutting down or draining: reconnect with backoff.
    pub const GOING_AWAY: u16 = 1001;
    /// A text frame was sent; the protocol is binary only.
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// A binary frame did not decode as a `ClientFrame`.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// Policy violation, e.g. a client that keeps sending after an error.
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A frame over [`crate::limits::MAX_FRAME_BYTES`].
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// The server failed; reconnect with backoff.
    pub const INTERNAL_ERROR: u16 = 1011;
    /// A newer session for the same device replaced this one. Do not reconnect
    /// automatically: another copy of the app holds the session.
    pub const DISPLACED: u16 = 4001;
    /// The credential was revoked by a re-registration. Register again.
    pub const REVOKED: u16 = 4002;
    /// The phone was silent for longer than the idle timeout.
    pub const IDLE_TIMEOUT: u16 = 4003;
    /// The phone did not read the server's frames in time.
    pub const SLOW_CONSUMER: u16 = 4004;
    /// The device was removed from its account. Link it again.
    pub const UNLINKED: u16 = 4005;

    /// The close code that follows a `Closing` frame with this reason.
    pub fn for_reason(reason: CloseReason) -> u16 {
        match reason {
            CloseReason::Displaced => DISPLACED,
            CloseReason::Revoked => REVOKED,
            CloseReason::ServerShutdown => GOING_AWAY,
            CloseReason::IdleTimeout => IDLE_TIMEOUT,
            CloseReason::SlowConsumer => SLOW_CONSUMER,
            CloseReason::Unlinked => UNLINKED,
            CloseReason::Unspecified => INTERNAL_ERROR,
        }
    }

    /// The close code that follows an `Error` frame with this code.
    pub fn for_error(code: ErrorCode) -> u16 {
        match code {
            ErrorCode::MalformedFrame | ErrorCode::InvalidMessage => INVALID_PAYLOAD,
            ErrorCode::FrameTooLarge => MESSAGE_TOO_BIG,
            ErrorCode::UnsupportedData => UNSUPPORTED_DATA,
            ErrorCode::RateLimited => POLICY_VIOLATION,
            ErrorCode::UnknownRecipient
            | ErrorCode::DevicesChanged
            | ErrorCode::ClientMsgIdReused
            | ErrorCode::MailboxFull
            | ErrorCode::InvalidPushToken
            | ErrorCode::PushPlatformUnavailable
            | ErrorCode::PushFailed
            | ErrorCode::Internal
            | ErrorCode::Unspecified => INTERNAL_ERROR,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::v1::{ClientFrame, Send, client_frame};
    use prost::Message;

    #[test]
    fn client_frame_round_trips() {
        let frame = ClientFrame {
            frame: Some(client_frame::Frame::Send(Send {
                client_msg_id: 7,
                to_user: u64::MAX,
                body: bytes::Bytes::from_static(b"hi"),
                envelopes: Vec::new(),
            })),
        };
        let decoded = ClientFrame::decode(frame.encode_to_vec().as_slice()).expect("decodes");
        assert_eq!(decoded, frame);
    }

    #[test]
    fn garbage_does_not_decode() {
        // Field 1, wire type 2 (length-delimited), length far past the end.
        assert!(ClientFrame::decode(&[0x0a, 0xff, 0x01][..]).is_err());
    }
}
