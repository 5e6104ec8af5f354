//! The one error type of the client library.
//!
//! Callers branch on it: an end-to-end test asserts that a revoked device gets
//! `Rejected { status: 401 }`, the CLI tells a displaced user why its session
//! ended. So every variant names a cause a caller can act on, and none of them
//! carries a token or a phone number.

use std::fmt;

/// Everything that can go wrong talking to a Parley server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The registration API answered with an error status and a documented
    /// error code (`{"error": {"code": "UPPER_SNAKE", "message": "..."}}`).
    #[error("{code} (HTTP {status}): {message}{}", Hints(*attempts_left, *retry_after))]
    Api {
        status: u16,
        /// The documented `UPPER_SNAKE` code; `HTTP_<status>` when the body
        /// did not carry one (a proxy's error page, say).
        code: String,
        message: String,
        /// Wrong-PIN answers say how many tries remain.
        attempts_left: Option<u32>,
        /// Seconds until a retry may succeed, from the body or `Retry-After`.
        retry_after: Option<u64>,
    },
    /// The HTTP request failed before an answer arrived (refused, reset, TLS).
    /// Transparent: reqwest's message already names the URL, and its source
    /// chain the cause.
    #[error(transparent)]
    Http(reqwest::Error),
    /// Building the TLS configuration or the TLS handshake failed.
    #[error("TLS: {0}")]
    Tls(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The server said something this client does not understand: an
    /// undecodable frame, a text frame, a malformed JSON answer.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The caller passed something that cannot be sent: a bad URL, a token
    /// that is not a valid header value, a body over the frame limit.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The server refused the WebSocket upgrade with this HTTP status
    /// (401: bad, expired or revoked token).
    #[error("WebSocket upgrade refused with HTTP {status}")]
    Rejected { status: u16 },
    /// The session is over. `code` is the WebSocket close code (see
    /// `parley_proto::close`); 1005 when the close frame carried none, 1006
    /// when the connection ended without a close frame.
    #[error("session closed with code {code}: {reason}")]
    Closed { code: u16, reason: String },
    /// A bounded wait ran out: connect, write, read with a deadline, close.
    #[error("timed out")]
    Timeout,
}

/// Renders the optional retry hints of an API error, if any.
struct Hints(Option<u32>, Option<u64>);

impl fmt::Display for Hints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(n) = self.0 {
            write!(f, " ({n} attempts left)")?;
        }
        if let Some(s) = self.1 {
            write!(f, " (retry after {s} s)")?;
        }
        Ok(())
    }
}

impl From<reqwest::Error> for ClientError {
    fn from(e: reqwest::Error) -> Self {
        // A timeout is a timeout whichever layer noticed it, so callers only
        // need to match one variant.
        if e.is_timeout() {
            ClientError::Timeout
        } else {
            ClientError::Http(e)
        }
    }
}

/// Status code recorded when the connection ended without a close frame
/// (RFC 6455 section 7.4.1 reserves 1006 for exactly this).
pub const ABNORMAL_CLOSURE: u16 = 1006;
/// Status code recorded when a close frame carried no code.
pub const NO_STATUS: u16 = 1005;

impl From<tokio_tungstenite::tungstenite::Error> for ClientError {
    fn from(e: tokio_tungstenite::tungstenite::Error) -> Self {
        use tokio_tungstenite::tungstenite::Error as Ws;
        match e {
            Ws::Http(response) => ClientError::Rejected {
                status: response.status().as_u16(),
            },
            Ws::Io(e) => ClientError::Io(e),
            Ws::ConnectionClosed | Ws::AlreadyClosed => ClientError::Closed {
                code: ABNORMAL_CLOSURE,
                reason: "connection already closed".into(),
            },
            Ws::Url(e) => ClientError::InvalidInput(e.to_string()),
            Ws::HttpFormat(e) => ClientError::InvalidInput(e.to_string()),
            other => ClientError::Protocol(other.to_string()),
        }
    }
}
