//! Several devices per user, end to end through the real server and the
//! real client library: linking (and its limits), fan-out to every device
//! of the recipient and a copy to the sender's other devices, each device
//! acknowledging on its own, receipts per device to every device of the
//! sender, read-sync, per-device envelopes (refused when stale, with the
//! missing and extra devices), `client_msg_id`s per sending device and
//! their reuse refused, unlinking, and re-registration revoking every
//! device.

#[path = "common/api.rs"]
mod api;
mod common;

use api::{Api, code_of};
use std::collections::HashSet;

use common::{PROMPTLY, TestServer, is_empty_marker, next, until};
use parley_client::{ClientError, Credential, Session};
use parley_proto::close;
use parley_proto::v1::server_frame::Frame;
use parley_proto::v1::{ClientFrame, CloseReason, Envelope, ErrorCode, ReceiptKind, client_frame};
use prost::Message as _;

impl Api {
    async fn link_code(&self, primary: &Credential) -> Result<String, (u16, String)> {
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                "/v1/devices/link-code",
                Some(&primary.token),
                None,
            )
            .await;
        match status {
            201 => Ok(body["code"].as_str().expect("a code").to_owned()),
            _ => Err((status, code_of(&body))),
        }
    }

    async fn link(&self, code: &str, name: &str) -> Result<Credential, (u16, String)> {
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                "/v1/devices/link",
                None,
                Some(serde_json::json!({"code": code, "name": name})),
            )
            .await;
        if status != 200 {
            return Err((status, code_of(&body)));
        }
        let id = |key: &str| -> u64 { body[key].as_str().and_then(|s| s.parse().ok()).expect(key) };
        Ok(Credential {
            user_id: id("user_id"),
            device_id: id("device_id"),
            token: body["token"].as_str().expect("a token").to_owned(),
        })
    }

    /// Links a new device to `primary`'s account.
    async fn add_device(&self, primary: &Credential, name: &str) -> Credential {
        let code = self.link_code(primary).await.expect("a link code");
        self.link(&code, name).await.expect("linked")
    }

    async fn unlink(&self, by: &Credential, device: u64) -> (u16, String) {
        let (status, body) = self
            .call(
                reqwest::Method::DELETE,
                &format!("/v1/devices/{device}"),
                Some(&by.token),
                None,
            )
            .await;
        (status, code_of(&body))
    }

    async fn devices(&self, of: &Credential) -> Vec<u64> {
        let (status, body) = self
            .call(reqwest::Method::GET, "/v1/devices", Some(&of.token), None)
            .await;
        assert_eq!(status, 200, "{body}");
        body["devices"]
            .as_array()
            .expect("devices")
            .iter()
            .map(|d| {
                d["device_id"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .expect("id")
            })
            .collect()
    }
}

async fn online(server: &TestServer, who: &Credential) -> Session {
    let mut session = server.connect(who).await;
    until(&mut session, is_empty_marker).await;
    session
}

/// The next delivery, acknowledging receipts on the way; `None` if a
/// non-delivery frame other than a receipt comes.
async fn delivery(session: &mut Session) -> parley_proto::v1::Deliver {
    loop {
        match next(session).await {
            Frame::Deliver(d) => return d,
            Frame::Receipt(r) => session.ack_receipts(vec![r.receipt_id]).await.expect("ack"),
            other => panic!("expected a delivery, got {other:?}"),
        }
    }
}

/// Receipts of `kind` until one from each of `devices` has come (other
/// frames are not expected).
async fn receipts_from(session: &mut Session, kind: ReceiptKind, devices: &[u64]) -> HashSet<u64> {
    let mut from = HashSet::new();
    while !devices.iter().all(|d| from.contains(d)) {
        match next(session).await {
            Frame::Receipt(r) if r.kind() == kind => {
                from.insert(r.from_device);
                session.ack_receipts(vec![r.receipt_id]).await.expect("ack");
            }
            Frame::Receipt(r) => session.ack_receipts(vec![r.receipt_id]).await.expect("ack"),
            other => panic!("expected {kind:?} receipts, got {other:?}"),
        }
    }
    from
}

async fn send_envelopes(session: &mut Session, cmid: u64, to: u64, envelopes: Vec<Envelope>) {
    let frame = ClientFrame {
        frame: Some(client_frame::Frame::Send(parley_proto::v1::Send {
            client_msg_id: cmid,
            to_user: to,
            envelopes,
            ..Default::default()
        })),
    };
    session
        .send_raw(parley_client::tungstenite::Message::Binary(
            frame.encode_to_vec().into(),
        ))
        .await
        .expect("send");
}

fn envelope(who: &Credential, body: &str) -> Envelope {
    Envelope {
        user_id: who.user_id,
        device_id: who.device_id,
        body: body.to_owned().into_bytes().into(),
    }
}

#[tokio::test]
async fn several_devices_per_user_end_to_end() {
    let server = TestServer::start_with(&["--code-interval", "1"]);
    let api = Api::new(&server);
    let bob_number = server.phone();
    let (alice_phone, bob_phone) = (
        server.register().await,
        server.register_phone(&bob_number).await,
    );
    let alice_laptop = api.add_device(&alice_phone, "laptop").await;
    let bob_tablet = api.add_device(&bob_phone, "tablet").await;
    let bob_laptop = api.add_device(&bob_phone, "laptop").await;
    assert_eq!(alice_laptop.user_id, alice_phone.user_id);
    assert_ne!(alice_laptop.device_id, alice_phone.device_id);
    assert_eq!(
        api.devices(&bob_tablet).await,
        [
            bob_phone.device_id,
            bob_tablet.device_id,
            bob_laptop.device_id
        ]
    );

    let mut a_phone = online(&server, &alice_phone).await;
    let mut a_laptop = online(&server, &alice_laptop).await;
    let mut b_phone = online(&server, &bob_phone).await;
    let mut b_tablet = online(&server, &bob_tablet).await;
    // Bob's laptop stays offline for now.

    // Fan-out: every device of Bob, and a copy for Alice's laptop.
    a_phone
        .send(1, bob_phone.user_id, "hello, all of you")
        .await
        .expect("send");
    let Frame::Ack(ack) = next(&mut a_phone).await else {
        panic!("an ack")
    };
    let id = ack.message_id;
    for session in [&mut b_phone, &mut b_tablet] {
        let d = delivery(session).await;
        assert_eq!(
            (
                d.message_id,
                d.from_user,
                d.from_device,
                d.to_user,
                d.body.as_ref()
            ),
            (
                id,
                alice_phone.user_id,
                alice_phone.device_id,
                bob_phone.user_id,
                b"hello, all of you".as_ref()
            )
        );
    }
    let copy = delivery(&mut a_laptop).await;
    assert_eq!(
        (copy.message_id, copy.from_user, copy.to_user),
        (id, alice_phone.user_id, bob_phone.user_id),
        "the laptop sees Alice's own message as sent"
    );
    a_laptop.ack_delivery(vec![id]).await.expect("ack the copy");

    // Each of Bob's devices acks on its own; each ack is a DELIVERED receipt
    // naming the device, for both of Alice's devices.
    b_phone.ack_delivery(vec![id]).await.expect("ack");
    b_tablet.ack_delivery(vec![id]).await.expect("ack");
    let two = [bob_phone.device_id, bob_tablet.device_id];
    assert_eq!(
        receipts_from(&mut a_phone, ReceiptKind::Delivered, &two)
            .await
            .len(),
        2
    );
    assert_eq!(
        receipts_from(&mut a_laptop, ReceiptKind::Delivered, &two)
            .await
            .len(),
        2
    );
    // The offline laptop gets it later, and its ack is the third receipt.
    let mut b_laptop = server.connect(&bob_laptop).await;
    let backlog = until(&mut b_laptop, is_empty_marker).await;
    assert!(
        matches!(&backlog[..], [Frame::Deliver(d)] if d.message_id == id),
        "{backlog:?}"
    );
    b_laptop.ack_delivery(vec![id]).await.expect("ack");
    receipts_from(
        &mut a_phone,
        ReceiptKind::Delivered,
        &[bob_laptop.device_id],
    )
    .await;

    // Bob reads on his tablet: READ receipts for Alice's devices, read-sync
    // for Bob's other devices.
    b_tablet
        .mark_read(alice_phone.user_id, vec![id])
        .await
        .expect("read");
    for session in [&mut a_phone, &mut a_laptop] {
        receipts_from(session, ReceiptKind::Read, &[bob_tablet.device_id]).await;
    }
    for session in [&mut b_phone, &mut b_laptop] {
        match next(session).await {
            Frame::ReadSync(sync) => {
                assert_eq!(
                    (sync.peer_user, sync.by_device, sync.message_ids.as_slice()),
                    (alice_phone.user_id, bob_tablet.device_id, [id].as_slice())
                );
                session.ack_receipts(vec![sync.sync_id]).await.expect("ack");
            }
            other => panic!("expected a read-sync, got {other:?}"),
        }
    }

    // Per-device envelopes: a stale list is refused with the missing and
    // the extra devices, nothing queued; the fixed list is delivered, each
    // device its own body.
    let stale = vec![
        envelope(&bob_phone, "for the phone"),
        envelope(&bob_tablet, "for the tablet"),
        Envelope {
            device_id: 4242,
            ..envelope(&bob_tablet, "nobody")
        },
        envelope(&alice_laptop, "for my laptop"),
    ];
    send_envelopes(&mut a_phone, 2, bob_phone.user_id, stale).await;
    match next(&mut a_phone).await {
        Frame::SendError(e) => {
            assert_eq!(e.code(), ErrorCode::DevicesChanged, "{e:?}");
            let missing: Vec<u64> = e.missing_devices.iter().map(|d| d.device_id).collect();
            let extra: Vec<u64> = e.extra_devices.iter().map(|d| d.device_id).collect();
            assert_eq!((missing, extra), (vec![bob_laptop.device_id], vec![4242]));
        }
        other => panic!("expected DEVICES_CHANGED, got {other:?}"),
    }
    let fixed = vec![
        envelope(&bob_phone, "for the phone"),
        envelope(&bob_tablet, "for the tablet"),
        envelope(&bob_laptop, "for the laptop"),
        envelope(&alice_laptop, "for my laptop"),
    ];
    send_envelopes(&mut a_phone, 2, bob_phone.user_id, fixed).await;
    assert!(matches!(next(&mut a_phone).await, Frame::Ack(_)));
    for (session, body) in [
        (&mut b_phone, "for the phone"),
        (&mut b_tablet, "for the tablet"),
        (&mut b_laptop, "for the laptop"),
        (&mut a_laptop, "for my laptop"),
    ] {
        let d = delivery(session).await;
        assert_eq!(d.body.as_ref(), body.as_bytes());
        session.ack_delivery(vec![d.message_id]).await.expect("ack");
    }

    // client_msg_ids are the sending device's: the laptop's 1 is its own;
    // the phone's 1 again with another body is refused.
    a_laptop
        .send(1, bob_phone.user_id, "from the laptop")
        .await
        .expect("send");
    loop {
        match next(&mut a_laptop).await {
            Frame::Ack(ack) => {
                assert!(ack.message_id != id);
                break;
            }
            Frame::Receipt(r) => a_laptop
                .ack_receipts(vec![r.receipt_id])
                .await
                .expect("ack"),
            other => panic!("{other:?}"),
        }
    }
    a_phone
        .send(1, bob_phone.user_id, "another message")
        .await
        .expect("send");
    loop {
        match next(&mut a_phone).await {
            Frame::SendError(e) => {
                assert_eq!(e.code(), ErrorCode::ClientMsgIdReused, "{e:?}");
                break;
            }
            Frame::Receipt(r) => a_phone.ack_receipts(vec![r.receipt_id]).await.expect("ack"),
            // The copy of the laptop's message, on Alice's other device.
            Frame::Deliver(d) => {
                assert_eq!(
                    (d.from_device, d.to_user),
                    (alice_laptop.device_id, bob_phone.user_id)
                );
                a_phone.ack_delivery(vec![d.message_id]).await.expect("ack");
            }
            other => panic!("{other:?}"),
        }
    }

    // Unlinking: only the primary (or the device itself) may; the session
    // is closed with UNLINKED, the token stops working, no more copies.
    // Another account's device is not found (its existence is not told);
    // a linked device cannot unlink its siblings, nor anyone the primary.
    assert_eq!(
        api.unlink(&bob_tablet, alice_laptop.device_id).await,
        (404, "NO_SUCH_DEVICE".to_owned())
    );
    assert_eq!(
        api.unlink(&bob_tablet, bob_laptop.device_id).await,
        (403, "FORBIDDEN".to_owned())
    );
    assert_eq!(
        api.unlink(&alice_laptop, alice_phone.device_id).await,
        (409, "PRIMARY_DEVICE".to_owned())
    );
    let (status, _) = api.unlink(&alice_phone, alice_laptop.device_id).await;
    assert!((200..300).contains(&status), "{status}");
    let closed = loop {
        match a_laptop.next_frame_timeout(PROMPTLY).await {
            Ok(frame) => match frame.frame {
                Some(Frame::Closing(c)) => break c.reason(),
                Some(Frame::Receipt(r)) => a_laptop
                    .ack_receipts(vec![r.receipt_id])
                    .await
                    .expect("ack"),
                Some(Frame::Deliver(d)) => a_laptop
                    .ack_delivery(vec![d.message_id])
                    .await
                    .expect("ack"),
                other => panic!("{other:?}"),
            },
            Err(error) => panic!("no Closing frame: {error}"),
        }
    };
    assert_eq!(closed, CloseReason::Unlinked);
    match a_laptop.next_frame_timeout(PROMPTLY).await {
        Err(ClientError::Closed { code, .. }) => assert_eq!(code, close::UNLINKED),
        other => panic!("expected close 4005, got {other:?}"),
    }
    match Session::connect(&server.ws_url(), server.tls.clone(), &alice_laptop.token).await {
        Err(ClientError::Rejected { status: 401, .. }) => {}
        other => panic!("the unlinked token must be refused, got {other:?}"),
    }
    assert_eq!(api.devices(&alice_phone).await, [alice_phone.device_id]);

    // The device cap: five devices in all by default.
    let _fourth = api.add_device(&bob_phone, "fourth").await;
    let _fifth = api.add_device(&bob_phone, "fifth").await;
    assert_eq!(
        api.link_code(&bob_phone).await,
        Err((409, "DEVICE_LIMIT".to_owned()))
    );
    // Only the primary makes link codes.
    assert_eq!(
        api.link_code(&bob_tablet).await,
        Err((403, "PRIMARY_ONLY".to_owned()))
    );

    // Re-registering Bob's number revokes every one of his devices.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let queued_for_old_phone = {
        drop(b_phone);
        a_phone
            .send(3, bob_phone.user_id, "while Bob switches phones")
            .await
            .expect("send");
        loop {
            match next(&mut a_phone).await {
                Frame::Ack(ack) => break ack.message_id,
                Frame::Receipt(r) => a_phone.ack_receipts(vec![r.receipt_id]).await.expect("ack"),
                other => panic!("{other:?}"),
            }
        }
    };
    let new_phone = server.register_phone(&bob_number).await;
    assert_eq!(new_phone.user_id, bob_phone.user_id);
    for session in [&mut b_tablet, &mut b_laptop] {
        let reason = loop {
            match session.next_frame_timeout(PROMPTLY).await {
                Ok(frame) => match frame.frame {
                    Some(Frame::Closing(c)) => break c.reason(),
                    Some(Frame::Deliver(d)) => {
                        session.ack_delivery(vec![d.message_id]).await.expect("ack")
                    }
                    Some(Frame::Receipt(r)) => {
                        session.ack_receipts(vec![r.receipt_id]).await.expect("ack")
                    }
                    other => panic!("{other:?}"),
                },
                Err(error) => panic!("no Closing frame: {error}"),
            }
        };
        assert_eq!(reason, CloseReason::Revoked);
    }
    for old in [&bob_phone, &bob_tablet, &bob_laptop] {
        assert!(matches!(
            Session::connect(&server.ws_url(), server.tls.clone(), &old.token).await,
            Err(ClientError::Rejected { status: 401, .. })
        ));
    }
    // What was queued for the old phone goes to the new one.
    let mut b_new = server.connect(&new_phone).await;
    let backlog = until(&mut b_new, is_empty_marker).await;
    assert!(
        backlog
            .iter()
            .any(|f| matches!(f, Frame::Deliver(d) if d.message_id == queued_for_old_phone)),
        "{backlog:?}"
    );
    assert_eq!(api.devices(&new_phone).await, [new_phone.device_id]);
}

#[tokio::test]
async fn link_codes_are_single_use_and_die_after_wrong_guesses() {
    let server = TestServer::start();
    let api = Api::new(&server);
    let primary = server.register().await;
    let code = api.link_code(&primary).await.expect("a code");
    api.link(&code, "first").await.expect("linked");
    assert_eq!(
        api.link(&code, "again").await.err(),
        Some((404, "LINK_CODE_INVALID".to_owned())),
        "single use"
    );
    // Wrong guesses at a live code kill it, the right one included after.
    let code = api.link_code(&primary).await.expect("a code");
    let wrong = format!("{}X", &code[..code.len() - 1]);
    let wrong = if wrong == code {
        format!("{}Y", &code[..code.len() - 1])
    } else {
        wrong
    };
    for _ in 0..3 {
        assert_eq!(
            api.link(&wrong, "guess").await.err().map(|e| e.0),
            Some(404)
        );
    }
    assert_eq!(
        api.link(&code, "too late").await.err(),
        Some((404, "LINK_CODE_INVALID".to_owned()))
    );
}
