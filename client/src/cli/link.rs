//! `link` and `link-accept`: a new device for an account, with a one-time
//! code from its primary device.
//!
//! `link` runs on the primary's profile and prints the code and the exact
//! command for the new device; `link-accept` runs there, on a new profile,
//! redeems the code and saves the new device's credential. A profile that
//! holds a working device is never overwritten; one whose credential the
//! server refuses as revoked or expired (a device that was unlinked) may be
//! linked again in place.

use std::path::{Path, PathBuf};

use super::explain::human_secs;
use super::output::{note, say};
use super::{Cli, CliError, DEFAULT_CA, Endpoints, Explain, Loaded};
use crate::error::CredentialRefusal;
use crate::profile::{PROFILE_FILE, Profile, ProfileDir, ProfileError, shell_quote};
use crate::{ClientError, DEFAULT_HTTP, DEFAULT_WS, Registration};

/// The longest device name the server takes.
pub(crate) const MAX_NAME_BYTES: usize = 64;

/// `link`: a code, how long it lasts, and the command for the new device.
pub(crate) async fn link(cli: &Cli, dir: &ProfileDir) -> Result<(), CliError> {
    let loaded = Loaded::new(cli, dir)?;
    let explain = &loaded.explain;
    let code = loaded
        .registration()?
        .create_link_code(&loaded.profile.token)
        .await
        .map_err(|e| link_failed(e, explain))?;
    say(&format!(
        "link code {} expires in {} s",
        code.code, code.expires_in
    ))?;
    let new = free_profile(dir);
    say(&format!(
        "on the new device: {}{} link-accept {}",
        new.command(),
        endpoint_flags(&loaded.endpoints),
        shell_quote(&code.code)
    ))
}

/// `link-accept CODE [--name NAME]`: a new device of the code's account,
/// saved in this profile.
pub(crate) async fn accept(
    cli: &Cli,
    dir: &ProfileDir,
    code: &str,
    name: Option<&str>,
) -> Result<(), CliError> {
    let code = code.trim();
    if code.is_empty() {
        return Err(CliError::new(
            "no link code: give the code `parley-cli [--profile NAME] link` printed on the primary device",
        ));
    }
    let name = match name {
        Some(name) => checked_name(name)?,
        None => default_name(dir),
    };
    let existing = match dir.load() {
        Ok(profile) => Some(profile),
        Err(ProfileError::Missing { .. }) => None,
        Err(e) => {
            return Err(CliError::new(format!(
                "this profile cannot be used ({e}): link the new device under another name, e.g. `{}`",
                accept_command(&free_profile(dir), code)
            )));
        }
    };
    // Linking a profile again (after it was unlinked) talks to the server
    // it already uses, unless flags say otherwise.
    let endpoints = Endpoints::resolve(cli, existing.as_ref());
    let explain = Explain::new(dir, None, &endpoints, existing.is_some()).linked(true);
    let tls = endpoints.tls().map_err(|e| explain.client(e))?;
    let registration = Registration::new(&endpoints.http, tls).map_err(|e| explain.client(e))?;
    if let Some(old) = &existing {
        check_replaceable(&registration, old, dir, code).await?;
    }
    let credential = registration
        .link(code, &name)
        .await
        .map_err(|e| accept_failed(e, &explain))?;
    let ca = std::path::absolute(&endpoints.ca)
        .map_err(|e| CliError::new(format!("cannot resolve {}: {e}", endpoints.ca.display())))?;
    dir.save(&Profile {
        http: endpoints.http,
        ws: endpoints.ws,
        ca,
        phone: String::new(),
        user_id: credential.user_id,
        device_id: credential.device_id,
        token: credential.token,
        linked: true,
        // A new device: its client_msg_id space starts afresh.
        next_client_msg_id: 1,
    })?;
    say(&format!(
        "linked {} device {}",
        credential.user_id, credential.device_id
    ))
}

/// An existing profile is replaced only when the server refuses its
/// credential for good (revoked: unlinked or registered again; expired):
/// then nothing that works is lost. A working one, or one that cannot be
/// checked, is kept, and the new device needs another profile.
async fn check_replaceable(
    registration: &Registration,
    old: &Profile,
    dir: &ProfileDir,
    code: &str,
) -> Result<(), CliError> {
    let elsewhere = || accept_command(&free_profile(dir), code);
    match registration.devices(&old.token).await {
        Ok(_) => Err(CliError::new(format!(
            "this profile already holds a working device (user {}, device {}), which linking would \
             overwrite: link the new device under another name, e.g. `{}` (`parley-cli profile list` \
             shows the names in use)",
            old.user_id,
            old.device_id,
            elsewhere()
        ))),
        Err(e)
            if matches!(
                e.credential_refusal(),
                Some(CredentialRefusal::Revoked | CredentialRefusal::Expired)
            ) =>
        {
            note(&format!(
                "this profile's device (user {}, device {}) no longer works; linking replaces it",
                old.user_id, old.device_id
            ));
            Ok(())
        }
        Err(e) => Err(CliError::new(format!(
            "this profile already holds a device (user {}, device {}) and whether it still works \
             cannot be checked ({e}): link the new device under another name, e.g. `{}`",
            old.user_id,
            old.device_id,
            elsewhere()
        ))),
    }
}

/// `parley-cli --profile NAME link-accept CODE`.
fn accept_command(dir: &ProfileDir, code: &str) -> String {
    format!("{} link-accept {}", dir.command(), shell_quote(code))
}

/// A profile next to `dir` that does not exist yet: `NAME-2`, `NAME-3`, ...
/// (`DIR-2`, ... for `--profile-dir DIR`), so the printed command works on
/// this computer as it is.
pub(crate) fn free_profile(dir: &ProfileDir) -> ProfileDir {
    let taken = |candidate: &ProfileDir| candidate.path().join(PROFILE_FILE).exists();
    let parent = dir.path().parent().unwrap_or(Path::new("."));
    let candidate = |n: u32| -> Option<ProfileDir> {
        match dir.name() {
            Some(name) => ProfileDir::named_in(parent, &format!("{name}-{n}")).ok(),
            None => {
                let mut path = dir.path().as_os_str().to_owned();
                path.push(format!("-{n}"));
                Some(ProfileDir::new(PathBuf::from(path)))
            }
        }
    };
    (2..1000)
        .filter_map(candidate)
        .find(|c| !taken(c))
        .or_else(|| candidate(2))
        .unwrap_or_else(|| dir.clone())
}

/// The flags that point `link-accept` at the server this profile uses,
/// where it is not the laptop default (` --http URL --ws URL --ca PATH`).
fn endpoint_flags(endpoints: &Endpoints) -> String {
    let mut flags = String::new();
    if endpoints.http != DEFAULT_HTTP {
        flags.push_str(&format!(" --http {}", shell_quote(&endpoints.http)));
    }
    if endpoints.ws != DEFAULT_WS {
        flags.push_str(&format!(" --ws {}", shell_quote(&endpoints.ws)));
    }
    let default_ca = std::path::absolute(DEFAULT_CA).ok();
    let ca = std::path::absolute(&endpoints.ca).unwrap_or_else(|_| endpoints.ca.clone());
    if default_ca.as_ref() != Some(&ca) {
        flags.push_str(&format!(" --ca {}", shell_quote(&ca.to_string_lossy())));
    }
    flags
}

/// A name given with `--name`: 1 to 64 bytes once trimmed.
fn checked_name(name: &str) -> Result<String, CliError> {
    let name = name.trim();
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(CliError::new(format!(
            "a device name is 1 to {MAX_NAME_BYTES} bytes (--name {}: {} bytes)",
            shell_quote(name),
            name.len()
        )));
    }
    Ok(name.to_string())
}

/// The profile's name (or its folder's), cut to 64 bytes.
fn default_name(dir: &ProfileDir) -> String {
    let name = dir
        .name()
        .map(str::to_owned)
        .or_else(|| {
            dir.path()
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| "parley-cli".to_string());
    let mut end = name.len().min(MAX_NAME_BYTES);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].trim().to_string()
}

fn link_failed(e: ClientError, explain: &Explain) -> CliError {
    let ClientError::Api { code, .. } = &e else {
        return explain.client(e);
    };
    CliError::new(match code.as_str() {
        "PRIMARY_ONLY" => "only the account's primary device (the one registered by SMS) makes link codes, \
             and this profile is a linked device: run `parley-cli [--profile NAME] link` with the primary's profile"
            .to_string(),
        "DEVICE_LIMIT" => format!(
            "the account already has its maximum number of devices (DEVICE_LIMIT): unlink one first \
             (`{}`, then `{}`)",
            explain.command("devices"),
            explain.command("unlink DEVICE_ID")
        ),
        _ => return explain.client(e),
    })
}

fn accept_failed(e: ClientError, explain: &Explain) -> CliError {
    let ClientError::Api {
        code,
        message,
        retry_after,
        ..
    } = &e
    else {
        return explain.client(e);
    };
    let new_code = "make a new one on the primary device with `parley-cli [--profile NAME] link`";
    CliError::new(match code.as_str() {
        "LINK_CODE_INVALID" => format!(
            "the link code was not accepted (LINK_CODE_INVALID: unknown, expired, already used, or ended by \
             wrong attempts): check it is typed exactly as `link` printed it, or {new_code}"
        ),
        "DEVICE_LIMIT" => "the account already has its maximum number of devices (DEVICE_LIMIT): on the primary \
             device, unlink one (`parley-cli [--profile NAME] devices`, then `... unlink DEVICE_ID`), \
             then make a new code"
            .to_string(),
        "RATE_LIMITED" => format!(
            "too many link attempts (RATE_LIMITED): retry{} (a code allows only a few wrong attempts; \
             if it no longer works, {new_code})",
            retry_after
                .map(|s| format!(" in {}", human_secs(s)))
                .unwrap_or_else(|| " later".into())
        ),
        "INVALID_REQUEST" => format!(
            "the server refused the request ({message}): a device name is 1 to {MAX_NAME_BYTES} bytes (--name NAME)"
        ),
        _ => return explain.client(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, code: &str, retry_after: Option<u64>) -> ClientError {
        ClientError::Api {
            status,
            code: code.into(),
            message: "m".into(),
            attempts_left: None,
            retry_after,
        }
    }

    #[test]
    fn the_suggested_profile_is_free() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let alice = ProfileDir::named_in(tmp.path(), "alice").expect("name");
        assert_eq!(free_profile(&alice).name(), Some("alice-2"));
        let two = ProfileDir::named_in(tmp.path(), "alice-2").expect("name");
        std::fs::create_dir_all(two.path()).expect("mkdir");
        std::fs::write(two.path().join(PROFILE_FILE), "{}").expect("write");
        assert_eq!(free_profile(&alice).name(), Some("alice-3"));
        let folder = ProfileDir::new(tmp.path().join("p"));
        assert_eq!(free_profile(&folder).path(), tmp.path().join("p-2"));
        assert_eq!(
            accept_command(&free_profile(&alice), "K7Q2 ABCD"),
            "parley-cli --profile alice-3 link-accept 'K7Q2 ABCD'"
        );
    }

    #[test]
    fn the_new_device_is_pointed_at_this_server() {
        let laptop = Endpoints {
            http: DEFAULT_HTTP.into(),
            ws: DEFAULT_WS.into(),
            ca: PathBuf::from(DEFAULT_CA),
        };
        assert_eq!(endpoint_flags(&laptop), "");
        let elsewhere = Endpoints {
            http: "https://localhost:9443".into(),
            ws: "wss://localhost:6443/v1/ws".into(),
            ca: PathBuf::from("/srv/data/tls/cert.pem"),
        };
        assert_eq!(
            endpoint_flags(&elsewhere),
            " --http https://localhost:9443 --ws wss://localhost:6443/v1/ws --ca /srv/data/tls/cert.pem"
        );
    }

    #[test]
    fn names_are_checked_and_defaulted() {
        assert_eq!(checked_name("  my laptop "), Ok("my laptop".into()));
        assert!(checked_name(" ").is_err());
        assert!(checked_name(&"x".repeat(65)).is_err());
        assert!(checked_name(&"é".repeat(32)).is_ok(), "64 bytes");
        let named = ProfileDir::named_in(Path::new("/cfg"), "alice-laptop").expect("name");
        assert_eq!(default_name(&named), "alice-laptop");
        let long = ProfileDir::named_in(Path::new("/cfg"), &"é".repeat(40)).expect("name");
        assert_eq!(default_name(&long), "é".repeat(32));
        assert_eq!(default_name(&ProfileDir::new("/tmp/tablet")), "tablet");
    }

    #[test]
    fn link_errors_say_what_to_do() {
        let e = crate::cli::explain::for_tests();
        let primary_only = link_failed(api(403, "PRIMARY_ONLY", None), &e).to_string();
        assert!(primary_only.contains("primary's profile"), "{primary_only}");
        let limit = link_failed(api(409, "DEVICE_LIMIT", None), &e).to_string();
        assert!(
            limit.contains("`parley-cli --profile alice unlink DEVICE_ID`"),
            "{limit}"
        );
        let invalid = accept_failed(api(404, "LINK_CODE_INVALID", None), &e).to_string();
        assert!(
            invalid.contains("expired") && invalid.contains("`parley-cli [--profile NAME] link`"),
            "{invalid}"
        );
        let limited = accept_failed(api(429, "RATE_LIMITED", Some(30)), &e).to_string();
        assert!(limited.contains("retry in 30 s"), "{limited}");
        let full = accept_failed(api(409, "DEVICE_LIMIT", None), &e).to_string();
        assert!(full.contains("unlink one"), "{full}");
    }
}
