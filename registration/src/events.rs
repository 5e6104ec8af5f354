//! The hook through which registration tells the rest of the process that
//! an account's devices changed.

use crate::{DeviceId, UserId};

/// Why a linked device was unlinked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnlinkReason {
    /// By the primary, or by the device itself (`DELETE /v1/devices/{id}`).
    User,
    /// Not seen for the configured number of days (the sweep).
    Inactive,
}

impl UnlinkReason {
    /// The `reason` label of the `devices_unlinked` metric.
    pub fn label(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Inactive => "inactive",
        }
    }
}

/// Told after each change to an account's devices is committed, so that
/// the process forgets cached device lists and closes the sessions of
/// devices that are gone (their credentials are already refused by the
/// [`crate::Authenticator`] from then on).
///
/// Called from inside an HTTP handler or the sweep: implementations must not
/// block or wait on anything slow; hand the work to a task or a bounded
/// channel instead.
pub trait DeviceEvents: Send + Sync + 'static {
    /// `device` was linked to `user`'s account: messages to the user now go
    /// to it too.
    fn device_linked(&self, user: UserId, device: DeviceId);

    /// `device` is no longer one of `user`'s: its session ends (`UNLINKED`)
    /// and what was queued for it is dropped.
    fn device_unlinked(&self, user: UserId, device: DeviceId, reason: UnlinkReason);

    /// The number was registered again: `new_primary` is the account's only
    /// device now. What was queued for `old_primary` goes to `new_primary`
    /// (the person moved to a new phone); the `old_linked` devices are gone
    /// with their queues (each must be linked again, to the new phone).
    /// Every old device's session ends (`REVOKED`).
    fn account_reregistered(
        &self,
        user: UserId,
        old_primary: DeviceId,
        old_linked: Vec<DeviceId>,
        new_primary: DeviceId,
    );
}

/// For processes that hold no live sessions and cache no device lists
/// (e.g. a registration-only role): nothing to do.
#[derive(Clone, Copy, Debug, Default)]
pub struct IgnoreDeviceEvents;

impl DeviceEvents for IgnoreDeviceEvents {
    fn device_linked(&self, _user: UserId, _device: DeviceId) {}

    fn device_unlinked(&self, _user: UserId, _device: DeviceId, _reason: UnlinkReason) {}

    fn account_reregistered(
        &self,
        _user: UserId,
        _old_primary: DeviceId,
        _old_linked: Vec<DeviceId>,
        _new_primary: DeviceId,
    ) {
    }
}
