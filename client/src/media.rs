//! The media service over HTTPS, as a phone app uses it: resumable uploads
//! with tus 1.0 (create, append, ask the offset), the finished upload's
//! media JSON, and streamed downloads that check the file's SHA-256.
//!
//! Nothing here holds a file whole in memory: an upload's body is read
//! from the file as the request goes out ([`file_body`]), a download is
//! written to the file as it arrives ([`Media::download`]).
//!
//! The contract is docs/protocol.md, "Media"; errors come back as
//! [`ClientError::Api`] with the service's code (`OFFSET_MISMATCH`,
//! `MEDIA_TOO_LARGE`, ...), exactly as the registration API's do.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::debug;

use crate::ClientError;
use crate::registration::{api_error, validate_http_url};

/// The tus protocol version spoken, sent as `Tus-Resumable` on every request.
pub const TUS_VERSION: &str = "1.0.0";
/// Where uploads are created (`POST`); an upload lives at
/// `UPLOADS_PATH/{upload_id}`.
pub const UPLOADS_PATH: &str = "/v1/media/uploads";
/// Where media are downloaded: `MEDIA_PATH/{media_id}`.
pub const MEDIA_PATH: &str = "/v1/media";
/// The content type of a tus `PATCH` body.
const OFFSET_OCTET_STREAM: &str = "application/offset+octet-stream";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The short requests (create, HEAD, the media JSON, DELETE) end within this.
const SHORT_REQUEST: Duration = Duration::from_secs(15);
/// A stalled download (nothing read for this long) is given up; a slow one
/// is not, however long it takes.
const READ_STALL: Duration = Duration::from_secs(60);
/// The slowest upload rate a `PATCH` is given time for, on top of
/// [`SHORT_REQUEST`]: a phone on a poor link, not a dead connection.
const SLOWEST_UPLOAD_BYTES_PER_SEC: u64 = 16 * 1024;
/// Reads of a file for an upload body, and of a download's chunks, are at
/// most this big.
const READ_CHUNK: usize = 64 * 1024;
/// The error JSON the service answers is small; more is not its error.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// A client of the media service for one device's credential. Cheap to
/// clone: clones share one connection pool.
#[derive(Clone)]
pub struct Media {
    http: reqwest::Client,
    /// `https://host:port` without a trailing slash.
    base: String,
    /// The device's bearer token. Secret; sent to `base` only.
    token: String,
}

impl std::fmt::Debug for Media {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Media")
            .field("base", &self.base)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// A finished upload: the service's media JSON.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct MediaInfo {
    /// 32 lowercase hex characters.
    pub media_id: String,
    /// The download path, `/v1/media/{media_id}`.
    pub url: String,
    pub size: u64,
    /// SHA-256 of the stored bytes, 64 lowercase hex characters.
    pub sha256: String,
    pub content_type: String,
    /// Unix seconds after which the media is gone.
    #[serde(default)]
    pub expires_at: Option<u64>,
}

/// What `HEAD` says about an upload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadStatus {
    /// The bytes the service has: the next `PATCH` starts here.
    pub offset: u64,
    pub length: u64,
    /// Set once the upload is complete.
    pub media_id: Option<String>,
}

/// What a `PATCH` achieved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Appended {
    /// The service's offset after it.
    pub offset: u64,
    /// Set when this `PATCH` completed the upload.
    pub media_id: Option<String>,
}

/// A download that finished: how many bytes, and their SHA-256.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Downloaded {
    pub bytes: u64,
    pub sha256: [u8; 32],
}

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error(transparent)]
    Client(#[from] ClientError),
    /// More bytes came than the message said the file has.
    #[error("the server sent more than the {expected} bytes the message announced")]
    TooLong { expected: u64 },
    #[error("the download ended after {got} of {expected} bytes")]
    TooShort { got: u64, expected: u64 },
    /// The bytes are not the ones the sender uploaded.
    #[error("SHA-256 mismatch: the message says {expected}, the download is {got}")]
    Mismatch { expected: String, got: String },
    #[error("cannot write the file: {0}")]
    Write(std::io::Error),
}

impl Media {
    /// A client of the media service at `http_base` (the registration API's
    /// base URL: both are on the HTTPS listener), trusting what `tls`
    /// trusts, authenticating as `token`.
    pub fn new(
        http_base: &str,
        tls: Arc<rustls::ClientConfig>,
        token: &str,
    ) -> Result<Self, ClientError> {
        validate_http_url(http_base)?;
        let mut tls = (*tls).clone();
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        // No overall timeout on the client: an upload or a download takes as
        // long as the file and the link need. Each request below bounds
        // itself, and a stalled read is given up after READ_STALL.
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_STALL)
            .user_agent(concat!("parley-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(ClientError::Http)?;
        Ok(Self {
            http,
            base: http_base.trim_end_matches('/').to_string(),
            token: token.to_string(),
        })
    }

    /// The base URL, `https://host:port`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `POST /v1/media/uploads`: a new upload of `length` bytes with tus
    /// metadata (`content_type`, `filename`, ...). Returns its path,
    /// `/v1/media/uploads/{upload_id}`.
    pub async fn create(
        &self,
        length: u64,
        metadata: &[(&str, &str)],
    ) -> Result<String, ClientError> {
        let metadata = encode_metadata(metadata)?;
        debug!(length, "creating an upload");
        let mut request = self
            .tus(reqwest::Method::POST, UPLOADS_PATH)
            .timeout(SHORT_REQUEST)
            .header("Upload-Length", length.to_string())
            .header(http::header::CONTENT_LENGTH, "0");
        if !metadata.is_empty() {
            request = request.header("Upload-Metadata", metadata);
        }
        let response = self.send(request).await?;
        let location = header(response.headers(), "location").ok_or_else(|| {
            ClientError::Protocol("the upload was created without a Location".into())
        })?;
        self.upload_path(&location)
    }

    /// `HEAD` of an upload: its offset, or `None` when the service no
    /// longer knows it (`404`: expired, abandoned, another server).
    pub async fn status(&self, upload: &str) -> Result<Option<UploadStatus>, ClientError> {
        let request = self
            .tus(reqwest::Method::HEAD, upload)
            .timeout(SHORT_REQUEST);
        let response = match self.send(request).await {
            Ok(response) => response,
            Err(ClientError::Api { status: 404, .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let headers = response.headers();
        Ok(Some(UploadStatus {
            offset: number(headers, "upload-offset")?,
            length: number(headers, "upload-length")?,
            media_id: header(headers, "parley-media-id"),
        }))
    }

    /// `PATCH`: appends `body` (exactly `len` bytes) at `offset`. A wrong
    /// offset is `409 OFFSET_MISMATCH` (ask [`Media::status`] and go on from
    /// there).
    pub async fn append(
        &self,
        upload: &str,
        offset: u64,
        len: u64,
        body: reqwest::Body,
    ) -> Result<Appended, ClientError> {
        debug!(offset, len, "appending to an upload");
        let request = self
            .tus(reqwest::Method::PATCH, upload)
            .timeout(SHORT_REQUEST + Duration::from_secs(len / SLOWEST_UPLOAD_BYTES_PER_SEC))
            .header(http::header::CONTENT_TYPE, OFFSET_OCTET_STREAM)
            .header("Upload-Offset", offset.to_string())
            // Set explicitly so that the streamed body goes with a length,
            // not chunked, as tus servers expect.
            .header(http::header::CONTENT_LENGTH, len.to_string())
            .body(body);
        let response = self.send(request).await?;
        let headers = response.headers();
        Ok(Appended {
            offset: number(headers, "upload-offset")?,
            media_id: header(headers, "parley-media-id"),
        })
    }

    /// `GET /v1/media/uploads/{id}`: the media JSON of a complete upload
    /// (`409 UPLOAD_INCOMPLETE` before).
    pub async fn finished(&self, upload: &str) -> Result<MediaInfo, ClientError> {
        let request = self
            .authorized(reqwest::Method::GET, upload)
            .timeout(SHORT_REQUEST);
        let response = self.send(request).await?;
        let bytes = read_limited(response, MAX_ERROR_BODY).await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| ClientError::Protocol(format!("unexpected media JSON: {e}")))
    }

    /// `DELETE` of an upload (tus termination) or a media object: the
    /// service forgets it. Already gone (`404`) is a success.
    pub async fn delete(&self, path: &str) -> Result<(), ClientError> {
        let request = self
            .tus(reqwest::Method::DELETE, path)
            .timeout(SHORT_REQUEST);
        match self.send(request).await {
            Ok(_) | Err(ClientError::Api { status: 404, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Streams the media at `path` (`/v1/media/{media_id}`) into `out`,
    /// hashing it, and checks it against what the message announced:
    /// exactly `expected_size` bytes whose SHA-256 is `expected_sha256`.
    /// Stops as soon as more bytes arrive than announced.
    pub async fn download(
        &self,
        path: &str,
        expected_size: u64,
        expected_sha256: &[u8],
        out: &mut (impl AsyncWrite + Unpin),
    ) -> Result<Downloaded, DownloadError> {
        let request = self.authorized(reqwest::Method::GET, path);
        let mut response = self.send(request).await?;
        let mut context = ring::digest::Context::new(&ring::digest::SHA256);
        let mut got = 0u64;
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| ClientError::from_request(&self.base, e))?
        {
            got += chunk.len() as u64;
            if got > expected_size {
                return Err(DownloadError::TooLong {
                    expected: expected_size,
                });
            }
            context.update(&chunk);
            out.write_all(&chunk).await.map_err(DownloadError::Write)?;
        }
        out.flush().await.map_err(DownloadError::Write)?;
        if got < expected_size {
            return Err(DownloadError::TooShort {
                got,
                expected: expected_size,
            });
        }
        let digest = context.finish();
        if digest.as_ref() != expected_sha256 {
            return Err(DownloadError::Mismatch {
                expected: hex(expected_sha256),
                got: hex(digest.as_ref()),
            });
        }
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(digest.as_ref());
        Ok(Downloaded { bytes: got, sha256 })
    }

    /// A request to `path` on this server with the bearer token.
    fn authorized(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    /// [`Media::authorized`] with `Tus-Resumable`.
    fn tus(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.authorized(method, path)
            .header("Tus-Resumable", TUS_VERSION)
    }

    /// Sends a request: its response when the status is a success, else
    /// the service's error as [`ClientError::Api`].
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        let response = request
            .send()
            .await
            .map_err(|e| ClientError::from_request(&self.base, e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let retry_after = header(response.headers(), "retry-after");
        let bytes = read_limited(response, MAX_ERROR_BODY)
            .await
            .unwrap_or_default();
        Err(api_error(
            StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY),
            retry_after.as_deref(),
            &bytes,
        ))
    }

    /// The path of an upload from a `Location`: a path on this server, or
    /// an absolute URL of this server (tus allows both). An upload on
    /// another host is refused: this client's token goes to its own server
    /// only.
    fn upload_path(&self, location: &str) -> Result<String, ClientError> {
        let path = if location.starts_with('/') {
            location.to_string()
        } else {
            let url = reqwest::Url::parse(location).map_err(|e| {
                ClientError::Protocol(format!("the upload's Location {location:?}: {e}"))
            })?;
            let base = reqwest::Url::parse(&self.base)
                .map_err(|e| ClientError::InvalidInput(e.to_string()))?;
            if url.origin() != base.origin() {
                return Err(ClientError::Protocol(format!(
                    "the upload's Location {location:?} is on another server"
                )));
            }
            url.path().to_string()
        };
        if !path.starts_with(&format!("{UPLOADS_PATH}/")) {
            return Err(ClientError::Protocol(format!(
                "the upload's Location {location:?} is not under {UPLOADS_PATH}/"
            )));
        }
        Ok(path)
    }
}

/// The path to download a media id from.
pub fn media_path(media_id: &str) -> String {
    format!("{MEDIA_PATH}/{media_id}")
}

/// An upload body that reads `len` bytes of `file` (already positioned at
/// the upload's offset) as the request goes out, telling `on_read` the
/// count of each chunk read.
pub fn file_body(
    file: impl AsyncRead + Send + Unpin + 'static,
    len: u64,
    on_read: impl Fn(u64) + Send + Sync + 'static,
) -> reqwest::Body {
    reqwest::Body::wrap_stream(file_stream(file, len, on_read))
}

fn file_stream(
    file: impl AsyncRead + Send + Unpin + 'static,
    len: u64,
    on_read: impl Fn(u64) + Send + Sync + 'static,
) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    futures_util::stream::unfold(
        (file, len, on_read),
        |(mut file, left, on_read)| async move {
            if left == 0 {
                return None;
            }
            let want = usize::try_from(left).unwrap_or(usize::MAX).min(READ_CHUNK);
            let mut buf = vec![0u8; want];
            match file.read(&mut buf).await {
                Ok(0) => Some((
                    Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the file got shorter while it was uploaded",
                    )),
                    (file, 0, on_read),
                )),
                Ok(n) => {
                    buf.truncate(n);
                    on_read(n as u64);
                    Some((Ok(Bytes::from(buf)), (file, left - n as u64, on_read)))
                }
                Err(e) => Some((Err(e), (file, 0, on_read))),
            }
        },
    )
}

/// Why tus metadata cannot be sent.
fn bad_metadata(why: String) -> ClientError {
    ClientError::InvalidInput(format!("upload metadata: {why}"))
}

/// tus `Upload-Metadata`: `key base64(value)` pairs, comma-separated. Keys
/// are ASCII without spaces or commas, not empty, and not repeated (the
/// tus spec); values are any bytes, standard base64 with padding; an empty
/// value is the key alone.
pub fn encode_metadata(pairs: &[(&str, &str)]) -> Result<String, ClientError> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(pairs.len());
    for (key, value) in pairs {
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic() && b != b',') {
            return Err(bad_metadata(format!(
                "key {key:?} must be ASCII without spaces or commas"
            )));
        }
        if !seen.insert(*key) {
            return Err(bad_metadata(format!("key {key:?} given twice")));
        }
        out.push(if value.is_empty() {
            (*key).to_string()
        } else {
            format!("{key} {}", STANDARD.encode(value))
        });
    }
    Ok(out.join(","))
}

/// Parses tus `Upload-Metadata` (what [`encode_metadata`] writes, and what a
/// `HEAD` echoes) into `(key, value)` pairs, values as bytes.
pub fn parse_metadata(header: &str) -> Result<Vec<(String, Vec<u8>)>, ClientError> {
    if header.trim().is_empty() {
        return Ok(Vec::new());
    }
    header
        .split(',')
        .map(|pair| {
            let pair = pair.trim();
            let (key, value) = match pair.split_once(' ') {
                Some((key, value)) => (key, value),
                None => (pair, ""),
            };
            if key.is_empty() || value.contains(' ') {
                return Err(bad_metadata(format!("malformed pair {pair:?}")));
            }
            let value = STANDARD
                .decode(value)
                .map_err(|e| bad_metadata(format!("value of {key:?}: {e}")))?;
            Ok((key.to_string(), value))
        })
        .collect()
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses 64 hex characters into 32 bytes.
pub fn parse_sha256_hex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_string())
}

fn number(headers: &HeaderMap, name: &str) -> Result<u64, ClientError> {
    header(headers, name)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| ClientError::Protocol(format!("the answer has no valid {name} header")))
}

async fn read_limited(mut response: reqwest::Response, max: usize) -> Result<Vec<u8>, ClientError> {
    let mut buf = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if buf.len() + chunk.len() > max {
            return Err(ClientError::Protocol(format!("answer over {max} bytes")));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn metadata_is_encoded_as_tus_says() {
        assert_eq!(
            encode_metadata(&[
                ("filename", "world_domination_plan.pdf"),
                ("is_confidential", "")
            ])
            .expect("valid"),
            "filename d29ybGRfZG9taW5hdGlvbl9wbGFuLnBkZg==,is_confidential"
        );
        assert_eq!(encode_metadata(&[]).expect("empty"), "");
        for bad in [
            &[("", "x")][..],
            &[("has space", "x")],
            &[("a,b", "x")],
            &[("ключ", "x")],
            &[("a", "1"), ("a", "2")],
        ] {
            assert!(encode_metadata(bad).is_err(), "{bad:?}");
        }
        assert!(parse_metadata("a b c").is_err());
        assert!(parse_metadata("a !!!").is_err());
        assert_eq!(parse_metadata(" ").expect("empty"), Vec::new());
    }

    proptest! {
        /// Any file name and content type (any UTF-8: spaces, commas,
        /// emoji) goes through the header and comes back as it was.
        #[test]
        fn metadata_round_trips(
            pairs in proptest::collection::btree_map("[!-+--~]{1,12}", ".*", 0..6)
        ) {
            let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let header = encode_metadata(&pairs).expect("valid keys");
            prop_assert!(header.is_ascii());
            let parsed = parse_metadata(&header).expect("parses");
            let expected: Vec<(String, Vec<u8>)> = pairs
                .iter()
                .map(|(k, v)| ((*k).to_string(), v.as_bytes().to_vec()))
                .collect();
            prop_assert_eq!(parsed, expected);
        }

        #[test]
        fn hex_round_trips(bytes in proptest::array::uniform32(any::<u8>())) {
            prop_assert_eq!(parse_sha256_hex(&hex(&bytes)), Some(bytes));
        }
    }

    #[test]
    fn bad_hex_is_refused() {
        assert_eq!(parse_sha256_hex("ab"), None);
        assert_eq!(parse_sha256_hex(&"zz".repeat(32)), None);
        assert_eq!(parse_sha256_hex(&"é".repeat(32)), None);
    }

    fn client(base: &str) -> Media {
        let key = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
        let tls = crate::tls_config_from_pem(key.cert.pem().as_bytes()).expect("tls");
        Media::new(base, tls, "secret").expect("valid base")
    }

    #[test]
    fn upload_locations_stay_on_this_server() {
        let media = client("https://127.0.0.1:8443/");
        let id = "0123456789abcdef0123456789abcdef";
        let path = format!("/v1/media/uploads/{id}");
        assert_eq!(media.upload_path(&path).expect("a path"), path);
        assert_eq!(
            media
                .upload_path(&format!("https://127.0.0.1:8443{path}"))
                .expect("same origin"),
            path
        );
        assert!(
            media
                .upload_path(&format!("https://evil.example{path}"))
                .is_err()
        );
        assert!(media.upload_path("/v1/devices").is_err());
        assert!(format!("{media:?}").contains("<redacted>"));
    }

    #[tokio::test]
    async fn a_file_body_reads_exactly_its_length() {
        use futures_util::StreamExt as _;
        let counted = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let seen = counted.clone();
        let data = vec![7u8; 200_000];
        let stream = file_stream(std::io::Cursor::new(data), 150_000, move |n| {
            seen.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        });
        let mut stream = std::pin::pin!(stream);
        let mut total = 0;
        while let Some(chunk) = stream.next().await {
            total += chunk.expect("reads").len();
        }
        assert_eq!(total, 150_000);
        assert_eq!(counted.load(std::sync::atomic::Ordering::Relaxed), 150_000);
        // A file shorter than announced is an error, not a short body.
        let short = file_stream(std::io::Cursor::new(vec![1u8; 10]), 20, |_| {});
        let results: Vec<_> = short.collect().await;
        assert!(results.last().expect("items").is_err());
    }
}
