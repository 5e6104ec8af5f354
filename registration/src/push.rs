//! Push tokens over HTTP, and the account store as the push crate's
//! [`PushStore`].
//!
//! - `PUT /v1/devices/self/push-token` (bearer credential)
//!   `{"platform": "apns"|"apns_sandbox"|"fcm", "token"}` → `204`
//! - `DELETE /v1/devices/self/push-token` (bearer credential) → `204`
//!
//! A token can also come with registration and linking (`"push"` in their
//! bodies) and over the session (`SetPushToken`). `PUT` is limited per
//! account ([`TOKENS_BURST`], [`TOKENS_PER_MINUTE`]).

use axum::extract::State;
use http::StatusCode;
use parley_identity::BearerDevice;
use parley_push::{BoxFuture, Device, Platform, PushStore, StoreFailed, Target, TokenError};
use serde::Deserialize;

use crate::api::RegistrationState;
use crate::error::AppError;
use crate::extract::JsonBody;
use crate::store::{self, AccountStore};

/// Push token registrations one account may make over HTTP at once ...
pub const TOKENS_BURST: u32 = 10;
/// ... and per minute after that (an app registers its token at start,
/// and when the OS gives it a new one). Each may call the push service.
/// Past it: `429 RATE_LIMITED` with `Retry-After`.
pub const TOKENS_PER_MINUTE: u32 = 10;

/// A push token as the API takes it.
#[derive(Debug, Deserialize)]
pub struct PushTokenBody {
    pub platform: String,
    pub token: String,
}

impl PushTokenBody {
    /// Checks what can be checked before anything is spent (a code, a
    /// link code): the platform and the token's form. The platform, and
    /// the body.
    pub fn checked(self) -> Result<(Platform, Self), AppError> {
        let platform = Platform::parse(&self.platform).ok_or_else(|| {
            AppError::InvalidPushToken(
                "platform must be \"apns\", \"apns_sandbox\" or \"fcm\"".to_owned(),
            )
        })?;
        if !parley_push::registrar::valid_token(&self.token) {
            return Err(AppError::InvalidPushToken(format!(
                "token must be 1 to {} printable ASCII characters",
                parley_push::registrar::MAX_TOKEN_BYTES
            )));
        }
        Ok((platform, self))
    }
}

impl From<TokenError> for AppError {
    fn from(error: TokenError) -> Self {
        match error {
            TokenError::InvalidToken(detail) => AppError::InvalidPushToken(detail),
            TokenError::Unconfigured(platform) => AppError::PushPlatformUnavailable(platform),
            TokenError::Failed(detail) => AppError::PushFailed(detail),
            TokenError::NoSuchDevice => AppError::NoSuchDevice,
            TokenError::Store(detail) => AppError::Internal(crate::error::Internal::Other(
                format!("push tokens: {detail}"),
            )),
        }
    }
}

impl RegistrationState {
    /// Registers `body` as `device`'s token right after it was registered
    /// or linked. The answer's `"push"`: `"registered"`, or the code of
    /// why not; the device is registered or linked either way, and the app
    /// sets its token again later (`PUT /v1/devices/self/push-token`).
    pub(crate) async fn push_after_joining(
        &self,
        device: Device,
        body: Option<(Platform, PushTokenBody)>,
    ) -> Option<&'static str> {
        let (platform, body) = body?;
        Some(match self.push().set(device, platform, &body.token).await {
            Ok(()) => "registered",
            Err(error) => {
                let error = AppError::from(error);
                tracing::warn!(%error, "push token not registered with the new device");
                error.code()
            }
        })
    }
}

/// `PUT /v1/devices/self/push-token`.
#[tracing::instrument(skip_all, fields(user = device.0.user))]
pub(crate) async fn set_push_token(
    State(state): State<RegistrationState>,
    device: BearerDevice,
    JsonBody(body): JsonBody<PushTokenBody>,
) -> Result<StatusCode, AppError> {
    let (platform, body) = body.checked()?;
    state.check_push_token_rate(device.0.user)?;
    let device = Device::new(device.0.user, device.0.device);
    state.push().set(device, platform, &body.token).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /v1/devices/self/push-token`: no more pushes to this device.
#[tracing::instrument(skip_all, fields(user = device.0.user))]
pub(crate) async fn clear_push_token(
    State(state): State<RegistrationState>,
    device: BearerDevice,
) -> Result<StatusCode, AppError> {
    let device = Device::new(device.0.user, device.0.device);
    state.push().clear(device).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn failed(error: crate::StoreError) -> StoreFailed {
    StoreFailed(error.to_string())
}

impl PushStore for AccountStore {
    fn target(&self, device: Device) -> BoxFuture<'_, Result<Option<Target>, StoreFailed>> {
        Box::pin(async move { self.push_target(device).await.map_err(failed) })
    }

    fn known_endpoint<'a>(
        &'a self,
        device: Device,
        platform: Platform,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, StoreFailed>> {
        Box::pin(async move {
            self.known_push_endpoint(device, platform, token)
                .await
                .map_err(failed)
        })
    }

    fn save<'a>(
        &'a self,
        device: Device,
        target: &'a Target,
    ) -> BoxFuture<'a, Result<bool, StoreFailed>> {
        Box::pin(async move {
            self.save_push_target(device, target, store::now_millis())
                .await
                .map_err(failed)
        })
    }

    fn clear(&self, device: Device) -> BoxFuture<'_, Result<bool, StoreFailed>> {
        Box::pin(async move { self.clear_push_target(device).await.map_err(failed) })
    }

    fn mark_dead<'a>(
        &'a self,
        device: Device,
        target: &'a Target,
    ) -> BoxFuture<'a, Result<bool, StoreFailed>> {
        Box::pin(async move { self.mark_push_dead(device, target).await.map_err(failed) })
    }
}
