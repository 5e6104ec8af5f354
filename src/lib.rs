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
//! - [`provision`]: accounts in bulk for benchmarks (`parley provision`).
//! - [`stats`]: the operator's live view (`parley stats`).

#![forbid(unsafe_code)]

pub mod admin;
pub mod backup;
pub mod config;
pub mod datadir;
pub mod https;
pub mod provision;
pub mod stats;
pub mod tls;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context as _;
use parley_gateway::Gateway;
use parley_identity::{Authenticator, CachedDirectory, DeviceId, TokenKeys, UserId};
use parley_registration::{AccountStore, DeviceEvents, OutboxSms, RegistrationState};
use parley_router::{Device, MemoryRouter, Router};
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::TcpListener;

use admin::{Admin, Metrics};
use datadir::DataDir;
use tokio::sync::watch;

pub use config::Config;

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

/// When registration changes a user's devices: the directory's cache
/// forgets them, and the live session of a replaced device is closed.
#[derive(Debug)]
struct DeviceChanges<R> {
    router: R,
    directory: CachedDirectory,
}

impl<R: Router> DeviceEvents for DeviceChanges<R> {
    fn device_replaced(&self, user: UserId, old_device: DeviceId) {
        self.directory.invalidate(user);
        let router = self.router.clone();
        // Called from a request handler that must not wait on sessions.
        tokio::spawn(async move {
            router
                .revoke(Device {
                    user,
                    device: old_device,
                })
                .await;
        });
    }
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
            // Reads the whole journal: blocking, and before any traffic.
            let (router, restored) = tokio::task::spawn_blocking(move || {
                MemoryRouter::open(router_config, router_metrics, &journal)
            })
            .await
            .context("journal replay task")?
            .context("journal")?;
            tracing::info!(
                messages = restored.messages,
                receipts = restored.receipts,
                sends = restored.sends,
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
    // Created now, so that the file a developer is told to watch exists
    // from the first start, before the first SMS.
    let outbox = data_dir.join("outbox.jsonl");
    let sms = OutboxSms::create(&outbox)
        .with_context(|| format!("cannot create the SMS outbox {}", outbox.display()))?;
    let registration = RegistrationState::new(
        store.clone(),
        keys.clone(),
        Arc::new(sms),
        Arc::new(DeviceChanges {
            router: router.clone(),
            directory: directory.clone(),
        }),
        config.registration.clone(),
    );
    let registration_metrics = registration.metrics().clone();
    metrics.add_registration(&registration_metrics);
    let metrics = Arc::new(metrics);
    let app = parley_registration::router(registration).route_layer(
        axum::middleware::from_fn_with_state(metrics.http.clone(), admin::count_requests),
    );
    let store_for_backups = store.clone();
    let gateway = Gateway::new(
        router.clone(),
        Authenticator::new(keys, store.clone()),
        directory,
        config.gateway.clone(),
        metrics.gateway.clone(),
    );
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
        outbox = %outbox.display(),
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
    let (gateway, http, tick, reload) =
        tokio::join!(gateway_task, http_task, tick_task, reload_task);
    gateway.context("gateway task")?;
    http.context("https task")?;
    tick.context("metrics task")?;
    reload.context("certificate reload task")?;
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
