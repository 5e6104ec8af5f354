use super::*;
use crate::Devices;
use crate::conformance::{Backend, Settings, drain};
use parley_proto::v1::server_frame::Frame;

/// The memory backend under the conformance suite: memory-only, or with a
/// journal in a temporary directory (then a reopen reads it back).
struct Memory {
    journal: Option<tempfile::TempDir>,
}

impl Memory {
    fn memory_only() -> Self {
        Self { journal: None }
    }
    fn journaled() -> Self {
        Self {
            journal: Some(tempfile::tempdir().expect("temp dir")),
        }
    }
}

fn config(settings: Settings) -> MemoryConfig {
    MemoryConfig {
        window: settings.window,
        dedupe_horizon: settings.dedupe_horizon,
        shards: 4,
        max_queued_messages: settings.max_queued_messages,
        max_queued_bytes: settings.max_queued_bytes,
        ttl: std::time::Duration::from_millis(settings.ttl_ms),
        ..MemoryConfig::default()
    }
}

impl Backend for Memory {
    type Router = MemoryRouter;

    fn open(&mut self, settings: Settings) -> MemoryRouter {
        match &self.journal {
            None => MemoryRouter::new(config(settings)),
            Some(dir) => {
                let journal = JournalConfig::at(dir.path().join("journal.redb"));
                MemoryRouter::open(config(settings), RouterMetrics::default(), &journal, None)
                    .expect("the journal opens")
                    .0
            }
        }
    }

    fn durable(&self) -> bool {
        self.journal.is_some()
    }
}

mod memory_only {
    use super::Memory;
    crate::conformance_suite!(Memory::memory_only());

    #[test]
    fn properties() {
        crate::conformance::properties(Memory::memory_only, 256);
    }
}

mod journaled {
    use super::Memory;
    crate::conformance_suite!(Memory::journaled());

    #[test]
    fn properties() {
        // Every send is an fsync: fewer cases than memory-only.
        crate::conformance::properties(Memory::journaled, 48);
    }
}

const A: Device = Device {
    user: 1,
    device: 10,
};
const B: Device = Device {
    user: 2,
    device: 20,
};

fn devices(device: Device) -> Devices {
    Devices::new(vec![device.device])
}

/// A text from the one-device user of `A`'s kind to the one-device `to`.
fn msg(client_msg_id: u64, from: Device, to: Device, body: &str) -> Outgoing {
    Outgoing {
        client_msg_id,
        to: to.user,
        to_devices: devices(to),
        from_devices: devices(from),
        payload: Payload::Shared(Bytes::copy_from_slice(body.as_bytes())),
    }
}

fn delivered_ids(frames: &[Frame]) -> Vec<u64> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::Deliver(d) => Some(d.message_id),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn metrics_and_census_count_what_happens() {
    let metrics = RouterMetrics::default();
    let r = MemoryRouter::with_metrics(
        MemoryConfig {
            window: 16,
            dedupe_horizon: 8,
            shards: 4,
            ..MemoryConfig::default()
        },
        metrics.clone(),
    );
    let first = r.submit(A, msg(1, A, B, "a")).await.expect("accepted");
    r.submit(A, msg(1, A, B, "a")).await.expect("answered");
    r.submit(A, msg(2, A, B, "b")).await.expect("accepted");
    assert_eq!(metrics.messages_accepted.get(), 2);
    assert_eq!(metrics.messages_deduplicated.get(), 1);
    assert_eq!(metrics.copies_queued.get(), 2);
    let census = r.census().await;
    assert_eq!((census.mailboxes, census.queued, census.deepest), (1, 2, 2));
    assert_eq!(metrics.queued.get(), 2);

    let _b = r.attach(B).await.expect("attach");
    r.ack_delivery(B, &[first.message_id]).await.expect("ack");
    assert_eq!(metrics.messages_delivered.get(), 1);
    let delivered = metrics
        .receipts_queued
        .get_or_create(&[("kind", "delivered")])
        .get();
    assert_eq!(delivered, 1);
    // B has one message left, A one receipt.
    let census = r.census().await;
    assert_eq!((census.queued, census.deepest), (2, 1));
}

#[tokio::test]
async fn a_full_mailbox_says_when_to_retry() {
    let r = MemoryRouter::new(MemoryConfig {
        max_queued_messages: 1,
        mailbox_full_retry: std::time::Duration::from_secs(7),
        ..MemoryConfig::default()
    });
    r.submit(A, msg(1, A, B, "1")).await.expect("room");
    match r.submit(A, msg(2, A, B, "2")).await {
        Err(SendError::MailboxFull { retry_after_ms }) => assert_eq!(retry_after_ms, 7000),
        other => panic!("expected MailboxFull, got {other:?}"),
    }
}

#[tokio::test]
async fn the_byte_cap_counts_message_sizes() {
    let r = MemoryRouter::new(MemoryConfig {
        max_queued_bytes: 1000,
        ..MemoryConfig::default()
    });
    r.submit(A, msg(1, A, B, &"x".repeat(600)))
        .await
        .expect("room");
    assert!(matches!(
        r.submit(A, msg(2, A, B, &"x".repeat(600))).await,
        Err(SendError::MailboxFull { .. })
    ));
    r.submit(A, msg(3, A, B, "small"))
        .await
        .expect("a small one fits");
}

#[tokio::test]
async fn expiry_counts_messages_and_receipts_and_the_session_goes_on() {
    let metrics = RouterMetrics::default();
    let r = MemoryRouter::with_metrics(
        MemoryConfig {
            ttl: std::time::Duration::from_secs(60),
            ..MemoryConfig::default()
        },
        metrics.clone(),
    );
    let old = r.submit(A, msg(1, A, B, "old")).await.expect("send");
    let mut b = r.attach(B).await.expect("attach");
    drain(&mut b);
    // Delivered, so a receipt waits for A.
    r.ack_delivery(B, &[old.message_id]).await.expect("ack");
    r.submit(A, msg(2, A, B, "older")).await.expect("send");
    let later = old.timestamp_ms + 61_000;
    assert_eq!(r.expire(later).await, 2);
    assert_eq!(metrics.messages_expired.get(), 1);
    assert_eq!(metrics.receipts_expired.get(), 1);
    assert_eq!((r.queued(A), r.queued(B)), (0, 0));
    // An ack for the expired one is harmless.
    r.ack_delivery(B, &[old.message_id])
        .await
        .expect("harmless");
}

#[tokio::test(start_paused = true)]
async fn a_recipient_receives_at_most_its_inbound_rate() {
    let r = MemoryRouter::new(MemoryConfig {
        inbound_bytes: crate::ratelimit::Rate::new(1000.0, 100.0),
        ..MemoryConfig::default()
    });
    r.submit(A, msg(1, A, B, &"x".repeat(900)))
        .await
        .expect("in the burst");
    match r.submit(A, msg(2, A, B, &"x".repeat(200))).await {
        Err(SendError::RateLimited { retry_after_ms }) => assert_eq!(retry_after_ms, 1000),
        other => panic!("expected RateLimited, got {other:?}"),
    }
    // Another recipient is not affected.
    r.submit(A, msg(3, A, A, &"x".repeat(900)))
        .await
        .expect("own allowance");
    tokio::time::advance(std::time::Duration::from_secs(1)).await;
    r.submit(A, msg(2, A, B, &"x".repeat(200)))
        .await
        .expect("refilled");
}

#[test]
fn ids_carry_the_configured_node() {
    let r = MemoryRouter::new(MemoryConfig {
        node: NodeId::new(77).expect("a node id"),
        ..MemoryConfig::default()
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let accepted = rt
        .block_on(r.submit(A, msg(1, A, B, "x")))
        .expect("accepted");
    assert_eq!((accepted.message_id >> 9) & 0x7f, 77);
}

fn journaled(path: &std::path::Path) -> (MemoryRouter, Restored) {
    journaled_with(&JournalConfig::at(path))
}

fn journaled_with(journal: &JournalConfig) -> (MemoryRouter, Restored) {
    MemoryRouter::open(
        MemoryConfig {
            window: 8,
            dedupe_horizon: 4,
            shards: 4,
            ..MemoryConfig::default()
        },
        RouterMetrics::default(),
        journal,
        None,
    )
    .expect("journal opens")
}

#[tokio::test]
async fn a_message_to_many_devices_is_journaled_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("journal.redb");
    let (r, _) = journaled(&path);
    let three = Devices::new(vec![20, 21, 22]);
    let to_three = Outgoing {
        to_devices: three,
        ..msg(1, A, B, "to three devices")
    };
    r.submit(A, to_three).await.expect("accepted");
    r.flush().await;
    drop(r);
    let (r, restored) = journaled(&path);
    assert_eq!((restored.messages, restored.entries), (1, 3));
    // One device acks; the others still have it after another restart.
    let device = Device::new(B.user, 21);
    let mut s = r.attach(device).await.expect("attach");
    r.ack_delivery(device, &delivered_ids(&drain(&mut s)))
        .await
        .expect("ack");
    r.flush().await;
    drop((r, s));
    let (_r, restored) = journaled(&path);
    // The message (for 20 and 22) and 21's DELIVERED receipt for A.
    assert_eq!(
        (restored.messages, restored.receipts, restored.entries),
        (1, 1, 3)
    );
}

#[tokio::test]
async fn the_journal_forgets_sends_past_the_horizon_and_expired_entries() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("journal.redb");
    let (r, _) = journaled(&path);
    for id in 1..=10 {
        r.submit(A, msg(id, A, B, "x")).await.expect("accepted");
    }
    // Everything queued is older than "now + TTL".
    let far_future = now_ms() + 31 * 24 * 3600 * 1000;
    assert_eq!(r.expire(far_future).await, 10);
    r.flush().await;
    drop(r);

    let (_r, restored) = journaled(&path);
    assert_eq!(restored.messages, 0, "expired messages are deleted");
    assert_eq!(restored.sends, 4, "only the horizon's sends are kept");
}

#[tokio::test]
async fn the_journal_gives_space_back_once_the_queue_drains() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("journal.redb");
    let config = JournalConfig {
        compact_slack_bytes: 1024 * 1024,
        // The compaction must come from the idle check: no commit follows
        // the drain.
        compact_check: std::time::Duration::from_millis(300),
        ..JournalConfig::at(&path)
    };
    let (r, _) = MemoryRouter::open(
        MemoryConfig {
            shards: 4,
            ..MemoryConfig::default()
        },
        RouterMetrics::default(),
        &config,
        None,
    )
    .expect("journal opens");
    // 8 MiB queued for one device, sent by many at once (group commits).
    let body = "x".repeat(8 * 1024);
    let mut sends = tokio::task::JoinSet::new();
    for i in 0..1024u64 {
        let (r, body) = (r.clone(), body.clone());
        let from = Device::new(1000 + i, 1);
        sends.spawn(async move { r.submit(from, msg(1, from, B, &body)).await });
    }
    while let Some(accepted) = sends.join_next().await {
        accepted.expect("send task").expect("accepted");
    }
    // Acked sends are in the journal's log; the next checkpoint (every
    // 100 ms) moves them into the file: wait for it, however long a busy
    // machine makes it take (bounded, generously).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let mut full = std::fs::metadata(&path).expect("journal file").len();
    while full <= 8 * 1024 * 1024 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        full = std::fs::metadata(&path).expect("journal file").len();
    }
    assert!(
        full > 8 * 1024 * 1024,
        "the checkpoint left the file at {full}"
    );

    let mut b = r.attach(B).await.expect("attach");
    for _ in 0..1024 {
        let ids = delivered_ids(&drain(&mut b));
        if ids.is_empty() {
            break;
        }
        r.ack_delivery(B, &ids).await.expect("ack");
    }
    assert_eq!(r.queued(B), 0);
    r.flush().await;
    // No more commits: the idle committer notices on its own, however long
    // a busy machine makes it take (bounded, generously).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let mut drained = std::fs::metadata(&path).expect("journal file").len();
    while drained >= full / 4 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        drained = std::fs::metadata(&path).expect("journal file").len();
    }
    assert!(
        drained < full / 4,
        "the file keeps {drained} bytes of {full} after the queue drained"
    );
}

#[tokio::test]
async fn a_journal_from_elsewhere_is_refused_not_guessed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("journal.redb");
    std::fs::write(&path, b"not a redb file at all, but long enough to look at").expect("write");
    let error = MemoryRouter::open(
        MemoryConfig::default(),
        RouterMetrics::default(),
        &JournalConfig::at(&path),
        None,
    )
    .expect_err("refused");
    assert!(error.to_string().contains("journal.redb"), "{error}");
}

/// A router whose journal is never checkpointed while it runs: every
/// change stays in the log.
fn journaled_uncheckpointed(path: &std::path::Path) -> (MemoryRouter, Restored) {
    journaled_with(&JournalConfig {
        checkpoint_every: std::time::Duration::from_secs(3600),
        ..JournalConfig::at(path)
    })
}

/// The journal's files as a crash would leave them now: copies of the
/// redb file and its log, taken while the router runs.
fn crash_image(from: &std::path::Path, into: &std::path::Path) -> std::path::PathBuf {
    let journal = into.join("journal.redb");
    std::fs::copy(from, &journal).expect("copy the journal");
    std::fs::copy(
        crate::journal::log_path(from),
        crate::journal::log_path(&journal),
    )
    .expect("copy the log");
    journal
}

#[tokio::test]
async fn what_was_acked_survives_a_crash_before_any_checkpoint() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("journal.redb");
    let (r, _) = journaled_uncheckpointed(&path);
    for id in 1..=3 {
        r.submit(A, msg(id, A, B, "in the log only"))
            .await
            .expect("acked");
    }
    // B takes the first and acks it: released, and a receipt for A.
    let mut s = r.attach(B).await.expect("attach");
    let first = delivered_ids(&drain(&mut s))[0];
    r.ack_delivery(B, &[first]).await.expect("ack");
    r.flush().await;
    let crashed = tempfile::tempdir().expect("temp dir");
    let image = crash_image(&path, crashed.path());
    assert!(
        std::fs::metadata(crate::journal::log_path(&image))
            .expect("log")
            .len()
            > 64,
        "the changes are in the log"
    );
    drop((r, s));

    let (r, restored) = journaled(&image);
    assert_eq!(
        (restored.messages, restored.receipts),
        (2, 1),
        "two messages still queued for B and B's receipt for A, from the log"
    );
    // A resend of an acked message is still recognised.
    let again = r.submit(A, msg(2, A, B, "in the log only")).await;
    assert!(again.expect("answered").duplicate);
}

#[tokio::test]
async fn a_log_replayed_twice_gives_the_same_queues() {
    // A crash after a start applied the log but before it replaced the
    // log leaves the applied log beside the journal: it is not applied again.
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("journal.redb");
    let (r, _) = journaled_uncheckpointed(&path);
    for id in 1..=4 {
        r.submit(A, msg(id, A, B, "x")).await.expect("acked");
    }
    let mut s = r.attach(B).await.expect("attach");
    let ids = delivered_ids(&drain(&mut s));
    r.ack_delivery(B, &ids[..2]).await.expect("ack");
    r.flush().await;
    let crashed = tempfile::tempdir().expect("temp dir");
    let image = crash_image(&path, crashed.path());
    let stale_log = std::fs::read(crate::journal::log_path(&image)).expect("log");
    drop((r, s));

    let (r, first) = journaled(&image);
    drop(r);
    // Put the old log back, as if the start above had crashed just after
    // applying it.
    std::fs::write(crate::journal::log_path(&image), &stale_log).expect("old log back");
    let (_r, second) = journaled(&image);
    assert_eq!((first.messages, first.receipts, first.entries), (2, 1, 3));
    assert_eq!(
        (second.messages, second.receipts, second.entries),
        (first.messages, first.receipts, first.entries)
    );
}

#[tokio::test]
async fn a_log_beside_a_journal_it_does_not_belong_to_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("journal.redb");
    let (r, _) = journaled_uncheckpointed(&path);
    r.submit(A, msg(1, A, B, "x")).await.expect("acked");
    r.flush().await;
    let crashed = tempfile::tempdir().expect("temp dir");
    let image = crash_image(&path, crashed.path());
    drop(r);
    // Another journal (a restored backup, say) with this log beside it.
    std::fs::remove_file(&image).expect("remove");
    let Err(error) = MemoryRouter::open(
        MemoryConfig::default(),
        RouterMetrics::default(),
        &JournalConfig::at(&image),
        None,
    ) else {
        panic!("a log from another journal was replayed");
    };
    let message = error.to_string();
    assert!(
        message.contains("does not belong") && message.contains("Move the log away"),
        "{message}"
    );
}
