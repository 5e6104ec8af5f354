//! Which user ids are registered, so a send to an unknown recipient gets
//! `UNKNOWN_RECIPIENT` instead of creating a mailbox nobody will read.
//!
//! Protocol v1 never deletes a user, so once an id is known to be registered
//! it stays so: known ids are cached without expiry, which takes the store
//! off the message path. The cache is bounded; when full it is cleared and
//! refills from the store.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use parley_registration::{AccountStore, StoreError, UserId};

#[derive(Clone, Debug)]
pub(crate) struct Recipients {
    store: AccountStore,
    known: Arc<Mutex<HashSet<UserId>>>,
    capacity: usize,
}

impl Recipients {
    pub(crate) fn new(store: AccountStore, capacity: usize) -> Self {
        Self {
            store,
            known: Arc::default(),
            capacity,
        }
    }

    pub(crate) async fn is_registered(&self, user: UserId) -> Result<bool, StoreError> {
        if self.lock().contains(&user) {
            return Ok(true);
        }
        // Boxed: the store's query future is large, and only a cache miss
        // needs it; inline, every session's task would reserve room for it.
        let registered = Box::pin(self.store.user_exists(user)).await?;
        if registered {
            let mut known = self.lock();
            if known.len() >= self.capacity {
                known.clear();
            }
            known.insert(user);
        }
        Ok(registered)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<UserId>> {
        self.known.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
