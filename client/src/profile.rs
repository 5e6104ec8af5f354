//! The CLI's local state: one folder per registered device, a *profile*.
//!
//! Where profiles live: `--profile NAME` is
//! `$XDG_CONFIG_HOME/parley/profiles/NAME/` (`~/.config/parley/profiles/NAME/`
//! when `XDG_CONFIG_HOME` is unset), the default profile is named
//! [`DEFAULT_PROFILE`], and `--profile-dir DIR` is any folder. See
//! [`ProfileDir::named`] and [`ProfileDir::new`].
//!
//! What a profile holds:
//! - `profile.json`: endpoints, CA path, phone, ids, the token and the next
//!   `client_msg_id`.
//! - `seen.json`: the last [`SEEN_CAPACITY`] message and receipt ids shown, so
//!   `listen` does not show a redelivered message twice across runs.
//! - `sent.json`: the recipient of each of the last
//!   [`SENT_CAPACITY`](crate::receipts::SENT_CAPACITY) messages sent, so a
//!   receipt is believed only from the user its message went to
//!   ([`crate::receipts`]). Copies of messages this account sent from its
//!   other devices are recorded too.
//! - `devices.json`: the device lists of the last [`KNOWN_DEVICES_CAPACITY`]
//!   users this profile sent to with one envelope per device, and its own
//!   account's ([`KnownDevices`]), kept until the server says one is stale.
//! - `uploads.json`: the unfinished uploads of `send --file` ([`PendingUploads`]),
//!   so that the same command run again resumes where the server's copy
//!   ends instead of starting over.
//!
//! The folder is mode 0700 and the files 0600: the token is a bearer secret.
//! Writes go to a temporary file that is renamed over the old one, so a crash
//! leaves the old or the new file, never half of one.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::receipts::SentMessages;

pub const PROFILE_FILE: &str = "profile.json";
pub const SEEN_FILE: &str = "seen.json";
pub const SENT_FILE: &str = "sent.json";
pub const DEVICES_FILE: &str = "devices.json";
pub const UPLOADS_FILE: &str = "uploads.json";
/// How many unfinished uploads `uploads.json` remembers: one per file a
/// person is sending at once, a few at most; the oldest is forgotten first
/// (its upload expires on the server within a day anyway).
pub const PENDING_UPLOADS_CAPACITY: usize = 32;
/// An unfinished upload older than this is forgotten: the server drops
/// unfinished uploads after 24 hours.
pub const PENDING_UPLOAD_LIFETIME_SECS: u64 = 24 * 60 * 60;
/// How many users' device lists `devices.json` keeps: a list is a handful
/// of ids, and a stale or forgotten one costs one extra round trip.
pub const KNOWN_DEVICES_CAPACITY: usize = 256;
const LOCK_FILE: &str = "profile.lock";
/// The profile used when neither `--profile` nor `--profile-dir` is given.
pub const DEFAULT_PROFILE: &str = "default";
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
    /// No `profile.json` yet. The message says how to make one; `legacy`
    /// names a folder an older `parley-cli` may have used instead.
    #[error(
        "no profile in {}: register first with `{command} register <phone>`{}",
        dir.display(),
        legacy.as_deref().map(|l| format!("; {l}")).unwrap_or_default()
    )]
    Missing {
        dir: PathBuf,
        /// `parley-cli` with the flag that selects this profile.
        command: String,
        legacy: Option<String>,
    },
    #[error(
        "invalid profile name {0:?}: use a plain name such as `alice` (not empty, no `/`, not `.` or `..`), or --profile-dir DIR for a folder"
    )]
    InvalidName(String),
    #[error(
        "cannot tell where your configuration folder is (neither XDG_CONFIG_HOME nor HOME is set): use --profile-dir DIR"
    )]
    NoConfigDir,
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
    /// The number it registered with; empty for a linked device, which
    /// never knew it.
    pub phone: String,
    pub user_id: u64,
    pub device_id: u64,
    /// Bearer token; secret.
    pub token: String,
    /// A device linked to its account with a code from the primary
    /// (`link-accept`), not registered by SMS: when its credential stops
    /// working, it is linked again rather than registered. Absent (false)
    /// in profiles written before devices could be linked.
    #[serde(default)]
    pub linked: bool,
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
            .field("linked", &self.linked)
            .field("next_client_msg_id", &self.next_client_msg_id)
            .finish()
    }
}

/// The profile folder, and how the user named it (so that messages can
/// give the exact command to run).
#[derive(Clone, Debug)]
pub struct ProfileDir {
    dir: PathBuf,
    /// `Some(name)` for a named profile, `None` for `--profile-dir`.
    name: Option<String>,
}

/// Checks a profile name: it becomes one path component under the profiles
/// folder, so it must not be empty, contain a separator, or climb out.
pub fn validate_name(name: &str) -> Result<(), ProfileError> {
    let bad = name.is_empty()
        || name == "."
        || name == ".."
        || name.contains(['/', '\\'])
        || name.chars().any(char::is_control);
    if bad {
        Err(ProfileError::InvalidName(name.to_string()))
    } else {
        Ok(())
    }
}

/// The user's configuration folder per the XDG base directory spec:
/// `$XDG_CONFIG_HOME` if it is set to an absolute path, else `$HOME/.config`.
pub fn config_dir(xdg_config_home: Option<&OsStr>, home: Option<&OsStr>) -> Option<PathBuf> {
    // The spec says a relative XDG_CONFIG_HOME is invalid and to be ignored.
    let xdg = xdg_config_home
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .filter(|p| p.is_absolute());
    xdg.or_else(|| {
        home.filter(|v| !v.is_empty())
            .map(|home| PathBuf::from(home).join(".config"))
    })
}

/// `<config dir>/parley/profiles`, where named profiles live.
pub fn profiles_dir() -> Result<PathBuf, ProfileError> {
    let config = config_dir(
        std::env::var_os("XDG_CONFIG_HOME").as_deref(),
        std::env::var_os("HOME").as_deref(),
    )
    .ok_or(ProfileError::NoConfigDir)?;
    Ok(config.join("parley").join("profiles"))
}

/// The names of the profiles in `profiles_dir` (folders holding a
/// `profile.json`), sorted.
pub fn list_profiles(profiles_dir: &Path) -> Result<Vec<String>, ProfileError> {
    let entries = match fs::read_dir(profiles_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(ProfileError::Read {
                path: profiles_dir.to_path_buf(),
                source,
            });
        }
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().join(PROFILE_FILE).is_file())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    Ok(names)
}

impl ProfileDir {
    /// An explicit folder (`--profile-dir DIR`).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            name: None,
        }
    }

    /// The profile `name` in the user's configuration folder
    /// (`$XDG_CONFIG_HOME/parley/profiles/NAME`).
    pub fn named(name: &str) -> Result<Self, ProfileError> {
        Self::named_in(&profiles_dir()?, name)
    }

    /// The profile `name` under `profiles_dir`.
    pub fn named_in(profiles_dir: &Path, name: &str) -> Result<Self, ProfileError> {
        validate_name(name)?;
        Ok(Self {
            dir: profiles_dir.join(name),
            name: Some(name.to_string()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The profile's name; `None` for an explicit folder.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// `parley-cli` with the flag that selects this profile, to build
    /// exact commands for messages: `parley-cli --profile bob`, plain
    /// `parley-cli` for the default profile, `parley-cli --profile-dir DIR`.
    pub fn command(&self) -> String {
        match &self.name {
            Some(name) if name == DEFAULT_PROFILE => "parley-cli".to_string(),
            Some(name) => format!("parley-cli --profile {}", shell_quote(name)),
            None => format!(
                "parley-cli --profile-dir {}",
                shell_quote(&self.dir.to_string_lossy())
            ),
        }
    }

    /// Where an older `parley-cli` kept this profile, if a profile is
    /// there: `./NAME` (`--profile` used to be a folder) or `~/.parley`
    /// (the old default).
    fn legacy_hint(&self) -> Option<String> {
        let name = self.name.as_deref()?;
        let old = if name == DEFAULT_PROFILE {
            PathBuf::from(std::env::var_os("HOME")?).join(".parley")
        } else {
            PathBuf::from(name)
        };
        old.join(PROFILE_FILE).is_file().then(|| {
            format!(
                "an older parley-cli kept a profile in {}: use it with `--profile-dir {}`, or move it to {}",
                old.display(),
                shell_quote(&old.to_string_lossy()),
                self.dir.display()
            )
        })
    }

    /// Loads `profile.json`; [`ProfileError::Missing`] if there is none.
    pub fn load(&self) -> Result<Profile, ProfileError> {
        let path = self.dir.join(PROFILE_FILE);
        match read_json(&path)? {
            Some(profile) => Ok(profile),
            None => Err(ProfileError::Missing {
                dir: self.dir.clone(),
                command: self.command(),
                legacy: self.legacy_hint(),
            }),
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

    /// Loads `sent.json` (who each sent message went to), or an empty
    /// record if there is none yet.
    pub fn load_sent(&self) -> Result<SentMessages, ProfileError> {
        let sent: Option<SentMessages> = read_json(&self.dir.join(SENT_FILE))?;
        let mut sent = sent.unwrap_or_default();
        sent.trim();
        Ok(sent)
    }

    /// Adds one sent message to `sent.json`, under the profile lock so that
    /// two `send`s at once both keep their entry.
    pub fn record_sent(&self, message_id: u64, to_user: u64) -> Result<(), ProfileError> {
        let _lock = self.lock()?;
        let mut sent = self.load_sent()?;
        sent.insert(message_id, to_user);
        write_json(&self.dir.join(SENT_FILE), &sent)
    }

    /// Loads `devices.json`, or an empty record if there is none yet.
    pub fn load_known_devices(&self) -> Result<KnownDevices, ProfileError> {
        let known: Option<KnownDevices> = read_json(&self.dir.join(DEVICES_FILE))?;
        let mut known = known.unwrap_or_default();
        known.trim();
        Ok(known)
    }

    /// Changes `devices.json` with `change`, under the profile lock (two
    /// commands may learn lists at once).
    pub fn update_known_devices(
        &self,
        change: impl FnOnce(&mut KnownDevices),
    ) -> Result<(), ProfileError> {
        let _lock = self.lock()?;
        let mut known = self.load_known_devices()?;
        change(&mut known);
        write_json(&self.dir.join(DEVICES_FILE), &known)
    }

    /// Loads `uploads.json`, or an empty record if there is none yet.
    pub fn load_uploads(&self) -> Result<PendingUploads, ProfileError> {
        let pending: Option<PendingUploads> = read_json(&self.dir.join(UPLOADS_FILE))?;
        Ok(pending.unwrap_or_default())
    }

    /// Changes `uploads.json` with `change`, under the profile lock (two
    /// `send --file` may run at once), and returns what `change` returned.
    pub fn update_uploads<T>(
        &self,
        change: impl FnOnce(&mut PendingUploads) -> T,
    ) -> Result<T, ProfileError> {
        let _lock = self.lock()?;
        let mut pending = self.load_uploads()?;
        let out = change(&mut pending);
        write_json(&self.dir.join(UPLOADS_FILE), &pending)?;
        Ok(out)
    }

    /// Creates the folder (and its parents) mode 0700, and takes group and
    /// other permissions off it if it already existed with them: it holds
    /// a bearer token.
    fn create_dir(&self) -> Result<(), ProfileError> {
        let write_err = |source| ProfileError::Write {
            path: self.dir.clone(),
            source,
        };
        let mut builder = fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
            builder.mode(0o700);
            builder.create(&self.dir).map_err(write_err)?;
            let mode = fs::metadata(&self.dir)
                .map_err(write_err)?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                fs::set_permissions(&self.dir, fs::Permissions::from_mode(mode & 0o700))
                    .map_err(write_err)?;
            }
            Ok(())
        }
        #[cfg(not(unix))]
        {
            builder.create(&self.dir).map_err(write_err)
        }
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

/// `s` as one shell word: as is when it only holds characters no shell
/// treats specially, else in single quotes.
pub fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./+=:@,%".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
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

/// Device lists by user, as this profile last learned them: from the
/// server's list (`GET /v1/users/{id}/devices`, `GET /v1/devices`), or fixed
/// from a `DEVICES_CHANGED`. The most recently set last; at most
/// [`KNOWN_DEVICES_CAPACITY`] users, the least recently set forgotten first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownDevices {
    /// `(user_id, device ids)`.
    users: VecDeque<(u64, Vec<u64>)>,
}

impl KnownDevices {
    /// The devices of `user`, if known.
    pub fn get(&self, user: u64) -> Option<&[u64]> {
        self.users
            .iter()
            .find(|(u, _)| *u == user)
            .map(|(_, devices)| devices.as_slice())
    }

    /// Records `devices` as `user`'s.
    pub fn set(&mut self, user: u64, devices: Vec<u64>) {
        self.users.retain(|(u, _)| *u != user);
        if self.users.len() >= KNOWN_DEVICES_CAPACITY {
            self.users.pop_front();
        }
        self.users.push_back((user, devices));
    }

    /// `device` is no longer one of `user`'s.
    pub fn remove_device(&mut self, user: u64, device: u64) {
        if let Some((_, devices)) = self.users.iter_mut().find(|(u, _)| *u == user) {
            devices.retain(|d| *d != device);
        }
    }

    fn trim(&mut self) {
        while self.users.len() > KNOWN_DEVICES_CAPACITY {
            self.users.pop_front();
        }
    }
}

/// Which file an unfinished upload is of: the same path, size and
/// modification time (to the nanosecond) is taken for the same bytes, as
/// `make` and `rsync` take it; the SHA-256 computed before each upload
/// makes sure, and the server's digest of the finished upload is checked
/// against it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadKey {
    /// Absolute and canonical, so `./a.jpg` and `/home/u/a.jpg` agree.
    pub path: PathBuf,
    pub size: u64,
    /// Nanoseconds since the Unix epoch.
    pub mtime_ns: u128,
    /// SHA-256 of the file, 64 lowercase hex.
    pub sha256: String,
}

/// One unfinished upload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingUpload {
    pub key: UploadKey,
    /// The server it was made on (`https://host:port`): only that server's
    /// upload URL means anything.
    pub http: String,
    /// The upload's path on that server, `/v1/media/uploads/{upload_id}`.
    pub upload: String,
    /// Unix seconds when it was created.
    pub created_at: u64,
}

/// The unfinished uploads, oldest first, at most
/// [`PENDING_UPLOADS_CAPACITY`], none older than
/// [`PENDING_UPLOAD_LIFETIME_SECS`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingUploads {
    uploads: VecDeque<PendingUpload>,
}

impl PendingUploads {
    /// The unfinished upload of this file to this server, if any (and not
    /// too old at `now`).
    pub fn find(&self, key: &UploadKey, http: &str, now: u64) -> Option<&PendingUpload> {
        self.uploads
            .iter()
            .rev()
            .find(|u| &u.key == key && u.http == http && !expired(u, now))
    }

    /// Records an upload, replacing any of the same file to the same
    /// server; drops the expired and, past capacity, the oldest.
    pub fn insert(&mut self, upload: PendingUpload, now: u64) {
        self.uploads
            .retain(|u| !(expired(u, now) || (u.key == upload.key && u.http == upload.http)));
        while self.uploads.len() >= PENDING_UPLOADS_CAPACITY {
            self.uploads.pop_front();
        }
        self.uploads.push_back(upload);
    }

    /// Forgets the upload at `upload` on `http` (finished, or gone from
    /// the server), and the expired ones.
    pub fn remove(&mut self, http: &str, upload: &str, now: u64) {
        self.uploads
            .retain(|u| !(expired(u, now) || (u.http == http && u.upload == upload)));
    }

    pub fn len(&self) -> usize {
        self.uploads.len()
    }

    pub fn is_empty(&self) -> bool {
        self.uploads.is_empty()
    }

    /// Every remembered upload, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &PendingUpload> {
        self.uploads.iter()
    }
}

fn expired(upload: &PendingUpload, now: u64) -> bool {
    now.saturating_sub(upload.created_at) >= PENDING_UPLOAD_LIFETIME_SECS
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
            linked: false,
            next_client_msg_id: 1,
        }
    }

    #[test]
    fn save_then_load() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = ProfileDir::new(tmp.path().join("nested/profile"));
        assert!(matches!(dir.load(), Err(ProfileError::Missing { .. })));
        dir.save(&profile()).expect("save");
        assert_eq!(dir.load().expect("load"), profile());
    }

    #[cfg(unix)]
    #[test]
    fn profile_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = ProfileDir::named_in(&tmp.path().join("parley/profiles"), "alice").expect("name");
        dir.save(&profile()).expect("save");
        dir.save_seen(&SeenIds::default()).expect("save seen");
        dir.record_sent(1, 2).expect("record sent");
        let mode = |p: &Path| fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
        for file in [PROFILE_FILE, SEEN_FILE, SENT_FILE] {
            assert_eq!(mode(&dir.path().join(file)), 0o600, "{file}");
        }
        assert_eq!(mode(dir.path()), 0o700);
        assert_eq!(mode(&tmp.path().join("parley/profiles")), 0o700);

        // A folder that already existed with wider permissions is tightened.
        let open = tmp.path().join("open");
        fs::create_dir(&open).expect("mkdir");
        fs::set_permissions(&open, fs::Permissions::from_mode(0o755)).expect("chmod");
        ProfileDir::new(&open).save(&profile()).expect("save");
        assert_eq!(mode(&open), 0o700);
    }

    #[test]
    fn names_are_one_plain_path_component() {
        for good in ["alice", "bob-2", "work.phone", "Ünïcode", "a..b"] {
            validate_name(good).unwrap_or_else(|e| panic!("{good:?}: {e}"));
        }
        for bad in ["", ".", "..", "../x", "a/b", "/abs", "a\\b", "tab\there"] {
            assert!(
                matches!(validate_name(bad), Err(ProfileError::InvalidName(_))),
                "{bad:?} accepted"
            );
        }
        let root = Path::new("/cfg/parley/profiles");
        assert!(ProfileDir::named_in(root, "../../etc").is_err());
        let dir = ProfileDir::named_in(root, "bob").expect("valid");
        assert_eq!(dir.path(), Path::new("/cfg/parley/profiles/bob"));
        assert_eq!(dir.name(), Some("bob"));
    }

    #[test]
    fn config_dir_follows_xdg() {
        let os = |s: &'static str| Some(OsStr::new(s));
        assert_eq!(
            config_dir(os("/x/config"), os("/home/u")),
            Some(PathBuf::from("/x/config"))
        );
        assert_eq!(
            config_dir(None, os("/home/u")),
            Some(PathBuf::from("/home/u/.config"))
        );
        // Empty or relative XDG_CONFIG_HOME is ignored, as the spec says.
        assert_eq!(
            config_dir(os(""), os("/home/u")),
            Some(PathBuf::from("/home/u/.config"))
        );
        assert_eq!(
            config_dir(os("rel/config"), os("/home/u")),
            Some(PathBuf::from("/home/u/.config"))
        );
        assert_eq!(config_dir(None, None), None);
        assert_eq!(config_dir(None, os("")), None);
    }

    #[test]
    fn commands_name_the_profile_as_the_user_would_type_it() {
        let root = Path::new("/cfg/parley/profiles");
        let named = |n: &str| ProfileDir::named_in(root, n).expect("valid").command();
        assert_eq!(named("bob"), "parley-cli --profile bob");
        assert_eq!(named(DEFAULT_PROFILE), "parley-cli");
        assert_eq!(named("my phone"), "parley-cli --profile 'my phone'");
        assert_eq!(
            ProfileDir::new("/tmp/p q").command(),
            "parley-cli --profile-dir '/tmp/p q'"
        );
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn missing_profile_says_how_to_register() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = ProfileDir::named_in(tmp.path(), "carol").expect("valid");
        let message = dir.load().expect_err("missing").to_string();
        assert!(
            message.contains("`parley-cli --profile carol register <phone>`"),
            "{message}"
        );
    }

    #[test]
    fn profiles_are_listed_by_name() {
        let tmp = tempfile::tempdir().expect("tempdir");
        assert!(
            list_profiles(&tmp.path().join("none"))
                .expect("empty")
                .is_empty()
        );
        for name in ["bob", "alice"] {
            ProfileDir::named_in(tmp.path(), name)
                .expect("valid")
                .save(&profile())
                .expect("save");
        }
        fs::create_dir(tmp.path().join("not-a-profile")).expect("mkdir");
        assert_eq!(list_profiles(tmp.path()).expect("list"), ["alice", "bob"]);
    }

    #[test]
    fn sent_messages_persist_and_concurrent_records_keep_both() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = ProfileDir::new(tmp.path());
        assert!(dir.load_sent().expect("empty").is_empty());
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let dir = ProfileDir::new(tmp.path());
                std::thread::spawn(move || {
                    for i in 0..10 {
                        dir.record_sent(t * 100 + i, t).expect("record");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        let sent = dir.load_sent().expect("load");
        assert_eq!(sent.len(), 40);
        assert_eq!(sent.recipient(305), Some(3));
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
    fn profiles_from_before_linking_load_as_primary_devices() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut json = serde_json::to_value(profile()).expect("json");
        json.as_object_mut().expect("object").remove("linked");
        fs::write(
            tmp.path().join(PROFILE_FILE),
            serde_json::to_vec(&json).expect("bytes"),
        )
        .expect("write");
        let loaded = ProfileDir::new(tmp.path())
            .load()
            .expect("old profile loads");
        assert!(!loaded.linked);
        assert_eq!(loaded, profile());
    }

    #[test]
    fn known_devices_persist_are_bounded_and_forget_the_oldest() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = ProfileDir::new(tmp.path());
        assert_eq!(dir.load_known_devices().expect("empty").get(2), None);
        dir.update_known_devices(|known| {
            known.set(2, vec![20, 21]);
            known.set(1, vec![10]);
        })
        .expect("update");
        dir.update_known_devices(|known| known.remove_device(2, 20))
            .expect("update");
        let known = dir.load_known_devices().expect("load");
        assert_eq!(known.get(2), Some(&[21][..]));
        assert_eq!(known.get(1), Some(&[10][..]));

        let mut known = KnownDevices::default();
        for user in 0..KNOWN_DEVICES_CAPACITY as u64 + 2 {
            known.set(user, vec![user]);
        }
        assert_eq!(known.get(0), None);
        assert_eq!(known.get(2), Some(&[2][..]));
        // Setting a user again makes it the newest.
        known.set(2, vec![3]);
        known.set(10_000, vec![1]);
        assert_eq!(known.get(2), Some(&[3][..]));
        assert_eq!(known.get(3), None);
    }

    fn key(path: &str, size: u64) -> UploadKey {
        UploadKey {
            path: PathBuf::from(path),
            size,
            mtime_ns: 1,
            sha256: "00".repeat(32),
        }
    }

    fn pending(path: &str, http: &str, upload: &str, created_at: u64) -> PendingUpload {
        PendingUpload {
            key: key(path, 10),
            http: http.into(),
            upload: upload.into(),
            created_at,
        }
    }

    #[test]
    fn pending_uploads_are_found_by_file_and_server_only() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = ProfileDir::new(tmp.path());
        assert!(dir.load_uploads().expect("empty").is_empty());
        dir.update_uploads(|p| {
            p.insert(
                pending("/a", "https://s:1", "/v1/media/uploads/1", 100),
                100,
            )
        })
        .expect("update");
        let loaded = dir.load_uploads().expect("load");
        let found = loaded
            .find(&key("/a", 10), "https://s:1", 200)
            .expect("found");
        assert_eq!(found.upload, "/v1/media/uploads/1");
        // Another server, another size, another mtime, another digest: not it.
        assert!(
            loaded
                .find(&key("/a", 10), "https://other:1", 200)
                .is_none()
        );
        assert!(loaded.find(&key("/a", 11), "https://s:1", 200).is_none());
        assert!(
            loaded
                .find(
                    &UploadKey {
                        mtime_ns: 2,
                        ..key("/a", 10)
                    },
                    "https://s:1",
                    200
                )
                .is_none()
        );
        assert!(
            loaded
                .find(
                    &UploadKey {
                        sha256: "11".repeat(32),
                        ..key("/a", 10)
                    },
                    "https://s:1",
                    200
                )
                .is_none()
        );
        // A day later the server has dropped it: so does the profile.
        assert!(
            loaded
                .find(
                    &key("/a", 10),
                    "https://s:1",
                    100 + PENDING_UPLOAD_LIFETIME_SECS
                )
                .is_none()
        );
        dir.update_uploads(|p| p.remove("https://s:1", "/v1/media/uploads/1", 200))
            .expect("update");
        assert!(dir.load_uploads().expect("load").is_empty());
    }

    #[test]
    fn pending_uploads_replace_the_same_file_and_stay_bounded() {
        let mut p = PendingUploads::default();
        p.insert(pending("/a", "h", "/u/1", 0), 0);
        p.insert(pending("/a", "h", "/u/2", 0), 0);
        assert_eq!(p.len(), 1, "one upload per file and server");
        assert_eq!(
            p.find(&key("/a", 10), "h", 0).expect("found").upload,
            "/u/2"
        );
        for i in 0..PENDING_UPLOADS_CAPACITY + 3 {
            p.insert(pending(&format!("/f{i}"), "h", &format!("/u/f{i}"), 0), 0);
        }
        assert_eq!(p.len(), PENDING_UPLOADS_CAPACITY);
        assert!(
            p.find(&key("/f0", 10), "h", 0).is_none(),
            "oldest forgotten"
        );
        // Inserting at a later time drops what has expired by then.
        p.insert(
            pending("/new", "h", "/u/new", PENDING_UPLOAD_LIFETIME_SECS),
            PENDING_UPLOAD_LIFETIME_SECS,
        );
        assert_eq!(p.len(), 1);
    }

    #[cfg(unix)]
    #[test]
    fn pending_uploads_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = ProfileDir::new(tmp.path().join("p"));
        dir.update_uploads(|p| p.insert(pending("/a", "h", "/u/1", 0), 0))
            .expect("update");
        let mode = fs::metadata(dir.path().join(UPLOADS_FILE))
            .expect("file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
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
