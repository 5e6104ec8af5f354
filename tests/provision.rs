//! `parley provision` creates real accounts whose credentials the server
//! accepts, and which can message each other like registered phones.

mod common;

use std::process::Command;

use common::{TestServer, next, until};
use parley_proto::v1::server_frame::Frame;

#[derive(serde::Deserialize)]
struct Line {
    phone: String,
    user_id: String,
    token: String,
}

#[tokio::test]
async fn provisioned_accounts_connect_and_talk() {
    let data_dir = tempfile::tempdir().expect("tempdir");
    let out = data_dir.path().join("users.jsonl");
    let status = Command::new(env!("CARGO_BIN_EXE_parley"))
        .arg("--data-dir")
        .arg(data_dir.path())
        .args(["provision", "--count", "3", "--first", "42", "--out"])
        .arg(&out)
        .status()
        .expect("parley provision runs");
    assert!(status.success());
    let lines: Vec<Line> = std::fs::read_to_string(&out)
        .expect("credentials written")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0].phone, "+199900000042");

    let server = TestServer::start_in(data_dir, &[]);
    let credential = |l: &Line| parley_client::Credential {
        user_id: l.user_id.parse().expect("decimal id"),
        device_id: 0,
        token: l.token.clone(),
    };
    let (a, b) = (credential(&lines[0]), credential(&lines[1]));
    let mut sa = server.connect(&a).await;
    let mut sb = server.connect(&b).await;
    until(&mut sa, |f| matches!(f, Frame::QueueEmpty(_))).await;
    until(&mut sb, |f| matches!(f, Frame::QueueEmpty(_))).await;
    sa.send(1, b.user_id, "provisioned hello")
        .await
        .expect("send");
    assert!(matches!(next(&mut sa).await, Frame::Ack(_)));
    match next(&mut sb).await {
        Frame::Deliver(d) => assert_eq!(d.from_user, a.user_id),
        other => panic!("expected a delivery, got {other:?}"),
    }
    // The provisioned numbers are real accounts: contact discovery finds them.
    let found = server
        .registration()
        .lookup(&a.token, &[lines[2].phone.clone()])
        .await
        .expect("lookup");
    assert_eq!(found.len(), 1);
}

#[derive(serde::Deserialize)]
struct DeviceLine {
    user_id: String,
    device_id: String,
    primary: bool,
    token: String,
}

#[tokio::test]
async fn provisioned_accounts_can_have_linked_devices_that_all_receive() {
    let data_dir = tempfile::tempdir().expect("tempdir");
    let out = data_dir.path().join("users.jsonl");
    let status = Command::new(env!("CARGO_BIN_EXE_parley"))
        .arg("--data-dir")
        .arg(data_dir.path())
        .args(["provision", "--count", "2", "--devices", "3", "--out"])
        .arg(&out)
        .status()
        .expect("parley provision runs");
    assert!(status.success());
    let lines: Vec<DeviceLine> = std::fs::read_to_string(&out)
        .expect("credentials written")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    // Two accounts of three devices, each account's lines together, its
    // primary first.
    assert_eq!(lines.len(), 6);
    for account in lines.chunks(3) {
        assert!(account[0].primary && !account[1].primary && !account[2].primary);
        assert!(account.iter().all(|l| l.user_id == account[0].user_id));
    }
    let server = TestServer::start_in(data_dir, &[]);
    let credential = |l: &DeviceLine| parley_client::Credential {
        user_id: l.user_id.parse().expect("decimal id"),
        device_id: l.device_id.parse().expect("decimal id"),
        token: l.token.clone(),
    };
    let mut sessions = Vec::new();
    for line in &lines {
        let mut session = server.connect(&credential(line)).await;
        until(&mut session, |f| matches!(f, Frame::QueueEmpty(_))).await;
        sessions.push(session);
    }
    let to = credential(&lines[3]).user_id;
    sessions[0].send(1, to, "to all three").await.expect("send");
    assert!(matches!(next(&mut sessions[0]).await, Frame::Ack(_)));
    // The recipient's three devices, and the sender's two others.
    for session in &mut sessions[1..] {
        assert!(matches!(next(session).await, Frame::Deliver(_)));
    }
}
