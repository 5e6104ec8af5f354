//! The hook through which registration tells the rest of the process that a
//! device was replaced.

use crate::{DeviceId, UserId};

/// Told when a phone number is re-registered, after the new device is
/// committed, so the process can close the old device's live session (its
/// credential is already refused by [`crate::Authenticator`] from then on).
///
/// Called from inside an HTTP handler: implementations must not block or wait
/// on anything slow; hand the work to a task or a bounded channel instead.
pub trait DeviceEvents: Send + Sync + 'static {
    fn device_replaced(&self, user: UserId, old_device: DeviceId);
}

/// For processes that hold no live sessions (e.g. a registration-only role):
/// nothing to close, so nothing to do.
#[derive(Clone, Copy, Debug, Default)]
pub struct IgnoreDeviceEvents;

impl DeviceEvents for IgnoreDeviceEvents {
    fn device_replaced(&self, _user: UserId, _old_device: DeviceId) {}
}
