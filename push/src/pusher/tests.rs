//! The pusher's policy on paused time, with an in-memory service and store
//! (the real ones, SNS and the account store, are tested end to end in
//! the server's tests).

use std::sync::Mutex;

use parley_router::Wakeups;

use super::*;
use crate::{BoxFuture, Platform, StoreFailed, Target};

#[derive(Debug, Default)]
struct Service {
    published: Mutex<Vec<Device>>,
    /// Devices whose endpoint is disabled.
    disabled: Mutex<Vec<Device>>,
    /// Publishes never answer (an SNS that hangs).
    hang: bool,
}

impl Service {
    fn published(&self) -> Vec<Device> {
        self.published.lock().expect("not poisoned").clone()
    }
}

impl PushService for Service {
    fn supports(&self, _: Platform) -> bool {
        true
    }
    fn register<'a>(
        &'a self,
        _: Platform,
        token: &'a str,
        _: Option<&'a str>,
    ) -> BoxFuture<'a, Result<String, PushError>> {
        Box::pin(async move { Ok(format!("endpoint-{token}")) })
    }
    fn publish<'a>(
        &'a self,
        device: Device,
        _: &'a Target,
    ) -> BoxFuture<'a, Result<(), PushError>> {
        Box::pin(async move {
            if self.hang {
                std::future::pending::<()>().await;
            }
            self.published.lock().expect("not poisoned").push(device);
            if self
                .disabled
                .lock()
                .expect("not poisoned")
                .contains(&device)
            {
                return Err(PushError::Disabled);
            }
            Ok(())
        })
    }
}

#[derive(Debug, Default)]
struct Store {
    targets: Mutex<HashMap<Device, (Target, bool)>>,
}

impl Store {
    fn with(devices: &[Device]) -> Self {
        let store = Store::default();
        for &d in devices {
            store
                .targets
                .lock()
                .expect("not poisoned")
                .insert(d, (target(d, "t1"), false));
        }
        store
    }
}

fn target(device: Device, token: &str) -> Target {
    Target {
        platform: Platform::Fcm,
        token: format!("{token}-{}", device.device),
        endpoint: format!("arn-{token}-{}", device.device),
    }
}

impl PushStore for Store {
    fn target(&self, device: Device) -> BoxFuture<'_, Result<Option<Target>, StoreFailed>> {
        let t = self
            .targets
            .lock()
            .expect("not poisoned")
            .get(&device)
            .cloned();
        Box::pin(async move { Ok(t.filter(|(_, dead)| !dead).map(|(t, _)| t)) })
    }
    fn known_endpoint<'a>(
        &'a self,
        _: Device,
        _: Platform,
        _: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, StoreFailed>> {
        Box::pin(async { Ok(None) })
    }
    fn save<'a>(&'a self, d: Device, t: &'a Target) -> BoxFuture<'a, Result<bool, StoreFailed>> {
        self.targets
            .lock()
            .expect("not poisoned")
            .insert(d, (t.clone(), false));
        Box::pin(async { Ok(true) })
    }
    fn clear(&self, d: Device) -> BoxFuture<'_, Result<bool, StoreFailed>> {
        let had = self
            .targets
            .lock()
            .expect("not poisoned")
            .remove(&d)
            .is_some();
        Box::pin(async move { Ok(had) })
    }
    fn mark_dead<'a>(
        &'a self,
        d: Device,
        t: &'a Target,
    ) -> BoxFuture<'a, Result<bool, StoreFailed>> {
        let mut targets = self.targets.lock().expect("not poisoned");
        let marked = match targets.get_mut(&d) {
            Some((current, dead)) if current == t && !*dead => {
                *dead = true;
                true
            }
            _ => false,
        };
        Box::pin(async move { Ok(marked) })
    }
}

const BOB: Device = Device {
    user: 2,
    device: 20,
};
const CAROL: Device = Device {
    user: 3,
    device: 30,
};
const DAN: Device = Device {
    user: 4,
    device: 40,
};
const FIRST: Device = Device {
    user: 9,
    device: 90,
};

fn config() -> PushConfig {
    PushConfig {
        window: Duration::from_secs(60),
        delay: Duration::from_secs(30),
        capacity: 100,
        concurrency: 4,
        timeout: Duration::from_secs(5),
    }
}

/// A pusher running on `service` and `store`; stops when the handle drops.
struct Running {
    pusher: Pusher,
    _stop: tokio::sync::oneshot::Sender<()>,
}

fn start(config: PushConfig, service: &Arc<Service>, store: &Arc<Store>) -> Running {
    let pusher = Pusher::new(config, PushMetrics::default());
    let (stop_tx, stop) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(
        pusher
            .clone()
            .run(service.clone(), store.clone(), async move {
                let _ = stop.await;
            }),
    );
    Running {
        pusher,
        _stop: stop_tx,
    }
}

/// Lets the pusher's tasks run until nothing is runnable (time paused:
/// no timer fires unless advanced).
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_burst_makes_one_push_per_window() {
    let (service, store) = (Arc::new(Service::default()), Arc::new(Store::with(&[BOB])));
    let run = start(config(), &service, &store);
    for _ in 0..50 {
        run.pusher.missed(BOB);
    }
    settle().await;
    assert_eq!(service.published(), [BOB]);
    assert_eq!(run.pusher.metrics().coalesced.get(), 49);
    // Still offline, within the window: absorbed.
    tokio::time::advance(Duration::from_secs(59)).await;
    run.pusher.missed(BOB);
    settle().await;
    assert_eq!(service.published().len(), 1);
    // The window is over: the next one pushes again.
    tokio::time::advance(Duration::from_secs(2)).await;
    settle().await;
    run.pusher.missed(BOB);
    settle().await;
    assert_eq!(service.published(), [BOB, BOB]);
    assert_eq!(run.pusher.metrics().sent.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn connecting_starts_the_window_afresh() {
    let (service, store) = (Arc::new(Service::default()), Arc::new(Store::with(&[BOB])));
    let run = start(config(), &service, &store);
    run.pusher.missed(BOB);
    settle().await;
    // The phone wakes, drains, leaves with nothing queued; a message a
    // moment later is pushed although the window is not over.
    run.pusher.connected(BOB);
    tokio::time::advance(Duration::from_secs(5)).await;
    run.pusher.missed(BOB);
    settle().await;
    assert_eq!(service.published(), [BOB, BOB]);
}

#[tokio::test(start_paused = true)]
async fn a_session_left_unacknowledged_pushes_after_the_delay_unless_it_reconnects() {
    let (service, store) = (
        Arc::new(Service::default()),
        Arc::new(Store::with(&[BOB, CAROL])),
    );
    let run = start(config(), &service, &store);
    run.pusher.disconnected(BOB);
    run.pusher.disconnected(CAROL);
    settle().await;
    tokio::time::advance(Duration::from_secs(29)).await;
    settle().await;
    assert!(service.published().is_empty(), "not before the delay");
    run.pusher.connected(CAROL);
    // Something missed meanwhile is absorbed by the pending push.
    run.pusher.missed(BOB);
    tokio::time::advance(Duration::from_secs(2)).await;
    settle().await;
    assert_eq!(service.published(), [BOB], "Carol reconnected first");
    assert_eq!(run.pusher.metrics().cancelled.get(), 1);
    assert_eq!(run.pusher.metrics().pending.get(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_drops_the_oldest_pending_push() {
    let (service, store) = (
        Arc::new(Service {
            hang: true,
            ..Service::default()
        }),
        Arc::new(Store::with(&[FIRST, BOB, CAROL, DAN])),
    );
    let run = start(
        PushConfig {
            capacity: 2,
            concurrency: 1,
            ..config()
        },
        &service,
        &store,
    );
    // Someone takes the one publish slot and hangs there.
    run.pusher.missed(FIRST);
    settle().await;
    run.pusher.missed(BOB);
    tokio::time::advance(Duration::from_millis(1)).await;
    run.pusher.missed(CAROL);
    run.pusher.missed(CAROL);
    tokio::time::advance(Duration::from_millis(1)).await;
    run.pusher.missed(DAN);
    let metrics = run.pusher.metrics();
    assert_eq!(metrics.dropped.get(), 1, "Bob's, the oldest");
    assert_eq!(metrics.coalesced.get(), 1, "Carol's second took no room");
    assert_eq!(metrics.pending.get(), 2);
    let state = run.pusher.lock();
    let pending: Vec<Device> = state.pending.values().copied().collect();
    assert_eq!(pending, [CAROL, DAN]);
}

#[tokio::test(start_paused = true)]
async fn a_hanging_service_times_out_and_frees_its_slot() {
    let service = Arc::new(Service {
        hang: true,
        ..Service::default()
    });
    let store = Arc::new(Store::with(&[BOB, CAROL]));
    let run = start(
        PushConfig {
            concurrency: 1,
            ..config()
        },
        &service,
        &store,
    );
    run.pusher.missed(BOB);
    run.pusher.missed(CAROL);
    for _ in 0..2 {
        settle().await;
        tokio::time::advance(Duration::from_secs(6)).await;
    }
    settle().await;
    let failed = |r| {
        run.pusher
            .metrics()
            .failed
            .get_or_create(&[("reason", r)])
            .get()
    };
    assert_eq!(failed("timeout"), 2, "both tried, one after the other");
}

#[tokio::test(start_paused = true)]
async fn a_disabled_endpoint_kills_the_token_unless_it_was_replaced() {
    let service = Arc::new(Service::default());
    service
        .disabled
        .lock()
        .expect("not poisoned")
        .extend([BOB, CAROL]);
    let store = Arc::new(Store::with(&[BOB, CAROL]));
    let run = start(config(), &service, &store);
    run.pusher.missed(BOB);
    settle().await;
    assert_eq!(run.pusher.metrics().dead_tokens.get(), 1);
    assert!(
        store.targets.lock().expect("not poisoned")[&BOB].1,
        "Bob's token is dead"
    );
    // Bob's next wakeup (after the window) finds no live token.
    tokio::time::advance(Duration::from_secs(61)).await;
    settle().await;
    run.pusher.missed(BOB);
    settle().await;
    assert_eq!(run.pusher.metrics().no_token.get(), 1);
    assert_eq!(service.published(), [BOB]);

    // Carol's token is replaced between the read and the failure: the new
    // one stays live. (Simulated by marking with the old target.)
    let old = target(CAROL, "t1");
    store
        .save(CAROL, &target(CAROL, "t2"))
        .await
        .expect("store");
    assert!(!store.mark_dead(CAROL, &old).await.expect("store"));
    assert!(!store.targets.lock().expect("not poisoned")[&CAROL].1);
}
