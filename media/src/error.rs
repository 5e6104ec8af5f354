//! The media routes' errors and the documented codes they map to.
//!
//! Every error answer has the HTTP API's body
//! `{"error": {"code": "<CODE>", "message": "<human readable>"}}`, with
//! `retry_after` (seconds) inside `error` and a `Retry-After` header when
//! a retry later can succeed.
//!
//! | code | status | when |
//! | --- | --- | --- |
//! | `INVALID_UPLOAD` | 400 | missing or bad `Upload-Length`, `Upload-Offset` or `Upload-Metadata`, an unsupported checksum algorithm |
//! | `INVALID_UPLOAD` | 411 | a one-request upload sent chunked, without `Content-Length` |
//! | `INVALID_UPLOAD` | 415 | a `PATCH` whose `Content-Type` is not `application/offset+octet-stream` |
//! | `TUS_VERSION` | 412 | a tus request without `Tus-Resumable: 1.0.0` |
//! | `MEDIA_TOO_LARGE` | 413 | the file is over the size limit, or a `PATCH` goes past `Upload-Length` |
//! | `MEDIA_QUOTA` | 429 | the user's uploads per hour or bytes per day are used up |
//! | `TOO_MANY_UPLOADS` | 429 | the user has the most uploads in progress at once |
//! | `NOT_FOUND` | 404 | unknown, expired or deleted media or upload (or another user's upload) |
//! | `OFFSET_MISMATCH` | 409 | `Upload-Offset` is not the upload's offset: `HEAD` it and resume |
//! | `UPLOAD_INCOMPLETE` | 409 | the upload has not received all its bytes yet |
//! | `CHECKSUM_MISMATCH` | 460 | the `PATCH` body does not match its `Upload-Checksum`; none of it was kept |
//! | `RANGE_NOT_SATISFIABLE` | 416 | the `Range` starts past the end of the media |
//! | `UNAVAILABLE` | 503 | the storage cannot be reached, or the server has the most uploads in progress it takes |
//! | `INTERNAL` | 500 | anything else; details are logged, never returned |

use std::time::Duration;

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};

/// tus's status for a checksum mismatch (not in the HTTP registry).
pub const CHECKSUM_MISMATCH_STATUS: u16 = 460;

#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("{0}")]
    InvalidUpload(String),
    #[error("send Content-Length (or upload resumably at /v1/media/uploads)")]
    LengthRequired,
    #[error("a PATCH body must be sent with Content-Type: application/offset+octet-stream")]
    WrongContentType,
    #[error("this server speaks tus 1.0.0: send Tus-Resumable: 1.0.0")]
    TusVersion,
    #[error("the file is larger than this server takes ({max} bytes at most)")]
    TooLarge { max: u64 },
    #[error("the body goes past Upload-Length ({length} bytes)")]
    PastLength { length: u64 },
    #[error("upload quota used up ({0}); retry later")]
    Quota(&'static str, Duration),
    #[error("too many uploads in progress for this user; finish one first")]
    TooManyUploads,
    #[error("no such media or upload (unknown, expired or deleted)")]
    NotFound,
    #[error("Upload-Offset {sent} is not the upload's offset {offset}: resume from {offset}")]
    OffsetMismatch { sent: u64, offset: u64 },
    #[error("the upload has {offset} of its {length} bytes; send the rest first")]
    Incomplete { offset: u64, length: u64 },
    #[error("the body does not match Upload-Checksum; nothing of it was kept, send it again")]
    ChecksumMismatch,
    #[error("the range starts past the end of the media ({size} bytes)")]
    RangeNotSatisfiable { size: u64 },
    #[error("the media storage cannot be reached; retry later")]
    Storage(#[source] object_store::Error),
    #[error("the server has the most uploads in progress it takes; retry later")]
    Busy,
    #[error("internal error")]
    Internal(String),
}

impl MediaError {
    /// The documented code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidUpload(_) | Self::WrongContentType | Self::LengthRequired => {
                "INVALID_UPLOAD"
            }
            Self::TusVersion => "TUS_VERSION",
            Self::TooLarge { .. } | Self::PastLength { .. } => "MEDIA_TOO_LARGE",
            Self::Quota(..) => "MEDIA_QUOTA",
            Self::TooManyUploads => "TOO_MANY_UPLOADS",
            Self::NotFound => "NOT_FOUND",
            Self::OffsetMismatch { .. } => "OFFSET_MISMATCH",
            Self::Incomplete { .. } => "UPLOAD_INCOMPLETE",
            Self::ChecksumMismatch => "CHECKSUM_MISMATCH",
            Self::RangeNotSatisfiable { .. } => "RANGE_NOT_SATISFIABLE",
            Self::Storage(_) | Self::Busy => "UNAVAILABLE",
            Self::Internal(_) => "INTERNAL",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidUpload(_) => StatusCode::BAD_REQUEST,
            Self::WrongContentType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::LengthRequired => StatusCode::LENGTH_REQUIRED,
            Self::TusVersion => StatusCode::PRECONDITION_FAILED,
            Self::TooLarge { .. } | Self::PastLength { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Quota(..) | Self::TooManyUploads => StatusCode::TOO_MANY_REQUESTS,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::OffsetMismatch { .. } | Self::Incomplete { .. } => StatusCode::CONFLICT,
            Self::ChecksumMismatch => {
                StatusCode::from_u16(CHECKSUM_MISMATCH_STATUS).expect("460 is a valid status")
            }
            Self::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            Self::Storage(_) | Self::Busy => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// One error of every kind, for the checks that every code is
    /// documented (tests/openapi.rs); the test below keeps it complete.
    pub fn every_kind() -> Vec<MediaError> {
        vec![
            Self::InvalidUpload(String::new()),
            Self::LengthRequired,
            Self::WrongContentType,
            Self::TusVersion,
            Self::TooLarge { max: 1 },
            Self::PastLength { length: 1 },
            Self::Quota("uploads per hour", Duration::from_secs(1)),
            Self::TooManyUploads,
            Self::NotFound,
            Self::OffsetMismatch { sent: 0, offset: 1 },
            Self::Incomplete {
                offset: 0,
                length: 1,
            },
            Self::ChecksumMismatch,
            Self::RangeNotSatisfiable { size: 1 },
            Self::Storage(object_store::Error::NotImplemented {
                operation: String::new(),
                implementer: String::new(),
            }),
            Self::Busy,
            Self::Internal(String::new()),
        ]
    }

    /// Seconds after which the same request can succeed, if it can.
    fn retry_after(&self) -> Option<u64> {
        match self {
            Self::Quota(_, wait) => Some(wait.as_secs().max(1)),
            Self::TooManyUploads | Self::Busy | Self::Storage(_) => Some(1),
            _ => None,
        }
    }
}

impl From<object_store::Error> for MediaError {
    fn from(error: object_store::Error) -> Self {
        match error {
            object_store::Error::NotFound { .. } => Self::NotFound,
            error => Self::Storage(error),
        }
    }
}

/// For handlers that answer `Result<Response, Response>` (those that read
/// what is left of a refused body first).
impl From<MediaError> for Response {
    fn from(error: MediaError) -> Self {
        error.into_response()
    }
}

impl IntoResponse for MediaError {
    fn into_response(self) -> Response {
        match &self {
            // Logged once, here, where it is handled.
            Self::Storage(error) => tracing::warn!(%error, "media storage failed"),
            Self::Internal(error) => tracing::error!(%error, "media request failed"),
            _ => {}
        }
        let mut error = serde_json::json!({"code": self.code(), "message": self.to_string()});
        let retry_after = self.retry_after();
        if let Some(seconds) = retry_after {
            error["retry_after"] = seconds.into();
        }
        let mut response =
            (self.status(), Json(serde_json::json!({ "error": error }))).into_response();
        let headers = response.headers_mut();
        if let Some(seconds) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        match self {
            Self::OffsetMismatch { offset, .. } => {
                headers.insert("upload-offset", HeaderValue::from(offset));
            }
            Self::TusVersion => {
                headers.insert("tus-version", HeaderValue::from_static(crate::TUS_VERSION));
            }
            Self::RangeNotSatisfiable { size } => {
                if let Ok(value) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    headers.insert(header::CONTENT_RANGE, value);
                }
            }
            _ => {}
        }
        // Tus-Resumable: the tus routes' layer adds it to all their answers.
        response
    }
}

#[cfg(test)]
mod tests {
    use super::MediaError;

    #[test]
    fn every_kind_is_listed() {
        let mut listed = std::collections::BTreeSet::new();
        for error in MediaError::every_kind() {
            // No wildcard arm: a new kind does not compile until it has an
            // arm here, and then this fails until every_kind lists it.
            let kind = match error {
                MediaError::InvalidUpload(_) => 0,
                MediaError::LengthRequired => 1,
                MediaError::WrongContentType => 2,
                MediaError::TusVersion => 3,
                MediaError::TooLarge { .. } => 4,
                MediaError::PastLength { .. } => 5,
                MediaError::Quota(..) => 6,
                MediaError::TooManyUploads => 7,
                MediaError::NotFound => 8,
                MediaError::OffsetMismatch { .. } => 9,
                MediaError::Incomplete { .. } => 10,
                MediaError::ChecksumMismatch => 11,
                MediaError::RangeNotSatisfiable { .. } => 12,
                MediaError::Storage(_) => 13,
                MediaError::Busy => 14,
                MediaError::Internal(_) => 15,
            };
            listed.insert(kind);
        }
        assert_eq!(listed.len(), 16);
    }
}
