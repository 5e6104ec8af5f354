//! `parley provision`: accounts in bulk, without SMS codes.
//!
//! Benchmarks need tens of thousands of real accounts with valid
//! credentials, quickly; the registration API would send (and rate limit)
//! one SMS per number. This command creates the accounts through the same
//! account store and registration logic as a verified code, signs their
//! tokens with the same key, and writes the credentials to a file. It is an
//! operator's command: it needs the data directory and the database, and is
//! never reachable over the network.

use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use parley_registration::store::now_millis;
use parley_registration::{AccountStore, TokenKeys};
use serde::Serialize;

use crate::Config;

/// Provisioned numbers are `+1999` followed by this many digits.
const SUFFIX_DIGITS: u32 = 8;

/// One credential line. With several devices per account, an account's
/// lines are consecutive, its primary first.
#[derive(Serialize)]
struct Line<'a> {
    phone: &'a str,
    user_id: String,
    device_id: String,
    primary: bool,
    token: String,
}

/// Creates (or re-registers) `count` accounts from suffix `first`, each with
/// `devices` devices (a primary and `devices - 1` linked ones), and writes
/// their credentials to `out`, one line per device. Returns how many
/// accounts were written.
pub async fn provision(
    config: &Config,
    count: u64,
    first: u64,
    devices: usize,
    out: &Path,
) -> anyhow::Result<u64> {
    if devices == 0 {
        bail!("--devices must be at least 1");
    }
    let end = first
        .checked_add(count)
        .context("--first + --count overflows")?;
    if end > 10u64.pow(SUFFIX_DIGITS) {
        bail!("--first + --count must not exceed 10^{SUFFIX_DIGITS}");
    }
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create {}", config.data_dir.display()))?;
    let store = AccountStore::connect(&config.database_url)
        .await
        .context("account database")?;
    let keys =
        Arc::new(TokenKeys::load_or_generate(&config.data_dir.join("keys")).context("token keys")?);
    let phones: Vec<String> = (first..end).map(|i| format!("+1999{i:08}")).collect();
    let registrations = store
        .provision_many(&phones, now_millis())
        .await
        .context("creating accounts")?;

    let users: Vec<u64> = registrations.iter().map(|r| r.user).collect();
    let linked = if devices > 1 {
        store
            .provision_linked(&users, devices - 1, now_millis())
            .await
            .context("linking devices")?
    } else {
        vec![Vec::new(); users.len()]
    };
    let mut file = std::io::BufWriter::new(private_file(out)?);
    for ((phone, r), linked) in phones.iter().zip(&registrations).zip(&linked) {
        let all = std::iter::once((r.device, true)).chain(linked.iter().map(|d| (*d, false)));
        for (device, primary) in all {
            let token = keys
                .issue(r.user, device, r.generation, config.registration.token_ttl)
                .context("signing a token")?;
            let line = Line {
                phone,
                user_id: r.user.to_string(),
                device_id: device.to_string(),
                primary,
                token,
            };
            serde_json::to_writer(&mut file, &line)?;
            file.write_all(b"\n")?;
        }
    }
    file.flush()?;
    store.close().await;
    Ok(count)
}

fn private_file(path: &Path) -> anyhow::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))
}
