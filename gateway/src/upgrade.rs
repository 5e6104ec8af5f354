//! The WebSocket upgrade: read the HTTP request head, check it is a v1
//! upgrade with a valid device credential, answer `101 Switching Protocols`
//! or an HTTP error, and hand the stream to tungstenite.
//!
//! Parley reads the head itself (with `httparse`) instead of letting
//! tungstenite do it, because authentication is asynchronous (the token's
//! registration generation is checked against the account store) and must
//! finish before the upgrade is answered: a bad, expired or revoked token
//! gets `401` and never a WebSocket.

use parley_identity::{AuthError, Authenticator, DeviceClaims};
use parley_proto::limits::WS_PATH;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

/// The largest request head accepted. Phones send a few short headers; a
/// larger head is refused with 431 rather than buffered.
const MAX_HEAD_BYTES: usize = 4096;
/// The most headers accepted in the request head.
const MAX_HEADERS: usize = 32;

/// Why an upgrade was refused. Each maps to one HTTP status and one error
/// code in the JSON body (see docs/protocol.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("not an HTTP request")]
    Malformed,
    #[error("request head over {MAX_HEAD_BYTES} bytes or {MAX_HEADERS} headers")]
    HeadTooLarge,
    #[error("only GET upgrades to a WebSocket")]
    MethodNotAllowed,
    #[error("no such path; the protocol lives at {WS_PATH}")]
    NotFound,
    #[error("not a WebSocket upgrade request")]
    NotUpgrade,
    #[error("unsupported WebSocket version; use 13")]
    Version,
    #[error("no bearer token in the Authorization header")]
    MissingToken,
    #[error("the token is not valid")]
    InvalidToken,
    #[error("the token has expired")]
    ExpiredToken,
    #[error("the token was revoked by a newer registration of this number")]
    RevokedToken,
    #[error("the account store is unavailable; retry later")]
    Unavailable,
}

impl Refusal {
    /// Every refusal, in the order the gateway checks for them (so the
    /// first that applies is the answer): the request head, the method,
    /// the path, the upgrade headers, then the credential.
    pub(crate) const ALL: [Refusal; 11] = [
        Refusal::Malformed,
        Refusal::HeadTooLarge,
        Refusal::MethodNotAllowed,
        Refusal::NotFound,
        Refusal::NotUpgrade,
        Refusal::Version,
        Refusal::MissingToken,
        Refusal::InvalidToken,
        Refusal::ExpiredToken,
        Refusal::RevokedToken,
        Refusal::Unavailable,
    ];

    fn status(self) -> &'static str {
        match self {
            Refusal::Malformed | Refusal::NotUpgrade => "400 Bad Request",
            Refusal::HeadTooLarge => "431 Request Header Fields Too Large",
            Refusal::MethodNotAllowed => "405 Method Not Allowed",
            Refusal::NotFound => "404 Not Found",
            Refusal::Version => "426 Upgrade Required",
            Refusal::MissingToken
            | Refusal::InvalidToken
            | Refusal::ExpiredToken
            | Refusal::RevokedToken => "401 Unauthorized",
            Refusal::Unavailable => "503 Service Unavailable",
        }
    }

    /// The machine-readable code in the response body.
    pub(crate) fn code(self) -> &'static str {
        match self {
            Refusal::Malformed | Refusal::NotUpgrade => "BAD_UPGRADE",
            Refusal::HeadTooLarge => "HEAD_TOO_LARGE",
            Refusal::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            Refusal::NotFound => "NOT_FOUND",
            Refusal::Version => "UNSUPPORTED_VERSION",
            Refusal::MissingToken => "UNAUTHORIZED",
            Refusal::InvalidToken => "TOKEN_INVALID",
            Refusal::ExpiredToken => "TOKEN_EXPIRED",
            Refusal::RevokedToken => "TOKEN_REVOKED",
            Refusal::Unavailable => "UNAVAILABLE",
        }
    }

    fn extra_headers(self) -> &'static str {
        match self {
            Refusal::MissingToken
            | Refusal::InvalidToken
            | Refusal::ExpiredToken
            | Refusal::RevokedToken => "WWW-Authenticate: Bearer\r\n",
            Refusal::Version => "Sec-WebSocket-Version: 13\r\n",
            Refusal::Unavailable => "Retry-After: 5\r\n",
            _ => "",
        }
    }
}

/// What went wrong during an upgrade.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpgradeError {
    /// Refused with an HTTP error response (already written).
    #[error("upgrade refused: {0}")]
    Refused(Refusal),
    /// The peer went away or the socket failed.
    #[error("i/o during upgrade: {0}")]
    Io(#[from] std::io::Error),
}

/// A request head that asks for a v1 WebSocket.
#[derive(Debug)]
pub(crate) struct UpgradeRequest {
    key: String,
    token: String,
}

/// Runs the upgrade on a stream whose TLS handshake is done. On success the
/// stream is a WebSocket and the device is authenticated.
pub(crate) async fn accept<S>(
    mut stream: S,
    auth: &Authenticator,
    config: WebSocketConfig,
) -> Result<(WebSocketStream<S>, DeviceClaims), UpgradeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (head_len, buf) = read_head(&mut stream).await?;
    let request = match parse(&buf[..head_len]) {
        Ok(request) => request,
        Err(refusal) => return Err(refuse(&mut stream, refusal).await),
    };
    let claims = match auth.authenticate(&request.token).await {
        Ok(claims) => claims,
        Err(err) => {
            let refusal = match err {
                AuthError::Expired => Refusal::ExpiredToken,
                AuthError::Revoked => Refusal::RevokedToken,
                AuthError::Invalid(_) => Refusal::InvalidToken,
                AuthError::Directory(err) => {
                    tracing::warn!(error = %err, "cannot check a credential during upgrade");
                    Refusal::Unavailable
                }
            };
            return Err(refuse(&mut stream, refusal).await);
        }
    };
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(request.key.as_bytes())
    );
    stream.write_all(response.as_bytes()).await?;
    stream.flush().await?;
    // Bytes after the head are the phone's first WebSocket frames, sent
    // without waiting for the 101; tungstenite starts from them.
    let rest = buf[head_len..].to_vec();
    drop(buf);
    let ws = WebSocketStream::from_partially_read(stream, rest, Role::Server, Some(config)).await;
    Ok((ws, claims))
}

/// Reads until the end of the request head. Returns the head's length and
/// everything read (the head and what followed it).
async fn read_head<S>(stream: &mut S) -> Result<(usize, Vec<u8>), UpgradeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Heap, not stack: the connection task's future would otherwise carry
    // this buffer for the whole session.
    let mut buf = vec![0u8; MAX_HEAD_BYTES];
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            return Err(refuse(stream, Refusal::HeadTooLarge).await);
        }
        let n = stream.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Err(UpgradeError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        // Look for the blank line only in the new bytes (and the three
        // before them, in case it straddles two reads).
        let from = filled.saturating_sub(3);
        filled += n;
        if let Some(at) = buf[from..filled].windows(4).position(|w| w == b"\r\n\r\n") {
            buf.truncate(filled);
            return Ok((from + at + 4, buf));
        }
    }
}

pub(crate) fn parse(head: &[u8]) -> Result<UpgradeRequest, Refusal> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(Refusal::Malformed),
        Err(httparse::Error::TooManyHeaders) => return Err(Refusal::HeadTooLarge),
        Err(_) => return Err(Refusal::Malformed),
    }
    if request.method != Some("GET") {
        return Err(Refusal::MethodNotAllowed);
    }
    let path = request.path.unwrap_or_default();
    if path.split('?').next() != Some(WS_PATH) {
        return Err(Refusal::NotFound);
    }
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::trim)
    };
    let has_token = |name: &str, token: &str| {
        header(name).is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
        return Err(Refusal::NotUpgrade);
    }
    if header("sec-websocket-version") != Some("13") {
        return Err(Refusal::Version);
    }
    let key = header("sec-websocket-key")
        .filter(|k| !k.is_empty())
        .ok_or(Refusal::NotUpgrade)?
        .to_owned();
    let token = header("authorization")
        .and_then(parley_identity::bearer_token)
        .ok_or(Refusal::MissingToken)?
        .to_owned();
    Ok(UpgradeRequest { key, token })
}

/// Writes the HTTP error response for `refusal`, best effort: the peer may
/// already be gone, and the connection is closed either way.
async fn refuse<S: AsyncWrite + Unpin>(stream: &mut S, refusal: Refusal) -> UpgradeError {
    let body = format!(
        r#"{{"error":{{"code":"{}","message":"{}"}}}}"#,
        refusal.code(),
        refusal
    );
    let response = format!(
        "HTTP/1.1 {}\r\n{}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        refusal.status(),
        refusal.extra_headers(),
        body.len(),
        body
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
    UpgradeError::Refused(refusal)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(lines: &[&str]) -> Vec<u8> {
        let mut out = String::new();
        for line in lines {
            out.push_str(line);
            out.push_str("\r\n");
        }
        out.push_str("\r\n");
        out.into_bytes()
    }

    const GOOD: [&str; 6] = [
        "GET /v1/ws HTTP/1.1",
        "Host: localhost",
        "Upgrade: websocket",
        "Connection: keep-alive, Upgrade",
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    ];

    #[test]
    fn a_proper_upgrade_parses() {
        let mut lines = GOOD.to_vec();
        lines.push("authorization: bearer abc.def.ghi");
        let request = parse(&head(&lines)).expect("valid");
        assert_eq!(request.token, "abc.def.ghi");
        assert_eq!(request.key, "dGhlIHNhbXBsZSBub25jZQ==");
    }

    #[test]
    fn each_defect_gets_its_refusal() {
        let with = |replace: usize, line: &'static str| {
            let mut lines = GOOD.to_vec();
            lines[replace] = line;
            lines.push("Authorization: Bearer t");
            parse(&head(&lines)).map(|_| ())
        };
        assert_eq!(
            with(0, "POST /v1/ws HTTP/1.1"),
            Err(Refusal::MethodNotAllowed)
        );
        assert_eq!(with(0, "GET /v2/ws HTTP/1.1"), Err(Refusal::NotFound));
        assert_eq!(with(2, "Upgrade: h2c"), Err(Refusal::NotUpgrade));
        assert_eq!(with(3, "Connection: close"), Err(Refusal::NotUpgrade));
        assert_eq!(with(4, "Sec-WebSocket-Version: 8"), Err(Refusal::Version));
        assert_eq!(with(5, "Sec-WebSocket-Key: "), Err(Refusal::NotUpgrade));
        assert_eq!(parse(&head(&GOOD)).map(|_| ()), Err(Refusal::MissingToken));
        let mut basic = GOOD.to_vec();
        basic.push("Authorization: Basic dXNlcjpwYXNz");
        assert_eq!(parse(&head(&basic)).map(|_| ()), Err(Refusal::MissingToken));
        assert_eq!(
            parse(b"\x16\x03\x01garbage\r\n\r\n").map(|_| ()),
            Err(Refusal::Malformed)
        );
    }

    #[tokio::test]
    async fn a_head_split_over_reads_is_found_and_what_follows_is_kept() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            for chunk in [
                &b"GET /v1/ws HTTP/1.1\r"[..],
                b"\nHost: x\r\n\r",
                b"\n\x82\x00",
            ] {
                client.write_all(chunk).await.expect("write");
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            client
        });
        let (len, buf) = read_head(&mut server).await.expect("head");
        let _client = writer.await.expect("writer");
        assert_eq!(&buf[len - 4..len], b"\r\n\r\n");
        // Whatever arrived after the head is kept for the WebSocket.
        assert!(b"\x82\x00".starts_with(&buf[len..]));
    }

    #[tokio::test]
    async fn an_endless_head_is_refused_with_431() {
        let (mut client, mut server) = tokio::io::duplex(MAX_HEAD_BYTES * 2);
        client
            .write_all(&vec![b'a'; MAX_HEAD_BYTES + 10])
            .await
            .expect("write");
        let err = read_head(&mut server).await.expect_err("too large");
        assert!(matches!(err, UpgradeError::Refused(Refusal::HeadTooLarge)));
        let mut response = String::new();
        client.read_to_string(&mut response).await.expect("read");
        assert!(response.starts_with("HTTP/1.1 431"), "{response}");
    }
}
