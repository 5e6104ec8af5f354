//! Backups of a running node, without stopping it.
//!
//! `POST /admin/backup` on the admin listener (or `parley backup`, which
//! calls it) writes a new directory under the backup directory
//! (`--backup-dir`, default `<data-dir>/backups`) named by the time, laid
//! out like a data directory, so that restoring is copying it into an empty
//! data directory (or starting `parley --data-dir` on it):
//!
//! - `journal.redb`: a consistent snapshot of the journal, taken once
//!   everything acked before the request is committed, copied while the
//!   node keeps committing;
//! - `parley.db`: the SQLite account store, copied with `VACUUM INTO` (one
//!   read transaction: the database as of one instant), taken after the
//!   journal so that every account a queued message names is in it. With
//!   PostgreSQL it is left out: back the database up with its own tools;
//! - `keys/`: the token signing key (without it every phone is logged out);
//! - `tls/`: the generated certificate, when the node uses one.
//!
//! One backup runs at a time. The development SMS outbox is not copied.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use parley_registration::AccountStore;
use parley_router::MemoryRouter;
use serde::Serialize;
use tokio::sync::Mutex;

use crate::datadir;

/// What a backup needs of the node.
#[derive(Clone, Debug)]
pub struct Backups {
    pub router: MemoryRouter,
    pub store: AccountStore,
    pub data_dir: PathBuf,
    /// Where backups go.
    pub dir: PathBuf,
    /// Whether `<data-dir>/tls` holds the node's (generated) certificate.
    pub generated_tls: bool,
    /// Held while a backup runs.
    pub running: Arc<Mutex<()>>,
}

/// What a finished backup holds; the admin endpoint's JSON answer.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub path: PathBuf,
    /// Messages and receipts queued in the journal copy (`None`: memory-only
    /// durability, nothing to copy).
    pub journal_queued: Option<u64>,
    pub journal_sends: Option<u64>,
    /// `sqlite` (copied) or `postgres` (back it up with its own tools).
    pub database: &'static str,
    pub elapsed_ms: u64,
}

/// Why a backup failed; the admin endpoint answers 500 (409 while another
/// runs) with this text.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("a backup is already running")]
    Busy,
    #[error("cannot create {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Journal(#[from] parley_router::JournalError),
    #[error("account database: {0}")]
    Store(#[from] parley_registration::StoreError),
    #[error("cannot copy {path}: {source}")]
    Copy {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Backups {
    /// Writes one backup; see the module documentation.
    pub async fn run(&self) -> Result<Report, BackupError> {
        let _running = self.running.try_lock().map_err(|_| BackupError::Busy)?;
        let started = Instant::now();
        let path = self.dir.join(format!("parley-backup-{}", timestamp()));
        datadir::create_private_dir(&self.dir)
            .and_then(|()| std::fs::create_dir(&path))
            .map_err(|source| BackupError::Create {
                path: path.clone(),
                source,
            })?;
        // The journal first, then the accounts: every user a queued
        // message names registered before the journal snapshot, so is in
        // the database copy too (accounts are never deleted).
        let journal = self
            .router
            .backup_journal(path.join("journal.redb"))
            .await?;
        let sqlite = self.store.backup_to(&path.join("parley.db")).await?;
        copy_dir(&self.data_dir.join("keys"), &path.join("keys"))?;
        if self.generated_tls {
            copy_dir(&self.data_dir.join("tls"), &path.join("tls"))?;
        }
        let report = Report {
            path,
            journal_queued: journal.map(|c| c.queued),
            journal_sends: journal.map(|c| c.sends),
            database: if sqlite { "sqlite" } else { "postgres" },
            elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        };
        tracing::info!(
            path = %report.path.display(),
            journal_queued = ?report.journal_queued,
            database = report.database,
            elapsed_ms = report.elapsed_ms,
            "backup written"
        );
        Ok(report)
    }
}

/// `20261201T093308.123Z`-style UTC time, with milliseconds so that two
/// backups in one second get two names.
fn timestamp() -> String {
    stamp(time::OffsetDateTime::now_utc())
}

fn stamp(at: time::OffsetDateTime) -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] = time::macros::format_description!(
        "[year][month][day]T[hour][minute][second].[subsecond digits:3]Z"
    );
    at.format(FORMAT).expect("a UTC time formats")
}

/// Copies the regular files of `from` (not recursively: `keys/` and `tls/`
/// are flat) into a new private directory `to`.
fn copy_dir(from: &Path, to: &Path) -> Result<(), BackupError> {
    let fail = |path: &Path| {
        let path = path.to_owned();
        move |source| BackupError::Copy { path, source }
    };
    datadir::create_private_dir(to).map_err(fail(to))?;
    for entry in std::fs::read_dir(from).map_err(fail(from))? {
        let entry = entry.map_err(fail(from))?;
        if entry.file_type().map_err(fail(from))?.is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).map_err(fail(&entry.path()))?;
        }
    }
    Ok(())
}

/// `parley backup`: asks the node at `admin` for a backup and prints where
/// it went.
pub async fn request(admin: &str) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let url = format!("{}/admin/backup", crate::stats::admin_base(admin));
    // A large journal takes a while to copy.
    let client = crate::stats::admin_client(std::time::Duration::from_secs(3600))?;
    let response = client.post(&url).send().await.with_context(|| {
        format!(
            "cannot reach {url}: is parley running, with its admin listener there (--admin-addr)?"
        )
    })?;
    let status = response.status();
    let body: serde_json::Value = response
        .json()
        .await
        .with_context(|| format!("{url} answered {status} without a JSON body"))?;
    if !status.is_success() {
        let message = body["error"]["message"]
            .as_str()
            .unwrap_or("no reason given");
        anyhow::bail!("the backup failed ({status}): {message}");
    }
    let path = body["path"].as_str().unwrap_or_default();
    println!("backup written to {path}");
    match body["journal_queued"].as_u64() {
        Some(queued) => println!("journal: {queued} queued messages and receipts"),
        None => println!("journal: none (memory-only durability)"),
    }
    match body["database"].as_str() {
        Some("sqlite") => println!("accounts: parley.db (SQLite)"),
        _ => println!(
            "accounts: not included: they are in PostgreSQL; back it up with pg_dump or your provider's snapshots"
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_gregorian() {
        let day = |days: i64| {
            stamp(time::OffsetDateTime::from_unix_timestamp(days * 86_400).expect("in range"))
        };
        assert_eq!(day(0), "19700101T000000.000Z");
        assert_eq!(day(19_723), "20240101T000000.000Z");
        assert_eq!(day(20_788), "20261201T000000.000Z");
        assert_eq!(day(11_016), "20000229T000000.000Z");
    }
}
