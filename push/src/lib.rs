//! Push notifications: how a phone whose app is asleep learns that
//! something waits for it. The router reports what devices without a live
//! session miss ([`parley_router::Wakeups`]); the [`Pusher`] turns that
//! into at most one content-free notification per device per window, sent
//! through a [`PushService`] (SNS mobile push in production, `parley-sns`;
//! the development [`OutboxPush`] by default), off the message path, from a
//! bounded queue.
//!
//! A device's push token (its platform and the token the phone's OS gave
//! the app) becomes an endpoint of the push service and is stored with the
//! device ([`PushStore`], the account store); [`Registrar`] does both.
//!
//! Modules:
//! - [`pusher`]: the pending pushes, coalescing, delays, the bounded queue
//!   and the workers that publish.
//! - [`registrar`]: registering, replacing and clearing a device's token.
//! - [`outbox`]: the development sink (a line per push in a file).
//! - [`metrics`]: what push counts.

#![forbid(unsafe_code)]

pub mod metrics;
pub mod outbox;
pub mod pusher;
pub mod registrar;

use std::fmt;
use std::future::Future;
use std::pin::Pin;

pub use metrics::PushMetrics;
pub use outbox::OutboxPush;
pub use parley_router::Device;
pub use pusher::{PushConfig, Pusher};
pub use registrar::{Registrar, TokenError};

/// A boxed future, for the object-safe traits of this crate.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where a phone's notifications go: the push network its OS uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Platform {
    /// Apple Push Notification service, production (App Store and
    /// TestFlight builds).
    Apns,
    /// APNs development environment (builds run from Xcode).
    ApnsSandbox,
    /// Firebase Cloud Messaging (Android).
    Fcm,
}

impl Platform {
    pub const ALL: [Platform; 3] = [Platform::Apns, Platform::ApnsSandbox, Platform::Fcm];

    /// The name in the API, the configuration and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Apns => "apns",
            Platform::ApnsSandbox => "apns_sandbox",
            Platform::Fcm => "fcm",
        }
    }

    /// The platform named `name` (as [`Platform::as_str`] spells it).
    pub fn parse(name: &str) -> Option<Platform> {
        Platform::ALL.into_iter().find(|p| p.as_str() == name)
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A device's push destination, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub platform: Platform,
    /// The token the phone's OS gave the app. A secret of sorts (it lets
    /// anyone with the app's credentials notify the phone): never logged.
    pub token: String,
    /// The push service's name for the token (an SNS endpoint ARN).
    pub endpoint: String,
}

/// Why a push service call failed.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The service has no application for this platform (none configured).
    #[error("push for {0} is not configured on this server")]
    Unconfigured(Platform),
    /// The endpoint is disabled: the app was uninstalled or the token
    /// expired (SNS `EndpointDisabled`). The token is dead until the phone
    /// registers one again.
    #[error("the push endpoint is disabled (app uninstalled or token expired)")]
    Disabled,
    /// The service refused the token itself (malformed, or of another app).
    #[error("the push service refused the token: {0}")]
    InvalidToken(String),
    /// Anything else; `reason` is a metric label (see
    /// [`metrics::FAILURE_REASONS`]), `detail` says what happened and
    /// never carries the token.
    #[error("push service ({reason}): {detail}")]
    Failed {
        reason: &'static str,
        detail: String,
    },
}

/// Sends pushes: SNS mobile push (`parley-sns`) in production, the
/// development [`OutboxPush`] by default. Implementations never log tokens.
pub trait PushService: Send + Sync + 'static {
    /// Whether pushes for `platform` can be registered here.
    fn supports(&self, platform: Platform) -> bool;

    /// Makes, finds or repairs the service's endpoint for `token`, and
    /// enables it: registering a token again revives it. `known` is the
    /// endpoint stored for this token (or this device's, for the same
    /// platform) before, if any. Returns the endpoint.
    fn register<'a>(
        &'a self,
        platform: Platform,
        token: &'a str,
        known: Option<&'a str>,
    ) -> BoxFuture<'a, Result<String, PushError>>;

    /// Sends the content-free "new messages" notification to `target` (of
    /// `device`, which only the development sink writes down).
    fn publish<'a>(
        &'a self,
        device: Device,
        target: &'a Target,
    ) -> BoxFuture<'a, Result<(), PushError>>;
}

/// A failure of the store, as text (the store's own error stays its own).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StoreFailed(pub String);

/// Where devices' push targets are kept (the account store, in the
/// `parley-registration` crate). A token belongs to at most one device.
pub trait PushStore: Send + Sync + 'static {
    /// `device`'s target, unless it has none or its token is dead.
    fn target(&self, device: Device) -> BoxFuture<'_, Result<Option<Target>, StoreFailed>>;

    /// The endpoint stored for `token` of `platform` (on any device), or
    /// else `device`'s endpoint for `platform`: what [`PushService::register`]
    /// is told it knows.
    fn known_endpoint<'a>(
        &'a self,
        device: Device,
        platform: Platform,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, StoreFailed>>;

    /// Makes `target` the device's (live), now, taking the token from any
    /// other device that had it. `Ok(false)`: no such device (unlinked
    /// meanwhile).
    fn save<'a>(
        &'a self,
        device: Device,
        target: &'a Target,
    ) -> BoxFuture<'a, Result<bool, StoreFailed>>;

    /// Forgets the device's token. `Ok(false)`: it had none.
    fn clear(&self, device: Device) -> BoxFuture<'_, Result<bool, StoreFailed>>;

    /// Marks the device's token dead, only if it is still `target` (not
    /// replaced since the push that failed). `Ok(true)` if it was marked.
    fn mark_dead<'a>(
        &'a self,
        device: Device,
        target: &'a Target,
    ) -> BoxFuture<'a, Result<bool, StoreFailed>>;
}

/// The push service of a server that sends no pushes (`--push off`): no
/// platform is supported, so registering a token answers
/// `PUSH_PLATFORM_UNAVAILABLE`.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoPush;

impl PushService for NoPush {
    fn supports(&self, _platform: Platform) -> bool {
        false
    }

    fn register<'a>(
        &'a self,
        platform: Platform,
        _token: &'a str,
        _known: Option<&'a str>,
    ) -> BoxFuture<'a, Result<String, PushError>> {
        Box::pin(async move { Err(PushError::Unconfigured(platform)) })
    }

    fn publish<'a>(
        &'a self,
        _device: Device,
        target: &'a Target,
    ) -> BoxFuture<'a, Result<(), PushError>> {
        Box::pin(async move { Err(PushError::Unconfigured(target.platform)) })
    }
}
