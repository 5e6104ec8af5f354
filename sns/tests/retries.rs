//! Throttling: SNS answering `Throttling` is retried with backoff, up to
//! [`parley_sns::MAX_ATTEMPTS`] calls, and then reported as `throttled`.
//! moto never throttles, so a small HTTP endpoint on loopback plays an SNS
//! that throttles the first calls, speaking SNS's query protocol (XML).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use aws_sdk_sns::config::{Credentials, Region};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use parley_registration::SmsSender;
use parley_sns::{MAX_ATTEMPTS, SmsMetrics, SmsOptions, SnsSettings, SnsSms};

const THROTTLED: &str = "<ErrorResponse xmlns=\"http://sns.amazonaws.com/doc/2010-03-31/\">\
<Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message></Error>\
<RequestId>throttled</RequestId></ErrorResponse>";

const PUBLISHED: &str = "<PublishResponse xmlns=\"http://sns.amazonaws.com/doc/2010-03-31/\">\
<PublishResult><MessageId>m-1</MessageId></PublishResult>\
<ResponseMetadata><RequestId>ok</RequestId></ResponseMetadata></PublishResponse>";

/// An SNS endpoint that throttles its first `throttle` calls, then
/// publishes. Returns its URL and the count of calls.
async fn throttling_sns(throttle: u32) -> (String, Arc<AtomicU32>) {
    let calls = Arc::new(AtomicU32::new(0));
    let counted = calls.clone();
    let app = axum::Router::new().fallback(move || {
        let calls = counted.clone();
        async move {
            let call = calls.fetch_add(1, Ordering::SeqCst) + 1;
            let (status, body) = if call <= throttle {
                (StatusCode::BAD_REQUEST, THROTTLED)
            } else {
                (StatusCode::OK, PUBLISHED)
            };
            (status, [("content-type", "text/xml")], body).into_response()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, calls)
}

async fn sender(url: String) -> (SnsSms, SmsMetrics) {
    // A region and static credentials of the test's own, not the
    // machine's AWS configuration.
    let loader = parley_sns::loader(&SnsSettings {
        endpoint_url: Some(url),
    })
    .region(Region::new("us-east-1"))
    .credentials_provider(Credentials::new(
        "parley-test",
        "parley-test",
        None,
        None,
        "test",
    ));
    let client = parley_sns::client_from(loader).await.expect("client");
    let metrics = SmsMetrics::default();
    (
        SnsSms::new(client, SmsOptions::default(), metrics.clone()),
        metrics,
    )
}

#[tokio::test]
async fn throttling_is_retried_until_sns_takes_the_message() {
    let (url, calls) = throttling_sns(MAX_ATTEMPTS - 1).await;
    let (sms, metrics) = sender(url).await;
    sms.send("+15550001111", "Your Parley code is 123456")
        .await
        .expect("sent on the last attempt");
    assert_eq!(calls.load(Ordering::SeqCst), MAX_ATTEMPTS);
    assert_eq!(metrics.sent.get(), 1);
}

#[tokio::test]
async fn throttling_through_every_attempt_is_a_throttled_failure() {
    let (url, calls) = throttling_sns(u32::MAX).await;
    let (sms, metrics) = sender(url).await;
    let err = sms
        .send("+15550001111", "Your Parley code is 123456")
        .await
        .expect_err("never taken");
    assert_eq!(calls.load(Ordering::SeqCst), MAX_ATTEMPTS);
    let said = err.to_string();
    assert!(
        said.contains("throttled") && said.contains("Throttling"),
        "{said}"
    );
    assert!(
        !said.contains("5550001111") && !said.contains("123456"),
        "{said}"
    );
    assert_eq!(
        metrics
            .failed
            .get_or_create(&[("reason", "throttled")])
            .get(),
        1
    );
    assert_eq!(metrics.sent.get(), 0);
}
