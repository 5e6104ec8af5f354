//! Registration: how a phone becomes a Parley device. A phone asks for a
//! six-digit code by SMS, trades it for a device credential (an EdDSA-signed
//! JWT), and uses that credential to connect to the gateway and to ask which of
//! its contacts' numbers are registered. Accounts live in a SQL store (SQLite on
//! a laptop, PostgreSQL in production) through one set of portable queries.
//! An account has a primary device (registered by SMS) and a few linked ones
//! (joined with a link code the primary shows); devices are unlinked by the
//! user or after long inactivity, and re-registering a number replaces every
//! device of the account. Each change revokes the credentials of the devices
//! that went and tells the rest of the process through [`DeviceEvents`].
//!
//! Modules:
//! - [`api`]: the HTTP routes ([`router`]), their configuration and shared state.
//! - [`error`]: the one error type of the HTTP API and its documented codes.
//! - [`extract`]: the JSON body extractor that rejects in the documented
//!   error shape (the credential's is `parley_identity::BearerDevice`).
//! - [`store`]: accounts, devices, pending codes, link codes and
//!   code-request history in SQL.
//! - [`directory`]: the store as the process's [`parley_identity::Directory`].
//! - [`seen`]: the throttle in front of the devices' last-seen times.
//! - [`code`]: generating, hashing and comparing the SMS codes.
//! - [`link`]: link codes (their id and secret parts) and device names.
//! - [`phone`]: E.164 phone number validation.
//! - [`sms`]: the SMS sender trait and the development outbox.
//! - [`push`]: push tokens over HTTP, and the store as `parley_push::PushStore`.
//! - [`events`]: the hook told when devices are linked, unlinked or replaced.
//! - [`ratelimit`]: the in-memory per-user token bucket for contact lookups.
//! - [`metrics`]: what registration counts.

pub mod api;
pub mod code;
pub mod directory;
pub mod error;
pub mod events;
pub mod extract;
pub mod link;
pub mod metrics;
pub mod phone;
pub mod push;
pub mod ratelimit;
pub mod seen;
pub mod sms;
pub mod store;

pub use parley_identity::{DeviceId, UserId};

pub use api::{ClientIp, RegistrationConfig, RegistrationState, router};
pub use events::{DeviceEvents, IgnoreDeviceEvents, UnlinkReason};
pub use metrics::RegistrationMetrics;
pub use parley_identity::{
    AuthError, Authenticator, DeviceClaims, KeyError, TokenError, TokenKeys,
};
pub use sms::{OutboxSms, SmsError, SmsSender};
pub use store::{AccountStore, DeviceInfo, DeviceRecord, StoreError};
