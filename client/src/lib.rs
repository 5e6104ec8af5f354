//! Parley's client: the protocol spoken exactly as a phone app speaks it.
//!
//! The end-to-end tests, the load generator and the `parley-cli` binary all
//! go through this library, so what they exercise is what a phone would do:
//! register over HTTPS, hold one TLS WebSocket session, send, receive,
//! acknowledge, mark read.
//!
//! Modules:
//! - [`tls`]: a rustls client configuration trusting the server's PEM.
//! - [`registration`]: the HTTPS registration and contact-lookup API.
//! - [`session`]: one authenticated WebSocket session with the gateway.
//! - [`phone`]: phone numbers as people write them, made E.164.
//! - [`receipts`]: which receipts to believe (only the recipient's), and
//!   receipts that arrive before their message's ack.
//! - [`profile`]: the CLI's local state (credential, id counter, seen ids,
//!   sent messages), and where profiles live.
//! - [`error`]: [`ClientError`], the error of everything above but profiles.
//! - [`cli`]: the `parley-cli` commands (the binary is a thin wrapper).

#![forbid(unsafe_code)]

pub mod cli;
pub mod error;
pub mod phone;
pub mod profile;
pub mod receipts;
pub mod registration;
pub mod session;
pub mod tls;

pub use error::{ClientError, CredentialRefusal};
pub use parley_proto as proto;
pub use registration::{CodeRequested, Contact, Credential, Registration};
pub use session::{ConnectOptions, Session};
pub use tls::{tls_config_from_file, tls_config_from_pem};
/// Re-exported so callers of [`Session::send_raw`] use the same version.
pub use tokio_tungstenite::tungstenite;

/// The registration API on a laptop (`parley` with embedded defaults).
pub const DEFAULT_HTTP: &str = "https://127.0.0.1:8443";
/// The gateway on a laptop.
pub const DEFAULT_WS: &str = "wss://127.0.0.1:5443/v1/ws";

/// Where a Parley deployment answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoints {
    /// Registration API base URL, e.g. `https://127.0.0.1:8443`.
    pub http: String,
    /// Gateway WebSocket URL, e.g. `wss://127.0.0.1:5443/v1/ws`.
    pub ws: String,
}

impl Default for Endpoints {
    fn default() -> Self {
        Self {
            http: DEFAULT_HTTP.to_string(),
            ws: DEFAULT_WS.to_string(),
        }
    }
}
