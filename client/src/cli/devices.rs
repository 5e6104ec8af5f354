//! `devices` and `unlink`: the account's devices; and the device lists a
//! profile keeps for `send --per-device`.

use tracing::warn;

use super::output::{device_line, note, say};
use super::{Cli, CliError, Explain, Loaded};
use crate::profile::{KnownDevices, ProfileDir};
use crate::{ClientError, Fanout};

/// `devices`: one line per device of the account, as the server lists it.
pub(crate) async fn list(cli: &Cli, dir: &ProfileDir) -> Result<(), CliError> {
    let loaded = Loaded::new(cli, dir)?;
    let devices = loaded
        .registration()?
        .devices(&loaded.profile.token)
        .await
        .map_err(|e| loaded.explain.client(e))?;
    for device in &devices {
        say(&device_line(device, loaded.profile.device_id))?;
    }
    // A fresh list of this account's devices: the next `send --per-device`
    // uses it.
    let ids = devices.iter().map(|d| d.device_id).collect();
    remember(dir, |known| known.set(loaded.profile.user_id, ids));
    Ok(())
}

/// `unlink DEVICE_ID`: removes a device from the account.
pub(crate) async fn unlink(cli: &Cli, dir: &ProfileDir, arg: &str) -> Result<(), CliError> {
    let loaded = Loaded::new(cli, dir)?;
    let explain = &loaded.explain;
    let device_id = parse_device_id(arg, &explain.command("devices"))?;
    let own = &loaded.profile;
    loaded
        .registration()?
        .unlink(&own.token, device_id)
        .await
        .map_err(|e| unlink_failed(e, device_id, own.device_id, explain))?;
    say(&format!("unlinked {device_id}"))?;
    remember(dir, |known| known.remove_device(own.user_id, device_id));
    if device_id == own.device_id {
        note(&format!(
            "that was this device: this profile's credential no longer works; to link it again, {}",
            explain.relink()
        ));
    }
    Ok(())
}

/// A device id: digits, as `devices` prints them.
fn parse_device_id(arg: &str, devices: &str) -> Result<u64, CliError> {
    let digits = !arg.is_empty() && arg.bytes().all(|b| b.is_ascii_digit());
    digits.then(|| arg.parse().ok()).flatten().ok_or_else(|| {
        CliError::new(format!(
            "{arg:?} is not a device id (a number, from `{devices}`)"
        ))
    })
}

fn unlink_failed(e: ClientError, device_id: u64, own_device: u64, explain: &Explain) -> CliError {
    let ClientError::Api { code, .. } = &e else {
        return explain.client(e);
    };
    let devices = explain.command("devices");
    CliError::new(match code.as_str() {
        "FORBIDDEN" => format!(
            "only the account's primary device can unlink another device (a linked device may unlink \
             only itself: `{}`): run `parley-cli [--profile NAME] unlink {device_id}` with the primary's profile",
            explain.command(&format!("unlink {own_device}"))
        ),
        "PRIMARY_DEVICE" => format!(
            "device {device_id} is the account's primary device, which cannot be unlinked (`{devices}` \
             lists the others); to move the account to a new phone, register its number there"
        ),
        "NO_SUCH_DEVICE" => format!(
            "this account has no device {device_id} (already unlinked?): `{devices}` lists its devices"
        ),
        _ => return explain.client(e),
    })
}

/// The devices a message to `to_user` goes to, for `send --per-device`:
/// from the lists this profile keeps, fetching (and keeping) those it does
/// not have yet. A kept list may be stale; the server says so, and
/// [`remember_fanout`] keeps the fixed one.
pub(crate) async fn fanout_for(
    loaded: &Loaded,
    dir: &ProfileDir,
    to_user: u64,
) -> Result<Fanout, CliError> {
    let own = &loaded.profile;
    let known = dir.load_known_devices().unwrap_or_else(|e| {
        warn!(error = %e, "starting with no known device lists");
        KnownDevices::default()
    });
    let mut fetched = Vec::new();
    let mut registration = None;
    let mut devices_of = async |user: u64| -> Result<Vec<u64>, CliError> {
        if let Some(devices) = known.get(user) {
            return Ok(devices.to_vec());
        }
        let registration = match &registration {
            Some(registration) => registration,
            None => registration.insert(loaded.registration()?),
        };
        let devices = registration
            .user_devices(&own.token, user)
            .await
            .map_err(|e| match &e {
                ClientError::Api { code, .. } if code == "NO_SUCH_USER" => CliError::new(format!(
                    "no user has the id {user} (NO_SUCH_USER): find user ids with `{} <phone>`",
                    loaded.explain.command("lookup")
                )),
                _ => loaded.explain.client(e),
            })?;
        fetched.push((user, devices.clone()));
        Ok(devices)
    };
    let to_devices = devices_of(to_user).await?;
    let own_devices = if to_user == own.user_id {
        to_devices.clone()
    } else {
        devices_of(own.user_id).await?
    };
    if !fetched.is_empty() {
        remember(dir, |known| {
            for (user, devices) in fetched {
                known.set(user, devices);
            }
        });
    }
    Ok(Fanout::new(
        to_user,
        to_devices,
        own.user_id,
        own.device_id,
        own_devices,
    ))
}

/// Keeps the lists of a fanout the server accepted (or fixed).
pub(crate) fn remember_fanout(dir: &ProfileDir, fanout: &Fanout, own_user: u64) {
    remember(dir, |known| {
        known.set(fanout.to_user(), fanout.devices_of(fanout.to_user()));
        if fanout.to_user() != own_user {
            known.set(own_user, fanout.devices_of(own_user));
        }
    });
}

/// A lost update of `devices.json` costs one `DEVICES_CHANGED` later, not
/// a failed command.
fn remember(dir: &ProfileDir, change: impl FnOnce(&mut KnownDevices)) {
    if let Err(e) = dir.update_known_devices(change) {
        warn!(error = %e, "cannot save the known device lists");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, code: &str) -> ClientError {
        ClientError::Api {
            status,
            code: code.into(),
            message: "m".into(),
            attempts_left: None,
            retry_after: None,
        }
    }

    #[test]
    fn unlink_errors_say_what_to_do() {
        let e = crate::cli::explain::for_tests();
        let text = |err| unlink_failed(err, 11, 12, &e).to_string();
        let forbidden = text(api(403, "FORBIDDEN"));
        assert!(
            forbidden.contains("`parley-cli --profile alice unlink 12`")
                && forbidden.contains("unlink 11` with the primary's profile"),
            "{forbidden}"
        );
        let primary = text(api(409, "PRIMARY_DEVICE"));
        assert!(
            primary.contains("cannot be unlinked")
                && primary.contains("`parley-cli --profile alice devices`"),
            "{primary}"
        );
        let missing = text(api(404, "NO_SUCH_DEVICE"));
        assert!(missing.contains("no device 11"), "{missing}");
    }

    #[test]
    fn device_ids_are_numbers() {
        assert_eq!(parse_device_id("42", "d"), Ok(42));
        for bad in ["", "-1", "x", "+4", "99999999999999999999"] {
            let err = parse_device_id(bad, "parley-cli devices").expect_err(bad);
            assert!(err.to_string().contains("`parley-cli devices`"), "{err}");
        }
    }
}
