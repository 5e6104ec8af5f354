//! Several devices per account: link codes, linking, the device lists,
//! unlinking, re-registration, the inactivity sweep and the migration from
//! the one-device release, through `router(state)` and the store, on SQLite
//! and (with `PARLEY_TEST_POSTGRES_URL`) PostgreSQL.
//!
//! No test waits for time to pass except where a code must expire, and
//! there the lifetime is a millisecond and the wait many times longer; the
//! sweep and the last-seen throttle take their times as arguments.

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use common::{Backend, Response, TestApp};
use http::{Request, StatusCode, header};
use parley_identity::Directory;
use parley_registration::store::{
    AccountStore, LinkCodeRequest, LinkPolicy, Redemption, now_millis,
};
use parley_registration::{
    AuthError, ClientIp, DeviceId, RegistrationConfig, TokenKeys, UnlinkReason, UserId,
};
use serde_json::json;

const PHONE: &str = "+15551230001";
const PHONE_B: &str = "+15551230002";
const DAY_MS: i64 = 86_400_000;

on_every_backend!(
    link_code_is_single_use_and_gives_a_working_credential,
    link_code_expires,
    wrong_secrets_kill_the_code_they_name,
    a_new_code_replaces_the_previous_one,
    only_the_primary_makes_link_codes,
    device_cap_when_made_and_when_redeemed,
    names_are_checked_before_the_code,
    link_attempts_are_limited_per_address,
    devices_are_listed_to_their_account_and_ids_to_anyone,
    unlinking_rules,
    reregistration_removes_every_device_and_reports_them,
    sweep_unlinks_inactive_linked_devices_only,
    last_seen_is_throttled_per_device,
    store_link_codes_with_times_passed_in,
    migration_keeps_an_account_of_the_one_device_release,
);

/// Config for these tests: no wait between SMS codes, so a number can be
/// registered again at once.
fn config() -> RegistrationConfig {
    RegistrationConfig {
        code_interval: Duration::ZERO,
        ..RegistrationConfig::default()
    }
}

fn parse_id(value: &serde_json::Value) -> u64 {
    value.as_str().expect("id string").parse().expect("decimal")
}

async fn get(app: &TestApp, path: &str, token: Option<&str>) -> Response {
    let mut request = Request::get(path);
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    app.send(request.body(Body::empty()).expect("request"))
        .await
}

async fn delete(app: &TestApp, path: &str, token: &str) -> Response {
    let request = Request::delete(path)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::empty())
        .expect("request");
    app.send(request).await
}

/// `POST /v1/devices/link-code` with `token`.
async fn make_code(app: &TestApp, token: &str) -> Response {
    let request = Request::post("/v1/devices/link-code")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::empty())
        .expect("request");
    app.send(request).await
}

/// A fresh link code of the account whose primary holds `token`.
async fn code_of(app: &TestApp, token: &str) -> String {
    let r = make_code(app, token).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    r.body["code"].as_str().expect("code").to_owned()
}

async fn link(app: &TestApp, code: &str, name: &str) -> Response {
    app.post(
        "/v1/devices/link",
        json!({"code": code, "name": name}),
        None,
    )
    .await
}

/// Links a device named `name` to the account whose primary holds
/// `primary_token`; returns (user, device, token).
async fn link_device(app: &TestApp, primary_token: &str, name: &str) -> (UserId, DeviceId, String) {
    let code = code_of(app, primary_token).await;
    let r = link(app, &code, name).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    (
        parse_id(&r.body["user_id"]),
        parse_id(&r.body["device_id"]),
        r.body["token"].as_str().expect("token").to_owned(),
    )
}

/// `code` with one character of its id part (`at` < 8) or its secret part
/// changed.
fn altered(code: &str, at: usize) -> String {
    let mut chars: Vec<char> = code.chars().filter(|c| *c != '-').collect();
    chars[at] = if chars[at] == 'Z' { 'Y' } else { 'Z' };
    chars.into_iter().collect()
}

fn device_ids(r: &Response) -> Vec<u64> {
    r.body["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .map(|d| parse_id(&d["device_id"]))
        .collect()
}

async fn link_code_is_single_use_and_gives_a_working_credential(backend: Backend) {
    let app = TestApp::start(&backend, config()).await;
    let (user, primary, token) = app.register(PHONE).await;
    let r = make_code(&app, &token).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["expires_in"], 600);
    let code = r.body["code"].as_str().expect("code").to_owned();
    // Six groups of four, of Crockford's base32.
    let groups: Vec<&str> = code.split('-').collect();
    assert_eq!(groups.len(), 6, "{code}");
    assert!(groups.iter().all(|g| {
        g.len() == 4
            && g.bytes()
                .all(|b| b"0123456789ABCDEFGHJKMNPQRSTVWXYZ".contains(&b))
    }));

    // Typed by a person: lower case, spaces.
    let typed = code.to_lowercase().replace('-', " ");
    let r = link(&app, &typed, "Laptop").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(parse_id(&r.body["user_id"]), user);
    let device = parse_id(&r.body["device_id"]);
    assert_ne!(device, primary);
    let linked_token = r.body["token"].as_str().expect("token");
    let claims = app
        .state
        .authenticator()
        .authenticate(linked_token)
        .await
        .expect("the linked device's credential works");
    assert_eq!(
        (claims.user, claims.device, claims.generation),
        (user, device, 1)
    );
    // Both devices' credentials work, side by side.
    assert!(app.state.authenticator().authenticate(&token).await.is_ok());
    assert_eq!(*app.events.linked.lock().expect("lock"), [(user, device)]);
    assert_eq!(
        app.store.device_ids(user).await.expect("ids"),
        [primary, device]
    );

    // Used once.
    link(&app, &code, "Tablet")
        .await
        .assert_error(StatusCode::NOT_FOUND, "LINK_CODE_INVALID");
    // Never made, and not a code at all: the same answer.
    for nonsense in ["0000-0000-0000-0000-0000-0000", "hello", ""] {
        link(&app, nonsense, "Tablet")
            .await
            .assert_error(StatusCode::NOT_FOUND, "LINK_CODE_INVALID");
    }
    let metrics = app.state.metrics();
    assert_eq!(metrics.link_codes_issued.get(), 1);
    assert_eq!(metrics.devices_linked.get(), 1);
    assert_eq!(
        metrics
            .link_failures
            .get_or_create(&[("code", "LINK_CODE_INVALID")])
            .get(),
        4
    );
    assert_eq!(app.store.device_ids(user).await.expect("ids").len(), 2);
}

async fn link_code_expires(backend: Backend) {
    let app = TestApp::start(
        &backend,
        RegistrationConfig {
            link_code_ttl: Duration::from_millis(1),
            ..config()
        },
    )
    .await;
    let (user, _, token) = app.register(PHONE).await;
    let code = code_of(&app, &token).await;
    // Twenty times the code's lifetime: certainly over, however fast.
    tokio::time::sleep(Duration::from_millis(20)).await;
    link(&app, &code, "Laptop")
        .await
        .assert_error(StatusCode::NOT_FOUND, "LINK_CODE_INVALID");
    assert_eq!(app.store.device_ids(user).await.expect("ids").len(), 1);
    // (That a code works until its expiry is tested with times passed in,
    // in `store_link_codes_with_times_passed_in`.)
}

async fn wrong_secrets_kill_the_code_they_name(backend: Backend) {
    let app = TestApp::start(&backend, config()).await;
    let (user, _, token) = app.register(PHONE).await;

    // Guesses at other ids do not touch this code.
    let code = code_of(&app, &token).await;
    for at in 0..8 {
        link(&app, &altered(&code, at), "Laptop")
            .await
            .assert_error(StatusCode::NOT_FOUND, "LINK_CODE_INVALID");
    }
    // Two wrong secrets of this code leave it alive (three kill it).
    for at in [8, 23] {
        link(&app, &altered(&code, at), "Laptop")
            .await
            .assert_error(StatusCode::NOT_FOUND, "LINK_CODE_INVALID");
    }
    assert_eq!(link(&app, &code, "Laptop").await.status, StatusCode::OK);

    // Three wrong secrets, and the right one finds nothing.
    let code = code_of(&app, &token).await;
    for at in [8, 15, 23] {
        link(&app, &altered(&code, at), "Tablet")
            .await
            .assert_error(StatusCode::NOT_FOUND, "LINK_CODE_INVALID");
    }
    link(&app, &code, "Tablet")
        .await
        .assert_error(StatusCode::NOT_FOUND, "LINK_CODE_INVALID");
    assert_eq!(app.store.device_ids(user).await.expect("ids").len(), 2);
}

async fn a_new_code_replaces_the_previous_one(backend: Backend) {
    let app = TestApp::start(&backend, config()).await;
    let (_, _, token) = app.register(PHONE).await;
    let first = code_of(&app, &token).await;
    let second = code_of(&app, &token).await;
    assert_ne!(first, second);
    link(&app, &first, "Laptop")
        .await
        .assert_error(StatusCode::NOT_FOUND, "LINK_CODE_INVALID");
    assert_eq!(link(&app, &second, "Laptop").await.status, StatusCode::OK);
    // Another account's code is its own.
    let (_, _, token_b) = app.register(PHONE_B).await;
    let (_, _, _) = link_device(&app, &token_b, "B's laptop").await;
}

async fn only_the_primary_makes_link_codes(backend: Backend) {
    let app = TestApp::start(&backend, config()).await;
    let (_, _, token) = app.register(PHONE).await;
    let (_, _, linked) = link_device(&app, &token, "Laptop").await;
    make_code(&app, &linked)
        .await
        .assert_error(StatusCode::FORBIDDEN, "PRIMARY_ONLY");
    let r = app
        .send(
            Request::post("/v1/devices/link-code")
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    r.assert_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    make_code(&app, "garbage")
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "TOKEN_INVALID");
    // The primary's previous code was not replaced by the refused request.
    let code = code_of(&app, &token).await;
    make_code(&app, &linked).await;
    assert_eq!(link(&app, &code, "Tablet").await.status, StatusCode::OK);
}

async fn device_cap_when_made_and_when_redeemed(backend: Backend) {
    let app = TestApp::start(
        &backend,
        RegistrationConfig {
            max_devices: 3,
            ..config()
        },
    )
    .await;
    let (user, _, token) = app.register(PHONE).await;
    link_device(&app, &token, "Laptop").await;
    // The last device the cap allows is linked with a code made now ...
    let code = code_of(&app, &token).await;
    // ... by a second process on the same database whose cap is lower
    // (a node started with another --max-devices): it refuses to redeem.
    let strict = TestApp::start_on(
        &backend,
        app.dir.path(),
        RegistrationConfig {
            max_devices: 2,
            ..config()
        },
    )
    .await;
    let r = link(&strict, &code, "Tablet").await;
    r.assert_error(StatusCode::CONFLICT, "DEVICE_LIMIT");
    assert_eq!(r.body["error"]["max_devices"], 2);
    assert_eq!(
        strict
            .state
            .metrics()
            .link_failures
            .get_or_create(&[("code", "DEVICE_LIMIT")])
            .get(),
        1
    );
    // The code was not used up by the refusal.
    assert_eq!(link(&app, &code, "Tablet").await.status, StatusCode::OK);
    assert_eq!(app.store.device_ids(user).await.expect("ids").len(), 3);
    // Full: no code is made.
    let r = make_code(&app, &token).await;
    r.assert_error(StatusCode::CONFLICT, "DEVICE_LIMIT");
    assert_eq!(r.body["error"]["max_devices"], 3);
    assert_eq!(app.state.metrics().link_codes_issued.get(), 2);
}

async fn names_are_checked_before_the_code(backend: Backend) {
    let app = TestApp::start(&backend, config()).await;
    let (_, _, token) = app.register(PHONE).await;
    let code = code_of(&app, &token).await;
    let long = "x".repeat(65);
    for name in ["", "  ", "new\nline", "\u{1b}[31mred", long.as_str()] {
        link(&app, &code, name)
            .await
            .assert_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    }
    app.post("/v1/devices/link", json!({"code": code}), None)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    // None of them cost the code an attempt.
    let r = link(&app, &code, &"é".repeat(32)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let user = parse_id(&r.body["user_id"]);
    let names: Vec<String> = app
        .store
        .devices(user)
        .await
        .expect("devices")
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert_eq!(names, ["Phone".to_owned(), "é".repeat(32)]);
}

async fn link_attempts_are_limited_per_address(backend: Backend) {
    let mut app = TestApp::start(
        &backend,
        RegistrationConfig {
            links_per_ip_burst: 2,
            links_per_ip_per_minute: 1,
            ..config()
        },
    )
    .await;
    let (_, _, token) = app.register(PHONE).await;
    let code = code_of(&app, &token).await;
    let base = app.router.clone();
    let from = |ip: &str| {
        base.clone()
            .layer(axum::Extension(ClientIp(ip.parse().expect("ip"))))
    };
    app.router = from("192.0.2.1");
    for _ in 0..2 {
        link(&app, "0000-0000-0000-0000-0000-0000", "Laptop")
            .await
            .assert_error(StatusCode::NOT_FOUND, "LINK_CODE_INVALID");
    }
    // Even the right code, from this address, waits.
    let r = link(&app, &code, "Laptop").await;
    r.assert_error(StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED");
    assert!(r.retry_after_header() >= 1);
    assert_eq!(
        app.state
            .metrics()
            .rate_limited
            .get_or_create(&[("limiter", "links_per_ip")])
            .get(),
        1
    );
    app.router = from("192.0.2.2");
    assert_eq!(link(&app, &code, "Laptop").await.status, StatusCode::OK);
}

async fn devices_are_listed_to_their_account_and_ids_to_anyone(backend: Backend) {
    let app = TestApp::start(&backend, config()).await;
    let before = now_millis() / 1000;
    let (user, primary, token) = app.register(PHONE).await;
    let (_, laptop, laptop_token) = link_device(&app, &token, "Laptop").await;
    let (_, tablet, _) = link_device(&app, &token, "Tablet").await;
    let after = now_millis() / 1000 + 1;

    // Any device of the account sees the whole list: primary first, then
    // in link order.
    for who in [&token, &laptop_token] {
        let r = get(&app, "/v1/devices", Some(who)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert_eq!(device_ids(&r), [primary, laptop, tablet]);
        let devices = r.body["devices"].as_array().expect("devices");
        let names: Vec<&str> = devices
            .iter()
            .map(|d| d["name"].as_str().expect("name"))
            .collect();
        assert_eq!(names, ["Phone", "Laptop", "Tablet"]);
        let primaries: Vec<bool> = devices.iter().map(|d| d["primary"] == true).collect();
        assert_eq!(primaries, [true, false, false]);
        for d in devices {
            for field in ["created_at", "last_seen_at"] {
                let t = d[field].as_i64().expect("unix seconds");
                assert!(
                    (before..=after).contains(&t),
                    "{field} {t} in {before}..={after}"
                );
            }
        }
    }
    get(&app, "/v1/devices", None)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");

    // Another user sees only the ids, in the same order.
    let (_, _, token_b) = app.register(PHONE_B).await;
    let r = get(&app, &format!("/v1/users/{user}/devices"), Some(&token_b)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        r.body,
        json!({"devices": [primary.to_string(), laptop.to_string(), tablet.to_string()]})
    );
    for path in [
        "/v1/users/12345/devices".to_owned(),
        "/v1/users/abc/devices".to_owned(),
        "/v1/users/0/devices".to_owned(),
        format!("/v1/users/{}/devices", u64::MAX),
    ] {
        get(&app, &path, Some(&token_b))
            .await
            .assert_error(StatusCode::NOT_FOUND, "NO_SUCH_USER");
    }
    get(&app, &format!("/v1/users/{user}/devices"), None)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    // The directory gives the same list.
    assert_eq!(
        app.store.devices(user).await.expect("devices").len(),
        Directory::devices(&app.store, user)
            .await
            .expect("dir")
            .len()
    );
    assert_eq!(
        Directory::devices(&app.store, user)
            .await
            .expect("dir")
            .as_slice(),
        [primary, laptop, tablet]
    );
}

async fn unlinking_rules(backend: Backend) {
    let app = TestApp::start(&backend, config()).await;
    let (user, primary, token) = app.register(PHONE).await;
    let (_, laptop, laptop_token) = link_device(&app, &token, "Laptop").await;
    let (_, tablet, tablet_token) = link_device(&app, &token, "Tablet").await;
    let (_, other_primary, other_token) = app.register(PHONE_B).await;
    let auth = app.state.authenticator();

    // A linked device may not unlink another one, nor the primary.
    delete(&app, &format!("/v1/devices/{tablet}"), &laptop_token)
        .await
        .assert_error(StatusCode::FORBIDDEN, "FORBIDDEN");
    delete(&app, &format!("/v1/devices/{primary}"), &laptop_token)
        .await
        .assert_error(StatusCode::CONFLICT, "PRIMARY_DEVICE");
    // Nobody unlinks the primary.
    delete(&app, &format!("/v1/devices/{primary}"), &token)
        .await
        .assert_error(StatusCode::CONFLICT, "PRIMARY_DEVICE");
    // Not a device of this account, or not an id.
    for path in [
        format!("/v1/devices/{other_primary}"),
        "/v1/devices/12345".to_owned(),
        "/v1/devices/laptop".to_owned(),
    ] {
        delete(&app, &path, &token)
            .await
            .assert_error(StatusCode::NOT_FOUND, "NO_SUCH_DEVICE");
    }
    delete(&app, &format!("/v1/devices/{primary}"), &other_token)
        .await
        .assert_error(StatusCode::NOT_FOUND, "NO_SUCH_DEVICE");
    assert!(app.events.unlinked.lock().expect("lock").is_empty());

    // The primary unlinks the tablet: its credential stops at once.
    let r = delete(&app, &format!("/v1/devices/{tablet}"), &token).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert!(matches!(
        auth.authenticate(&tablet_token).await,
        Err(AuthError::Revoked)
    ));
    get(&app, "/v1/devices", Some(&tablet_token))
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "TOKEN_REVOKED");
    delete(&app, &format!("/v1/devices/{tablet}"), &token)
        .await
        .assert_error(StatusCode::NOT_FOUND, "NO_SUCH_DEVICE");

    // The laptop unlinks itself.
    let r = delete(&app, &format!("/v1/devices/{laptop}"), &laptop_token).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert!(matches!(
        auth.authenticate(&laptop_token).await,
        Err(AuthError::Revoked)
    ));
    assert!(auth.authenticate(&token).await.is_ok());
    assert_eq!(app.store.device_ids(user).await.expect("ids"), [primary]);
    assert_eq!(
        *app.events.unlinked.lock().expect("lock"),
        [
            (user, tablet, UnlinkReason::User),
            (user, laptop, UnlinkReason::User)
        ]
    );
    let metrics = app.state.metrics();
    assert_eq!(
        metrics
            .devices_unlinked
            .get_or_create(&[("reason", "user")])
            .get(),
        2
    );
    assert_eq!(
        metrics
            .devices_unlinked
            .get_or_create(&[("reason", "inactive")])
            .get(),
        0
    );
}

async fn reregistration_removes_every_device_and_reports_them(backend: Backend) {
    let app = TestApp::start(&backend, config()).await;
    let (user, old_primary, old_token) = app.register(PHONE).await;
    let (_, laptop, laptop_token) = link_device(&app, &old_token, "Laptop").await;
    let (_, tablet, tablet_token) = link_device(&app, &old_token, "Tablet").await;
    let pending_code = code_of(&app, &old_token).await;

    let (same_user, new_primary, new_token) = app.register(PHONE).await;
    assert_eq!(same_user, user);
    assert!(![old_primary, laptop, tablet].contains(&new_primary));
    assert_eq!(
        *app.events.reregistered.lock().expect("lock"),
        [(user, old_primary, vec![laptop, tablet], new_primary)]
    );
    assert!(app.events.unlinked.lock().expect("lock").is_empty());
    let auth = app.state.authenticator();
    for old in [&old_token, &laptop_token, &tablet_token] {
        assert!(matches!(
            auth.authenticate(old).await,
            Err(AuthError::Revoked)
        ));
    }
    let claims = auth.authenticate(&new_token).await.expect("new token");
    assert_eq!(claims.generation, 2);
    let r = get(&app, "/v1/devices", Some(&new_token)).await;
    assert_eq!(device_ids(&r), [new_primary]);
    assert_eq!(r.body["devices"][0]["primary"], true);
    assert_eq!(
        app.store.primary_devices().await.expect("primaries")[&user],
        new_primary
    );
    // The old phone's code died with it.
    link(&app, &pending_code, "Intruder")
        .await
        .assert_error(StatusCode::NOT_FOUND, "LINK_CODE_INVALID");
    // The new phone links devices at the new generation.
    let (_, _, relinked) = link_device(&app, &new_token, "Laptop").await;
    assert_eq!(
        auth.authenticate(&relinked)
            .await
            .expect("linked")
            .generation,
        2
    );
    // A number with only a primary reports no linked devices.
    let (_, b1, _) = app.register(PHONE_B).await;
    let (_, b2, _) = app.register(PHONE_B).await;
    let reregistered = app.events.reregistered.lock().expect("lock");
    assert_eq!(reregistered[1].1, b1);
    assert!(reregistered[1].2.is_empty());
    assert_eq!(reregistered[1].3, b2);
}

async fn sweep_unlinks_inactive_linked_devices_only(backend: Backend) {
    let app = TestApp::start(&backend, config()).await;
    let (user, primary, token) = app.register(PHONE).await;
    let (_, stale, stale_token) = link_device(&app, &token, "Old laptop").await;
    let (_, fresh, fresh_token) = link_device(&app, &token, "Tablet").await;
    let now = now_millis();
    // The tablet connected twenty days later; the primary never did.
    assert!(
        app.store
            .mark_seen(user, fresh, now + 20 * DAY_MS)
            .await
            .expect("seen")
    );

    // Nothing is 30 days old yet.
    assert_eq!(
        app.state
            .unlink_inactive(now + 29 * DAY_MS)
            .await
            .expect("sweep"),
        0
    );
    // Thirty-one days on: the old laptop goes; the tablet and the primary
    // stay (a primary is never swept).
    assert_eq!(
        app.state
            .unlink_inactive(now + 31 * DAY_MS)
            .await
            .expect("sweep"),
        1
    );
    assert_eq!(
        app.store.device_ids(user).await.expect("ids"),
        [primary, fresh]
    );
    assert!(matches!(
        app.state.authenticator().authenticate(&stale_token).await,
        Err(AuthError::Revoked)
    ));
    assert!(
        app.state
            .authenticator()
            .authenticate(&fresh_token)
            .await
            .is_ok()
    );
    assert_eq!(
        *app.events.unlinked.lock().expect("lock"),
        [(user, stale, UnlinkReason::Inactive)]
    );
    // Fifty-one days on, the tablet too; then nothing more.
    assert_eq!(
        app.state
            .unlink_inactive(now + 51 * DAY_MS)
            .await
            .expect("sweep"),
        1
    );
    assert_eq!(
        app.state
            .unlink_inactive(now + 365 * DAY_MS)
            .await
            .expect("sweep"),
        0
    );
    assert_eq!(app.store.device_ids(user).await.expect("ids"), [primary]);
    assert_eq!(
        app.state
            .metrics()
            .devices_unlinked
            .get_or_create(&[("reason", "inactive")])
            .get(),
        2
    );
}

async fn last_seen_is_throttled_per_device(backend: Backend) {
    let app = TestApp::start(&backend, config()).await;
    let (user, primary, token) = app.register(PHONE).await;
    let (_, laptop, _) = link_device(&app, &token, "Laptop").await;
    let last_seen = |device: DeviceId| {
        let store = app.store.clone();
        async move {
            store
                .devices(user)
                .await
                .expect("devices")
                .into_iter()
                .find(|d| d.device == device)
                .expect("device")
                .last_seen_at_ms
        }
    };
    const HOUR: i64 = 3_600_000;
    let t = now_millis() + DAY_MS;
    assert!(app.store.mark_seen(user, laptop, t).await.expect("seen"));
    assert_eq!(last_seen(laptop).await, t);
    // Within the hour: not written.
    assert!(
        !app.store
            .mark_seen(user, laptop, t + HOUR - 1)
            .await
            .expect("seen")
    );
    assert_eq!(last_seen(laptop).await, t);
    // Per device.
    assert!(
        app.store
            .mark_seen(user, primary, t + 1)
            .await
            .expect("seen")
    );
    // An hour on: written.
    assert!(
        app.store
            .mark_seen(user, laptop, t + HOUR)
            .await
            .expect("seen")
    );
    assert_eq!(last_seen(laptop).await, t + HOUR);
    // An unknown device writes nothing and fails nothing.
    assert!(!app.store.mark_seen(user, 12345, t).await.expect("seen"));

    // Through the directory the gateway holds, with the real clock: the
    // newly linked device of another account is written at once.
    let (user_b, _, token_b) = app.register(PHONE_B).await;
    let (_, device_b, _) = link_device(&app, &token_b, "Laptop").await;
    let cached = parley_identity::CachedDirectory::new(Arc::new(app.store.clone()), 10);
    let linked_at = app.store.devices(user_b).await.expect("devices")[1].last_seen_at_ms;
    // Only so that the clock has moved past the link's millisecond.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let before = now_millis();
    assert!(before > linked_at);
    cached.seen(user_b, device_b).await.expect("seen");
    let seen = app.store.devices(user_b).await.expect("devices")[1].last_seen_at_ms;
    assert!(seen >= before, "{seen} {before}");
}

async fn store_link_codes_with_times_passed_in(backend: Backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = AccountStore::connect(&backend.url(dir.path()))
        .await
        .expect("connect");
    let t0 = 1_735_689_600_000;
    let reg = store
        .provision_many(&[PHONE.to_owned(), PHONE_B.to_owned()], t0)
        .await
        .expect("provision");
    let (user, primary) = (reg[0].user, reg[0].device);
    let policy = LinkPolicy {
        ttl: Duration::from_secs(600),
        max_attempts: 3,
        max_devices: 5,
    };
    let hash = [7u8; 32];
    let made = |id: &'static str, user: UserId, device: DeviceId| {
        let store = store.clone();
        async move {
            store
                .create_link_code(user, device, id, &hash, t0, &policy)
                .await
                .expect("create")
        }
    };
    assert_eq!(
        made("AAAAAAAA", user, primary).await,
        LinkCodeRequest::Created
    );
    // An id another account's live code has is refused, to be drawn again.
    assert_eq!(
        made("AAAAAAAA", reg[1].user, reg[1].device).await,
        LinkCodeRequest::IdTaken
    );
    // Valid until its expiry, not at it.
    let expiry = t0 + 600_000;
    assert_eq!(
        store
            .redeem_link_code("AAAAAAAA", &hash, "Laptop", expiry, 5)
            .await
            .expect("redeem"),
        Redemption::Invalid
    );
    assert_eq!(
        made("BBBBBBBB", user, primary).await,
        LinkCodeRequest::Created
    );
    // At the device cap the code is kept for later.
    assert_eq!(
        store
            .redeem_link_code("BBBBBBBB", &hash, "Laptop", expiry - 1, 1)
            .await
            .expect("redeem"),
        Redemption::DeviceLimit
    );
    let Redemption::Linked(linked) = store
        .redeem_link_code("BBBBBBBB", &hash, "Laptop", expiry - 1, 5)
        .await
        .expect("redeem")
    else {
        panic!("expected a link");
    };
    assert_eq!((linked.user, linked.generation), (user, 1));
    // A linked device makes no code.
    assert_eq!(
        made("CCCCCCCC", user, linked.device).await,
        LinkCodeRequest::NotPrimary
    );
    // Pruning removes expired codes (and only those).
    assert_eq!(
        made("DDDDDDDD", reg[1].user, reg[1].device).await,
        LinkCodeRequest::Created
    );
    assert_eq!(store.prune(expiry - 1).await.expect("prune"), 0);
    assert_eq!(store.prune(expiry).await.expect("prune"), 1);
}

/// Applies only migration 1 (the one-device release's schema), as that
/// release did: from the migration file itself, so its checksum is the one
/// today's binary expects.
async fn create_release_one_database(url: &str, dir: &std::path::Path) {
    let backend_dir = if url.starts_with("sqlite:") {
        "sqlite"
    } else {
        "postgres"
    };
    let only_v1 = dir.join("v1-migrations");
    std::fs::create_dir_all(&only_v1).expect("mkdir");
    std::fs::copy(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("migrations")
            .join(backend_dir)
            .join("0001_init.sql"),
        only_v1.join("0001_init.sql"),
    )
    .expect("copy migration 1");
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await.expect("connect");
    sqlx::migrate::Migrator::new(only_v1.as_path())
        .await
        .expect("migrator")
        .run(&pool)
        .await
        .expect("migration 1");
    // An account as the one-device release wrote it.
    sqlx::query(
        "INSERT INTO accounts (user_id, phone, device_id, generation, created_at, updated_at) \
         VALUES (4242, '+15557770001', 777, 3, 1000, 2000)",
    )
    .execute(&pool)
    .await
    .expect("an old account");
    pool.close().await;
}

async fn migration_keeps_an_account_of_the_one_device_release(backend: Backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = backend.url(dir.path());
    create_release_one_database(&url, dir.path()).await;
    let app = TestApp::start_on(&backend, dir.path(), config()).await;
    // Its device is its primary, named and timed from the old row.
    let devices = app.store.devices(4242).await.expect("devices");
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].device, 777);
    assert!(devices[0].primary);
    assert_eq!(devices[0].name, "Phone");
    assert_eq!(
        (devices[0].created_at_ms, devices[0].last_seen_at_ms),
        (2000, 2000)
    );
    assert_eq!(
        app.store.primary_devices().await.expect("primaries")[&4242],
        777
    );
    // Its token (generation 3) still works, over HTTP too.
    let token = app
        .keys
        .issue(4242, 777, 3, Duration::from_secs(3600))
        .expect("issue");
    let claims = app
        .state
        .authenticator()
        .authenticate(&token)
        .await
        .expect("old token");
    assert_eq!(
        (claims.user, claims.device, claims.generation),
        (4242, 777, 3)
    );
    let r = get(&app, "/v1/devices", Some(&token)).await;
    assert_eq!(device_ids(&r), [777]);
    // It can link a device, and re-registering it reports the old device.
    link_device(&app, &token, "Laptop").await;
    let (user, new_primary, _) = app.register("+15557770001").await;
    assert_eq!(user, 4242);
    let reregistered = app.events.reregistered.lock().expect("lock").clone();
    assert_eq!(reregistered[0].0, 4242);
    assert_eq!(reregistered[0].1, 777);
    assert_eq!(reregistered[0].2.len(), 1);
    assert_eq!(reregistered[0].3, new_primary);
    drop(app);

    // And the real thing: the accounts database the one-device release
    // wrote for the journal-upgrade fixture, with its signing key (SQLite
    // only: that release's default).
    if matches!(backend, Backend::Sqlite) {
        let fixture =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/journal-v1");
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::copy(fixture.join("parley.db"), dir.path().join("parley.db")).expect("copy db");
        let users: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(fixture.join("users.json")).expect("users.json"),
        )
        .expect("json");
        let store = AccountStore::connect(&Backend::Sqlite.url(dir.path()))
            .await
            .expect("the old database opens");
        let keys = TokenKeys::load_or_generate(&fixture.join("keys")).expect("fixture key");
        let auth = parley_registration::Authenticator::new(Arc::new(keys), store.clone());
        let primaries = store.primary_devices().await.expect("primaries");
        assert_eq!(primaries.len(), 3);
        for name in ["alice", "bob", "carol"] {
            let user = parse_id(&users[name]["user_id"]);
            let device = parse_id(&users[name]["device_id"]);
            assert_eq!(primaries[&user], device, "{name}");
            assert_eq!(store.device_ids(user).await.expect("ids"), [device]);
            let token = auth
                .keys()
                .issue(user, device, 1, Duration::from_secs(3600))
                .expect("issue");
            assert!(auth.authenticate(&token).await.is_ok(), "{name}");
        }
    }
}
