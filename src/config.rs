//! The server's configuration: one typed struct, read once at start-up.
//!
//! Every setting can come from a flag, an environment variable
//! (`PARLEY_...`) or a TOML file (`--config`), in that order of precedence,
//! over a default that works on a laptop. [`Settings`] is the raw, all-
//! optional form the three sources share; [`Config::resolve`] merges them and
//! validates the result, reporting every problem at once rather than the
//! first, each named as the operator wrote it: `--idle-timeout`,
//! `PARLEY_IDLE_TIMEOUT`, or `idle_timeout in parley.toml`.
//!
//! Flags are parsed by clap ([`Cli::parse_args`]); a bad flag stops there,
//! with clap's usage message. The environment and the file are read by
//! [`Config::resolve`] with the same parsers, one variable and one key at a
//! time, so that every bad one is reported, under its own name.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::error::{ContextKind, ContextValue};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use parley_gateway::GatewayConfig;
use parley_registration::RegistrationConfig;
use parley_router::ratelimit::Rate;
use parley_router::{JournalConfig, MemoryConfig};
use serde::{Deserialize, Deserializer, Serialize};

use crate::tls::{self, CertFiles, TlsError};

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
    /// Back up the running node without stopping it: the journal, the
    /// SQLite account store, the signing key and the generated certificate,
    /// into a new directory under --backup-dir that is a data directory
    /// (restore by copying it into an empty one). Prints its path.
    Backup {
        /// The node's admin listener, e.g. 127.0.0.1:9090.
        #[arg(long, default_value = "http://127.0.0.1:9090", value_name = "URL")]
        admin: String,
    },
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
        /// Devices per account: the primary and this many less one linked
        /// devices (one line each, the account's lines together, the
        /// primary first).
        #[arg(long, default_value_t = 1)]
        devices: usize,
        /// Where to write the credentials (mode 0600: they are secrets).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// A live one-screen view of a running node, from its admin endpoint:
    /// sessions, queue depth, and the rates of the key counters over 1 s,
    /// 10 s and 100 s.
    Stats {
        /// The node's admin listener, e.g. 127.0.0.1:9090 (`http://` may be
        /// left out).
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One line per event, for people.
    #[default]
    Human,
    /// One JSON object per event, for log collectors.
    Json,
}

/// What a server ack promises (docs/guarantees.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize, Serialize)]
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

/// How registration codes reach phones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SmsProvider {
    /// Written to <data-dir>/outbox.jsonl (development: nothing is sent).
    #[default]
    Outbox,
    /// Sent as SMS through AWS SNS (docs/operations.md "SMS").
    Sns,
}

/// How phones are woken (push notifications).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PushProvider {
    /// No pushes; registering a push token answers PUSH_PLATFORM_UNAVAILABLE.
    Off,
    /// Written to <data-dir>/outbox.jsonl beside the SMS (development).
    #[default]
    Outbox,
    /// Through AWS SNS mobile push (docs/operations.md "Push notifications").
    Sns,
}

/// Where media are stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaStoreKind {
    /// A directory on this server's disk.
    #[default]
    Local,
    /// An S3 bucket (docs/operations.md "Media").
    S3,
}

/// The media storage and the media service's limits.
#[derive(Clone, Debug)]
pub struct MediaSetup {
    pub store: MediaStore,
    pub config: parley_media::MediaConfig,
}

#[derive(Clone, Debug)]
pub enum MediaStore {
    Local(PathBuf),
    S3(parley_media::S3Settings),
}

/// The push service the node is built with, and the pusher's policy.
#[derive(Clone, Debug)]
pub struct PushSetup {
    pub service: PushService,
    pub policy: parley_push::PushConfig,
}

#[derive(Clone, Debug)]
pub enum PushService {
    Off,
    /// The development outbox at this path.
    Outbox(PathBuf),
    Sns {
        settings: parley_sns::SnsSettings,
        apps: parley_sns::PushApps,
    },
}

/// The SMS sender the node is built with.
#[derive(Clone, Debug)]
pub enum SmsConfig {
    /// The development outbox at this path.
    Outbox(PathBuf),
    /// AWS SNS.
    Sns {
        settings: parley_sns::SnsSettings,
        options: parley_sns::SmsOptions,
    },
}

/// Every setting, each optional so that flags, environment and file can be
/// layered. Durations are whole seconds. The field names are the file's
/// keys; the flags are the same names in kebab case, the environment
/// variables the same in upper case after `PARLEY_` (a unit test holds this).
#[derive(Debug, Default, Args, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Directory for the database, keys, certificate and development outbox.
    /// [default: ./parley-data]
    #[arg(long, env = "PARLEY_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Where phones connect (TLS + WebSocket): IP:PORT, or a host name and
    /// port such as localhost:5443. [default: 127.0.0.1:5443]
    #[arg(long, env = "PARLEY_GATEWAY_ADDR", value_name = "ADDR", value_parser = parse_listen_addr)]
    #[serde(default, deserialize_with = "listen_addr")]
    pub gateway_addr: Option<SocketAddr>,

    /// Where the HTTPS API (registration, contacts) listens. [default: 127.0.0.1:8443]
    #[arg(long, env = "PARLEY_HTTP_ADDR", value_name = "ADDR", value_parser = parse_listen_addr)]
    #[serde(default, deserialize_with = "listen_addr")]
    pub http_addr: Option<SocketAddr>,

    /// Where the plain-HTTP admin endpoints (/metrics, /healthz, /readyz)
    /// listen. Keep it private. [default: 127.0.0.1:9090]
    #[arg(long, env = "PARLEY_ADMIN_ADDR", value_name = "ADDR", value_parser = parse_listen_addr)]
    #[serde(default, deserialize_with = "listen_addr")]
    pub admin_addr: Option<SocketAddr>,

    /// Account database: sqlite://PATH?mode=rwc or postgres://...
    /// [default: sqlite://<data-dir>/parley.db?mode=rwc]
    #[arg(long, env = "PARLEY_DATABASE_URL", value_name = "URL")]
    pub database_url: Option<String>,

    /// PEM certificate chain for both listeners. Without it (and --tls-key) a
    /// self-signed certificate is generated in <data-dir>/tls on first start.
    // Given together; checked once flags, environment and file are merged
    // (clap sees only the flags).
    #[arg(long, env = "PARLEY_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert.
    #[arg(long, env = "PARLEY_TLS_KEY", value_name = "FILE")]
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

    /// This node's number in its deployment (0 to 127), carried in every
    /// message and receipt id it makes so that no two nodes make the same
    /// id: every node of one deployment needs its own. [default: 0]
    #[arg(long, env = "PARLEY_NODE_ID", value_name = "N")]
    pub node_id: Option<u8>,

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

    /// Seconds a link code (shown by the primary device to link another)
    /// stays valid. [default: 600]
    #[arg(long, env = "PARLEY_LINK_CODE_TTL", value_name = "SECS")]
    pub link_code_ttl: Option<u64>,

    /// Devices one account may have, the primary included; 1 turns linking
    /// off. [default: 5]
    #[arg(long, env = "PARLEY_MAX_DEVICES", value_name = "N")]
    pub max_devices: Option<u32>,

    /// Days after which a linked device that has not connected is unlinked
    /// (never the primary). [default: 30]
    #[arg(long, env = "PARLEY_INACTIVE_DEVICE_DAYS", value_name = "DAYS")]
    pub inactive_device_days: Option<u64>,

    /// Link attempts one client address may make at once. [default: 20]
    #[arg(long, env = "PARLEY_LINKS_PER_IP_BURST", value_name = "N")]
    pub links_per_ip_burst: Option<u32>,

    /// Link attempts one client address may make per minute, sustained.
    /// [default: 10]
    #[arg(long, env = "PARLEY_LINKS_PER_IP_PER_MINUTE", value_name = "N")]
    pub links_per_ip_per_minute: Option<u32>,

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

    /// Where `parley backup` (POST /admin/backup) writes backups of the
    /// running node. [default: <data-dir>/backups]
    #[arg(long, env = "PARLEY_BACKUP_DIR", value_name = "DIR")]
    pub backup_dir: Option<PathBuf>,

    /// The journal's page cache in MiB. [default: 16]
    #[arg(long, env = "PARLEY_JOURNAL_CACHE_MIB", value_name = "MIB")]
    pub journal_cache_mib: Option<usize>,

    /// The least time in microseconds from one journal commit's start to
    /// the next one's: changes that arrive sooner share the next commit
    /// (fewer fsyncs; each waits at most this long more). 0: commit back
    /// to back; at most 100000. [default: 1000]
    #[arg(long, env = "PARLEY_JOURNAL_COMMIT_GAP_US", value_name = "US")]
    pub journal_commit_gap_us: Option<u64>,

    /// How registration codes are sent: `outbox` (written to
    /// <data-dir>/outbox.jsonl, nothing leaves the machine) or `sns` (SMS
    /// through AWS SNS; region and credentials from the standard AWS
    /// configuration). [default: outbox]
    #[arg(long, env = "PARLEY_SMS", value_enum)]
    pub sms: Option<SmsProvider>,

    /// With `--sms sns`: the sender id shown on the phone
    /// (AWS.SNS.SMS.SenderID), 1 to 11 letters and digits with at least one
    /// letter, where the destination country supports sender ids.
    #[arg(long, env = "PARLEY_SMS_SENDER_ID", value_name = "ID")]
    pub sms_sender_id: Option<String>,

    /// With `--sms sns`: the number SMS are sent from
    /// (AWS.MM.SMS.OriginationNumber), in E.164, owned by the AWS account.
    #[arg(long, env = "PARLEY_SMS_ORIGINATION_NUMBER", value_name = "E164")]
    pub sms_origination_number: Option<String>,

    /// An SNS endpoint instead of AWS's, e.g. a local SNS-compatible server
    /// (AWS_ENDPOINT_URL_SNS and AWS_ENDPOINT_URL work too). With `--sms
    /// sns` or `--push sns`.
    #[arg(long, env = "PARLEY_SNS_ENDPOINT_URL", value_name = "URL")]
    pub sns_endpoint_url: Option<String>,

    /// How devices without a session are woken: `outbox` (a line in
    /// <data-dir>/outbox.jsonl per push), `sns` (SNS mobile push to APNs
    /// and FCM) or `off`. [default: outbox]
    #[arg(long, env = "PARLEY_PUSH", value_enum)]
    pub push: Option<PushProvider>,

    /// With `--push sns`: the SNS platform application ARN for APNs
    /// (arn:aws:sns:REGION:ACCOUNT:app/APNS/NAME).
    #[arg(long, env = "PARLEY_PUSH_APNS_ARN", value_name = "ARN")]
    pub push_apns_arn: Option<String>,

    /// With `--push sns`: the platform application ARN for the APNs
    /// sandbox (.../app/APNS_SANDBOX/NAME), for development builds.
    #[arg(long, env = "PARLEY_PUSH_APNS_SANDBOX_ARN", value_name = "ARN")]
    pub push_apns_sandbox_arn: Option<String>,

    /// With `--push sns`: the platform application ARN for FCM
    /// (.../app/GCM/NAME).
    #[arg(long, env = "PARLEY_PUSH_FCM_ARN", value_name = "ARN")]
    pub push_fcm_arn: Option<String>,

    /// At most one push per device per this many seconds while it stays
    /// offline. [default: 60]
    #[arg(long, env = "PARLEY_PUSH_WINDOW", value_name = "SECS")]
    pub push_window: Option<u64>,

    /// Seconds after a session ends with messages unacknowledged before its
    /// device is pushed, unless it reconnects first. [default: 60]
    #[arg(long, env = "PARLEY_PUSH_DELAY", value_name = "SECS")]
    pub push_delay: Option<u64>,

    /// Devices with a push waiting, at most; past it the oldest waiting
    /// push is dropped (and counted). [default: 100000]
    #[arg(long, env = "PARLEY_PUSH_QUEUE", value_name = "N")]
    pub push_queue: Option<usize>,

    /// Pushes sent at once. [default: 32]
    #[arg(long, env = "PARLEY_PUSH_CONCURRENCY", value_name = "N")]
    pub push_concurrency: Option<usize>,

    /// Seconds one push (or one token registration: at most half the
    /// request timeout) may take at the push service before it counts as
    /// failed. [default: 5]
    #[arg(long, env = "PARLEY_PUSH_TIMEOUT", value_name = "SECS")]
    pub push_timeout: Option<u64>,

    /// Where media (photos, voice notes, video) are stored: `local` (the
    /// media directory) or `s3` (an S3 bucket; credentials from the standard
    /// AWS configuration). [default: local]
    #[arg(long, env = "PARLEY_MEDIA_STORE", value_enum)]
    pub media_store: Option<MediaStoreKind>,

    /// With `--media-store local`: the media directory.
    /// [default: <data-dir>/media]
    #[arg(long, env = "PARLEY_MEDIA_DIR", value_name = "DIR")]
    pub media_dir: Option<PathBuf>,

    /// With `--media-store s3`: the bucket.
    #[arg(long, env = "PARLEY_MEDIA_S3_BUCKET", value_name = "NAME")]
    pub media_s3_bucket: Option<String>,

    /// With `--media-store s3`: a prefix for every key (e.g. `parley/`).
    #[arg(long, env = "PARLEY_MEDIA_S3_PREFIX", value_name = "PREFIX")]
    pub media_s3_prefix: Option<String>,

    /// With `--media-store s3`: the bucket's region [default: AWS_REGION,
    /// else us-east-1].
    #[arg(long, env = "PARLEY_MEDIA_S3_REGION", value_name = "REGION")]
    pub media_s3_region: Option<String>,

    /// With `--media-store s3`: an S3-compatible endpoint instead of AWS's,
    /// addressed path-style (AWS_ENDPOINT_URL_S3 and AWS_ENDPOINT_URL work too).
    #[arg(long, env = "PARLEY_MEDIA_S3_ENDPOINT_URL", value_name = "URL")]
    pub media_s3_endpoint_url: Option<String>,

    /// Largest media file in MiB; larger uploads answer 413. [default: 100]
    #[arg(long, env = "PARLEY_MEDIA_MAX_MIB", value_name = "MIB")]
    pub media_max_mib: Option<u64>,

    /// Seconds media are kept after their upload completes.
    /// [default: 2592000, 30 days]
    #[arg(long, env = "PARLEY_MEDIA_TTL", value_name = "SECS")]
    pub media_ttl: Option<u64>,

    /// Seconds an upload may take from its creation to its last byte.
    /// [default: 86400, 24 hours]
    #[arg(long, env = "PARLEY_MEDIA_UPLOAD_TTL", value_name = "SECS")]
    pub media_upload_ttl: Option<u64>,

    /// Uploads a user may start per hour. [default: 100]
    #[arg(long, env = "PARLEY_MEDIA_UPLOADS_PER_HOUR", value_name = "N")]
    pub media_uploads_per_hour: Option<u32>,

    /// MiB a user may upload per day. [default: 2048]
    #[arg(long, env = "PARLEY_MEDIA_MIB_PER_DAY", value_name = "MIB")]
    pub media_mib_per_day: Option<u64>,

    /// Uploads one user may send bytes to at once. [default: 4]
    #[arg(long, env = "PARLEY_MEDIA_UPLOADS_PER_USER", value_name = "N")]
    pub media_uploads_per_user: Option<usize>,

    /// Uploads receiving bytes at once, in all. [default: 64]
    #[arg(long, env = "PARLEY_MEDIA_UPLOADS", value_name = "N")]
    pub media_uploads: Option<usize>,

    /// Seconds between sweeps that remove expired media and unfinished
    /// uploads from the store. [default: 3600]
    #[arg(long, env = "PARLEY_MEDIA_SWEEP_EVERY", value_name = "SECS")]
    pub media_sweep_every: Option<u64>,
}

impl Settings {
    /// `self` where set, else `lower`. Key by key through serde (TOML
    /// leaves unset options out), so no list of fields is kept by hand.
    fn over(self, lower: Settings) -> Settings {
        let mut upper = self.table();
        for (key, value) in lower.table() {
            upper.entry(key).or_insert(value);
        }
        toml::Value::Table(upper)
            .try_into()
            .expect("a merge of two valid Settings is valid")
    }

    /// The set keys and their values.
    fn table(&self) -> toml::Table {
        match toml::Value::try_from(self) {
            Ok(toml::Value::Table(table)) => table,
            _ => unreachable!("Settings serialises to a table"),
        }
    }

    /// The keys this layer sets.
    fn keys(&self) -> BTreeSet<String> {
        self.table().into_iter().map(|(key, _)| key).collect()
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
    /// Where backups of the running node go.
    pub backup_dir: PathBuf,
    /// How registration codes are sent.
    pub sms: SmsConfig,
    /// How devices without a session are woken.
    pub push: PushSetup,
    /// Where media go, and their limits.
    pub media: MediaSetup,
}

/// Every problem found in the configuration, one per line.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
pub struct ConfigError(pub Vec<String>);

impl Config {
    /// Merges the flags (`cli`) over the environment (`env`: a variable's
    /// value by name; `std::env::var_os` in the server) over the file named
    /// by `--config` or `PARLEY_CONFIG`, over the defaults, and validates
    /// the result. Every problem of every source is reported at once.
    pub fn resolve(
        cli: Cli,
        env: &dyn Fn(&str) -> Option<OsString>,
    ) -> Result<Config, ConfigError> {
        let mut problems = Vec::new();
        let (env_config, env_settings) = env_layer(env, &mut problems);
        let mut sources = Sources {
            flags: cli.settings.keys(),
            env: env_settings.keys(),
            file: None,
        };
        let file = match cli.config.or(env_config) {
            Some(path) => {
                let file = read_file(&path, &mut problems);
                sources.file = Some((path, file.keys()));
                file
            }
            None => Settings::default(),
        };
        let merged = cli.settings.over(env_settings).over(file);
        match Config::validate(merged, &sources) {
            Ok(config) if problems.is_empty() => Ok(config),
            Ok(_) => Err(ConfigError(problems)),
            Err(ConfigError(more)) => {
                problems.extend(more);
                Err(ConfigError(problems))
            }
        }
    }

    /// Applies defaults to `s` and validates it (problems named by key).
    pub fn from_settings(s: Settings) -> Result<Config, ConfigError> {
        Config::validate(s, &Sources::default())
    }

    /// Applies defaults to `s` and validates it, naming each problem's
    /// setting as `sources` says it was given.
    fn validate(s: Settings, sources: &Sources) -> Result<Config, ConfigError> {
        let name = |key: &str| sources.name(key);
        let mut problems = Vec::new();
        let data_dir = s
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("parley-data"));
        let sms = sms_config(&s, &data_dir, &name, &mut problems);
        let push = push_config(&s, &data_dir, &name, &mut problems);
        let media = media_config(&s, &data_dir, &name, &mut problems);
        if let Some(url) = &s.sns_endpoint_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            problems.push(format!(
                "{}: must be an http:// or https:// URL, not {url:?}",
                name("sns_endpoint_url")
            ));
        }
        let database_url = s.database_url.unwrap_or_else(|| {
            format!("sqlite://{}?mode=rwc", data_dir.join("parley.db").display())
        });
        if !(database_url.starts_with("sqlite:") || database_url.starts_with("postgres")) {
            problems.push(format!(
                "{}: must start with sqlite: or postgres://",
                name("database_url")
            ));
        }
        let tls = match (s.tls_cert, s.tls_key) {
            (Some(cert), Some(key)) => {
                let files = CertFiles { cert, key };
                // Read now, so that a bad file is reported with the rest
                // (exit 2), each problem blaming its own file.
                if let Err(found) = tls::check(&files) {
                    problems.extend(found.iter().map(|problem| {
                        let blamed = match problem {
                            TlsError::Read { path, .. } | TlsError::NotPem(path)
                                if *path == files.key =>
                            {
                                name("tls_key")
                            }
                            TlsError::KeyIsCert(_)
                            | TlsError::NoKey(_)
                            | TlsError::BadKey { .. } => name("tls_key"),
                            TlsError::Mismatch { .. } => {
                                format!("{} and {}", name("tls_cert"), name("tls_key"))
                            }
                            _ => name("tls_cert"),
                        };
                        format!("{blamed}: {problem}")
                    }));
                }
                TlsSource::Files {
                    cert: files.cert,
                    key: files.key,
                }
            }
            (None, None) => TlsSource::SelfSigned {
                extra_names: s.tls_hostnames.unwrap_or_default(),
            },
            (cert, _) => {
                let (given, missing) = if cert.is_some() {
                    ("tls_cert", "tls_key")
                } else {
                    ("tls_key", "tls_cert")
                };
                problems.push(format!(
                    "{} is given without {}: give both (certificate chain and private key) or neither",
                    name(given),
                    name(missing)
                ));
                TlsSource::SelfSigned {
                    extra_names: Vec::new(),
                }
            }
        };
        let mut seconds = |key: &str, value: Option<u64>, default: u64, min: u64| {
            let value = value.unwrap_or(default);
            if value < min {
                problems.push(format!(
                    "{}: must be at least {min} seconds, not {value}",
                    sources.name(key)
                ));
            }
            Duration::from_secs(value)
        };
        let handshake_timeout = seconds("handshake_timeout", s.handshake_timeout, 10, 1);
        let idle_timeout = seconds("idle_timeout", s.idle_timeout, 90, 5);
        let write_timeout = seconds("write_timeout", s.write_timeout, 30, 1);
        let code_ttl = seconds("code_ttl", s.code_ttl, 600, 10);
        let code_interval = seconds("code_interval", s.code_interval, 60, 1);
        let link_code_ttl = seconds("link_code_ttl", s.link_code_ttl, 600, 10);
        let shutdown_grace = seconds("shutdown_grace", s.shutdown_grace, 10, 0);
        let token_ttl_days = s.token_ttl_days.unwrap_or(365);
        let codes_per_day = s.codes_per_day.unwrap_or(5);
        if codes_per_day == 0 {
            problems.push(format!("{}: must be at least 1", name("codes_per_day")));
        }
        if token_ttl_days == 0 {
            problems.push(format!("{}: must be at least 1", name("token_ttl_days")));
        }
        // A bad device setting is reported here, under its source's name,
        // and replaced by its default, so that the registration crate's own
        // check below does not report it a second time.
        let registration_defaults = RegistrationConfig::default();
        let mut count = |key: &str, value: Option<u32>, default: u32, why: &str| match value {
            Some(0) => {
                problems.push(format!("{}: must be at least 1{why}", sources.name(key)));
                default
            }
            value => value.unwrap_or(default),
        };
        let max_devices = count(
            "max_devices",
            s.max_devices,
            registration_defaults.max_devices,
            " (the primary device)",
        );
        let links_per_ip_burst = count(
            "links_per_ip_burst",
            s.links_per_ip_burst,
            registration_defaults.links_per_ip_burst,
            "",
        );
        let inactive_device_days = match s.inactive_device_days {
            Some(0) => {
                problems.push(format!(
                    "{}: must be at least 1",
                    name("inactive_device_days")
                ));
                30
            }
            days => days.unwrap_or(30),
        };
        let link_code_ttl = if link_code_ttl.is_zero() {
            registration_defaults.link_code_ttl
        } else {
            link_code_ttl
        };
        let mut at_least_one = |key: &str, value: Option<usize>, default: usize| {
            let value = value.unwrap_or(default);
            if value == 0 {
                problems.push(format!("{}: must be at least 1", sources.name(key)));
            }
            value
        };
        let max_connections = at_least_one("max_connections", s.max_connections, 100_000);
        let window = at_least_one("delivery_window", s.delivery_window, 64);
        let dedupe_horizon = at_least_one("dedupe_horizon", s.dedupe_horizon, 128);
        let journal_cache_mib = at_least_one("journal_cache_mib", s.journal_cache_mib, 16);
        let defaults = MemoryConfig::default();
        let max_queued_messages = at_least_one(
            "mailbox_max_messages",
            s.mailbox_max_messages,
            defaults.max_queued_messages,
        );
        let max_queued_bytes = s.mailbox_max_bytes.unwrap_or(defaults.max_queued_bytes);
        if max_queued_bytes < parley_proto::limits::MAX_FRAME_BYTES {
            problems.push(format!(
                "{}: must be at least {} (one largest message)",
                name("mailbox_max_bytes"),
                parley_proto::limits::MAX_FRAME_BYTES
            ));
        }
        let gateway_defaults = GatewayConfig::default();
        let mut rate = |key: &str, burst: Option<f64>, per_second: Option<f64>, default: Rate| {
            let rate = Rate::new(
                burst.unwrap_or(default.burst),
                per_second.unwrap_or(default.per_second),
            );
            if !(rate.burst >= 1.0 && rate.burst.is_finite()) {
                problems.push(format!(
                    "{}: must be at least 1, not {}",
                    sources.name(&format!("{key}_burst")),
                    rate.burst
                ));
            }
            if !(rate.per_second > 0.0 && rate.per_second.is_finite()) {
                problems.push(format!(
                    "{}: must be above 0, not {}",
                    sources.name(&format!("{key}_per_second")),
                    rate.per_second
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
                "{}: must be at least {} (one largest message)",
                name("inbound_bytes_burst"),
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
                commit_gap: Duration::from_micros(
                    s.journal_commit_gap_us.unwrap_or(1000).min(100_000),
                ),
                ..JournalConfig::at("")
            }),
        };
        let node = match parley_router::NodeId::new(s.node_id.unwrap_or(0)) {
            Some(node) => node,
            None => {
                problems.push(format!(
                    "{}: must be at most {}, not {}",
                    name("node_id"),
                    parley_router::MAX_NODE_ID,
                    s.node_id.unwrap_or(0)
                ));
                parley_router::NodeId::default()
            }
        };
        let message_ttl_days = s.message_ttl_days.unwrap_or(30);
        if message_ttl_days == 0 {
            problems.push(format!("{}: must be at least 1", name("message_ttl_days")));
        }
        let gateway_addr = s
            .gateway_addr
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 5443)));
        let http_addr = s
            .http_addr
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8443)));
        let admin_addr = s
            .admin_addr
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9090)));
        let listeners = [
            ("gateway_addr", gateway_addr),
            ("http_addr", http_addr),
            ("admin_addr", admin_addr),
        ];
        for (at, (first, a)) in listeners.iter().enumerate() {
            for (second, b) in &listeners[at + 1..] {
                if a == b && a.port() != 0 {
                    problems.push(format!(
                        "{} and {} are the same address ({a}): each listener needs its own port",
                        name(first),
                        name(second)
                    ));
                }
            }
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
            ttl: Duration::from_secs(message_ttl_days.saturating_mul(24 * 3600)),
            inbound_bytes,
            node,
            ..defaults
        };
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
            token_ttl: Duration::from_secs(token_ttl_days.saturating_mul(24 * 3600)),
            link_code_ttl,
            max_devices,
            inactive_after: Duration::from_secs(inactive_device_days.saturating_mul(24 * 3600)),
            links_per_ip_burst,
            links_per_ip_per_minute: s
                .links_per_ip_per_minute
                .unwrap_or(registration_defaults.links_per_ip_per_minute),
            ..registration_defaults
        };
        // The registration crate knows its own invariants; a setting exposed
        // here must not be able to break them.
        if let Err(err) = registration.validate() {
            problems.extend(err.problems);
        }
        if !problems.is_empty() {
            return Err(ConfigError(problems));
        }
        let backup_dir = s.backup_dir.unwrap_or_else(|| data_dir.join("backups"));
        Ok(Config {
            data_dir,
            gateway_addr,
            http_addr,
            admin_addr,
            database_url,
            tls,
            gateway,
            router,
            registration,
            shutdown_grace,
            log_format: s.log_format.unwrap_or_default(),
            journal,
            backup_dir,
            sms,
            push,
            media,
        })
    }
}

/// The media storage and limits of `s`, checked.
fn media_config(
    s: &Settings,
    data_dir: &Path,
    name: &dyn Fn(&str) -> String,
    problems: &mut Vec<String>,
) -> MediaSetup {
    let defaults = parley_media::MediaConfig::default();
    let mib = 1024 * 1024;
    let mut at_least_1 = |key: &str, value: Option<u64>, default: u64| match value {
        Some(0) => {
            problems.push(format!("{}: must be at least 1", name(key)));
            default
        }
        value => value.unwrap_or(default),
    };
    let seconds = |secs: u64| Duration::from_secs(secs);
    let config = parley_media::MediaConfig {
        max_size: at_least_1("media_max_mib", s.media_max_mib, defaults.max_size / mib)
            .saturating_mul(mib),
        media_ttl: seconds(at_least_1(
            "media_ttl",
            s.media_ttl,
            defaults.media_ttl.as_secs(),
        )),
        upload_ttl: seconds(at_least_1(
            "media_upload_ttl",
            s.media_upload_ttl,
            defaults.upload_ttl.as_secs(),
        )),
        uploads_per_hour: u32::try_from(at_least_1(
            "media_uploads_per_hour",
            s.media_uploads_per_hour.map(u64::from),
            u64::from(defaults.uploads_per_hour),
        ))
        .unwrap_or(u32::MAX),
        bytes_per_day: at_least_1(
            "media_mib_per_day",
            s.media_mib_per_day,
            defaults.bytes_per_day / mib,
        )
        .saturating_mul(mib),
        concurrent_per_user: at_least_1(
            "media_uploads_per_user",
            s.media_uploads_per_user.map(|n| n as u64),
            defaults.concurrent_per_user as u64,
        ) as usize,
        concurrent: at_least_1(
            "media_uploads",
            s.media_uploads.map(|n| n as u64),
            defaults.concurrent as u64,
        ) as usize,
        sweep_every: seconds(at_least_1(
            "media_sweep_every",
            s.media_sweep_every,
            defaults.sweep_every.as_secs(),
        )),
    };
    let s3_keys = [
        ("media_s3_bucket", s.media_s3_bucket.is_some()),
        ("media_s3_prefix", s.media_s3_prefix.is_some()),
        ("media_s3_region", s.media_s3_region.is_some()),
        ("media_s3_endpoint_url", s.media_s3_endpoint_url.is_some()),
    ];
    let store = match s.media_store.unwrap_or_default() {
        MediaStoreKind::Local => {
            for (key, set) in s3_keys {
                if set {
                    problems.push(format!(
                        "{}: applies only with --media-store s3 (PARLEY_MEDIA_STORE=s3)",
                        name(key)
                    ));
                }
            }
            MediaStore::Local(
                s.media_dir
                    .clone()
                    .unwrap_or_else(|| data_dir.join("media")),
            )
        }
        MediaStoreKind::S3 => {
            if s.media_dir.is_some() {
                problems.push(format!(
                    "{}: applies only with --media-store local",
                    name("media_dir")
                ));
            }
            let bucket = s.media_s3_bucket.clone().unwrap_or_default();
            if bucket.is_empty() {
                problems.push(format!(
                    "{}: media in S3 need a bucket: set {}",
                    name("media_store"),
                    name("media_s3_bucket")
                ));
            }
            if let Some(url) = &s.media_s3_endpoint_url
                && !(url.starts_with("http://") || url.starts_with("https://"))
            {
                problems.push(format!(
                    "{}: must be an http:// or https:// URL, not {url:?}",
                    name("media_s3_endpoint_url")
                ));
            }
            MediaStore::S3(parley_media::S3Settings {
                bucket,
                prefix: s.media_s3_prefix.clone(),
                region: s.media_s3_region.clone(),
                endpoint_url: s.media_s3_endpoint_url.clone(),
            })
        }
    };
    MediaSetup { store, config }
}

/// The push service and policy of `s`, their settings checked.
fn push_config(
    s: &Settings,
    data_dir: &Path,
    name: &dyn Fn(&str) -> String,
    problems: &mut Vec<String>,
) -> PushSetup {
    let defaults = parley_push::PushConfig::default();
    let mut seconds = |key: &str, value: Option<u64>, default: Duration, min: u64| {
        let value = value.unwrap_or(default.as_secs());
        if value < min {
            problems.push(format!(
                "{}: must be at least {min} seconds, not {value}",
                name(key)
            ));
        }
        Duration::from_secs(value)
    };
    let window = seconds("push_window", s.push_window, defaults.window, 1);
    let delay = seconds("push_delay", s.push_delay, defaults.delay, 0);
    let timeout = seconds("push_timeout", s.push_timeout, defaults.timeout, 1);
    let mut count = |key: &str, value: Option<usize>, default: usize| match value {
        Some(0) => {
            problems.push(format!("{}: must be at least 1", name(key)));
            default
        }
        value => value.unwrap_or(default),
    };
    let policy = parley_push::PushConfig {
        window,
        delay,
        capacity: count("push_queue", s.push_queue, defaults.capacity),
        concurrency: count("push_concurrency", s.push_concurrency, defaults.concurrency),
        timeout,
    };
    let arns = [
        ("push_apns_arn", &s.push_apns_arn, "app/APNS/"),
        (
            "push_apns_sandbox_arn",
            &s.push_apns_sandbox_arn,
            "app/APNS_SANDBOX/",
        ),
        ("push_fcm_arn", &s.push_fcm_arn, "app/GCM/"),
    ];
    let provider = s.push.unwrap_or_default();
    let service = match provider {
        PushProvider::Off | PushProvider::Outbox => {
            for (key, value, _) in arns {
                if value.is_some() {
                    problems.push(format!(
                        "{}: applies only with --push sns (PARLEY_PUSH=sns)",
                        name(key)
                    ));
                }
            }
            if provider == PushProvider::Off {
                PushService::Off
            } else {
                PushService::Outbox(data_dir.join("outbox.jsonl"))
            }
        }
        PushProvider::Sns => {
            for (key, value, kind) in arns {
                if let Some(arn) = value
                    && !(arn.starts_with("arn:") && arn.contains(kind))
                {
                    problems.push(format!(
                        "{}: must be an SNS platform application ARN (arn:aws:sns:REGION:ACCOUNT:{kind}NAME), not {arn:?}",
                        name(key)
                    ));
                }
            }
            let apps = parley_sns::PushApps {
                apns: s.push_apns_arn.clone(),
                apns_sandbox: s.push_apns_sandbox_arn.clone(),
                fcm: s.push_fcm_arn.clone(),
            };
            if !apps.any() {
                problems.push(format!(
                    "{}: pushes through SNS need at least one platform application: set {}, {} or {}",
                    name("push"),
                    name("push_apns_arn"),
                    name("push_apns_sandbox_arn"),
                    name("push_fcm_arn")
                ));
            }
            PushService::Sns {
                settings: parley_sns::SnsSettings {
                    endpoint_url: s.sns_endpoint_url.clone(),
                },
                apps,
            }
        }
    };
    PushSetup { service, policy }
}

/// The SMS sender of `s`, its settings checked.
fn sms_config(
    s: &Settings,
    data_dir: &Path,
    name: &dyn Fn(&str) -> String,
    problems: &mut Vec<String>,
) -> SmsConfig {
    let provider = s.sms.unwrap_or_default();
    if provider == SmsProvider::Outbox {
        for key in ["sms_sender_id", "sms_origination_number"] {
            let set = match key {
                "sms_sender_id" => s.sms_sender_id.is_some(),
                _ => s.sms_origination_number.is_some(),
            };
            if set {
                problems.push(format!(
                    "{}: applies only with --sms sns (PARLEY_SMS=sns)",
                    name(key)
                ));
            }
        }
        if s.sns_endpoint_url.is_some() && s.push != Some(PushProvider::Sns) {
            problems.push(format!(
                "{}: applies only with --sms sns or --push sns",
                name("sns_endpoint_url")
            ));
        }
        return SmsConfig::Outbox(data_dir.join("outbox.jsonl"));
    }
    if let Some(id) = &s.sms_sender_id {
        let valid = (1..=11).contains(&id.len())
            && id.chars().all(|c| c.is_ascii_alphanumeric())
            && id.chars().any(|c| c.is_ascii_alphabetic());
        if !valid {
            problems.push(format!(
                "{}: must be 1 to 11 letters and digits with at least one letter, not {id:?}",
                name("sms_sender_id")
            ));
        }
    }
    if let Some(number) = &s.sms_origination_number
        && !parley_registration::phone::is_e164(number)
    {
        problems.push(format!(
            "{}: must be a phone number in E.164 (+ and digits), not {number:?}",
            name("sms_origination_number")
        ));
    }
    SmsConfig::Sns {
        settings: parley_sns::SnsSettings {
            endpoint_url: s.sns_endpoint_url.clone(),
        },
        options: parley_sns::SmsOptions {
            sender_id: s.sms_sender_id.clone(),
            origination_number: s.sms_origination_number.clone(),
        },
    }
}

/// Where each set key came from, so a problem names it as the operator
/// wrote it.
#[derive(Debug, Default)]
struct Sources {
    flags: BTreeSet<String>,
    env: BTreeSet<String>,
    /// The file and the keys it set.
    file: Option<(PathBuf, BTreeSet<String>)>,
}

impl Sources {
    /// `--idle-timeout`, `PARLEY_IDLE_TIMEOUT`, `idle_timeout in FILE`, or
    /// the bare key for a default.
    fn name(&self, key: &str) -> String {
        if self.flags.contains(key) {
            format!("--{}", key.replace('_', "-"))
        } else if self.env.contains(key) {
            env_var(key)
        } else if let Some((path, keys)) = &self.file
            && keys.contains(key)
        {
            format!("{key} in {}", path.display())
        } else {
            key.to_owned()
        }
    }
}

/// The environment variable of a setting.
fn env_var(key: &str) -> String {
    format!("PARLEY_{}", key.to_ascii_uppercase())
}

impl Cli {
    /// Parses the command line (only: the environment is read by
    /// [`Config::resolve`]). A bad flag, `--help` and `--version` end the
    /// process here, as clap does (exit 2 for an error).
    pub fn parse_args() -> Cli {
        let matches = command().get_matches();
        Cli::from_arg_matches(&matches).unwrap_or_else(|err| err.exit())
    }

    /// [`Cli::parse_args`] on given arguments, for tests.
    pub fn try_parse_args<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        Cli::from_arg_matches(&command().try_get_matches_from(args)?)
    }
}

/// The command line parser: [`Cli`]'s, with the environment variables
/// shown in the help but not read by clap (which would report a bad
/// variable as a bad flag, and stop at the first).
pub fn command() -> clap::Command {
    Cli::command().mut_args(|arg| {
        let Some(var) = arg.get_env().map(|v| v.to_string_lossy().into_owned()) else {
            return arg;
        };
        let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
        let long = arg
            .get_long_help()
            .map_or_else(|| help.clone(), ToString::to_string);
        arg.env(None)
            .help(format!("{help} [env: {var}]"))
            .long_help(format!("{long}\n[env: {var}]"))
    })
}

/// The settings (and `--config` file) given by `PARLEY_*` variables.
/// Each variable is parsed on its own with its flag's parser, so every bad
/// one becomes a problem naming the variable; the good ones are kept.
fn env_layer(
    env: &dyn Fn(&str) -> Option<OsString>,
    problems: &mut Vec<String>,
) -> (Option<PathBuf>, Settings) {
    let parser = command();
    let mut argv: Vec<OsString> = vec!["parley".into()];
    for arg in Cli::command().get_arguments() {
        let (Some(var), Some(long)) = (arg.get_env(), arg.get_long()) else {
            continue;
        };
        let var = var.to_string_lossy();
        let Some(value) = env(&var).filter(|value| !value.is_empty()) else {
            continue;
        };
        let mut flag = OsString::from(format!("--{long}="));
        flag.push(&value);
        match parser
            .clone()
            .try_get_matches_from(["parley".into(), flag.clone()])
        {
            Ok(_) => argv.push(flag),
            Err(err) => {
                let detail = clap_detail(&err);
                let expected = match arg.get_value_names().and_then(|names| names.first()) {
                    Some(name) if !detail.starts_with("expected") => format!(" (expected {name})"),
                    _ => String::new(),
                };
                problems.push(format!(
                    "{var}={:?}: {detail}{expected}",
                    value.to_string_lossy()
                ));
            }
        }
    }
    match parser
        .try_get_matches_from(argv)
        .and_then(|matches| Cli::from_arg_matches(&matches))
    {
        Ok(cli) => (cli.config, cli.settings),
        Err(err) => {
            // Each variable parsed alone; together they can only clash.
            problems.push(format!("environment: {}", clap_detail(&err)));
            (None, Settings::default())
        }
    }
}

/// What was wrong with a value, without clap's framing (which names the
/// flag and suggests `--help`).
fn clap_detail(err: &clap::Error) -> String {
    if let Some(source) = std::error::Error::source(err) {
        return source.to_string();
    }
    if let Some(ContextValue::Strings(valid)) = err.get(ContextKind::ValidValue) {
        return format!("expected one of: {}", valid.join(", "));
    }
    let rendered = err.to_string();
    let first = rendered.lines().next().unwrap_or_default();
    first.strip_prefix("error: ").unwrap_or(first).to_owned()
}

/// The settings in the TOML file at `path`. A syntax error is one problem;
/// otherwise each key is read on its own, so every unknown key and every
/// bad value is a problem naming the file and the key, and the good keys
/// are kept.
fn read_file(path: &Path, problems: &mut Vec<String>) -> Settings {
    let shown = path.display();
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) => {
            problems.push(format!("cannot read the configuration file {shown}: {err}"));
            return Settings::default();
        }
    };
    let table: toml::Table = match text.parse() {
        Ok(table) => table,
        Err(err) => {
            let detail = err.to_string().trim_end().replace('\n', "\n    ");
            problems.push(format!("{shown} is not valid TOML: {detail}"));
            return Settings::default();
        }
    };
    let known: Vec<String> = Cli::command()
        .get_arguments()
        .filter(|arg| arg.get_env().is_some() && arg.get_id() != "config")
        .map(|arg| arg.get_id().to_string())
        .collect();
    let mut settings = Settings::default();
    for (key, value) in table {
        if !known.contains(&key) {
            let hint = closest(&key, &known)
                .map(|near| format!(" (did you mean `{near}`?)"))
                .unwrap_or_default();
            problems.push(format!("{shown}: unknown setting `{key}`{hint}"));
            continue;
        }
        let mut one = toml::Table::new();
        one.insert(key.clone(), value);
        match toml::Value::Table(one).try_into::<Settings>() {
            Ok(one) => settings = settings.over(one),
            Err(err) => problems.push(format!("{key} in {shown}: {}", err.message())),
        }
    }
    settings
}

/// The known key nearest to `key`, if it is a likely typo.
fn closest<'a>(key: &str, known: &'a [String]) -> Option<&'a str> {
    known
        .iter()
        .map(|candidate| (edit_distance(key, candidate), candidate))
        .filter(|(distance, _)| *distance <= 2)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate.as_str())
}

/// Levenshtein distance, for typo hints.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous[j] + usize::from(ca != *cb);
            current.push(substitute.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

/// A listen address: `IP:PORT`, or `HOST:PORT` with a name this machine
/// resolves (`localhost:5443` is 127.0.0.1:5443).
pub fn parse_listen_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!(
            "{text:?} is not HOST:PORT: give an address and a port, e.g. 127.0.0.1:5443"
        ));
    };
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{port:?} is not a port number (0 to 65535)"))?;
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    let resolved: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|_| {
            format!("cannot resolve {host:?}: use an IP address, e.g. 127.0.0.1:{port} or 0.0.0.0:{port}")
        })?
        .collect();
    // IPv4 first: a name that resolves to both is most often meant as the
    // address everything can reach.
    resolved
        .iter()
        .find(|addr| addr.is_ipv4())
        .or_else(|| resolved.first())
        .copied()
        .ok_or_else(|| format!("{host:?} resolves to no address: use an IP address"))
}

/// serde's side of [`parse_listen_addr`], for the file.
fn listen_addr<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_listen_addr(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
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
    fn device_settings() {
        let config = Config::from_settings(Settings::default()).expect("defaults");
        assert_eq!(config.registration.max_devices, 5);
        assert_eq!(config.registration.link_code_ttl, Duration::from_secs(600));
        assert_eq!(
            config.registration.inactive_after,
            Duration::from_secs(30 * 24 * 3600)
        );
        let config = resolve(
            &["--max-devices", "2", "--link-code-ttl", "60"],
            &[("PARLEY_INACTIVE_DEVICE_DAYS", "7")],
        )
        .expect("valid");
        assert_eq!(config.registration.max_devices, 2);
        assert_eq!(config.registration.link_code_ttl, Duration::from_secs(60));
        assert_eq!(
            config.registration.inactive_after,
            Duration::from_secs(7 * 24 * 3600)
        );
        let found = problems(resolve(
            &["--max-devices", "0", "--link-code-ttl", "1"],
            &[
                ("PARLEY_INACTIVE_DEVICE_DAYS", "0"),
                ("PARLEY_LINKS_PER_IP_BURST", "0"),
            ],
        ));
        assert_eq!(
            found,
            [
                "--link-code-ttl: must be at least 10 seconds, not 1".to_owned(),
                "--max-devices: must be at least 1 (the primary device)".to_owned(),
                "PARLEY_LINKS_PER_IP_BURST: must be at least 1".to_owned(),
                "PARLEY_INACTIVE_DEVICE_DAYS: must be at least 1".to_owned(),
            ]
        );
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        assert!(toml::from_str::<Settings>("gateway_adr = \"x\"").is_err());
    }

    /// `resolve` with these flags and this environment.
    fn resolve(args: &[&str], env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let cli = Cli::try_parse_args(std::iter::once("parley").chain(args.iter().copied()))
            .expect("flags parse");
        let env: std::collections::HashMap<String, OsString> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), OsString::from(v)))
            .collect();
        Config::resolve(cli, &|name| env.get(name).cloned())
    }

    fn problems(result: Result<Config, ConfigError>) -> Vec<String> {
        result.expect_err("invalid").0
    }

    #[test]
    fn every_setting_has_the_variable_and_flag_its_key_names() {
        for arg in Cli::command().get_arguments() {
            let id = arg.get_id().as_str();
            let Some(var) = arg.get_env() else { continue };
            assert_eq!(var.to_string_lossy(), env_var(id), "{id}");
            assert_eq!(arg.get_long(), Some(id.replace('_', "-").as_str()));
        }
    }

    #[test]
    fn bad_variables_are_named_as_variables_and_all_reported() {
        let found = problems(resolve(
            &[],
            &[
                ("PARLEY_IDLE_TIMEOUT", "soon"),
                ("PARLEY_GATEWAY_ADDR", "nowhere"),
                ("PARLEY_LOG_FORMAT", "xml"),
                ("PARLEY_DELIVERY_WINDOW", "0"),
            ],
        ));
        assert_eq!(found.len(), 4, "{found:#?}");
        assert!(
            found[0].starts_with("PARLEY_GATEWAY_ADDR=\"nowhere\": "),
            "{found:#?}"
        );
        assert!(
            found
                .iter()
                .any(|p| p.starts_with("PARLEY_IDLE_TIMEOUT=\"soon\": ")
                    && p.ends_with("(expected SECS)")),
            "{found:#?}"
        );
        assert!(
            found
                .iter()
                .any(|p| p.starts_with("PARLEY_LOG_FORMAT=\"xml\": expected one of: human, json"))
        );
        assert!(found.contains(&"PARLEY_DELIVERY_WINDOW: must be at least 1".to_owned()));
        assert!(found.iter().all(|p| !p.contains("--")), "{found:#?}");
    }

    #[test]
    fn flags_beat_variables_beat_the_file_and_problems_name_their_source() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("parley.toml");
        std::fs::write(
            &file,
            "idle_timeout = 1\nwrite_timeout = 7\ndelivery_window = 3\n",
        )
        .expect("write");
        let file_arg = file.to_string_lossy().into_owned();
        let found = problems(resolve(
            &["--config", &file_arg, "--delivery-window", "0"],
            &[("PARLEY_WRITE_TIMEOUT", "0")],
        ));
        assert_eq!(
            found,
            [
                format!(
                    "idle_timeout in {}: must be at least 5 seconds, not 1",
                    file.display()
                ),
                "PARLEY_WRITE_TIMEOUT: must be at least 1 seconds, not 0".to_owned(),
                "--delivery-window: must be at least 1".to_owned(),
            ]
        );
        let config = resolve(
            &["--config", &file_arg, "--idle-timeout", "60"],
            &[("PARLEY_WRITE_TIMEOUT", "9")],
        )
        .expect("valid");
        assert_eq!(config.gateway.idle_timeout, Duration::from_secs(60));
        assert_eq!(config.gateway.write_timeout, Duration::from_secs(9));
        assert_eq!(config.router.window, 3);
    }

    #[test]
    fn the_file_is_read_key_by_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("parley.toml");
        let file_arg = file.to_string_lossy().into_owned();
        std::fs::write(
            &file,
            "gateway_adr = \"0.0.0.0:5443\"\nidle_timeout = \"90\"\nhttp_addr = \"localhost:1\"\n",
        )
        .expect("write");
        let found = problems(resolve(
            &["--config", &file_arg],
            &[("PARLEY_CONFIG", "/nope")],
        ));
        assert_eq!(found.len(), 2, "{found:#?}");
        assert!(found[0].contains("unknown setting `gateway_adr` (did you mean `gateway_addr`?)"));
        assert!(found[1].starts_with(&format!("idle_timeout in {}: ", file.display())));
        // PARLEY_CONFIG names the file when the flag does not.
        std::fs::write(&file, "idle_timeout = [\n").expect("write");
        let found = problems(resolve(&[], &[("PARLEY_CONFIG", &file_arg)]));
        assert_eq!(found.len(), 1);
        assert!(
            found[0].contains("is not valid TOML") && found[0].contains("line"),
            "{found:#?}"
        );
    }

    #[test]
    fn tls_files_are_checked_at_start_and_each_blames_its_own_setting() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = crate::tls::files(
            &TlsSource::SelfSigned {
                extra_names: Vec::new(),
            },
            dir.path(),
        )
        .expect("generated");
        let (cert, key) = (
            files.cert.to_string_lossy().into_owned(),
            files.key.to_string_lossy().into_owned(),
        );
        let found = problems(resolve(&["--tls-cert", &cert, "--tls-key", &cert], &[]));
        assert_eq!(found.len(), 1, "{found:#?}");
        assert!(
            found[0].starts_with("--tls-key: ") && found[0].contains("not a private key"),
            "{found:#?}"
        );
        let found = problems(resolve(&["--tls-key", &key], &[("PARLEY_TLS_CERT", &key)]));
        assert!(found[0].starts_with("PARLEY_TLS_CERT: "), "{found:#?}");
        let found = problems(resolve(&["--tls-cert", &cert], &[]));
        assert!(found[0].contains("without tls_key"), "{found:#?}");
        resolve(&["--tls-cert", &cert, "--tls-key", &key], &[]).expect("a good pair");
    }

    #[test]
    fn listen_addresses_take_ips_and_names() {
        assert_eq!(
            parse_listen_addr("localhost:5443"),
            Ok(SocketAddr::from(([127, 0, 0, 1], 5443)))
        );
        assert_eq!(parse_listen_addr("[::1]:1").map(|a| a.is_ipv6()), Ok(true));
        assert!(
            parse_listen_addr("5443")
                .expect_err("no host")
                .contains("HOST:PORT")
        );
        assert!(parse_listen_addr("localhost:99999").is_err());
        let config = resolve(&["--gateway-addr", "localhost:5443"], &[]).expect("valid");
        assert_eq!(config.gateway_addr.to_string(), "127.0.0.1:5443");
        let found = problems(resolve(&["--http-addr", "127.0.0.1:5443"], &[]));
        assert!(found[0].contains("are the same address"), "{found:#?}");
    }
}
