//! The authenticated device of an HTTP request, for every HTTP service
//! (registration, media): `Authorization: Bearer <token>`, checked by the
//! [`Authenticator`] the service's state provides.
//!
//! A refusal is answered in the HTTP API's documented error shape,
//! `{"error": {"code", "message"}}`, with the codes the gateway's upgrade
//! uses too: `401 UNAUTHORIZED` (no credential), `401 TOKEN_INVALID`,
//! `401 TOKEN_EXPIRED`, `401 TOKEN_REVOKED`, and `503 UNAVAILABLE` when the
//! directory cannot answer.

use axum::extract::{FromRef, FromRequestParts};
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use http::{HeaderValue, StatusCode, header};

use crate::auth::{AuthError, Authenticator};
use crate::token::DeviceClaims;

/// The device behind a request.
#[derive(Clone, Copy, Debug)]
pub struct BearerDevice(pub DeviceClaims);

/// Why a request's credential was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthRejection {
    #[error("no credential: send Authorization: Bearer <token>")]
    Missing,
    #[error("the credential is not valid (malformed, or not signed by this server)")]
    Invalid,
    #[error("the credential has expired; register again")]
    Expired,
    #[error(
        "the credential was revoked: this number was registered again or this device was removed; register again"
    )]
    Revoked,
    #[error("the server cannot check credentials right now; retry later")]
    Unavailable,
}

impl AuthRejection {
    /// Every refusal, so that what documents the codes can be checked
    /// against them (tests/openapi.rs). `every_refusal_is_listed` keeps it
    /// complete.
    pub const ALL: [AuthRejection; 5] = [
        Self::Missing,
        Self::Invalid,
        Self::Expired,
        Self::Revoked,
        Self::Unavailable,
    ];

    /// The documented code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Missing => "UNAUTHORIZED",
            Self::Invalid => "TOKEN_INVALID",
            Self::Expired => "TOKEN_EXPIRED",
            Self::Revoked => "TOKEN_REVOKED",
            Self::Unavailable => "UNAVAILABLE",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNAUTHORIZED,
        }
    }
}

impl From<AuthError> for AuthRejection {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::Expired => Self::Expired,
            AuthError::Invalid(_) => Self::Invalid,
            AuthError::Revoked => Self::Revoked,
            AuthError::Directory(error) => {
                // Logged once, here, where it is handled.
                tracing::warn!(%error, "cannot check a credential");
                Self::Unavailable
            }
        }
    }
}

impl IntoResponse for AuthRejection {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": {"code": self.code(), "message": self.to_string()}
        });
        let mut response = (self.status(), axum::Json(body)).into_response();
        let headers = response.headers_mut();
        match self {
            Self::Unavailable => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
        }
        response
    }
}

impl<S> FromRequestParts<S> for BearerDevice
where
    S: Send + Sync,
    Authenticator: FromRef<S>,
{
    type Rejection = AuthRejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(crate::bearer_token)
            .ok_or(AuthRejection::Missing)?;
        Ok(Self(
            Authenticator::from_ref(state).authenticate(token).await?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_is_listed() {
        let listed: std::collections::BTreeSet<usize> = AuthRejection::ALL
            .iter()
            // No wildcard arm: a new refusal does not compile until it has
            // an arm (and REFUSALS counts it), and then this fails until
            // ALL lists it.
            .map(|refusal| match refusal {
                AuthRejection::Missing => 0,
                AuthRejection::Invalid => 1,
                AuthRejection::Expired => 2,
                AuthRejection::Revoked => 3,
                AuthRejection::Unavailable => 4,
            })
            .collect();
        // The number of arms above.
        const REFUSALS: usize = 5;
        assert_eq!(listed, (0..REFUSALS).collect(), "ALL misses a refusal");
    }
}
