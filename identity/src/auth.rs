//! Checking a device credential: the signature and expiry (in
//! [`crate::token`]), then revocation, against the [`Directory`].

use std::sync::Arc;

use crate::directory::{Directory, DirectoryError};
use crate::token::{DeviceClaims, TokenError, TokenKeys};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("credential expired")]
    Expired,
    #[error("credential invalid: {0}")]
    Invalid(&'static str),
    /// A well-signed credential of a device that is no longer the user's
    /// (re-registration, unlinking), or of a user the directory does not
    /// have (a database restored from before the registration).
    #[error("credential revoked")]
    Revoked,
    #[error(transparent)]
    Directory(#[from] DirectoryError),
}

/// Used by the gateway at every upgrade and by every authenticated HTTP
/// route. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Authenticator {
    keys: Arc<TokenKeys>,
    directory: Arc<dyn Directory>,
}

impl Authenticator {
    pub fn new(keys: Arc<TokenKeys>, directory: impl Directory) -> Self {
        Self::shared(keys, Arc::new(directory))
    }

    pub fn shared(keys: Arc<TokenKeys>, directory: Arc<dyn Directory>) -> Self {
        Self { keys, directory }
    }

    /// Verifies the token, then checks that its device is still one of its
    /// user's, at the generation it names: a token of a device that was
    /// replaced or unlinked is [`AuthError::Revoked`].
    ///
    /// One directory read per call, deliberately uncached, so that a
    /// revocation takes effect at once on every node of a cluster.
    pub async fn authenticate(&self, token: &str) -> Result<DeviceClaims, AuthError> {
        let claims = self.keys.verify(token).map_err(|e| match e {
            TokenError::Expired => AuthError::Expired,
            TokenError::Invalid(why) => AuthError::Invalid(why),
            // verify() does no key I/O and no signing; should these ever
            // appear, the credential is still not acceptable.
            TokenError::Key(_) | TokenError::Sign(_) => AuthError::Invalid("unverifiable"),
        })?;
        match self
            .directory
            .credential(claims.user, claims.device)
            .await?
        {
            Some(generation) if generation == claims.generation => Ok(claims),
            _ => Err(AuthError::Revoked),
        }
    }

    /// The signing key (for issuing credentials).
    pub fn keys(&self) -> &Arc<TokenKeys> {
        &self.keys
    }
}
