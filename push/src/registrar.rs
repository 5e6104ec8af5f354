//! Registering a device's push token: the push service's endpoint for it,
//! then the device's row. Used by the HTTP API (at registration, at
//! linking, and `PUT /v1/devices/self/push-token`) and by the session's
//! `SetPushToken` frame.

use std::sync::Arc;
use std::time::Duration;

use crate::{Device, Platform, PushError, PushMetrics, PushService, PushStore, Target};

/// Longest accepted token. APNs device tokens are 64 hex digits today
/// (Apple allows them to grow), FCM registration tokens about 160 to 250
/// characters.
pub const MAX_TOKEN_BYTES: usize = 1024;

/// Why a token was not registered. Each maps to a documented code
/// (`INVALID_PUSH_TOKEN`, `PUSH_PLATFORM_UNAVAILABLE`, `PUSH_FAILED`).
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The token is empty, too long, not printable ASCII, or the push
    /// service refused it. Fix the token; retrying the same one fails.
    #[error("invalid push token: {0}")]
    InvalidToken(String),
    /// This server sends no pushes for the platform.
    #[error("push for {0} is not configured on this server")]
    Unconfigured(Platform),
    /// The push service failed or did not answer in time; nothing changed.
    /// Retry later.
    #[error("the push service failed: {0}")]
    Failed(String),
    /// The device is no longer one of its account's.
    #[error("no such device")]
    NoSuchDevice,
    /// The account store failed; nothing changed.
    #[error("the account store failed: {0}")]
    Store(String),
}

/// Whether `token` could be a push token (the service judges the rest).
pub fn valid_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= MAX_TOKEN_BYTES
        && token.bytes().all(|b| b.is_ascii_graphic())
}

#[derive(Clone)]
pub struct Registrar {
    service: Arc<dyn PushService>,
    store: Arc<dyn PushStore>,
    metrics: PushMetrics,
    /// Bound on the push service's part of one registration.
    timeout: Duration,
}

impl std::fmt::Debug for Registrar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registrar")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Registrar {
    pub fn new(
        service: Arc<dyn PushService>,
        store: Arc<dyn PushStore>,
        metrics: PushMetrics,
        timeout: Duration,
    ) -> Self {
        Self {
            service,
            store,
            metrics,
            timeout,
        }
    }

    /// Makes `token` of `platform` the device's push token. Idempotent:
    /// the same token again changes nothing but reviving it (a dead token
    /// registered again is live). A token another device had moves here.
    pub async fn set(
        &self,
        device: Device,
        platform: Platform,
        token: &str,
    ) -> Result<(), TokenError> {
        if !valid_token(token) {
            return Err(TokenError::InvalidToken(format!(
                "a token is 1 to {MAX_TOKEN_BYTES} printable ASCII characters"
            )));
        }
        if !self.service.supports(platform) {
            return Err(TokenError::Unconfigured(platform));
        }
        let store = |e: crate::StoreFailed| TokenError::Store(e.0);
        let known = self
            .store
            .known_endpoint(device, platform, token)
            .await
            .map_err(store)?;
        let endpoint = tokio::time::timeout(
            self.timeout,
            self.service.register(platform, token, known.as_deref()),
        )
        .await
        .map_err(|_| TokenError::Failed("no answer from the push service in time".to_owned()))?
        .map_err(|error| match error {
            PushError::Unconfigured(platform) => TokenError::Unconfigured(platform),
            PushError::InvalidToken(detail) => TokenError::InvalidToken(detail),
            other => TokenError::Failed(other.to_string()),
        })?;
        let target = Target {
            platform,
            token: token.to_owned(),
            endpoint,
        };
        if !self.store.save(device, &target).await.map_err(store)? {
            return Err(TokenError::NoSuchDevice);
        }
        self.metrics
            .tokens_registered
            .get_or_create(&[("platform", platform.as_str())])
            .inc();
        tracing::info!(
            user = device.user,
            device = device.device,
            %platform,
            "push token registered"
        );
        Ok(())
    }

    /// Forgets the device's token: no more pushes until it registers one.
    pub async fn clear(&self, device: Device) -> Result<bool, TokenError> {
        self.store
            .clear(device)
            .await
            .map_err(|e| TokenError::Store(e.0))
    }
}
