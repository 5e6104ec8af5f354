//! What registration counts. Labels come from fixed lists, and every series
//! of every list exists (at 0) from the start.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// A label set of one bounded label.
pub type Label = [(&'static str, &'static str); 1];

/// `outcome`s of `codes_verified`.
pub const OUTCOMES: [&str; 2] = ["new_account", "reregistered"];
/// `code`s of `verify_failures`.
pub const VERIFY_FAILURES: [&str; 3] = ["WRONG_CODE", "CODE_EXPIRED", "NO_PENDING_CODE"];
/// `limiter`s of `rate_limited`.
pub const LIMITERS: [&str; 2] = ["codes_per_ip", "verifies_per_ip"];

/// Registration's metric families.
#[derive(Clone, Debug)]
pub struct RegistrationMetrics {
    /// Codes sent by SMS.
    pub codes_sent: Counter,
    /// Codes verified, by `outcome`: `new_account` or `reregistered`.
    pub codes_verified: Family<Label, Counter>,
    /// Verifications refused, by `code` (`WRONG_CODE`, `CODE_EXPIRED`,
    /// `NO_PENDING_CODE`).
    pub verify_failures: Family<Label, Counter>,
    /// Requests refused by a per-address limit, by `limiter`
    /// (`codes_per_ip`, `verifies_per_ip`).
    pub rate_limited: Family<Label, Counter>,
}

impl Default for RegistrationMetrics {
    fn default() -> Self {
        let family = |label: &'static str, values: &[&'static str]| {
            let family = Family::<Label, Counter>::default();
            for value in values {
                let _ = family.get_or_create(&[(label, value)]);
            }
            family
        };
        Self {
            codes_sent: Counter::default(),
            codes_verified: family("outcome", &OUTCOMES),
            verify_failures: family("code", &VERIFY_FAILURES),
            rate_limited: family("limiter", &LIMITERS),
        }
    }
}

impl RegistrationMetrics {
    /// Registers every family under `registry` (prefix it with `registration`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "codes_sent",
            "Registration codes sent by SMS",
            self.codes_sent.clone(),
        );
        registry.register(
            "codes_verified",
            "Registration codes verified, by outcome",
            self.codes_verified.clone(),
        );
        registry.register(
            "verify_failures",
            "Code verifications refused, by code",
            self.verify_failures.clone(),
        );
        registry.register(
            "rate_limited",
            "Requests refused by a per-address limit, by limiter",
            self.rate_limited.clone(),
        );
    }
}
