//! `parley stats`: a live one-screen view of a running node for an
//! operator, read from its admin `/metrics` endpoint once a second: sessions,
//! queue depth (the primary health gauge: a growing queue means phones are
//! not keeping up, or the node is not), and the decaying rates of the key
//! counters over 1 s, 10 s and 100 s.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use crate::admin::RATE_WINDOWS;

/// The rated counters, in display order, with their labels on screen.
const RATED: [(&str, &str); 9] = [
    ("logins", "logins"),
    ("messages_accepted", "messages accepted"),
    ("messages_delivered", "messages delivered"),
    ("receipts_acknowledged", "receipts acked"),
    ("frames_in", "frames in"),
    ("frames_out", "frames out"),
    ("bytes_in", "bytes in"),
    ("bytes_out", "bytes out"),
    ("codes_sent", "codes sent"),
];

/// The totals behind each rated counter.
fn total_name(counter: &str) -> String {
    match counter {
        "logins" | "frames_in" | "frames_out" => format!("parley_gateway_{counter}_total"),
        "bytes_in" => "parley_gateway_in_bytes_total".to_owned(),
        "bytes_out" => "parley_gateway_out_bytes_total".to_owned(),
        "codes_sent" => "parley_registration_codes_sent_total".to_owned(),
        other => format!("parley_router_{other}_total"),
    }
}

/// Samples of one scrape: `name{labels}` → value.
#[derive(Debug, Default)]
pub struct Scrape(BTreeMap<String, f64>);

impl Scrape {
    /// Parses the Prometheus text format (comments skipped; malformed lines
    /// ignored, since this is a viewer, not a validator).
    pub fn parse(text: &str) -> Scrape {
        let samples = text
            .lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            .filter_map(|line| {
                let (key, value) = line.rsplit_once(' ')?;
                Some((key.to_owned(), value.parse().ok()?))
            })
            .collect();
        Scrape(samples)
    }

    pub fn get(&self, key: &str) -> f64 {
        self.0.get(key).copied().unwrap_or(0.0)
    }

    /// Every sample of `family` with one label, as (label value, value).
    fn labelled(&self, family: &str, label: &str) -> Vec<(String, f64)> {
        let prefix = format!("{family}{{{label}=\"");
        self.0
            .iter()
            .filter_map(|(key, value)| {
                let rest = key.strip_prefix(&prefix)?;
                let (label, _) = rest.split_once('"')?;
                Some((label.to_owned(), *value))
            })
            .collect()
    }

    /// An upper bound of the `q` quantile of an unlabelled histogram: the
    /// smallest bucket bound holding at least `q` of the observations.
    pub fn quantile(&self, histogram: &str, q: f64) -> Option<f64> {
        let count = self.get(&format!("{histogram}_count"));
        if count == 0.0 {
            return None;
        }
        let prefix = format!("{histogram}_bucket{{le=\"");
        let mut buckets: Vec<(f64, f64)> = self
            .0
            .iter()
            .filter_map(|(key, value)| {
                let le = key.strip_prefix(&prefix)?.strip_suffix("\"}")?;
                Some((le.parse().ok()?, *value))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        buckets
            .into_iter()
            .find(|(_, cumulative)| *cumulative >= q * count)
            .map(|(le, _)| le)
    }

    /// The screen for this scrape.
    pub fn render(&self, source: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "Parley  {source}  (Ctrl-C to quit)\n");
        let _ = writeln!(
            out,
            "sessions open {:>12}    connections {:>10}",
            grouped(self.get("parley_gateway_sessions_open")),
            grouped(self.get("parley_gateway_connections_open")),
        );
        let _ = writeln!(
            out,
            "queued        {:>12}    deepest mailbox {:>6}    oldest queued {:>6} s    mailboxes {}",
            grouped(self.get("parley_router_queued")),
            grouped(self.get("parley_router_deepest_mailbox")),
            grouped(self.get("parley_router_oldest_queued_seconds")),
            grouped(self.get("parley_router_mailboxes")),
        );
        let _ = writeln!(
            out,
            "\n{:<20}{:>12}{:>12}{:>12}{:>16}",
            "per second", "1 s", "10 s", "100 s", "total"
        );
        for (counter, label) in RATED {
            let _ = write!(out, "  {label:<18}");
            for (window, _) in RATE_WINDOWS {
                let key =
                    format!("parley_rate_per_second{{counter=\"{counter}\",window=\"{window}\"}}");
                let _ = write!(out, "{:>12}", grouped(self.get(&key)));
            }
            let _ = writeln!(out, "{:>16}", grouped(self.get(&total_name(counter))));
        }
        let latency = |name: &str| {
            let p = |q| {
                self.quantile(name, q)
                    .map_or_else(|| "-".to_owned(), |s| format!("≤{}", millis(s)))
            };
            format!("p50 {}  p99 {}", p(0.5), p(0.99))
        };
        let _ = writeln!(
            out,
            "\nhandshake  {}\ndelivery   {}",
            latency("parley_gateway_handshake_seconds"),
            latency("parley_router_delivery_seconds"),
        );
        for (title, family, label) in [
            (
                "login failures",
                "parley_gateway_login_failures_total",
                "reason",
            ),
            ("send errors", "parley_gateway_send_errors_total", "code"),
            (
                "sessions closed",
                "parley_gateway_sessions_closed_total",
                "reason",
            ),
        ] {
            let items = self.labelled(family, label);
            if !items.is_empty() {
                let list: Vec<String> = items
                    .iter()
                    .map(|(l, v)| format!("{l} {}", grouped(*v)))
                    .collect();
                let _ = writeln!(out, "{title}: {}", list.join(", "));
            }
        }
        out
    }
}

/// Whole numbers with thousands separators; small rates with one decimal.
fn grouped(value: f64) -> String {
    if value.abs() < 100.0 && value.fract() != 0.0 {
        return format!("{value:.1}");
    }
    let digits = format!("{:.0}", value.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if value < 0.0 { format!("-{out}") } else { out }
}

fn millis(seconds: f64) -> String {
    if seconds < 1.0 {
        format!("{} ms", seconds * 1000.0)
    } else {
        format!("{seconds} s")
    }
}

/// The base URL of an admin listener given as `127.0.0.1:9090` or
/// `http://127.0.0.1:9090`.
pub fn admin_base(admin: &str) -> String {
    let base = if admin.contains("://") {
        admin.to_owned()
    } else {
        format!("http://{admin}")
    };
    base.trim_end_matches('/').to_owned()
}

/// An HTTP client for the admin listener (plain HTTP on a private address).
/// reqwest, built without a default crypto provider (Parley uses ring
/// everywhere), still wants a TLS configuration: one that trusts no root,
/// so an https:// admin URL is refused rather than trusted blindly.
pub fn admin_client(timeout: Duration) -> anyhow::Result<reqwest::Client> {
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    Ok(reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(timeout)
        .build()?)
}

/// Shows the screen every `interval` until Ctrl-C (or `count` screens).
pub async fn run(admin: &str, interval: Duration, count: Option<u64>) -> anyhow::Result<()> {
    let url = format!("{}/metrics", admin_base(admin));
    let client = admin_client(Duration::from_secs(5))?;
    let mut shown = 0u64;
    loop {
        let text = client
            .get(&url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .with_context(|| format!("cannot read {url}: is parley running, with its admin listener there (--admin-addr)?"))?
            .text()
            .await?;
        // Clear the screen and home the cursor, then draw.
        print!("\x1b[2J\x1b[H{}", Scrape::parse(&text).render(admin));
        shown += 1;
        if count.is_some_and(|n| shown >= n) {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "# HELP x\n\
        parley_gateway_sessions_open 1234\n\
        parley_router_queued 56\n\
        parley_gateway_logins_total 100\n\
        parley_rate_per_second{counter=\"logins\",window=\"10s\"} 12.5\n\
        parley_gateway_handshake_seconds_bucket{le=\"0.001\"} 50\n\
        parley_gateway_handshake_seconds_bucket{le=\"0.005\"} 98\n\
        parley_gateway_handshake_seconds_bucket{le=\"+Inf\"} 100\n\
        parley_gateway_handshake_seconds_count 100\n\
        parley_gateway_send_errors_total{code=\"UNKNOWN_RECIPIENT\"} 3\n";

    #[test]
    fn parses_and_estimates_quantiles() {
        let scrape = Scrape::parse(SAMPLE);
        assert_eq!(scrape.get("parley_gateway_sessions_open"), 1234.0);
        assert_eq!(
            scrape.quantile("parley_gateway_handshake_seconds", 0.5),
            Some(0.001)
        );
        assert_eq!(
            scrape.quantile("parley_gateway_handshake_seconds", 0.99),
            Some(f64::INFINITY)
        );
        assert_eq!(scrape.quantile("parley_router_delivery_seconds", 0.5), None);
    }

    #[test]
    fn renders_the_figures_an_operator_looks_for() {
        let screen = Scrape::parse(SAMPLE).render("http://127.0.0.1:9090");
        assert!(screen.contains("1,234"), "{screen}");
        assert!(screen.contains("12.5"), "{screen}");
        assert!(
            screen.contains("send errors: UNKNOWN_RECIPIENT 3"),
            "{screen}"
        );
        assert!(screen.contains("p50 ≤1 ms"), "{screen}");
    }

    #[test]
    fn groups_thousands() {
        assert_eq!(grouped(1_234_567.0), "1,234,567");
        assert_eq!(grouped(999.0), "999");
        assert_eq!(grouped(2.25), "2.2");
    }
}
