//! The pending pushes and the workers that send them.
//!
//! Each device has at most one slot:
//! - **pending**, due at some instant: a push will be sent then. A device
//!   that misses something gets one due now; a session that ends with
//!   entries still queued gets one due after [`PushConfig::delay`] (the
//!   phone is likely to reconnect by itself: a network change, the app
//!   briefly in the background).
//! - **cooling**, until an instant: a push was sent; whatever the device
//!   misses before then is absorbed (counted as coalesced), so a burst of
//!   messages makes one push per [`PushConfig::window`].
//!
//! A device that connects loses its slot: a pending push is cancelled, and
//! the window starts afresh (the phone has drained; the next thing it
//! misses after leaving again deserves a push). Something missed while a
//! push is pending is absorbed by it (coalesced), due time unchanged.
//!
//! The queue is bounded: at most [`PushConfig::capacity`] devices pending.
//! Overflow policy, *drop-oldest*: a new pending push over the bound drops
//! the pending push due first (counted in `parley_push_dropped_total`);
//! its device's messages stay queued and reach it when it connects, and
//! the next thing it misses pushes again. A second wakeup of a device
//! already pending never takes room (it is coalesced).
//!
//! The router reports wakeups with a mailbox locked, so recording one is a
//! few map operations under one mutex, never I/O. Sending is the workers':
//! at most [`PushConfig::concurrency`] publishes at once, each bounded by
//! [`PushConfig::timeout`]. A slow or failing push service fills the
//! queue (then drops, counted) and the failure counters; it never slows
//! the router, which does not wait for anything here.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

use crate::{Device, PushError, PushMetrics, PushService, PushStore};

/// Tunables of the pusher. `Default` is the production policy.
#[derive(Clone, Debug)]
pub struct PushConfig {
    /// At most one push per device per window while it stays offline
    /// (60 s).
    pub window: Duration,
    /// After a session ends with entries unacknowledged, how long to wait
    /// for the device to reconnect before pushing (60 s).
    pub delay: Duration,
    /// Devices with a push pending, at most (100,000); past it the oldest
    /// pending push is dropped.
    pub capacity: usize,
    /// Publishes in flight at once (32).
    pub concurrency: usize,
    /// Time for one push's target read, and for its publish (5 s each).
    pub timeout: Duration,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(60),
            delay: Duration::from_secs(60),
            capacity: 100_000,
            concurrency: 32,
            timeout: Duration::from_secs(5),
        }
    }
}

/// A device's slot.
#[derive(Clone, Copy, Debug)]
enum Slot {
    /// Due at `key.0`; `key` is its place in [`State::pending`].
    Pending { key: (Instant, u64) },
    /// A push went at most a window ago; `seq` tells this cooling apart
    /// from a later one of the same device in [`State::cooling`].
    Cooling { until: Instant, seq: u64 },
}

#[derive(Debug, Default)]
struct State {
    slots: HashMap<Device, Slot>,
    /// Pending pushes by due time (then arrival): the first is the next to
    /// send, and the one dropped on overflow.
    pending: BTreeMap<(Instant, u64), Device>,
    /// Cooling slots in the order they end (a constant window after each
    /// send, so in the order of the sends). An entry whose device has
    /// connected (or cooled again) since is skipped by its `seq`.
    cooling: VecDeque<(Instant, Device, u64)>,
    /// Tells slots apart; never repeats.
    seq: u64,
}

impl State {
    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }
}

/// What a wakeup did, for the metrics.
#[derive(Debug, PartialEq, Eq)]
enum Recorded {
    Pending,
    Coalesced,
    /// Pending, and the queue was full: the oldest pending push went.
    PendingDropped,
}

#[derive(Debug)]
struct Shared {
    config: PushConfig,
    state: Mutex<State>,
    /// Woken when a push becomes pending (it may be due before the
    /// worker's next deadline).
    wake: Notify,
    metrics: PushMetrics,
    /// When a push failure was last logged (ms since `started`): failures
    /// are logged at most once per [`FAILURE_LOG_EVERY`], with a count.
    failure_logged_ms: AtomicU64,
    failures_unlogged: AtomicU64,
    started: Instant,
}

/// How often a run of push failures is logged at most.
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(10);

/// A cheap clonable handle: the router's [`parley_router::Wakeups`] and the
/// owner of the workers ([`Pusher::run`]).
#[derive(Clone, Debug)]
pub struct Pusher {
    shared: Arc<Shared>,
}

impl Pusher {
    pub fn new(config: PushConfig, metrics: PushMetrics) -> Self {
        Self {
            shared: Arc::new(Shared {
                config,
                state: Mutex::default(),
                wake: Notify::new(),
                metrics,
                failure_logged_ms: AtomicU64::new(0),
                failures_unlogged: AtomicU64::new(0),
                started: Instant::now(),
            }),
        }
    }

    pub fn metrics(&self) -> &PushMetrics {
        &self.shared.metrics
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every step leaves the state consistent; a panic in one must not
        // stop every push after it.
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Records that `device` should be pushed at `due`, unless a slot
    /// absorbs it.
    fn record(&self, device: Device, due: Instant, now: Instant) -> Recorded {
        self.shared.metrics.wakeups.inc();
        let mut state = self.lock();
        match state.slots.get(&device) {
            Some(Slot::Pending { .. }) => return Recorded::Coalesced,
            Some(Slot::Cooling { until, .. }) if *until > now => return Recorded::Coalesced,
            _ => {}
        }
        let mut recorded = Recorded::Pending;
        if state.pending.len() >= self.shared.config.capacity.max(1)
            && let Some((_, oldest)) = state.pending.pop_first()
        {
            state.slots.remove(&oldest);
            recorded = Recorded::PendingDropped;
        }
        let key = (due, state.next_seq());
        state.pending.insert(key, device);
        state.slots.insert(device, Slot::Pending { key });
        self.shared.metrics.pending.set(state.pending.len() as i64);
        recorded
    }

    fn count(&self, recorded: Recorded) {
        let metrics = &self.shared.metrics;
        match recorded {
            Recorded::Coalesced => {
                metrics.coalesced.inc();
            }
            Recorded::Pending => self.shared.wake.notify_one(),
            Recorded::PendingDropped => {
                metrics.dropped.inc();
                self.shared.wake.notify_one();
            }
        }
    }

    /// Takes the first pending push if it is due at `now`, making the
    /// device's slot cooling; else says when the next thing is due. Also
    /// ends the cooling slots whose window is over.
    fn take_due(&self, now: Instant) -> Result<Device, Option<Instant>> {
        let mut state = self.lock();
        while let Some(&(until, device, seq)) = state.cooling.front() {
            if until > now {
                break;
            }
            state.cooling.pop_front();
            if let Some(Slot::Cooling { seq: current, .. }) = state.slots.get(&device)
                && *current == seq
            {
                state.slots.remove(&device);
            }
        }
        let first = state.pending.first_key_value().map(|(key, _)| key.0);
        match first {
            Some(due) if due <= now => {
                let (_, device) = state.pending.pop_first().expect("a first entry");
                let seq = state.next_seq();
                let until = now + self.shared.config.window;
                state.slots.insert(device, Slot::Cooling { until, seq });
                state.cooling.push_back((until, device, seq));
                self.shared.metrics.pending.set(state.pending.len() as i64);
                Ok(device)
            }
            _ => {
                let cooling = state.cooling.front().map(|c| c.0);
                Err(match (first, cooling) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                })
            }
        }
    }

    /// Sends pushes through `service`, reading targets from `store`, until
    /// `stop` completes. Pushes still pending then are not sent (their
    /// messages stay queued for the devices).
    pub async fn run(
        self,
        service: Arc<dyn PushService>,
        store: Arc<dyn PushStore>,
        stop: impl std::future::Future<Output = ()>,
    ) {
        let permits = Arc::new(Semaphore::new(self.shared.config.concurrency.max(1)));
        let mut tasks = tokio::task::JoinSet::new();
        tokio::pin!(stop);
        loop {
            // A free publish slot first: while all are busy, pushes stay
            // pending, where they are coalesced, cancelled or dropped.
            let permit = tokio::select! {
                () = &mut stop => break,
                permit = permits.clone().acquire_owned() => permit.expect("never closed"),
            };
            while tasks.try_join_next().is_some() {}
            match self.take_due(Instant::now()) {
                Ok(device) => {
                    let (pusher, service, store) =
                        (self.clone(), Arc::clone(&service), Arc::clone(&store));
                    tasks.spawn(async move {
                        pusher.push(&*service, &*store, device).await;
                        drop(permit);
                    });
                }
                Err(next) => {
                    drop(permit);
                    let sleep = async {
                        match next {
                            Some(at) => tokio::time::sleep_until(at).await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        () = &mut stop => break,
                        () = self.shared.wake.notified() => {}
                        () = sleep => {}
                    }
                }
            }
        }
        // Publishes in flight are bounded by the timeout; let them finish.
        while tasks.join_next().await.is_some() {}
    }

    /// One push to `device`: its target, then the publish.
    async fn push(&self, service: &dyn PushService, store: &dyn PushStore, device: Device) {
        let metrics = &self.shared.metrics;
        let timeout = self.shared.config.timeout;
        let target = match tokio::time::timeout(timeout, store.target(device)).await {
            Ok(Ok(Some(target))) => target,
            Ok(Ok(None)) => {
                metrics.no_token.inc();
                return;
            }
            Ok(Err(error)) => return self.failed("store", &error.to_string()),
            Err(_) => return self.failed("timeout", "reading the push target"),
        };
        let started = Instant::now();
        let published = tokio::time::timeout(timeout, service.publish(device, &target)).await;
        metrics
            .publish_seconds
            .observe(started.elapsed().as_secs_f64());
        match published {
            Ok(Ok(())) => {
                metrics.sent.inc();
            }
            Ok(Err(PushError::Disabled)) => {
                metrics.failed("disabled");
                match store.mark_dead(device, &target).await {
                    Ok(true) => {
                        metrics.dead_tokens.inc();
                        tracing::info!(
                            user = device.user,
                            device = device.device,
                            platform = %target.platform,
                            "push endpoint disabled (app uninstalled or token expired): token marked dead"
                        );
                    }
                    // Replaced since: the new token is not dead.
                    Ok(false) => {}
                    Err(error) => self.failed("store", &error.to_string()),
                }
            }
            Ok(Err(PushError::Failed { reason, detail })) => self.failed(reason, &detail),
            Ok(Err(other)) => self.failed("rejected", &other.to_string()),
            Err(_) => self.failed("timeout", "no answer from the push service in time"),
        }
    }

    /// Counts a failure, and logs it unless one was logged lately (then
    /// the next log line says how many went unlogged).
    fn failed(&self, reason: &'static str, detail: &str) {
        let shared = &self.shared;
        shared.metrics.failed(reason);
        let now_ms = shared.started.elapsed().as_millis() as u64;
        let last = shared.failure_logged_ms.load(Ordering::Relaxed);
        let every = FAILURE_LOG_EVERY.as_millis() as u64;
        if (last == 0 || now_ms.saturating_sub(last) >= every)
            && shared
                .failure_logged_ms
                .compare_exchange(last, now_ms.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let unlogged = shared.failures_unlogged.swap(0, Ordering::Relaxed);
            tracing::warn!(
                reason,
                detail,
                failures_since_last_log = unlogged,
                "push failed; message delivery is not affected (the device gets its messages when it connects)"
            );
        } else {
            shared.failures_unlogged.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl parley_router::Wakeups for Pusher {
    fn missed(&self, device: Device) {
        let now = Instant::now();
        let recorded = self.record(device, now, now);
        self.count(recorded);
    }

    fn connected(&self, device: Device) {
        let mut state = self.lock();
        if let Some(Slot::Pending { key }) = state.slots.remove(&device) {
            state.pending.remove(&key);
            self.shared.metrics.pending.set(state.pending.len() as i64);
            drop(state);
            self.shared.metrics.cancelled.inc();
        }
    }

    fn disconnected(&self, device: Device) {
        let now = Instant::now();
        let recorded = self.record(device, now + self.shared.config.delay, now);
        self.count(recorded);
    }
}

#[cfg(test)]
mod tests;
