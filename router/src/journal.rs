//! The journal: every change to the queues, on disk before anyone is told.
//!
//! The memory router keeps its queues in memory and reads only memory; the
//! journal is written on every change and read only at start. It is a redb
//! database (why redb: `docs/journal-storage.md`) with two tables, both
//! keyed by id, so a scan in key order is acceptance order:
//!
//! - `queue`: every queued message, receipt and read-sync (`id → record`),
//!   with the devices it is still queued for and its frame, **stored once**
//!   however many devices it goes to (or one frame per device, for a
//!   message sent with one envelope per device). A device's
//!   acknowledgement or an expiry releases the record for that device; the
//!   last release deletes it.
//! - `sent`: the recent sends of each device (`message id → sending device,
//!   client_msg_id, timestamp, digest of what it carried`), so that a
//!   `client_msg_id` resent after a restart is still answered with its
//!   original ack and never queued twice, even when the original was
//!   delivered and wiped meanwhile, and a reuse for another message is
//!   still refused.
//!
//! Changes reach one committer thread over a channel. The committer takes
//! whatever is pending (up to [`MAX_BATCH`] changes, no sooner than the
//! commit gap after the last commit started), appends it to the journal's
//! **log** as one frame and syncs it (one `fdatasync`: group commit; see
//! `wal`), and only then makes the batch visible: queued entries become
//! deliverable and waiting senders get their server ack. Nothing is pushed
//! to a phone or acked to a sender that a crash could still take back.
//! Every [`JournalConfig::checkpoint_every`] the log's changes go into the
//! redb file in one transaction (leaving out what they both create and
//! remove) and the log is emptied; at open, the log is applied first.
//!
//! A failed commit (disk full, I/O error) is retried with a backoff, with
//! the same batch, for as long as it fails: senders wait (their phones see
//! no ack and resend after reconnecting), nothing is dropped, and the error
//! is logged and counted.
//!
//! **Formats.** Records carry their format in their first byte. Format 1
//! was written by the one-device release (mailboxes keyed by user); a
//! journal holding it is upgraded in place when it is opened
//! ([`Journal::open`] with an [`Upgrade`]), in one transaction: each
//! user-keyed record is re-keyed to the device the user has now. Any other
//! format refuses to load rather than guess.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use redb::{ReadableDatabase, ReadableTable, TableDefinition, TableHandle};
use tokio::sync::oneshot;

use crate::metrics::JournalMetrics;
use crate::{Device, DeviceId, UserId};

mod wal;
pub use wal::LogError;
pub use wal::path_of as log_path;

const QUEUE: TableDefinition<u64, &[u8]> = TableDefinition::new("queue");
const SENT: TableDefinition<u64, &[u8]> = TableDefinition::new("sent");
/// Settings of the file itself: [`LOG_TOKEN`].
const META: TableDefinition<u64, u64> = TableDefinition::new("meta");
/// The token of the log that belongs to this file (see `wal`).
const LOG_TOKEN: u64 = 0;

/// The format this release writes.
const FORMAT: u8 = 2;
/// The one-device release's format, upgraded at open.
const FORMAT_V1: u8 = 1;

/// Most ops in one commit. Large enough that a busy node's commits are
/// never the limit (docs/journal-storage.md: ~500-record batches commit in
/// about a millisecond), small enough to bound one commit's latency.
pub(crate) const MAX_BATCH: usize = 4096;

/// A log holding this much is applied to the journal file now.
pub const CHECKPOINT_BYTES: u64 = 16 * 1024 * 1024;

/// A commit that takes this long is logged (at `warn`).
const SLOW_COMMIT: Duration = Duration::from_millis(20);

/// Where and how the journal is kept.
#[derive(Clone, Debug)]
pub struct JournalConfig {
    /// The journal file (created if missing).
    pub path: PathBuf,
    /// redb's page cache. The journal is written, and read once at start;
    /// tens of MiB perform like redb's default 1 GiB.
    pub cache_bytes: usize,
    /// The file is compacted when its free space exceeds both what it
    /// holds and this many bytes: the file stays within about twice the
    /// queue, plus this.
    pub compact_slack_bytes: u64,
    /// How often the committer looks at the file's size.
    pub compact_check: Duration,
    /// The least time from one commit's start to the next one's: ops that
    /// arrive sooner gather into the next commit. A commit costs about the
    /// same whatever it holds (its sync), so a
    /// committer that starts the next commit the moment the last one ends
    /// spends the same share of a core at any load; this paces it. Zero:
    /// back to back. An op that arrives after a quiet spell longer than
    /// this commits at once; under heavy load commits take longer than this
    /// and it never waits.
    pub commit_gap: Duration,
    /// How often the log's commits are applied to the journal file (one
    /// redb transaction for all of them, after which the log is emptied).
    /// Also at shutdown, before a backup or compaction, and when the log
    /// holds [`CHECKPOINT_BYTES`].
    pub checkpoint_every: Duration,
}

impl JournalConfig {
    /// The journal at `path` with a 16 MiB cache.
    pub fn at(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            cache_bytes: 16 * 1024 * 1024,
            compact_slack_bytes: 64 * 1024 * 1024,
            compact_check: Duration::from_secs(10),
            commit_gap: Duration::ZERO,
            checkpoint_every: Duration::from_millis(100),
        }
    }
}

/// Why the journal could not be opened or read. Once it runs, write errors
/// are retried, not returned (see the module documentation).
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: redb::Error,
    },
    #[error("journal {path}: record {key} in table {table} is unreadable ({why})")]
    Corrupt {
        path: String,
        table: String,
        key: u64,
        why: &'static str,
    },
    #[error(
        "journal {path} was written by an older release (format 1) and must be upgraded, which needs the account store"
    )]
    NeedsUpgrade { path: String },
    #[error("journal {path}: cannot start the committer thread: {source}")]
    Thread {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("journal backup {path}: {source}")]
    Backup {
        path: String,
        #[source]
        source: redb::Error,
    },
    #[error("journal backup: the journal is not running")]
    Stopped,
    #[error("journal log {path}: {source}")]
    Log {
        path: String,
        #[source]
        source: LogError,
    },
    #[error(
        "journal log {path} does not belong to the journal beside it (a restored backup?): it holds changes that were never applied to it. Move the log away to start from the journal alone"
    )]
    LogMismatch { path: String },
}

/// How a format-1 journal's records find their devices: the device each
/// user has now (`None`: the user is gone, and so are their records).
pub type Upgrade<'a> = &'a dyn Fn(UserId) -> Option<DeviceId>;

/// What an entry is, as the journal keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum RecordKind {
    /// A message from `sender`, whose DELIVERED receipts go to `notify`
    /// (the sender's devices when it was sent; empty: the sending device).
    Message {
        sender: Device,
        notify: Option<crate::memory::Notify>,
    },
    /// A receipt or a read-sync (acknowledged alike).
    Receipt,
}

/// The frames of an entry: one for every target, or one each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Frames {
    Shared(Bytes),
    /// In the order of the record's targets.
    PerTarget(Vec<Bytes>),
}

/// A queued entry as the journal keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct QueuedRecord {
    pub(crate) id: u64,
    pub(crate) kind: RecordKind,
    /// The devices it is still queued for.
    pub(crate) targets: Vec<Device>,
    pub(crate) frames: Frames,
}

impl QueuedRecord {
    /// The frame for the target at `index`.
    pub(crate) fn frame(&self, index: usize) -> Option<&Bytes> {
        match &self.frames {
            Frames::Shared(frame) => Some(frame),
            Frames::PerTarget(frames) => frames.get(index),
        }
    }
}

/// One send remembered for de-duplication.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SentRecord {
    pub(crate) message_id: u64,
    pub(crate) device: Device,
    pub(crate) client_msg_id: u64,
    pub(crate) timestamp_ms: u64,
    /// What the send carried (recipient and bodies); 0 for sends upgraded
    /// from format 1, which did not keep it.
    pub(crate) digest: u64,
}

/// Little-endian reader over a record.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], &'static str> {
        if self.0.len() < n {
            return Err("too short");
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, &'static str> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, &'static str> {
        let mut le = [0; 2];
        le.copy_from_slice(self.take(2)?);
        Ok(u16::from_le_bytes(le))
    }
    fn u32(&mut self) -> Result<u32, &'static str> {
        let mut le = [0; 4];
        le.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(le))
    }
    fn u64(&mut self) -> Result<u64, &'static str> {
        let mut le = [0; 8];
        le.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(le))
    }
    fn device(&mut self) -> Result<Device, &'static str> {
        Ok(Device::new(self.u64()?, self.u64()?))
    }
    fn bytes(&mut self) -> Result<Bytes, &'static str> {
        let len = self.u32()? as usize;
        Ok(Bytes::copy_from_slice(self.take(len)?))
    }
}

fn put_u16(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&u16::try_from(n).unwrap_or(u16::MAX).to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn put_device(out: &mut Vec<u8>, device: Device) {
    out.extend_from_slice(&device.user.to_le_bytes());
    out.extend_from_slice(&device.device.to_le_bytes());
}

/// Queue record, format 2: format, kind (0 message, 1 receipt); for a
/// message the sender (user, device) and the notified devices (count, ids;
/// none: the sender's device); the targets (count, (user, device)...);
/// the frames: 0 and one shared frame, or 1 and one frame per target.
/// Lengths u16 (counts) and u32 (frames); integers little-endian.
impl QueuedRecord {
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.clear();
        out.push(FORMAT);
        match &self.kind {
            RecordKind::Message { sender, notify } => {
                out.push(0);
                put_device(out, *sender);
                let notify = notify.as_deref().map_or(&[][..], Vec::as_slice);
                put_u16(out, notify.len());
                for device in notify {
                    out.extend_from_slice(&device.to_le_bytes());
                }
            }
            RecordKind::Receipt => out.push(1),
        }
        put_u16(out, self.targets.len());
        for target in &self.targets {
            put_device(out, *target);
        }
        match &self.frames {
            Frames::Shared(frame) => {
                out.push(0);
                put_bytes(out, frame);
            }
            Frames::PerTarget(frames) => {
                out.push(1);
                for frame in frames {
                    put_bytes(out, frame);
                }
            }
        }
    }

    pub(crate) fn decode(id: u64, bytes: &[u8]) -> Result<Self, &'static str> {
        let mut r = Reader(bytes);
        if r.u8()? != FORMAT {
            return Err("unknown format");
        }
        let kind = match r.u8()? {
            0 => {
                let sender = r.device()?;
                let n = r.u16()? as usize;
                let mut notify = Vec::with_capacity(n);
                for _ in 0..n {
                    notify.push(r.u64()?);
                }
                RecordKind::Message {
                    sender,
                    notify: (!notify.is_empty()).then(|| Arc::new(notify)),
                }
            }
            1 => RecordKind::Receipt,
            _ => return Err("unknown kind"),
        };
        let n = r.u16()? as usize;
        let mut targets = Vec::with_capacity(n);
        for _ in 0..n {
            targets.push(r.device()?);
        }
        let frames = match r.u8()? {
            0 => Frames::Shared(r.bytes()?),
            1 => Frames::PerTarget((0..n).map(|_| r.bytes()).collect::<Result<_, _>>()?),
            _ => return Err("unknown frame mode"),
        };
        if !r.0.is_empty() {
            return Err("trailing bytes");
        }
        Ok(Self {
            id,
            kind,
            targets,
            frames,
        })
    }

    /// Stops holding the entry for `device`. `true` if no target is left.
    fn release(&mut self, device: Device) -> bool {
        if let Some(at) = self.targets.iter().position(|t| *t == device) {
            self.targets.remove(at);
            if let Frames::PerTarget(frames) = &mut self.frames {
                frames.remove(at);
            }
        }
        self.targets.is_empty()
    }
}

/// Sent record, format 2: format, user, device, client_msg_id, timestamp,
/// digest.
const SENT_LEN: usize = 1 + 5 * 8;

impl SentRecord {
    fn encode(&self) -> [u8; SENT_LEN] {
        let mut out = [0; SENT_LEN];
        out[0] = FORMAT;
        for (at, value) in [
            self.device.user,
            self.device.device,
            self.client_msg_id,
            self.timestamp_ms,
            self.digest,
        ]
        .into_iter()
        .enumerate()
        {
            out[1 + at * 8..9 + at * 8].copy_from_slice(&value.to_le_bytes());
        }
        out
    }

    fn decode(message_id: u64, bytes: &[u8]) -> Result<Self, &'static str> {
        if bytes.len() != SENT_LEN {
            return Err("wrong length");
        }
        if bytes[0] != FORMAT {
            return Err("unknown format");
        }
        let mut r = Reader(&bytes[1..]);
        Ok(Self {
            message_id,
            device: r.device()?,
            client_msg_id: r.u64()?,
            timestamp_ms: r.u64()?,
            digest: r.u64()?,
        })
    }
}

/// One unit of work for the committer; all of an op's changes land in the
/// same transaction.
#[derive(Debug)]
pub(crate) enum Op {
    /// An entry was queued (a message with its send record, and the sends
    /// the device's log dropped). `done` fires once it is durable.
    Queue {
        record: QueuedRecord,
        sent: Option<SentRecord>,
        forgotten: Vec<u64>,
        done: Option<oneshot::Sender<()>>,
    },
    /// Entries released by devices (acknowledged, expired, or dropped with
    /// a removed device) and the receipts that produced: together, so a
    /// receipt is never lost between the release of its message and its
    /// own insert.
    Change {
        released: Vec<(u64, Device)>,
        queued: Vec<QueuedRecord>,
    },
    /// Entries queued for `from` now belong to `to` (a re-registered
    /// phone's queue goes to its new device).
    Retarget {
        from: Device,
        to: Device,
        ids: Vec<u64>,
    },
    /// Sends no longer remembered.
    Forget(Vec<u64>),
    /// Fires once every op submitted before it is durable.
    Barrier(oneshot::Sender<()>),
    /// Writes a copy of the journal as of this point (everything submitted
    /// before it, committed) to a new file; see [`Backup`].
    Backup(Backup),
}

/// A request for a consistent copy of the journal while it runs.
///
/// The committer takes a redb read transaction (a snapshot) once every op
/// submitted before the request is committed, so the copy holds at least
/// every message and receipt anyone was told about before the request; a
/// thread of its own copies the snapshot into `path` while commits go on.
#[derive(Debug)]
pub(crate) struct Backup {
    pub(crate) path: PathBuf,
    pub(crate) done: oneshot::Sender<Result<Copied, JournalError>>,
}

/// What a journal backup holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Copied {
    /// Messages and receipts queued, and recent sends remembered.
    pub queued: u64,
    pub sends: u64,
}

/// What was in the journal at start, in key (acceptance) order.
#[derive(Debug, Default)]
pub(crate) struct Replayed {
    pub(crate) queued: Vec<QueuedRecord>,
    pub(crate) sent: Vec<SentRecord>,
    /// The file's size before any compaction, and after.
    pub(crate) file_bytes: (u64, u64),
    /// Bytes of keys and values the journal holds.
    pub(crate) live_bytes: u64,
    /// What an upgrade from format 1 did, if one ran.
    pub(crate) upgraded: Option<Upgraded>,
}

/// An upgrade from format 1, in numbers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Upgraded {
    /// Records re-keyed to a device.
    pub records: u64,
    /// Records of users that no longer exist, dropped.
    pub dropped: u64,
    pub elapsed_ms: u64,
}

impl Replayed {
    /// The highest id in the journal (0 if empty): new ids must be above it.
    pub(crate) fn max_id(&self) -> u64 {
        let queued = self.queued.last().map_or(0, |r| r.id);
        let sent = self.sent.iter().map(|s| s.message_id).max().unwrap_or(0);
        queued.max(sent)
    }
}

/// Told, on the committer thread, which entries a commit made durable
/// (device, id), before the waiting senders are answered.
pub(crate) type OnDurable = Box<dyn Fn(&[(Device, u64)]) + Send>;

/// The handle the router keeps: the channel to the committer.
#[derive(Debug)]
pub(crate) struct Journal {
    ops: mpsc::Sender<Op>,
    committer: Option<std::thread::JoinHandle<()>>,
}

/// Whether the journal at `config.path` holds records of the one-device
/// release (format 1), which [`Journal::open`] upgrades given an
/// [`Upgrade`]. `false` for a missing or empty journal.
pub fn needs_upgrade(config: &JournalConfig) -> Result<bool, JournalError> {
    if !config.path.exists() {
        return Ok(false);
    }
    let path = config.path.display().to_string();
    let fail = |source: redb::Error| JournalError::Open {
        path: path.clone(),
        source,
    };
    let db = redb::Database::builder()
        .set_cache_size(config.cache_bytes)
        .open(&config.path)
        .map_err(|e| fail(e.into()))?;
    let txn = db.begin_read().map_err(|e| fail(e.into()))?;
    for table in [QUEUE, SENT] {
        let rows = match txn.open_table(table) {
            Ok(rows) => rows,
            Err(redb::TableError::TableDoesNotExist(_)) => continue,
            Err(e) => return Err(fail(e.into())),
        };
        if let Some(row) = rows.first().map_err(|e| fail(e.into()))?
            && row.1.value().first() == Some(&FORMAT_V1)
        {
            return Ok(true);
        }
    }
    Ok(false)
}

impl Journal {
    /// Opens (or creates) the journal, upgrades it in place if it was
    /// written by the one-device release (with `upgrade`; without one such
    /// a journal is refused), reads everything in it and compacts the file
    /// if it is much larger than what it holds. Blocking: run it before
    /// taking traffic.
    pub(crate) fn open(
        config: &JournalConfig,
        upgrade: Option<Upgrade<'_>>,
    ) -> Result<(Store, Replayed), JournalError> {
        let path = config.path.display().to_string();
        let fail = |source: redb::Error| JournalError::Open {
            path: path.clone(),
            source,
        };
        if let Some(parent) = config.path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| fail(e.into()))?;
        }
        let mut db = redb::Database::builder()
            .set_cache_size(config.cache_bytes)
            .create(&config.path)
            .map_err(|e| fail(e.into()))?;
        // Make sure both tables exist, so reads below need no special case.
        let txn = db.begin_write().map_err(|e| fail(e.into()))?;
        txn.open_table(QUEUE).map_err(|e| fail(e.into()))?;
        txn.open_table(SENT).map_err(|e| fail(e.into()))?;
        txn.open_table(META).map_err(|e| fail(e.into()))?;
        txn.commit().map_err(|e| fail(e.into()))?;

        let mut replayed = Replayed::default();
        if needs_upgrade_open(&db, &path)? {
            let upgrade =
                upgrade.ok_or_else(|| JournalError::NeedsUpgrade { path: path.clone() })?;
            replayed.upgraded = Some(upgrade_v1(&db, &path, upgrade)?);
        }
        let wal = replay_log(&db, &config.path)?;
        let mut live_bytes: u64 = 0;
        {
            let txn = db.begin_read().map_err(|e| fail(e.into()))?;
            replayed.queued = scan(&txn, QUEUE, &path, &mut live_bytes, QueuedRecord::decode)?;
            replayed.sent = scan(&txn, SENT, &path, &mut live_bytes, SentRecord::decode)?;
        }

        // redb reuses freed pages but keeps its high-water mark: after a
        // burst (or an upgrade), give the space back while nothing else
        // uses the file.
        let before = file_len(&config.path);
        if worth_compacting(before, live_bytes, config.compact_slack_bytes) {
            compact(&mut db, &config.path).map_err(fail)?;
        }
        replayed.file_bytes = (before, file_len(&config.path));
        replayed.live_bytes = live_bytes;
        Ok((Store { db, wal }, replayed))
    }

    /// Starts the committer on `db`.
    pub(crate) fn start(
        store: Store,
        live_bytes: u64,
        config: &JournalConfig,
        on_durable: OnDurable,
        metrics: JournalMetrics,
    ) -> Result<Self, JournalError> {
        let (ops, rx) = mpsc::channel();
        let Store { db, wal } = store;
        let mut committer = Committer {
            db,
            wal,
            pending: Vec::new(),
            checkpointed: Instant::now(),
            checkpoint_every: config.checkpoint_every,
            path: config.path.clone(),
            live_bytes,
            slack: config.compact_slack_bytes,
            check_every: config.compact_check,
            commit_gap: config.commit_gap,
            checked: Instant::now(),
            compacted_to: file_len(&config.path),
            metrics,
        };
        let committer = std::thread::Builder::new()
            .name("parley-journal".into())
            .spawn(move || committer.run(&rx, &on_durable))
            .map_err(|source| JournalError::Thread {
                path: config.path.display().to_string(),
                source,
            })?;
        Ok(Self {
            ops,
            committer: Some(committer),
        })
    }

    /// Asks for a consistent copy of the journal at `path` (see [`Backup`]).
    pub(crate) async fn backup(&self, path: PathBuf) -> Result<Copied, JournalError> {
        let (done, copied) = oneshot::channel();
        self.submit(Op::Backup(Backup { path, done }));
        copied.await.map_err(|_| JournalError::Stopped)?
    }

    /// Hands `op` to the committer. Never blocks (called under mailbox
    /// locks). If the committer is gone (it only stops when the router is
    /// dropped), the op's `done` is dropped and its sender sees an error.
    pub(crate) fn submit(&self, op: Op) {
        if self.ops.send(op).is_err() {
            tracing::error!("journal committer is gone; a change was not written");
        }
    }
}

impl Drop for Journal {
    /// Lets the committer write what is pending and close the file.
    fn drop(&mut self) {
        let (closed, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.ops, closed));
        if let Some(committer) = self.committer.take() {
            // The last router handle can be the committer's own (while it
            // marks a batch durable): then it finishes on its own.
            if committer.thread().id() == std::thread::current().id() {
                return;
            }
            if committer.join().is_err() {
                tracing::error!("journal committer panicked");
            }
        }
    }
}

/// The journal's files, open: redb and its log.
#[derive(Debug)]
pub(crate) struct Store {
    db: redb::Database,
    wal: wal::Wal,
}

/// The token of the log now being written, and of the one before it.
const LOG_TOKEN_BEFORE: u64 = 1;

/// Applies what the log beside the journal holds (the commits since the
/// last checkpoint) and starts a new, empty log, under a new token. One
/// redb transaction applies the log and records both tokens, so a crash
/// before the new log replaces the old one leaves an old log that is known
/// to be applied already.
fn replay_log(db: &redb::Database, journal: &std::path::Path) -> Result<wal::Wal, JournalError> {
    let path = journal.display().to_string();
    let fail = |source: redb::Error| JournalError::Open {
        path: path.clone(),
        source,
    };
    let log_path = wal::path_of(journal);
    let log_name = log_path.display().to_string();
    let log_fail = |source: LogError| JournalError::Log {
        path: log_name.clone(),
        source,
    };
    let log = wal::read(&log_path).map_err(log_fail)?;
    let (current, before) = {
        let txn = db.begin_read().map_err(|e| fail(e.into()))?;
        let meta = txn.open_table(META).map_err(|e| fail(e.into()))?;
        let get = |key| -> Result<Option<u64>, JournalError> {
            Ok(meta
                .get(key)
                .map_err(|e| fail(e.into()))?
                .map(|v| v.value()))
        };
        (get(LOG_TOKEN)?, get(LOG_TOKEN_BEFORE)?)
    };
    let token = new_token(current);
    let txn = db.begin_write().map_err(|e| fail(e.into()))?;
    if let Some(log) = &log {
        if log.torn_bytes > 0 {
            tracing::warn!(
                path = %log_name,
                bytes = log.torn_bytes,
                "journal log ends in a torn write (a crash while it was written); ignored: it was never acknowledged"
            );
        }
        if Some(log.token) == current {
            write_in(&txn, &log.ops, &mut Vec::new(), &Transient::default()).map_err(fail)?;
            tracing::info!(path = %log_name, ops = log.ops.len(), "journal log replayed");
        } else if Some(log.token) == before || log.ops.is_empty() {
            // Applied at the last start already, or nothing in it.
        } else {
            return Err(JournalError::LogMismatch { path: log_name });
        }
    }
    {
        let mut meta = txn.open_table(META).map_err(|e| fail(e.into()))?;
        if let Some(current) = current {
            meta.insert(LOG_TOKEN_BEFORE, current)
                .map_err(|e| fail(e.into()))?;
        }
        meta.insert(LOG_TOKEN, token).map_err(|e| fail(e.into()))?;
    }
    txn.commit().map_err(|e| fail(e.into()))?;
    wal::Wal::create(&log_path, token).map_err(|e| log_fail(e.into()))
}

/// A token unlike `current`: the time, the process and a counter mixed.
fn new_token(current: Option<u64>) -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.write_u32(std::process::id());
    let token = hasher.finish();
    if Some(token) == current {
        token.wrapping_add(1)
    } else {
        token
    }
}

/// Whether the open journal holds format-1 records. An upgrade rewrites
/// every record in one transaction, so the first row of each table tells.
fn needs_upgrade_open(db: &redb::Database, path: &str) -> Result<bool, JournalError> {
    let fail = |source: redb::Error| JournalError::Open {
        path: path.to_owned(),
        source,
    };
    let txn = db.begin_read().map_err(|e| fail(e.into()))?;
    for table in [QUEUE, SENT] {
        let rows = txn.open_table(table).map_err(|e| fail(e.into()))?;
        if let Some(row) = rows.first().map_err(|e| fail(e.into()))?
            && row.1.value().first() == Some(&FORMAT_V1)
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Rewrites a format-1 journal as format 2, in one transaction: each
/// user-keyed queue record goes to the device its user has now (records of
/// users that are gone are dropped), `Deliver` frames get their `to_user`,
/// and each remembered send keeps its device (format 1 had it) with an
/// unknown digest.
fn upgrade_v1(
    db: &redb::Database,
    path: &str,
    upgrade: Upgrade<'_>,
) -> Result<Upgraded, JournalError> {
    let started = Instant::now();
    let fail = |source: redb::Error| JournalError::Open {
        path: path.to_owned(),
        source,
    };
    let corrupt = |table: &str, key: u64, why: &'static str| JournalError::Corrupt {
        path: path.to_owned(),
        table: table.to_owned(),
        key,
        why,
    };
    let mut upgraded = Upgraded::default();
    let txn = db.begin_write().map_err(|e| fail(e.into()))?;
    {
        let mut queue = txn.open_table(QUEUE).map_err(|e| fail(e.into()))?;
        let rows: Vec<(u64, Vec<u8>)> = queue
            .iter()
            .map_err(|e| fail(e.into()))?
            .map(|row| row.map(|(k, v)| (k.value(), v.value().to_vec())))
            .collect::<Result<_, _>>()
            .map_err(|e| fail(e.into()))?;
        let mut out = Vec::new();
        for (id, bytes) in rows {
            // [format 1][kind][recipient][sender][frame]
            if bytes.len() < 18 || bytes[0] != FORMAT_V1 {
                return Err(corrupt("queue", id, "not format 1 in a format-1 journal"));
            }
            let mut r = Reader(&bytes[2..18]);
            let (recipient, sender) = (
                r.u64().map_err(|w| corrupt("queue", id, w))?,
                r.u64().map_err(|w| corrupt("queue", id, w))?,
            );
            let frame = &bytes[18..];
            let Some(device) = upgrade(recipient) else {
                queue.remove(id).map_err(|e| fail(e.into()))?;
                upgraded.dropped += 1;
                continue;
            };
            let target = Device::new(recipient, device);
            let record = match bytes[1] {
                0 => QueuedRecord {
                    id,
                    kind: RecordKind::Message {
                        // A sender that is gone gets no receipt (device 0
                        // is no device).
                        sender: Device::new(sender, upgrade(sender).unwrap_or(0)),
                        notify: None,
                    },
                    targets: vec![target],
                    frames: Frames::Shared(crate::frames::upgraded(frame, recipient)),
                },
                1 => QueuedRecord {
                    id,
                    kind: RecordKind::Receipt,
                    targets: vec![target],
                    frames: Frames::Shared(Bytes::copy_from_slice(frame)),
                },
                _ => return Err(corrupt("queue", id, "unknown kind")),
            };
            record.encode(&mut out);
            queue
                .insert(id, out.as_slice())
                .map_err(|e| fail(e.into()))?;
            upgraded.records += 1;
        }
        let mut sent = txn.open_table(SENT).map_err(|e| fail(e.into()))?;
        let rows: Vec<(u64, Vec<u8>)> = sent
            .iter()
            .map_err(|e| fail(e.into()))?
            .map(|row| row.map(|(k, v)| (k.value(), v.value().to_vec())))
            .collect::<Result<_, _>>()
            .map_err(|e| fail(e.into()))?;
        for (message_id, bytes) in rows {
            // [format 1][user][device][client_msg_id][timestamp]
            if bytes.len() != 33 || bytes[0] != FORMAT_V1 {
                return Err(corrupt(
                    "sent",
                    message_id,
                    "not format 1 in a format-1 journal",
                ));
            }
            let mut r = Reader(&bytes[1..]);
            let record = SentRecord {
                message_id,
                device: r.device().map_err(|w| corrupt("sent", message_id, w))?,
                client_msg_id: r.u64().map_err(|w| corrupt("sent", message_id, w))?,
                timestamp_ms: r.u64().map_err(|w| corrupt("sent", message_id, w))?,
                digest: 0,
            };
            sent.insert(message_id, record.encode().as_slice())
                .map_err(|e| fail(e.into()))?;
            upgraded.records += 1;
        }
    }
    txn.commit().map_err(|e| fail(e.into()))?;
    upgraded.elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    tracing::info!(
        path,
        records = upgraded.records,
        dropped = upgraded.dropped,
        elapsed_ms = upgraded.elapsed_ms,
        "journal upgraded from format 1 (one device per user) to format 2"
    );
    Ok(upgraded)
}

/// Every row of `table` in key order, decoded; adds the bytes read to
/// `live_bytes`. A row that does not decode stops the start.
fn scan<T>(
    txn: &redb::ReadTransaction,
    table: TableDefinition<u64, &[u8]>,
    path: &str,
    live_bytes: &mut u64,
    decode: fn(u64, &[u8]) -> Result<T, &'static str>,
) -> Result<Vec<T>, JournalError> {
    let fail = |source: redb::Error| JournalError::Open {
        path: path.to_owned(),
        source,
    };
    let mut records = Vec::new();
    let rows = txn.open_table(table).map_err(|e| fail(e.into()))?;
    for row in rows.iter().map_err(|e| fail(e.into()))? {
        let (key, value) = row.map_err(|e| fail(e.into()))?;
        let (id, bytes) = (key.value(), value.value());
        *live_bytes += 8 + bytes.len() as u64;
        records.push(decode(id, bytes).map_err(|why| JournalError::Corrupt {
            path: path.to_owned(),
            table: table.name().to_owned(),
            key: id,
            why,
        })?);
    }
    Ok(records)
}
fn file_len(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// redb reuses freed pages but keeps the file at its high-water mark: after
/// a burst, free space is given back once it outweighs what is held.
fn worth_compacting(file_bytes: u64, live_bytes: u64, slack: u64) -> bool {
    let free = file_bytes.saturating_sub(live_bytes);
    free > live_bytes && free > slack
}

fn compact(db: &mut redb::Database, path: &std::path::Path) -> Result<(), redb::Error> {
    let (before, started) = (file_len(path), Instant::now());
    db.compact()?;
    tracing::info!(
        before,
        after = file_len(path),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "journal compacted"
    );
    Ok(())
}

/// The committer thread's state.
struct Committer {
    db: redb::Database,
    wal: wal::Wal,
    /// Ops in the log and not yet in `db`, in commit order.
    pending: Vec<Op>,
    checkpointed: Instant,
    checkpoint_every: Duration,
    path: PathBuf,
    /// Bytes of keys and values held, kept up to date commit by commit.
    live_bytes: u64,
    slack: u64,
    check_every: Duration,
    commit_gap: Duration,
    checked: Instant,
    /// The file's size after the last compaction: the next one waits until
    /// the file has grown by the slack past it, so a file that compaction
    /// cannot shrink is not compacted over and over.
    compacted_to: u64,
    metrics: JournalMetrics,
}

impl Committer {
    fn run(&mut self, ops: &mpsc::Receiver<Op>, on_durable: &OnDurable) {
        commit_loop(self, ops, on_durable);
    }

    /// Between commits, now and then: compacts the file if it is mostly
    /// free space (after a checkpoint: compaction needs every change in
    /// the file). Commits wait meanwhile (tens of milliseconds for a
    /// journal of a hundred MiB); a failure is only logged.
    fn maybe_compact(&mut self, scratch: &mut Vec<u8>) {
        if self.checked.elapsed() < self.check_every {
            return;
        }
        self.checked = Instant::now();
        let file_bytes = file_len(&self.path);
        if file_bytes > self.compacted_to.saturating_add(self.slack)
            && worth_compacting(file_bytes, self.live_bytes, self.slack)
        {
            self.checkpoint(scratch);
            self.metrics.compactions.inc();
            match compact(&mut self.db, &self.path) {
                Ok(()) => self.compacted_to = file_len(&self.path),
                Err(error) => {
                    tracing::warn!(%error, "journal compaction failed; trying again later");
                }
            }
        }
    }

    /// Whether the log's commits should go into the file now.
    fn checkpoint_due(&self) -> bool {
        !self.pending.is_empty()
            && (self.checkpointed.elapsed() >= self.checkpoint_every
                || self.wal.pending_bytes() >= CHECKPOINT_BYTES)
    }

    /// Applies the ops in the log to the redb file in one durable
    /// transaction (retried until it succeeds, like a commit), then
    /// empties the log.
    fn checkpoint(&mut self, scratch: &mut Vec<u8>) {
        let started = Instant::now();
        self.checkpointed = started;
        if self.pending.is_empty() {
            return;
        }
        let mut backoff = Duration::from_millis(10);
        loop {
            match write(&self.db, &self.pending, scratch) {
                Ok(written) => {
                    self.live_bytes =
                        (self.live_bytes + written.added).saturating_sub(written.removed);
                    self.metrics.changes.inc_by(written.changes);
                    self.metrics.checkpoints.inc();
                    break;
                }
                Err(error) => {
                    self.metrics.errors.inc();
                    tracing::error!(%error, ops = self.pending.len(), retry_in_ms = backoff.as_millis() as u64,
                        "journal checkpoint failed; commits wait until it succeeds");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        let took = started.elapsed();
        if took >= SLOW_COMMIT {
            // Commits wait for a checkpoint: as long as this.
            tracing::warn!(
                elapsed_ms = took.as_millis() as u64,
                ops = self.pending.len(),
                "slow journal checkpoint"
            );
        }
        self.pending.clear();
        if let Err(error) = self.wal.reset() {
            // Its ops are in the file now; replaying them again is harmless.
            tracing::warn!(%error, "journal log not emptied after a checkpoint; it keeps growing until one succeeds");
        }
    }
}

fn commit_loop(committer: &mut Committer, ops: &mpsc::Receiver<Op>, on_durable: &OnDurable) {
    let metrics = committer.metrics.clone();
    let mut batch: Vec<Op> = Vec::new();
    let mut durable: Vec<(Device, u64)> = Vec::new();
    let mut scratch = Vec::new();
    // Wakes up now and then when idle too: what the log holds goes into
    // the file, and the file should shrink after the commits that drained
    // a burst.
    let idle_check = committer
        .checkpoint_every
        .min(committer.check_every)
        .max(Duration::from_millis(10));
    let mut last_started: Option<Instant> = None;
    loop {
        let op = match ops.recv_timeout(idle_check) {
            Ok(op) => op,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if committer.checkpoint_due() {
                    committer.checkpoint(&mut scratch);
                }
                committer.maybe_compact(&mut scratch);
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        // Everything pending goes into this commit: under load, ops gather
        // while the previous commit syncs, so batches grow with the load.
        batch.push(op);
        while batch.len() < MAX_BATCH {
            match ops.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        // Paced: not sooner than the gap after the last commit started.
        // Asleep, not waiting on the channel: a sender wakes a waiting
        // receiver (a futex call on both sides), and would for every op.
        if let Some(last) = last_started {
            let due = last + committer.commit_gap;
            let now = Instant::now();
            if now < due {
                std::thread::sleep(due - now);
                while batch.len() < MAX_BATCH {
                    match ops.try_recv() {
                        Ok(op) => batch.push(op),
                        Err(_) => break,
                    }
                }
            }
        }
        let mut backoff = Duration::from_millis(10);
        last_started = Some(Instant::now());
        loop {
            let started = Instant::now();
            match committer.wal.append(&batch, &mut scratch) {
                Ok(()) => {
                    let took = started.elapsed();
                    if took >= SLOW_COMMIT {
                        // Every sender and recipient of the batch waited
                        // this long: the disk is the first suspect.
                        tracing::warn!(
                            elapsed_ms = took.as_millis() as u64,
                            ops = batch.len(),
                            "slow journal commit"
                        );
                    }
                    metrics.commits.inc();
                    metrics.batch_ops.observe(batch.len() as f64);
                    metrics.commit_seconds.observe(took.as_secs_f64());
                    break;
                }
                Err(error) => {
                    metrics.errors.inc();
                    tracing::error!(%error, ops = batch.len(), retry_in_ms = backoff.as_millis() as u64,
                        "journal commit failed; nothing is acked until it succeeds");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        durable.clear();
        for op in &batch {
            match op {
                Op::Queue { record, .. } => {
                    durable.extend(record.targets.iter().map(|t| (*t, record.id)));
                }
                Op::Change { queued, .. } => {
                    for record in queued {
                        durable.extend(record.targets.iter().map(|t| (*t, record.id)));
                    }
                }
                // A moved entry may not have been durable when it moved:
                // its new device learns it now (its old one is gone).
                Op::Retarget { to, ids, .. } => durable.extend(ids.iter().map(|id| (*to, *id))),
                Op::Forget(_) | Op::Barrier(_) | Op::Backup(_) => {}
            }
        }
        if !durable.is_empty() {
            on_durable(&durable);
        }
        for op in batch.drain(..) {
            match op {
                Op::Queue {
                    record,
                    sent,
                    forgotten,
                    done,
                } => {
                    if let Some(done) = done {
                        // The sender may have gone; then no one is waiting.
                        let _ = done.send(());
                    }
                    committer.pending.push(Op::Queue {
                        record,
                        sent,
                        forgotten,
                        done: None,
                    });
                }
                Op::Barrier(done) => {
                    let _ = done.send(());
                }
                Op::Backup(backup) => {
                    // The snapshot must hold every op before the request.
                    committer.checkpoint(&mut scratch);
                    start_backup(&committer.db, backup);
                }
                op @ (Op::Change { .. } | Op::Retarget { .. } | Op::Forget(_)) => {
                    committer.pending.push(op);
                }
            }
        }
        if committer.checkpoint_due() {
            committer.checkpoint(&mut scratch);
        }
        committer.maybe_compact(&mut scratch);
    }
    // Shutting down: the log's ops go into the file, so a clean restart
    // has nothing to replay.
    committer.checkpoint(&mut scratch);
}

/// Snapshots the journal now (the batch before the request is committed)
/// and copies the snapshot to `backup.path` on a thread of its own, so
/// commits do not wait for the copy.
fn start_backup(db: &redb::Database, backup: Backup) {
    let Backup { path, done } = backup;
    let fail = |path: &std::path::Path| {
        let path = path.display().to_string();
        move |source: redb::Error| JournalError::Backup { path, source }
    };
    let snapshot = match db.begin_read() {
        Ok(snapshot) => snapshot,
        Err(error) => {
            let _ = done.send(Err(fail(&path)(error.into())));
            return;
        }
    };
    let copying = std::thread::Builder::new()
        .name("parley-journal-backup".into())
        .spawn(move || {
            let started = Instant::now();
            let copied = copy_snapshot(&snapshot, &path).map_err(fail(&path));
            if let Ok(copied) = &copied {
                tracing::info!(
                    path = %path.display(),
                    queued = copied.queued,
                    sends = copied.sends,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "journal backed up"
                );
            }
            let _ = done.send(copied);
        });
    if let Err(error) = copying {
        tracing::error!(%error, "cannot start the journal backup thread");
    }
}

/// Writes every row of `snapshot` into a new journal file at `path`
/// (refused if the file exists), in one durable transaction.
fn copy_snapshot(
    snapshot: &redb::ReadTransaction,
    path: &std::path::Path,
) -> Result<Copied, redb::Error> {
    if path.exists() {
        return Err(redb::Error::Io(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "the backup file exists already",
        )));
    }
    let copy = redb::Database::create(path)?;
    let txn = copy.begin_write()?;
    let mut copied = Copied::default();
    for (table, count) in [(QUEUE, &mut copied.queued), (SENT, &mut copied.sends)] {
        let mut into = txn.open_table(table)?;
        for row in snapshot.open_table(table)?.iter()? {
            let (key, value) = row?;
            into.insert(key.value(), value.value())?;
            *count += 1;
        }
    }
    txn.commit()?;
    Ok(copied)
}

/// What one commit changed.
#[derive(Debug, Default)]
struct Written {
    /// Records put or deleted.
    changes: u64,
    /// Bytes of keys and values put, and deleted.
    added: u64,
    removed: u64,
}

/// Writes `batch` in one durable transaction, leaving out what it both
/// creates and removes (see [`Transient`]): `batch` must hold only ops
/// after the file's state, as a checkpoint's does.
fn write(db: &redb::Database, batch: &[Op], scratch: &mut Vec<u8>) -> Result<Written, redb::Error> {
    let skip = Transient::of(batch);
    let txn = db.begin_write()?;
    let written = write_in(&txn, batch, scratch, &skip)?;
    // The default durability: on disk (one fsync) when commit returns.
    txn.commit()?;
    Ok(written)
}

/// The records a batch creates and also removes entirely: a message
/// queued and acknowledged by every device within one checkpoint, its
/// receipt queued and acknowledged, a send remembered and forgotten. The
/// file never needs to hold them, so a checkpoint writes none of their
/// changes: for phones that are online, most of a message's record changes.
///
/// Only for a batch whose creations are not in the file already (a
/// checkpoint's, whose ops all came after the file's state). A log replayed
/// at start may hold ops the file has (a crash between a checkpoint and the
/// log's truncation), so replay applies every op.
#[derive(Debug, Default)]
struct Transient {
    queue: std::collections::HashSet<u64>,
    sent: std::collections::HashSet<u64>,
}

impl Transient {
    fn of(batch: &[Op]) -> Self {
        use std::collections::{HashMap, HashSet};
        // Records created in the batch, with the devices they are still for.
        let mut born: HashMap<u64, Vec<Device>> = HashMap::new();
        let mut sent_born: HashSet<u64> = HashSet::new();
        let mut gone = Transient::default();
        let forget = |id: u64, sent_born: &mut HashSet<u64>, gone: &mut Transient| {
            if sent_born.remove(&id) {
                gone.sent.insert(id);
            }
        };
        // In write_in's order: a Change's releases before its new records.
        for op in batch {
            match op {
                Op::Queue {
                    record,
                    sent,
                    forgotten,
                    ..
                } => {
                    born.insert(record.id, record.targets.clone());
                    if let Some(sent) = sent {
                        sent_born.insert(sent.message_id);
                    }
                    for id in forgotten {
                        forget(*id, &mut sent_born, &mut gone);
                    }
                }
                Op::Change { released, queued } => {
                    for (id, device) in released {
                        if let Some(targets) = born.get_mut(id) {
                            if let Some(at) = targets.iter().position(|t| t == device) {
                                targets.remove(at);
                            }
                            if targets.is_empty() {
                                born.remove(id);
                                gone.queue.insert(*id);
                            }
                        }
                    }
                    for record in queued {
                        born.insert(record.id, record.targets.clone());
                    }
                }
                Op::Retarget { from, to, ids } => {
                    for id in ids {
                        if let Some(targets) = born.get_mut(id) {
                            for target in targets.iter_mut().filter(|t| *t == from) {
                                *target = *to;
                            }
                        }
                    }
                }
                Op::Forget(ids) => {
                    for id in ids {
                        forget(*id, &mut sent_born, &mut gone);
                    }
                }
                Op::Barrier(_) | Op::Backup(_) => {}
            }
        }
        gone
    }
}

/// Applies `batch` in `txn`, but nothing of the records in `skip`.
fn write_in(
    txn: &redb::WriteTransaction,
    batch: &[Op],
    scratch: &mut Vec<u8>,
    skip: &Transient,
) -> Result<Written, redb::Error> {
    let mut written = Written::default();
    {
        let mut queue = txn.open_table(QUEUE)?;
        let mut sent = txn.open_table(SENT)?;
        for op in batch {
            match op {
                Op::Queue {
                    record,
                    sent: remembered,
                    forgotten,
                    ..
                } => {
                    if !skip.queue.contains(&record.id) {
                        record.encode(scratch);
                        written.put(&mut queue, record.id, scratch)?;
                    }
                    if let Some(remembered) = remembered
                        && !skip.sent.contains(&remembered.message_id)
                    {
                        written.put(&mut sent, remembered.message_id, &remembered.encode())?;
                    }
                    for id in forgotten.iter().filter(|id| !skip.sent.contains(id)) {
                        written.delete(&mut sent, *id)?;
                    }
                }
                Op::Change { released, queued } => {
                    for (id, device) in released.iter().filter(|(id, _)| !skip.queue.contains(id)) {
                        written.release(&mut queue, *id, |r| r.release(*device), scratch)?;
                    }
                    for record in queued.iter().filter(|r| !skip.queue.contains(&r.id)) {
                        record.encode(scratch);
                        written.put(&mut queue, record.id, scratch)?;
                    }
                }
                Op::Retarget { from, to, ids } => {
                    for id in ids.iter().filter(|id| !skip.queue.contains(id)) {
                        written.release(
                            &mut queue,
                            *id,
                            |r| {
                                for target in r.targets.iter_mut().filter(|t| *t == from) {
                                    *target = *to;
                                }
                                false
                            },
                            scratch,
                        )?;
                    }
                }
                Op::Forget(ids) => {
                    for id in ids.iter().filter(|id| !skip.sent.contains(id)) {
                        written.delete(&mut sent, *id)?;
                    }
                }
                Op::Barrier(_) | Op::Backup(_) => {}
            }
        }
    }
    Ok(written)
}

impl Written {
    fn put(
        &mut self,
        table: &mut redb::Table<u64, &[u8]>,
        key: u64,
        value: &[u8],
    ) -> Result<(), redb::Error> {
        self.changes += 1;
        self.added += 8 + value.len() as u64;
        if let Some(old) = table.insert(key, value)? {
            self.removed += 8 + old.value().len() as u64;
        }
        Ok(())
    }

    fn delete(&mut self, table: &mut redb::Table<u64, &[u8]>, key: u64) -> Result<(), redb::Error> {
        if let Some(old) = table.remove(key)? {
            self.changes += 1;
            self.removed += 8 + old.value().len() as u64;
        }
        Ok(())
    }

    /// Reads the queue record `id`, applies `change` (which says whether
    /// nothing is left), and deletes or rewrites it. A record already gone
    /// (released twice, say) is left alone.
    fn release(
        &mut self,
        queue: &mut redb::Table<u64, &[u8]>,
        id: u64,
        change: impl FnOnce(&mut QueuedRecord) -> bool,
        scratch: &mut Vec<u8>,
    ) -> Result<(), redb::Error> {
        let record = match queue.get(id)? {
            Some(bytes) => QueuedRecord::decode(id, bytes.value()),
            None => return Ok(()),
        };
        let Ok(mut record) = record else {
            // Every record was checked at open and is written by this
            // release: one that does not decode now is not ours to keep.
            tracing::error!(id, "journal record unreadable at release; deleted");
            return self.delete(queue, id);
        };
        if change(&mut record) {
            self.delete(queue, id)
        } else {
            record.encode(scratch);
            self.put(queue, id, scratch)
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    fn queued(id: u64, targets: Vec<Device>) -> Op {
        Op::Queue {
            record: QueuedRecord {
                id,
                ..message(targets, Frames::Shared(Bytes::from_static(b"m")))
            },
            sent: Some(SentRecord {
                message_id: id,
                device: Device::new(2, 20),
                client_msg_id: id,
                timestamp_ms: 1,
                digest: 1,
            }),
            forgotten: Vec::new(),
            done: None,
        }
    }

    #[test]
    fn a_checkpoint_leaves_out_what_its_batch_creates_and_removes() {
        let (a, b, c) = (Device::new(1, 1), Device::new(1, 2), Device::new(1, 3));
        let receipt = QueuedRecord {
            id: 100,
            kind: RecordKind::Receipt,
            targets: vec![Device::new(2, 20)],
            frames: Frames::Shared(Bytes::from_static(b"r")),
        };
        let batch = vec![
            // 1: both devices ack: transient. 2: one of two acks: kept.
            queued(1, vec![a, b]),
            queued(2, vec![a, b]),
            Op::Change {
                released: vec![(1, a), (1, b), (2, a)],
                queued: vec![receipt],
            },
            // 3: its device re-registers as c, which acks: transient.
            queued(3, vec![b]),
            Op::Retarget {
                from: b,
                to: c,
                ids: vec![3],
            },
            Op::Change {
                released: vec![(3, c), (100, Device::new(2, 20)), (55, a)],
                queued: Vec::new(),
            },
            // Send 1 forgotten in the batch: transient; send 50 was not
            // created here: its delete is kept.
            Op::Forget(vec![1, 50]),
        ];
        let gone = Transient::of(&batch);
        let mut queue: Vec<u64> = gone.queue.iter().copied().collect();
        queue.sort_unstable();
        assert_eq!(
            queue,
            [1, 3, 100],
            "message 2 stays, 55 was never created here"
        );
        assert_eq!(gone.sent.iter().copied().collect::<Vec<_>>(), [1]);

        // The file after the batch is what applying every op would give.
        let dir = tempfile::tempdir().expect("temp dir");
        let config = JournalConfig::at(dir.path().join("journal.redb"));
        let (store, _) = Journal::open(&config, None).expect("opens");
        write(&store.db, &batch, &mut Vec::new()).expect("checkpoint");
        let txn = store.db.begin_read().expect("read");
        let keys = |table| -> Vec<u64> {
            txn.open_table(table)
                .expect("table")
                .iter()
                .expect("iter")
                .map(|row| row.expect("row").0.value())
                .collect()
        };
        assert_eq!(keys(QUEUE), [2]);
        assert_eq!(keys(SENT), [2, 3]);
    }

    fn message(targets: Vec<Device>, frames: Frames) -> QueuedRecord {
        QueuedRecord {
            id: 7,
            kind: RecordKind::Message {
                sender: Device::new(2, 20),
                notify: Some(vec![20, 21].into()),
            },
            targets,
            frames,
        }
    }

    #[test]
    fn records_round_trip() {
        let shared = message(
            vec![Device::new(1, 10), Device::new(1, 11)],
            Frames::Shared(Bytes::from_static(b"frame")),
        );
        let per_target = message(
            vec![Device::new(1, 10), Device::new(2, 21)],
            Frames::PerTarget(vec![Bytes::from_static(b"a"), Bytes::from_static(b"bb")]),
        );
        let receipt = QueuedRecord {
            kind: RecordKind::Receipt,
            ..shared.clone()
        };
        let lone = QueuedRecord {
            kind: RecordKind::Message {
                sender: Device::new(2, 20),
                notify: None,
            },
            ..shared.clone()
        };
        let mut out = Vec::new();
        for record in [shared, per_target, receipt, lone] {
            record.encode(&mut out);
            assert_eq!(QueuedRecord::decode(7, &out), Ok(record));
        }
        let sent = SentRecord {
            message_id: 9,
            device: Device::new(1, u64::MAX),
            client_msg_id: 3,
            timestamp_ms: 4,
            digest: 0xfeed,
        };
        assert_eq!(SentRecord::decode(9, &sent.encode()), Ok(sent));
    }

    #[test]
    fn a_release_drops_the_device_and_its_own_frame() {
        let mut record = message(
            vec![Device::new(1, 10), Device::new(2, 21)],
            Frames::PerTarget(vec![Bytes::from_static(b"a"), Bytes::from_static(b"bb")]),
        );
        assert!(!record.release(Device::new(1, 10)));
        assert_eq!(record.targets, [Device::new(2, 21)]);
        assert_eq!(record.frame(0), Some(&Bytes::from_static(b"bb")));
        assert!(
            !record.release(Device::new(9, 9)),
            "unknown device: nothing changes"
        );
        assert!(record.release(Device::new(2, 21)));
    }

    #[test]
    fn a_journal_with_an_unreadable_record_is_refused_at_open() {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = JournalConfig::at(dir.path().join("journal.redb"));
        let (store, replayed) = Journal::open(&config, None).expect("a new journal opens");
        assert!(replayed.queued.is_empty() && replayed.sent.is_empty());
        let db = store.db;
        let txn = db.begin_write().expect("write");
        txn.open_table(QUEUE)
            .expect("queue table")
            .insert(42, [FORMAT + 1; 24].as_slice())
            .expect("insert");
        txn.commit().expect("commit");
        drop(db);
        let error = Journal::open(&config, None).expect_err("refused");
        let message = error.to_string();
        assert!(
            message.contains("record 42 in table queue") && message.contains("unknown format"),
            "{message}"
        );
    }

    #[test]
    fn unknown_formats_and_truncated_records_are_refused() {
        let mut out = Vec::new();
        message(vec![Device::new(1, 1)], Frames::Shared(Bytes::new())).encode(&mut out);
        for cut in 0..out.len() {
            assert!(
                QueuedRecord::decode(1, &out[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        let mut longer = out.clone();
        longer.push(0);
        assert_eq!(QueuedRecord::decode(1, &longer), Err("trailing bytes"));
        out[0] = FORMAT + 1;
        assert_eq!(QueuedRecord::decode(1, &out), Err("unknown format"));
        out[0] = FORMAT;
        out[1] = 2;
        assert_eq!(QueuedRecord::decode(1, &out), Err("unknown kind"));
        let mut sent = SentRecord {
            message_id: 1,
            device: Device::new(1, 1),
            client_msg_id: 1,
            timestamp_ms: 1,
            digest: 1,
        }
        .encode();
        assert!(SentRecord::decode(1, &sent[..SENT_LEN - 1]).is_err());
        sent[0] = FORMAT_V1;
        assert_eq!(SentRecord::decode(1, &sent), Err("unknown format"));
    }

    /// Writes format-1 records as the one-device release did.
    fn write_v1(
        config: &JournalConfig,
        queue: &[(u64, u8, u64, u64, &[u8])],
        sent: &[(u64, u64, u64, u64, u64)],
    ) {
        let db = redb::Database::create(&config.path).expect("create");
        let txn = db.begin_write().expect("write");
        {
            let mut table = txn.open_table(QUEUE).expect("queue");
            for (id, kind, recipient, sender, frame) in queue {
                let mut v = vec![FORMAT_V1, *kind];
                v.extend_from_slice(&recipient.to_le_bytes());
                v.extend_from_slice(&sender.to_le_bytes());
                v.extend_from_slice(frame);
                table.insert(*id, v.as_slice()).expect("insert");
            }
            let mut table = txn.open_table(SENT).expect("sent");
            for (message_id, user, device, cmid, ts) in sent {
                let mut v = vec![FORMAT_V1];
                for n in [user, device, cmid, ts] {
                    v.extend_from_slice(&n.to_le_bytes());
                }
                table.insert(*message_id, v.as_slice()).expect("insert");
            }
        }
        txn.commit().expect("commit");
    }

    #[test]
    fn a_format_1_journal_is_upgraded_in_place_and_needs_the_devices() {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = JournalConfig::at(dir.path().join("journal.redb"));
        write_v1(
            &config,
            &[
                (10, 0, 1, 2, b"m"),
                (11, 1, 2, 0, b"r"),
                (12, 0, 3, 2, b"gone"),
            ],
            &[(10, 2, 20, 5, 99)],
        );
        assert!(needs_upgrade(&config).expect("readable"));
        let refused = Journal::open(&config, None).expect_err("needs the devices");
        assert!(
            matches!(refused, JournalError::NeedsUpgrade { .. }),
            "{refused}"
        );
        // User 3 is gone.
        let devices = |user: UserId| (user != 3).then_some(user * 10);
        let (db, replayed) = Journal::open(&config, Some(&devices)).expect("upgraded");
        let upgraded = replayed.upgraded.expect("an upgrade ran");
        assert_eq!((upgraded.records, upgraded.dropped), (3, 1));
        assert_eq!(replayed.queued.len(), 2);
        assert_eq!(replayed.queued[0].targets, [Device::new(1, 10)]);
        assert_eq!(
            replayed.queued[0].kind,
            RecordKind::Message {
                sender: Device::new(2, 20),
                notify: None
            }
        );
        assert_eq!(replayed.queued[1].kind, RecordKind::Receipt);
        assert_eq!(replayed.queued[1].targets, [Device::new(2, 20)]);
        assert_eq!(
            replayed.sent,
            [SentRecord {
                message_id: 10,
                device: Device::new(2, 20),
                client_msg_id: 5,
                timestamp_ms: 99,
                digest: 0,
            }]
        );
        drop(db);
        assert!(!needs_upgrade(&config).expect("readable"));
        let (_, again) = Journal::open(&config, None).expect("format 2 now");
        assert!(again.upgraded.is_none());
        assert_eq!(again.queued.len(), 2);
    }
}
