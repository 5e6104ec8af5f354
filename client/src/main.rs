//! `parley-cli`: a command-line phone for Parley.
//!
//! Parses flags, sets up tracing, and runs one command through the
//! `parley_client` library. Output lines on stdout are stable and meant to be
//! grepped (the README tour and the end-to-end tests read them); errors go to
//! stderr as one short line, with exit code 1.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::{Parser, Subcommand, ValueEnum};
use parley_client::profile::{DEFAULT_PROFILE, Profile, ProfileDir, SeenIds};
use parley_client::proto::close;
use parley_client::proto::limits::MAX_BODY_BYTES;
use parley_client::proto::v1::{
    CloseReason, Deliver, ErrorCode, Receipt, ReceiptKind, ServerFrame, server_frame,
};
use parley_client::{
    ClientError, DEFAULT_HTTP, DEFAULT_WS, Registration, Session, tls_config_from_file,
};
use tokio::time::{Instant, sleep_until};
use tracing::warn;

const DEFAULT_CA: &str = "./parley-data/tls/cert.pem";

#[derive(Debug, Parser)]
#[command(
    name = "parley-cli",
    version,
    about = "A command-line phone for Parley"
)]
struct Cli {
    /// Registration API base URL [default: the profile's, else https://127.0.0.1:8443]
    #[arg(long, env = "PARLEY_HTTP", global = true, value_name = "URL")]
    http: Option<String>,
    /// Gateway WebSocket URL [default: the profile's, else wss://127.0.0.1:5443/v1/ws]
    #[arg(long, env = "PARLEY_WS", global = true, value_name = "URL")]
    ws: Option<String>,
    /// PEM file of the certificate(s) to trust, e.g. DATA_DIR/tls/cert.pem
    /// [default: the profile's, else ./parley-data/tls/cert.pem]
    #[arg(long, env = "PARLEY_CA", global = true, value_name = "PATH")]
    ca: Option<PathBuf>,
    /// Folder holding this device's profile [default: ~/.config/parley/profiles/default]
    #[arg(long, env = "PARLEY_PROFILE", global = true, value_name = "DIR")]
    profile: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Register this phone number as a new device; prints `registered <user_id>`.
    ///
    /// Without --code, asks the server to text a code and reads it from
    /// stdin. With --code, only verifies that code (you already requested
    /// it). Registering again revokes the number's previous device.
    Register {
        /// E.164 phone number, e.g. +15551234567
        phone: String,
        /// The code you already received: skip the request, just verify
        #[arg(long)]
        code: Option<String>,
    },
    /// Print `user_id`, `device_id` and `phone` lines for this profile.
    Whoami,
    /// Print `<phone> <user_id>` for each given number that is registered.
    Lookup {
        #[arg(required = true, value_name = "PHONE")]
        phones: Vec<String>,
    },
    /// Send a text; prints `✓ sent <message_id>` once the server has stored it.
    ///
    /// With --wait, stays connected and prints receipts
    /// (`✓✓ delivered <ids> by <user>`, `✓✓ read <ids> by <user>`), acking
    /// them, until the wanted one for this message arrives. Messages that
    /// arrive meanwhile are left queued for `listen`.
    Send {
        /// Recipient user id (see `lookup`)
        user_id: u64,
        /// The message, sent as UTF-8
        text: String,
        /// Also wait for this receipt of the message
        #[arg(long, value_enum)]
        wait: Option<WaitFor>,
        /// Give up (exit 1) after this many seconds
        #[arg(long, default_value_t = 30, value_name = "SECS")]
        timeout: u64,
    },
    /// Print incoming messages as `<from_user> <message_id> <text>` and
    /// receipts as `✓✓ delivered|read <ids> by <user>`, acknowledging each.
    ///
    /// Runs until Ctrl-C (clean close, exit 0) or until the server closes the
    /// session (exit 1). Control characters in texts are escaped so each
    /// message is one line.
    Listen {
        /// Also send a read receipt for every message shown
        #[arg(long)]
        read: bool,
        /// Exit 0 once the messages queued while offline have all arrived
        #[arg(long)]
        exit_on_empty: bool,
        /// Stop after this many seconds (exit 0; exit 1 if --exit-on-empty
        /// was given and the queue had not been drained yet)
        #[arg(long, value_name = "SECS")]
        timeout: Option<u64>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum WaitFor {
    Delivered,
    Read,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let dir = match cli.profile.clone() {
        Some(dir) => ProfileDir::new(dir),
        None => ProfileDir::named(DEFAULT_PROFILE)?,
    };
    match cli.command {
        Command::Register {
            ref phone,
            ref code,
        } => register(&cli, &dir, phone, code.as_deref()).await,
        Command::Whoami => {
            let profile = dir.load()?;
            println!("user_id {}", profile.user_id);
            println!("device_id {}", profile.device_id);
            println!("phone {}", profile.phone);
            Ok(())
        }
        Command::Lookup { ref phones } => {
            let profile = dir.load()?;
            let endpoints = Resolved::new(&cli, Some(&profile));
            let registration = Registration::new(&endpoints.http, endpoints.tls()?)?;
            let contacts = registration
                .lookup(&profile.token, phones)
                .await
                .map_err(explain)?;
            for contact in contacts {
                println!("{} {}", contact.phone, contact.user_id);
            }
            Ok(())
        }
        Command::Send {
            user_id,
            ref text,
            wait,
            timeout,
        } => {
            send(
                &cli,
                &dir,
                user_id,
                text,
                wait,
                Duration::from_secs(timeout),
            )
            .await
        }
        Command::Listen {
            read,
            exit_on_empty,
            timeout,
        } => {
            let options = ListenOptions {
                read,
                exit_on_empty,
                timeout: timeout.map(Duration::from_secs),
            };
            listen(&cli, &dir, options).await
        }
    }
}

/// Endpoints and CA for one run: flags and environment first, then the
/// profile (so a registered device keeps talking to its server), then the
/// laptop defaults.
struct Resolved {
    http: String,
    ws: String,
    ca: PathBuf,
}

impl Resolved {
    fn new(cli: &Cli, profile: Option<&Profile>) -> Self {
        Self {
            http: cli
                .http
                .clone()
                .or_else(|| profile.map(|p| p.http.clone()))
                .unwrap_or_else(|| DEFAULT_HTTP.to_string()),
            ws: cli
                .ws
                .clone()
                .or_else(|| profile.map(|p| p.ws.clone()))
                .unwrap_or_else(|| DEFAULT_WS.to_string()),
            ca: cli
                .ca
                .clone()
                .or_else(|| profile.map(|p| p.ca.clone()))
                .unwrap_or_else(|| PathBuf::from(DEFAULT_CA)),
        }
    }

    fn tls(&self) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        Ok(tls_config_from_file(&self.ca)?)
    }

    async fn connect(&self, profile: &Profile) -> anyhow::Result<Session> {
        Session::connect(&self.ws, self.tls()?, &profile.token)
            .await
            .map_err(explain)
            .with_context(|| format!("connecting to {}", self.ws))
    }
}

async fn register(
    cli: &Cli,
    dir: &ProfileDir,
    phone: &str,
    code: Option<&str>,
) -> anyhow::Result<()> {
    let endpoints = Resolved::new(cli, None);
    let registration = Registration::new(&endpoints.http, endpoints.tls()?)?;
    let code = match code {
        Some(code) => code.to_string(),
        None => {
            let requested = registration.request_code(phone).await.map_err(explain)?;
            eprintln!(
                "a code is on its way by SMS; it expires in {} s",
                requested.expires_in
            );
            eprint!("code: ");
            read_code().await?
        }
    };
    let credential = registration.verify(phone, &code).await.map_err(explain)?;
    let ca = std::path::absolute(&endpoints.ca)
        .with_context(|| format!("cannot resolve {}", endpoints.ca.display()))?;
    dir.save(&Profile {
        http: endpoints.http,
        ws: endpoints.ws,
        ca,
        phone: phone.to_string(),
        user_id: credential.user_id,
        device_id: credential.device_id,
        token: credential.token,
        // A new device: its client_msg_id space starts afresh.
        next_client_msg_id: 1,
    })?;
    println!("registered {}", credential.user_id);
    Ok(())
}

/// One line from stdin, trimmed. Blocking stdin runs off the async workers.
async fn read_code() -> anyhow::Result<String> {
    let line = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map(|_| line)
    })
    .await
    .context("reading the code")?
    .context("reading the code from stdin")?;
    let code = line.trim().to_string();
    if code.is_empty() {
        bail!("no code entered");
    }
    Ok(code)
}

async fn send(
    cli: &Cli,
    dir: &ProfileDir,
    to_user: u64,
    text: &str,
    wait: Option<WaitFor>,
    timeout: Duration,
) -> anyhow::Result<()> {
    if text.len() > MAX_BODY_BYTES {
        bail!(
            "text is {} bytes; the limit is {MAX_BODY_BYTES}",
            text.len()
        );
    }
    let profile = dir.load()?;
    let endpoints = Resolved::new(cli, Some(&profile));
    let mut session = endpoints.connect(&profile).await?;
    // Reserved (and saved) before the send: if this run dies after sending,
    // the next run must not reuse the id, or the server would answer it with
    // this message's ack and drop the new one.
    let client_msg_id = dir.take_client_msg_id()?;
    let deadline = Instant::now() + timeout;
    session
        .send(client_msg_id, to_user, text.as_bytes().to_vec())
        .await?;

    let mut seen = if wait.is_some() {
        load_seen(dir)
    } else {
        SeenIds::default()
    };
    let mut message_id = None;
    // Message ids with a DELIVERED / READ receipt so far; a receipt could in
    // principle overtake our ServerAck, so they are collected before we know
    // our id.
    let mut delivered = HashSet::new();
    let mut read = HashSet::new();
    let mut last_notice = None;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let frame = match session.next_frame_timeout(remaining).await {
            Ok(frame) => frame,
            Err(ClientError::Timeout) => {
                let _ = session.close().await;
                bail!(
                    "timed out after {} s waiting for {}",
                    timeout.as_secs(),
                    match (message_id, wait) {
                        (None, _) => "the server's ack",
                        (Some(_), Some(WaitFor::Read)) => "the read receipt",
                        (Some(_), _) => "the delivered receipt",
                    }
                );
            }
            Err(ClientError::Closed { code, reason }) => {
                bail!(describe_close(code, &reason, last_notice.as_ref()))
            }
            Err(e) => return Err(e.into()),
        };
        match frame.frame {
            Some(server_frame::Frame::Ack(ack)) if ack.client_msg_id == client_msg_id => {
                println!("✓ sent {}", ack.message_id);
                message_id = Some(ack.message_id);
            }
            Some(server_frame::Frame::SendError(e)) if e.client_msg_id == client_msg_id => {
                let _ = session.close().await;
                let code = ErrorCode::try_from(e.code)
                    .map(|c| c.as_str_name())
                    .unwrap_or("UNKNOWN");
                let retry = if e.retry_after_ms > 0 {
                    format!(" (retry after {} ms)", e.retry_after_ms)
                } else {
                    String::new()
                };
                bail!("send failed: {code}: {}{retry}", e.reason);
            }
            // Without --wait, receipts stay queued for `listen`.
            Some(server_frame::Frame::Receipt(receipt)) if wait.is_some() => {
                let ids = receipt.message_ids.clone();
                match ReceiptKind::try_from(receipt.kind) {
                    Ok(ReceiptKind::Delivered) => delivered.extend(ids),
                    // Read implies delivered.
                    Ok(ReceiptKind::Read) => {
                        delivered.extend(ids.iter().copied());
                        read.extend(ids);
                    }
                    _ => {}
                }
                show_receipt(&mut session, &mut seen, dir, &receipt).await?;
            }
            Some(server_frame::Frame::Closing(c)) => last_notice = Some(Notice::Closing(c.reason)),
            Some(server_frame::Frame::Error(e)) => {
                last_notice = Some(Notice::Error(e.code, e.reason));
            }
            // Deliveries are left unacknowledged: `listen` shows them.
            _ => {}
        }
        let done = match (message_id, wait) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(id), Some(WaitFor::Delivered)) => delivered.contains(&id),
            (Some(id), Some(WaitFor::Read)) => read.contains(&id),
        };
        if done {
            close_quietly(session).await;
            return Ok(());
        }
    }
}

struct ListenOptions {
    read: bool,
    exit_on_empty: bool,
    timeout: Option<Duration>,
}

async fn listen(cli: &Cli, dir: &ProfileDir, options: ListenOptions) -> anyhow::Result<()> {
    let profile = dir.load()?;
    let endpoints = Resolved::new(cli, Some(&profile));
    let mut session = endpoints.connect(&profile).await?;
    let mut seen = load_seen(dir);
    let deadline = options.timeout.map(|t| Instant::now() + t);
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let mut last_notice = None;
    loop {
        // `next_frame` is cancel-safe, so losing this race to a signal or
        // the deadline drops no frame; it also sends the keepalive pings.
        let frame = tokio::select! {
            () = &mut shutdown => {
                close_quietly(session).await;
                return Ok(());
            }
            () = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                close_quietly(session).await;
                if options.exit_on_empty {
                    bail!("timed out before all queued messages arrived");
                }
                return Ok(());
            }
            frame = session.next_frame() => frame,
        };
        let frame: ServerFrame = match frame {
            Ok(frame) => frame,
            Err(ClientError::Closed { code, reason }) => {
                bail!(describe_close(code, &reason, last_notice.as_ref()))
            }
            Err(e) => return Err(e.into()),
        };
        match frame.frame {
            Some(server_frame::Frame::Deliver(deliver)) => {
                show_delivery(&mut session, &mut seen, dir, &deliver, options.read).await?;
            }
            Some(server_frame::Frame::Receipt(receipt)) => {
                show_receipt(&mut session, &mut seen, dir, &receipt).await?;
            }
            Some(server_frame::Frame::QueueEmpty(_)) if options.exit_on_empty => {
                close_quietly(session).await;
                return Ok(());
            }
            Some(server_frame::Frame::Closing(c)) => last_notice = Some(Notice::Closing(c.reason)),
            Some(server_frame::Frame::Error(e)) => {
                last_notice = Some(Notice::Error(e.code, e.reason));
            }
            // QueueEmpty without --exit-on-empty changes nothing; acks and
            // send errors answer sends, and `listen` makes none.
            _ => {}
        }
    }
}

/// Shows a delivered message once, then acknowledges it.
///
/// The order matters: shown, then remembered as seen, then acked. If this
/// process dies before the ack, the server redelivers and `seen.json` stops
/// it being shown twice; the ack is re-sent for redeliveries because the
/// first one evidently did not arrive.
async fn show_delivery(
    session: &mut Session,
    seen: &mut SeenIds,
    dir: &ProfileDir,
    deliver: &Deliver,
    read: bool,
) -> anyhow::Result<()> {
    let first_time = seen.insert_message(deliver.message_id);
    if first_time {
        println!("{}", delivery_line(deliver));
        save_seen(dir, seen);
    }
    session.ack_delivery(vec![deliver.message_id]).await?;
    if read && first_time {
        session
            .mark_read(deliver.from_user, vec![deliver.message_id])
            .await?;
    }
    Ok(())
}

/// Shows a receipt once (de-duplicated by receipt id), then acknowledges it.
async fn show_receipt(
    session: &mut Session,
    seen: &mut SeenIds,
    dir: &ProfileDir,
    receipt: &Receipt,
) -> anyhow::Result<()> {
    if seen.insert_receipt(receipt.receipt_id) {
        println!("{}", receipt_line(receipt));
        save_seen(dir, seen);
    }
    session.ack_receipts(vec![receipt.receipt_id]).await?;
    Ok(())
}

/// `<from_user> <message_id> <text>`, the text on one line.
fn delivery_line(deliver: &Deliver) -> String {
    format!(
        "{} {} {}",
        deliver.from_user,
        deliver.message_id,
        printable(&deliver.body)
    )
}

/// `✓✓ delivered <id>,<id> by <user>` or `✓✓ read <id>,<id> by <user>`.
fn receipt_line(receipt: &Receipt) -> String {
    let kind = match ReceiptKind::try_from(receipt.kind) {
        Ok(ReceiptKind::Delivered) => "delivered",
        Ok(ReceiptKind::Read) => "read",
        _ => "receipt",
    };
    let ids: Vec<String> = receipt.message_ids.iter().map(u64::to_string).collect();
    format!("✓✓ {kind} {} by {}", ids.join(","), receipt.from_user)
}

/// The body as UTF-8 (lossy) with control characters escaped, so a message
/// can never break the one-line-per-message output.
fn printable(body: &[u8]) -> String {
    let mut out = String::with_capacity(body.len());
    for c in String::from_utf8_lossy(body).chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// What the server said just before closing.
#[derive(Debug)]
enum Notice {
    Closing(i32),
    Error(i32, String),
}

/// A short human message for a session the server closed.
fn describe_close(code: u16, reason: &str, notice: Option<&Notice>) -> String {
    let closing = match notice {
        Some(Notice::Closing(r)) => CloseReason::try_from(*r).ok(),
        _ => None,
    };
    if code == close::REVOKED || closing == Some(CloseReason::Revoked) {
        return "credential revoked: this number was registered again; \
                register again with `parley-cli register <phone>`"
            .into();
    }
    if code == close::DISPLACED || closing == Some(CloseReason::Displaced) {
        return "session displaced: another session of this device connected".into();
    }
    if let Some(Notice::Error(code, detail)) = notice {
        let name = ErrorCode::try_from(*code)
            .map(|c| c.as_str_name())
            .unwrap_or("UNKNOWN");
        return format!("server error {name}: {detail}");
    }
    let why = match code {
        close::GOING_AWAY => "the server is shutting down; try again shortly",
        close::IDLE_TIMEOUT => "closed for inactivity",
        close::SLOW_CONSUMER => "closed: this client read too slowly",
        1006 => "connection lost",
        _ => "session closed by the server",
    };
    if reason.is_empty() {
        format!("{why} (code {code})")
    } else {
        format!("{why} (code {code}: {reason})")
    }
}

/// Adds the one hint a user needs to the errors that have one.
fn explain(e: ClientError) -> anyhow::Error {
    match e {
        ClientError::Rejected { status: 401, .. } => anyhow!(
            "the server refused this device's credential (HTTP 401): it expired or was revoked; \
             register again with `parley-cli register <phone>`"
        ),
        other => other.into(),
    }
}

/// Clean close for a finished command; a server that does not answer the
/// close in time changes nothing for the user.
async fn close_quietly(session: Session) {
    if let Err(e) = session.close().await {
        warn!(error = %e, "closing the session");
    }
}

/// The seen-ids store; a damaged one is replaced rather than blocking
/// `listen` (at worst a redelivered message is shown again).
fn load_seen(dir: &ProfileDir) -> SeenIds {
    dir.load_seen().unwrap_or_else(|e| {
        warn!(error = %e, "starting with an empty seen-ids store");
        SeenIds::default()
    })
}

fn save_seen(dir: &ProfileDir, seen: &SeenIds) {
    if let Err(e) = dir.save_seen(seen) {
        warn!(error = %e, "cannot save seen ids; a redelivery may be shown twice");
    }
}

/// Resolves on Ctrl-C, or SIGTERM on Unix.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                warn!(error = %e, "cannot watch SIGTERM");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "parley-cli",
            "send",
            "42",
            "hello there",
            "--wait",
            "read",
            "--timeout",
            "5",
            "--profile",
            "/tmp/p",
        ])
        .expect("parses");
        assert_eq!(cli.profile, Some(PathBuf::from("/tmp/p")));
        assert!(matches!(
            cli.command,
            Command::Send {
                user_id: 42,
                wait: Some(WaitFor::Read),
                timeout: 5,
                ..
            }
        ));
        assert!(Cli::try_parse_from(["parley-cli", "lookup"]).is_err());
    }

    #[test]
    fn delivery_lines_are_one_line() {
        let deliver = Deliver {
            message_id: 9,
            from_user: 42,
            timestamp_ms: 0,
            body: bytes::Bytes::from_static(b"hi\nthere\x1b[31m \xff"),
        };
        assert_eq!(
            delivery_line(&deliver),
            "42 9 hi\\nthere\\u{1b}[31m \u{fffd}"
        );
    }

    #[test]
    fn receipt_lines() {
        let receipt = Receipt {
            receipt_id: 1,
            kind: ReceiptKind::Read as i32,
            from_user: 7,
            message_ids: vec![3, 4],
            timestamp_ms: 0,
        };
        assert_eq!(receipt_line(&receipt), "✓✓ read 3,4 by 7");
        let receipt = Receipt {
            kind: ReceiptKind::Delivered as i32,
            message_ids: vec![5],
            ..receipt
        };
        assert_eq!(receipt_line(&receipt), "✓✓ delivered 5 by 7");
    }

    #[test]
    fn close_messages() {
        let revoked = describe_close(close::REVOKED, "", None);
        assert!(revoked.contains("register again"), "{revoked}");
        let displaced = describe_close(
            close::DISPLACED,
            "",
            Some(&Notice::Closing(CloseReason::Displaced as i32)),
        );
        assert!(displaced.contains("displaced"), "{displaced}");
        let error = describe_close(
            1007,
            "",
            Some(&Notice::Error(
                ErrorCode::MalformedFrame as i32,
                "bad".into(),
            )),
        );
        assert_eq!(error, "server error MALFORMED_FRAME: bad");
        assert_eq!(
            describe_close(1001, "bye", None),
            "the server is shutting down; try again shortly (code 1001: bye)"
        );
    }
}
