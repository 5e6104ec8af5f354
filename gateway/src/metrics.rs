//! What the gateway counts. Labels are bounded: reasons and codes come from
//! fixed lists, never from a peer, and every series of every list exists
//! (at 0) from the start, so dashboards and alerts see them before the
//! first event.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// A label set of one bounded label.
pub type Label = [(&'static str, &'static str); 1];

/// The gateway's metric families.
#[derive(Clone, Debug)]
pub struct GatewayMetrics {
    /// TCP connections held, in handshake or in session.
    pub connections_open: Gauge,
    /// Authenticated sessions.
    pub sessions_open: Gauge,
    /// Completed logins (TLS, upgrade, token check, mailbox attached).
    pub logins: Counter,
    /// Failed logins, by reason (`tls`, `timeout`, `io`, or the upgrade's
    /// refusal code such as `TOKEN_EXPIRED`).
    pub login_failures: Family<Label, Counter>,
    /// From TCP accept to the authenticated upgrade (the mailbox attaches
    /// right after).
    pub handshake_seconds: Histogram,
    pub frames_in: Counter,
    pub frames_out: Counter,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    /// `SendError`s sent, by error code.
    pub send_errors: Family<Label, Counter>,
    /// Sessions ended, by reason.
    pub sessions_closed: Family<Label, Counter>,
    /// Actions refused by a rate limit, by `limiter`: `frames`, `messages`
    /// (per session), `inbound_bytes` (per recipient).
    pub rate_limited: Family<Label, Counter>,
}

/// Why a login failed, besides the upgrade's refusal codes.
pub(crate) const LOGIN_FAILURES: [&str; 3] = ["tls", "timeout", "io"];
/// The `SendError` codes the gateway sends.
pub(crate) const SEND_ERRORS: [parley_proto::v1::ErrorCode; 7] = {
    use parley_proto::v1::ErrorCode;
    [
        ErrorCode::UnknownRecipient,
        ErrorCode::InvalidMessage,
        ErrorCode::MailboxFull,
        ErrorCode::RateLimited,
        ErrorCode::Internal,
        ErrorCode::DevicesChanged,
        ErrorCode::ClientMsgIdReused,
    ]
};
/// The rate limiters.
pub(crate) const LIMITERS: [&str; 3] = ["frames", "messages", "inbound_bytes"];

impl Default for GatewayMetrics {
    fn default() -> Self {
        let metrics = Self::unlabelled();
        let zero = |family: &Family<Label, Counter>, label: &'static str, value: &'static str| {
            let _ = family.get_or_create(&[(label, value)]);
        };
        let refusals = crate::upgrade::Refusal::ALL.map(crate::upgrade::Refusal::code);
        for reason in LOGIN_FAILURES.iter().chain(&refusals) {
            zero(&metrics.login_failures, "reason", reason);
        }
        for code in SEND_ERRORS {
            zero(&metrics.send_errors, "code", code.as_str_name());
        }
        for reason in crate::session::CLOSE_REASONS {
            zero(&metrics.sessions_closed, "reason", reason);
        }
        for limiter in LIMITERS {
            zero(&metrics.rate_limited, "limiter", limiter);
        }
        metrics
    }
}

impl GatewayMetrics {
    fn unlabelled() -> Self {
        Self {
            connections_open: Gauge::default(),
            sessions_open: Gauge::default(),
            logins: Counter::default(),
            login_failures: Family::default(),
            handshake_seconds: Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            frames_in: Counter::default(),
            frames_out: Counter::default(),
            bytes_in: Counter::default(),
            bytes_out: Counter::default(),
            send_errors: Family::default(),
            sessions_closed: Family::default(),
            rate_limited: Family::default(),
        }
    }

    /// Registers every family under `registry` (prefix it with `gateway`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "connections_open",
            "TCP connections held, in handshake or in session",
            self.connections_open.clone(),
        );
        registry.register(
            "sessions_open",
            "Authenticated sessions",
            self.sessions_open.clone(),
        );
        registry.register(
            "logins",
            "Completed logins (TLS, upgrade, token check, mailbox attached)",
            self.logins.clone(),
        );
        registry.register(
            "login_failures",
            "Failed logins by reason",
            self.login_failures.clone(),
        );
        registry.register_with_unit(
            "handshake",
            "From TCP accept to the authenticated upgrade",
            Unit::Seconds,
            self.handshake_seconds.clone(),
        );
        registry.register("frames_in", "Frames from phones", self.frames_in.clone());
        registry.register("frames_out", "Frames to phones", self.frames_out.clone());
        registry.register_with_unit(
            "in",
            "WebSocket payload bytes from phones",
            Unit::Bytes,
            self.bytes_in.clone(),
        );
        registry.register_with_unit(
            "out",
            "WebSocket payload bytes to phones",
            Unit::Bytes,
            self.bytes_out.clone(),
        );
        registry.register(
            "send_errors",
            "SendErrors by code",
            self.send_errors.clone(),
        );
        registry.register(
            "sessions_closed",
            "Sessions ended, by reason",
            self.sessions_closed.clone(),
        );
        registry.register(
            "rate_limited",
            "Actions refused by a rate limit, by limiter",
            self.rate_limited.clone(),
        );
    }
}

/// Keeps a gauge raised while alive.
#[derive(Debug)]
pub(crate) struct Held(Gauge);

impl Held {
    pub(crate) fn new(gauge: &Gauge) -> Held {
        gauge.inc();
        Held(gauge.clone())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.dec();
    }
}
