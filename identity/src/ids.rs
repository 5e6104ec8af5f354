//! User and device ids.

/// A user (one phone number's account). Random in `1..=i64::MAX`, so it
/// fits a signed BIGINT in every SQL backend and reveals nothing about
/// sign-up order. Apps address users by it, never by phone number.
pub type UserId = u64;

/// One installation of the app: random in `1..=i64::MAX`, new at every
/// registration or link, so a removed device can never be confused with
/// its successor.
pub type DeviceId = u64;

/// A device of a user: what a credential names, what a session belongs to,
/// and what a mailbox is kept for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Device {
    pub user: UserId,
    pub device: DeviceId,
}

impl Device {
    pub fn new(user: UserId, device: DeviceId) -> Self {
        Self { user, device }
    }
}
