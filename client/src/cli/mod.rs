//! `parley-cli`, the command-line phone: its flags and commands.
//!
//! The commands live in the library so that they can be unit tested; the
//! binary (`src/main.rs`) only parses the flags, sets up tracing and calls
//! [`run`]. `docs/cli.md` is the user's reference.
//!
//! The output contract: stable lines on stdout (`registered <id>`,
//! `✓ sent <id>`, `✓✓ delivered <ids> by <user>/<device>`,
//! `<from_user>/<from_device> <message_id> <text>`, copies as
//! `<own_user>/<device> → <to_user> <message_id> <text>`, `read-sync ...`,
//! `linked ...`, one line per device, `push token registered (...)`, ...:
//! the table in `docs/cli.md`),
//! which the README and the tests grep; warnings, prompts and notes on
//! stderr; an error is one line on stderr (a [`CliError`], worded with what
//! to do) and exit code 1.
//!
//! Modules:
//! - `register`: `register`, with the code prompt.
//! - `send`: `send`, and waiting for its receipts.
//! - `upload`: `send --file`'s resumable upload and the attachment.
//! - `listen`: `listen`.
//! - `download`: `listen --download`'s verified downloads.
//! - `lookup`: `lookup`, with phone number normalisation.
//! - `link`: `link` (a code, on the primary) and `link-accept` (a new
//!   profile from it).
//! - `devices`: `devices` and `unlink`, and the device lists kept for
//!   `send --per-device`.
//! - `push`: `push-token`, this device's push token.
//! - `profiles`: `whoami`, `profile set`, `profile list`, and which profile a
//!   run uses.
//! - `inbox`: what arrives in a session (deliveries, receipts), shown once
//!   and acknowledged.
//! - `explain`: a [`ClientError`] as one line that says what to do.
//! - `output`: the stable stdout lines, and writing them.
//! - `prompt`: reading lines from stdin without blocking the runtime.

mod devices;
mod download;
mod explain;
mod inbox;
mod link;
mod listen;
mod lookup;
mod output;
mod profiles;
mod prompt;
mod push;
mod register;
mod send;
mod upload;

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

use crate::profile::{Profile, ProfileDir, ProfileError};
use crate::{ClientError, DEFAULT_HTTP, DEFAULT_WS, tls_config_from_file};

pub use explain::Explain;

/// The CA file used when neither a flag nor the profile names one: where
/// `parley` writes its generated certificate when run from the same folder.
pub const DEFAULT_CA: &str = "./parley-data/tls/cert.pem";

#[derive(Debug, Parser)]
#[command(
    name = "parley-cli",
    version,
    about = "A command-line phone for Parley",
    long_about = "A command-line phone for Parley: it registers, sends and receives \
                  exactly as a phone app would.\n\n\
                  Each registered device is a profile, kept in \
                  $XDG_CONFIG_HOME/parley/profiles/NAME (~/.config/parley/profiles/NAME); \
                  without --profile or --profile-dir the profile is `default`. \
                  A profile remembers its server's URLs and CA file; \
                  `parley-cli profile set` changes them. \
                  Errors are one line on stderr, with exit code 1. See docs/cli.md."
)]
pub struct Cli {
    /// HTTPS API base URL (registration, devices, media) [default: the
    /// profile's, else https://127.0.0.1:8443]
    #[arg(long, env = "PARLEY_HTTP", global = true, value_name = "URL")]
    pub http: Option<String>,
    /// Gateway WebSocket URL [default: the profile's, else wss://127.0.0.1:5443/v1/ws]
    #[arg(long, env = "PARLEY_WS", global = true, value_name = "URL")]
    pub ws: Option<String>,
    /// PEM file of the server's certificate, to trust it: <data-dir>/tls/cert.pem
    /// of the server [default: the profile's, else ./parley-data/tls/cert.pem]
    #[arg(long, env = "PARLEY_CA", global = true, value_name = "PATH")]
    pub ca: Option<PathBuf>,
    /// Use the profile NAME, kept in $XDG_CONFIG_HOME/parley/profiles/NAME
    /// (~/.config/parley/profiles/NAME) [env: PARLEY_PROFILE] [default: default]
    #[arg(
        long,
        global = true,
        value_name = "NAME",
        conflicts_with = "profile_dir"
    )]
    pub profile: Option<String>,
    /// Keep the profile in DIR instead (a folder of its own: it is made
    /// private, mode 0700) [env: PARLEY_PROFILE_DIR]
    #[arg(long, global = true, value_name = "DIR")]
    pub profile_dir: Option<PathBuf>,
    /// Which of --http, --ws and --ca were typed on the command line (not
    /// taken from the environment): `profile set` saves only those.
    #[arg(skip)]
    pub typed: Typed,
    #[command(subcommand)]
    pub command: Command,
}

/// Which endpoint flags were given on the command line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Typed {
    pub http: bool,
    pub ws: bool,
    pub ca: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Register this phone number as a new device; prints `registered <user_id>`.
    ///
    /// Without --code, asks the server to text a code and prompts for it on
    /// stdin, again after a wrong guess. With --code, only verifies that
    /// code (you already requested it), so an abandoned prompt can be
    /// finished without asking for a new code. Registering again revokes the
    /// number's previous device. The number may be written with spaces,
    /// dashes, dots or parentheses, but must start with + and its country
    /// code.
    Register {
        /// Phone number with its country code, e.g. +15551234567
        phone: String,
        /// The code you already received: skip the request, just verify
        #[arg(long)]
        code: Option<String>,
    },
    /// Print this profile: `user_id`, `device_id`, `phone`, `profile` (its
    /// folder), `http`, `ws` and `ca` lines.
    Whoami,
    /// Print `<phone> <user_id>` for each given number that is registered.
    ///
    /// Numbers may be written with spaces, dashes, dots or parentheses
    /// (quote them); they must start with + and the country code. Numbers
    /// that are not phone numbers are skipped with a warning, and a note
    /// says when none is registered.
    Lookup {
        #[arg(required = true, value_name = "PHONE")]
        phones: Vec<String>,
    },
    /// Send a text, or a file; prints `✓ sent <message_id>` once the server
    /// has stored it.
    ///
    /// The message goes to every device of the recipient, and a copy to
    /// this account's other devices. With --wait, stays connected and
    /// prints receipts (`✓✓ delivered <ids> by <user>/<device>`,
    /// `✓✓ read <ids> by <user>/<device>`), acking them, until the first
    /// wanted one for this message arrives from any of the recipient's
    /// devices. Messages that arrive meanwhile are left queued for
    /// `listen`. A receipt counts only if it comes from the message's
    /// recipient.
    ///
    /// With --file, uploads the file first (resumably: an interrupted
    /// upload goes on from where it stopped when the same command runs
    /// again), prints `uploaded <media_id> <size> bytes sha256 <hex>`, and
    /// sends a Content message holding the text (optional then) and the
    /// attachment, with a JPEG thumbnail for photos.
    #[command(override_usage = "parley-cli send <USER_ID> <TEXT> [OPTIONS]\n       \
                                parley-cli send <USER_ID> [TEXT] --file <PATH> [OPTIONS]")]
    Send {
        /// Recipient user id (find it with `lookup <phone>`)
        #[arg(value_name = "USER_ID")]
        user_id: String,
        /// The message, sent as UTF-8 (with --file: the caption, optional)
        #[arg(required_unless_present = "file")]
        text: Option<String>,
        /// Attach this file: upload it, then send a Content message that
        /// refers to it (docs/protocol.md, "Media")
        #[arg(long, value_name = "PATH")]
        file: Option<PathBuf>,
        /// Also wait for this receipt of the message
        #[arg(long, value_enum)]
        wait: Option<WaitFor>,
        /// Seconds to wait for the server's ack and, with --wait, the
        /// receipt; then exit 1. A message already acked stays sent: its
        /// receipts arrive in `listen`.
        #[arg(long, default_value_t = 30, value_name = "SECS")]
        timeout: u64,
        /// Send one envelope per device (as apps that encrypt for each
        /// device do): for every device of the recipient and this account's
        /// other devices, from the lists this profile keeps (fetched when
        /// unknown). A stale list is fixed from the server's answer
        /// (DEVICES_CHANGED) and the message sent again, once.
        #[arg(long)]
        per_device: bool,
    },
    /// Print incoming messages as `<from_user>/<from_device> <message_id>
    /// <text>`, copies of this account's own messages (sent from its other
    /// devices) as `<own_user>/<device> → <to_user> <message_id> <text>`,
    /// receipts as `✓✓ delivered|read <ids> by <user>/<device>` and
    /// read-syncs as `read-sync <ids> from <user> on <own_user>/<device>`,
    /// acknowledging each.
    ///
    /// Runs until Ctrl-C (clean close, exit 0) or until the server closes the
    /// session (exit 1). Control characters in texts are escaped so each
    /// message is one line. Receipts for messages this profile sent to
    /// someone else than their `from_user` are ignored with a warning.
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
        /// Download the attachments of arriving messages into DIR (made if
        /// missing); each is checked against its SHA-256 and printed as
        /// `downloaded <message_id>/<n> <path>`
        #[arg(long, value_name = "DIR")]
        download: Option<PathBuf>,
    },
    /// On the primary device: make a one-time code that links a new device
    /// (a laptop, a tablet) to this account.
    ///
    /// Prints `link code <code> expires in <secs> s`, then
    /// `on the new device: <command>`, the exact `link-accept` command to
    /// run there (with a profile name that is free on this computer).
    Link,
    /// Link a NEW profile to an account, with a code from its primary
    /// device's `link`; prints `linked <user_id> device <device_id>`.
    ///
    /// The profile gets its own credential, session and mailbox; messages
    /// to the account reach it from now on. Endpoints and CA are saved as
    /// `register` saves them. An existing profile is not overwritten
    /// (unless the server no longer accepts its credential: a device that
    /// was unlinked can be linked again in place).
    LinkAccept {
        /// The code `link` printed on the primary device
        code: String,
        /// What `devices` calls this device (at most 64 bytes) [default:
        /// the profile's name]
        #[arg(long)]
        name: Option<String>,
    },
    /// List the account's devices, one per line:
    /// `<device_id> primary|linked this|other <last seen, UTC, or never> <name>`.
    Devices,
    /// Remove a device from the account; prints `unlinked <device_id>`.
    ///
    /// The primary device may unlink any other device; a linked device
    /// only itself. The unlinked device's session ends and its credential
    /// stops working; the primary cannot be unlinked.
    Unlink {
        /// The device, as `devices` lists it
        #[arg(value_name = "DEVICE_ID")]
        device_id: String,
    },
    /// Set this device's push token, or forget it with --clear; prints
    /// `push token registered (<platform>)` or `push token cleared`.
    ///
    /// A real phone app sends the token its OS gave it (an APNs device
    /// token, or an FCM registration token); while the device has no
    /// session, the server then wakes it with a content-free push, so that
    /// it connects and fetches its messages. A development server (`--push
    /// outbox`, the default) writes a `{"kind":"push",...}` line to its
    /// outbox.jsonl instead. A device has one token: a new one replaces it.
    #[command(override_usage = "parley-cli push-token <PLATFORM> <TOKEN>\n       \
                                parley-cli push-token --clear")]
    PushToken {
        /// Where the token is from
        #[arg(value_enum, required_unless_present = "clear")]
        platform: Option<PushPlatform>,
        /// The token, as the OS gave it (1 to 1024 printable ASCII characters)
        #[arg(required_unless_present = "clear")]
        token: Option<String>,
        /// Forget this device's token instead: no more pushes to it
        #[arg(long, conflicts_with_all = ["platform", "token"])]
        clear: bool,
    },
    /// Change or list profiles without registering again.
    Profile {
        #[command(subcommand)]
        action: ProfileAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum ProfileAction {
    /// Save the --http, --ws and/or --ca given on this command line into the
    /// profile (the server moved, or made a new certificate), and print
    /// them as `http <url>`, `ws <url>`, `ca <path>`.
    Set,
    /// Print the name of every profile in $XDG_CONFIG_HOME/parley/profiles.
    List,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum WaitFor {
    Delivered,
    Read,
}

/// A push token's platform.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PushPlatform {
    /// Apple Push Notification service (App Store and TestFlight builds)
    Apns,
    /// The APNs sandbox (development builds run from Xcode)
    // Spelled as the API spells it, so that what the server says and what
    // is typed agree; clap's own spelling is accepted too.
    #[value(name = "apns_sandbox", alias = "apns-sandbox")]
    ApnsSandbox,
    /// Firebase Cloud Messaging (Android)
    Fcm,
}

impl PushPlatform {
    /// The name in the API's `platform` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Apns => "apns",
            Self::ApnsSandbox => "apns_sandbox",
            Self::Fcm => "fcm",
        }
    }
}

impl Cli {
    /// Parses `std::env::args`, exiting with clap's usage message (code 2)
    /// on a usage error.
    pub fn from_env() -> Self {
        Self::try_from_args(std::env::args_os()).unwrap_or_else(|e| e.exit())
    }

    /// Parses `args` (the first is the program name).
    pub fn try_from_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let matches = Self::command().try_get_matches_from(args)?;
        let mut cli = Self::from_arg_matches(&matches)?;
        let typed = |id: &str| matches.value_source(id) == Some(ValueSource::CommandLine);
        cli.typed = Typed {
            http: typed("http"),
            ws: typed("ws"),
            ca: typed("ca"),
        };
        Ok(cli)
    }
}

/// A failed command: one line for the user, already saying what to do.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CliError(String);

impl CliError {
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

impl From<ProfileError> for CliError {
    fn from(e: ProfileError) -> Self {
        Self(e.to_string())
    }
}

/// Runs one command.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    let dir = profiles::choose(
        cli.profile.as_deref(),
        cli.profile_dir.as_deref(),
        std::env::var_os("PARLEY_PROFILE"),
        std::env::var_os("PARLEY_PROFILE_DIR"),
        crate::profile::profiles_dir,
    )?;
    match &cli.command {
        Command::Register { phone, code } => {
            register::register(&cli, &dir, phone, code.as_deref()).await
        }
        Command::Whoami => profiles::whoami(&dir),
        Command::Lookup { phones } => lookup::lookup(&cli, &dir, phones).await,
        Command::Send {
            user_id,
            text,
            file,
            wait,
            timeout,
            per_device,
        } => {
            let options = send::SendOptions {
                file: file.clone(),
                wait: *wait,
                timeout: std::time::Duration::from_secs(*timeout),
                per_device: *per_device,
            };
            send::send(&cli, &dir, user_id, text.as_deref(), options).await
        }
        Command::Listen {
            read,
            exit_on_empty,
            timeout,
            download,
        } => {
            let options = listen::ListenOptions {
                read: *read,
                exit_on_empty: *exit_on_empty,
                timeout: timeout.map(std::time::Duration::from_secs),
                download: download.clone(),
            };
            listen::listen(&cli, &dir, options).await
        }
        Command::Link => link::link(&cli, &dir).await,
        Command::LinkAccept { code, name } => link::accept(&cli, &dir, code, name.as_deref()).await,
        Command::Devices => devices::list(&cli, &dir).await,
        Command::Unlink { device_id } => devices::unlink(&cli, &dir, device_id).await,
        Command::PushToken {
            platform,
            token,
            clear,
        } => match (platform, token, clear) {
            (Some(platform), Some(token), false) => push::set(&cli, &dir, *platform, token).await,
            (None, None, true) => push::clear(&cli, &dir).await,
            // The argument rules above let only those two through.
            _ => Err(CliError::new(
                "push-token takes PLATFORM TOKEN, or --clear (see `parley-cli push-token --help`)",
            )),
        },
        Command::Profile { action } => match action {
            ProfileAction::Set => profiles::set(&cli, &dir),
            ProfileAction::List => profiles::list(),
        },
    }
}

/// Endpoints and CA for one run: flags and environment first, then the
/// profile (so a registered device keeps talking to its server), then the
/// laptop defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Endpoints {
    pub http: String,
    pub ws: String,
    pub ca: PathBuf,
}

impl Endpoints {
    pub fn resolve(cli: &Cli, profile: Option<&Profile>) -> Self {
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

    pub fn tls(&self) -> Result<Arc<rustls::ClientConfig>, ClientError> {
        tls_config_from_file(&self.ca)
    }
}

/// A loaded profile and what a run needs around it.
pub(crate) struct Loaded {
    pub profile: Profile,
    pub endpoints: Endpoints,
    pub explain: Explain,
}

impl Loaded {
    pub fn new(cli: &Cli, dir: &ProfileDir) -> Result<Self, CliError> {
        let profile = dir.load()?;
        let endpoints = Endpoints::resolve(cli, Some(&profile));
        let explain =
            Explain::new(dir, Some(&profile.phone), &endpoints, true).linked(profile.linked);
        Ok(Self {
            profile,
            endpoints,
            explain,
        })
    }

    pub async fn connect(&self) -> Result<crate::Session, CliError> {
        let tls = self.endpoints.tls().map_err(|e| self.explain.client(e))?;
        crate::Session::connect(&self.endpoints.ws, tls, &self.profile.token)
            .await
            .map_err(|e| self.explain.client(e))
    }

    pub fn registration(&self) -> Result<crate::Registration, CliError> {
        let tls = self.endpoints.tls().map_err(|e| self.explain.client(e))?;
        crate::Registration::new(&self.endpoints.http, tls).map_err(|e| self.explain.client(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_parses() {
        Cli::command().debug_assert();
        let cli = Cli::try_from_args([
            "parley-cli",
            "send",
            "42",
            "hello there",
            "--wait",
            "read",
            "--timeout",
            "5",
            "--profile",
            "bob",
        ])
        .expect("parses");
        assert_eq!(cli.profile.as_deref(), Some("bob"));
        assert!(matches!(
            &cli.command,
            Command::Send {
                user_id,
                wait: Some(WaitFor::Read),
                timeout: 5,
                ..
            } if user_id == "42"
        ));
        assert!(Cli::try_from_args(["parley-cli", "lookup"]).is_err());
        let cli = Cli::try_from_args([
            "parley-cli",
            "--profile",
            "alice-laptop",
            "link-accept",
            "K7Q2-ABCD",
            "--name",
            "my laptop",
        ])
        .expect("parses");
        assert!(matches!(
            &cli.command,
            Command::LinkAccept { code, name: Some(name) } if code == "K7Q2-ABCD" && name == "my laptop"
        ));
        let cli =
            Cli::try_from_args(["parley-cli", "send", "42", "hi", "--per-device"]).expect("parses");
        assert!(matches!(
            cli.command,
            Command::Send {
                per_device: true,
                wait: None,
                ..
            }
        ));
        assert!(Cli::try_from_args(["parley-cli", "unlink"]).is_err());
        // A text, or a file (with an optional caption); not neither.
        assert!(Cli::try_from_args(["parley-cli", "send", "42"]).is_err());
        let cli =
            Cli::try_from_args(["parley-cli", "send", "42", "--file", "a.jpg"]).expect("parses");
        assert!(matches!(
            &cli.command,
            Command::Send { text: None, file: Some(f), .. } if f == std::path::Path::new("a.jpg")
        ));
        let cli = Cli::try_from_args(["parley-cli", "send", "42", "caption", "--file", "a.jpg"])
            .expect("parses");
        assert!(
            matches!(&cli.command, Command::Send { text: Some(t), file: Some(_), .. } if t == "caption")
        );
        let cli =
            Cli::try_from_args(["parley-cli", "listen", "--download", "inbox"]).expect("parses");
        assert!(
            matches!(&cli.command, Command::Listen { download: Some(d), .. } if d == std::path::Path::new("inbox"))
        );
        // A phone number where a user id belongs parses: `send` explains.
        assert!(Cli::try_from_args(["parley-cli", "send", "+15550002222", "hi"]).is_ok());
        assert!(
            Cli::try_from_args([
                "parley-cli",
                "--profile",
                "a",
                "--profile-dir",
                "/x",
                "whoami"
            ])
            .is_err(),
            "one profile per run"
        );
    }

    #[test]
    fn push_token_takes_a_platform_and_token_or_clear() {
        let parse = |args: &[&str]| {
            Cli::try_from_args(["parley-cli", "push-token"].iter().chain(args)).map(|c| c.command)
        };
        for (typed, platform) in [
            ("apns", PushPlatform::Apns),
            ("apns_sandbox", PushPlatform::ApnsSandbox),
            ("apns-sandbox", PushPlatform::ApnsSandbox),
            ("fcm", PushPlatform::Fcm),
        ] {
            let command = parse(&[typed, "a1b2c3"]).expect(typed);
            assert!(
                matches!(
                    &command,
                    Command::PushToken { platform: Some(p), token: Some(t), clear: false }
                        if *p == platform && t == "a1b2c3"
                ),
                "{typed}: {command:?}"
            );
        }
        assert!(matches!(
            parse(&["--clear"]).expect("--clear"),
            Command::PushToken {
                platform: None,
                token: None,
                clear: true
            }
        ));
        // Exactly one of the two forms.
        for refused in [
            &[][..],
            &["fcm"],
            &["--clear", "fcm", "t"],
            &["fcm", "t", "--clear"],
            &["--clear", "fcm"],
            &["gcm", "t"],
            &["fcm", "t", "extra"],
        ] {
            assert!(parse(refused).is_err(), "{refused:?}");
        }
        // The wire names are the API's.
        let wire: Vec<_> = PushPlatform::value_variants()
            .iter()
            .map(|p| p.as_str())
            .collect();
        assert_eq!(wire, ["apns", "apns_sandbox", "fcm"]);
        for p in PushPlatform::value_variants() {
            let name = p.to_possible_value().expect("shown");
            assert_eq!(name.get_name(), p.as_str(), "typed as sent");
        }
    }

    #[test]
    fn typed_flags_are_told_from_the_environment() {
        let cli = Cli::try_from_args([
            "parley-cli",
            "--profile",
            "bob",
            "profile",
            "set",
            "--ca",
            "/x/cert.pem",
        ])
        .expect("parses");
        assert_eq!(
            cli.typed,
            Typed {
                http: false,
                ws: false,
                ca: true
            }
        );
        assert_eq!(cli.ca.as_deref(), Some(std::path::Path::new("/x/cert.pem")));
        assert!(matches!(
            cli.command,
            Command::Profile {
                action: ProfileAction::Set
            }
        ));
    }

    #[test]
    fn endpoints_prefer_flags_then_the_profile_then_defaults() {
        let cli = Cli::try_from_args(["parley-cli", "--ws", "wss://flag/v1/ws", "whoami"])
            .expect("parses");
        let profile = Profile {
            http: "https://profile".into(),
            ws: "wss://profile/v1/ws".into(),
            ca: PathBuf::from("/profile/cert.pem"),
            phone: "+15550000001".into(),
            user_id: 1,
            device_id: 1,
            token: "t".into(),
            linked: false,
            next_client_msg_id: 1,
        };
        // Environment variables may be set where the tests run; only the
        // flag is certain.
        let resolved = Endpoints::resolve(&cli, Some(&profile));
        assert_eq!(resolved.ws, "wss://flag/v1/ws");
        let bare = Cli {
            http: None,
            ws: None,
            ca: None,
            ..cli
        };
        assert_eq!(
            Endpoints::resolve(&bare, Some(&profile)),
            Endpoints {
                http: "https://profile".into(),
                ws: "wss://profile/v1/ws".into(),
                ca: PathBuf::from("/profile/cert.pem"),
            }
        );
        assert_eq!(
            Endpoints::resolve(&bare, None),
            Endpoints {
                http: DEFAULT_HTTP.into(),
                ws: DEFAULT_WS.into(),
                ca: PathBuf::from(DEFAULT_CA),
            }
        );
    }
}
