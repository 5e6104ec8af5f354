//! The HTTP contract, through `router(state)` and `oneshot`, on SQLite and
//! (with `PARLEY_TEST_POSTGRES_URL`) PostgreSQL.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use common::{Backend, TestApp, other_code};
use http::{Request, StatusCode, header};
use parley_registration::{
    AuthError, Authenticator, OutboxSms, RegistrationConfig, SmsError, SmsSender,
};
use serde_json::json;

const PHONE: &str = "+15551230001";
const PHONE_B: &str = "+15551230002";
const PHONE_C: &str = "+447700900123";

on_every_backend!(
    happy_path,
    invalid_phone,
    invalid_request,
    one_code_per_minute,
    five_codes_per_day,
    wrong_code_counts_down_and_kills,
    expired_code,
    reregistration_revokes_old_device,
    unknown_user_is_refused,
    sms_failure_is_not_counted,
    sms_timeout_is_not_counted,
    concurrent_code_requests_send_one,
    lookup_returns_registered_only,
    lookup_needs_a_valid_credential,
    lookup_limits,
    overload_is_shed,
    slow_handler_times_out,
    per_address_limits,
);

async fn happy_path(backend: Backend) {
    let app = TestApp::start(&backend, RegistrationConfig::default()).await;
    let r = app.request_code(PHONE).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(r.body, json!({"expires_in": 600, "next_code_in": 60}));
    let lines = app.outbox_lines();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["kind"], "sms");
    assert_eq!(lines[0]["to"], PHONE);
    let code = app.last_code(PHONE);

    let r = app.verify(PHONE, &code).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let user: u64 = r.body["user_id"]
        .as_str()
        .expect("string")
        .parse()
        .expect("decimal");
    let device: u64 = r.body["device_id"]
        .as_str()
        .expect("string")
        .parse()
        .expect("decimal");
    assert!(user >= 1 && user <= i64::MAX as u64);
    assert!(device >= 1 && device <= i64::MAX as u64);
    let token = r.body["token"].as_str().expect("token");

    let claims = app
        .state
        .authenticator()
        .authenticate(token)
        .await
        .expect("authenticate");
    assert_eq!(
        (claims.user, claims.device, claims.generation),
        (user, device, 1)
    );
    assert!(app.store.user_exists(user).await.expect("store"));
    let record = app
        .store
        .device(user)
        .await
        .expect("store")
        .expect("account");
    assert_eq!((record.device, record.generation), (device, 1));
    assert!(app.events.replaced.lock().expect("lock").is_empty());

    // A code verifies once.
    app.verify(PHONE, &code)
        .await
        .assert_error(StatusCode::NOT_FOUND, "NO_PENDING_CODE");
    // Never requested.
    app.verify(PHONE_B, "123456")
        .await
        .assert_error(StatusCode::NOT_FOUND, "NO_PENDING_CODE");
}

async fn invalid_phone(backend: Backend) {
    let app = TestApp::start(&backend, RegistrationConfig::default()).await;
    for phone in [
        "15551234567",
        "+1234567",
        "+1234567890123456",
        "+05551234567",
        "+1 555 123 4567",
        "",
        "+",
    ] {
        app.request_code(phone)
            .await
            .assert_error(StatusCode::BAD_REQUEST, "INVALID_PHONE");
        app.verify(phone, "123456")
            .await
            .assert_error(StatusCode::BAD_REQUEST, "INVALID_PHONE");
    }
    assert!(app.outbox_lines().is_empty(), "no SMS to invalid numbers");
    // The shortest and longest valid numbers are accepted.
    for phone in ["+12345678", "+123456789012345"] {
        assert_eq!(app.request_code(phone).await.status, StatusCode::ACCEPTED);
    }
}

async fn invalid_request(backend: Backend) {
    let app = TestApp::start(&backend, RegistrationConfig::default()).await;
    let raw = |content_type: Option<&str>, body: Vec<u8>| {
        let mut request = Request::post("/v1/registration/code");
        if let Some(ct) = content_type {
            request = request.header(header::CONTENT_TYPE, ct);
        }
        request.body(Body::from(body)).expect("request")
    };
    let json = Some("application/json");
    for (content_type, body) in [
        (json, b"{".to_vec()),
        (json, b"not json".to_vec()),
        (json, b"{}".to_vec()),
        (json, br#"{"phone": 15551234567}"#.to_vec()),
        (json, b"".to_vec()),
        (Some("text/plain"), br#"{"phone": "+15551234567"}"#.to_vec()),
        (None, br#"{"phone": "+15551234567"}"#.to_vec()),
    ] {
        app.send(raw(content_type, body))
            .await
            .assert_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    }
    app.post("/v1/registration/verify", json!({"phone": PHONE}), None)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST");

    // Over the 64 KiB body limit, with and without a Content-Length.
    let big = format!(
        r#"{{"phone": "+15551234567", "pad": "{}"}}"#,
        "x".repeat(70 * 1024)
    );
    app.send(raw(json, big.clone().into_bytes()))
        .await
        .assert_error(StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE");
    let announced = Request::post("/v1/registration/code")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, big.len())
        .body(Body::from(big))
        .expect("request");
    app.send(announced)
        .await
        .assert_error(StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE");
    // Just under it is fine (unknown fields are ignored).
    let ok = format!(
        r#"{{"phone": "+15551234567", "pad": "{}"}}"#,
        "x".repeat(60 * 1024)
    );
    assert_eq!(
        app.send(raw(json, ok.into_bytes())).await.status,
        StatusCode::ACCEPTED
    );
}

async fn one_code_per_minute(backend: Backend) {
    let app = TestApp::start(&backend, RegistrationConfig::default()).await;
    assert_eq!(app.request_code(PHONE).await.status, StatusCode::ACCEPTED);
    let r = app.request_code(PHONE).await;
    r.assert_error(StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED");
    let retry = r.retry_after_header();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert_eq!(r.body["error"]["retry_after"], retry);
    assert_eq!(
        app.outbox_lines().len(),
        1,
        "the refused request sent nothing"
    );
    // The limit is per number.
    assert_eq!(app.request_code(PHONE_B).await.status, StatusCode::ACCEPTED);
    // The refused request did not replace the pending code.
    let r = app.verify(PHONE, &app.last_code(PHONE)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

async fn five_codes_per_day(backend: Backend) {
    let config = RegistrationConfig {
        code_interval: Duration::ZERO,
        ..RegistrationConfig::default()
    };
    let app = TestApp::start(&backend, config).await;
    let mut codes = Vec::new();
    for _ in 0..5 {
        let r = app.request_code(PHONE).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
        codes.push(app.last_code(PHONE));
    }
    let r = app.request_code(PHONE).await;
    r.assert_error(StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED");
    let retry = r.retry_after_header();
    assert!(retry > 86_000 && retry <= 86_400, "Retry-After {retry}");
    assert_eq!(app.outbox_lines().len(), 5);

    // Each new code replaced the previous one.
    let newest = codes.last().expect("codes").clone();
    if let Some(old) = codes.iter().find(|c| **c != newest) {
        app.verify(PHONE, old)
            .await
            .assert_error(StatusCode::UNAUTHORIZED, "WRONG_CODE");
    }
    assert_eq!(app.verify(PHONE, &newest).await.status, StatusCode::OK);
}

async fn wrong_code_counts_down_and_kills(backend: Backend) {
    let app = TestApp::start(&backend, RegistrationConfig::default()).await;
    assert_eq!(app.request_code(PHONE).await.status, StatusCode::ACCEPTED);
    let code = app.last_code(PHONE);
    let wrong = other_code(&code);
    for left in (0..5).rev() {
        let r = app.verify(PHONE, &wrong).await;
        r.assert_error(StatusCode::UNAUTHORIZED, "WRONG_CODE");
        assert_eq!(r.body["error"]["attempts_left"], left);
    }
    // Dead: even the right code finds nothing.
    app.verify(PHONE, &code)
        .await
        .assert_error(StatusCode::NOT_FOUND, "NO_PENDING_CODE");

    // Malformed guesses are wrong guesses too.
    let app = TestApp::start(&backend, RegistrationConfig::default()).await;
    assert_eq!(app.request_code(PHONE_B).await.status, StatusCode::ACCEPTED);
    let r = app.verify(PHONE_B, "12").await;
    r.assert_error(StatusCode::UNAUTHORIZED, "WRONG_CODE");
    assert_eq!(r.body["error"]["attempts_left"], 4);
    assert_eq!(
        app.verify(PHONE_B, &app.last_code(PHONE_B)).await.status,
        StatusCode::OK
    );
}

async fn expired_code(backend: Backend) {
    let config = RegistrationConfig {
        code_ttl: Duration::from_millis(1),
        ..RegistrationConfig::default()
    };
    let app = TestApp::start(&backend, config).await;
    assert_eq!(app.request_code(PHONE).await.status, StatusCode::ACCEPTED);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let code = app.last_code(PHONE);
    app.verify(PHONE, &code)
        .await
        .assert_error(StatusCode::GONE, "CODE_EXPIRED");
    app.verify(PHONE, &code)
        .await
        .assert_error(StatusCode::GONE, "CODE_EXPIRED");
}

async fn reregistration_revokes_old_device(backend: Backend) {
    let config = RegistrationConfig {
        code_interval: Duration::ZERO,
        ..RegistrationConfig::default()
    };
    let app = TestApp::start(&backend, config).await;
    let (user1, device1, token1) = app.register(PHONE).await;
    let auth = Authenticator::new(Arc::clone(&app.keys), app.store.clone());
    assert!(auth.authenticate(&token1).await.is_ok());

    let (user2, device2, token2) = app.register(PHONE).await;
    assert_eq!(user2, user1, "re-registration keeps the user id");
    assert_ne!(device2, device1, "and issues a new device id");
    assert_eq!(
        *app.events.replaced.lock().expect("lock"),
        vec![(user1, device1)]
    );

    assert!(matches!(
        auth.authenticate(&token1).await,
        Err(AuthError::Revoked)
    ));
    let claims = auth.authenticate(&token2).await.expect("new token");
    assert_eq!(
        (claims.user, claims.device, claims.generation),
        (user1, device2, 2)
    );
    let record = app
        .store
        .device(user1)
        .await
        .expect("store")
        .expect("account");
    assert_eq!((record.device, record.generation), (device2, 2));

    app.lookup(Some(&token1), &[PHONE])
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "TOKEN_REVOKED");
    assert_eq!(
        app.lookup(Some(&token2), &[PHONE]).await.status,
        StatusCode::OK
    );

    // A third time: generation 3, the second device is revoked too.
    let (_, device3, token3) = app.register(PHONE).await;
    assert!(matches!(
        auth.authenticate(&token2).await,
        Err(AuthError::Revoked)
    ));
    assert_eq!(
        auth.authenticate(&token3).await.expect("token3").generation,
        3
    );
    assert_eq!(
        app.events.replaced.lock().expect("lock")[1],
        (user1, device2)
    );
    assert_ne!(device3, device2);
}

async fn unknown_user_is_refused(backend: Backend) {
    let app = TestApp::start(&backend, RegistrationConfig::default()).await;
    let token = app
        .keys
        .issue(12345, 678, 1, Duration::from_secs(60))
        .expect("issue");
    assert!(matches!(
        app.state.authenticator().authenticate(&token).await,
        Err(AuthError::Revoked)
    ));
    assert!(matches!(
        app.state.authenticator().authenticate("garbage").await,
        Err(AuthError::Invalid(_))
    ));
    app.lookup(Some(&token), &[PHONE])
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "TOKEN_REVOKED");
    assert!(!app.store.user_exists(12345).await.expect("store"));
    assert_eq!(app.store.device(u64::MAX).await.expect("store"), None);
}

/// Fails the first `failures` messages, then delivers to the outbox.
struct FlakySms {
    failures: AtomicUsize,
    outbox: OutboxSms,
}

impl SmsSender for FlakySms {
    fn send<'a>(
        &'a self,
        to: &'a str,
        body: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<(), SmsError>> + Send + 'a>> {
        Box::pin(async move {
            if self
                .failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(SmsError::Provider("provider down".to_owned()));
            }
            self.outbox.send(to, body).await
        })
    }
}

async fn sms_failure_is_not_counted(backend: Backend) {
    let app = TestApp::start_with(&backend, RegistrationConfig::default(), |outbox| {
        Arc::new(FlakySms {
            failures: AtomicUsize::new(6),
            outbox: OutboxSms::new(outbox),
        })
    })
    .await;
    // More failures than the daily limit: none of them counted.
    for _ in 0..6 {
        app.request_code(PHONE)
            .await
            .assert_error(StatusCode::BAD_GATEWAY, "SMS_FAILED");
    }
    // The unsent code is not left pending.
    app.verify(PHONE, "000000")
        .await
        .assert_error(StatusCode::NOT_FOUND, "NO_PENDING_CODE");
    assert_eq!(app.request_code(PHONE).await.status, StatusCode::ACCEPTED);
    assert_eq!(
        app.verify(PHONE, &app.last_code(PHONE)).await.status,
        StatusCode::OK
    );
}

/// Never finishes sending; counts the calls.
struct HangingSms {
    calls: Arc<AtomicUsize>,
}

impl SmsSender for HangingSms {
    fn send<'a>(
        &'a self,
        _to: &'a str,
        _body: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<(), SmsError>> + Send + 'a>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(std::future::pending())
    }
}

async fn sms_timeout_is_not_counted(backend: Backend) {
    let config = RegistrationConfig {
        sms_timeout: Duration::from_millis(100),
        ..RegistrationConfig::default()
    };
    let calls = Arc::new(AtomicUsize::new(0));
    let app = TestApp::start_with(&backend, config, |_| {
        Arc::new(HangingSms {
            calls: Arc::clone(&calls),
        })
    })
    .await;
    for _ in 0..2 {
        app.request_code(PHONE)
            .await
            .assert_error(StatusCode::BAD_GATEWAY, "SMS_FAILED");
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the second try was not rate limited"
    );
}

async fn concurrent_code_requests_send_one(backend: Backend) {
    let app = Arc::new(TestApp::start(&backend, RegistrationConfig::default()).await);
    let tasks: Vec<_> = (0..12)
        .map(|_| {
            let app = Arc::clone(&app);
            tokio::spawn(async move { app.request_code(PHONE).await.status })
        })
        .collect();
    let mut accepted = 0;
    for task in tasks {
        match task.await.expect("join") {
            StatusCode::ACCEPTED => accepted += 1,
            StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(accepted, 1);
    assert_eq!(app.outbox_lines().len(), 1);
}

async fn lookup_returns_registered_only(backend: Backend) {
    let app = TestApp::start(&backend, RegistrationConfig::default()).await;
    let (user_a, _, token_a) = app.register(PHONE).await;
    let (user_b, _, _) = app.register(PHONE_B).await;
    let r = app
        .lookup(
            Some(&token_a),
            &[
                PHONE_B,
                "+15559999999",
                "not a number",
                "123",
                PHONE_C,
                PHONE,
                PHONE_B,
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        r.body,
        json!({"contacts": [
            {"phone": PHONE_B, "user_id": user_b.to_string()},
            {"phone": PHONE, "user_id": user_a.to_string()},
        ]})
    );
    let r = app.lookup(Some(&token_a), &[]).await;
    assert_eq!(r.body, json!({"contacts": []}));
}

async fn lookup_needs_a_valid_credential(backend: Backend) {
    let app = TestApp::start(&backend, RegistrationConfig::default()).await;
    let (_, _, token) = app.register(PHONE).await;
    let r = app.lookup(None, &[PHONE]).await;
    r.assert_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    assert_eq!(r.headers[header::WWW_AUTHENTICATE], "Bearer");
    app.lookup(Some("garbage"), &[PHONE])
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "TOKEN_INVALID");
    let other_keys =
        parley_registration::TokenKeys::load_or_generate(&app.dir.path().join("other"))
            .expect("keys");
    let claims = app
        .state
        .authenticator()
        .authenticate(&token)
        .await
        .expect("valid");
    let forged = other_keys
        .issue(
            claims.user,
            claims.device,
            claims.generation,
            Duration::from_secs(60),
        )
        .expect("issue");
    app.lookup(Some(&forged), &[PHONE])
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "TOKEN_INVALID");
    let basic = Request::post("/v1/contacts/lookup")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::AUTHORIZATION, format!("Basic {token}"))
        .body(Body::from(json!({"phones": [PHONE]}).to_string()))
        .expect("request");
    app.send(basic)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    // The credential is checked before the body.
    let r = app
        .post("/v1/contacts/lookup", json!({"nonsense": true}), None)
        .await;
    r.assert_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    let r = app
        .post(
            "/v1/contacts/lookup",
            json!({"nonsense": true}),
            Some(&token),
        )
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST");
}

async fn lookup_limits(backend: Backend) {
    let config = RegistrationConfig {
        lookup_burst: 3,
        lookup_per_minute: 1,
        lookup_max_phones: 10,
        ..RegistrationConfig::default()
    };
    let app = TestApp::start(&backend, config).await;
    let (_, _, token) = app.register(PHONE).await;
    let (_, _, token_b) = app.register(PHONE_B).await;

    let eleven: Vec<String> = (0..11).map(|i| format!("+1555000{i:04}")).collect();
    let eleven: Vec<&str> = eleven.iter().map(String::as_str).collect();
    app.lookup(Some(&token), &eleven)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    assert_eq!(
        app.lookup(Some(&token), &eleven[..10]).await.status,
        StatusCode::OK
    );

    for _ in 0..2 {
        assert_eq!(
            app.lookup(Some(&token), &[PHONE_B]).await.status,
            StatusCode::OK
        );
    }
    let r = app.lookup(Some(&token), &[PHONE_B]).await;
    r.assert_error(StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED");
    let retry = r.retry_after_header();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert_eq!(r.body["error"]["retry_after"], retry);
    // Per user.
    assert_eq!(
        app.lookup(Some(&token_b), &[PHONE]).await.status,
        StatusCode::OK
    );
}

/// Signals when a send starts, then never finishes.
struct BlockingSms {
    started: Arc<tokio::sync::Notify>,
}

/// Signals when a send starts, then fails once the test releases it: an
/// SMS provider that is slow for exactly as long as the test needs.
struct GatedSms {
    started: Arc<tokio::sync::Notify>,
    release: Arc<tokio::sync::Notify>,
}

impl SmsSender for GatedSms {
    fn send<'a>(
        &'a self,
        _to: &'a str,
        _body: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<(), SmsError>> + Send + 'a>> {
        self.started.notify_one();
        Box::pin(async move {
            self.release.notified().await;
            Err(SmsError::Provider("released by the test".to_owned()))
        })
    }
}

impl SmsSender for BlockingSms {
    fn send<'a>(
        &'a self,
        _to: &'a str,
        _body: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<(), SmsError>> + Send + 'a>> {
        self.started.notify_one();
        Box::pin(std::future::pending())
    }
}

async fn overload_is_shed(backend: Backend) {
    // The one slot stays taken until the test lets the SMS finish: the
    // second request meets a full server however long it takes to come.
    let config = RegistrationConfig {
        max_in_flight: 1,
        // No timeout may free the slot first.
        sms_timeout: Duration::from_secs(300),
        request_timeout: Duration::from_secs(600),
        ..RegistrationConfig::default()
    };
    let started = Arc::new(tokio::sync::Notify::new());
    let release = Arc::new(tokio::sync::Notify::new());
    let app = Arc::new(
        TestApp::start_with(&backend, config, |_| {
            Arc::new(GatedSms {
                started: Arc::clone(&started),
                release: Arc::clone(&release),
            })
        })
        .await,
    );
    let first = {
        let app = Arc::clone(&app);
        tokio::spawn(async move { app.request_code(PHONE).await })
    };
    started.notified().await;
    let r = app.request_code(PHONE_B).await;
    r.assert_error(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE");
    assert!(r.headers.contains_key(header::RETRY_AFTER));
    release.notify_one();
    first
        .await
        .expect("join")
        .assert_error(StatusCode::BAD_GATEWAY, "SMS_FAILED");
    // The slot is free again.
    let r = app.verify(PHONE, "000000").await;
    r.assert_error(StatusCode::NOT_FOUND, "NO_PENDING_CODE");
}

async fn slow_handler_times_out(backend: Backend) {
    // sms_timeout above request_timeout is refused by `validate()`; it is
    // used here only to make a handler outlive the request timeout.
    let config = RegistrationConfig {
        request_timeout: Duration::from_millis(300),
        sms_timeout: Duration::from_secs(60),
        ..RegistrationConfig::default()
    };
    let started_sms = Arc::new(tokio::sync::Notify::new());
    let app = TestApp::start_with(&backend, config, |_| {
        Arc::new(BlockingSms {
            started: Arc::clone(&started_sms),
        })
    })
    .await;
    // The SMS never finishes, and its own timeout is a minute: an answer
    // at all, and UNAVAILABLE rather than SMS_FAILED, is the request
    // timeout's. The bound only keeps a broken timeout from hanging the test.
    let r = tokio::time::timeout(Duration::from_secs(30), app.request_code(PHONE))
        .await
        .expect("answered by the request timeout, long before the SMS timeout");
    r.assert_error(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE");
}

async fn per_address_limits(backend: Backend) {
    let config = RegistrationConfig {
        codes_per_ip_burst: 3,
        codes_per_ip_per_minute: 1,
        verifies_per_ip_burst: 2,
        verifies_per_ip_per_minute: 1,
        ..RegistrationConfig::default()
    };
    let mut app = TestApp::start(&backend, config).await;
    let base = app.router.clone();
    let from = |ip: &str| {
        base.clone()
            .layer(axum::Extension(parley_registration::ClientIp(
                ip.parse().expect("ip"),
            )))
    };

    // One machine cycling through numbers is stopped...
    app.router = from("192.0.2.1");
    for i in 0..3 {
        let response = app.request_code(&format!("+1555000100{i}")).await;
        assert_eq!(response.status, StatusCode::ACCEPTED);
    }
    app.request_code("+15550001009")
        .await
        .assert_error(StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED");
    // ...without stopping anyone else.
    app.router = from("192.0.2.2");
    assert_eq!(
        app.request_code("+15550001009").await.status,
        StatusCode::ACCEPTED
    );

    // Guessing across many numbers from one address is stopped too.
    app.router = from("192.0.2.3");
    for i in 0..2 {
        let phone = format!("+1555000100{i}");
        let wrong = other_code(&app.last_code(&phone));
        app.verify(&phone, &wrong)
            .await
            .assert_error(StatusCode::UNAUTHORIZED, "WRONG_CODE");
    }
    let phone = "+15550001002";
    let right = app.last_code(phone);
    app.verify(phone, &right)
        .await
        .assert_error(StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED");
}
