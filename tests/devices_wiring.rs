// (See also tests/devices.rs, the whole multi-device flow.)
//! Several devices per account, end to end against a real `parley`
//! process: a device linked over HTTPS receives messages at once, is
//! closed with `UNLINKED` (4005) and refused when it is unlinked, and
//! every device of an account is closed with `REVOKED` when the number is
//! registered again. This is the wiring between registration, the
//! directory's cache and the router (`DeviceChanges` in `src/lib.rs`).

mod common;

use common::{TestServer, is_empty_marker, next, until};
use parley_client::{ClientError, Credential, CredentialRefusal, Session};
use parley_proto::close;
use parley_proto::v1::{CloseReason, server_frame::Frame};
use serde_json::{Value, json};

/// The HTTPS API as an app calls it, for the routes the client library
/// does not have yet.
struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    fn new(server: &TestServer) -> Api {
        let mut tls = (*server.tls).clone();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(std::time::Duration::from_secs(15))
            .build()
            .expect("https client");
        Api {
            http,
            base: server.http_url(),
        }
    }

    async fn call(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        let response = request.send().await.expect("the API answers");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).expect("JSON body")
        };
        (status, body)
    }

    /// A link code from the primary holding `token`.
    async fn link_code(&self, token: &str) -> String {
        let (status, body) = self
            .call(
                self.http
                    .post(format!("{}/v1/devices/link-code", self.base))
                    .bearer_auth(token),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["code"].as_str().expect("code").to_owned()
    }

    /// Links a new device named `name` with a code from `primary`.
    async fn link(&self, primary: &Credential, name: &str) -> Credential {
        let code = self.link_code(&primary.token).await;
        let (status, body) = self
            .call(
                self.http
                    .post(format!("{}/v1/devices/link", self.base))
                    .json(&json!({"code": code, "name": name})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let id =
            |field: &str| -> u64 { body[field].as_str().expect("id").parse().expect("decimal") };
        assert_eq!(id("user_id"), primary.user_id);
        Credential {
            user_id: id("user_id"),
            device_id: id("device_id"),
            token: body["token"].as_str().expect("token").to_owned(),
        }
    }

    async fn unlink(&self, by: &Credential, device: u64) -> u16 {
        self.call(
            self.http
                .delete(format!("{}/v1/devices/{device}", self.base))
                .bearer_auth(&by.token),
        )
        .await
        .0
    }

    async fn device_ids(&self, of: u64, by: &Credential) -> Value {
        let (status, body) = self
            .call(
                self.http
                    .get(format!("{}/v1/users/{of}/devices", self.base))
                    .bearer_auth(&by.token),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["devices"].clone()
    }
}

/// Sends `text` from `session` to `to` and waits for its server ack,
/// acknowledging the receipts that arrive meanwhile.
async fn send(session: &mut Session, client_msg_id: u64, to: u64, text: &str) {
    session
        .send(client_msg_id, to, text.to_owned())
        .await
        .expect("send");
    loop {
        match next(session).await {
            Frame::Ack(ack) => {
                assert_eq!(ack.client_msg_id, client_msg_id);
                return;
            }
            Frame::Receipt(r) => session
                .ack_receipts(vec![r.receipt_id])
                .await
                .expect("ack receipt"),
            other => panic!("expected an ack, got {other:?}"),
        }
    }
}

/// The next frame must be the delivery of `text`; acknowledges it.
async fn receive(session: &mut Session, text: &str) {
    match next(session).await {
        Frame::Deliver(d) => {
            assert_eq!(d.body, text.as_bytes());
            session
                .ack_delivery(vec![d.message_id])
                .await
                .expect("ack delivery");
        }
        other => panic!("expected {text:?}, got {other:?}"),
    }
}

/// The server ends `session` with `Closing{reason}` and close code `code`.
async fn closed_with(session: &mut Session, reason: CloseReason, code: u16) {
    match next(session).await {
        Frame::Closing(closing) => assert_eq!(closing.reason(), reason),
        other => panic!("expected Closing {reason:?}, got {other:?}"),
    }
    match session.next_frame_timeout(common::PROMPTLY).await {
        Err(ClientError::Closed { code: got, .. }) => assert_eq!(got, code),
        other => panic!("expected close {code}, got {other:?}"),
    }
}

async fn connected(server: &TestServer, credential: &Credential) -> Session {
    let mut session = server.connect(credential).await;
    until(&mut session, is_empty_marker).await;
    session
}

/// Registers `phone` again, as soon as the server's one-code-a-second
/// interval (`--code-interval 1`) allows: asks until it is not refused,
/// for at most [`common::PROMPTLY`].
async fn register_again(server: &TestServer, phone: &str) -> Credential {
    let registration = server.registration();
    let deadline = tokio::time::Instant::now() + common::PROMPTLY;
    loop {
        match registration.request_code(phone).await {
            Ok(_) => break,
            Err(ClientError::Api { status: 429, .. }) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(err) => panic!("code request: {err:?}"),
        }
    }
    registration
        .verify(phone, &server.code_for(phone))
        .await
        .expect("code verified")
}

#[tokio::test]
async fn linked_devices_receive_at_once_and_unlinked_ones_are_closed_and_refused() {
    // One code per number per second, so that the number can be
    // registered again within the test.
    let server = TestServer::start_with(&["--code-interval", "1"]);
    let api = Api::new(&server);
    let alice_phone_number = server.phone();
    let alice = server.register_phone(&alice_phone_number).await;
    let bob = server.register().await;
    let mut phone = connected(&server, &alice).await;
    let mut b = connected(&server, &bob).await;

    // Bob writes before Alice links anything: the gateway caches her
    // one-device list.
    send(&mut b, 1, alice.user_id, "before").await;
    receive(&mut phone, "before").await;

    let laptop = api.link(&alice, "Laptop").await;
    let mut laptop_session = connected(&server, &laptop).await;
    assert_eq!(
        api.device_ids(alice.user_id, &bob).await,
        json!([alice.device_id.to_string(), laptop.device_id.to_string()])
    );
    // The next message reaches the new device too: linking invalidated
    // the cached list.
    send(&mut b, 2, alice.user_id, "after linking").await;
    receive(&mut phone, "after linking").await;
    receive(&mut laptop_session, "after linking").await;

    // The phone unlinks the laptop: its session is closed at once, and its
    // token no longer connects.
    assert_eq!(api.unlink(&alice, laptop.device_id).await, 204);
    closed_with(&mut laptop_session, CloseReason::Unlinked, close::UNLINKED).await;
    match Session::connect(&server.ws_url(), server.tls.clone(), &laptop.token).await {
        Err(err) => assert_eq!(
            err.credential_refusal(),
            Some(CredentialRefusal::Revoked),
            "{err:?}"
        ),
        Ok(_) => panic!("an unlinked device connected"),
    }
    send(&mut b, 3, alice.user_id, "after unlinking").await;
    receive(&mut phone, "after unlinking").await;

    // A tablet, then the number is registered again on a new phone: every
    // old device's session ends with REVOKED.
    let tablet = api.link(&alice, "Tablet").await;
    let mut tablet_session = connected(&server, &tablet).await;
    let new_phone = register_again(&server, &alice_phone_number).await;
    assert_eq!(new_phone.user_id, alice.user_id);
    closed_with(&mut phone, CloseReason::Revoked, close::REVOKED).await;
    closed_with(&mut tablet_session, CloseReason::Revoked, close::REVOKED).await;
    assert_eq!(
        api.device_ids(alice.user_id, &bob).await,
        json!([new_phone.device_id.to_string()])
    );
    let mut new_session = connected(&server, &new_phone).await;
    send(&mut b, 4, alice.user_id, "to the new phone").await;
    receive(&mut new_session, "to the new phone").await;

    let (_, metrics) = server.admin_get("/metrics").await;
    for line in [
        "parley_registration_devices_linked_total 2",
        "parley_registration_link_codes_issued_total 2",
        "parley_registration_devices_unlinked_total{reason=\"user\"} 1",
        "parley_http_requests_total{route=\"/v1/devices/{device_id}\",status=\"204\"} 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} is not in the metrics"
        );
    }
}
