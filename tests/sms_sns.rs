//! Registration codes as SMS through AWS SNS (`--sms sns`), end to end: the
//! real server, the real AWS SDK, and a real local SNS-compatible server
//! (moto's, started here from `PARLEY_TEST_MOTO`; `.ci/run` installs it).
//! What SNS was asked to send is read back from moto's own API
//! (`GET /moto-api/data.json`).
//!
//! The tests that need moto are ignored (and reported so) unless
//! `PARLEY_TEST_MOTO` was set when they were built; under `CI=true` a missing
//! variable fails `moto_configured_in_ci`. The failure tests need no SNS at
//! all: they point the server at a port where nothing listens.

mod common;
#[path = "common/moto.rs"]
mod moto;

use std::sync::Arc;

use common::{TestServer, sample};
use moto::{Moto, free_port};

/// `POST path` with a JSON body: the status and the JSON answer.
async fn post(
    server: &TestServer,
    path: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(Arc::unwrap_or_clone(server.tls.clone()))
        .build()
        .expect("client");
    let response = client
        .post(format!("{}{path}", server.http_url()))
        .json(&body)
        .send()
        .await
        .expect("an answer");
    let status = response.status().as_u16();
    let json = response.json().await.unwrap_or(serde_json::Value::Null);
    (status, json)
}

fn six_digits(text: &str) -> String {
    let digits: String = text.chars().filter(char::is_ascii_digit).collect();
    assert_eq!(digits.len(), 6, "one six-digit code in {text:?}");
    digits
}

#[test]
fn moto_configured_in_ci() {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    let moto = std::env::var("PARLEY_TEST_MOTO").is_ok_and(|c| !c.is_empty());
    assert!(
        !ci || (cfg!(parley_moto) && moto),
        "CI is set but PARLEY_TEST_MOTO is not, so the SNS tests were ignored: .ci/run installs \
         moto (pip install 'moto[server]') and sets it to moto_server"
    );
}

#[tokio::test]
#[cfg_attr(
    not(parley_moto),
    ignore = "set PARLEY_TEST_MOTO (e.g. moto_server) to run against moto"
)]
async fn a_code_goes_out_as_sms_through_sns_and_verifies() {
    let moto = Moto::start().await;
    let server = TestServer::start_with(&[
        "--sms",
        "sns",
        "--sns-endpoint-url",
        &moto.url,
        "--sms-sender-id",
        "Parley",
    ]);
    let phone = server.phone();
    let (status, body) = post(
        &server,
        "/v1/registration/code",
        serde_json::json!({ "phone": phone }),
    )
    .await;
    assert_eq!(status, 202, "{body}");

    let sent = moto.sms().await;
    let to_phone: Vec<&(String, String)> = sent.iter().filter(|(to, _)| *to == phone).collect();
    assert_eq!(to_phone.len(), 1, "one SMS to {phone}: {sent:?}");
    let code = six_digits(&to_phone[0].1);
    assert!(
        to_phone[0].1.starts_with("Your Parley code is "),
        "{sent:?}"
    );

    // Nothing reached the development outbox, and the code works.
    let outbox = std::fs::read_to_string(server.outbox()).unwrap_or_default();
    assert!(!outbox.contains(&phone), "the outbox is not used: {outbox}");
    let credential = server
        .registration()
        .verify(&phone, &code)
        .await
        .expect("the SMS's code verifies");
    assert_ne!(credential.user_id, 0);

    let (_, metrics) = server.admin_get("/metrics").await;
    assert_eq!(
        sample(&metrics, "parley_sns_sms_sent_total"),
        Some(1.0),
        "{metrics}"
    );
    // The number and the code stay out of the log.
    let log = server.log();
    assert!(
        !log.contains(&phone),
        "the phone number is in the log:\n{log}"
    );
    assert!(!log.contains(&code), "the code is in the log:\n{log}");
}

#[tokio::test]
async fn an_sns_that_cannot_be_reached_is_sms_failed_and_leaves_the_limits() {
    // Nothing listens at this endpoint: every attempt (with the SDK's
    // retries) fails to connect.
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    let server = TestServer::start_with(&["--sms", "sns", "--sns-endpoint-url", &endpoint]);
    let phone = server.phone();
    for attempt in 1..=3 {
        let (status, body) = post(
            &server,
            "/v1/registration/code",
            serde_json::json!({ "phone": phone }),
        )
        .await;
        // Not 429: a code that was not sent counts against nothing (the
        // number may ask again at once), however often it fails.
        assert_eq!(status, 502, "attempt {attempt}: {body}");
        assert_eq!(
            body["error"]["code"], "SMS_FAILED",
            "attempt {attempt}: {body}"
        );
    }
    let (_, metrics) = server.admin_get("/metrics").await;
    assert_eq!(
        sample(
            &metrics,
            r#"parley_sns_sms_failed_total{reason="unreachable"}"#
        ),
        Some(3.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "parley_sns_sms_sent_total"),
        Some(0.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "parley_registration_codes_sent_total"),
        Some(0.0),
        "{metrics}"
    );
    let log = server.log();
    assert!(
        !log.contains(&phone),
        "the phone number is in the log:\n{log}"
    );
}

#[test]
fn sns_settings_are_checked_at_start() {
    let said = common::refused_at_start(&["--sms-sender-id", "Parley"]);
    assert!(
        said.contains("--sms-sender-id: applies only with --sms sns"),
        "{said}"
    );
    let said = common::refused_at_start(&[
        "--sms",
        "sns",
        "--sms-sender-id",
        "Parley Messenger",
        "--sms-origination-number",
        "555",
        "--sns-endpoint-url",
        "localhost:4566",
    ]);
    for problem in [
        "--sms-sender-id: must be 1 to 11 letters and digits",
        "--sms-origination-number: must be a phone number in E.164",
        "--sns-endpoint-url: must be an http:// or https:// URL",
    ] {
        assert!(said.contains(problem), "{problem:?} in {said}");
    }
}
