//! `register`: request a code, prompt for it (again after a wrong guess),
//! verify it, save the profile.
//!
//! A code is scarce (one a minute, five a day per number) and allows five
//! guesses, so nothing here throws a good code away: a wrong guess prompts
//! again, and an abandoned prompt (Ctrl-C, end of input) says how to finish
//! with `--code` without requesting a new one.

use std::time::Duration;

use tokio::time::Instant;
use tracing::warn;

use super::explain::human_secs;
use super::output::{note, prompt, tell};
use super::prompt::StdinLines;
use super::{Cli, CliError, Endpoints, Explain};
use crate::phone::normalize;
use crate::profile::{Profile, ProfileDir, ProfileError};
use crate::{ClientError, CodeRequested, Credential, Registration};

/// The exact commands a registration message may point to.
struct Commands {
    /// `... register PHONE --code <code>`: finish with the code already sent.
    finish: String,
    /// `... register PHONE`: request a new code.
    again: String,
}

pub(crate) async fn register(
    cli: &Cli,
    dir: &ProfileDir,
    phone_arg: &str,
    code: Option<&str>,
) -> Result<(), CliError> {
    let phone = normalize(phone_arg)
        .map_err(|e| CliError::new(format!("cannot register {phone_arg:?}: {e}")))?;
    // Registering a profile again (after a revocation, say) talks to the
    // server it already uses, unless flags say otherwise.
    let existing = match dir.load() {
        Ok(profile) => Some(profile),
        Err(ProfileError::Missing { .. }) => None,
        Err(e) => {
            warn!(error = %e, "replacing an unreadable profile");
            None
        }
    };
    if let Some(old) = existing.as_ref().filter(|p| p.phone != phone) {
        note(&format!(
            "this profile was {}; registering replaces it with {phone}",
            old.phone
        ));
    }
    let endpoints = Endpoints::resolve(cli, existing.as_ref());
    let explain = Explain::new(dir, Some(&phone), &endpoints, existing.is_some());
    let tls = endpoints.tls().map_err(|e| explain.client(e))?;
    let registration = Registration::new(&endpoints.http, tls).map_err(|e| explain.client(e))?;
    let commands = Commands {
        finish: explain.command(&format!("register {phone} --code <code>")),
        again: explain.command(&format!("register {phone}")),
    };

    let credential = match code {
        Some(code) => registration
            .verify(&phone, &clean_code(code))
            .await
            .map_err(|e| verify_failed(e, &phone, &commands, &explain))?,
        None => {
            let requested = registration
                .request_code(&phone)
                .await
                .map_err(|e| request_failed(e, &phone, &commands, &explain))?;
            let expires = Instant::now() + Duration::from_secs(requested.expires_in);
            tokio::select! {
                result = prompt_for_code(&registration, &phone, requested, &commands, &explain) => result?,
                _ = tokio::signal::ctrl_c() => {
                    tell("");
                    return Err(abandoned(&phone, expires, &commands));
                }
            }
        }
    };

    let ca = std::path::absolute(&endpoints.ca)
        .map_err(|e| CliError::new(format!("cannot resolve {}: {e}", endpoints.ca.display())))?;
    dir.save(&Profile {
        http: endpoints.http,
        ws: endpoints.ws,
        ca,
        phone,
        user_id: credential.user_id,
        device_id: credential.device_id,
        token: credential.token,
        linked: false,
        // A new device: its client_msg_id space starts afresh.
        next_client_msg_id: 1,
    })?;
    super::output::say(&format!("registered {}", credential.user_id))
}

/// Reads codes until one verifies. A wrong guess prompts again while the
/// code has guesses left; an empty line prompts again; the end of input
/// gives up with the command that finishes later.
async fn prompt_for_code(
    registration: &Registration,
    phone: &str,
    requested: CodeRequested,
    commands: &Commands,
    explain: &Explain,
) -> Result<Credential, CliError> {
    let expires = Instant::now() + Duration::from_secs(requested.expires_in);
    tell(&format!(
        "a code is on its way by SMS; it expires in {} s",
        requested.expires_in
    ));
    let mut stdin = StdinLines::spawn();
    loop {
        prompt("code: ");
        let code = match stdin.next().await {
            Some(Ok(line)) => clean_code(&line),
            Some(Err(e)) => {
                return Err(CliError::new(format!(
                    "cannot read the code from stdin ({e}); finish with `{}`",
                    commands.finish
                )));
            }
            None => {
                tell("");
                return Err(abandoned(phone, expires, commands));
            }
        };
        if code.is_empty() {
            continue;
        }
        match registration.verify(phone, &code).await {
            Ok(credential) => return Ok(credential),
            Err(ClientError::Api {
                code,
                attempts_left: Some(left),
                ..
            }) if code == "WRONG_CODE" && left > 0 => {
                tell(&format!("wrong code ({}); try again", attempts(left)));
            }
            Err(e) => return Err(verify_failed(e, phone, commands, explain)),
        }
    }
}

/// `3 attempts left`, `1 attempt left`.
fn attempts(left: u32) -> String {
    if left == 1 {
        "1 attempt left".into()
    } else {
        format!("{left} attempts left")
    }
}

/// What a person types for a code, without the spaces or dashes they may
/// copy from the SMS with it.
fn clean_code(typed: &str) -> String {
    typed
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .collect()
}

/// No code was entered: the one sent is still good for a while.
fn abandoned(phone: &str, expires: Instant, commands: &Commands) -> CliError {
    let left = expires.saturating_duration_since(Instant::now()).as_secs();
    let validity = if left > 0 {
        format!(
            "the code sent to {phone} is still valid for {}",
            human_secs(left)
        )
    } else {
        format!("the code sent to {phone} has expired by now")
    };
    CliError::new(format!(
        "no code entered; {validity}: finish with `{}` (running register without --code requests a new code: one a minute, five a day)",
        commands.finish
    ))
}

fn verify_failed(e: ClientError, phone: &str, commands: &Commands, explain: &Explain) -> CliError {
    let ClientError::Api {
        code,
        attempts_left,
        retry_after,
        ..
    } = &e
    else {
        return explain.client(e);
    };
    CliError::new(match (code.as_str(), attempts_left) {
        ("WRONG_CODE", Some(0)) => format!(
            "wrong code, and that was its last guess: the code no longer works; request a new one with `{}`",
            commands.again
        ),
        ("WRONG_CODE", left) => format!(
            "wrong code{}: check the SMS and run `{}` again",
            left.map(|n| format!(" ({})", attempts(n)))
                .unwrap_or_default(),
            commands.finish
        ),
        ("NO_PENDING_CODE", _) => format!(
            "no code is pending for {phone} (never requested, already used, or ended by five wrong guesses): request a new one with `{}`",
            commands.again
        ),
        ("CODE_EXPIRED", _) => format!(
            "the code has expired: request a new one with `{}`",
            commands.again
        ),
        ("RATE_LIMITED", _) => format!(
            "too many verification attempts from this address: retry{} with `{}`",
            retry_after
                .map(|s| format!(" in {}", human_secs(s)))
                .unwrap_or_default(),
            commands.finish
        ),
        _ => return explain.client(e),
    })
}

fn request_failed(e: ClientError, phone: &str, commands: &Commands, explain: &Explain) -> CliError {
    let ClientError::Api {
        code, retry_after, ..
    } = &e
    else {
        return explain.client(e);
    };
    CliError::new(match code.as_str() {
        "RATE_LIMITED" => format!(
            "the server will not send {phone} another code yet (one a minute, five a day): if you have the last one, finish with `{}`; otherwise retry{}",
            commands.finish,
            retry_after.map(|s| format!(" in {}", human_secs(s))).unwrap_or_else(|| " later".into()),
        ),
        "SMS_FAILED" => {
            "the server could not send the SMS (SMS_FAILED): retry later; it did not count against the limits"
                .to_string()
        }
        _ => return explain.client(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    fn fixture() -> (Commands, Explain) {
        let dir = ProfileDir::named_in(Path::new("/cfg"), "alice").expect("name");
        let endpoints = Endpoints {
            http: "https://127.0.0.1:8443".into(),
            ws: "wss://127.0.0.1:5443/v1/ws".into(),
            ca: PathBuf::from("/d/tls/cert.pem"),
        };
        let explain = Explain::new(&dir, Some("+15550001111"), &endpoints, false);
        let commands = Commands {
            finish: explain.command("register +15550001111 --code <code>"),
            again: explain.command("register +15550001111"),
        };
        (commands, explain)
    }

    fn api(code: &str, attempts_left: Option<u32>, retry_after: Option<u64>) -> ClientError {
        ClientError::Api {
            status: 400,
            code: code.into(),
            message: "m".into(),
            attempts_left,
            retry_after,
        }
    }

    #[test]
    fn verification_failures_say_whether_to_retry_or_request() {
        let (commands, explain) = fixture();
        let text = |e| verify_failed(e, "+15550001111", &commands, &explain).to_string();
        let finish = "`parley-cli --profile alice register +15550001111 --code <code>`";
        let again = "`parley-cli --profile alice register +15550001111`";
        let wrong = text(api("WRONG_CODE", Some(3), None));
        assert!(
            wrong.contains("3 attempts left") && wrong.contains(finish),
            "{wrong}"
        );
        let dead = text(api("WRONG_CODE", Some(0), None));
        assert!(
            dead.contains("no longer works") && dead.contains(again),
            "{dead}"
        );
        let none = text(api("NO_PENDING_CODE", None, None));
        assert!(
            none.contains("no code is pending") && none.contains(again),
            "{none}"
        );
        let expired = text(api("CODE_EXPIRED", None, None));
        assert!(
            expired.contains("expired") && expired.contains(again),
            "{expired}"
        );
        let limited = text(api("RATE_LIMITED", None, Some(30)));
        assert!(
            limited.contains("in 30 s") && limited.contains(finish),
            "{limited}"
        );
    }

    #[test]
    fn a_rate_limited_request_points_to_the_code_already_sent() {
        let (commands, explain) = fixture();
        let text = request_failed(
            api("RATE_LIMITED", None, Some(45)),
            "+15550001111",
            &commands,
            &explain,
        )
        .to_string();
        assert!(
            text.contains("`parley-cli --profile alice register +15550001111 --code <code>`"),
            "{text}"
        );
        assert!(text.contains("retry in 45 s"), "{text}");
    }

    #[test]
    fn an_abandoned_prompt_says_how_to_finish() {
        let (commands, _) = fixture();
        let later = Instant::now() + Duration::from_secs(600);
        let text = abandoned("+15550001111", later, &commands).to_string();
        assert!(text.contains("still valid for 10 min"), "{text}");
        assert!(
            text.contains("`parley-cli --profile alice register +15550001111 --code <code>`"),
            "{text}"
        );
    }

    #[test]
    fn codes_are_cleaned_of_what_people_paste() {
        assert_eq!(clean_code(" 511 887\n"), "511887");
        assert_eq!(clean_code("511-887"), "511887");
        assert_eq!(attempts(1), "1 attempt left");
    }
}
