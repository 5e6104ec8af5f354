//! Registration: how a phone becomes a Parley device. A phone asks for a
//! six-digit code by SMS, trades it for a device credential (an EdDSA-signed
//! JWT), and uses that credential to connect to the gateway and to ask which of
//! its contacts' numbers are registered. Accounts live in a SQL store (SQLite on
//! a laptop, PostgreSQL in production) through one set of portable queries;
//! re-registering a number replaces the account's device, which revokes the old
//! device's credential and tells the rest of the process through [`DeviceEvents`].
//!
//! Modules:
//! - [`api`]: the HTTP routes ([`router`]), their configuration and shared state.
//! - [`error`]: the one error type of the HTTP API and its documented codes.
//! - [`extract`]: the JSON body extractor that rejects in the documented
//!   error shape (the credential's is `parley_identity::BearerDevice`).
//! - [`store`]: accounts, pending codes and code-request history in SQL.
//! - [`directory`]: the store as the process's [`parley_identity::Directory`].
//! - [`code`]: generating, hashing and comparing the SMS codes.
//! - [`phone`]: E.164 phone number validation.
//! - [`sms`]: the SMS sender trait and the development outbox.
//! - [`events`]: the hook told when a device is replaced.
//! - [`ratelimit`]: the in-memory per-user token bucket for contact lookups.
//! - [`metrics`]: what registration counts.

pub mod api;
pub mod code;
pub mod directory;
pub mod error;
pub mod events;
pub mod extract;
pub mod metrics;
pub mod phone;
pub mod ratelimit;
pub mod sms;
pub mod store;

pub use parley_identity::{DeviceId, UserId};

pub use api::{ClientIp, RegistrationConfig, RegistrationState, router};
pub use events::{DeviceEvents, IgnoreDeviceEvents};
pub use metrics::RegistrationMetrics;
pub use parley_identity::{
    AuthError, Authenticator, DeviceClaims, KeyError, TokenError, TokenKeys,
};
pub use sms::{OutboxSms, SmsError, SmsSender};
pub use store::{AccountStore, DeviceRecord, StoreError};
