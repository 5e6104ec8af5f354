//! The server's configuration: one typed struct, read once at start-up.
//!
//! Every setting can come from a flag, an environment variable
//! (`PARLEY_...`) or a TOML file (`--config`), in that order of precedence,
//! over a default that works on a laptop. [`Settings`] is the raw, all-
//! optional form the three sources share; [`Config::resolve`] merges them and
//! validates the result, reporting every problem at once rather than the
//! first.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use parley_gateway::GatewayConfig;
use parley_registration::RegistrationConfig;
use parley_router::ratelimit::Rate;
use parley_router::{JournalConfig, MemoryConfig};
use serde::Deserialize;

/// Parley messenger server: gateway, router and registration in one process.
///
/// With no arguments it serves everything on this machine with embedded
/// defaults: data in ./parley-data, a self-signed certificate, SQLite, and
/// SMS written to <data-dir>/outbox.jsonl.
#[derive(Debug, Parser)]
#[command(name = "parley", version)]
pub struct Cli {
    /// TOML file with any of the settings below (snake_case names, e.g.
    /// `gateway_addr = "0.0.0.0:5443"`). Flags and environment win over it.
    #[arg(long, env = "PARLEY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(flatten)]
    pub settings: Settings,

    /// Without a command, `parley` serves.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Operator commands besides serving. Settings go before the command
/// (`parley --data-dir D provision --count 1000 --out users.jsonl`).
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create accounts without SMS codes, for benchmarks and imports, and
    /// write their credentials as JSON lines
    /// `{"phone","user_id","device_id","token"}`. Numbers are `+1999`
    /// followed by 8 digits; numbers that exist are registered again (their
    /// old tokens stop working).
    Provision {
        /// How many accounts.
        #[arg(long)]
        count: u64,
        /// The first number's 8-digit suffix.
        #[arg(long, default_value_t = 0)]
        first: u64,
        /// Where to write the credentials (mode 0600: they are secrets).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// A live one-screen view of a running node, from its admin endpoint:
    /// sessions, queue depth, and the rates of the key counters over 1 s,
    /// 10 s and 100 s.
    Stats {
        /// The node's admin listener.
        #[arg(long, default_value = "http://127.0.0.1:9090", value_name = "URL")]
        admin: String,
        /// Seconds between screens.
        #[arg(long, default_value_t = 1)]
        interval: u64,
        /// Stop after this many screens (default: until Ctrl-C).
        #[arg(long)]
        count: Option<u64>,
    },
}

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One line per event, for people.
    #[default]
    Human,
    /// One JSON object per event, for log collectors.
    Json,
}

/// What a server ack promises (docs/guarantees.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Every accepted message, receipt and acknowledgement is in the
    /// journal, synced to disk (one fsync per batch), before anyone is told.
    #[default]
    Fsync,
    /// Queues only in memory: faster acks, but a crash or restart loses
    /// every queued message and receipt.
    Memory,
}

/// Every setting, each optional so that flags, environment and file can be
/// layered. Durations are whole seconds.
#[derive(Debug, Default, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Directory for the database, keys, certificate and development outbox.
    /// [default: ./parley-data]
    #[arg(long, env = "PARLEY_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Where phones connect (TLS + WebSocket). [default: 127.0.0.1:5443]
    #[arg(long, env = "PARLEY_GATEWAY_ADDR", value_name = "ADDR")]
    pub gateway_addr: Option<SocketAddr>,

    /// Where the HTTPS API (registration, contacts) listens. [default: 127.0.0.1:8443]
    #[arg(long, env = "PARLEY_HTTP_ADDR", value_name = "ADDR")]
    pub http_addr: Option<SocketAddr>,

    /// Where the plain-HTTP admin endpoints (/metrics, /healthz, /readyz)
    /// listen. Keep it private. [default: 127.0.0.1:9090]
    #[arg(long, env = "PARLEY_ADMIN_ADDR", value_name = "ADDR")]
    pub admin_addr: Option<SocketAddr>,

    /// Account database: sqlite://PATH?mode=rwc or postgres://...
    /// [default: sqlite://<data-dir>/parley.db?mode=rwc]
    #[arg(long, env = "PARLEY_DATABASE_URL", value_name = "URL")]
    pub database_url: Option<String>,

    /// PEM certificate chain for both listeners. Without it (and --tls-key) a
    /// self-signed certificate is generated in <data-dir>/tls on first start.
    #[arg(
        long,
        env = "PARLEY_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert.
    #[arg(
        long,
        env = "PARLEY_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,

    /// Extra host names or IP addresses for the generated self-signed
    /// certificate (it always covers localhost, 127.0.0.1 and ::1).
    #[arg(
        long,
        env = "PARLEY_TLS_HOSTNAMES",
        value_name = "NAME",
        value_delimiter = ','
    )]
    pub tls_hostnames: Option<Vec<String>>,

    /// Seconds a TLS handshake plus WebSocket upgrade may take. [default: 10]
    #[arg(long, env = "PARLEY_HANDSHAKE_TIMEOUT", value_name = "SECS")]
    pub handshake_timeout: Option<u64>,

    /// Seconds of silence (no frame, no ping) before a session is closed.
    /// Phones ping at least every 60 s. [default: 90]
    #[arg(long, env = "PARLEY_IDLE_TIMEOUT", value_name = "SECS")]
    pub idle_timeout: Option<u64>,

    /// Seconds a write to a phone may take before the session is closed as a
    /// slow consumer. [default: 30]
    #[arg(long, env = "PARLEY_WRITE_TIMEOUT", value_name = "SECS")]
    pub write_timeout: Option<u64>,

    /// Connections held at once; past it new ones wait in the listen backlog.
    /// [default: 100000]
    #[arg(long, env = "PARLEY_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,

    /// Deliveries and receipts a session may have unacknowledged at once.
    /// [default: 64]
    #[arg(long, env = "PARLEY_DELIVERY_WINDOW", value_name = "N")]
    pub delivery_window: Option<usize>,

    /// How many recent client_msg_ids per device are remembered to answer a
    /// resend with its original ack. [default: 128]
    #[arg(long, env = "PARLEY_DEDUPE_HORIZON", value_name = "N")]
    pub dedupe_horizon: Option<usize>,

    /// Messages one device may have queued; past it a send gets
    /// MAILBOX_FULL. [default: 10000]
    #[arg(long, env = "PARLEY_MAILBOX_MAX_MESSAGES", value_name = "N")]
    pub mailbox_max_messages: Option<usize>,

    /// Bytes of messages one device may have queued. [default: 67108864]
    #[arg(long, env = "PARLEY_MAILBOX_MAX_BYTES", value_name = "BYTES")]
    pub mailbox_max_bytes: Option<usize>,

    /// Days an undelivered message or receipt is kept before it is deleted.
    /// [default: 30]
    #[arg(long, env = "PARLEY_MESSAGE_TTL_DAYS", value_name = "DAYS")]
    pub message_ttl_days: Option<u64>,

    /// Frames one session may send per second, sustained; past the burst
    /// the session is closed with RATE_LIMITED (close 1008). [default: 100]
    #[arg(long, env = "PARLEY_FRAMES_PER_SECOND", value_name = "N")]
    pub frames_per_second: Option<f64>,

    /// Frames one session may send at once. [default: 500]
    #[arg(long, env = "PARLEY_FRAMES_BURST", value_name = "N")]
    pub frames_burst: Option<f64>,

    /// Messages one session may send per second, sustained; past the burst
    /// a send gets SendError RATE_LIMITED with a retry hint. [default: 20]
    #[arg(long, env = "PARLEY_MESSAGES_PER_SECOND", value_name = "N")]
    pub messages_per_second: Option<f64>,

    /// Messages one session may send at once. [default: 100]
    #[arg(long, env = "PARLEY_MESSAGES_BURST", value_name = "N")]
    pub messages_burst: Option<f64>,

    /// Message bytes one device may receive per second, sustained.
    /// [default: 1048576]
    #[arg(long, env = "PARLEY_INBOUND_BYTES_PER_SECOND", value_name = "BYTES")]
    pub inbound_bytes_per_second: Option<f64>,

    /// Message bytes one device may receive at once. [default: 8388608]
    #[arg(long, env = "PARLEY_INBOUND_BYTES_BURST", value_name = "BYTES")]
    pub inbound_bytes_burst: Option<f64>,

    /// Days a device credential (JWT) stays valid. [default: 365]
    #[arg(long, env = "PARLEY_TOKEN_TTL_DAYS", value_name = "DAYS")]
    pub token_ttl_days: Option<u64>,

    /// Seconds a registration code stays valid. [default: 600]
    #[arg(long, env = "PARLEY_CODE_TTL", value_name = "SECS")]
    pub code_ttl: Option<u64>,

    /// Seconds before one number may get another registration code. [default: 60]
    #[arg(long, env = "PARLEY_CODE_INTERVAL", value_name = "SECS")]
    pub code_interval: Option<u64>,

    /// Registration codes one number may get in any 24 hours. [default: 5]
    #[arg(long, env = "PARLEY_CODES_PER_DAY", value_name = "N")]
    pub codes_per_day: Option<u32>,

    /// Registration codes one client address may request at once (many
    /// phones share an address behind carrier NAT). [default: 20]
    #[arg(long, env = "PARLEY_CODES_PER_IP_BURST", value_name = "N")]
    pub codes_per_ip_burst: Option<u32>,

    /// Registration codes one client address may request per minute,
    /// sustained. [default: 10]
    #[arg(long, env = "PARLEY_CODES_PER_IP_PER_MINUTE", value_name = "N")]
    pub codes_per_ip_per_minute: Option<u32>,

    /// Code verifications one client address may attempt at once. [default: 50]
    #[arg(long, env = "PARLEY_VERIFIES_PER_IP_BURST", value_name = "N")]
    pub verifies_per_ip_burst: Option<u32>,

    /// Code verifications one client address may attempt per minute,
    /// sustained. [default: 30]
    #[arg(long, env = "PARLEY_VERIFIES_PER_IP_PER_MINUTE", value_name = "N")]
    pub verifies_per_ip_per_minute: Option<u32>,

    /// Seconds shutdown waits for sessions and requests to finish. [default: 10]
    #[arg(long, env = "PARLEY_SHUTDOWN_GRACE", value_name = "SECS")]
    pub shutdown_grace: Option<u64>,

    /// Log format. Levels come from RUST_LOG (default: info).
    #[arg(long, env = "PARLEY_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,

    /// What a server ack promises: `fsync` (journaled and synced before the
    /// ack) or `memory` (a crash loses queued messages). [default: fsync]
    #[arg(long, env = "PARLEY_DURABILITY", value_enum)]
    pub durability: Option<Durability>,

    /// The journal file. Put it on a disk of its own in production.
    /// [default: <data-dir>/journal.redb]
    #[arg(long, env = "PARLEY_JOURNAL_PATH", value_name = "PATH")]
    pub journal_path: Option<PathBuf>,

    /// The journal's page cache in MiB. [default: 64]
    #[arg(long, env = "PARLEY_JOURNAL_CACHE_MIB", value_name = "MIB")]
    pub journal_cache_mib: Option<usize>,
}

impl Settings {
    /// `self` where set, else `lower`.
    fn over(self, lower: Settings) -> Settings {
        Settings {
            data_dir: self.data_dir.or(lower.data_dir),
            gateway_addr: self.gateway_addr.or(lower.gateway_addr),
            http_addr: self.http_addr.or(lower.http_addr),
            admin_addr: self.admin_addr.or(lower.admin_addr),
            database_url: self.database_url.or(lower.database_url),
            tls_cert: self.tls_cert.or(lower.tls_cert),
            tls_key: self.tls_key.or(lower.tls_key),
            tls_hostnames: self.tls_hostnames.or(lower.tls_hostnames),
            handshake_timeout: self.handshake_timeout.or(lower.handshake_timeout),
            idle_timeout: self.idle_timeout.or(lower.idle_timeout),
            write_timeout: self.write_timeout.or(lower.write_timeout),
            max_connections: self.max_connections.or(lower.max_connections),
            delivery_window: self.delivery_window.or(lower.delivery_window),
            dedupe_horizon: self.dedupe_horizon.or(lower.dedupe_horizon),
            mailbox_max_messages: self.mailbox_max_messages.or(lower.mailbox_max_messages),
            mailbox_max_bytes: self.mailbox_max_bytes.or(lower.mailbox_max_bytes),
            message_ttl_days: self.message_ttl_days.or(lower.message_ttl_days),
            frames_per_second: self.frames_per_second.or(lower.frames_per_second),
            frames_burst: self.frames_burst.or(lower.frames_burst),
            messages_per_second: self.messages_per_second.or(lower.messages_per_second),
            messages_burst: self.messages_burst.or(lower.messages_burst),
            inbound_bytes_per_second: self
                .inbound_bytes_per_second
                .or(lower.inbound_bytes_per_second),
            inbound_bytes_burst: self.inbound_bytes_burst.or(lower.inbound_bytes_burst),
            token_ttl_days: self.token_ttl_days.or(lower.token_ttl_days),
            code_ttl: self.code_ttl.or(lower.code_ttl),
            code_interval: self.code_interval.or(lower.code_interval),
            codes_per_day: self.codes_per_day.or(lower.codes_per_day),
            codes_per_ip_burst: self.codes_per_ip_burst.or(lower.codes_per_ip_burst),
            codes_per_ip_per_minute: self
                .codes_per_ip_per_minute
                .or(lower.codes_per_ip_per_minute),
            verifies_per_ip_burst: self.verifies_per_ip_burst.or(lower.verifies_per_ip_burst),
            verifies_per_ip_per_minute: self
                .verifies_per_ip_per_minute
                .or(lower.verifies_per_ip_per_minute),
            shutdown_grace: self.shutdown_grace.or(lower.shutdown_grace),
            log_format: self.log_format.or(lower.log_format),
            durability: self.durability.or(lower.durability),
            journal_path: self.journal_path.or(lower.journal_path),
            journal_cache_mib: self.journal_cache_mib.or(lower.journal_cache_mib),
        }
    }
}

/// Where the TLS certificate comes from.
#[derive(Clone, Debug)]
pub enum TlsSource {
    /// Operator-provided PEM files.
    Files { cert: PathBuf, key: PathBuf },
    /// Generated on first start into `<data-dir>/tls`, with these extra names.
    SelfSigned { extra_names: Vec<String> },
}

/// The validated configuration of one server process.
#[derive(Clone, Debug)]
pub struct Config {
    pub data_dir: PathBuf,
    pub gateway_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub database_url: String,
    pub tls: TlsSource,
    pub gateway: GatewayConfig,
    pub router: MemoryConfig,
    /// `None` in memory-only durability.
    pub journal: Option<JournalConfig>,
    pub registration: RegistrationConfig,
    pub shutdown_grace: Duration,
    pub log_format: LogFormat,
}

/// Every problem found in the configuration, one per line.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
pub struct ConfigError(pub Vec<String>);

impl Config {
    /// Merges flags and environment (`cli`) over the file it names, if any,
    /// over the defaults, and validates the result.
    pub fn resolve(cli: Cli) -> Result<Config, ConfigError> {
        let file = match &cli.config {
            Some(path) => read_file(path)?,
            None => Settings::default(),
        };
        Config::from_settings(cli.settings.over(file))
    }

    /// Applies defaults to `s` and validates it.
    pub fn from_settings(s: Settings) -> Result<Config, ConfigError> {
        let mut problems = Vec::new();
        let data_dir = s.data_dir.unwrap_or_else(|| PathBuf::from("parley-data"));
        let database_url = s.database_url.unwrap_or_else(|| {
            format!("sqlite://{}?mode=rwc", data_dir.join("parley.db").display())
        });
        if !(database_url.starts_with("sqlite:") || database_url.starts_with("postgres")) {
            problems.push("database_url must start with sqlite: or postgres://".to_owned());
        }
        let tls = match (s.tls_cert, s.tls_key) {
            (Some(cert), Some(key)) => TlsSource::Files { cert, key },
            (None, None) => TlsSource::SelfSigned {
                extra_names: s.tls_hostnames.unwrap_or_default(),
            },
            _ => {
                problems.push("tls_cert and tls_key must be given together".to_owned());
                TlsSource::SelfSigned {
                    extra_names: Vec::new(),
                }
            }
        };
        let mut seconds = |name: &str, value: Option<u64>, default: u64, min: u64| {
            let value = value.unwrap_or(default);
            if value < min {
                problems.push(format!(
                    "{name} must be at least {min} seconds, not {value}"
                ));
            }
            Duration::from_secs(value)
        };
        let handshake_timeout = seconds("handshake_timeout", s.handshake_timeout, 10, 1);
        let idle_timeout = seconds("idle_timeout", s.idle_timeout, 90, 5);
        let write_timeout = seconds("write_timeout", s.write_timeout, 30, 1);
        let code_ttl = seconds("code_ttl", s.code_ttl, 600, 10);
        let code_interval = seconds("code_interval", s.code_interval, 60, 1);
        let shutdown_grace = seconds("shutdown_grace", s.shutdown_grace, 10, 0);
        let token_ttl_days = s.token_ttl_days.unwrap_or(365);
        let codes_per_day = s.codes_per_day.unwrap_or(5);
        if codes_per_day == 0 {
            problems.push("codes_per_day must be at least 1".to_owned());
        }
        if token_ttl_days == 0 {
            problems.push("token_ttl_days must be at least 1".to_owned());
        }
        let mut at_least_one = |name: &str, value: Option<usize>, default: usize| {
            let value = value.unwrap_or(default);
            if value == 0 {
                problems.push(format!("{name} must be at least 1"));
            }
            value
        };
        let max_connections = at_least_one("max_connections", s.max_connections, 100_000);
        let window = at_least_one("delivery_window", s.delivery_window, 64);
        let dedupe_horizon = at_least_one("dedupe_horizon", s.dedupe_horizon, 128);
        let journal_cache_mib = at_least_one("journal_cache_mib", s.journal_cache_mib, 64);
        let defaults = MemoryConfig::default();
        let max_queued_messages = at_least_one(
            "mailbox_max_messages",
            s.mailbox_max_messages,
            defaults.max_queued_messages,
        );
        let max_queued_bytes = s.mailbox_max_bytes.unwrap_or(defaults.max_queued_bytes);
        if max_queued_bytes < parley_proto::limits::MAX_FRAME_BYTES {
            problems.push(format!(
                "mailbox_max_bytes must be at least {} (one largest message)",
                parley_proto::limits::MAX_FRAME_BYTES
            ));
        }
        let gateway_defaults = GatewayConfig::default();
        let mut rate = |name: &str, burst: Option<f64>, per_second: Option<f64>, default: Rate| {
            let rate = Rate::new(
                burst.unwrap_or(default.burst),
                per_second.unwrap_or(default.per_second),
            );
            if !(rate.burst >= 1.0 && rate.per_second > 0.0) {
                problems.push(format!(
                    "{name}: the burst must be at least 1 and the rate above 0"
                ));
            }
            rate
        };
        let frames = rate(
            "frames",
            s.frames_burst,
            s.frames_per_second,
            gateway_defaults.frames,
        );
        let messages = rate(
            "messages",
            s.messages_burst,
            s.messages_per_second,
            gateway_defaults.messages,
        );
        let inbound_bytes = rate(
            "inbound_bytes",
            s.inbound_bytes_burst,
            s.inbound_bytes_per_second,
            defaults.inbound_bytes,
        );
        if inbound_bytes.burst < parley_proto::limits::MAX_BODY_BYTES as f64 {
            problems.push(format!(
                "inbound_bytes_burst must be at least {} (one largest message)",
                parley_proto::limits::MAX_BODY_BYTES
            ));
        }
        let journal = match s.durability.unwrap_or_default() {
            Durability::Memory => None,
            Durability::Fsync => Some(JournalConfig {
                path: s
                    .journal_path
                    .clone()
                    .unwrap_or_else(|| data_dir.join("journal.redb")),
                cache_bytes: journal_cache_mib.saturating_mul(1024 * 1024),
                ..JournalConfig::at("")
            }),
        };
        let message_ttl_days = s.message_ttl_days.unwrap_or(30);
        if message_ttl_days == 0 {
            problems.push("message_ttl_days must be at least 1".to_owned());
        }
        if !problems.is_empty() {
            return Err(ConfigError(problems));
        }

        let gateway = GatewayConfig {
            handshake_timeout,
            idle_timeout,
            write_timeout,
            max_connections,
            shutdown_grace,
            frames,
            messages,
            ..gateway_defaults
        };
        let router = MemoryConfig {
            window,
            dedupe_horizon,
            max_queued_messages,
            max_queued_bytes,
            ttl: Duration::from_secs(message_ttl_days * 24 * 3600),
            inbound_bytes,
            ..defaults
        };
        let registration_defaults = RegistrationConfig::default();
        let registration = RegistrationConfig {
            code_ttl,
            code_interval,
            codes_per_day,
            codes_per_ip_burst: s
                .codes_per_ip_burst
                .unwrap_or(registration_defaults.codes_per_ip_burst),
            codes_per_ip_per_minute: s
                .codes_per_ip_per_minute
                .unwrap_or(registration_defaults.codes_per_ip_per_minute),
            verifies_per_ip_burst: s
                .verifies_per_ip_burst
                .unwrap_or(registration_defaults.verifies_per_ip_burst),
            verifies_per_ip_per_minute: s
                .verifies_per_ip_per_minute
                .unwrap_or(registration_defaults.verifies_per_ip_per_minute),
            token_ttl: Duration::from_secs(token_ttl_days * 24 * 3600),
            ..registration_defaults
        };
        // The registration crate knows its own invariants; a setting exposed
        // here must not be able to break them.
        registration
            .validate()
            .map_err(|err| ConfigError(err.problems))?;
        Ok(Config {
            data_dir,
            gateway_addr: s
                .gateway_addr
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 5443))),
            http_addr: s
                .http_addr
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8443))),
            admin_addr: s
                .admin_addr
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9090))),
            database_url,
            tls,
            gateway,
            router,
            registration,
            shutdown_grace,
            log_format: s.log_format.unwrap_or_default(),
            journal,
        })
    }
}

fn read_file(path: &Path) -> Result<Settings, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(vec![format!("cannot read {}: {e}", path.display())]))?;
    toml::from_str(&text).map_err(|e| ConfigError(vec![format!("{}: {e}", path.display())]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_work_on_a_laptop() {
        let config = Config::from_settings(Settings::default()).expect("defaults are valid");
        assert_eq!(config.gateway_addr.to_string(), "127.0.0.1:5443");
        assert_eq!(config.http_addr.to_string(), "127.0.0.1:8443");
        assert_eq!(
            config.database_url,
            "sqlite://parley-data/parley.db?mode=rwc"
        );
        assert!(matches!(config.tls, TlsSource::SelfSigned { .. }));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err = Config::from_settings(Settings {
            idle_timeout: Some(1),
            delivery_window: Some(0),
            database_url: Some("mysql://x".into()),
            ..Settings::default()
        })
        .expect_err("invalid");
        assert_eq!(err.0.len(), 3, "{err}");
    }

    #[test]
    fn flags_win_over_the_file() {
        let file: Settings =
            toml::from_str("gateway_addr = \"127.0.0.1:1\"\nidle_timeout = 30").expect("toml");
        let flags = Settings {
            gateway_addr: Some("127.0.0.1:2".parse().expect("addr")),
            ..Settings::default()
        };
        let config = Config::from_settings(flags.over(file)).expect("valid");
        assert_eq!(config.gateway_addr.port(), 2);
        assert_eq!(config.gateway.idle_timeout, Duration::from_secs(30));
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        assert!(toml::from_str::<Settings>("gateway_adr = \"x\"").is_err());
    }
}
