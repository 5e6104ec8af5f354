//! The journal: every change to the queues, on disk before anyone is told.
//!
//! The memory router keeps its queues in memory and reads only memory; the
//! journal is written on every change and read only at start. It is a redb
//! database (why redb: `docs/journal-storage.md`) with two tables, both
//! keyed by id, so a scan in key order is acceptance order:
//!
//! - `queue`: every queued message and receipt (`id → record`); an
//!   acknowledgement or an expiry deletes the key.
//! - `sent`: the recent sends of each device (`message id → sender, device,
//!   client_msg_id, timestamp`), so that a `client_msg_id` resent after a
//!   restart is still answered with its original ack and never queued twice,
//!   even when the original was delivered and wiped meanwhile.
//!
//! Changes reach one committer thread over a channel, in the order they
//! were made under the mailbox locks. The committer takes whatever is
//! pending (up to [`MAX_BATCH`] changes), writes it in **one** durable
//! redb transaction (one `fsync`: group commit), and only then makes the
//! batch visible: queued entries become deliverable and waiting senders get
//! their server ack. Nothing is pushed to a phone or acked to a sender that
//! a crash could still take back.
//!
//! A failed commit (disk full, I/O error) is retried with a backoff, with
//! the same batch, for as long as it fails: senders wait (their phones see
//! no ack and resend after reconnecting), nothing is dropped, and the error
//! is logged and counted.

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use redb::{ReadableDatabase, ReadableTable, TableDefinition, TableHandle};
use tokio::sync::oneshot;

use crate::metrics::JournalMetrics;
use crate::{DeviceId, UserId};

const QUEUE: TableDefinition<u64, &[u8]> = TableDefinition::new("queue");
const SENT: TableDefinition<u64, &[u8]> = TableDefinition::new("sent");

/// The format of the records below; a journal holding any other refuses to
/// load rather than guess.
const FORMAT: u8 = 1;

/// Most ops in one commit. Large enough that a busy node's commits are
/// never the limit (docs/journal-storage.md: ~500-record batches commit in
/// about a millisecond), small enough to bound one commit's latency.
pub(crate) const MAX_BATCH: usize = 4096;

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
}

impl JournalConfig {
    /// The journal at `path` with a 64 MiB cache.
    pub fn at(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            cache_bytes: 64 * 1024 * 1024,
            compact_slack_bytes: 64 * 1024 * 1024,
            compact_check: Duration::from_secs(10),
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
}

/// A queued message or receipt as the journal keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct QueuedRecord {
    pub(crate) id: u64,
    pub(crate) recipient: UserId,
    /// The sender of a message; `None` for a receipt.
    pub(crate) sender: Option<UserId>,
    /// The encoded `ServerFrame`.
    pub(crate) frame: Bytes,
}

/// One send remembered for de-duplication.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SentRecord {
    pub(crate) message_id: u64,
    pub(crate) user: UserId,
    pub(crate) device: DeviceId,
    pub(crate) client_msg_id: u64,
    pub(crate) timestamp_ms: u64,
}

/// Queue record: format, kind (0 message, 1 receipt), recipient, sender (0
/// for a receipt), then the frame. Integers little-endian.
const QUEUED_HEADER: usize = 1 + 1 + 8 + 8;

impl QueuedRecord {
    fn encode(&self, out: &mut Vec<u8>) {
        out.clear();
        out.push(FORMAT);
        out.push(u8::from(self.sender.is_none()));
        out.extend_from_slice(&self.recipient.to_le_bytes());
        out.extend_from_slice(&self.sender.unwrap_or(0).to_le_bytes());
        out.extend_from_slice(&self.frame);
    }

    fn decode(id: u64, bytes: &[u8]) -> Result<Self, &'static str> {
        if bytes.len() < QUEUED_HEADER {
            return Err("too short");
        }
        if bytes[0] != FORMAT {
            return Err("unknown format");
        }
        let recipient = le_u64(&bytes[2..10]);
        let sender = match bytes[1] {
            0 => Some(le_u64(&bytes[10..18])),
            1 => None,
            _ => return Err("unknown kind"),
        };
        Ok(Self {
            id,
            recipient,
            sender,
            frame: Bytes::copy_from_slice(&bytes[QUEUED_HEADER..]),
        })
    }
}

/// Sent record: format, user, device, client_msg_id, timestamp.
const SENT_LEN: usize = 1 + 4 * 8;

impl SentRecord {
    fn encode(&self) -> [u8; SENT_LEN] {
        let mut out = [0; SENT_LEN];
        out[0] = FORMAT;
        for (at, value) in [
            self.user,
            self.device,
            self.client_msg_id,
            self.timestamp_ms,
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
        Ok(Self {
            message_id,
            user: le_u64(&bytes[1..9]),
            device: le_u64(&bytes[9..17]),
            client_msg_id: le_u64(&bytes[17..25]),
            timestamp_ms: le_u64(&bytes[25..33]),
        })
    }
}

fn le_u64(bytes: &[u8]) -> u64 {
    let mut le = [0; 8];
    le.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(le)
}

/// One unit of work for the committer; all of an op's changes land in the
/// same transaction.
#[derive(Debug)]
pub(crate) enum Op {
    /// A message was accepted: queue it, remember the send, forget the
    /// sends the device's log dropped. `done` fires once it is durable.
    Send {
        message: QueuedRecord,
        sent: SentRecord,
        forgotten: Vec<u64>,
        done: oneshot::Sender<()>,
    },
    /// Entries wiped (acknowledged or expired) and the receipts that
    /// produced: together, so a receipt is never lost between the delete
    /// of its message and its own insert.
    Change {
        removed: Vec<u64>,
        receipts: Vec<QueuedRecord>,
    },
    /// Sends no longer remembered (after the replay).
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
}

impl Replayed {
    /// The highest id in the journal (0 if empty): new ids must be above it.
    pub(crate) fn max_id(&self) -> u64 {
        let queued = self.queued.last().map_or(0, |r| r.id);
        let sent = self.sent.last().map_or(0, |s| s.message_id);
        queued.max(sent)
    }
}

/// Told, on the committer thread, which entries a commit made durable
/// (recipient, id), before the waiting senders are answered.
pub(crate) type OnDurable = Box<dyn Fn(&[(UserId, u64)]) + Send>;

/// The handle the router keeps: the channel to the committer.
#[derive(Debug)]
pub(crate) struct Journal {
    ops: mpsc::Sender<Op>,
    committer: Option<std::thread::JoinHandle<()>>,
}

impl Journal {
    /// Opens (or creates) the journal, reads everything in it and compacts
    /// the file if it is much larger than what it holds. Blocking: run it
    /// before taking traffic.
    pub(crate) fn open(config: &JournalConfig) -> Result<(redb::Database, Replayed), JournalError> {
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
        txn.commit().map_err(|e| fail(e.into()))?;

        let mut replayed = Replayed::default();
        let mut live_bytes: u64 = 0;
        {
            let txn = db.begin_read().map_err(|e| fail(e.into()))?;
            replayed.queued = scan(&txn, QUEUE, &path, &mut live_bytes, QueuedRecord::decode)?;
            replayed.sent = scan(&txn, SENT, &path, &mut live_bytes, SentRecord::decode)?;
        }

        // redb reuses freed pages but keeps its high-water mark: after a
        // burst, give the space back while nothing else uses the file.
        let before = file_len(&config.path);
        if worth_compacting(before, live_bytes, config.compact_slack_bytes) {
            compact(&mut db, &config.path).map_err(fail)?;
        }
        replayed.file_bytes = (before, file_len(&config.path));
        replayed.live_bytes = live_bytes;
        Ok((db, replayed))
    }

    /// Starts the committer on `db`.
    pub(crate) fn start(
        db: redb::Database,
        live_bytes: u64,
        config: &JournalConfig,
        on_durable: OnDurable,
        metrics: JournalMetrics,
    ) -> Result<Self, JournalError> {
        let (ops, rx) = mpsc::channel();
        let mut committer = Committer {
            db,
            path: config.path.clone(),
            live_bytes,
            slack: config.compact_slack_bytes,
            check_every: config.compact_check,
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
    path: PathBuf,
    /// Bytes of keys and values held, kept up to date commit by commit.
    live_bytes: u64,
    slack: u64,
    check_every: Duration,
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
    /// free space. Commits wait meanwhile (tens of milliseconds for a
    /// journal of a hundred MiB); a failure is only logged.
    fn maybe_compact(&mut self) {
        if self.checked.elapsed() < self.check_every {
            return;
        }
        self.checked = Instant::now();
        let file_bytes = file_len(&self.path);
        if file_bytes > self.compacted_to.saturating_add(self.slack)
            && worth_compacting(file_bytes, self.live_bytes, self.slack)
        {
            self.metrics.compactions.inc();
            match compact(&mut self.db, &self.path) {
                Ok(()) => self.compacted_to = file_len(&self.path),
                Err(error) => {
                    tracing::warn!(%error, "journal compaction failed; trying again later");
                }
            }
        }
    }
}

fn commit_loop(committer: &mut Committer, ops: &mpsc::Receiver<Op>, on_durable: &OnDurable) {
    let metrics = committer.metrics.clone();
    let mut batch: Vec<Op> = Vec::new();
    let mut durable: Vec<(UserId, u64)> = Vec::new();
    let mut scratch = Vec::new();
    // Wakes up now and then when idle too: the commits that drained a
    // burst are the last for a while, and the file should shrink after them.
    let idle_check = committer.check_every.max(Duration::from_millis(50));
    loop {
        let op = match ops.recv_timeout(idle_check) {
            Ok(op) => op,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                committer.maybe_compact();
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        // Everything pending goes into this commit: under load, ops gather
        // while the previous commit syncs, so batches grow with the load
        // and no timer is needed (a delay measured no gain: the cost is per
        // record, docs/guarantees.md and BENCHMARKS.md).
        batch.push(op);
        while batch.len() < MAX_BATCH {
            match ops.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let mut backoff = Duration::from_millis(10);
        loop {
            let started = Instant::now();
            match write(&committer.db, &batch, &mut scratch) {
                Ok(written) => {
                    committer.live_bytes =
                        (committer.live_bytes + written.added).saturating_sub(written.removed);
                    metrics.commits.inc();
                    metrics.changes.inc_by(written.changes);
                    metrics.batch_ops.observe(batch.len() as f64);
                    metrics
                        .commit_seconds
                        .observe(started.elapsed().as_secs_f64());
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
                Op::Send { message, .. } => durable.push((message.recipient, message.id)),
                Op::Change { receipts, .. } => {
                    durable.extend(receipts.iter().map(|r| (r.recipient, r.id)));
                }
                Op::Forget(_) | Op::Barrier(_) | Op::Backup(_) => {}
            }
        }
        if !durable.is_empty() {
            on_durable(&durable);
        }
        for op in batch.drain(..) {
            match op {
                Op::Send { done, .. } | Op::Barrier(done) => {
                    // The sender may have gone; then no one is waiting.
                    let _ = done.send(());
                }
                Op::Backup(backup) => start_backup(&committer.db, backup),
                Op::Change { .. } | Op::Forget(_) => {}
            }
        }
        committer.maybe_compact();
    }
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

/// Writes `batch` in one durable transaction.
fn write(db: &redb::Database, batch: &[Op], scratch: &mut Vec<u8>) -> Result<Written, redb::Error> {
    let txn = db.begin_write()?;
    let mut written = Written::default();
    {
        let mut queue = txn.open_table(QUEUE)?;
        let mut sent = txn.open_table(SENT)?;
        let mut put = |table: &mut redb::Table<u64, &[u8]>, key: u64, value: &[u8]| {
            written.changes += 1;
            written.added += 8 + value.len() as u64;
            table.insert(key, value).map(|_| ())
        };
        let mut removed = Vec::new();
        for op in batch {
            match op {
                Op::Send {
                    message,
                    sent: record,
                    forgotten,
                    ..
                } => {
                    message.encode(scratch);
                    put(&mut queue, message.id, scratch)?;
                    put(&mut sent, record.message_id, &record.encode())?;
                    for id in forgotten {
                        removed.push(sent.remove(*id)?.map(|v| v.value().len()));
                    }
                }
                Op::Change {
                    removed: ids,
                    receipts,
                } => {
                    for id in ids {
                        removed.push(queue.remove(*id)?.map(|v| v.value().len()));
                    }
                    for receipt in receipts {
                        receipt.encode(scratch);
                        put(&mut queue, receipt.id, scratch)?;
                    }
                }
                Op::Forget(ids) => {
                    for id in ids {
                        removed.push(sent.remove(*id)?.map(|v| v.value().len()));
                    }
                }
                Op::Barrier(_) | Op::Backup(_) => {}
            }
        }
        for len in removed.into_iter().flatten() {
            written.changes += 1;
            written.removed += 8 + len as u64;
        }
    }
    // The default durability: on disk (one fsync) when commit returns.
    txn.commit()?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let message = QueuedRecord {
            id: 7,
            recipient: 1,
            sender: Some(2),
            frame: Bytes::from_static(b"frame"),
        };
        let receipt = QueuedRecord {
            sender: None,
            ..message.clone()
        };
        let mut out = Vec::new();
        for record in [message, receipt] {
            record.encode(&mut out);
            assert_eq!(QueuedRecord::decode(7, &out), Ok(record));
        }
        let sent = SentRecord {
            message_id: 9,
            user: 1,
            device: u64::MAX,
            client_msg_id: 3,
            timestamp_ms: 4,
        };
        assert_eq!(SentRecord::decode(9, &sent.encode()), Ok(sent));
    }

    #[test]
    fn a_journal_with_an_unreadable_record_is_refused_at_open() {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = JournalConfig::at(dir.path().join("journal.redb"));
        let (db, replayed) = Journal::open(&config).expect("a new journal opens");
        assert!(replayed.queued.is_empty() && replayed.sent.is_empty());
        let txn = db.begin_write().expect("write");
        txn.open_table(QUEUE)
            .expect("queue table")
            .insert(42, [FORMAT + 1; QUEUED_HEADER + 4].as_slice())
            .expect("insert");
        txn.commit().expect("commit");
        drop(db);
        let error = Journal::open(&config).expect_err("refused");
        let message = error.to_string();
        assert!(
            message.contains("record 42 in table queue") && message.contains("unknown format"),
            "{message}"
        );
    }

    #[test]
    fn unknown_formats_and_truncated_records_are_refused() {
        let mut out = Vec::new();
        QueuedRecord {
            id: 1,
            recipient: 1,
            sender: None,
            frame: Bytes::new(),
        }
        .encode(&mut out);
        assert!(QueuedRecord::decode(1, &out[..QUEUED_HEADER - 1]).is_err());
        out[0] = FORMAT + 1;
        assert_eq!(QueuedRecord::decode(1, &out), Err("unknown format"));
        out[0] = FORMAT;
        out[1] = 2;
        assert_eq!(QueuedRecord::decode(1, &out), Err("unknown kind"));
        let mut sent = SentRecord {
            message_id: 1,
            user: 1,
            device: 1,
            client_msg_id: 1,
            timestamp_ms: 1,
        }
        .encode();
        assert!(SentRecord::decode(1, &sent[..SENT_LEN - 1]).is_err());
        sent[0] = 0;
        assert_eq!(SentRecord::decode(1, &sent), Err("unknown format"));
    }
}
