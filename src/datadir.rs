//! The data directory: private, and held by one server at a time.
//!
//! It holds message bodies (the journal), phone numbers (the database),
//! registration codes (the development outbox) and the signing key, so it
//! is mode 0700 and every file in it 0600. The server sets its umask to
//! 0077 at start ([`restrict_umask`]), so every file it or its libraries
//! (SQLite, redb) create is private from the first byte, and it tightens
//! what an older version left readable ([`DataDir::open`]).
//!
//! `parley.pid` holds the server's process id under an exclusive lock
//! (`flock`) for as long as it runs: a second server on the same directory
//! is refused with the first one's pid, and the kernel releases the lock
//! when the process dies, even by `kill -9`, so a stale file never blocks a
//! restart.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// The pid file, inside the data directory.
pub const PID_FILE: &str = "parley.pid";

/// Makes every file and directory this process creates private (0600 and
/// 0700). Call it first thing in `main`.
pub fn restrict_umask() {
    #[cfg(unix)]
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
}

/// Creates `dir` and its missing parents with mode 0700.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// `OpenOptions` whose created file has mode 0600 (whatever the umask).
pub fn private_file() -> OpenOptions {
    let mut options = OpenOptions::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
}

/// Why the data directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error(
        "another parley{} is using the data directory {dir}: stop it first{}, or give this server a data directory of its own (--data-dir)",
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
        pid.map(|p| format!(" (kill {p})")).unwrap_or_default()
    )]
    InUse { dir: PathBuf, pid: Option<u32> },
    #[error("cannot use the data directory {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The data directory of a running server. Dropping it removes the pid file
/// and releases the lock.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    /// Locked for the process's life; the lock is the claim on the directory.
    pid_file: File,
}

impl DataDir {
    /// Creates the directory if needed, claims it (refusing if another
    /// server holds it), writes this process's pid, and makes the directory
    /// and everything in it private.
    pub fn open(path: &Path) -> Result<DataDir, DataDirError> {
        let io = |p: &Path| {
            let p = p.to_owned();
            move |source| DataDirError::Io { path: p, source }
        };
        create_private_dir(path).map_err(io(path))?;
        let pid_path = path.join(PID_FILE);
        let mut pid_file = private_file()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&pid_path)
            .map_err(io(&pid_path))?;
        match pid_file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = pid_file.read_to_string(&mut text);
                return Err(DataDirError::InUse {
                    dir: path.to_owned(),
                    pid: text.trim().parse().ok(),
                });
            }
            Err(TryLockError::Error(source)) => return Err(io(&pid_path)(source)),
        }
        let pid = std::process::id();
        pid_file
            .set_len(0)
            .and_then(|()| pid_file.rewind())
            .and_then(|()| writeln!(pid_file, "{pid}"))
            .and_then(|()| pid_file.sync_all())
            .map_err(io(&pid_path))?;
        let tightened = tighten(path).map_err(io(path))?;
        if tightened > 0 {
            tracing::warn!(
                dir = %path.display(),
                files = tightened,
                "made the data directory private: it was readable by others"
            );
        }
        Ok(DataDir {
            path: path.to_owned(),
            pid_file,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        // Removed while still locked, so no other server can have claimed
        // it in between; the lock goes with the file handle.
        let _ = std::fs::remove_file(self.path.join(PID_FILE));
        let _ = self.pid_file.unlock();
    }
}

/// Makes `dir` 0700, and every directory under it 0700 and every file 0600,
/// where they allow more. Symbolic links are not followed. Returns how many
/// entries were changed.
fn tighten(dir: &Path) -> std::io::Result<usize> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mut changed = 0;
        let mut pending = vec![dir.to_owned()];
        while let Some(dir) = pending.pop() {
            let meta = std::fs::symlink_metadata(&dir)?;
            if meta.permissions().mode() & 0o077 != 0 {
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
                changed += 1;
            }
            for entry in std::fs::read_dir(&dir)? {
                let entry = entry?;
                let meta = entry.metadata()?;
                if meta.is_dir() {
                    pending.push(entry.path());
                } else if meta.is_file() && meta.permissions().mode() & 0o077 != 0 {
                    std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o600))?;
                    changed += 1;
                }
            }
        }
        Ok(changed)
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_claim_is_refused_with_the_first_pid_and_released_on_drop() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("data");
        let held = DataDir::open(&dir).expect("first claim");
        let pid = std::fs::read_to_string(dir.join(PID_FILE)).expect("pid file");
        assert_eq!(pid.trim(), std::process::id().to_string());
        match DataDir::open(&dir) {
            Err(DataDirError::InUse { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("expected InUse, got {other:?}"),
        }
        drop(held);
        assert!(!dir.join(PID_FILE).exists());
        DataDir::open(&dir).expect("claimed again once released");
    }

    #[cfg(unix)]
    #[test]
    fn what_an_older_version_left_readable_is_made_private() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("data");
        std::fs::create_dir_all(dir.join("tls")).expect("dirs");
        std::fs::write(dir.join("outbox.jsonl"), b"{}\n").expect("write");
        std::fs::write(dir.join("tls/cert.pem"), b"x").expect("write");
        for (path, mode) in [
            (dir.clone(), 0o755),
            (dir.join("tls"), 0o755),
            (dir.join("outbox.jsonl"), 0o644),
            (dir.join("tls/cert.pem"), 0o644),
        ] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        }
        let _held = DataDir::open(&dir).expect("claim");
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("tls")), 0o700);
        assert_eq!(mode(&dir.join("outbox.jsonl")), 0o600);
        assert_eq!(mode(&dir.join("tls/cert.pem")), 0o600);
        assert_eq!(mode(&dir.join(PID_FILE)), 0o600);
    }
}
