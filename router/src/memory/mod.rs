//! The single-node router: every device's mailbox in process memory.
//!
//! Modules: `mailbox` (one device's queue, caps and live session) and
//! `sent` (one sending device's de-duplication memory).
//!
//! Two maps, each spread over shards (a `std::sync::Mutex` around a map
//! each), so sessions on different cores rarely meet on the same lock: the
//! **mailboxes**, keyed by device, and the **send logs**, keyed by sending
//! device. A lock is held only for in-memory work (no `.await`, no I/O:
//! pushing to a session is a non-blocking channel send), which is why a
//! blocking mutex is right here.
//!
//! A send holds its device's send-log lock for the whole check-queue-record
//! step, so two sessions of one device racing with the same
//! `client_msg_id` cannot both queue it, and a sender's messages are queued
//! for each device in the order it sent them. Under it, the send takes each
//! target mailbox's lock in turn, never two at once; nothing takes a
//! send-log lock while holding a mailbox lock, so there is no lock order
//! to get wrong. A message to many devices is pushed to one at a time:
//! nothing here locks more than two shards, however many devices (or, later,
//! group members) a message goes to.
//!
//! With a [journal](crate::journal) (the default in the server), every
//! change is handed to the journal's committer too. New entries wait in
//! their queues, not yet deliverable, until their commit is durable; a send
//! returns only then.

mod mailbox;
mod sent;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Instant;

use bytes::Bytes;
use parley_proto::v1::{CloseReason, ReceiptKind};

use crate::ids::{IdGenerator, NodeId, accepted_at_ms, now_ms};
use crate::journal::{
    Frames, Journal, JournalConfig, JournalError, Op, QueuedRecord, RecordKind, SentRecord, Upgrade,
};
use crate::live::Live;
use crate::metrics::RouterMetrics;
use crate::{
    Accepted, Attached, Census, Device, Outgoing, Payload, Read, Router, RouterError, SendError,
    SessionId, Submitted, frames,
};
pub(crate) use mailbox::Notify;
use mailbox::{Entry, Mailbox};
use sent::{Sent, SentLog};

/// Settings of the memory router.
#[derive(Clone, Debug)]
pub struct MemoryConfig {
    /// Deliveries and receipts a session may have unacknowledged at once.
    /// Larger windows hide more round trips on a slow link but hold more
    /// frames per session in memory.
    pub window: usize,
    /// How many of a device's most recent `client_msg_id`s are remembered
    /// for de-duplication of resends.
    pub dedupe_horizon: usize,
    /// Number of shards (locks) of each map.
    pub shards: usize,
    /// Messages one device may have queued; past it the device gets no
    /// copy of a message, and a message none of the recipient's devices
    /// has room for gets `MAILBOX_FULL`. Receipts are not counted (they are
    /// bounded by what the device itself sent).
    pub max_queued_messages: usize,
    /// Encoded bytes of the messages one device may have queued.
    pub max_queued_bytes: usize,
    /// Retry hint sent with `MAILBOX_FULL`.
    pub mailbox_full_retry: std::time::Duration,
    /// Undelivered messages and receipts older than this are deleted.
    pub ttl: std::time::Duration,
    /// Message bytes one recipient may receive (counted on its primary
    /// device's mailbox): a burst, then a rate. Protects a recipient (and
    /// the node's memory) from a flood by many senders.
    pub inbound_bytes: crate::ratelimit::Rate,
    /// This node's place in the deployment, in every id it takes.
    pub node: NodeId,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            window: 64,
            dedupe_horizon: 128,
            shards: 64,
            max_queued_messages: 10_000,
            max_queued_bytes: 64 * 1024 * 1024,
            mailbox_full_retry: std::time::Duration::from_secs(60),
            ttl: std::time::Duration::from_secs(30 * 24 * 3600),
            inbound_bytes: crate::ratelimit::Rate::new(8.0 * 1024.0 * 1024.0, 1024.0 * 1024.0),
            node: NodeId::default(),
        }
    }
}

/// A map spread over shards by key.
#[derive(Debug)]
struct Shards<V> {
    shards: Box<[Mutex<HashMap<Device, V>>]>,
}

impl<V> Shards<V> {
    fn new(count: usize) -> Self {
        Self {
            shards: (0..count.max(1))
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
        }
    }

    fn index(&self, device: Device) -> usize {
        // Fibonacci hashing: ids are random, but spreading them costs
        // nothing and protects against any pattern in them.
        let hash =
            (device.user ^ device.device.rotate_left(32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (hash >> 32) as usize % self.shards.len()
    }

    fn lock_index(&self, index: usize) -> MutexGuard<'_, HashMap<Device, V>> {
        // A panic while a shard was locked leaves it as consistent as the
        // panicking step left it; refusing service for all of its devices
        // would be worse.
        self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn lock(&self, device: Device) -> MutexGuard<'_, HashMap<Device, V>> {
        self.lock_index(self.index(device))
    }

    fn len(&self) -> usize {
        self.shards.len()
    }
}

/// A cheap clonable handle to the single-node router.
#[derive(Clone, Debug)]
pub struct MemoryRouter {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: MemoryConfig,
    mailboxes: Shards<Mailbox>,
    senders: Shards<SentLog>,
    /// Devices removed lately, so that a message or receipt computed from a
    /// device list read just before the removal does not make a mailbox
    /// nobody will read. Device ids are never reused; entries are kept an
    /// hour (long past any device list in flight).
    removed: Mutex<HashMap<Device, Instant>>,
    /// Message and receipt ids.
    ids: IdGenerator,
    /// Session ids, only to tell sessions of one device apart.
    sessions: AtomicU64,
    metrics: RouterMetrics,
    /// `None`: memory-only (a crash loses what is queued).
    journal: Option<Journal>,
    /// Told what devices without a session miss (push notifications).
    /// Set once, after construction: the listener is built on the router.
    wakeups: std::sync::OnceLock<Arc<dyn crate::Wakeups>>,
}

/// How long a removed device is remembered.
const REMOVED_KEPT: std::time::Duration = std::time::Duration::from_secs(3600);

/// What [`MemoryRouter::open`] read back from the journal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Restored {
    /// Messages queued again (one per message, however many devices), and
    /// receipts.
    pub messages: usize,
    pub receipts: usize,
    /// Entries queued again, over every device.
    pub entries: usize,
    /// Recent sends remembered again for de-duplication.
    pub sends: usize,
    /// The journal file's size as found, and after compaction.
    pub file_bytes: (u64, u64),
    /// What an upgrade from the one-device format did, if one ran.
    pub upgraded: Option<crate::journal::Upgraded>,
}

impl MemoryRouter {
    /// A memory-only router whose metrics are not registered anywhere.
    pub fn new(config: MemoryConfig) -> Self {
        Self::with_metrics(config, RouterMetrics::default())
    }

    /// A memory-only router counting into `metrics`: a crash loses
    /// whatever is queued.
    pub fn with_metrics(config: MemoryConfig, metrics: RouterMetrics) -> Self {
        Self {
            inner: Arc::new(Inner::new(config, metrics, None)),
        }
    }

    /// A router whose every change is journaled at `journal`: opens the
    /// journal (upgrading one written by the one-device release with
    /// `upgrade`), queues again everything it holds (in order) and starts
    /// its committer. Blocking (reads the whole journal): call it before
    /// taking traffic, off the async runtime's workers.
    pub fn open(
        config: MemoryConfig,
        metrics: RouterMetrics,
        journal: &JournalConfig,
        upgrade: Option<Upgrade<'_>>,
    ) -> Result<(Self, Restored), JournalError> {
        let (db, replayed) = Journal::open(journal, upgrade)?;
        let mut failed = None;
        let inner = Arc::new_cyclic(|weak: &Weak<Inner>| {
            let weak = weak.clone();
            let on_durable = Box::new(move |entries: &[(Device, u64)]| {
                if let Some(inner) = weak.upgrade() {
                    MemoryRouter { inner }.mark_durable(entries);
                }
            });
            let started = Journal::start(
                db,
                replayed.live_bytes,
                journal,
                on_durable,
                metrics.journal.clone(),
            );
            Inner::new(config, metrics, started.map_err(|e| failed = Some(e)).ok())
        });
        if let Some(error) = failed {
            return Err(error);
        }
        let router = Self { inner };
        let restored = router.restore(replayed);
        Ok((router, restored))
    }

    /// Queues the journal's entries again and rebuilds the sends' memory.
    fn restore(&self, replayed: crate::journal::Replayed) -> Restored {
        let mut restored = Restored {
            file_bytes: replayed.file_bytes,
            upgraded: replayed.upgraded,
            ..Restored::default()
        };
        self.inner.ids.resume_after(replayed.max_id());
        let window = self.window();
        for record in replayed.queued {
            match &record.kind {
                RecordKind::Message { .. } => restored.messages += 1,
                RecordKind::Receipt => restored.receipts += 1,
            }
            for (at, target) in record.targets.iter().enumerate() {
                let Some(frame) = record.frame(at) else {
                    continue;
                };
                restored.entries += 1;
                self.inner
                    .mailboxes
                    .lock(*target)
                    .entry(*target)
                    .or_default()
                    .push(
                        match &record.kind {
                            RecordKind::Message { sender, notify } => Entry::message(
                                record.id,
                                frame.clone(),
                                *sender,
                                notify.clone(),
                                true,
                            ),
                            RecordKind::Receipt => Entry::receipt(record.id, frame.clone(), true),
                        },
                        window,
                    );
            }
        }
        let mut forgotten = Vec::new();
        for sent in replayed.sent {
            restored.sends += 1;
            self.inner
                .senders
                .lock(sent.device)
                .entry(sent.device)
                .or_default()
                .record(
                    Sent {
                        client_msg_id: sent.client_msg_id,
                        message_id: sent.message_id,
                        timestamp_ms: sent.timestamp_ms,
                        digest: sent.digest,
                    },
                    self.inner.config.dedupe_horizon,
                    Some(&mut forgotten),
                );
        }
        restored.sends -= forgotten.len();
        if !forgotten.is_empty() {
            self.journal(Op::Forget(forgotten));
        }
        restored
    }

    /// Makes journaled entries deliverable (on the committer's thread).
    fn mark_durable(&self, entries: &[(Device, u64)]) {
        let window = self.window();
        let mut by_device: HashMap<Device, Vec<u64>> = HashMap::new();
        for &(device, id) in entries {
            by_device.entry(device).or_default().push(id);
        }
        for (device, mut ids) in by_device {
            ids.sort_unstable();
            if let Some(mailbox) = self.inner.mailboxes.lock(device).get_mut(&device) {
                mailbox.mark_durable(&ids, window);
            }
        }
    }

    /// Hands `op` to the journal, if there is one.
    fn journal(&self, op: Op) {
        if let Some(journal) = &self.inner.journal {
            journal.submit(op);
        }
    }

    fn journaled(&self) -> bool {
        self.inner.journal.is_some()
    }

    /// Writes a consistent copy of the journal to the new file `path`: it
    /// holds at least everything acked or delivered before the call. `None`
    /// in memory-only mode (nothing is on disk to copy).
    pub async fn backup_journal(
        &self,
        path: std::path::PathBuf,
    ) -> Result<Option<crate::journal::Copied>, JournalError> {
        match &self.inner.journal {
            None => Ok(None),
            Some(journal) => journal.backup(path).await.map(Some),
        }
    }

    fn window(&self) -> usize {
        self.inner.config.window
    }

    fn wakeups(&self) -> Option<&dyn crate::Wakeups> {
        self.inner.wakeups.get().map(|w| &**w)
    }

    /// Whether `device` was removed lately (see [`Inner::removed`]).
    fn is_removed(&self, device: Device) -> bool {
        self.inner
            .removed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(&device)
    }

    /// Pushes `entry` to `device`'s mailbox, unless the device was removed.
    /// `room`: the caps apply (messages), with the entry's body size.
    /// `wake`: a device without a live session is reported as having
    /// missed it.
    fn push(&self, device: Device, entry: Entry, room: Option<usize>, wake: bool) -> bool {
        let config = &self.inner.config;
        let mut shard = self.inner.mailboxes.lock(device);
        let mailbox = match shard.get_mut(&device) {
            Some(mailbox) => mailbox,
            // Only a new mailbox can belong to a removed device.
            None if self.is_removed(device) => return false,
            None => shard.entry(device).or_default(),
        };
        if let Some(bytes) = room
            && !mailbox.has_room(bytes, config.max_queued_messages, config.max_queued_bytes)
        {
            return false;
        }
        mailbox.push(entry, config.window);
        if wake
            && !mailbox.has_session()
            && let Some(wakeups) = self.wakeups()
            && mailbox.wake_due(mailbox::wake_second())
        {
            wakeups.missed(device);
        }
        true
    }

    /// The submit of [`Router::submit`].
    fn submit_now(&self, from: Device, msg: Outgoing) -> Result<Submitted, SendError> {
        let config = &self.inner.config;
        let metrics = &self.inner.metrics;
        let digest = sent::digest(msg.to, &msg.payload);
        let mut senders = self.inner.senders.lock(from);
        let log = senders.entry(from).or_default();
        if let Some(previous) = log.find(msg.client_msg_id) {
            if previous.digest != 0 && previous.digest != digest {
                return Err(SendError::Reused);
            }
            metrics.messages_deduplicated.inc();
            let accepted = Accepted {
                message_id: previous.message_id,
                timestamp_ms: previous.timestamp_ms,
                duplicate: true,
            };
            // The original may still be on its way to the disk: the ack
            // must not promise more than the first one would.
            return Ok(match &self.inner.journal {
                None => Submitted::ready(Ok(accepted)),
                Some(journal) => {
                    let (done, wait) = tokio::sync::oneshot::channel();
                    journal.submit(Op::Barrier(done));
                    Submitted::durable(accepted, wait)
                }
            });
        }

        let targets = msg.targets(from);
        let recipients = msg.to_devices.len().min(targets.len());
        let bytes = msg.payload.largest();
        // The inbound limit is the recipient's: counted on its primary
        // device's mailbox, checked before anything is queued.
        if let Some(&primary) = targets.first() {
            let mut shard = self.inner.mailboxes.lock(primary);
            if shard.contains_key(&primary) || !self.is_removed(primary) {
                let waited = shard.entry(primary).or_default().take_inbound(
                    config.inbound_bytes,
                    bytes,
                    tokio::time::Instant::now(),
                );
                if let Err(wait) = waited {
                    return Err(SendError::RateLimited {
                        retry_after_ms: u32::try_from(wait.as_millis()).unwrap_or(u32::MAX).max(1),
                    });
                }
            }
        }
        // Taken under the send log's lock: each sender's ids increase in
        // the order it sends.
        let message_id = self.inner.ids.next();
        let timestamp_ms = now_ms();
        let shared = match &msg.payload {
            Payload::Shared(body) => Some(frames::deliver(
                message_id,
                from,
                msg.to,
                timestamp_ms,
                body.clone(),
            )),
            Payload::PerDevice(_) => None,
        };
        let notify = (msg.from_devices.as_slice() != [from.device])
            .then(|| Arc::new(msg.from_devices.as_slice().to_vec()));
        let journaled = self.journaled();
        let mut queued: Vec<Device> = Vec::with_capacity(targets.len());
        let mut per_target: Vec<Bytes> = Vec::new();
        for (at, target) in targets.iter().enumerate() {
            if at == recipients && queued.is_empty() {
                // No device of the recipient had room: refuse it all, before
                // any copy goes to the sender's other devices.
                break;
            }
            let frame = match (&shared, msg.payload.body_for(*target)) {
                (Some(frame), _) => frame.clone(),
                (None, Some(body)) => {
                    frames::deliver(message_id, from, msg.to, timestamp_ms, body.clone())
                }
                (None, None) => continue,
            };
            let entry = Entry::message(message_id, frame.clone(), from, notify.clone(), !journaled);
            if self.push(*target, entry, Some(bytes), true) {
                queued.push(*target);
                if shared.is_none() {
                    per_target.push(frame);
                }
            } else {
                metrics.copies_refused.inc();
            }
        }
        if !queued.iter().any(|d| d.user == msg.to) {
            return Err(SendError::MailboxFull {
                retry_after_ms: u32::try_from(config.mailbox_full_retry.as_millis())
                    .unwrap_or(u32::MAX),
            });
        }
        // Only a journal needs to know which sends were forgotten.
        let mut forgotten = Vec::new();
        log.record(
            Sent {
                client_msg_id: msg.client_msg_id,
                message_id,
                timestamp_ms,
                digest,
            },
            config.dedupe_horizon,
            journaled.then_some(&mut forgotten),
        );
        metrics.messages_accepted.inc();
        metrics.copies_queued.inc_by(queued.len() as u64);
        let accepted = Accepted {
            message_id,
            timestamp_ms,
            duplicate: false,
        };
        let Some(journal) = &self.inner.journal else {
            return Ok(Submitted::ready(Ok(accepted)));
        };
        let (done, wait) = tokio::sync::oneshot::channel();
        journal.submit(Op::Queue {
            record: QueuedRecord {
                id: message_id,
                kind: RecordKind::Message {
                    sender: from,
                    notify,
                },
                targets: queued,
                frames: match shared {
                    Some(frame) => Frames::Shared(frame),
                    None => Frames::PerTarget(per_target),
                },
            },
            sent: Some(SentRecord {
                message_id,
                device: from,
                client_msg_id: msg.client_msg_id,
                timestamp_ms,
                digest,
            }),
            forgotten,
            done: Some(done),
        });
        drop(senders);
        Ok(Submitted::durable(accepted, wait))
    }

    /// Queues `frame_of(id, ids)` for each of `to`, one receipt per run of
    /// ids that fits a frame (nearly always one). Returns the records for
    /// the journal (empty without one).
    fn queue_receipts(
        &self,
        to: &[Device],
        wake: bool,
        message_ids: &[u64],
        frame_of: impl Fn(u64, Vec<u64>) -> Bytes,
    ) -> Vec<QueuedRecord> {
        let journaled = self.journaled();
        let mut records = Vec::new();
        for ids in frames::receipt_runs(message_ids) {
            let receipt_id = self.inner.ids.next();
            let frame = frame_of(receipt_id, ids.to_vec());
            let mut targets = Vec::with_capacity(to.len());
            for &device in to {
                let entry = Entry::receipt(receipt_id, frame.clone(), !journaled);
                if self.push(device, entry, None, wake) {
                    targets.push(device);
                }
            }
            if journaled && !targets.is_empty() {
                records.push(QueuedRecord {
                    id: receipt_id,
                    kind: RecordKind::Receipt,
                    targets,
                    frames: Frames::Shared(frame),
                });
            }
        }
        records
    }

    /// Removes delivered entries from `device`'s mailbox (messages, or
    /// receipts and read-syncs: an ack of one kind never wipes the other)
    /// and pushes what the window now has room for. Returns them.
    fn take_delivered(&self, device: Device, ids: &[u64], messages: bool) -> Vec<Entry> {
        let mut shard = self.inner.mailboxes.lock(device);
        let Some(mailbox) = shard.get_mut(&device) else {
            return Vec::new();
        };
        let removed: Vec<Entry> = ids
            .iter()
            .filter_map(|&id| mailbox.take_delivered(id, messages))
            .collect();
        mailbox.pump(self.window());
        if mailbox.is_idle() {
            shard.remove(&device);
        }
        removed
    }

    #[cfg(test)]
    fn queued(&self, device: Device) -> usize {
        self.inner
            .mailboxes
            .lock(device)
            .get(&device)
            .map_or(0, Mailbox::len)
    }
}

impl Inner {
    fn new(config: MemoryConfig, metrics: RouterMetrics, journal: Option<Journal>) -> Self {
        Self {
            mailboxes: Shards::new(config.shards),
            senders: Shards::new(config.shards),
            removed: Mutex::default(),
            ids: IdGenerator::new(config.node),
            sessions: AtomicU64::new(0),
            config,
            metrics,
            journal,
            wakeups: std::sync::OnceLock::new(),
        }
    }
}

impl Default for MemoryRouter {
    fn default() -> Self {
        Self::new(MemoryConfig::default())
    }
}

/// Groups messages delivered to `by` by the devices their DELIVERED
/// receipts go to. A copy of the account's own message (sent from another
/// of its devices, or to itself) makes no receipt: receipts report on the
/// recipient.
fn by_notified(by: Device, entries: &[Entry]) -> Vec<(Vec<Device>, Vec<u64>)> {
    let mut groups: Vec<(Vec<Device>, Vec<u64>)> = Vec::new();
    for entry in entries {
        match entry.sender() {
            Some(sender) if sender.user != by.user => {}
            _ => continue,
        }
        let notified: Vec<Device> = entry.notified().collect();
        match groups.iter_mut().find(|(to, _)| *to == notified) {
            Some((_, ids)) => ids.push(entry.id),
            None => groups.push((notified, vec![entry.id])),
        }
    }
    groups
}

impl Router for MemoryRouter {
    async fn attach(&self, device: Device) -> Result<Attached, RouterError> {
        let id = SessionId(self.inner.sessions.fetch_add(1, Ordering::Relaxed) + 1);
        let mut shard = self.inner.mailboxes.lock(device);
        let mailbox = shard.entry(device).or_default();
        let (live, attached) = Live::channel(id, mailbox.len());
        if let Some(old) = mailbox.attach(live, self.window()) {
            old.close(CloseReason::Displaced);
        }
        if let Some(wakeups) = self.wakeups() {
            wakeups.connected(device);
        }
        Ok(attached)
    }

    async fn detach(&self, device: Device, session: SessionId) -> Result<(), RouterError> {
        let mut shard = self.inner.mailboxes.lock(device);
        if let Some(mailbox) = shard.get_mut(&device) {
            if mailbox.detach(session)
                && mailbox.len() > 0
                && let Some(wakeups) = self.wakeups()
            {
                wakeups.disconnected(device);
            }
            if mailbox.is_idle() {
                shard.remove(&device);
            }
        }
        Ok(())
    }

    fn submit(&self, from: Device, msg: Outgoing) -> Submitted {
        match self.submit_now(from, msg) {
            Ok(submitted) => submitted,
            Err(refused) => Submitted::ready(Err(refused)),
        }
    }

    async fn ack_delivery(&self, device: Device, message_ids: &[u64]) -> Result<(), RouterError> {
        let removed = self.take_delivered(device, message_ids, true);
        if removed.is_empty() {
            return Ok(());
        }
        let metrics = &self.inner.metrics;
        let now = now_ms();
        let mut receipts = Vec::new();
        for entry in &removed {
            metrics.messages_delivered.inc();
            let age_ms = now.saturating_sub(accepted_at_ms(entry.id));
            metrics.delivery_seconds.observe(age_ms as f64 / 1000.0);
        }
        let label = crate::metrics::kind_label(ReceiptKind::Delivered);
        for (notified, ids) in by_notified(device, &removed) {
            metrics.receipts_queued.get_or_create(&label).inc();
            receipts.extend(self.queue_receipts(&notified, true, &ids, |rid, ids| {
                frames::receipt(rid, ReceiptKind::Delivered, device, ids, now)
            }));
        }
        // The releases and the receipts they produced, in one commit.
        self.journal(Op::Change {
            released: removed.iter().map(|e| (e.id, device)).collect(),
            queued: receipts,
        });
        Ok(())
    }

    async fn mark_read(&self, reader: Device, read: Read) -> Result<(), RouterError> {
        let now = now_ms();
        let senders: Vec<Device> = read
            .sender_devices
            .iter()
            .map(|d| Device::new(read.sender, d))
            .collect();
        let others: Vec<Device> = read
            .reader_devices
            .iter()
            .filter(|&d| d != reader.device)
            .map(|d| Device::new(reader.user, d))
            .collect();
        let metrics = &self.inner.metrics;
        let mut records = Vec::new();
        if !senders.is_empty() {
            metrics
                .receipts_queued
                .get_or_create(&crate::metrics::kind_label(ReceiptKind::Read))
                .inc();
            records.extend(
                self.queue_receipts(&senders, true, &read.message_ids, |rid, ids| {
                    frames::receipt(rid, ReceiptKind::Read, reader, ids, now)
                }),
            );
        }
        if !others.is_empty() {
            metrics.read_syncs_queued.inc();
            records.extend(
                self.queue_receipts(&others, false, &read.message_ids, |rid, ids| {
                    frames::read_sync(rid, read.sender, ids, reader.device, now)
                }),
            );
        }
        if !records.is_empty() {
            self.journal(Op::Change {
                released: Vec::new(),
                queued: records,
            });
        }
        Ok(())
    }

    async fn ack_receipts(&self, device: Device, receipt_ids: &[u64]) -> Result<(), RouterError> {
        let removed = self.take_delivered(device, receipt_ids, false);
        if removed.is_empty() {
            return Ok(());
        }
        self.inner
            .metrics
            .receipts_acknowledged
            .inc_by(removed.len() as u64);
        self.journal(Op::Change {
            released: removed.iter().map(|e| (e.id, device)).collect(),
            queued: Vec::new(),
        });
        Ok(())
    }

    async fn close(&self, device: Device, reason: CloseReason) -> Result<(), RouterError> {
        if let Some(mailbox) = self.inner.mailboxes.lock(device).get_mut(&device) {
            mailbox.close(reason);
        }
        Ok(())
    }

    async fn close_all(&self, reason: CloseReason) {
        for shard in 0..self.inner.mailboxes.len() {
            for mailbox in self.inner.mailboxes.lock_index(shard).values_mut() {
                mailbox.close(reason);
            }
        }
    }

    async fn remove_device(
        &self,
        device: Device,
        reason: CloseReason,
        successor: Option<Device>,
    ) -> Result<(), RouterError> {
        {
            let mut removed = self
                .inner
                .removed
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            removed.retain(|_, at| now.duration_since(*at) < REMOVED_KEPT);
            removed.insert(device, now);
        }
        let entries = match self.inner.mailboxes.lock(device).remove(&device) {
            Some(mut mailbox) => {
                mailbox.close(reason);
                mailbox.take_all()
            }
            None => Vec::new(),
        };
        if let Some(log) = self.inner.senders.lock(device).remove(&device) {
            self.journal(Op::Forget(log.message_ids()));
        }
        let ids: Vec<u64> = entries.iter().map(|e| e.id).collect();
        match successor {
            Some(to) if !entries.is_empty() => {
                let window = self.window();
                let mut shard = self.inner.mailboxes.lock(to);
                let mailbox = shard.entry(to).or_default();
                for entry in entries {
                    mailbox.push(entry, window);
                }
                drop(shard);
                self.journal(Op::Retarget {
                    from: device,
                    to,
                    ids,
                });
            }
            _ if !ids.is_empty() => self.journal(Op::Change {
                released: ids.into_iter().map(|id| (id, device)).collect(),
                queued: Vec::new(),
            }),
            _ => {}
        }
        Ok(())
    }

    async fn flush(&self) {
        if let Some(journal) = &self.inner.journal {
            let (done, wait) = tokio::sync::oneshot::channel();
            journal.submit(Op::Barrier(done));
            // An error means the committer is gone: nothing to wait for.
            let _ = wait.await;
        }
    }

    async fn expire(&self, now_ms: u64) -> usize {
        let ttl_ms = u64::try_from(self.inner.config.ttl.as_millis()).unwrap_or(u64::MAX);
        let cutoff = now_ms.saturating_sub(ttl_ms);
        let metrics = &self.inner.metrics;
        let mut total = 0;
        let mut released = Vec::new();
        let journaled = self.journaled();
        for shard in 0..self.inner.mailboxes.len() {
            let mut shard = self.inner.mailboxes.lock_index(shard);
            shard.retain(|device, mailbox| {
                for entry in mailbox.expire(cutoff) {
                    total += 1;
                    if journaled {
                        released.push((entry.id, *device));
                    }
                    if entry.is_message() {
                        metrics.messages_expired.inc();
                    } else {
                        metrics.receipts_expired.inc();
                    }
                }
                mailbox.pump(self.inner.config.window);
                !mailbox.is_idle()
            });
        }
        if !released.is_empty() {
            self.journal(Op::Change {
                released,
                queued: Vec::new(),
            });
        }
        total
    }

    async fn census(&self) -> Census {
        let mut census = Census::default();
        let mut oldest = u64::MAX;
        for shard in 0..self.inner.mailboxes.len() {
            let shard = self.inner.mailboxes.lock_index(shard);
            census.mailboxes += shard.len();
            for mailbox in shard.values() {
                census.queued += mailbox.len();
                census.deepest = census.deepest.max(mailbox.len());
                if let Some(id) = mailbox.oldest() {
                    oldest = oldest.min(id);
                }
            }
        }
        if oldest != u64::MAX {
            census.oldest_age_ms = now_ms().saturating_sub(accepted_at_ms(oldest));
        }
        let metrics = &self.inner.metrics;
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        metrics.mailboxes.set(gauge(census.mailboxes));
        metrics.queued.set(gauge(census.queued));
        metrics.deepest_mailbox.set(gauge(census.deepest));
        metrics
            .oldest_queued_seconds
            .set(i64::try_from(census.oldest_age_ms / 1000).unwrap_or(i64::MAX));
        census
    }

    fn set_wakeups(&self, wakeups: Arc<dyn crate::Wakeups>) -> bool {
        self.inner.wakeups.set(wakeups).is_ok()
    }
}

#[cfg(test)]
mod tests;
