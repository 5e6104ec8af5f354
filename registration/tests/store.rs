//! The account store's queries, transactions and limits, on SQLite and (with
//! `PARLEY_TEST_POSTGRES_URL`) PostgreSQL. Time is passed in explicitly, so
//! a day of limits is tested without waiting.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Backend, open_store as open};
use parley_registration::code;
use parley_registration::store::{AccountStore, CodeCheck, CodePolicy, CodeRequest, Registration};

const PHONE: &str = "+15551230001";
const PHONE_B: &str = "+15551230002";
const SEC: i64 = 1_000;
const DAY: i64 = 86_400 * SEC;
/// An arbitrary fixed "now": 2025-01-01T00:00:00Z in unix ms.
const T0: i64 = 1_735_689_600_000;

const POLICY: CodePolicy = CodePolicy {
    ttl: Duration::from_secs(600),
    interval: Duration::from_secs(60),
    per_day: 5,
    max_attempts: 5,
};

on_every_backend!(
    migrations_are_idempotent,
    code_limits_over_a_day,
    limits_hold_across_store_instances,
    concurrent_requests_grant_one,
    cancel_uncounts,
    verify_outcomes,
    concurrent_verifications_register_once,
    reregistration_replaces_device,
    lookup_finds_registered,
    prune_removes_old_rows,
    provisioning_creates_and_reregisters_accounts,
);

async fn request(store: &AccountStore, phone: &str, code: &str, now: i64) -> CodeRequest {
    store
        .request_code(phone, &code::hash(phone, code), now, &POLICY)
        .await
        .expect("request_code")
}

async fn check(store: &AccountStore, phone: &str, code: &str, now: i64) -> CodeCheck {
    store
        .verify_code(phone, &code::hash(phone, code), now)
        .await
        .expect("verify_code")
}

fn registered(outcome: CodeCheck) -> Registration {
    match outcome {
        CodeCheck::Registered(r) => r,
        other => panic!("expected a registration, got {other:?}"),
    }
}

fn retry_after(outcome: CodeRequest) -> Duration {
    match outcome {
        CodeRequest::Limited { retry_after } => retry_after,
        CodeRequest::Granted(_) => panic!("expected a limit"),
    }
}

async fn migrations_are_idempotent(backend: Backend) {
    let (dir, store) = open(&backend).await;
    assert!(matches!(
        request(&store, PHONE, "123456", T0).await,
        CodeRequest::Granted(_)
    ));
    let user = registered(check(&store, PHONE, "123456", T0).await).user;
    store.close().await;
    // A restart runs the migrations again: nothing changes, data survives.
    let again = AccountStore::connect(&backend.url(dir.path()))
        .await
        .expect("reconnect");
    assert!(again.user_exists(user).await.expect("user_exists"));
}

async fn code_limits_over_a_day(backend: Backend) {
    let (_dir, store) = open(&backend).await;
    assert!(matches!(
        request(&store, PHONE, "000001", T0).await,
        CodeRequest::Granted(_)
    ));
    // One per interval.
    let wait = retry_after(request(&store, PHONE, "000002", T0 + 30 * SEC).await);
    assert_eq!(wait, Duration::from_secs(30));
    // The refused request did not replace the code.
    assert!(matches!(
        check(&store, PHONE, "000002", T0 + 31 * SEC).await,
        CodeCheck::Wrong { attempts_left: 4 }
    ));
    // Another number is not affected.
    assert!(matches!(
        request(&store, PHONE_B, "000003", T0 + 30 * SEC).await,
        CodeRequest::Granted(_)
    ));

    // Five per rolling day: at T0, +1 h, +2 h, +3 h, +4 h.
    for hour in 1..5 {
        let now = T0 + hour * 3600 * SEC;
        assert!(matches!(
            request(&store, PHONE, "000004", now).await,
            CodeRequest::Granted(_)
        ));
    }
    let now = T0 + 5 * 3600 * SEC;
    assert_eq!(
        retry_after(request(&store, PHONE, "000005", now).await),
        Duration::from_millis((DAY - 5 * 3600 * SEC) as u64)
    );
    // Still refused a moment before the first one leaves the window ...
    assert!(matches!(
        request(&store, PHONE, "000005", T0 + DAY - 1).await,
        CodeRequest::Limited { .. }
    ));
    // ... allowed once it has; and then the second one bounds the next.
    assert!(matches!(
        request(&store, PHONE, "000006", T0 + DAY + 1).await,
        CodeRequest::Granted(_)
    ));
    assert_eq!(
        retry_after(request(&store, PHONE, "000007", T0 + DAY + 2 * 60 * SEC).await),
        Duration::from_millis((3600 * SEC - 2 * 60 * SEC) as u64)
    );
}

async fn limits_hold_across_store_instances(backend: Backend) {
    let (dir, first) = open(&backend).await;
    // A second pool on the same database stands in for a second process.
    let second = AccountStore::connect(&backend.url(dir.path()))
        .await
        .expect("connect");
    assert!(matches!(
        request(&first, PHONE, "111111", T0).await,
        CodeRequest::Granted(_)
    ));
    assert!(matches!(
        request(&second, PHONE, "222222", T0 + SEC).await,
        CodeRequest::Limited { .. }
    ));
    assert!(matches!(
        check(&second, PHONE, "111111", T0 + 2 * SEC).await,
        CodeCheck::Registered(_)
    ));
}

async fn concurrent_requests_grant_one(backend: Backend) {
    let (_dir, store) = open(&backend).await;
    let store = Arc::new(store);
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { request(&store, PHONE, &format!("{i:06}"), T0).await })
        })
        .collect();
    let mut granted = 0;
    for task in tasks {
        if matches!(task.await.expect("join"), CodeRequest::Granted(_)) {
            granted += 1;
        }
    }
    assert_eq!(granted, 1);
}

async fn cancel_uncounts(backend: Backend) {
    let (_dir, store) = open(&backend).await;
    let CodeRequest::Granted(ticket) = request(&store, PHONE, "123456", T0).await else {
        panic!("expected a grant");
    };
    store
        .cancel_code_request(PHONE, ticket, &code::hash(PHONE, "123456"))
        .await
        .expect("cancel");
    assert_eq!(
        check(&store, PHONE, "123456", T0).await,
        CodeCheck::NoPendingCode
    );
    // Not counted: a new code is allowed at once.
    assert!(matches!(
        request(&store, PHONE, "654321", T0 + SEC).await,
        CodeRequest::Granted(_)
    ));
    assert!(matches!(
        check(&store, PHONE, "654321", T0 + 2 * SEC).await,
        CodeCheck::Registered(_)
    ));
}

async fn verify_outcomes(backend: Backend) {
    let (_dir, store) = open(&backend).await;
    assert_eq!(
        check(&store, PHONE, "123456", T0).await,
        CodeCheck::NoPendingCode
    );

    request(&store, PHONE, "123456", T0).await;
    for left in (0..5).rev() {
        assert_eq!(
            check(&store, PHONE, "999999", T0 + SEC).await,
            CodeCheck::Wrong {
                attempts_left: left
            }
        );
    }
    assert_eq!(
        check(&store, PHONE, "123456", T0 + SEC).await,
        CodeCheck::NoPendingCode
    );

    // Expiry: valid until ttl, expired from then on (and stays so).
    request(&store, PHONE_B, "123456", T0).await;
    let expiry = T0 + 600 * SEC;
    assert_eq!(
        check(&store, PHONE_B, "123456", expiry).await,
        CodeCheck::Expired
    );
    assert_eq!(
        check(&store, PHONE_B, "999999", expiry + SEC).await,
        CodeCheck::Expired
    );
    let r = registered(check(&store, PHONE_B, "123456", expiry - 1).await);
    assert_eq!(r.generation, 1);
    assert_eq!(r.replaced_device, None);
    assert!(store.user_exists(r.user).await.expect("user_exists"));
    let record = store
        .device(r.user)
        .await
        .expect("device")
        .expect("account");
    assert_eq!((record.device, record.generation), (r.device, 1));
    // Used once.
    assert_eq!(
        check(&store, PHONE_B, "123456", expiry - 1).await,
        CodeCheck::NoPendingCode
    );
    assert!(
        !store
            .user_exists(r.user.wrapping_add(1))
            .await
            .expect("user_exists")
    );
    assert_eq!(store.device(0).await.expect("device"), None);
}

async fn concurrent_verifications_register_once(backend: Backend) {
    let (_dir, store) = open(&backend).await;
    request(&store, PHONE, "123456", T0).await;
    let store = Arc::new(store);
    let tasks: Vec<_> = (0..12)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { check(&store, PHONE, "123456", T0 + SEC).await })
        })
        .collect();
    let mut registrations = 0;
    for task in tasks {
        match task.await.expect("join") {
            CodeCheck::Registered(_) => registrations += 1,
            CodeCheck::NoPendingCode => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(registrations, 1);
}

async fn reregistration_replaces_device(backend: Backend) {
    let (_dir, store) = open(&backend).await;
    request(&store, PHONE, "111111", T0).await;
    let first = registered(check(&store, PHONE, "111111", T0).await);
    request(&store, PHONE, "222222", T0 + 2 * 60 * SEC).await;
    let second = registered(check(&store, PHONE, "222222", T0 + 2 * 60 * SEC).await);
    assert_eq!(second.user, first.user);
    assert_ne!(second.device, first.device);
    assert_eq!(second.generation, 2);
    assert_eq!(second.replaced_device, Some(first.device));
    let record = store
        .device(first.user)
        .await
        .expect("device")
        .expect("account");
    assert_eq!((record.device, record.generation), (second.device, 2));
}

async fn lookup_finds_registered(backend: Backend) {
    let (_dir, store) = open(&backend).await;
    request(&store, PHONE, "111111", T0).await;
    let a = registered(check(&store, PHONE, "111111", T0).await);
    // More numbers than one IN list holds, to cross a chunk boundary.
    let mut phones: Vec<String> = (0..1200).map(|i| format!("+1666000{i:04}")).collect();
    phones.push(PHONE.to_owned());
    let phones: Vec<&str> = phones.iter().map(String::as_str).collect();
    let found = store.lookup(&phones).await.expect("lookup");
    assert_eq!(found, vec![(PHONE.to_owned(), a.user)]);
    assert!(store.lookup(&[]).await.expect("lookup").is_empty());
}

async fn prune_removes_old_rows(backend: Backend) {
    let (_dir, store) = open(&backend).await;
    request(&store, PHONE, "111111", T0).await;
    request(&store, PHONE_B, "222222", T0 + DAY).await;
    // Nothing is old enough yet.
    assert_eq!(store.prune(T0 + DAY - 1).await.expect("prune"), 0);
    // PHONE's history row left the window, its expired code is a day old.
    let pruned = store.prune(T0 + 600 * SEC + DAY + 1).await.expect("prune");
    assert_eq!(pruned, 2);
    assert_eq!(
        check(&store, PHONE, "111111", T0 + DAY + DAY).await,
        CodeCheck::NoPendingCode
    );
    assert!(matches!(
        check(&store, PHONE_B, "222222", T0 + DAY + SEC).await,
        CodeCheck::Registered(_)
    ));
}

async fn provisioning_creates_and_reregisters_accounts(backend: Backend) {
    let (_dir, store) = open(&backend).await;
    // Over one chunk (1,000 per transaction), to cross the boundary.
    let phones: Vec<String> = (0..1_001).map(|i| format!("+1999{i:08}")).collect();
    let first = store.provision_many(&phones, T0).await.expect("provision");
    assert_eq!(first.len(), phones.len());
    let users: std::collections::HashSet<u64> = first.iter().map(|r| r.user).collect();
    assert_eq!(users.len(), phones.len(), "one account per number");
    for r in &first {
        assert_eq!(r.generation, 1);
        assert_eq!(r.replaced_device, None);
        let device = store.device(r.user).await.expect("device").expect("exists");
        assert_eq!((device.device, device.generation), (r.device, 1));
    }
    // Provisioning a number again re-registers it, like a verified code.
    let again = store
        .provision_many(&phones[..1], T0 + SEC)
        .await
        .expect("provision again");
    assert_eq!(again[0].user, first[0].user);
    assert_eq!(again[0].generation, 2);
    assert_eq!(again[0].replaced_device, Some(first[0].device));
    let found = store
        .lookup(&[phones[1000].as_str()])
        .await
        .expect("lookup");
    assert_eq!(found, vec![(phones[1000].clone(), first[1000].user)]);
}
