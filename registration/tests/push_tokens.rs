//! Push tokens in the account store, on SQLite and (with
//! `PARLEY_TEST_POSTGRES_URL`) PostgreSQL: one per device, a token on at
//! most one device, dead only if not replaced since, gone with its device.

mod common;

use common::{Backend, open_store as open};
use parley_identity::Device;
use parley_push::{Platform, Target};
use parley_registration::store::AccountStore;

const T0: i64 = 1_735_689_600_000;

on_every_backend!(
    a_token_is_saved_replaced_and_cleared,
    a_token_moves_to_the_device_that_registers_it_last,
    a_token_dies_only_if_not_replaced_since,
    a_token_goes_with_its_device,
);

/// `n` fresh accounts' primary devices, and one linked device of the first.
async fn devices(store: &AccountStore, n: usize) -> (Vec<Device>, Device) {
    let phones: Vec<String> = (0..n).map(|i| format!("+1555444{i:04}")).collect();
    let accounts = store.provision_many(&phones, T0).await.expect("provision");
    let primaries: Vec<Device> = accounts
        .iter()
        .map(|a| Device::new(a.user, a.device))
        .collect();
    let linked = store
        .provision_linked(&[primaries[0].user], 1, T0)
        .await
        .expect("linked")[0][0];
    (primaries.clone(), Device::new(primaries[0].user, linked))
}

fn target(platform: Platform, token: &str) -> Target {
    Target {
        platform,
        token: token.to_owned(),
        endpoint: format!("arn:endpoint/{token}"),
    }
}

async fn a_token_is_saved_replaced_and_cleared(backend: Backend) {
    let (_dir, store) = open(&backend).await;
    let (devices, tablet) = devices(&store, 1).await;
    let phone = devices[0];
    assert_eq!(store.push_target(phone).await.expect("read"), None);
    let first = target(Platform::Fcm, "t1");
    assert!(
        store
            .save_push_target(phone, &first, T0)
            .await
            .expect("save")
    );
    assert!(
        store
            .save_push_target(phone, &first, T0)
            .await
            .expect("again")
    );
    assert_eq!(
        store.push_target(phone).await.expect("read"),
        Some(first.clone())
    );
    // A linked device of the same account has its own.
    let other = target(Platform::Apns, "t2");
    assert!(
        store
            .save_push_target(tablet, &other, T0)
            .await
            .expect("save")
    );
    assert_eq!(store.push_target(tablet).await.expect("read"), Some(other));
    // A new token replaces the device's old one.
    let second = target(Platform::ApnsSandbox, "t3");
    assert!(
        store
            .save_push_target(phone, &second, T0)
            .await
            .expect("save")
    );
    assert_eq!(store.push_target(phone).await.expect("read"), Some(second));
    assert!(store.clear_push_target(phone).await.expect("clear"));
    assert!(!store.clear_push_target(phone).await.expect("clear again"));
    assert_eq!(store.push_target(phone).await.expect("read"), None);
    // No row for a device that does not exist.
    let ghost = Device::new(phone.user, 12345);
    assert!(
        !store
            .save_push_target(ghost, &first, T0)
            .await
            .expect("save")
    );
}

async fn a_token_moves_to_the_device_that_registers_it_last(backend: Backend) {
    let (_dir, store) = open(&backend).await;
    let (devices, _) = devices(&store, 2).await;
    let (old, new) = (devices[0], devices[1]);
    let token = target(Platform::Fcm, "moving");
    assert!(store.save_push_target(old, &token, T0).await.expect("save"));
    // Known to the new device's registration: the endpoint made for it.
    assert_eq!(
        store
            .known_push_endpoint(new, Platform::Fcm, "moving")
            .await
            .expect("known"),
        Some(token.endpoint.clone())
    );
    assert!(store.save_push_target(new, &token, T0).await.expect("save"));
    assert_eq!(store.push_target(new).await.expect("read"), Some(token));
    assert_eq!(store.push_target(old).await.expect("read"), None, "moved");
    // The same platform's endpoint of the device itself, when its token
    // is new.
    assert_eq!(
        store
            .known_push_endpoint(new, Platform::Fcm, "never-seen")
            .await
            .expect("known"),
        Some("arn:endpoint/moving".to_owned())
    );
    assert_eq!(
        store
            .known_push_endpoint(new, Platform::Apns, "never-seen")
            .await
            .expect("known"),
        None
    );
}

async fn a_token_dies_only_if_not_replaced_since(backend: Backend) {
    let (_dir, store) = open(&backend).await;
    let (devices, _) = devices(&store, 1).await;
    let phone = devices[0];
    let old = target(Platform::Fcm, "old");
    let new = target(Platform::Fcm, "new");
    assert!(store.save_push_target(phone, &old, T0).await.expect("save"));
    assert!(store.save_push_target(phone, &new, T0).await.expect("save"));
    // A push to the old token failed: the new one stays live.
    assert!(!store.mark_push_dead(phone, &old).await.expect("mark"));
    assert_eq!(
        store.push_target(phone).await.expect("read"),
        Some(new.clone())
    );
    assert!(store.mark_push_dead(phone, &new).await.expect("mark"));
    assert!(!store.mark_push_dead(phone, &new).await.expect("once"));
    assert_eq!(store.push_target(phone).await.expect("read"), None, "dead");
    // Registered again: alive.
    assert!(store.save_push_target(phone, &new, T0).await.expect("save"));
    assert_eq!(store.push_target(phone).await.expect("read"), Some(new));
}

async fn a_token_goes_with_its_device(backend: Backend) {
    let (_dir, store) = open(&backend).await;
    let (devices, tablet) = devices(&store, 1).await;
    let token = target(Platform::Apns, "tablet");
    assert!(
        store
            .save_push_target(tablet, &token, T0)
            .await
            .expect("save")
    );
    let unlinked = store
        .unlink(tablet.user, devices[0].device, tablet.device)
        .await
        .expect("unlink");
    assert!(matches!(
        unlinked,
        parley_registration::store::Unlink::Unlinked
    ));
    assert_eq!(store.push_target(tablet).await.expect("read"), None);
    // The token is free for another device.
    assert!(
        store
            .save_push_target(devices[0], &token, T0)
            .await
            .expect("save")
    );
}
