//! The accounts a run logs in as.
//!
//! Real runs use accounts made by `parley provision` (real accounts in the
//! real store, tokens signed by the server's key), read from its JSON-lines
//! file. The echo server checks no token, so the floor scenario makes up
//! users.

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};
use serde::Deserialize;

/// One provisioned account: what a session needs.
#[derive(Clone, Deserialize)]
pub struct User {
    #[serde(deserialize_with = "decimal")]
    pub user_id: u64,
    pub token: String,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a token.
        f.debug_struct("User")
            .field("user_id", &self.user_id)
            .finish_non_exhaustive()
    }
}

fn decimal<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

/// Reads users `range` (line numbers) of a `parley provision` output file.
pub fn load(path: &Path, range: std::ops::Range<usize>) -> anyhow::Result<Vec<User>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut users = Vec::with_capacity(range.len());
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        if i >= range.end {
            break;
        }
        let line = line?;
        if i >= range.start {
            users.push(
                serde_json::from_str(&line).with_context(|| {
                    format!("{} line {}: not a credential", path.display(), i + 1)
                })?,
            );
        }
    }
    if users.len() != range.len() {
        bail!(
            "{} holds {} users, the run needs {}",
            path.display(),
            range.start + users.len(),
            range.end
        );
    }
    Ok(users)
}

/// Users for the echo server, which checks no token.
pub fn synthetic(range: std::ops::Range<usize>) -> Vec<User> {
    range
        .map(|i| User {
            user_id: i as u64 + 1,
            token: "floor".into(),
        })
        .collect()
}

/// How many credential lines a file has (0 when it does not exist).
pub fn count(path: &Path) -> usize {
    std::fs::File::open(path)
        .map(|f| std::io::BufReader::new(f).lines().count())
        .unwrap_or(0)
}

/// Makes sure `<data_dir>/bench-users.jsonl` (`bench-users-d<D>.jsonl` for
/// `devices` D > 1) holds at least `n` credential lines, running `parley
/// --data-dir DIR provision --count n/D --devices D --out FILE` when it does
/// not (or when `fresh`). Returns the file. With several devices, an
/// account's lines are consecutive, its primary first.
pub fn ensure_provisioned(
    parley: &Path,
    data_dir: &Path,
    n: usize,
    devices: usize,
    fresh: bool,
) -> anyhow::Result<PathBuf> {
    let out = match devices {
        1 => data_dir.join("bench-users.jsonl"),
        d => data_dir.join(format!("bench-users-d{d}.jsonl")),
    };
    if !fresh && count(&out) >= n {
        return Ok(out);
    }
    let accounts = n.div_ceil(devices.max(1));
    eprintln!(
        "provisioning {accounts} accounts of {devices} devices with {}",
        parley.display()
    );
    let mut command = Command::new(parley);
    command
        .arg("--data-dir")
        .arg(data_dir)
        .args(["provision", "--count", &accounts.to_string()]);
    // Only when needed, so that a release from before `--devices` can be
    // provisioned (and measured) by this generator too.
    if devices > 1 {
        command.args(["--devices", &devices.to_string()]);
    }
    let status = command
        .arg("--out")
        .arg(&out)
        .status()
        .with_context(|| format!("cannot run {}", parley.display()))?;
    if !status.success() {
        bail!("parley provision failed: {status}");
    }
    Ok(out)
}

/// `parley` next to this binary (both are built into `target/release`),
/// else from `PATH`.
pub fn default_parley_bin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("parley")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("parley"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_provision_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("users.jsonl");
        let lines: String = (0..5)
            .map(|i| {
                format!(
                    "{{\"phone\":\"+19990000000{i}\",\"user_id\":\"{}\",\"device_id\":\"9\",\"token\":\"t{i}\"}}\n",
                    4611686018427387904u64 + i
                )
            })
            .collect();
        std::fs::write(&path, lines).expect("write");
        assert_eq!(count(&path), 5);
        let users = load(&path, 1..3).expect("loads");
        assert_eq!(users[0].user_id, 4611686018427387905);
        assert_eq!(users[1].token, "t2");
        assert!(load(&path, 3..9).is_err(), "too few users is an error");
        assert!(
            !format!("{:?}", users[0]).contains("t1"),
            "tokens never printed"
        );
    }
}
