//! Parley's client: the protocol spoken exactly as a phone app speaks it.
//!
//! The end-to-end tests, the load generator and the `parley-cli` binary all
//! go through this library, so what they exercise is what a phone would do:
//! register over HTTPS, hold one TLS WebSocket session, send, receive,
//! acknowledge, mark read.
//!
//! Modules:
//! - [`tls`]: a rustls client configuration trusting the server's PEM.
//! - [`registration`]: the HTTPS API: registration, contact lookup, and an
//!   account's devices (link, list, unlink).
//! - [`session`]: one authenticated WebSocket session with the gateway.
//! - [`devices`]: which devices a message goes to, for sends with one
//!   envelope per device, and fixing that list after `DEVICES_CHANGED`.
//! - [`media`]: the media service: resumable uploads (tus 1.0), the
//!   finished upload's media JSON, downloads streamed to a file and checked
//!   against their SHA-256.
//! - [`thumbnail`]: a file's MIME type, and a photo's size and JPEG
//!   preview (at most 16 KiB) for the message that carries it.
//! - [`phone`]: phone numbers as people write them, made E.164.
//! - [`receipts`]: which receipts to believe (only the recipient's, from
//!   any of its devices; also for copies of messages this account sent from
//!   its other devices), and receipts that arrive before their message's ack.
//! - [`profile`]: the CLI's local state (credential, id counter, seen ids,
//!   sent messages, known device lists), and where profiles live.
//! - [`error`]: [`ClientError`], the error of everything above but profiles.
//! - [`cli`]: the `parley-cli` commands (the binary is a thin wrapper).

#![forbid(unsafe_code)]

pub mod cli;
pub mod devices;
pub mod error;
pub mod media;
pub mod phone;
pub mod profile;
pub mod receipts;
pub mod registration;
pub mod session;
pub mod thumbnail;
pub mod tls;

pub use devices::{DevicesChanged, Fanout, FanoutError, devices_changed};
pub use error::{ClientError, CredentialRefusal};
pub use parley_proto as proto;
pub use registration::{CodeRequested, Contact, Credential, DeviceInfo, LinkCode, Registration};
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
