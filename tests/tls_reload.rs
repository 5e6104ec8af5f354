//! Certificate renewal without a restart: `SIGHUP` makes the server read its
//! certificate and key again. New connections (gateway and HTTPS) get the
//! new certificate, live sessions keep working on theirs, and a bad new
//! pair is refused with a log line while the current one stays in use.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{PROMPTLY, TestServer, is_empty_marker, next, until};
use parley_client::{ClientError, Registration, Session, tls_config_from_pem};
use parley_proto::v1::server_frame::Frame;
use tokio::time::Instant;

/// A fresh self-signed certificate for `localhost`: (certificate PEM, key PEM).
fn certificate() -> (String, String) {
    let generated =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("a certificate");
    (generated.cert.pem(), generated.signing_key.serialize_pem())
}

/// Writes the pair where the server reads it: `<data-dir>/tls/`.
fn install(data_dir: &Path, (cert, key): &(String, String)) {
    let tls = data_dir.join("tls");
    std::fs::create_dir_all(&tls).expect("tls dir");
    std::fs::write(tls.join("cert.pem"), cert).expect("write cert");
    std::fs::write(tls.join("key.pem"), key).expect("write key");
}

fn hangup(server: &TestServer) {
    let pid =
        std::fs::read_to_string(server.data_dir.path().join("parley.pid")).expect("the pid file");
    let status = std::process::Command::new("kill")
        .args(["-HUP", pid.trim()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

/// Waits (bounded) until the server's log has said `what` `times` times.
async fn logged(server: &TestServer, what: &str, times: usize) {
    let deadline = Instant::now() + PROMPTLY * 4;
    while server.log().matches(what).count() < times {
        assert!(
            Instant::now() < deadline,
            "the server never logged {what:?}:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Connecting while trusting only `pem` works.
async fn connects_trusting(server: &TestServer, pem: &str, token: &str) -> Session {
    let tls = tls_config_from_pem(pem.as_bytes()).expect("trust");
    Session::connect(&server.ws_url(), tls, token)
        .await
        .expect("a session trusting this certificate")
}

/// Connecting while trusting only `pem` fails the TLS handshake.
async fn refused_trusting(server: &TestServer, pem: &str, token: &str) {
    let tls = tls_config_from_pem(pem.as_bytes()).expect("trust");
    match Session::connect(&server.ws_url(), tls, token).await {
        // Not signed by the (old, self-signed) certificate it trusts.
        Err(ClientError::TlsHandshake {
            error: rustls::Error::InvalidCertificate(_),
            ..
        }) => {}
        other => panic!("expected a TLS refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn sighup_renews_the_certificate_without_dropping_sessions_and_a_bad_one_is_refused() {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let old = certificate();
    install(data_dir.path(), &old);
    let server = TestServer::start_in(data_dir, &[]);
    let alice = server.register().await;
    let bob = server.register().await;
    let mut live = connects_trusting(&server, &old.0, &alice.token).await;
    until(&mut live, is_empty_marker).await;

    // Renewed: new connections get the new certificate, on both listeners.
    let new = certificate();
    install(server.data_dir.path(), &new);
    hangup(&server);
    logged(&server, "TLS certificate reloaded", 1).await;
    let mut fresh = connects_trusting(&server, &new.0, &bob.token).await;
    until(&mut fresh, is_empty_marker).await;
    refused_trusting(&server, &old.0, &bob.token).await;
    let https = Registration::new(
        &server.http_url(),
        tls_config_from_pem(new.0.as_bytes()).expect("trust"),
    )
    .expect("client");
    https
        .lookup(&bob.token, &[server.phone()])
        .await
        .expect("the HTTPS API serves the new certificate");

    // The session that began on the old certificate still talks.
    live.send(1, bob.user_id, "still here").await.expect("send");
    assert!(matches!(next(&mut live).await, Frame::Ack(_)));
    match next(&mut fresh).await {
        Frame::Deliver(d) => assert_eq!(d.body.as_ref(), b"still here"),
        other => panic!("expected the delivery, got {other:?}"),
    }

    // A broken renewal (a certificate without its key, here the wrong
    // key) is refused; the current certificate stays.
    let mismatched = (certificate().0, new.1.clone());
    install(server.data_dir.path(), &mismatched);
    hangup(&server);
    logged(&server, "TLS certificate NOT reloaded", 1).await;
    assert!(
        server
            .log()
            .contains("is not the private key of the certificate"),
        "the log says why:\n{}",
        server.log()
    );
    let mut again = connects_trusting(&server, &new.0, &alice.token).await;
    until(&mut again, is_empty_marker).await;
    std::fs::write(server.data_dir.path().join("tls/cert.pem"), "garbage").expect("write");
    hangup(&server);
    logged(&server, "TLS certificate NOT reloaded", 2).await;
    connects_trusting(&server, &new.0, &bob.token).await;
}
