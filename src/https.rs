//! Serves an axum app over HTTPS: one task per connection, the TLS
//! handshake inside that task under a timeout, HTTP/1.1 by hyper, the
//! client's address attached to every request ([`ClientIp`]), and graceful
//! shutdown that lets requests in progress finish.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use parley_registration::ClientIp;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::Layer as _;

/// Limits of the HTTPS listener.
#[derive(Clone, Copy, Debug)]
pub struct HttpsLimits {
    /// TLS handshake and request head must arrive within this time.
    pub handshake_timeout: Duration,
    /// How long shutdown waits for requests in progress.
    pub shutdown_grace: Duration,
}

pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: axum::Router,
    limits: HttpsLimits,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "https accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(err)) => {
                        tracing::debug!(%peer, error = %err, "https tls handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "https tls handshake timed out");
                        return;
                    }
                };
            // The client's address goes with every request of the
            // connection, for registration's per-address limits. It is the
            // TCP peer: behind a load balancer, one that preserves client
            // addresses (as AWS NLB does for instance targets).
            let service = axum::Extension(ClientIp(peer.ip())).layer(app);
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                // Slowloris: the request head must arrive in time.
                .header_read_timeout(limits.handshake_timeout)
                .serve_connection(TokioIo::new(tls), TowerToHyperService::new(service));
            if let Err(err) = watcher.watch(connection).await {
                tracing::debug!(%peer, error = %err, "https connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("https requests still running after the shutdown grace period");
    }
}
