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
pub const LIMITERS: [&str; 3] = ["codes_per_ip", "verifies_per_ip", "links_per_ip"];
/// `code`s of `link_failures`: why a `POST /v1/devices/link` linked nothing.
pub const LINK_FAILURES: [&str; 3] = ["LINK_CODE_INVALID", "DEVICE_LIMIT", "INVALID_REQUEST"];
/// `reason`s of `devices_unlinked` ([`crate::events::UnlinkReason::label`]).
pub const UNLINK_REASONS: [&str; 2] = ["user", "inactive"];

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
    /// (`codes_per_ip`, `verifies_per_ip`, `links_per_ip`).
    pub rate_limited: Family<Label, Counter>,
    /// Link codes made by primary devices.
    pub link_codes_issued: Counter,
    /// Devices linked with a link code.
    pub devices_linked: Counter,
    /// Link attempts refused, by `code` (`LINK_CODE_INVALID`,
    /// `DEVICE_LIMIT`, `INVALID_REQUEST` for a bad name).
    pub link_failures: Family<Label, Counter>,
    /// Linked devices removed, by `reason` (`user`, `inactive`). Devices
    /// removed by a re-registration are counted in `codes_verified`.
    pub devices_unlinked: Family<Label, Counter>,
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
            link_codes_issued: Counter::default(),
            devices_linked: Counter::default(),
            link_failures: family("code", &LINK_FAILURES),
            devices_unlinked: family("reason", &UNLINK_REASONS),
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
        registry.register(
            "link_codes_issued",
            "Link codes made by primary devices",
            self.link_codes_issued.clone(),
        );
        registry.register(
            "devices_linked",
            "Devices linked with a link code",
            self.devices_linked.clone(),
        );
        registry.register(
            "link_failures",
            "Link attempts refused, by code",
            self.link_failures.clone(),
        );
        registry.register(
            "devices_unlinked",
            "Linked devices removed, by reason",
            self.devices_unlinked.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::UnlinkReason;

    #[test]
    fn every_unlink_reason_is_listed() {
        for reason in [UnlinkReason::User, UnlinkReason::Inactive] {
            assert!(UNLINK_REASONS.contains(&reason.label()));
        }
    }
}
