//! The Parley wire protocol, version 1.
//!
//! `proto/parley/v1/session.proto` is the contract phone apps are built from,
//! and `proto/parley/v1/content.proto` the standard format of a message body
//! (text and attachments); this crate compiles them with prost and adds what
//! both ends of a connection share beyond the messages themselves:
//!
//! - [`v1`]: the generated frame types ([`v1::ClientFrame`], [`v1::ServerFrame`], ...)
//!   and the body format ([`v1::Content`]).
//! - [`content`]: how a body holds a [`v1::Content`] (a one-byte marker), and
//!   telling it from a plain text body.
//! - [`limits`]: the sizes every implementation must agree on.
//! - [`close`]: the WebSocket close codes and how they map to reasons.

#![forbid(unsafe_code)]

/// Generated from `proto/parley/v1/session.proto` and `content.proto`.
#[allow(missing_debug_implementations, clippy::all)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/parley.v1.rs"));
}

/// A message body that holds a [`v1::Content`]: `0xFF || Content`.
///
/// The server never reads bodies; this is the convention Parley's clients
/// agree on (docs/protocol.md, "Media"; docs/decisions.md says why a marker
/// byte). 0xFF never occurs in UTF-8, so no text body is ever mistaken for
/// a Content, and a Content is never shown as text by a client that knows
/// the marker.
pub mod content {
    use prost::Message;

    use crate::v1::Content;

    /// The first byte of a body that holds a [`Content`].
    pub const MARKER: u8 = 0xFF;
    /// First bytes reserved for future body formats (0xF5..=0xFE: like
    /// 0xFF, never in UTF-8).
    pub const RESERVED: std::ops::RangeInclusive<u8> = 0xF5..=0xFE;
    /// The largest thumbnail a [`crate::v1::Thumbnail`] may carry.
    pub const MAX_THUMBNAIL_BYTES: usize = 16 * 1024;

    /// What a body is.
    #[derive(Clone, Debug, PartialEq)]
    pub enum Body<'a> {
        /// A Content (the marker, then a Content that decoded).
        Content(Content),
        /// Plain text: any body that does not start with a marker byte.
        /// Not necessarily valid UTF-8 (the sender chose the bytes).
        Text(&'a [u8]),
        /// A body that starts with the Content marker but does not decode,
        /// or with a reserved byte: a newer or broken sender.
        Unsupported,
    }

    /// `0xFF || content`.
    pub fn encode(content: &Content) -> Vec<u8> {
        let mut body = Vec::with_capacity(1 + content.encoded_len());
        body.push(MARKER);
        content.encode(&mut body).expect("a Vec grows as needed");
        body
    }

    /// Tells what `body` is.
    pub fn decode(body: &[u8]) -> Body<'_> {
        match body.split_first() {
            Some((&MARKER, rest)) => match Content::decode(rest) {
                Ok(content) => Body::Content(content),
                Err(_) => Body::Unsupported,
            },
            Some((first, _)) if RESERVED.contains(first) => Body::Unsupported,
            _ => Body::Text(body),
        }
    }
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

    mod content {
        use crate::content::{Body, MARKER, decode, encode};
        use crate::v1::{Attachment, Content, attachment};
        use proptest::prelude::*;

        #[test]
        fn a_content_round_trips_and_text_stays_text() {
            let content = Content {
                text: "look".into(),
                attachments: vec![Attachment {
                    location: Some(attachment::Location::MediaId("ab".repeat(16))),
                    size: 12,
                    sha256: vec![7; 32],
                    ..Attachment::default()
                }],
            };
            let body = encode(&content);
            assert_eq!(body[0], MARKER);
            assert_eq!(decode(&body), Body::Content(content));
            assert_eq!(decode(b"hello"), Body::Text(b"hello"));
            assert_eq!(decode(b""), Body::Text(b""));
            // An empty Content is one byte and still a Content.
            assert_eq!(decode(&[MARKER]), Body::Content(Content::default()));
            assert_eq!(decode(&[MARKER, 0xff, 0xff]), Body::Unsupported);
            assert_eq!(decode(&[0xF5, 1]), Body::Unsupported);
        }

        proptest! {
            /// No text is ever taken for a Content: whatever a person
            /// types (any UTF-8), a receiver shows it as text.
            #[test]
            fn any_utf8_text_is_text(text in ".*") {
                prop_assert_eq!(decode(text.as_bytes()), Body::Text(text.as_bytes()));
            }

            #[test]
            fn any_content_round_trips(text in ".*", size in any::<u64>(), name in ".*") {
                let content = Content {
                    text,
                    attachments: vec![Attachment {
                        location: Some(attachment::Location::Url(name.clone())),
                        size,
                        file_name: name,
                        ..Attachment::default()
                    }],
                };
                let body = encode(&content);
                prop_assert_eq!(decode(&body), Body::Content(content));
            }
        }
    }

    #[test]
    fn garbage_does_not_decode() {
        // Field 1, wire type 2 (length-delimited), length far past the end.
        assert!(ClientFrame::decode(&[0x0a, 0xff, 0x01][..]).is_err());
    }
}
