//! Who is who, for every part of Parley: the one seam through which the
//! gateway, the HTTP services and the router learn about users and devices.
//!
//! - [`ids`]: user and device ids, and [`Device`], the pair that names one
//!   installation of the app.
//! - [`token`]: the device credential (an EdDSA-signed JWT), the key that
//!   signs it, and its verification.
//! - [`directory`]: the [`Directory`] trait (which devices a user has,
//!   whether a credential is current), its cache for the message path, and
//!   what it answers.
//! - [`auth`]: the [`Authenticator`]: a credential's signature and expiry,
//!   then its revocation, checked against the directory.
//! - `extract` (feature `axum`): the authenticated device of an HTTP
//!   request, rejected in the documented error shape.
//!
//! The gateway depends on this crate and not on the registration service,
//! which implements [`Directory`] over its SQL store.

#![forbid(unsafe_code)]

pub mod auth;
pub mod directory;
#[cfg(feature = "axum")]
pub mod extract;
pub mod ids;
pub mod token;

pub use auth::{AuthError, Authenticator};
pub use directory::{CachedDirectory, Devices, Directory, DirectoryError, Lookup};
#[cfg(feature = "axum")]
pub use extract::{AuthRejection, BearerDevice};
pub use ids::{Device, DeviceId, UserId};
pub use token::{DeviceClaims, KeyError, TokenError, TokenKeys};

/// The token of an `Authorization` header value `Bearer <token>`; the scheme
/// is case-insensitive (RFC 7235).
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn parses_bearer() {
        assert_eq!(bearer_token("Bearer abc.def"), Some("abc.def"));
        assert_eq!(bearer_token("bearer  abc"), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("abc"), None);
    }
}
