//! `push-token`: give the server this device's push token, or take it back.
//!
//! A phone app sends the token its OS gave it, so that the server can wake
//! the app (a content-free push) while it has no session; `parley-cli` has
//! no OS to ask, so the token is typed, which is how a developer watches
//! the wake-ups in a development server's outbox.

use super::output::say;
use super::{Cli, CliError, Explain, Loaded, PushPlatform};
use crate::ClientError;
use crate::profile::ProfileDir;

/// `push-token PLATFORM TOKEN`: this device's push token from now on.
pub(crate) async fn set(
    cli: &Cli,
    dir: &ProfileDir,
    platform: PushPlatform,
    token: &str,
) -> Result<(), CliError> {
    let loaded = Loaded::new(cli, dir)?;
    loaded
        .registration()?
        .set_push_token(&loaded.profile.token, platform.as_str(), token)
        .await
        .map_err(|e| set_failed(e, platform, &loaded.explain))?;
    say(&format!("push token registered ({})", platform.as_str()))
}

/// `push-token --clear`: no more pushes to this device.
pub(crate) async fn clear(cli: &Cli, dir: &ProfileDir) -> Result<(), CliError> {
    let loaded = Loaded::new(cli, dir)?;
    loaded
        .registration()?
        .clear_push_token(&loaded.profile.token)
        .await
        .map_err(|e| loaded.explain.client(e))?;
    say("push token cleared")
}

fn set_failed(e: ClientError, platform: PushPlatform, explain: &Explain) -> CliError {
    let ClientError::Api { code, message, .. } = &e else {
        return explain.client(e);
    };
    CliError::new(match code.as_str() {
        "INVALID_PUSH_TOKEN" => {
            // The server's message starts with what the code already says.
            let why = message
                .strip_prefix("invalid push token: ")
                .unwrap_or(message);
            format!(
                "the server refused the token (INVALID_PUSH_TOKEN: {why}): give it exactly as the OS \
                 gave it, with its platform (a development build's APNs token is apns_sandbox)"
            )
        }
        "PUSH_PLATFORM_UNAVAILABLE" => format!(
            "this server sends no pushes to {} devices (PUSH_PLATFORM_UNAVAILABLE): it was started \
             with --push off, or without an SNS platform application for this platform (with \
             --push sns: {})",
            platform.as_str(),
            arn_flag(platform)
        ),
        "PUSH_FAILED" => "the push service failed, so the token was not registered (PUSH_FAILED): \
             nothing changed; retry later"
            .to_string(),
        // The device went away between the credential check and the
        // write: unlinked, or its number registered again. Its credential
        // is revoked, so say it as every command says that.
        "NO_SUCH_DEVICE" => {
            return explain.client(ClientError::Rejected {
                status: 401,
                code: Some("TOKEN_REVOKED".into()),
            });
        }
        _ => return explain.client(e),
    })
}

/// The server's flag that gives SNS the platform application for
/// `platform`.
fn arn_flag(platform: PushPlatform) -> &'static str {
    match platform {
        PushPlatform::Apns => "--push-apns-arn",
        PushPlatform::ApnsSandbox => "--push-apns-sandbox-arn",
        PushPlatform::Fcm => "--push-fcm-arn",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, code: &str, message: &str) -> ClientError {
        ClientError::Api {
            status,
            code: code.into(),
            message: message.into(),
            attempts_left: None,
            retry_after: None,
        }
    }

    #[test]
    fn refusals_say_what_to_do() {
        let e = crate::cli::explain::for_tests();
        let text = |err| set_failed(err, PushPlatform::ApnsSandbox, &e).to_string();
        let invalid = text(api(
            400,
            "INVALID_PUSH_TOKEN",
            "invalid push token: token must be 1 to 1024 printable ASCII characters",
        ));
        assert!(
            invalid.contains("(INVALID_PUSH_TOKEN: token must be 1 to 1024")
                && invalid.contains("exactly as the OS gave it"),
            "{invalid}"
        );
        let unavailable = text(api(400, "PUSH_PLATFORM_UNAVAILABLE", "m"));
        assert!(
            unavailable.contains("no pushes to apns_sandbox devices")
                && unavailable
                    .contains("started with --push off, or without an SNS platform application")
                && unavailable.contains("(with --push sns: --push-apns-sandbox-arn)"),
            "{unavailable}"
        );
        let failed = text(api(502, "PUSH_FAILED", "m"));
        assert!(
            failed.contains("PUSH_FAILED") && failed.contains("retry later"),
            "{failed}"
        );
    }

    #[test]
    fn a_device_gone_meanwhile_reads_as_a_revoked_credential() {
        let e = crate::cli::explain::for_tests();
        let gone = set_failed(api(404, "NO_SUCH_DEVICE", "m"), PushPlatform::Fcm, &e);
        let revoked = e.text(&api(401, "TOKEN_REVOKED", "m"));
        assert_eq!(gone.to_string(), revoked);
        assert!(
            revoked.contains("`parley-cli --profile alice register +15550001111`"),
            "{revoked}"
        );
    }

    #[test]
    fn other_errors_are_explained_as_everywhere() {
        let e = crate::cli::explain::for_tests();
        let unreachable = || ClientError::Unreachable {
            url: "https://127.0.0.1:8443".into(),
            reason: "connection refused".into(),
        };
        assert_eq!(
            set_failed(unreachable(), PushPlatform::Apns, &e).to_string(),
            e.text(&unreachable())
        );
        let internal = api(500, "INTERNAL", "m");
        assert_eq!(
            set_failed(internal, PushPlatform::Apns, &e).to_string(),
            e.text(&api(500, "INTERNAL", "m"))
        );
    }
}
