//! A data directory written by the one-device release (journal format 1,
//! mailboxes keyed by user: `tests/fixtures/journal-v1`) is upgraded in
//! place on the first start of this release, and nothing queued is lost:
//! Bob's five messages (in order), his two receipts, and the memory of
//! Alice's sends all come back, on the devices the accounts have.

mod common;

use std::path::Path;

use common::{TestServer, jwt, next, unix_now, until};
use parley_client::Session;
use parley_proto::v1::ReceiptKind;
use parley_proto::v1::server_frame::Frame;
use ring::signature::Ed25519KeyPair;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/journal-v1");

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("dir");
    for entry in std::fs::read_dir(from).expect("fixture") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else if entry.file_name() != "README.md" {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// A user of the fixture: ids from `users.json`.
struct User {
    id: u64,
    device: u64,
}

fn user(users: &serde_json::Value, name: &str) -> User {
    let id = |key: &str| -> u64 {
        users[name][key]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{name}.{key} in users.json"))
    };
    User {
        id: id("user_id"),
        device: id("device_id"),
    }
}

/// A credential for `user` signed with the fixture's key, valid now (the
/// fixture's own tokens would expire).
fn token(data_dir: &Path, user: &User) -> String {
    let pem = std::fs::read(data_dir.join("keys/jwt-ed25519.pem")).expect("the fixture's key");
    let key =
        Ed25519KeyPair::from_pkcs8(&pem::parse(pem).expect("pem").into_contents()).expect("pkcs8");
    let now = unix_now();
    let claims = serde_json::json!({
        "iss": "parley", "sub": user.id.to_string(), "dev": user.device.to_string(),
        "gen": 1, "iat": now, "exp": now + 3600,
    });
    jwt(
        &serde_json::json!({"alg": "EdDSA", "typ": "JWT"}),
        &claims,
        |m| key.sign(m).as_ref().to_vec(),
    )
}

#[tokio::test]
async fn a_journal_of_the_one_device_release_is_upgraded_in_place_and_loses_nothing() {
    let data_dir = tempfile::tempdir().expect("temp dir");
    copy_tree(Path::new(FIXTURE), data_dir.path());
    let users: serde_json::Value = serde_json::from_slice(
        &std::fs::read(data_dir.path().join("users.json")).expect("users.json"),
    )
    .expect("json");
    let (alice, bob) = (user(&users, "alice"), user(&users, "bob"));
    let read_id: u64 = users["bob_to_alice_message_id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("the message id");
    let mut server = TestServer::start_in(data_dir, &[]);
    assert!(
        server.log().contains("journal upgraded from format 1"),
        "{}",
        server.log()
    );

    let connect = |server: &TestServer, who: &User| {
        let (url, tls, token) = (
            server.ws_url(),
            server.tls.clone(),
            token(server.data_dir.path(), who),
        );
        async move {
            Session::connect(&url, tls, &token)
                .await
                .expect("the old credential's device connects")
        }
    };
    let mut b = connect(&server, &bob).await;
    let frames = until(&mut b, |f| matches!(f, Frame::QueueEmpty(_))).await;
    let mut texts = Vec::new();
    let mut kinds = Vec::new();
    let mut first = None;
    for frame in &frames {
        match frame {
            Frame::Deliver(d) => {
                assert_eq!(d.to_user, bob.id, "the upgrade names the recipient");
                texts.push(String::from_utf8_lossy(&d.body).into_owned());
                first.get_or_insert(d.message_id);
            }
            Frame::Receipt(r) => {
                assert_eq!(r.message_ids, [read_id]);
                assert_eq!(r.from_user, alice.id);
                kinds.push(r.kind());
            }
            other => panic!("Bob got {other:?}"),
        }
    }
    assert_eq!(
        texts,
        [
            "alice to bob 1",
            "alice to bob 2",
            "alice to bob 3",
            "carol to bob 1",
            "carol to bob 2"
        ]
    );
    assert_eq!(kinds, [ReceiptKind::Delivered, ReceiptKind::Read]);
    let first = first.expect("a delivery");

    // Bob's ack makes a DELIVERED receipt for Alice's device.
    b.ack_delivery(vec![first]).await.expect("ack");
    let mut a = connect(&server, &alice).await;
    let frames = until(&mut a, |f| matches!(f, Frame::QueueEmpty(_))).await;
    assert!(
        frames.iter().any(|f| matches!(f, Frame::Receipt(r)
            if r.kind() == ReceiptKind::Delivered && r.message_ids == [first] && r.from_device == bob.device)),
        "{frames:?}"
    );
    // Alice's sends are remembered: a resend is answered with the original ack.
    a.send(1, bob.id, "alice to bob 1").await.expect("send");
    match next(&mut a).await {
        Frame::Ack(ack) => assert_eq!(ack.message_id, first),
        other => panic!("expected the original ack, got {other:?}"),
    }
    drop((a, b));

    // Upgraded once: a restart finds format 2, and the rest still queued.
    server.stop_gracefully();
    server.restart();
    assert_eq!(server.log().matches("journal upgraded").count(), 1);
    let mut b = connect(&server, &bob).await;
    let frames = until(&mut b, |f| matches!(f, Frame::QueueEmpty(_))).await;
    let left = frames
        .iter()
        .filter(|f| matches!(f, Frame::Deliver(_)))
        .count();
    assert_eq!(left, 4, "{frames:?}");
}
