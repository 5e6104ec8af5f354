//! The single-node router: every mailbox in process memory.
//!
//! Mailboxes are spread over shards, each a `std::sync::Mutex` around a map,
//! so sessions on different cores rarely meet on the same lock. A lock is
//! held only for in-memory work (no `.await`, no I/O: pushing to a session is
//! a non-blocking channel send), which is why a blocking mutex is right here.
//!
//! A send touches two mailboxes, the sender's (de-duplication) and the
//! recipient's (queue), and holds both shard locks, taken in shard order so
//! two sends can never deadlock, for the whole check-queue-record step: two
//! sessions of one device racing with the same `client_msg_id` cannot both
//! queue it.
//!
//! With a [journal](crate::journal) (the default in the server), every
//! change is also handed to the journal's committer while the lock that
//! made it is held, so the journal sees each mailbox's changes in the order
//! memory did. New entries wait in their queue, not yet deliverable, until
//! their commit is durable; a send returns only then.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use parley_proto::v1::{CloseReason, ReceiptKind};
use tokio::sync::{mpsc, oneshot};

use crate::ids::{IdGenerator, accepted_at_ms, now_ms};
use crate::journal::{Journal, JournalConfig, JournalError, Op, QueuedRecord, SentRecord};
use crate::mailbox::{Entry, Live, Mailbox};
use crate::metrics::RouterMetrics;
use crate::{
    Accepted, Attached, Device, Outgoing, Router, RouterError, SendError, SessionId, UserId, frames,
};

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
    /// Number of mailbox shards (locks).
    pub shards: usize,
    /// Messages one device may have queued; a send past it gets
    /// `MAILBOX_FULL`. Receipts are not counted (they are bounded by what
    /// the device itself sent).
    pub max_queued_messages: usize,
    /// Encoded bytes of the messages one device may have queued.
    pub max_queued_bytes: usize,
    /// Retry hint sent with `MAILBOX_FULL`.
    pub mailbox_full_retry: std::time::Duration,
    /// Undelivered messages and receipts older than this are deleted.
    pub ttl: std::time::Duration,
    /// Message bytes one device may receive: a burst, then a rate. Protects
    /// a recipient (and the node's memory) from a flood by many senders.
    pub inbound_bytes: crate::ratelimit::Rate,
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
        }
    }
}

type Shard = HashMap<UserId, Mailbox>;

/// A cheap clonable handle to the single-node router.
#[derive(Clone, Debug)]
pub struct MemoryRouter {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: MemoryConfig,
    shards: Box<[Mutex<Shard>]>,
    /// Message and receipt ids.
    ids: IdGenerator,
    /// Session ids, only to tell sessions of one device apart.
    sessions: AtomicU64,
    metrics: RouterMetrics,
    /// `None`: memory-only (a crash loses what is queued).
    journal: Option<Journal>,
}

/// What [`MemoryRouter::open`] read back from the journal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Restored {
    /// Messages queued again, and receipts.
    pub messages: usize,
    pub receipts: usize,
    /// Recent sends remembered again for de-duplication.
    pub sends: usize,
    /// The journal file's size as found, and after compaction.
    pub file_bytes: (u64, u64),
}

/// A send's server ack, now or once the journal has it.
enum Pending {
    Now(Accepted),
    Durable(Accepted, oneshot::Receiver<()>),
}

/// A count of what the router holds, taken shard by shard (so not an
/// atomic snapshot, which an operator's gauge does not need).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Census {
    pub mailboxes: usize,
    /// Messages and receipts queued.
    pub queued: usize,
    /// The most entries queued for one device.
    pub deepest: usize,
    /// Age of the oldest queued entry, in milliseconds.
    pub oldest_age_ms: u64,
}

impl MemoryRouter {
    /// A router whose metrics are not registered anywhere.
    pub fn new(config: MemoryConfig) -> Self {
        Self::with_metrics(config, RouterMetrics::default())
    }

    /// A memory-only router counting into `metrics`: a crash loses
    /// whatever is queued.
    pub fn with_metrics(config: MemoryConfig, metrics: RouterMetrics) -> Self {
        let inner = Inner {
            shards: Self::shards(&config),
            config,
            ids: IdGenerator::default(),
            sessions: AtomicU64::new(0),
            metrics,
            journal: None,
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// A router whose every change is journaled at `journal`: opens the
    /// journal, queues again everything it holds (in order) and starts its
    /// committer. Blocking (reads the whole journal): call it before taking
    /// traffic, off the async runtime's workers.
    pub fn open(
        config: MemoryConfig,
        metrics: RouterMetrics,
        journal: &JournalConfig,
    ) -> Result<(Self, Restored), JournalError> {
        let (db, replayed) = Journal::open(journal)?;
        let mut failed = None;
        let inner = Arc::new_cyclic(|weak: &Weak<Inner>| {
            let weak = weak.clone();
            let on_durable = Box::new(move |entries: &[(UserId, u64)]| {
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
            Inner {
                shards: Self::shards(&config),
                config,
                ids: IdGenerator::default(),
                sessions: AtomicU64::new(0),
                metrics,
                journal: started.map_err(|e| failed = Some(e)).ok(),
            }
        });
        if let Some(error) = failed {
            return Err(error);
        }
        let router = Self { inner };
        let restored = router.restore(replayed);
        Ok((router, restored))
    }

    fn shards(config: &MemoryConfig) -> Box<[Mutex<Shard>]> {
        (0..config.shards.max(1))
            .map(|_| Mutex::new(Shard::new()))
            .collect()
    }

    /// Queues the journal's entries again and rebuilds the sends' memory.
    fn restore(&self, replayed: crate::journal::Replayed) -> Restored {
        let mut restored = Restored {
            file_bytes: replayed.file_bytes,
            ..Restored::default()
        };
        self.inner.ids.resume_after(replayed.max_id());
        for record in replayed.queued {
            if record.sender.is_some() {
                restored.messages += 1;
            } else {
                restored.receipts += 1;
            }
            self.lock(self.shard_of(record.recipient))
                .entry(record.recipient)
                .or_default()
                .push(
                    Entry {
                        id: record.id,
                        sender: record.sender,
                        frame: record.frame,
                        durable: true,
                    },
                    self.window(),
                );
        }
        let mut forgotten = Vec::new();
        for sent in replayed.sent {
            restored.sends += 1;
            self.lock(self.shard_of(sent.user))
                .entry(sent.user)
                .or_default()
                .record_sent(
                    sent.device,
                    sent.client_msg_id,
                    sent.message_id,
                    sent.timestamp_ms,
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
    fn mark_durable(&self, entries: &[(UserId, u64)]) {
        let window = self.window();
        let mut at = 0;
        while at < entries.len() {
            // One lock for each run of entries in the same shard.
            let shard_index = self.shard_of(entries[at].0);
            let mut shard = self.lock(shard_index);
            while let Some(&(user, id)) = entries.get(at) {
                if self.shard_of(user) != shard_index {
                    break;
                }
                if let Some(mailbox) = shard.get_mut(&user) {
                    mailbox.mark_durable(id, window);
                }
                at += 1;
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

    /// Returns once every change made so far is durable (at once without a
    /// journal). For shutdown.
    pub async fn flush(&self) {
        if let Some(journal) = &self.inner.journal {
            let (done, wait) = oneshot::channel();
            journal.submit(Op::Barrier(done));
            // An error means the committer is gone: nothing to wait for.
            let _ = wait.await;
        }
    }

    fn shard_of(&self, user: UserId) -> usize {
        // Fibonacci hashing: user ids are random, but spreading them does
        // not cost anything and protects against any pattern in them.
        let hash = user.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (hash >> 32) as usize % self.inner.shards.len()
    }

    fn lock(&self, shard: usize) -> MutexGuard<'_, Shard> {
        // A panic while a shard was locked leaves it as consistent as the
        // panicking step left it; refusing service for all of its users
        // would be worse.
        self.inner.shards[shard]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn window(&self) -> usize {
        self.inner.config.window
    }

    fn send_now(&self, from: Device, msg: Outgoing) -> Result<Pending, SendError> {
        let (from_shard, to_shard) = (self.shard_of(from.user), self.shard_of(msg.to));
        let low = from_shard.min(to_shard);
        let mut first = self.lock(low);
        let mut second = (from_shard != to_shard).then(|| self.lock(from_shard.max(to_shard)));
        if let Some(sender) =
            pick(low, &mut first, second.as_deref_mut(), from_shard).get(&from.user)
            && let Some((message_id, timestamp_ms)) =
                sender.sent_before(from.device, msg.client_msg_id)
        {
            self.inner.metrics.messages_deduplicated.inc();
            let accepted = Accepted {
                message_id,
                timestamp_ms,
                duplicate: true,
            };
            // The original may still be on its way to the disk: the
            // ack must not promise more than the first one would.
            return Ok(match &self.inner.journal {
                None => Pending::Now(accepted),
                Some(journal) => {
                    let (done, wait) = oneshot::channel();
                    journal.submit(Op::Barrier(done));
                    Pending::Durable(accepted, wait)
                }
            });
        }

        let config = &self.inner.config;
        let recipient = pick(low, &mut first, second.as_deref_mut(), to_shard)
            .entry(msg.to)
            .or_default();
        // The Deliver frame adds a few dozen bytes of envelope to the body;
        // the cap counts encoded frames, so this check is a close bound.
        if !recipient.has_room(
            msg.body.len(),
            config.max_queued_messages,
            config.max_queued_bytes,
        ) {
            return Err(SendError::MailboxFull {
                retry_after_ms: u32::try_from(config.mailbox_full_retry.as_millis())
                    .unwrap_or(u32::MAX),
            });
        }
        if let Err(wait) = recipient.take_inbound(
            config.inbound_bytes,
            msg.body.len(),
            tokio::time::Instant::now(),
        ) {
            return Err(SendError::RateLimited {
                retry_after_ms: u32::try_from(wait.as_millis()).unwrap_or(u32::MAX).max(1),
            });
        }
        // The id is taken under the recipient's lock, so ids in a mailbox
        // increase in queue order.
        let message_id = self.inner.ids.next();
        let timestamp_ms = now_ms();
        let frame = frames::deliver(message_id, from.user, timestamp_ms, msg.body);
        recipient.push(
            Entry {
                id: message_id,
                sender: Some(from.user),
                frame: frame.clone(),
                durable: !self.journaled(),
            },
            config.window,
        );
        // Only a journal needs to know which sends were forgotten.
        let mut forgotten = Vec::new();
        pick(low, &mut first, second.as_deref_mut(), from_shard)
            .entry(from.user)
            .or_default()
            .record_sent(
                from.device,
                msg.client_msg_id,
                message_id,
                timestamp_ms,
                self.inner.config.dedupe_horizon,
                self.journaled().then_some(&mut forgotten),
            );
        self.inner.metrics.messages_accepted.inc();
        let accepted = Accepted {
            message_id,
            timestamp_ms,
            duplicate: false,
        };
        let Some(journal) = &self.inner.journal else {
            return Ok(Pending::Now(accepted));
        };
        // Still under both locks: the journal sees this mailbox's changes
        // in the order memory made them.
        let (done, wait) = oneshot::channel();
        journal.submit(Op::Send {
            message: QueuedRecord {
                id: message_id,
                recipient: msg.to,
                sender: Some(from.user),
                frame,
            },
            sent: SentRecord {
                message_id,
                user: from.user,
                device: from.device,
                client_msg_id: msg.client_msg_id,
                timestamp_ms,
            },
            forgotten,
            done,
        });
        Ok(Pending::Durable(accepted, wait))
    }

    /// Queues receipts for `to` about messages of `by`: one, or more when
    /// the ids would not fit one frame. With a journal, each receipt waits
    /// (undeliverable) for the commit of the returned records.
    fn queue_receipt(
        &self,
        to: UserId,
        kind: ReceiptKind,
        by: UserId,
        message_ids: &[u64],
    ) -> Vec<QueuedRecord> {
        let label = crate::metrics::kind_label(kind);
        let journaled = self.journaled();
        let mut records = Vec::new();
        let mut shard = self.lock(self.shard_of(to));
        for ids in frames::receipt_runs(message_ids) {
            self.inner
                .metrics
                .receipts_queued
                .get_or_create(&label)
                .inc();
            let receipt_id = self.inner.ids.next();
            let frame = frames::receipt(receipt_id, kind, by, ids.to_vec(), now_ms());
            shard.entry(to).or_default().push(
                Entry {
                    id: receipt_id,
                    sender: None,
                    frame: frame.clone(),
                    durable: !journaled,
                },
                self.window(),
            );
            if journaled {
                records.push(QueuedRecord {
                    id: receipt_id,
                    recipient: to,
                    sender: None,
                    frame,
                });
            }
        }
        records
    }

    /// Removes entries from `user`'s mailbox and pushes what the window now
    /// has room for. Returns the removed messages' ids grouped by sender,
    /// and (with a journal) the ids of every entry removed.
    fn remove_entries(&self, user: UserId, ids: &[u64]) -> Removed {
        let mut removed = Removed::default();
        let mut shard = self.lock(self.shard_of(user));
        let Some(mailbox) = shard.get_mut(&user) else {
            return removed;
        };
        let journaled = self.journaled();
        let by_sender = &mut removed.by_sender;
        let metrics = &self.inner.metrics;
        let now = now_ms();
        for &id in ids {
            let Some(entry) = mailbox.remove(id) else {
                continue;
            };
            if journaled {
                removed.ids.push(id);
            }
            let Some(sender) = entry.sender else {
                metrics.receipts_acknowledged.inc();
                continue;
            };
            metrics.messages_delivered.inc();
            let age_ms = now.saturating_sub(accepted_at_ms(id));
            metrics.delivery_seconds.observe(age_ms as f64 / 1000.0);
            match by_sender.iter_mut().find(|(s, _)| *s == sender) {
                Some((_, ids)) => ids.push(id),
                None => by_sender.push((sender, vec![id])),
            }
        }
        mailbox.pump(self.window());
        if mailbox.is_idle() {
            shard.remove(&user);
        }
        removed
    }

    /// Deletes every message and receipt accepted more than the TTL before
    /// `now_ms`, and counts them. Locks each shard in turn; meant for a
    /// periodic sweep (it looks only at the front of each mailbox).
    pub fn expire(&self, now_ms: u64) -> usize {
        let ttl_ms = u64::try_from(self.inner.config.ttl.as_millis()).unwrap_or(u64::MAX);
        let cutoff = now_ms.saturating_sub(ttl_ms);
        let metrics = &self.inner.metrics;
        let mut total = 0;
        let mut removed = Vec::new();
        let journaled = self.journaled();
        for shard in 0..self.inner.shards.len() {
            let mut shard = self.lock(shard);
            shard.retain(|_, mailbox| {
                for entry in mailbox.expire(cutoff) {
                    total += 1;
                    if journaled {
                        removed.push(entry.id);
                    }
                    if entry.sender.is_some() {
                        metrics.messages_expired.inc();
                    } else {
                        metrics.receipts_expired.inc();
                    }
                }
                mailbox.pump(self.inner.config.window);
                !mailbox.is_idle()
            });
        }
        if !removed.is_empty() {
            self.journal(Op::Change {
                removed,
                receipts: Vec::new(),
            });
        }
        total
    }

    /// Counts what the router holds and updates the census gauges. Locks
    /// each shard in turn, briefly: meant for a once-a-second ticker.
    pub fn census(&self) -> Census {
        let mut census = Census::default();
        let mut oldest = u64::MAX;
        for shard in 0..self.inner.shards.len() {
            let shard = self.lock(shard);
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

    #[cfg(test)]
    fn queued(&self, user: UserId) -> usize {
        self.lock(self.shard_of(user))
            .get(&user)
            .map_or(0, Mailbox::len)
    }
}

/// What [`MemoryRouter::remove_entries`] removed.
#[derive(Default)]
struct Removed {
    by_sender: Vec<(UserId, Vec<u64>)>,
    ids: Vec<u64>,
}

/// The shard guard for `shard`, of the one or two locked in [`MemoryRouter::send_now`].
fn pick<'a>(
    low: usize,
    first: &'a mut Shard,
    second: Option<&'a mut Shard>,
    shard: usize,
) -> &'a mut Shard {
    match second {
        Some(second) if shard != low => second,
        _ => first,
    }
}

impl Default for MemoryRouter {
    fn default() -> Self {
        Self::new(MemoryConfig::default())
    }
}

impl Router for MemoryRouter {
    async fn attach(&self, device: Device) -> Result<Attached, RouterError> {
        // One slot more than the window, for the queue-empty marker.
        let (frames_tx, frames) = mpsc::channel(self.window() + 1);
        let (close_tx, closed) = oneshot::channel();
        let id = SessionId(self.inner.sessions.fetch_add(1, Ordering::Relaxed) + 1);
        let live = Live {
            id,
            device: device.device,
            frames: frames_tx,
            close: Some(close_tx),
        };
        self.lock(self.shard_of(device.user))
            .entry(device.user)
            .or_default()
            .attach(live, self.window());
        Ok(Attached { id, frames, closed })
    }

    async fn detach(&self, device: Device, session: SessionId) {
        let mut shard = self.lock(self.shard_of(device.user));
        if let Some(mailbox) = shard.get_mut(&device.user) {
            mailbox.detach(session);
            if mailbox.is_idle() {
                shard.remove(&device.user);
            }
        }
    }

    fn send(
        &self,
        from: Device,
        msg: Outgoing,
    ) -> impl std::future::Future<Output = Result<Accepted, SendError>> + Send {
        // Queued here, at the call (the trait's ordering promise).
        let pending = self.send_now(from, msg);
        async move {
            match pending? {
                Pending::Now(accepted) => Ok(accepted),
                Pending::Durable(accepted, wait) => match wait.await {
                    Ok(()) => Ok(accepted),
                    Err(_) => Err(SendError::Router(RouterError::Unavailable(
                        "the journal has stopped".to_owned(),
                    ))),
                },
            }
        }
    }

    async fn ack_delivery(&self, device: Device, message_ids: &[u64]) -> Result<(), RouterError> {
        let removed = self.remove_entries(device.user, message_ids);
        let receipts: Vec<QueuedRecord> = removed
            .by_sender
            .into_iter()
            .flat_map(|(sender, ids)| {
                self.queue_receipt(sender, ReceiptKind::Delivered, device.user, &ids)
            })
            .collect();
        if !removed.ids.is_empty() {
            // The deletes and the receipts they produced, in one commit.
            self.journal(Op::Change {
                removed: removed.ids,
                receipts,
            });
        }
        Ok(())
    }

    async fn mark_read(
        &self,
        device: Device,
        to: UserId,
        message_ids: Vec<u64>,
    ) -> Result<(), RouterError> {
        let receipts = self.queue_receipt(to, ReceiptKind::Read, device.user, &message_ids);
        if !receipts.is_empty() {
            self.journal(Op::Change {
                removed: Vec::new(),
                receipts,
            });
        }
        Ok(())
    }

    async fn ack_receipts(&self, device: Device, receipt_ids: &[u64]) -> Result<(), RouterError> {
        let removed = self.remove_entries(device.user, receipt_ids);
        if !removed.ids.is_empty() {
            self.journal(Op::Change {
                removed: removed.ids,
                receipts: Vec::new(),
            });
        }
        Ok(())
    }

    async fn revoke(&self, device: Device) {
        let mut shard = self.lock(self.shard_of(device.user));
        if let Some(mailbox) = shard.get_mut(&device.user) {
            mailbox.close_device(device.device, CloseReason::Revoked);
        }
    }
}

#[cfg(test)]
mod tests;
