//! The account store as the process's [`Directory`]: who the users are,
//! which devices each has, which credentials are current, and when each
//! device was last seen.

use parley_identity::{DeviceId, Devices, Directory, DirectoryError, Lookup, UserId};

use crate::store::{AccountStore, now_millis};

impl Directory for AccountStore {
    /// Current while the device's row exists; the generation is the
    /// account's, which re-registration raises.
    fn credential(&self, user: UserId, device: DeviceId) -> Lookup<'_, Option<u64>> {
        Box::pin(async move {
            // The store's own query (inherent methods win over the trait's).
            AccountStore::credential(self, user, device)
                .await
                .map_err(DirectoryError::new)
        })
    }

    fn devices(&self, user: UserId) -> Lookup<'_, Devices> {
        Box::pin(async move {
            let ids = self.device_ids(user).await.map_err(DirectoryError::new)?;
            Ok(if ids.is_empty() {
                Devices::none()
            } else {
                Devices::new(ids)
            })
        })
    }

    /// Throttled to one write per device per hour (see [`crate::seen`]).
    fn seen(&self, user: UserId, device: DeviceId) -> Lookup<'_, ()> {
        Box::pin(async move {
            self.mark_seen(user, device, now_millis())
                .await
                .map(|_| ())
                .map_err(DirectoryError::new)
        })
    }
}
