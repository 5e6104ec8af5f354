//! The one error type of the HTTP API, and the documented codes it maps to.
//!
//! Every error response has the body
//! `{"error": {"code": "<CODE>", "message": "<human readable>"}}`, with
//! `attempts_left` (WRONG_CODE), `retry_after` (RATE_LIMITED, UNAVAILABLE;
//! seconds) or `max_devices` (DEVICE_LIMIT) added inside the `error` object. Responses with `retry_after`
//! also carry a `Retry-After` header with the same number.
//!
//! | code | status | when |
//! | --- | --- | --- |
//! | `INVALID_PHONE` | 400 | a phone number is not E.164 |
//! | `INVALID_REQUEST` | 400 | malformed JSON, missing field, wrong content type, too many phones |
//! | `PAYLOAD_TOO_LARGE` | 413 | body over 64 KiB |
//! | `RATE_LIMITED` | 429 | code or lookup limit reached |
//! | `WRONG_CODE` | 401 | wrong code; `attempts_left` guesses remain |
//! | `NO_PENDING_CODE` | 404 | no code requested, already used, or killed by wrong guesses |
//! | `CODE_EXPIRED` | 410 | the code's time ran out; request a new one |
//! | `SMS_FAILED` | 502 | the SMS could not be sent; it did not count against the limits |
//! | `UNAVAILABLE` | 503 | the server is at its concurrency limit or the request timed out |
//! | `INTERNAL` | 500 | anything else; details are logged, never returned |
//! | `PRIMARY_ONLY` | 403 | only the primary device may make link codes |
//! | `FORBIDDEN` | 403 | a linked device tried to unlink another device |
//! | `LINK_CODE_INVALID` | 404 | unknown, expired, used or killed link code (one answer for all) |
//! | `NO_SUCH_DEVICE` | 404 | not a device of this account |
//! | `NO_SUCH_USER` | 404 | no registered user has this id |
//! | `DEVICE_LIMIT` | 409 | the account has its most devices; unlink one first |
//! | `PRIMARY_DEVICE` | 409 | the primary device cannot be unlinked |
//! | `INVALID_PUSH_TOKEN` | 400 | unknown platform, or a token that is empty, too long, not printable ASCII, or refused by the push service |
//! | `PUSH_PLATFORM_UNAVAILABLE` | 400 | this server sends no pushes for that platform |
//! | `PUSH_FAILED` | 502 | the push service failed or timed out; nothing changed, retry later |
//!
//! Credential refusals (`401 UNAUTHORIZED`, `TOKEN_INVALID`,
//! `TOKEN_EXPIRED`, `TOKEN_REVOKED`) come from
//! `parley_identity::BearerDevice` in the same shape: the vocabulary of the
//! gateway's upgrade too.

use std::time::Duration;

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;

use crate::sms::SmsError;
use crate::store::StoreError;
use parley_identity::TokenError;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("phone number must be E.164: '+' and 8 to 15 digits, not starting with 0")]
    InvalidPhone,
    /// The message is shown to the client; it must not echo secrets.
    #[error("{0}")]
    InvalidRequest(String),
    #[error("request body too large")]
    PayloadTooLarge,
    #[error("too many requests, retry later")]
    RateLimited { retry_after: Duration },
    #[error("wrong code")]
    WrongCode { attempts_left: u32 },
    #[error("no code is pending for this number; request one first")]
    NoPendingCode,
    #[error("the code has expired; request a new one")]
    CodeExpired,
    #[error("the SMS could not be sent")]
    SmsFailed(#[source] SmsError),
    #[error("only the primary device (the phone registered by SMS) can make link codes")]
    PrimaryOnly,
    #[error("a linked device can unlink only itself; ask the primary device")]
    Forbidden,
    #[error(
        "this link code is not valid (wrong, expired, used, or killed by wrong tries); make a new one on the primary device"
    )]
    LinkCodeInvalid,
    #[error("no such device on this account")]
    NoSuchDevice,
    #[error("no such user")]
    NoSuchUser,
    #[error(
        "this account has the most devices it may have ({max}, the primary included); unlink one first"
    )]
    DeviceLimit { max: u32 },
    #[error("the primary device cannot be unlinked; register the number on another phone instead")]
    PrimaryDevice,
    /// The message is shown to the client: it never quotes the token.
    #[error("invalid push token: {0}")]
    InvalidPushToken(String),
    #[error("this server sends no push notifications for {0}")]
    PushPlatformUnavailable(parley_push::Platform),
    #[error("the push service failed; retry later")]
    PushFailed(String),
    #[error("server busy, retry later")]
    Unavailable,
    #[error("internal error")]
    Internal(#[source] Internal),
}

/// Causes of an `INTERNAL` answer; logged where the response is made.
#[derive(Debug, thiserror::Error)]
pub enum Internal {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("{0}")]
    Other(String),
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        Self::Internal(e.into())
    }
}

impl From<TokenError> for AppError {
    fn from(e: TokenError) -> Self {
        Self::Internal(e.into())
    }
}

impl AppError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidPhone => "INVALID_PHONE",
            Self::InvalidRequest(_) => "INVALID_REQUEST",
            Self::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            Self::RateLimited { .. } => "RATE_LIMITED",
            Self::WrongCode { .. } => "WRONG_CODE",
            Self::NoPendingCode => "NO_PENDING_CODE",
            Self::CodeExpired => "CODE_EXPIRED",
            Self::SmsFailed(_) => "SMS_FAILED",
            Self::PrimaryOnly => "PRIMARY_ONLY",
            Self::Forbidden => "FORBIDDEN",
            Self::LinkCodeInvalid => "LINK_CODE_INVALID",
            Self::NoSuchDevice => "NO_SUCH_DEVICE",
            Self::NoSuchUser => "NO_SUCH_USER",
            Self::DeviceLimit { .. } => "DEVICE_LIMIT",
            Self::PrimaryDevice => "PRIMARY_DEVICE",
            Self::InvalidPushToken(_) => "INVALID_PUSH_TOKEN",
            Self::PushPlatformUnavailable(_) => "PUSH_PLATFORM_UNAVAILABLE",
            Self::PushFailed(_) => "PUSH_FAILED",
            Self::Unavailable => "UNAVAILABLE",
            Self::Internal(_) => "INTERNAL",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidPhone
            | Self::InvalidRequest(_)
            | Self::InvalidPushToken(_)
            | Self::PushPlatformUnavailable(_) => StatusCode::BAD_REQUEST,
            Self::PushFailed(_) => StatusCode::BAD_GATEWAY,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::WrongCode { .. } => StatusCode::UNAUTHORIZED,
            Self::NoPendingCode => StatusCode::NOT_FOUND,
            Self::CodeExpired => StatusCode::GONE,
            Self::SmsFailed(_) => StatusCode::BAD_GATEWAY,
            Self::PrimaryOnly | Self::Forbidden => StatusCode::FORBIDDEN,
            Self::LinkCodeInvalid | Self::NoSuchDevice | Self::NoSuchUser => StatusCode::NOT_FOUND,
            Self::DeviceLimit { .. } | Self::PrimaryDevice => StatusCode::CONFLICT,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// One error of every kind, so that what documents the codes can be
    /// checked against them (tests/openapi.rs: each code is in
    /// docs/openapi.json, at its status). The unit test
    /// `every_kind_is_listed` keeps this complete.
    pub fn every_kind() -> Vec<AppError> {
        vec![
            Self::InvalidPhone,
            Self::InvalidRequest(String::new()),
            Self::PayloadTooLarge,
            Self::RateLimited {
                retry_after: Duration::from_secs(1),
            },
            Self::WrongCode { attempts_left: 1 },
            Self::NoPendingCode,
            Self::CodeExpired,
            Self::SmsFailed(SmsError::Provider(String::new())),
            Self::PrimaryOnly,
            Self::Forbidden,
            Self::LinkCodeInvalid,
            Self::NoSuchDevice,
            Self::NoSuchUser,
            Self::DeviceLimit { max: 1 },
            Self::PrimaryDevice,
            Self::InvalidPushToken(String::new()),
            Self::PushPlatformUnavailable(parley_push::Platform::Fcm),
            Self::PushFailed(String::new()),
            Self::Unavailable,
            Self::Internal(Internal::Other(String::new())),
        ]
    }

    /// Whole seconds to wait, rounded up and at least 1, so that a client
    /// retrying exactly then is not refused again.
    fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Self::RateLimited { retry_after } => {
                let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                Some(secs.max(1))
            }
            Self::Unavailable => Some(1),
            _ => None,
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorObject<'a>,
}

#[derive(Serialize)]
struct ErrorObject<'a> {
    code: &'a str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    attempts_left: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_devices: Option<u32>,
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        // Logged once, here, where the error is handled. The causes name
        // no phone numbers, codes or tokens.
        match &self {
            Self::Internal(cause) => tracing::error!(error = %cause, "request failed"),
            Self::SmsFailed(cause) => tracing::warn!(error = %cause, "SMS not sent"),
            Self::PushFailed(cause) => tracing::warn!(error = %cause, "push token not registered"),
            _ => {}
        }
        let retry_after = self.retry_after_secs();
        let body = ErrorBody {
            error: ErrorObject {
                code: self.code(),
                message: self.to_string(),
                attempts_left: match self {
                    Self::WrongCode { attempts_left } => Some(attempts_left),
                    _ => None,
                },
                retry_after,
                max_devices: match self {
                    Self::DeviceLimit { max } => Some(max),
                    _ => None,
                },
            },
        };
        let mut response = (self.status(), Json(body)).into_response();
        let headers = response.headers_mut();
        if let Some(secs) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn render(e: AppError) -> (StatusCode, http::HeaderMap, serde_json::Value) {
        let response = e.into_response();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (
            status,
            headers,
            serde_json::from_slice(&bytes).expect("json"),
        )
    }

    #[tokio::test]
    async fn shape_and_extras() {
        let (status, headers, body) = render(AppError::RateLimited {
            retry_after: Duration::from_millis(1500),
        })
        .await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(body["error"]["code"], "RATE_LIMITED");
        assert_eq!(body["error"]["retry_after"], 2);
        assert_eq!(headers[header::RETRY_AFTER], "2");

        let (status, _, body) = render(AppError::WrongCode { attempts_left: 3 }).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["error"]["attempts_left"], 3);
        assert!(body["error"]["message"].is_string());
    }

    #[test]
    fn every_kind_is_listed() {
        let mut listed = std::collections::BTreeSet::new();
        for error in AppError::every_kind() {
            // No wildcard arm: a new kind does not compile until it has an
            // arm (and KINDS counts it), and then this fails until
            // every_kind lists it.
            let kind = match error {
                AppError::InvalidPhone => 0,
                AppError::InvalidRequest(_) => 1,
                AppError::PayloadTooLarge => 2,
                AppError::RateLimited { .. } => 3,
                AppError::WrongCode { .. } => 4,
                AppError::NoPendingCode => 5,
                AppError::CodeExpired => 6,
                AppError::SmsFailed(_) => 7,
                AppError::PrimaryOnly => 8,
                AppError::Forbidden => 9,
                AppError::LinkCodeInvalid => 10,
                AppError::NoSuchDevice => 11,
                AppError::NoSuchUser => 12,
                AppError::DeviceLimit { .. } => 13,
                AppError::PrimaryDevice => 14,
                AppError::InvalidPushToken(_) => 15,
                AppError::PushPlatformUnavailable(_) => 16,
                AppError::PushFailed(_) => 17,
                AppError::Unavailable => 18,
                AppError::Internal(_) => 19,
            };
            assert!(listed.insert(kind), "kind {kind} is listed twice");
        }
        // The number of arms above.
        const KINDS: usize = 20;
        assert_eq!(listed, (0..KINDS).collect(), "every_kind misses a kind");
    }

    #[tokio::test]
    async fn internal_hides_the_cause() {
        let (status, _, body) = render(AppError::Internal(Internal::Other(
            "secret detail".to_owned(),
        )))
        .await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body["error"]["code"], "INTERNAL");
        assert!(!body.to_string().contains("secret detail"));
    }
}
