//! The media routes: tus 1.0 uploads, one-request uploads, downloads.
//! docs/protocol.md "Media" is the contract; [`crate::error`] the codes.

use std::time::{Duration, UNIX_EPOCH};

use axum::Json;
use axum::body::Body;
use axum::extract::{FromRef, Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use futures_util::StreamExt as _;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use parley_identity::{AuthRejection, Authenticator, BearerDevice};
use ring::digest;

use crate::error::MediaError;
use crate::service::{Checksum, Media, MediaInfo, MediaRecord, Patch, Upload, now_millis};
use crate::{ROUTES, TUS_VERSION};

/// The state of the media routes.
#[derive(Clone, Debug)]
pub struct MediaState {
    pub media: Media,
    pub authenticator: Authenticator,
}

impl FromRef<MediaState> for Authenticator {
    fn from_ref(state: &MediaState) -> Self {
        state.authenticator.clone()
    }
}

/// The media routes. No fallback, so it merges with the other routers.
/// No request timeout either: an upload takes as long as the phone's
/// network needs, bounded by the idle timeout between its bytes.
pub fn router(state: MediaState) -> axum::Router {
    // tus: every answer of its routes says Tus-Resumable, refusals of the
    // credential included.
    let tus = axum::Router::new()
        .route(ROUTES[1].1, post(create_upload).options(options_uploads))
        .route(
            ROUTES[2].1,
            get(upload_result)
                .head(upload_offset)
                .patch(append)
                .delete(terminate),
        )
        .layer(axum::middleware::map_response(
            |mut response: Response| async {
                tus_headers(&mut response);
                response
            },
        ));
    axum::Router::new()
        .merge(tus)
        .route(ROUTES[6].1, post(upload_whole))
        .route(ROUTES[7].1, get(download).delete(delete_media))
        .with_state(state)
}

const OFFSET_OCTET_STREAM: &str = "application/offset+octet-stream";
/// `Upload-Metadata` longer than this is refused.
const MAX_METADATA: usize = 4096;
const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

fn tus_version(headers: &HeaderMap) -> Result<(), MediaError> {
    match header_str(headers, "tus-resumable") {
        Some(TUS_VERSION) => Ok(()),
        _ => Err(MediaError::TusVersion),
    }
}

/// A decimal header as tus writes numbers (digits only).
fn number(headers: &HeaderMap, name: &str) -> Result<Option<u64>, MediaError> {
    match header_str(headers, name) {
        None => Ok(None),
        Some(value) if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => value
            .parse()
            .map(Some)
            .map_err(|_| MediaError::InvalidUpload(format!("{name} is too large"))),
        Some(value) => Err(MediaError::InvalidUpload(format!(
            "{name} must be a non-negative decimal number, not {value:?}"
        ))),
    }
}

fn tus_headers(response: &mut Response) {
    response
        .headers_mut()
        .insert("tus-resumable", HeaderValue::from_static(TUS_VERSION));
}

fn http_date(ms: i64) -> HeaderValue {
    let at = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    HeaderValue::from_str(&httpdate::fmt_http_date(at)).unwrap_or(HeaderValue::from_static(""))
}

/// `type/subtype` with optional parameters, printable ASCII.
pub(crate) fn is_content_type(value: &str) -> bool {
    let essence = value.split(';').next().unwrap_or("").trim();
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    value.len() <= 255
        && value.bytes().all(|b| (b' '..=b'~').contains(&b))
        && essence
            .split_once('/')
            .is_some_and(|(kind, sub)| token(kind) && token(sub))
}

/// The pairs of an `Upload-Metadata` header (tus: `key base64`, comma
/// separated; a key may have no value).
pub(crate) fn parse_metadata(value: &str) -> Result<Vec<(String, Vec<u8>)>, MediaError> {
    let bad = |why: String| MediaError::InvalidUpload(format!("Upload-Metadata: {why}"));
    if value.len() > MAX_METADATA {
        return Err(bad(format!("longer than {MAX_METADATA} bytes")));
    }
    let mut pairs = Vec::new();
    for pair in value.split(',') {
        let pair = pair.trim();
        let (key, encoded) = pair.split_once(' ').unwrap_or((pair, ""));
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad(format!("bad key {key:?}")));
        }
        if pairs.iter().any(|(k, _)| k == key) {
            return Err(bad(format!("key {key:?} given twice")));
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|_| bad(format!("the value of {key:?} is not base64")))?;
        pairs.push((key.to_owned(), decoded));
    }
    Ok(pairs)
}

/// The content type the metadata names (`content_type`, else tus-js's
/// `filetype`, else Uppy's `type`), checked.
fn metadata_content_type(pairs: &[(String, Vec<u8>)]) -> Result<String, MediaError> {
    for key in ["content_type", "filetype", "type"] {
        if let Some((_, value)) = pairs.iter().find(|(k, _)| k == key) {
            let value = String::from_utf8(value.clone()).unwrap_or_default();
            if !is_content_type(&value) {
                return Err(MediaError::InvalidUpload(format!(
                    "Upload-Metadata: {key} must be a media type such as image/jpeg, not {value:?}"
                )));
            }
            return Ok(value);
        }
    }
    Ok(DEFAULT_CONTENT_TYPE.to_owned())
}

fn checksum(headers: &HeaderMap) -> Result<Option<Checksum>, MediaError> {
    let Some(value) = header_str(headers, "upload-checksum") else {
        return Ok(None);
    };
    let (algorithm, encoded) = value.split_once(' ').unwrap_or((value, ""));
    let algorithm = match algorithm {
        "sha1" => &digest::SHA1_FOR_LEGACY_USE_ONLY,
        "sha256" => &digest::SHA256,
        other => {
            return Err(MediaError::InvalidUpload(format!(
                "Upload-Checksum: unsupported algorithm {other:?} (supported: sha1, sha256)"
            )));
        }
    };
    let expected = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()
        .filter(|d| d.len() == algorithm.output_len())
        .ok_or_else(|| {
            MediaError::InvalidUpload(
                "Upload-Checksum: the digest is not base64 of the right length".into(),
            )
        })?;
    Ok(Some(Checksum {
        algorithm,
        expected,
    }))
}

async fn options_uploads(State(state): State<MediaState>) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let headers = response.headers_mut();
    headers.insert("tus-version", HeaderValue::from_static(TUS_VERSION));
    headers.insert(
        "tus-extension",
        HeaderValue::from_static("creation,expiration,checksum,termination"),
    );
    headers.insert(
        "tus-max-size",
        HeaderValue::from(state.media.config().max_size),
    );
    headers.insert(
        "tus-checksum-algorithm",
        HeaderValue::from_static("sha1,sha256"),
    );
    response
}

async fn create_upload(
    State(state): State<MediaState>,
    BearerDevice(device): BearerDevice,
    headers: HeaderMap,
) -> Result<Response, MediaError> {
    tus_version(&headers)?;
    if headers.contains_key("upload-defer-length") {
        return Err(MediaError::InvalidUpload(
            "Upload-Defer-Length is not supported: send Upload-Length".into(),
        ));
    }
    let length = number(&headers, "upload-length")?
        .ok_or_else(|| MediaError::InvalidUpload("send Upload-Length".into()))?;
    let metadata = header_str(&headers, "upload-metadata")
        .filter(|m| !m.is_empty())
        .map(str::to_owned);
    let content_type = match &metadata {
        Some(metadata) => metadata_content_type(&parse_metadata(metadata)?)?,
        None => DEFAULT_CONTENT_TYPE.to_owned(),
    };
    let upload = state
        .media
        .create(device, length, content_type, metadata, now_millis())
        .await?;
    let mut response = StatusCode::CREATED.into_response();
    let location = format!("{}/{}", ROUTES[1].1, upload.id);
    let headers = response.headers_mut();
    if let Ok(location) = HeaderValue::from_str(&location) {
        headers.insert(header::LOCATION, location);
    }
    headers.insert("upload-offset", HeaderValue::from(0));
    headers.insert("upload-expires", http_date(upload.expires_ms));
    Ok(response)
}

/// The headers that tell an upload's state (HEAD and PATCH answers;
/// `Tus-Resumable` is the tus routes' layer's).
fn upload_headers(response: &mut Response, upload: &Upload) {
    let headers = response.headers_mut();
    headers.insert("upload-offset", HeaderValue::from(upload.offset()));
    headers.insert("upload-expires", http_date(upload.expires_ms));
    if let Some(media) = &upload.media
        && let Ok(id) = HeaderValue::from_str(&media.id)
    {
        headers.insert("parley-media-id", id);
    }
}

async fn upload_offset(
    State(state): State<MediaState>,
    BearerDevice(device): BearerDevice,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, MediaError> {
    tus_version(&headers)?;
    let upload = state.media.upload(device, &id, now_millis()).await?;
    let mut response = StatusCode::OK.into_response();
    upload_headers(&mut response, &upload);
    let headers = response.headers_mut();
    headers.insert("upload-length", HeaderValue::from(upload.length));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(metadata) = &upload.metadata
        && let Ok(metadata) = HeaderValue::from_str(metadata)
    {
        headers.insert("upload-metadata", metadata);
    }
    Ok(response)
}

async fn append(
    State(state): State<MediaState>,
    auth: Result<BearerDevice, AuthRejection>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut body = body.into_data_stream();
    let answer = async {
        let BearerDevice(device) = auth.map_err(IntoResponse::into_response)?;
        tus_version(&headers)?;
        let essence = header_str(&headers, "content-type")
            .and_then(|v| v.split(';').next())
            .map(str::trim);
        if essence != Some(OFFSET_OCTET_STREAM) {
            return Err(MediaError::WrongContentType.into_response());
        }
        let offset = number(&headers, "upload-offset")?
            .ok_or_else(|| MediaError::InvalidUpload("send Upload-Offset".into()))?;
        let checksum = checksum(&headers)?;
        let patch = Patch {
            offset,
            length: number(&headers, "content-length")?,
            checksum,
        };
        let upload = state
            .media
            .append(device, &id, patch, &mut body, now_millis())
            .await?;
        let mut response = StatusCode::NO_CONTENT.into_response();
        upload_headers(&mut response, &upload);
        Ok::<_, Response>(response)
    }
    .await;
    refused_after_drain(answer, &mut body).await
}

/// How much of a refused request's body is read (and dropped) before the
/// refusal is answered, at most, and for how long. A client still sending
/// when the server answers and closes would see its connection reset (the
/// unread bytes make the server's kernel answer with RST, which can
/// discard the answer before the client reads it) instead of the code.
const DRAIN_LIMIT: usize = 1024 * 1024;
const DRAIN_TIME: Duration = Duration::from_secs(2);

/// `answer`, once what is left of `body` (up to [`DRAIN_LIMIT`] bytes and
/// [`DRAIN_TIME`]) has been read, if it is a refusal.
async fn refused_after_drain(
    answer: Result<Response, Response>,
    body: &mut axum::body::BodyDataStream,
) -> Response {
    match answer {
        Ok(response) => response,
        Err(refusal) => {
            let mut left = DRAIN_LIMIT;
            let _ = tokio::time::timeout(DRAIN_TIME, async {
                while let Some(Ok(chunk)) = body.next().await {
                    left = left.saturating_sub(chunk.len());
                    if left == 0 {
                        break;
                    }
                }
            })
            .await;
            refusal
        }
    }
}

async fn upload_result(
    State(state): State<MediaState>,
    BearerDevice(device): BearerDevice,
    Path(id): Path<String>,
) -> Result<Json<MediaInfo>, MediaError> {
    let upload = state.media.upload(device, &id, now_millis()).await?;
    match &upload.media {
        Some(media) => Ok(Json(MediaInfo::from(media))),
        None => Err(MediaError::Incomplete {
            offset: upload.offset(),
            length: upload.length,
        }),
    }
}

async fn terminate(
    State(state): State<MediaState>,
    BearerDevice(device): BearerDevice,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, MediaError> {
    tus_version(&headers)?;
    state.media.terminate(device, &id, now_millis()).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn upload_whole(
    State(state): State<MediaState>,
    auth: Result<BearerDevice, AuthRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut body = body.into_data_stream();
    let answer = async {
        let BearerDevice(device) = auth.map_err(IntoResponse::into_response)?;
        // HTTP/1.1: a request with neither Content-Length nor
        // Transfer-Encoding has an empty body; a chunked one has a length
        // nobody told.
        let length = match number(&headers, "content-length")? {
            Some(length) => length,
            None if headers.contains_key(header::TRANSFER_ENCODING) => {
                return Err(MediaError::LengthRequired.into_response());
            }
            None => 0,
        };
        let content_type = match header_str(&headers, "content-type") {
            None | Some("") => DEFAULT_CONTENT_TYPE.to_owned(),
            Some(value) if is_content_type(value) => value.to_owned(),
            Some(value) => {
                return Err(MediaError::InvalidUpload(format!(
                    "Content-Type must be a media type such as image/jpeg, not {value:?}"
                ))
                .into_response());
            }
        };
        let media = state
            .media
            .put(device, length, content_type, &mut body, now_millis())
            .await?;
        let info = MediaInfo::from(&media);
        let mut response = (StatusCode::CREATED, Json(&info)).into_response();
        if let Ok(location) = HeaderValue::from_str(&info.url) {
            response.headers_mut().insert(header::LOCATION, location);
        }
        Ok::<_, Response>(response)
    }
    .await;
    refused_after_drain(answer, &mut body).await
}

/// The one byte range `value` asks of `size` bytes (end exclusive):
/// `Ok(None)` for the whole (no header, a malformed one, or several
/// ranges: RFC 9110 lets a server ignore those), `Err` when unsatisfiable.
pub(crate) fn range_of(
    value: Option<&str>,
    size: u64,
) -> Result<Option<std::ops::Range<u64>>, MediaError> {
    let Some(value) = value else {
        return Ok(None);
    };
    let Ok(parsed) = http_range_header::parse_range_header(value) else {
        return Ok(None);
    };
    match parsed.validate(size) {
        Ok(ranges) => match ranges.as_slice() {
            [one] => Ok(Some(*one.start()..one.end() + 1)),
            _ => Ok(None),
        },
        Err(http_range_header::RangeUnsatisfiableError::Unsatisfiable) => {
            Err(MediaError::RangeNotSatisfiable { size })
        }
        Err(_) => Ok(None),
    }
}

fn etag(media: &MediaRecord) -> String {
    format!("\"{}\"", media.sha256)
}

async fn download(
    State(state): State<MediaState>,
    BearerDevice(_device): BearerDevice,
    Path(id): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, MediaError> {
    let now = now_millis();
    let media = state.media.media(&id, now).await?;
    let tag = etag(&media);
    let mut response = Response::new(Body::empty());
    let out = response.headers_mut();
    out.insert(
        header::ETAG,
        HeaderValue::from_str(&tag).unwrap_or(HeaderValue::from_static("")),
    );
    out.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    // Media never change; a cache may keep them until they expire.
    let left = (media.expires_ms - now).div_euclid(1000).max(0);
    if let Ok(value) = HeaderValue::from_str(&format!("private, max-age={left}, immutable")) {
        out.insert(header::CACHE_CONTROL, value);
    }
    out.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    let matches = header_str(&headers, "if-none-match").is_some_and(|v| {
        v == "*"
            || v.split(',')
                .any(|t| t.trim().trim_start_matches("W/") == tag)
    });
    if matches {
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        return Ok(response);
    }
    out.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&media.content_type)
            .unwrap_or(HeaderValue::from_static(DEFAULT_CONTENT_TYPE)),
    );
    // If-Range: the range only if the client's copy is this one.
    let if_range = header_str(&headers, "if-range").is_none_or(|v| v == tag);
    let range = if if_range {
        range_of(header_str(&headers, "range"), media.size)?
    } else {
        None
    };
    let (status, bytes) = match range {
        Some(range) => {
            let value = format!("bytes {}-{}/{}", range.start, range.end - 1, media.size);
            if let Ok(value) = HeaderValue::from_str(&value) {
                out.insert(header::CONTENT_RANGE, value);
            }
            (StatusCode::PARTIAL_CONTENT, range)
        }
        None => (StatusCode::OK, 0..media.size),
    };
    out.insert(
        header::CONTENT_LENGTH,
        HeaderValue::from(bytes.end - bytes.start),
    );
    *response.status_mut() = status;
    if method != Method::HEAD && !bytes.is_empty() {
        *response.body_mut() = Body::from_stream(state.media.read(&media, bytes).await?);
    }
    Ok(response)
}

async fn delete_media(
    State(state): State<MediaState>,
    BearerDevice(device): BearerDevice,
    Path(id): Path<String>,
) -> Result<StatusCode, MediaError> {
    state.media.delete(device, &id, now_millis()).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn metadata_pairs() {
        let pairs = parse_metadata("filename d29ybGRfZG9taW5hdGlvbl9wbGFuLnBkZg==,is_confidential")
            .expect("as the test set it up");
        assert_eq!(
            pairs[0],
            ("filename".into(), b"world_domination_plan.pdf".to_vec())
        );
        assert_eq!(pairs[1], ("is_confidential".into(), Vec::new()));
        assert!(parse_metadata("filename !!!").is_err());
        assert!(parse_metadata("a YQ==,a YQ==").is_err());
        assert!(parse_metadata(&"k".repeat(MAX_METADATA + 1)).is_err());
        let typed = parse_metadata("filetype aW1hZ2UvanBlZw==").expect("as the test set it up");
        assert_eq!(
            metadata_content_type(&typed).expect("as the test set it up"),
            "image/jpeg"
        );
        let bad = parse_metadata("content_type bm90IGEgdHlwZQ==").expect("as the test set it up");
        assert!(metadata_content_type(&bad).is_err());
    }

    #[test]
    fn content_types() {
        assert!(is_content_type("image/jpeg"));
        assert!(is_content_type("audio/ogg; codecs=opus"));
        assert!(!is_content_type("jpeg"));
        assert!(!is_content_type("image/"));
        assert!(!is_content_type("text/html\r\nX: y"));
    }

    #[test]
    fn ranges() {
        assert_eq!(range_of(None, 10).expect("as the test set it up"), None);
        assert_eq!(
            range_of(Some("bytes=0-3"), 10).expect("as the test set it up"),
            Some(0..4)
        );
        assert_eq!(
            range_of(Some("bytes=5-"), 10).expect("as the test set it up"),
            Some(5..10)
        );
        assert_eq!(
            range_of(Some("bytes=-3"), 10).expect("as the test set it up"),
            Some(7..10)
        );
        assert_eq!(
            range_of(Some("bytes=8-100"), 10).expect("as the test set it up"),
            Some(8..10)
        );
        assert!(matches!(
            range_of(Some("bytes=10-"), 10),
            Err(MediaError::RangeNotSatisfiable { size: 10 })
        ));
        // Malformed or several: the whole.
        assert_eq!(
            range_of(Some("lines=1-2"), 10).expect("as the test set it up"),
            None
        );
        assert_eq!(
            range_of(Some("bytes=0-1,4-5"), 10).expect("as the test set it up"),
            None
        );
    }

    proptest! {
        /// Whatever the header, an answered range lies inside the media.
        #[test]
        fn a_range_is_inside_the_media(start in 0u64..200, end in 0u64..200, size in 1u64..100, form in 0..3) {
            let value = match form {
                0 => format!("bytes={start}-{end}"),
                1 => format!("bytes={start}-"),
                _ => format!("bytes=-{end}"),
            };
            if let Ok(Some(range)) = range_of(Some(&value), size) {
                prop_assert!(range.start < range.end && range.end <= size);
            }
        }
    }
}
