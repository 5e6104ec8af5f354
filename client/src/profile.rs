//! The CLI's local state: one folder per registered device.
//!
//! - `profile.json`: endpoints, CA path, phone, ids, the token and the next
//!   `client_msg_id`. Written with mode 0600 because the token is a bearer
//!   secret.
//! - `seen.json`: the last [`SEEN_CAPACITY`] message and receipt ids shown, so
//!   `listen` does not show a redelivered message twice across runs.
//!
//! Writes go to a temporary file that is renamed over the old one, so a crash
//! leaves the old or the new file, never half of one.

use std::collections::VecDeque;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

pub const PROFILE_FILE: &str = "profile.json";
pub const SEEN_FILE: &str = "seen.json";
const LOCK_FILE: &str = "profile.lock";
/// How many message ids (and as many receipt ids) `seen.json` remembers. The
/// server only redelivers what was not acknowledged, at most a delivery
/// window's worth per session, so this is far more than a redelivery spans.
pub const SEEN_CAPACITY: usize = 4096;
/// How long to wait for another `parley-cli` holding the profile lock. The
/// lock is held for one read and one write, so this only runs out when a
/// process died holding it.
const LOCK_WAIT: Duration = Duration::from_secs(3);
/// A lock file older than this was left by a crashed process.
const LOCK_STALE_AFTER: Duration = Duration::from_secs(30);

/// Errors of the profile folder.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("no profile in {0}: run `parley-cli register <phone>` first")]
    Missing(PathBuf),
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("{path} is corrupt: {source}")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{0} is held by another parley-cli; delete it if none is running")]
    Locked(PathBuf),
    #[error("client_msg_id counter exhausted")]
    IdsExhausted,
}

/// A registered device as the CLI remembers it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    /// Registration API base URL, e.g. `https://127.0.0.1:8443`.
    pub http: String,
    /// Gateway URL, e.g. `wss://127.0.0.1:5443/v1/ws`.
    pub ws: String,
    /// The PEM file the client trusts (absolute, so any working directory works).
    pub ca: PathBuf,
    pub phone: String,
    pub user_id: u64,
    pub device_id: u64,
    /// Bearer token; secret.
    pub token: String,
    /// The next `client_msg_id` to use. Ids must never repeat for a device
    /// (the server answers a repeat with the first message's ack and drops
    /// the new one), so this is saved before the id is used. Starts at 1.
    pub next_client_msg_id: u64,
}

impl fmt::Debug for Profile {
    // Debug output can end up in logs: no token, no phone number.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Profile")
            .field("http", &self.http)
            .field("ws", &self.ws)
            .field("ca", &self.ca)
            .field("phone", &"<redacted>")
            .field("user_id", &self.user_id)
            .field("device_id", &self.device_id)
            .field("token", &"<redacted>")
            .field("next_client_msg_id", &self.next_client_msg_id)
            .finish()
    }
}

/// The profile folder.
#[derive(Clone, Debug)]
pub struct ProfileDir {
    dir: PathBuf,
}

impl ProfileDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// `$HOME/.parley`, when `HOME` is set.
    pub fn default_dir() -> Option<PathBuf> {
        std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".parley"))
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Loads `profile.json`; [`ProfileError::Missing`] if there is none.
    pub fn load(&self) -> Result<Profile, ProfileError> {
        let path = self.dir.join(PROFILE_FILE);
        match read_json(&path)? {
            Some(profile) => Ok(profile),
            None => Err(ProfileError::Missing(self.dir.clone())),
        }
    }

    /// Writes `profile.json` (mode 0600, atomically), creating the folder
    /// (mode 0700) if needed.
    pub fn save(&self, profile: &Profile) -> Result<(), ProfileError> {
        self.create_dir()?;
        write_json(&self.dir.join(PROFILE_FILE), profile)
    }

    /// Reserves the next `client_msg_id`: under a lock file (two `send`s may
    /// run at once), reads the counter from disk, saves it incremented, and
    /// only then returns the id. A crash after this wastes an id; no id is
    /// ever handed out twice.
    pub fn take_client_msg_id(&self) -> Result<u64, ProfileError> {
        let _lock = self.lock()?;
        let mut profile = self.load()?;
        // 0 is not a valid id; a hand-edited profile may hold it.
        let id = profile.next_client_msg_id.max(1);
        profile.next_client_msg_id = id.checked_add(1).ok_or(ProfileError::IdsExhausted)?;
        self.save(&profile)?;
        Ok(id)
    }

    /// Loads `seen.json`, or an empty store if there is none yet.
    pub fn load_seen(&self) -> Result<SeenIds, ProfileError> {
        let seen: Option<SeenIds> = read_json(&self.dir.join(SEEN_FILE))?;
        let mut seen = seen.unwrap_or_default();
        seen.trim();
        Ok(seen)
    }

    pub fn save_seen(&self, seen: &SeenIds) -> Result<(), ProfileError> {
        self.create_dir()?;
        write_json(&self.dir.join(SEEN_FILE), seen)
    }

    fn create_dir(&self) -> Result<(), ProfileError> {
        let mut builder = fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        builder
            .create(&self.dir)
            .map_err(|source| ProfileError::Write {
                path: self.dir.clone(),
                source,
            })
    }

    /// An exclusive lock: a file created with `create_new`, which is atomic
    /// on every file system we care about (std's `File::lock` is newer than
    /// the workspace's minimum Rust).
    fn lock(&self) -> Result<LockFile, ProfileError> {
        self.create_dir()?;
        let path = self.dir.join(LOCK_FILE);
        let started = std::time::Instant::now();
        loop {
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(_) => return Ok(LockFile { path }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    if is_stale(&path) {
                        // Whoever wins the removal race re-creates it next loop.
                        let _ = fs::remove_file(&path);
                        continue;
                    }
                    if started.elapsed() > LOCK_WAIT {
                        return Err(ProfileError::Locked(path));
                    }
                    sleep(Duration::from_millis(10));
                }
                Err(source) => return Err(ProfileError::Write { path, source }),
            }
        }
    }
}

fn is_stale(path: &Path) -> bool {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|modified| SystemTime::now().duration_since(modified).ok())
        .is_some_and(|age| age > LOCK_STALE_AFTER)
}

/// Removes the lock file when the critical section ends, even on error.
struct LockFile {
    path: PathBuf,
}

impl Drop for LockFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Ids already shown, oldest first, at most [`SEEN_CAPACITY`] of each kind.
///
/// A `VecDeque` scanned linearly: a few thousand `u64`s are scanned faster
/// than a hash set is maintained, and the order tells which id to forget.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenIds {
    messages: VecDeque<u64>,
    receipts: VecDeque<u64>,
}

impl SeenIds {
    /// Records a delivered message id; `false` if it was already seen.
    pub fn insert_message(&mut self, id: u64) -> bool {
        insert_bounded(&mut self.messages, id)
    }

    /// Records a receipt id; `false` if it was already seen.
    pub fn insert_receipt(&mut self, id: u64) -> bool {
        insert_bounded(&mut self.receipts, id)
    }

    pub fn contains_message(&self, id: u64) -> bool {
        self.messages.contains(&id)
    }

    fn trim(&mut self) {
        for ids in [&mut self.messages, &mut self.receipts] {
            while ids.len() > SEEN_CAPACITY {
                ids.pop_front();
            }
        }
    }
}

fn insert_bounded(ids: &mut VecDeque<u64>, id: u64) -> bool {
    if ids.contains(&id) {
        return false;
    }
    if ids.len() >= SEEN_CAPACITY {
        ids.pop_front();
    }
    ids.push_back(id);
    true
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, ProfileError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ProfileError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| ProfileError::Corrupt {
            path: path.to_path_buf(),
            source,
        })
}

/// Writes `value` as JSON to `path` through a temporary file, mode 0600,
/// synced before the rename so the rename never exposes an empty file.
fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), ProfileError> {
    let tmp = path.with_extension("json.tmp");
    let write_err = |source| ProfileError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut json = serde_json::to_vec_pretty(value).map_err(|e| write_err(e.into()))?;
    json.push(b'\n');
    // A leftover temporary file may have other permissions; `mode` below
    // only applies to a file this call creates.
    let _ = fs::remove_file(&tmp);
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file: File = options.open(&tmp).map_err(write_err)?;
    file.write_all(&json).map_err(write_err)?;
    file.sync_all().map_err(write_err)?;
    drop(file);
    fs::rename(&tmp, path).map_err(write_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile() -> Profile {
        Profile {
            http: "https://127.0.0.1:8443".into(),
            ws: "wss://127.0.0.1:5443/v1/ws".into(),
            ca: PathBuf::from("/data/tls/cert.pem"),
            phone: "+15551234567".into(),
            user_id: 42,
            device_id: 7,
            token: "header.payload.signature".into(),
            next_client_msg_id: 1,
        }
    }

    #[test]
    fn save_then_load() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = ProfileDir::new(tmp.path().join("nested/profile"));
        assert!(matches!(dir.load(), Err(ProfileError::Missing(_))));
        dir.save(&profile()).expect("save");
        assert_eq!(dir.load().expect("load"), profile());
    }

    #[cfg(unix)]
    #[test]
    fn profile_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = ProfileDir::new(tmp.path().join("p"));
        dir.save(&profile()).expect("save");
        let mode = |p: &Path| fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path().join(PROFILE_FILE)), 0o600);
        assert_eq!(mode(dir.path()), 0o700);
    }

    #[test]
    fn client_msg_ids_are_persisted_and_never_reused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = ProfileDir::new(tmp.path());
        dir.save(&profile()).expect("save");
        assert_eq!(dir.take_client_msg_id().expect("id"), 1);
        assert_eq!(dir.take_client_msg_id().expect("id"), 2);
        // A fresh handle (a new process) continues from disk.
        let again = ProfileDir::new(tmp.path());
        assert_eq!(again.load().expect("load").next_client_msg_id, 3);
        assert_eq!(again.take_client_msg_id().expect("id"), 3);
        // The lock is released after each reservation.
        assert!(!tmp.path().join(LOCK_FILE).exists());
    }

    #[test]
    fn zero_counter_starts_at_one() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = ProfileDir::new(tmp.path());
        dir.save(&Profile {
            next_client_msg_id: 0,
            ..profile()
        })
        .expect("save");
        assert_eq!(dir.take_client_msg_id().expect("id"), 1);
    }

    #[test]
    fn concurrent_reservations_get_distinct_ids() {
        let tmp = tempfile::tempdir().expect("tempdir");
        ProfileDir::new(tmp.path()).save(&profile()).expect("save");
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let dir = ProfileDir::new(tmp.path());
                std::thread::spawn(move || {
                    (0..10)
                        .map(|_| dir.take_client_msg_id().expect("id"))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut ids: Vec<u64> = threads
            .into_iter()
            .flat_map(|t| t.join().expect("thread"))
            .collect();
        ids.sort_unstable();
        assert_eq!(ids, (1..=40).collect::<Vec<_>>());
    }

    #[test]
    fn held_lock_times_out() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = ProfileDir::new(tmp.path());
        dir.save(&profile()).expect("save");
        let _held = dir.lock().expect("first lock");
        assert!(matches!(
            dir.take_client_msg_id(),
            Err(ProfileError::Locked(_))
        ));
    }

    #[test]
    fn corrupt_profile_is_reported() {
        let tmp = tempfile::tempdir().expect("tempdir");
        fs::write(tmp.path().join(PROFILE_FILE), b"{ not json").expect("write");
        let err = ProfileDir::new(tmp.path()).load().expect_err("corrupt");
        assert!(matches!(err, ProfileError::Corrupt { .. }), "{err:?}");
    }

    #[test]
    fn debug_hides_secrets() {
        let shown = format!("{:?}", profile());
        assert!(!shown.contains("signature"), "{shown}");
        assert!(!shown.contains("5551234567"), "{shown}");
    }

    #[test]
    fn seen_ids_deduplicate_across_saves_and_stay_bounded() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = ProfileDir::new(tmp.path());
        let mut seen = dir.load_seen().expect("empty store");
        assert!(seen.insert_message(10));
        assert!(!seen.insert_message(10));
        assert!(seen.insert_receipt(10), "receipt ids are a separate space");
        dir.save_seen(&seen).expect("save");

        let mut seen = dir.load_seen().expect("load");
        assert!(!seen.insert_message(10));
        for id in 0..SEEN_CAPACITY as u64 {
            seen.insert_message(1_000 + id);
        }
        assert!(!seen.contains_message(10), "oldest id forgotten");
        assert!(seen.contains_message(1_000 + SEEN_CAPACITY as u64 - 1));
        assert_eq!(seen.messages.len(), SEEN_CAPACITY);
    }
}
