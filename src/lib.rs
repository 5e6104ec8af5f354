//! The `parley` server: every part of Parley in one process.
//!
//! [`run`] wires the parts together on already-bound listeners: the
//! [gateway](parley_gateway) where phones hold their sessions, the
//! [memory router](parley_router::MemoryRouter) that queues messages, and the
//! [registration](parley_registration) HTTPS API beside it, sharing one
//! certificate and one account store.
//!
//! Modules:
//! - [`admin`]: metrics, rates, liveness, readiness and backups for operators.
//! - [`backup`]: a consistent backup of a running node.
//! - [`config`]: the typed configuration (flags, environment, file).
//! - [`datadir`]: the data directory: private, and claimed by one server.
//! - [`tls`]: the certificate (given, or generated on first start), reloaded
//!   on `SIGHUP`.
//! - [`https`]: serving the HTTP API over TLS.
//! - [`openapi`]: the HTTP API's OpenAPI document, served at `/v1/openapi.json`.
//! - [`provision`]: accounts in bulk for benchmarks (`parley provision`).
//! - [`stats`]: the operator's live view (`parley stats`).

#![forbid(unsafe_code)]

pub mod admin;
pub mod backup;
pub mod config;
pub mod datadir;
pub mod https;
pub mod openapi;
pub mod provision;
pub mod stats;
pub mod tls;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context as _;
use parley_gateway::Gateway;
use parley_identity::{Authenticator, CachedDirectory, DeviceId, TokenKeys, UserId};
use parley_proto::v1::CloseReason;
use parley_registration::{
    AccountStore, DeviceEvents, OutboxSms, RegistrationState, SmsSender, UnlinkReason,
};
use parley_router::{Device, MemoryRouter, Router};
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::TcpListener;

use admin::{Admin, Metrics};
use datadir::DataDir;
use tokio::sync::watch;

pub use config::Config;
use config::{PushService, SmsConfig};

/// The two listeners of a node.
#[derive(Debug)]
pub struct Listeners {
    /// Phones' TLS + WebSocket sessions.
    pub gateway: TcpListener,
    /// The HTTPS API.
    pub http: TcpListener,
    /// Metrics and health, plain HTTP.
    pub admin: TcpListener,
}

impl Listeners {
    /// Binds the three addresses with a listen backlog large enough for a
    /// burst of reconnecting phones (tokio's default is 1024). A failure
    /// says in words what is wrong and which setting changes it.
    pub fn bind(config: &Config) -> anyhow::Result<Listeners> {
        let listen = |what: &str, addr: std::net::SocketAddr, flag: &str| {
            bind(addr).map_err(|err| anyhow::anyhow!(bind_error(what, addr, flag, &err)))
        };
        Ok(Listeners {
            gateway: listen("phones", config.gateway_addr, "--gateway-addr")?,
            http: listen("the HTTPS API", config.http_addr, "--http-addr")?,
            admin: listen("the admin endpoint", config.admin_addr, "--admin-addr")?,
        })
    }
}

/// Why `addr` cannot be listened on, for a person.
fn bind_error(what: &str, addr: std::net::SocketAddr, flag: &str, err: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match err.kind() {
        ErrorKind::AddrInUse => format!(
            "cannot listen for {what} on {addr}: the address is already in use. Is another \
             parley (or another program) running there? Stop it, or choose another port with {flag}"
        ),
        ErrorKind::PermissionDenied => format!(
            "cannot listen for {what} on {addr}: not allowed (ports below 1024 need privileges); \
             choose another port with {flag}"
        ),
        ErrorKind::AddrNotAvailable => format!(
            "cannot listen for {what} on {addr}: that is not an address of this machine; \
             choose one with {flag} (0.0.0.0 listens on all of them)"
        ),
        _ => format!("cannot listen for {what} on {addr} ({flag}): {err}"),
    }
}

const LISTEN_BACKLOG: u32 = 8192;

/// Users whose device lists the gateway keeps in memory (about 100 bytes
/// each): the active users of a large node.
const DIRECTORY_CACHE_USERS: usize = 1_000_000;

fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// How often linked devices unseen for `--inactive-device-days` are
/// unlinked. The threshold is days; an hour's lag is nothing next to it.
const INACTIVE_SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(60 * 60);

/// Batches of [`parley_registration::api::SWEEP_BATCH`] one sweep runs at
/// most; what is left waits for the next sweep, so one sweep never closes
/// more than this many sessions at once.
const INACTIVE_SWEEP_BATCHES: usize = 20;

/// When registration changes a user's devices: the directory's cache
/// forgets the user first (so that the gateway stops fanning messages out
/// to a removed device, and starts to a linked one), then the router closes
/// the sessions of removed devices and drops or moves their queues.
#[derive(Debug)]
struct DeviceChanges<R> {
    router: R,
    directory: CachedDirectory,
}

impl<R: Router> DeviceChanges<R> {
    /// Removes `device` from the router in a task of its own: the callers
    /// (request handlers, the sweep) must not wait on sessions.
    fn remove(&self, device: Device, reason: CloseReason, successor: Option<Device>) {
        let router = self.router.clone();
        tokio::spawn(async move {
            if let Err(error) = router.remove_device(device, reason, successor).await {
                tracing::error!(
                    %error,
                    user = device.user,
                    device = device.device,
                    "a removed device's queue was not dropped or moved"
                );
            }
        });
    }
}

impl<R: Router> DeviceEvents for DeviceChanges<R> {
    fn device_linked(&self, user: UserId, _device: DeviceId) {
        self.directory.invalidate(user);
    }

    fn device_unlinked(&self, user: UserId, device: DeviceId, _reason: UnlinkReason) {
        self.directory.invalidate(user);
        self.remove(Device::new(user, device), CloseReason::Unlinked, None);
    }

    fn account_reregistered(
        &self,
        user: UserId,
        old_primary: DeviceId,
        old_linked: Vec<DeviceId>,
        new_primary: DeviceId,
    ) {
        self.directory.invalidate(user);
        // The person moved to a new phone: what was queued for the old one
        // goes to it. Linked devices were linked to the old phone; their
        // queues go with them.
        self.remove(
            Device::new(user, old_primary),
            CloseReason::Revoked,
            Some(Device::new(user, new_primary)),
        );
        for device in old_linked {
            self.remove(Device::new(user, device), CloseReason::Revoked, None);
        }
    }
}

/// Every [`INACTIVE_SWEEP_EVERY`] (the first one that long after start, so
/// that devices have had time to reconnect after downtime), unlinks the
/// linked devices not seen for the configured days, until `stop`.
async fn sweep_inactive_devices(registration: RegistrationState, stop: impl Future<Output = ()>) {
    let mut every = tokio::time::interval_at(
        tokio::time::Instant::now() + INACTIVE_SWEEP_EVERY,
        INACTIVE_SWEEP_EVERY,
    );
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = every.tick() => {}
        }
        let unlinked = sweep_once(&registration, parley_registration::store::now_millis()).await;
        if unlinked > 0 {
            tracing::info!(unlinked, "inactive linked devices unlinked");
        }
    }
}

/// One sweep at `now_ms`: batches until one comes back short, at most
/// [`INACTIVE_SWEEP_BATCHES`]. Returns how many devices were unlinked.
async fn sweep_once(registration: &RegistrationState, now_ms: i64) -> usize {
    let mut unlinked = 0;
    for _ in 0..INACTIVE_SWEEP_BATCHES {
        match registration.unlink_inactive(now_ms).await {
            Ok(n) => {
                unlinked += n;
                if n < parley_registration::api::SWEEP_BATCH as usize {
                    break;
                }
            }
            Err(error) => {
                tracing::warn!(%error, "the inactive-device sweep failed; it runs again later");
                break;
            }
        }
    }
    unlinked
}

/// Runs every part of Parley on `listeners` until `shutdown` completes, then
/// drains: sessions are told to reconnect, requests in progress finish.
/// `data_dir` is the claimed data directory, released when this returns.
pub async fn run(
    config: Config,
    data_dir: DataDir,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let data_dir = data_dir.path().to_owned();
    let data_dir = &data_dir;
    let cert_files = tls::files(&config.tls, data_dir).context("TLS certificate")?;
    let certificate = tls::Certificate::load(cert_files).context("TLS certificate")?;
    let tls = tls::server_config(certificate.clone()).context("TLS configuration")?;

    let store = AccountStore::connect(&config.database_url)
        .await
        .context("account database")?;
    let keys = Arc::new(TokenKeys::load_or_generate(&data_dir.join("keys")).context("token keys")?);
    let mut metrics = Metrics::default();
    let router = match config.journal.clone() {
        None => {
            tracing::warn!("durability is memory-only: a crash or restart loses queued messages");
            MemoryRouter::with_metrics(config.router.clone(), metrics.router.clone())
        }
        Some(journal) => {
            let (router_config, router_metrics) = (config.router.clone(), metrics.router.clone());
            let started = std::time::Instant::now();
            // A journal of the one-device release is upgraded in place: its
            // mailboxes were the users', and go to each user's device.
            let devices = if parley_router::journal::needs_upgrade(&journal).context("journal")? {
                store
                    .primary_devices()
                    .await
                    .context("account database, for the journal upgrade")?
            } else {
                std::collections::HashMap::new()
            };
            // Reads the whole journal: blocking, and before any traffic.
            let (router, restored) = tokio::task::spawn_blocking(move || {
                let device_of = |user: UserId| devices.get(&user).copied();
                MemoryRouter::open(router_config, router_metrics, &journal, Some(&device_of))
            })
            .await
            .context("journal replay task")?
            .context("journal")?;
            tracing::info!(
                messages = restored.messages,
                receipts = restored.receipts,
                entries = restored.entries,
                sends = restored.sends,
                upgraded = restored.upgraded.is_some(),
                file_bytes = restored.file_bytes.1,
                compacted_from = restored.file_bytes.0,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "journal replayed"
            );
            router
        }
    };
    // Who is who, cached for the message path; registration invalidates it.
    let directory = CachedDirectory::new(Arc::new(store.clone()), DIRECTORY_CACHE_USERS);
    let sms: Arc<dyn SmsSender> = match &config.sms {
        SmsConfig::Outbox(outbox) => {
            // Created now, so that the file a developer is told to watch
            // exists from the first start, before the first SMS.
            let sms = OutboxSms::create(outbox)
                .with_context(|| format!("cannot create the SMS outbox {}", outbox.display()))?;
            Arc::new(sms)
        }
        SmsConfig::Sns { settings, options } => {
            let client = parley_sns::connect(settings)
                .await
                .context("SMS through SNS (--sms sns)")?;
            let sms_metrics = parley_sns::SmsMetrics::default();
            metrics.add_sns(&sms_metrics);
            tracing::info!("registration codes are sent as SMS through SNS");
            Arc::new(parley_sns::SnsSms::new(
                client,
                options.clone(),
                sms_metrics,
            ))
        }
    };
    // Push: the service, the registrar of tokens (HTTP and sessions), and
    // the pusher the router reports to.
    let push_service: Option<Arc<dyn parley_push::PushService>> = match &config.push.service {
        PushService::Off => None,
        PushService::Outbox(outbox) => Some(Arc::new(parley_push::OutboxPush::new(outbox))),
        PushService::Sns { settings, apps } => {
            let client = parley_sns::connect(settings)
                .await
                .context("push notifications through SNS (--push sns)")?;
            tracing::info!("push notifications go through SNS mobile push");
            Some(Arc::new(parley_sns::SnsPush::new(client, apps.clone())))
        }
    };
    let push_metrics = parley_push::PushMetrics::default();
    metrics.add_push(&push_metrics);
    let registrar = parley_push::Registrar::new(
        push_service
            .clone()
            .unwrap_or_else(|| Arc::new(parley_push::NoPush)),
        Arc::new(store.clone()),
        push_metrics.clone(),
        config
            .push
            .policy
            .timeout
            .min(config.registration.request_timeout / 2),
    );
    let pusher = push_service.map(|service| {
        let pusher = parley_push::Pusher::new(config.push.policy.clone(), push_metrics.clone());
        router.set_wakeups(Arc::new(pusher.clone()));
        (pusher, service)
    });
    let registration = RegistrationState::new(
        store.clone(),
        keys.clone(),
        sms,
        Arc::new(DeviceChanges {
            router: router.clone(),
            directory: directory.clone(),
        }),
        config.registration.clone(),
    )
    .with_push(registrar.clone());
    let registration_metrics = registration.metrics().clone();
    let sweeper = registration.clone();
    metrics.add_registration(&registration_metrics);
    // One checker of device credentials for the gateway and the media
    // routes (registration's state holds its own, over the same keys).
    let authenticator = Authenticator::new(keys.clone(), store.clone());
    // Media: the storage, the service, and its routes beside registration's.
    let storage = match &config.media.store {
        config::MediaStore::Local(dir) => parley_media::Storage::local(dir)
            .with_context(|| format!("media directory {}", dir.display()))?,
        config::MediaStore::S3(settings) => parley_media::Storage::s3(settings)
            .with_context(|| format!("media in S3 bucket {:?}", settings.bucket))?,
    };
    let media_metrics = parley_media::MediaMetrics::default();
    metrics.add_media(&media_metrics);
    let media = parley_media::Media::new(storage, config.media.config.clone(), media_metrics);
    let metrics = Arc::new(metrics);
    let media_routes = parley_media::router(parley_media::MediaState {
        media: media.clone(),
        authenticator: authenticator.clone(),
    });
    let app = parley_registration::router(registration)
        .merge(media_routes)
        .merge(openapi::router())
        .route_layer(axum::middleware::from_fn_with_state(
            metrics.http.clone(),
            admin::count_requests,
        ));
    let store_for_backups = store.clone();
    let gateway = Gateway::new(
        router.clone(),
        authenticator,
        directory,
        config.gateway.clone(),
        metrics.gateway.clone(),
    )
    .with_push(registrar);
    let ready = Arc::new(AtomicBool::new(false));
    let backups = backup::Backups {
        router: router.clone(),
        store: store_for_backups,
        data_dir: data_dir.clone(),
        dir: config.backup_dir.clone(),
        generated_tls: matches!(config.tls, config::TlsSource::SelfSigned { .. }),
        running: Arc::default(),
    };
    let admin_app = admin::app(Admin {
        metrics: metrics.clone(),
        ready: ready.clone(),
        backups: Some(backups),
    });

    let gateway_addr = listeners.gateway.local_addr()?;
    let http_addr = listeners.http.local_addr()?;
    let admin_addr = listeners.admin.local_addr()?;
    tracing::info!(
        gateway = %format!("wss://{gateway_addr}/v1/ws"),
        http = %format!("https://{http_addr}"),
        admin = %format!("http://{admin_addr}/metrics"),
        cert = %certificate.files().cert.display(),
        outbox = %match &config.sms {
            SmsConfig::Outbox(outbox) => outbox.display().to_string(),
            SmsConfig::Sns { .. } => "none (SMS go through SNS)".to_owned(),
        },
        "parley is serving"
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let limits = https::HttpsLimits {
        handshake_timeout: config.gateway.handshake_timeout,
        shutdown_grace: config.shutdown_grace,
    };
    let gateway_task =
        tokio::spawn(gateway.serve(listeners.gateway, tls.clone(), stopped(stop_rx.clone())));
    let http_task = tokio::spawn(https::serve(
        listeners.http,
        tls,
        app,
        limits,
        stopped(stop_rx.clone()),
    ));
    let reload_task = tokio::spawn(reload_on_hangup(certificate, stopped(stop_rx.clone())));
    let sweep_task = tokio::spawn(sweep_inactive_devices(sweeper, stopped(stop_rx.clone())));
    let media_sweep_task = tokio::spawn(parley_media::sweep(media, stopped(stop_rx.clone())));
    let push_task = pusher.map(|(pusher, service)| {
        tokio::spawn(pusher.run(service, Arc::new(store.clone()), stopped(stop_rx.clone())))
    });
    let tick_task = tokio::spawn(admin::tick(
        metrics,
        registration_metrics,
        router.clone(),
        stop_rx.clone(),
    ));
    // The admin listener outlives the drain, so the node can be watched
    // while it empties; it stops last.
    let (admin_stop_tx, admin_stop_rx) = watch::channel(false);
    let admin_task = tokio::spawn(async move {
        axum::serve(listeners.admin, admin_app)
            .with_graceful_shutdown(stopped(admin_stop_rx))
            .await
    });
    ready.store(true, Ordering::Relaxed);
    // A stable line on stdout for scripts and tests to wait for, once every
    // listener is served and the node reports ready. The pid is also in
    // <data-dir>/parley.pid.
    println!(
        "parley ready pid={} gateway={gateway_addr} http={http_addr} admin={admin_addr}",
        std::process::id()
    );

    shutdown.await;
    tracing::info!("shutting down");
    ready.store(false, Ordering::Relaxed);
    let _ = stop_tx.send(true);
    let (gateway, http, tick, reload, sweep) =
        tokio::join!(gateway_task, http_task, tick_task, reload_task, sweep_task);
    gateway.context("gateway task")?;
    http.context("https task")?;
    tick.context("metrics task")?;
    reload.context("certificate reload task")?;
    sweep.context("inactive-device sweep task")?;
    media_sweep_task.await.context("media sweep task")?;
    if let Some(push) = push_task {
        push.await.context("push task")?;
    }
    // Sessions are closed: whatever they changed is written before exit.
    router.flush().await;
    drop(router);
    let _ = admin_stop_tx.send(true);
    admin_task
        .await
        .context("admin task")?
        .context("admin listener")?;
    tracing::info!("stopped");
    Ok(())
}

/// Reads the TLS certificate and key again on every `SIGHUP`, until `stop`.
/// New connections get the new pair; live sessions keep theirs; a pair that
/// does not load is refused and the current one stays.
async fn reload_on_hangup(certificate: Arc<tls::Certificate>, stop: impl Future<Output = ()>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(hangups) => hangups,
            Err(error) => {
                tracing::warn!(%error, "cannot watch SIGHUP: the certificate reloads only on restart");
                return;
            }
        };
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => return,
                _ = hangups.recv() => {}
            }
            let cert = certificate.files().cert.display().to_string();
            match certificate.reload() {
                Ok(()) => {
                    tracing::info!(%cert, "SIGHUP: TLS certificate reloaded; new connections use it")
                }
                Err(error) => tracing::error!(
                    %cert, %error,
                    "SIGHUP: TLS certificate NOT reloaded; the current one stays in use"
                ),
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (certificate, stop.await);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parley_registration::store::{LinkPolicy, Redemption};
    use parley_registration::{IgnoreDeviceEvents, RegistrationConfig};

    #[tokio::test]
    async fn a_sweep_unlinks_linked_devices_unseen_for_the_configured_days() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("parley.db").display()
        );
        let store = AccountStore::connect(&url).await.expect("store");
        let keys = Arc::new(TokenKeys::load_or_generate(&dir.path().join("keys")).expect("keys"));
        let registration = RegistrationState::new(
            store.clone(),
            keys,
            Arc::new(OutboxSms::new(dir.path().join("outbox.jsonl"))),
            Arc::new(IgnoreDeviceEvents),
            RegistrationConfig {
                inactive_after: std::time::Duration::from_secs(7 * 24 * 3600),
                ..RegistrationConfig::default()
            },
        );
        let now = parley_registration::store::now_millis();
        let account = store
            .provision_many(&["+15550001111".to_owned()], now)
            .await
            .expect("account")
            .remove(0);
        let policy = LinkPolicy {
            ttl: std::time::Duration::from_secs(600),
            max_attempts: 3,
            max_devices: 5,
        };
        let secret = [1u8; 32];
        store
            .create_link_code(
                account.user,
                account.device,
                "AAAAAAAA",
                &secret,
                now,
                &policy,
            )
            .await
            .expect("code");
        let Redemption::Linked(_) = store
            .redeem_link_code("AAAAAAAA", &secret, "Laptop", now, 5)
            .await
            .expect("link")
        else {
            panic!("not linked");
        };
        const DAY: i64 = 24 * 3600 * 1000;
        assert_eq!(sweep_once(&registration, now + 6 * DAY).await, 0);
        assert_eq!(sweep_once(&registration, now + 8 * DAY).await, 1);
        assert_eq!(
            store.device_ids(account.user).await.expect("ids"),
            [account.device]
        );
        assert_eq!(sweep_once(&registration, now + 8 * DAY).await, 0);
    }
}
