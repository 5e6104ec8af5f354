//! Backup and restore of a running node (docs/operations.md, "Backups"):
//! `parley backup` while senders keep sending, a restore into a fresh data
//! directory, and every message that was acked before the backup began is
//! delivered by the restored server to its recipient, whose credential
//! still works there.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use common::{PROMPTLY, TestServer, is_empty_marker, until};
use parley_client::{Credential, Session};
use parley_proto::v1::server_frame::Frame;

const SENDERS: usize = 4;
const RECIPIENTS: usize = 4;
/// The backup is taken once this many messages have been acked; the
/// senders go on until well after it returned.
const BEFORE_BACKUP: usize = 800;
/// Acks to wait for after the backup returned before the senders stop.
const AFTER_BACKUP: usize = 200;
/// A bound on each sender, whatever happens.
const MAX_PER_SENDER: u64 = 5_000;
/// Sends a sender keeps unanswered (pipelined, as a phone may).
const IN_FLIGHT: u64 = 16;

/// Copies `from` into `to` recursively (a restore: `cp -a backup/. data/`).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("restore dir");
    for entry in std::fs::read_dir(from).expect("read backup") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// One sender: sends round-robin to the recipients, at most `IN_FLIGHT`
/// unanswered, recording each acked message id, until `stop` (then it
/// collects the answers still due).
async fn send_all(
    mut session: Session,
    sender: usize,
    to: Vec<u64>,
    acked: Arc<Mutex<Vec<u64>>>,
    stop: Arc<AtomicBool>,
) {
    let (mut sent, mut answered) = (0u64, 0u64);
    loop {
        let more = !stop.load(Ordering::Relaxed) && sent < MAX_PER_SENDER;
        if !more && answered == sent {
            return;
        }
        while more && sent - answered < IN_FLIGHT {
            sent += 1;
            let recipient = to[(sent as usize + sender) % to.len()];
            session
                .send(sent, recipient, format!("from {sender}: {sent}"))
                .await
                .expect("send");
        }
        let frame = session
            .next_frame_timeout(PROMPTLY * 6)
            .await
            .expect("an answer")
            .frame
            .expect("frame set");
        match frame {
            Frame::Ack(ack) => {
                answered += 1;
                acked.lock().expect("lock").push(ack.message_id);
            }
            other => panic!("sender {sender} got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_backup_under_load_restores_every_message_acked_before_it() {
    // The default per-session limits (20 messages/s, 100 frames/s) would
    // make this slow, and the frame limit would refuse senders whose acks
    // come back fast: how fast depends on the machine, so both are raised
    // out of reach.
    let server = TestServer::start_with(common::SEND_LIMITS_OFF);
    let mut recipients: Vec<Credential> = Vec::new();
    for _ in 0..RECIPIENTS {
        recipients.push(server.register().await);
    }
    let to: Vec<u64> = recipients.iter().map(|r| r.user_id).collect();
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    for sender in 0..SENDERS {
        let credential = server.register().await;
        let mut session = server.connect(&credential).await;
        until(&mut session, is_empty_marker).await;
        senders.push(tokio::spawn(send_all(
            session,
            sender,
            to.clone(),
            acked.clone(),
            stop.clone(),
        )));
    }

    // In the middle of the load: everything acked so far must be restored.
    let acks_reach = |count: usize| {
        let acked = acked.clone();
        async move {
            let deadline = tokio::time::Instant::now() + PROMPTLY * 12;
            while acked.lock().expect("lock").len() < count {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the senders stalled"
                );
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
    };
    acks_reach(BEFORE_BACKUP).await;
    let before: HashSet<u64> = acked.lock().expect("lock").iter().copied().collect();
    let admin = server.admin.to_string();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_parley"))
        .args(["backup", "--admin", &admin])
        .output()
        .await
        .expect("parley backup runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let path = stdout
        .lines()
        .find_map(|line| line.strip_prefix("backup written to "))
        .unwrap_or_else(|| panic!("no path in {stdout:?}"))
        .to_owned();
    assert!(stdout.contains("accounts: parley.db (SQLite)"), "{stdout}");
    // The load goes on after the backup, then stops.
    let when_done = acked.lock().expect("lock").len();
    acks_reach(when_done + AFTER_BACKUP).await;
    stop.store(true, Ordering::Relaxed);
    for sender in senders {
        sender.await.expect("a sender finished");
    }
    let total = acked.lock().expect("lock").len();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path)
            .expect("backup")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o700, "backups hold secrets");
    }

    // Restore into a fresh data directory, and start a server on it.
    let restored = tempfile::tempdir().expect("restore dir");
    copy_tree(Path::new(&path), restored.path());
    drop(server);
    let server = TestServer::start_in(restored, &[]);
    let mut delivered = HashSet::new();
    for recipient in &recipients {
        // The old credential works: the key and the accounts came back.
        let mut session = server.connect(recipient).await;
        loop {
            match common::next(&mut session).await {
                Frame::Deliver(d) => {
                    assert!(delivered.insert(d.message_id), "delivered twice");
                    session.ack_delivery(vec![d.message_id]).await.expect("ack");
                }
                Frame::QueueEmpty(_) => break,
                other => panic!("a recipient got {other:?}"),
            }
        }
    }
    let lost: Vec<&u64> = before.iter().filter(|id| !delivered.contains(id)).collect();
    eprintln!(
        "backup: {} acked before it, {} when it returned, {} restored and delivered, {} acked in all",
        before.len(),
        when_done,
        delivered.len(),
        total
    );
    assert!(
        lost.is_empty(),
        "{} messages acked before the backup were not restored",
        lost.len()
    );
    assert!(delivered.len() <= total);
}
