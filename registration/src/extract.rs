//! Request extractors that reject in the documented error shape, instead of
//! axum's plain-text rejections.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRef, FromRequest, FromRequestParts, Request};
use http::request::Parts;
use http::{StatusCode, header};
use serde::de::DeserializeOwned;

use crate::auth::{AuthError, Authenticator};
use crate::error::{AppError, Internal};
use crate::token::DeviceClaims;

/// `axum::Json`, but a malformed body, a missing field or a wrong content
/// type is `400 INVALID_REQUEST`, and a body over the route's limit is
/// `413 PAYLOAD_TOO_LARGE`, both in our JSON shape.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(rejection.into()),
        }
    }
}

impl From<JsonRejection> for AppError {
    fn from(rejection: JsonRejection) -> Self {
        // The body limit surfaces as a failure to buffer the body, with 413.
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return Self::PayloadTooLarge;
        }
        let message = match &rejection {
            JsonRejection::MissingJsonContentType(_) => {
                "expected a body with Content-Type: application/json".to_owned()
            }
            // serde's message says which field or line is wrong; it only
            // ever quotes what this client itself sent, and it is not logged.
            JsonRejection::JsonDataError(_) | JsonRejection::JsonSyntaxError(_) => {
                rejection.body_text()
            }
            _ => "could not read the request body".to_owned(),
        };
        Self::InvalidRequest(message)
    }
}

/// The authenticated device of a request carrying
/// `Authorization: Bearer <jwt>`. No credential is `401 UNAUTHORIZED`; a bad
/// one `401 TOKEN_INVALID`, `TOKEN_EXPIRED` or `TOKEN_REVOKED` (a replaced
/// device, or a user the store does not have), as at the gateway.
#[derive(Clone, Copy, Debug)]
pub struct BearerDevice(pub DeviceClaims);

impl<S> FromRequestParts<S> for BearerDevice
where
    S: Send + Sync,
    Authenticator: FromRef<S>,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token)
            .ok_or(AppError::Unauthorized)?;
        match Authenticator::from_ref(state).authenticate(token).await {
            Ok(claims) => Ok(Self(claims)),
            Err(AuthError::Revoked | AuthError::UnknownUser) => Err(AppError::TokenRevoked),
            Err(AuthError::Expired) => Err(AppError::TokenExpired),
            Err(AuthError::Invalid(_)) => Err(AppError::TokenInvalid),
            Err(AuthError::Store(e)) => Err(AppError::Internal(Internal::Store(e))),
        }
    }
}

/// The token of an `Authorization` header value `Bearer <token>`; the scheme
/// is case-insensitive (RFC 7235).
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn parses_bearer() {
        assert_eq!(bearer_token("Bearer abc.def"), Some("abc.def"));
        assert_eq!(bearer_token("bearer  abc"), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("abc"), None);
    }
}
