//! What push counts, under `parley_push_`. Every labelled series exists
//! from the start, so an alarm on it has a series to watch.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// `reason`s of [`PushMetrics::failed`]:
/// - `disabled`: the endpoint is disabled (app uninstalled, token expired);
///   the token is marked dead;
/// - `timeout`: no answer within the push timeout;
/// - `throttled`, `auth`, `rejected`, `unreachable`, `service`: as for SMS
///   (SNS throttled through every retry, credentials or permissions, SNS
///   refused this push, no connection, any other SNS error);
/// - `store`: the device's target could not be read.
pub const FAILURE_REASONS: [&str; 8] = [
    "disabled",
    "timeout",
    "throttled",
    "auth",
    "rejected",
    "unreachable",
    "service",
    "store",
];

type Labels = [(&'static str, &'static str); 1];

#[derive(Clone, Debug)]
pub struct PushMetrics {
    /// Wakeups the router reported: something queued for a device without
    /// a session (at most one a second per device), or a session that
    /// left entries unacknowledged.
    pub wakeups: Counter,
    /// Pushes the service accepted.
    pub sent: Counter,
    /// Wakeups absorbed by a push already pending or sent in the window.
    pub coalesced: Counter,
    /// Pending pushes cancelled because the device connected first.
    pub cancelled: Counter,
    /// Pending pushes dropped because the queue was full (the oldest one
    /// goes; see [`crate::pusher`]).
    pub dropped: Counter,
    /// Pushes not sent because the device has no live token.
    pub no_token: Counter,
    /// Pushes that failed, by `reason` ([`FAILURE_REASONS`]).
    pub failed: Family<Labels, Counter>,
    /// Tokens marked dead (the service said their endpoint is disabled).
    pub dead_tokens: Counter,
    /// Tokens registered (new, replaced or re-registered), by `platform`.
    pub tokens_registered: Family<Labels, Counter>,
    /// Pushes waiting to be sent now.
    pub pending: Gauge,
    /// How long the push service took to answer a publish, seconds.
    pub publish_seconds: Histogram,
}

impl Default for PushMetrics {
    fn default() -> Self {
        let failed = Family::default();
        for reason in FAILURE_REASONS {
            let _ = failed.get_or_create(&[("reason", reason)]);
        }
        let tokens_registered = Family::default();
        for platform in crate::Platform::ALL {
            let _ = tokens_registered.get_or_create(&[("platform", platform.as_str())]);
        }
        Self {
            wakeups: Counter::default(),
            sent: Counter::default(),
            coalesced: Counter::default(),
            cancelled: Counter::default(),
            dropped: Counter::default(),
            no_token: Counter::default(),
            failed,
            dead_tokens: Counter::default(),
            tokens_registered,
            pending: Gauge::default(),
            // 1 ms to about 16 s.
            publish_seconds: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 15),
            ),
        }
    }
}

impl PushMetrics {
    /// Registers the families under `registry` (prefix it with `push`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "wakeups",
            "Wakeups the router reported: something queued for a device without a session, or a session left with entries unacknowledged",
            self.wakeups.clone(),
        );
        registry.register(
            "sent",
            "Pushes the push service accepted",
            self.sent.clone(),
        );
        registry.register(
            "coalesced",
            "Wakeups absorbed by a push already pending or sent within the window",
            self.coalesced.clone(),
        );
        registry.register(
            "cancelled",
            "Pending pushes cancelled because the device connected first",
            self.cancelled.clone(),
        );
        registry.register(
            "dropped",
            "Pending pushes dropped because the push queue was full (oldest first)",
            self.dropped.clone(),
        );
        registry.register(
            "no_token",
            "Pushes not sent because the device has no live push token",
            self.no_token.clone(),
        );
        registry.register(
            "failed",
            "Pushes that failed, by reason",
            self.failed.clone(),
        );
        registry.register(
            "dead_tokens",
            "Push tokens marked dead (endpoint disabled: app uninstalled or token expired)",
            self.dead_tokens.clone(),
        );
        registry.register(
            "tokens_registered",
            "Push tokens registered, by platform",
            self.tokens_registered.clone(),
        );
        registry.register("pending", "Pushes waiting to be sent", self.pending.clone());
        registry.register(
            "publish_seconds",
            "How long the push service took to answer a publish",
            self.publish_seconds.clone(),
        );
    }

    pub(crate) fn failed(&self, reason: &'static str) {
        self.failed.get_or_create(&[("reason", reason)]).inc();
    }
}
