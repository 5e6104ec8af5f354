//! Which profile a run uses, and the commands about profiles: `whoami`,
//! `profile set`, `profile list`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::output::say;
use super::{Cli, CliError, Endpoints, Explain};
use crate::profile::{DEFAULT_PROFILE, ProfileDir, ProfileError, list_profiles, profiles_dir};
use crate::registration::validate_http_url;
use crate::session::validate_ws_url;
use crate::tls_config_from_file;

/// The profile of this run. Flags win over the environment; the two ways of
/// naming one (`--profile NAME`, `--profile-dir DIR`) exclude each other
/// (clap refuses both flags; both variables is refused here, rather than
/// one silently winning). Without any, the profile is `default`.
///
/// `profiles_dir` is where named profiles live (called only for a named
/// one, so `--profile-dir` works without `HOME`).
pub(crate) fn choose(
    flag_name: Option<&str>,
    flag_dir: Option<&Path>,
    env_name: Option<OsString>,
    env_dir: Option<OsString>,
    profiles_dir: impl FnOnce() -> Result<PathBuf, ProfileError>,
) -> Result<ProfileDir, CliError> {
    let named = |name: &str| -> Result<ProfileDir, CliError> {
        Ok(ProfileDir::named_in(&profiles_dir()?, name)?)
    };
    if let Some(dir) = flag_dir {
        return Ok(ProfileDir::new(dir));
    }
    if let Some(name) = flag_name {
        return named(name);
    }
    let env_name = env_name.filter(|v| !v.is_empty());
    let env_dir = env_dir.filter(|v| !v.is_empty());
    match (env_name, env_dir) {
        (Some(_), Some(_)) => Err(CliError::new(
            "PARLEY_PROFILE and PARLEY_PROFILE_DIR are both set: unset one, or pass --profile or --profile-dir",
        )),
        (None, Some(dir)) => Ok(ProfileDir::new(PathBuf::from(dir))),
        (Some(name), None) => {
            let name = name
                .into_string()
                .map_err(|name| CliError::new(format!("PARLEY_PROFILE is not UTF-8: {name:?}")))?;
            named(&name)
        }
        (None, None) => named(DEFAULT_PROFILE),
    }
}

/// `whoami`: the identity lines first (stable), then where it connects.
pub(crate) fn whoami(dir: &ProfileDir) -> Result<(), CliError> {
    let profile = dir.load()?;
    say(&format!("user_id {}", profile.user_id))?;
    say(&format!("device_id {}", profile.device_id))?;
    // A linked device never knew the account's number.
    if !profile.phone.is_empty() {
        say(&format!("phone {}", profile.phone))?;
    }
    say(&format!("profile {}", dir.path().display()))?;
    say(&format!("http {}", profile.http))?;
    say(&format!("ws {}", profile.ws))?;
    say(&format!("ca {}", profile.ca.display()))
}

/// `profile set`: saves the endpoint flags typed on this command line into
/// the profile, after checking each is usable (a CA file that holds no
/// certificate is refused, not saved).
pub(crate) fn set(cli: &Cli, dir: &ProfileDir) -> Result<(), CliError> {
    let typed = cli.typed;
    if !(typed.http || typed.ws || typed.ca) {
        return Err(CliError::new(format!(
            "nothing to set: give --http URL, --ws URL and/or --ca PATH, e.g. `{} profile set --ca <data-dir>/tls/cert.pem`",
            dir.command()
        )));
    }
    let mut profile = dir.load()?;
    let mut lines = Vec::new();
    if let (true, Some(http)) = (typed.http, &cli.http) {
        validate_http_url(http).map_err(|e| CliError::new(e.to_string()))?;
        profile.http = http.trim_end_matches('/').to_string();
        lines.push(format!("http {}", profile.http));
    }
    if let (true, Some(ws)) = (typed.ws, &cli.ws) {
        validate_ws_url(ws).map_err(|e| CliError::new(e.to_string()))?;
        profile.ws = ws.clone();
        lines.push(format!("ws {}", profile.ws));
    }
    if let (true, Some(ca)) = (typed.ca, &cli.ca) {
        let ca = std::path::absolute(ca)
            .map_err(|e| CliError::new(format!("cannot resolve {}: {e}", ca.display())))?;
        if let Err(e) = tls_config_from_file(&ca) {
            let endpoints = Endpoints {
                ca: ca.clone(),
                ..Endpoints::resolve(cli, Some(&profile))
            };
            // Not saved, so `profile set` is not the fix to offer.
            let explain =
                Explain::new(dir, Some(&profile.phone), &endpoints, false).linked(profile.linked);
            return Err(explain.client(e));
        }
        profile.ca = ca;
        lines.push(format!("ca {}", profile.ca.display()));
    }
    dir.save(&profile)?;
    for line in lines {
        say(&line)?;
    }
    Ok(())
}

/// `profile list`: the named profiles, one per line.
pub(crate) fn list() -> Result<(), CliError> {
    for name in list_profiles(&profiles_dir()?)? {
        say(&name)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_and_the_default_is_named_default() {
        let os = |s: &str| Some(OsString::from(s));
        let root = || Ok(PathBuf::from("/cfg/parley/profiles"));
        let choose = |name, dir, env_name, env_dir| choose(name, dir, env_name, env_dir, root);

        let dir = choose(None, Some(Path::new("/x/p")), os("bob"), None).expect("dir flag");
        assert_eq!((dir.path(), dir.name()), (Path::new("/x/p"), None));
        let dir = choose(None, None, None, os("/y/p")).expect("dir env");
        assert_eq!((dir.path(), dir.name()), (Path::new("/y/p"), None));
        let dir = choose(Some("alice"), None, os("bob"), os("/y/p")).expect("name flag");
        assert_eq!(
            dir.path(),
            Path::new("/cfg/parley/profiles/alice"),
            "the flag wins"
        );
        let dir = choose(None, None, os("carol"), None).expect("name env");
        assert_eq!(dir.path(), Path::new("/cfg/parley/profiles/carol"));
        for (env_name, env_dir) in [(None, None), (os(""), os(""))] {
            let dir = choose(None, None, env_name, env_dir).expect("default");
            assert_eq!(
                dir.name(),
                Some(DEFAULT_PROFILE),
                "empty variables are unset"
            );
            assert_eq!(dir.path(), Path::new("/cfg/parley/profiles/default"));
        }

        assert!(
            choose(None, None, os("bob"), os("/y/p")).is_err(),
            "both variables"
        );
        assert!(
            choose(Some("../x"), None, None, None).is_err(),
            "invalid name"
        );
        assert!(
            choose(None, None, os("a/b"), None).is_err(),
            "invalid name from env"
        );

        // Without a configuration folder, only --profile-dir works.
        let nowhere = || Err(ProfileError::NoConfigDir);
        assert!(super::choose(None, None, None, None, nowhere).is_err());
        assert!(super::choose(None, Some(Path::new("/x")), None, None, nowhere).is_ok());
    }
}
