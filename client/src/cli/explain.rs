//! Errors as the user reads them: one line naming the cause and the exact
//! command that fixes it.
//!
//! The same cause gets the same words wherever it is noticed: a revoked
//! credential reads the same whether the gateway refused the upgrade, the
//! HTTPS API refused a lookup, or a live session was closed with 4002.

use std::path::{Path, PathBuf};

use rustls::CertificateError;

use super::{CliError, DEFAULT_CA, Endpoints};
use crate::ClientError;
use crate::error::CredentialRefusal;
use crate::profile::{ProfileDir, shell_quote};
use crate::proto::close;
use crate::proto::v1::{CloseReason, ErrorCode};

/// What a message needs to know to name the fix.
#[derive(Clone, Debug)]
pub struct Explain {
    /// `parley-cli` with the flag that selects the profile in use.
    command: String,
    /// The profile's phone number, for the exact `register` command.
    phone: Option<String>,
    /// The gateway URL, which an upgrade refusal does not carry.
    ws: String,
    ca: PathBuf,
    /// Whether the profile exists, so `profile set` can fix it.
    has_profile: bool,
    /// A linked device (not registered by SMS): a dead credential is fixed
    /// by linking it again, not by registering.
    linked: bool,
}

/// What the server said just before closing a session.
#[derive(Clone, Debug)]
pub(crate) enum Notice {
    Closing(i32),
    Error(i32, String),
}

impl Explain {
    pub(crate) fn new(
        dir: &ProfileDir,
        phone: Option<&str>,
        endpoints: &Endpoints,
        has_profile: bool,
    ) -> Self {
        Self {
            command: dir.command(),
            phone: phone.map(str::to_owned),
            ws: endpoints.ws.clone(),
            ca: endpoints.ca.clone(),
            has_profile,
            linked: false,
        }
    }

    /// For a linked device's profile.
    pub(crate) fn linked(mut self, linked: bool) -> Self {
        self.linked = linked;
        self
    }

    /// The exact commands that link this profile again: a code from the
    /// primary, redeemed here.
    pub(crate) fn relink(&self) -> String {
        format!(
            "make a link code on the account's primary device with `parley-cli [--profile NAME] link`, \
             then run `{}` here",
            self.command("link-accept <code>")
        )
    }

    /// This device was removed from its account.
    fn unlinked(&self) -> String {
        format!(
            "this device was removed from its account (unlinked by the primary device or by itself, or after long disuse) \
             and its credential no longer works; to link it again, {}",
            self.relink()
        )
    }

    /// `parley-cli [--profile NAME] <rest>`.
    pub fn command(&self, rest: &str) -> String {
        format!("{} {rest}", self.command)
    }

    pub fn client(&self, e: ClientError) -> CliError {
        CliError::new(self.text(&e))
    }

    /// The message for `e`.
    pub fn text(&self, e: &ClientError) -> String {
        if let Some(refusal) = e.credential_refusal() {
            return self.credential(refusal, e);
        }
        match e {
            ClientError::Unreachable { url, reason } => {
                let flag = if url == &self.ws { "--ws" } else { "--http" };
                let moved = if self.has_profile {
                    format!(
                        " (if it moved: `{}`)",
                        self.command(&format!("profile set {flag} URL"))
                    )
                } else {
                    format!(" (another address: {flag} URL)")
                };
                format!(
                    "cannot reach the Parley server at {url} ({reason}): is parley running there?{moved}"
                )
            }
            ClientError::TlsHandshake { url, error } => self.tls(url, error),
            ClientError::CaFile { path, reason } => self.ca_file(path, reason),
            ClientError::Rejected { status, code } => {
                let code = code.as_deref().unwrap_or("no code");
                match status {
                    503 => format!(
                        "the gateway at {} cannot check credentials right now (HTTP 503 {code}): retry in a few seconds",
                        self.ws
                    ),
                    404 => format!(
                        "no Parley gateway at {} (HTTP 404 {code}): the gateway's path is /v1/ws",
                        self.ws
                    ),
                    _ => format!(
                        "the gateway at {} refused the connection (HTTP {status} {code})",
                        self.ws
                    ),
                }
            }
            ClientError::Api {
                status,
                code,
                message,
                retry_after,
                ..
            } => {
                let retry = retry_after
                    .map(|s| format!(": retry in {}", human_secs(s)))
                    .unwrap_or_default();
                match code.as_str() {
                    "RATE_LIMITED" => {
                        format!("the server is rate limiting this ({message}){retry}")
                    }
                    "UNAVAILABLE" => format!("the server is busy (UNAVAILABLE){retry}"),
                    "INTERNAL" => {
                        "the server failed (INTERNAL): retry later; its log says why".to_string()
                    }
                    _ => format!("{code} (HTTP {status}): {message}{retry}"),
                }
            }
            ClientError::Closed { code, reason } => self.closed(*code, reason, None),
            ClientError::Timeout => "the Parley server did not answer in time: retry".to_string(),
            ClientError::Http(e) => format!("request to the Parley server failed: {}", causes(e)),
            ClientError::Protocol(what) => format!(
                "unexpected answer from the server ({what}): is this a Parley server of this version?"
            ),
            ClientError::Tls(what) => format!("TLS: {what}"),
            ClientError::InvalidInput(what) => what.clone(),
            ClientError::Io(e) => e.to_string(),
        }
    }

    /// Refused credentials: the one message per reason.
    fn credential(&self, refusal: CredentialRefusal, e: &ClientError) -> String {
        let unlinked_close =
            matches!(e, ClientError::Closed { code, .. } if *code == close::UNLINKED);
        if refusal == CredentialRefusal::Revoked && (self.linked || unlinked_close) {
            return self.unlinked();
        }
        let phone = self
            .phone
            .as_deref()
            .filter(|p| !p.is_empty())
            .unwrap_or("<phone>");
        let register = self.command(&format!("register {phone}"));
        if self.linked {
            let why = match refusal {
                CredentialRefusal::Expired => "this device's credential has expired",
                CredentialRefusal::Invalid => {
                    "the server does not accept this device's credential (malformed, or issued by another server)"
                }
                _ => "the server refused this device's credential",
            };
            return format!("{why}; link this device again: {}", self.relink());
        }
        match refusal {
            CredentialRefusal::Revoked => format!(
                "this device's credential was revoked: {phone} was registered again (on another phone or profile), \
                 or this device was removed; to use this profile again, register it again: `{register}`"
            ),
            CredentialRefusal::Expired => {
                format!("this device's credential has expired; get a new one: `{register}`")
            }
            CredentialRefusal::Invalid => format!(
                "the server does not accept this device's credential (malformed, or issued by another server: \
                 `{}` shows where this profile connects); register again: `{register}`",
                self.command("whoami")
            ),
            CredentialRefusal::Missing | CredentialRefusal::Unspecified => {
                let code = match e {
                    ClientError::Api { code, .. } => format!(" {code}"),
                    ClientError::Rejected {
                        code: Some(code), ..
                    } => format!(" {code}"),
                    _ => String::new(),
                };
                format!(
                    "the server refused this device's credential (HTTP 401{code}); register again: `{register}`"
                )
            }
        }
    }

    /// A session the server closed, with what it said just before.
    pub(crate) fn closed(&self, code: u16, reason: &str, notice: Option<&Notice>) -> String {
        let closing = match notice {
            Some(Notice::Closing(r)) => CloseReason::try_from(*r).ok(),
            _ => None,
        };
        if code == close::UNLINKED || closing == Some(CloseReason::Unlinked) {
            return self.unlinked();
        }
        if code == close::REVOKED || closing == Some(CloseReason::Revoked) {
            return self.credential(
                CredentialRefusal::Revoked,
                &ClientError::Closed {
                    code,
                    reason: reason.into(),
                },
            );
        }
        if code == close::DISPLACED || closing == Some(CloseReason::Displaced) {
            return "session displaced: another parley-cli (or app) connected as this device"
                .into();
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

    /// How to keep a CA that works: in the profile, or as a flag.
    fn keep_ca(&self) -> String {
        if self.has_profile {
            format!(
                " (to keep it in this profile: `{}`)",
                self.command("profile set --ca PATH")
            )
        } else {
            String::new()
        }
    }

    fn tls(&self, url: &str, error: &rustls::Error) -> String {
        let ca = self.ca.display();
        let trust = format!(
            "trust the server you mean with `--ca <its data-dir>/tls/cert.pem`{}, \
             or give the server a real certificate and pass the CA that issued it",
            self.keep_ca()
        );
        let clock = "check this computer's clock, or renew the server's certificate";
        let cert = match error {
            rustls::Error::InvalidCertificate(cert) => cert,
            rustls::Error::InvalidMessage(_)
            | rustls::Error::InappropriateMessage { .. }
            | rustls::Error::InappropriateHandshakeMessage { .. } => {
                return format!(
                    "TLS handshake with {url} failed ({error}): is that the TLS port of a Parley server?"
                );
            }
            rustls::Error::AlertReceived(alert) => {
                return format!("the server at {url} refused the TLS handshake ({alert:?})");
            }
            other => return format!("TLS handshake with {url} failed: {other}"),
        };
        let (why, fix) = match cert {
            CertificateError::UnknownIssuer => (
                format!("its certificate was not issued by the certificate in {ca} (UnknownIssuer)"),
                trust,
            ),
            CertificateError::BadSignature => (
                format!(
                    "its certificate is not the one in {ca} (BadSignature: same name, another key; \
                     another server, or one that made itself a new certificate)"
                ),
                trust,
            ),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => (
                format!("its certificate does not cover the host name in {url} (NotValidForName)"),
                "connect by a name it covers (a generated one covers localhost, 127.0.0.1 and ::1; \
                 start parley with --tls-hostnames NAME for others)"
                    .to_string(),
            ),
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                ("its certificate has expired (Expired)".to_string(), clock.to_string())
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => (
                "its certificate is not valid yet (NotValidYet)".to_string(),
                clock.to_string(),
            ),
            CertificateError::Revoked => (
                "its certificate has been revoked (Revoked)".to_string(),
                "give the server a new certificate".to_string(),
            ),
            other => (format!("its certificate cannot be used ({other:?})"), trust),
        };
        format!("the server at {url} is not trusted: {why}: {fix}")
    }

    fn ca_file(&self, path: &Path, reason: &str) -> String {
        let pass = format!(
            "pass `--ca <data-dir>/tls/cert.pem` of the server you mean (parley writes it on first start){}",
            self.keep_ca()
        );
        if path == Path::new(DEFAULT_CA) {
            return format!(
                "cannot read the server's certificate at {DEFAULT_CA}, the default ({reason}): \
                 run parley-cli in the folder where parley keeps parley-data, or {pass}"
            );
        }
        format!(
            "cannot use the CA file {} ({reason}): {pass}",
            shell_quote(&path.to_string_lossy())
        )
    }
}

/// An error and its causes, `a: b: c`, skipping causes whose text the
/// previous one already includes.
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}

/// Seconds for people: `45 s`, `3 min`, `2 h 5 min`.
pub(crate) fn human_secs(secs: u64) -> String {
    match secs {
        0..120 => format!("{secs} s"),
        120..7200 => format!("{} min", secs.div_ceil(60)),
        _ => {
            let minutes = secs.div_ceil(60);
            format!("{} h {} min", minutes / 60, minutes % 60)
        }
    }
}

/// Alice's profile (`+15550001111`) on the default endpoints: what the
/// commands' tests explain with.
#[cfg(test)]
pub(crate) fn for_tests() -> Explain {
    let dir = ProfileDir::named_in(std::path::Path::new("/cfg"), "alice").expect("name");
    let endpoints = Endpoints {
        http: crate::DEFAULT_HTTP.into(),
        ws: crate::DEFAULT_WS.into(),
        ca: PathBuf::from("/d/tls/cert.pem"),
    };
    Explain::new(&dir, Some("+15550001111"), &endpoints, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn explain(name: &str, has_profile: bool) -> Explain {
        let dir = ProfileDir::named_in(Path::new("/cfg/parley/profiles"), name).expect("name");
        let endpoints = Endpoints {
            http: "https://127.0.0.1:8443".into(),
            ws: "wss://127.0.0.1:5443/v1/ws".into(),
            ca: PathBuf::from("/srv/parley-data/tls/cert.pem"),
        };
        Explain::new(&dir, Some("+15550002222"), &endpoints, has_profile)
    }

    #[test]
    fn revocation_is_one_message_with_the_profile_flag() {
        let e = explain("bob", true);
        let upgrade = e.text(&ClientError::Rejected {
            status: 401,
            code: Some("TOKEN_REVOKED".into()),
        });
        let api_old = e.text(&ClientError::Api {
            status: 401,
            code: "REVOKED".into(),
            message: "credential revoked".into(),
            attempts_left: None,
            retry_after: None,
        });
        let api_new = e.text(&ClientError::Api {
            status: 401,
            code: "TOKEN_REVOKED".into(),
            message: "m".into(),
            attempts_left: None,
            retry_after: None,
        });
        let live = e.closed(close::REVOKED, "revoked", None);
        let notice = e.closed(
            1006,
            "",
            Some(&Notice::Closing(CloseReason::Revoked as i32)),
        );
        for other in [&api_old, &api_new, &live, &notice] {
            assert_eq!(&upgrade, other);
        }
        assert!(
            upgrade.contains("`parley-cli --profile bob register +15550002222`"),
            "{upgrade}"
        );
        assert!(upgrade.contains("registered again"), "{upgrade}");
        // The default profile needs no flag.
        let default = explain("default", true).closed(close::REVOKED, "", None);
        assert!(
            default.contains("`parley-cli register +15550002222`"),
            "{default}"
        );
    }

    #[test]
    fn an_unlinked_device_is_told_how_to_link_again() {
        let laptop =
            ProfileDir::named_in(Path::new("/cfg/parley/profiles"), "alice-laptop").expect("name");
        let endpoints = Endpoints {
            http: "https://127.0.0.1:8443".into(),
            ws: "wss://127.0.0.1:5443/v1/ws".into(),
            ca: PathBuf::from("/srv/parley-data/tls/cert.pem"),
        };
        let e = Explain::new(&laptop, Some(""), &endpoints, true).linked(true);
        let live = e.closed(
            close::UNLINKED,
            "unlinked",
            Some(&Notice::Closing(CloseReason::Unlinked as i32)),
        );
        let upgrade = e.text(&ClientError::Rejected {
            status: 401,
            code: Some("TOKEN_REVOKED".into()),
        });
        let api = e.text(&ClientError::Api {
            status: 401,
            code: "TOKEN_REVOKED".into(),
            message: "m".into(),
            attempts_left: None,
            retry_after: None,
        });
        assert_eq!(live, upgrade);
        assert_eq!(upgrade, api);
        assert!(live.contains("removed from its account"), "{live}");
        assert!(
            live.contains("`parley-cli --profile alice-laptop link-accept <code>`"),
            "{live}"
        );
        assert!(
            live.contains("`parley-cli [--profile NAME] link`"),
            "{live}"
        );
        assert!(!live.contains("register"), "{live}");
        // The close code says it even for a profile that does not know it
        // is linked (and with no Closing frame seen).
        let primary = explain("bob", true);
        assert!(
            primary
                .closed(close::UNLINKED, "", None)
                .contains("removed from its account")
        );
        let expired = e.text(&ClientError::Rejected {
            status: 401,
            code: Some("TOKEN_EXPIRED".into()),
        });
        assert!(
            expired.contains("expired") && expired.contains("link-accept"),
            "{expired}"
        );
    }

    #[test]
    fn each_credential_refusal_names_its_reason() {
        let e = explain("bob", true);
        let upgrade = |code: &str| {
            e.text(&ClientError::Rejected {
                status: 401,
                code: Some(code.into()),
            })
        };
        assert!(upgrade("TOKEN_EXPIRED").contains("expired"));
        assert!(upgrade("TOKEN_INVALID").contains("another server"));
        assert!(upgrade("TOKEN_INVALID").contains("`parley-cli --profile bob whoami`"));
        let missing = upgrade("UNAUTHORIZED");
        assert!(missing.contains("HTTP 401 UNAUTHORIZED"), "{missing}");
        for code in ["TOKEN_EXPIRED", "TOKEN_INVALID", "UNAUTHORIZED"] {
            assert!(
                upgrade(code).contains("`parley-cli --profile bob register +15550002222`"),
                "{code}"
            );
        }
    }

    #[test]
    fn unreachable_servers_are_said_in_words() {
        let e = explain("bob", true);
        let http = e.text(&ClientError::Unreachable {
            url: "https://127.0.0.1:8443".into(),
            reason: "connection refused".into(),
        });
        assert!(
            http.starts_with(
                "cannot reach the Parley server at https://127.0.0.1:8443 (connection refused): is parley running there?"
            ),
            "{http}"
        );
        assert!(http.contains("profile set --http URL"), "{http}");
        let ws = e.text(&ClientError::Unreachable {
            url: "wss://127.0.0.1:5443/v1/ws".into(),
            reason: "connection refused".into(),
        });
        assert!(
            ws.contains("at wss://127.0.0.1:5443/v1/ws (connection refused)"),
            "{ws}"
        );
        assert!(ws.contains("profile set --ws URL"), "{ws}");
        let new = explain("bob", false).text(&ClientError::Unreachable {
            url: "https://127.0.0.1:8443".into(),
            reason: "connection refused".into(),
        });
        assert!(new.ends_with("(another address: --http URL)"), "{new}");
    }

    #[test]
    fn every_certificate_error_says_what_to_do() {
        let e = explain("bob", true);
        let tls = |cert: CertificateError| {
            e.text(&ClientError::TlsHandshake {
                url: "https://127.0.0.1:8443".into(),
                error: rustls::Error::InvalidCertificate(cert),
            })
        };
        for cert in [
            CertificateError::UnknownIssuer,
            CertificateError::BadSignature,
        ] {
            let text = tls(cert);
            assert!(text.contains("--ca <its data-dir>/tls/cert.pem"), "{text}");
            assert!(
                text.contains("`parley-cli --profile bob profile set --ca PATH`"),
                "{text}"
            );
            assert!(text.contains("real certificate"), "{text}");
            assert!(text.contains("/srv/parley-data/tls/cert.pem"), "{text}");
        }
        assert!(tls(CertificateError::UnknownIssuer).contains("UnknownIssuer"));
        assert!(tls(CertificateError::BadSignature).contains("BadSignature"));
        assert!(tls(CertificateError::NotValidForName).contains("--tls-hostnames"));
        assert!(tls(CertificateError::Expired).contains("clock"));
        assert!(tls(CertificateError::NotValidYet).contains("clock"));
        assert!(tls(CertificateError::Revoked).contains("new certificate"));
        for other in [
            CertificateError::BadEncoding,
            CertificateError::UnhandledCriticalExtension,
            CertificateError::InvalidPurpose,
            CertificateError::ApplicationVerificationFailure,
        ] {
            let text = tls(other);
            assert!(text.contains("--ca"), "{text}");
        }
        let plain = e.text(&ClientError::TlsHandshake {
            url: "https://127.0.0.1:9090".into(),
            error: rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
        });
        assert!(plain.contains("TLS port"), "{plain}");
    }

    #[test]
    fn ca_file_problems_say_which_file_and_what_to_pass() {
        let e = explain("bob", true);
        let missing = e.text(&ClientError::CaFile {
            path: PathBuf::from("/tmp/nope.pem"),
            reason: "no such file".into(),
        });
        assert!(
            missing.contains("/tmp/nope.pem (no such file)"),
            "{missing}"
        );
        assert!(
            missing.contains("--ca <data-dir>/tls/cert.pem"),
            "{missing}"
        );
        let default = explain("bob", false).text(&ClientError::CaFile {
            path: PathBuf::from(DEFAULT_CA),
            reason: "no such file".into(),
        });
        assert!(default.contains("the default"), "{default}");
        assert!(
            default.contains("--ca <data-dir>/tls/cert.pem"),
            "{default}"
        );
        assert!(
            !default.contains("profile set"),
            "no profile to set yet: {default}"
        );
    }

    #[test]
    fn close_messages() {
        let e = explain("bob", true);
        let displaced = e.closed(
            close::DISPLACED,
            "",
            Some(&Notice::Closing(CloseReason::Displaced as i32)),
        );
        assert!(displaced.contains("displaced"), "{displaced}");
        let error = e.closed(
            1007,
            "",
            Some(&Notice::Error(
                ErrorCode::MalformedFrame as i32,
                "bad".into(),
            )),
        );
        assert_eq!(error, "server error MALFORMED_FRAME: bad");
        assert_eq!(
            e.closed(1001, "bye", None),
            "the server is shutting down; try again shortly (code 1001: bye)"
        );
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_secs(45), "45 s");
        assert_eq!(human_secs(119), "119 s");
        assert_eq!(human_secs(600), "10 min");
        assert_eq!(human_secs(601), "11 min");
        assert_eq!(human_secs(86_000), "23 h 54 min");
    }
}
