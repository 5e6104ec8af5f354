//! `lookup`: which of these phone numbers are registered, and as whom.
//!
//! Numbers are normalised here (the server takes E.164 only and silently
//! skips anything else), so a number typed with spaces or dashes is found,
//! and a malformed one is named with the fix instead of vanishing. The
//! output is never silently empty: a note says when nothing matched.

use std::collections::HashSet;

use super::output::{note, say, warn_user};
use super::{Cli, CliError, Loaded};
use crate::phone::normalize;
use crate::profile::ProfileDir;

/// The most numbers the server takes in one request (docs/protocol.md).
const MAX_PER_REQUEST: usize = 1000;

/// The numbers worth asking about, normalised and without duplicates, in
/// the order given; and one warning per argument that is not a number.
pub(crate) fn prepare(args: &[String]) -> (Vec<String>, Vec<String>) {
    let mut phones = Vec::new();
    let mut warnings = Vec::new();
    let mut seen = HashSet::new();
    for arg in args {
        match normalize(arg) {
            Ok(phone) => {
                if seen.insert(phone.clone()) {
                    phones.push(phone);
                }
            }
            Err(e) => warnings.push(format!("skipping {arg:?}: {e}")),
        }
    }
    (phones, warnings)
}

pub(crate) async fn lookup(cli: &Cli, dir: &ProfileDir, args: &[String]) -> Result<(), CliError> {
    let (phones, warnings) = prepare(args);
    for warning in &warnings {
        warn_user(warning);
    }
    if phones.is_empty() {
        return Err(CliError::new(
            "no phone number to look up: write numbers as + then the country code and number, e.g. +15550002222",
        ));
    }
    let loaded = Loaded::new(cli, dir)?;
    let registration = loaded.registration()?;
    let mut found = HashSet::new();
    for batch in phones.chunks(MAX_PER_REQUEST) {
        let contacts = registration
            .lookup(&loaded.profile.token, batch)
            .await
            .map_err(|e| loaded.explain.client(e))?;
        for contact in contacts {
            say(&format!("{} {}", contact.phone, contact.user_id))?;
            found.insert(contact.phone);
        }
    }
    if found.is_empty() {
        note(&if phones.len() == 1 {
            format!("{} is not registered on this server", phones[0])
        } else {
            format!(
                "none of these {} numbers is registered on this server",
                phones.len()
            )
        });
    } else {
        let missing: Vec<&str> = phones
            .iter()
            .filter(|p| !found.contains(*p))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            note(&format!("not registered: {}", missing.join(" ")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_normalised_and_every_skip_is_named() {
        let args: Vec<String> = [
            "+1 555-000-2222",
            "15550002222",
            "+15550002222",
            "(555) 000-1111",
            "bob",
            "+44 7700 900123",
        ]
        .map(String::from)
        .to_vec();
        let (phones, warnings) = prepare(&args);
        assert_eq!(phones, ["+15550002222", "+447700900123"]);
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert!(
            warnings[0]
                .starts_with("skipping \"15550002222\": no country code: write it as +15550002222"),
            "{}",
            warnings[0]
        );
        assert!(warnings[1].contains("+5550001111"), "{}", warnings[1]);
        assert!(warnings[2].contains("\"bob\""), "{}", warnings[2]);
    }
}
