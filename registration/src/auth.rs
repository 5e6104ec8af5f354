//! Checking a device credential: the signature and expiry (in [`crate::token`])
//! and then revocation, against the store.

use std::sync::Arc;

use crate::store::{AccountStore, StoreError};
use crate::token::{DeviceClaims, TokenError, TokenKeys};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("credential expired")]
    Expired,
    #[error("credential invalid: {0}")]
    Invalid(&'static str),
    /// A well-signed credential of a device that re-registration replaced.
    #[error("credential revoked: the device was replaced")]
    Revoked,
    /// A well-signed credential naming a user the store does not have (e.g.
    /// a database restored from before the registration).
    #[error("credential names an unknown user")]
    UnknownUser,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Used by the WebSocket gateway at every upgrade and by the contact lookup
/// route. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Authenticator {
    keys: Arc<TokenKeys>,
    store: AccountStore,
}

impl Authenticator {
    pub fn new(keys: Arc<TokenKeys>, store: AccountStore) -> Self {
        Self { keys, store }
    }

    /// Verifies the token, then checks (device, generation) against the
    /// store: a token of a device that was replaced by re-registration is
    /// [`AuthError::Revoked`].
    ///
    /// One primary-key read per call. Deliberately uncached, so that
    /// revocation takes effect at once on every node of a cluster.
    pub async fn authenticate(&self, token: &str) -> Result<DeviceClaims, AuthError> {
        let claims = self.keys.verify(token).map_err(|e| match e {
            TokenError::Expired => AuthError::Expired,
            TokenError::Invalid(why) => AuthError::Invalid(why),
            // verify() does no key I/O and no signing; should these ever
            // appear, the credential is still not acceptable.
            TokenError::Key(_) | TokenError::Sign(_) => AuthError::Invalid("unverifiable"),
        })?;
        let Some(current) = self.store.device(claims.user).await? else {
            return Err(AuthError::UnknownUser);
        };
        if current.device != claims.device || current.generation != claims.generation {
            return Err(AuthError::Revoked);
        }
        Ok(claims)
    }
}
