//! The JSON body extractor, which rejects in the documented error shape
//! instead of axum's plain text. (The credential's extractor is
//! `parley_identity::BearerDevice`, shared with the other HTTP services.)

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use http::StatusCode;
use serde::de::DeserializeOwned;

use crate::error::AppError;

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
