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
//! - [`extract`]: request extractors (JSON body, bearer credential) that reject
//!   in the documented error shape.
//! - [`store`]: accounts, pending codes and code-request history in SQL.
//! - [`token`]: the signing key and the device credential (JWT) format.
//! - [`auth`]: checks a credential against the store (used by the gateway too).
//! - [`code`]: generating, hashing and comparing the SMS codes.
//! - [`phone`]: E.164 phone number validation.
//! - [`sms`]: the SMS sender trait and the development outbox.
//! - [`events`]: the hook told when a device is replaced.
//! - [`ratelimit`]: the in-memory per-user token bucket for contact lookups.
//! - [`metrics`]: what registration counts.

pub mod api;
pub mod auth;
pub mod code;
pub mod error;
pub mod events;
pub mod extract;
pub mod metrics;
pub mod phone;
pub mod ratelimit;
pub mod sms;
pub mod store;
pub mod token;

/// A user (one phone number). Random in `1..=i64::MAX` so it fits a signed
/// BIGINT in every SQL backend and reveals nothing about sign-up order.
pub type UserId = u64;

/// A user's device. Random in `1..=i64::MAX`, new on every (re-)registration,
/// so a replaced device can never be confused with its successor.
pub type DeviceId = u64;

pub use api::{ClientIp, RegistrationConfig, RegistrationState, router};
pub use auth::{AuthError, Authenticator};
pub use events::{DeviceEvents, IgnoreDeviceEvents};
pub use metrics::RegistrationMetrics;
pub use sms::{OutboxSms, SmsError, SmsSender};
pub use store::{AccountStore, DeviceRecord, StoreError};
pub use token::{DeviceClaims, KeyError, TokenError, TokenKeys};
