//! What the router counts, registered once by the server and shared by
//! every clone of the router (the metric types are handles around atomics).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// A label set of one bounded label.
pub type Label = [(&'static str, &'static str); 1];

/// The `kind` label of a receipt, as the documentation spells it.
pub(crate) fn kind_label(kind: parley_proto::v1::ReceiptKind) -> Label {
    match kind {
        parley_proto::v1::ReceiptKind::Read => [("kind", "read")],
        _ => [("kind", "delivered")],
    }
}

/// The router's metric families.
#[derive(Clone, Debug)]
pub struct RouterMetrics {
    /// Messages accepted and queued (server acks of new messages).
    pub messages_accepted: Counter,
    /// Resent `client_msg_id`s answered with their original ack.
    pub messages_deduplicated: Counter,
    /// Messages acknowledged by their recipients (and wiped).
    pub messages_delivered: Counter,
    /// Receipts queued, by kind.
    pub receipts_queued: Family<Label, Counter>,
    /// Receipts and read-syncs acknowledged by their recipients (and wiped).
    pub receipts_acknowledged: Counter,
    /// Device copies of accepted messages queued (one per device a message
    /// went to): with `messages_accepted`, the fan-out.
    pub copies_queued: Counter,
    /// Device copies not queued because that device's mailbox was full.
    pub copies_refused: Counter,
    /// Read-syncs queued for a reader's other devices.
    pub read_syncs_queued: Counter,
    /// Messages deleted undelivered after the TTL.
    pub messages_expired: Counter,
    /// Receipts deleted unacknowledged after the TTL.
    pub receipts_expired: Counter,
    /// Seconds from a message's acceptance to its recipient's acknowledgement.
    pub delivery_seconds: Histogram,
    /// Entries (messages and receipts) queued, from the last census.
    pub queued: Gauge,
    /// Mailboxes in memory, from the last census.
    pub mailboxes: Gauge,
    /// The most entries queued for one device, from the last census.
    pub deepest_mailbox: Gauge,
    /// Age in seconds of the oldest queued entry, from the last census.
    pub oldest_queued_seconds: Gauge,
    /// The journal's commits (none in memory-only mode).
    pub journal: JournalMetrics,
}

/// What the journal's committer counts.
#[derive(Clone, Debug)]
pub struct JournalMetrics {
    /// Durable commits (each one `fsync`).
    pub commits: Counter,
    /// Records put or deleted.
    pub changes: Counter,
    /// Ops (sends, acks, receipts) per commit: how well commits are grouped.
    pub batch_ops: Histogram,
    /// Time to write and sync one commit.
    pub commit_seconds: Histogram,
    /// Failed commits (each retried until it succeeds).
    pub errors: Counter,
    /// Compactions while running (the file was mostly free space).
    pub compactions: Counter,
    /// Checkpoints: the log's commits applied to the journal file at once.
    pub checkpoints: Counter,
}

impl Default for JournalMetrics {
    fn default() -> Self {
        Self {
            commits: Counter::default(),
            changes: Counter::default(),
            batch_ops: Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0, 64.0, 256.0, 1024.0, 4096.0]),
            commit_seconds: Histogram::new([
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0,
            ]),
            errors: Counter::default(),
            compactions: Counter::default(),
            checkpoints: Counter::default(),
        }
    }
}

impl Default for RouterMetrics {
    fn default() -> Self {
        let receipts_queued = Family::default();
        // Every series from the start (at 0), for dashboards and alerts.
        for kind in ["delivered", "read"] {
            let _ = receipts_queued.get_or_create(&[("kind", kind)]);
        }
        Self {
            messages_accepted: Counter::default(),
            messages_deduplicated: Counter::default(),
            messages_delivered: Counter::default(),
            receipts_queued,
            receipts_acknowledged: Counter::default(),
            copies_queued: Counter::default(),
            copies_refused: Counter::default(),
            read_syncs_queued: Counter::default(),
            messages_expired: Counter::default(),
            receipts_expired: Counter::default(),
            // From a millisecond (both phones online) to a month (offline).
            delivery_seconds: Histogram::new([
                0.001,
                0.0025,
                0.005,
                0.01,
                0.025,
                0.05,
                0.1,
                0.25,
                0.5,
                1.0,
                5.0,
                30.0,
                300.0,
                3600.0,
                86400.0,
                2_592_000.0,
            ]),
            queued: Gauge::default(),
            mailboxes: Gauge::default(),
            deepest_mailbox: Gauge::default(),
            oldest_queued_seconds: Gauge::default(),
            journal: JournalMetrics::default(),
        }
    }
}

impl RouterMetrics {
    /// Registers every family under `registry` (prefix it with `router`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "messages_accepted",
            "Messages accepted and queued",
            self.messages_accepted.clone(),
        );
        registry.register(
            "messages_deduplicated",
            "Resent client_msg_ids answered with their original ack",
            self.messages_deduplicated.clone(),
        );
        registry.register(
            "messages_delivered",
            "Messages acknowledged by their recipients and wiped",
            self.messages_delivered.clone(),
        );
        registry.register(
            "receipts_queued",
            "Receipts queued, by kind",
            self.receipts_queued.clone(),
        );
        registry.register(
            "receipts_acknowledged",
            "Receipts and read-syncs acknowledged by their recipients and wiped",
            self.receipts_acknowledged.clone(),
        );
        registry.register(
            "copies_queued",
            "Device copies of accepted messages queued (the fan-out)",
            self.copies_queued.clone(),
        );
        registry.register(
            "copies_refused",
            "Device copies not queued because the device's mailbox was full",
            self.copies_refused.clone(),
        );
        registry.register(
            "read_syncs_queued",
            "Read-syncs queued for a reader's other devices",
            self.read_syncs_queued.clone(),
        );
        registry.register(
            "messages_expired",
            "Messages deleted undelivered after the TTL",
            self.messages_expired.clone(),
        );
        registry.register(
            "receipts_expired",
            "Receipts deleted unacknowledged after the TTL",
            self.receipts_expired.clone(),
        );
        registry.register_with_unit(
            "delivery",
            "From a message's acceptance to its recipient's acknowledgement",
            prometheus_client::registry::Unit::Seconds,
            self.delivery_seconds.clone(),
        );
        registry.register(
            "queued",
            "Messages and receipts queued (last census)",
            self.queued.clone(),
        );
        registry.register(
            "mailboxes",
            "Mailboxes in memory (last census)",
            self.mailboxes.clone(),
        );
        registry.register(
            "deepest_mailbox",
            "Most entries queued for one device (last census)",
            self.deepest_mailbox.clone(),
        );
        registry.register_with_unit(
            "oldest_queued",
            "Age of the oldest queued entry (last census)",
            prometheus_client::registry::Unit::Seconds,
            self.oldest_queued_seconds.clone(),
        );
        let journal = &self.journal;
        registry.register(
            "journal_commits",
            "Durable journal commits (one fsync each)",
            journal.commits.clone(),
        );
        registry.register(
            "journal_changes",
            "Journal records put or deleted",
            journal.changes.clone(),
        );
        registry.register(
            "journal_batch_ops",
            "Sends, acks and receipts written per journal commit",
            journal.batch_ops.clone(),
        );
        registry.register_with_unit(
            "journal_commit",
            "Time to write and sync one journal commit",
            prometheus_client::registry::Unit::Seconds,
            journal.commit_seconds.clone(),
        );
        registry.register(
            "journal_errors",
            "Failed journal commits (retried until they succeed)",
            journal.errors.clone(),
        );
        registry.register(
            "journal_compactions",
            "Journal compactions while running (the file was mostly free space)",
            journal.compactions.clone(),
        );
        registry.register(
            "journal_checkpoints",
            "Journal checkpoints: the log's commits applied to the journal file in one transaction",
            journal.checkpoints.clone(),
        );
    }
}
