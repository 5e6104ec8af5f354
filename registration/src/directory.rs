//! The account store as the process's [`Directory`]: who the users are,
//! which devices each has, and which credentials are current.

use parley_identity::{DeviceId, Devices, Directory, DirectoryError, Lookup, UserId};

use crate::store::AccountStore;

impl Directory for AccountStore {
    fn credential(&self, user: UserId, device: DeviceId) -> Lookup<'_, Option<u64>> {
        Box::pin(async move {
            let current = self.device(user).await.map_err(DirectoryError::new)?;
            Ok(current
                .filter(|current| current.device == device)
                .map(|current| current.generation))
        })
    }

    fn devices(&self, user: UserId) -> Lookup<'_, Devices> {
        Box::pin(async move {
            let current = self.device(user).await.map_err(DirectoryError::new)?;
            Ok(current.map_or_else(Devices::none, |current| Devices::new(vec![current.device])))
        })
    }
}
