//! The one error type of the client library.
//!
//! Callers branch on it: an end-to-end test asserts that a revoked device gets
//! `Rejected { status: 401, .. }`, the CLI tells a displaced user why its
//! session ended and a user whose server is down that it is down. So every
//! variant names a cause a caller can act on, and none of them carries a
//! token or a phone number.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::path::PathBuf;

use parley_proto::close;

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
    /// No connection could be made to `url`: refused (nothing listens
    /// there), unreachable, or the name does not resolve. `reason` is short
    /// and lower case, e.g. `connection refused`.
    #[error("cannot reach {url} ({reason})")]
    Unreachable { url: String, reason: String },
    /// The TLS handshake with `url` failed. For a server certificate this
    /// client does not trust, `error` is
    /// `rustls::Error::InvalidCertificate(..)` and says why (unknown issuer,
    /// bad signature, wrong name, expired, ...).
    #[error("TLS handshake with {url} failed: {error}")]
    TlsHandshake { url: String, error: rustls::Error },
    /// The PEM file given as the server's certificate cannot be used:
    /// unreadable, or without a usable certificate in it.
    #[error("CA file {}: {reason}", path.display())]
    CaFile { path: PathBuf, reason: String },
    /// The HTTP request failed before an answer arrived, for a reason that
    /// is none of the above (reset mid-request, say). Transparent:
    /// reqwest's message already names the URL, and its source chain the
    /// cause.
    #[error(transparent)]
    Http(reqwest::Error),
    /// Building the TLS configuration failed, or the TLS handshake failed
    /// without a rustls error (the server hung up during it).
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
    /// The server refused the WebSocket upgrade with this HTTP status and,
    /// when its JSON body said, this error code (401: `UNAUTHORIZED`,
    /// `TOKEN_INVALID`, `TOKEN_EXPIRED` or `TOKEN_REVOKED`; see
    /// [`ClientError::credential_refusal`]).
    #[error("WebSocket upgrade refused with HTTP {status}{}", CodeSuffix(code.as_deref()))]
    Rejected { status: u16, code: Option<String> },
    /// The session is over. `code` is the WebSocket close code (see
    /// `parley_proto::close`); 1005 when the close frame carried none, 1006
    /// when the connection ended without a close frame.
    #[error("session closed with code {code}: {reason}")]
    Closed { code: u16, reason: String },
    /// A bounded wait ran out: connect, write, read with a deadline, close.
    #[error("timed out")]
    Timeout,
}

/// Why the server refused this device's credential: one vocabulary for the
/// gateway's upgrade, the HTTPS API and a live session's close.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialRefusal {
    /// `UNAUTHORIZED`: no bearer token reached the server. (Older servers
    /// also said this on the HTTPS API for a malformed or expired one.)
    Missing,
    /// `TOKEN_INVALID`: malformed, or not signed by this server.
    Invalid,
    /// `TOKEN_EXPIRED`: its lifetime is over.
    Expired,
    /// `TOKEN_REVOKED` (`REVOKED` on older HTTPS APIs; close code 4002, or
    /// 4005 for an unlinked device, in a session): the number was
    /// registered again, or the device was removed from its account.
    Revoked,
    /// A 401 whose body named no code this client knows.
    Unspecified,
}

impl CredentialRefusal {
    /// The refusal a 401's error code names; `None` for codes that are not
    /// about the credential (`WRONG_CODE` is a 401 too).
    pub fn from_code(code: &str) -> Option<Self> {
        match code {
            "UNAUTHORIZED" => Some(Self::Missing),
            "TOKEN_INVALID" => Some(Self::Invalid),
            "TOKEN_EXPIRED" => Some(Self::Expired),
            // `REVOKED` is what the HTTPS API said before the vocabulary
            // was unified; both spellings mean the same.
            "TOKEN_REVOKED" | "REVOKED" => Some(Self::Revoked),
            _ => None,
        }
    }
}

impl ClientError {
    /// Whether (and why) this error is the server refusing the device's
    /// credential, wherever it was refused: the upgrade (`Rejected`), an API
    /// call (`Api`), or a live session closed with 4002 (revoked) or 4005
    /// (unlinked).
    pub fn credential_refusal(&self) -> Option<CredentialRefusal> {
        match self {
            ClientError::Rejected { status: 401, code } => Some(
                code.as_deref()
                    .and_then(CredentialRefusal::from_code)
                    .unwrap_or(CredentialRefusal::Unspecified),
            ),
            ClientError::Api {
                status: 401, code, ..
            } => CredentialRefusal::from_code(code),
            ClientError::Closed { code, .. }
                if *code == close::REVOKED || *code == close::UNLINKED =>
            {
                Some(CredentialRefusal::Revoked)
            }
            _ => None,
        }
    }

    /// Classifies a failed HTTPS request to `url`: a TLS failure, a server
    /// that cannot be reached, a timeout, or anything else.
    pub(crate) fn from_request(url: &str, e: reqwest::Error) -> Self {
        if e.is_timeout() {
            // A timeout is a timeout whichever layer noticed it, so callers
            // only need to match one variant.
            return ClientError::Timeout;
        }
        if let Some(error) = find_rustls_error(&e) {
            return ClientError::TlsHandshake {
                url: url.to_string(),
                error: error.clone(),
            };
        }
        if e.is_connect() {
            let reason = find_io_error(&e)
                .map(io_reason)
                .unwrap_or_else(|| "connection failed".to_string());
            return ClientError::Unreachable {
                url: url.to_string(),
                reason,
            };
        }
        ClientError::Http(e)
    }
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

/// ` (CODE)` when there is a code.
struct CodeSuffix<'a>(Option<&'a str>);

impl fmt::Display for CodeSuffix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(code) => write!(f, " ({code})"),
            None => Ok(()),
        }
    }
}

impl From<reqwest::Error> for ClientError {
    fn from(e: reqwest::Error) -> Self {
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
                code: response.body().as_deref().and_then(error_code),
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

/// The `error.code` of a documented error body
/// (`{"error": {"code": "...", "message": "..."}}`), if it is one.
pub(crate) fn error_code(body: &[u8]) -> Option<String> {
    let json: serde_json::Value = serde_json::from_slice(body).ok()?;
    json.get("error")?.get("code")?.as_str().map(str::to_owned)
}

/// A short, lower-case reason for a failed connect: `connection refused`
/// rather than `Connection refused (os error 111)`.
pub(crate) fn io_reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".into(),
        io::ErrorKind::TimedOut => "timed out".into(),
        io::ErrorKind::HostUnreachable => "host unreachable".into(),
        io::ErrorKind::NetworkUnreachable => "network unreachable".into(),
        io::ErrorKind::AddrNotAvailable => "address not available".into(),
        io::ErrorKind::ConnectionReset => "connection reset".into(),
        _ => {
            let text = e.to_string();
            match text.find(" (os error") {
                Some(at) => text[..at].to_string(),
                None => text,
            }
        }
    }
}

/// Walks an error's source chain, looking inside `io::Error`s too (their
/// `source()` skips the error they wrap, which is where rustls puts its own).
fn chain<'a>(
    e: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    let mut next = Some(e);
    std::iter::from_fn(move || {
        let current = next?;
        next = match current
            .downcast_ref::<io::Error>()
            .and_then(io::Error::get_ref)
        {
            Some(inner) => Some(inner as &(dyn StdError + 'static)),
            None => current.source(),
        };
        Some(current)
    })
}

/// The rustls error somewhere in `e`'s causes.
pub(crate) fn find_rustls_error<'a>(e: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    chain(e).find_map(|e| e.downcast_ref::<rustls::Error>())
}

/// The innermost `io::Error` in `e`'s causes.
fn find_io_error<'a>(e: &'a (dyn StdError + 'static)) -> Option<&'a io::Error> {
    chain(e)
        .filter_map(|e| e.downcast_ref::<io::Error>())
        .last()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_codes_are_one_vocabulary() {
        let upgrade = |code: Option<&str>| ClientError::Rejected {
            status: 401,
            code: code.map(str::to_owned),
        };
        let api = |code: &str| ClientError::Api {
            status: 401,
            code: code.into(),
            message: String::new(),
            attempts_left: None,
            retry_after: None,
        };
        use CredentialRefusal::*;
        for (code, refusal) in [
            ("UNAUTHORIZED", Missing),
            ("TOKEN_INVALID", Invalid),
            ("TOKEN_EXPIRED", Expired),
            ("TOKEN_REVOKED", Revoked),
            ("REVOKED", Revoked),
        ] {
            assert_eq!(upgrade(Some(code)).credential_refusal(), Some(refusal));
            assert_eq!(api(code).credential_refusal(), Some(refusal));
        }
        assert_eq!(upgrade(None).credential_refusal(), Some(Unspecified));
        assert_eq!(api("WRONG_CODE").credential_refusal(), None);
        let closed = ClientError::Closed {
            code: close::REVOKED,
            reason: String::new(),
        };
        assert_eq!(closed.credential_refusal(), Some(Revoked));
        let unlinked = ClientError::Closed {
            code: close::UNLINKED,
            reason: String::new(),
        };
        assert_eq!(unlinked.credential_refusal(), Some(Revoked));
        let forbidden = ClientError::Rejected {
            status: 403,
            code: None,
        };
        assert_eq!(forbidden.credential_refusal(), None);
    }

    #[test]
    fn error_codes_come_from_the_documented_body() {
        assert_eq!(
            error_code(br#"{"error":{"code":"TOKEN_REVOKED","message":"m"}}"#).as_deref(),
            Some("TOKEN_REVOKED")
        );
        assert_eq!(error_code(b"bad token"), None);
        assert_eq!(error_code(br#"{"code":"X"}"#), None);
        assert_eq!(error_code(b""), None);
    }

    #[test]
    fn rejected_names_its_code() {
        let e = ClientError::Rejected {
            status: 401,
            code: Some("TOKEN_EXPIRED".into()),
        };
        assert_eq!(
            e.to_string(),
            "WebSocket upgrade refused with HTTP 401 (TOKEN_EXPIRED)"
        );
        let e = ClientError::Rejected {
            status: 503,
            code: None,
        };
        assert_eq!(e.to_string(), "WebSocket upgrade refused with HTTP 503");
    }

    #[test]
    fn rustls_errors_are_found_inside_io_errors() {
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io = io::Error::new(io::ErrorKind::InvalidData, tls);
        #[derive(Debug, thiserror::Error)]
        #[error("client error (Connect)")]
        struct Outer(#[source] io::Error);
        let outer = Outer(io);
        assert!(matches!(
            find_rustls_error(&outer),
            Some(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer
            ))
        ));
        let refused = Outer(io::ErrorKind::ConnectionRefused.into());
        assert!(find_rustls_error(&refused).is_none());
        assert_eq!(
            find_io_error(&refused).map(io_reason).as_deref(),
            Some("connection refused")
        );
    }

    #[test]
    fn io_reasons_are_short() {
        assert_eq!(
            io_reason(&io::ErrorKind::ConnectionRefused.into()),
            "connection refused"
        );
        assert_eq!(io_reason(&io::Error::other("dns error")), "dns error");
    }
}
