//! The operator's view of a running node: Prometheus metrics, decaying
//! rates, liveness and readiness, on a plain-HTTP admin listener kept apart
//! from the phones' listeners (loopback by default).
//!
//! - `GET /metrics`: every metric family in the Prometheus text format.
//! - `GET /healthz`: 200 while the process runs.
//! - `GET /readyz`: 200 while accepting; 503 while starting or draining, so
//!   a load balancer stops sending phones before the node goes away.
//! - `POST /admin/backup`: a backup of the running node ([`crate::backup`]);
//!   200 with what it holds, 409 while another runs, 500 if it failed.
//!
//! Every family is registered once here, at start-up, and handed down to
//! the part that updates it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use parley_gateway::GatewayMetrics;
use parley_registration::RegistrationMetrics;
use parley_router::{MemoryRouter, Router, RouterMetrics};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// The decaying windows of the rates, in seconds (like a load average: a
/// window is how long a change takes to show about two thirds of its size).
pub const RATE_WINDOWS: [(&str, f64); 3] = [("1s", 1.0), ("10s", 10.0), ("100s", 100.0)];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
    pub status: u16,
}

/// HTTP API requests, by route and status.
#[derive(Clone, Debug)]
pub struct HttpMetrics {
    pub requests: Family<RouteLabels, Counter>,
    pub duration_seconds: Family<RouteLabels, Histogram>,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            duration_seconds: Family::new_with_constructor(|| {
                Histogram::new([
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
                ])
            }),
        }
    }
}

/// Counts one HTTP request. A `route_layer`, so the route is the matched
/// pattern (bounded), never the raw path.
pub async fn count_requests(
    State(metrics): State<HttpMetrics>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let started = Instant::now();
    let response = next.run(request).await;
    let labels = RouteLabels {
        route,
        status: response.status().as_u16(),
    };
    metrics.requests.get_or_create(&labels).inc();
    metrics
        .duration_seconds
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    response
}

type RateLabels = [(&'static str, &'static str); 2];

/// Every metric of a node, and the registry that exports them.
#[derive(Debug)]
pub struct Metrics {
    pub gateway: GatewayMetrics,
    pub router: RouterMetrics,
    pub http: HttpMetrics,
    /// Decaying per-second rates of the key counters.
    rates: Family<RateLabels, Gauge<f64, AtomicU64>>,
    registry: Registry,
}

impl Default for Metrics {
    /// Registers the gateway's, the router's and the HTTP API's families;
    /// registration's state owns its own, added with [`Metrics::add_registration`].
    fn default() -> Metrics {
        let gateway = GatewayMetrics::default();
        let router = RouterMetrics::default();
        let http = HttpMetrics::default();
        let rates = Family::<RateLabels, Gauge<f64, AtomicU64>>::default();
        for counter in RATED {
            for (window, _) in RATE_WINDOWS {
                let _ = rates.get_or_create(&[("counter", counter), ("window", window)]);
            }
        }
        let mut registry = Registry::with_prefix("parley");
        gateway.register(registry.sub_registry_with_prefix("gateway"));
        router.register(registry.sub_registry_with_prefix("router"));
        let http_registry = registry.sub_registry_with_prefix("http");
        http_registry.register("requests", "HTTP API requests", http.requests.clone());
        http_registry.register_with_unit(
            "request_duration",
            "HTTP API request durations",
            Unit::Seconds,
            http.duration_seconds.clone(),
        );
        registry.register(
            "rate_per_second",
            "Decaying average per second of a key counter over a window",
            rates.clone(),
        );
        Metrics {
            gateway,
            router,
            http,
            rates,
            registry,
        }
    }
}

/// The counters that get rates, by the name `parley stats` shows.
const RATED: [&str; 9] = [
    "logins",
    "messages_accepted",
    "messages_delivered",
    "receipts_acknowledged",
    "frames_in",
    "frames_out",
    "bytes_in",
    "bytes_out",
    "codes_sent",
];

impl Metrics {
    /// Registers registration's families (once, at start-up), and makes
    /// every `(route, status)` series of the HTTP API exist from the start
    /// (at 0), with a latency histogram for each route's success.
    /// The SMS sender's metrics, under `parley_sns_`.
    pub fn add_sns(&mut self, sms: &parley_sns::SmsMetrics) {
        sms.register(self.registry.sub_registry_with_prefix("sns"));
    }

    pub fn add_push(&mut self, push: &parley_push::PushMetrics) {
        push.register(self.registry.sub_registry_with_prefix("push"));
    }

    /// The media service's families, and its routes' series (as
    /// [`Metrics::add_registration`] does for registration's).
    pub fn add_media(&mut self, media: &parley_media::MediaMetrics) {
        media.register(self.registry.sub_registry_with_prefix("media"));
        self.add_routes(&parley_media::ROUTES);
    }

    pub fn add_registration(&mut self, registration: &RegistrationMetrics) {
        registration.register(self.registry.sub_registry_with_prefix("registration"));
        self.add_routes(&parley_registration::api::ROUTES);
    }

    /// Makes every `(route, status)` series of `routes` (method, path,
    /// statuses) exist (at 0), with a latency histogram for each
    /// operation's first (success) status.
    fn add_routes(&mut self, routes: &[(&str, &str, &[u16])]) {
        for (_method, route, statuses) in routes {
            for (at, &status) in statuses.iter().enumerate() {
                let labels = RouteLabels {
                    route: (*route).to_owned(),
                    status,
                };
                let _ = self.http.requests.get_or_create(&labels);
                if at == 0 {
                    let _ = self.http.duration_seconds.get_or_create(&labels);
                }
            }
        }
    }

    /// The Prometheus text exposition of every family.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The counters that get rates, in the order of [`RATED`].
    fn rated(&self, registration: &RegistrationMetrics) -> Vec<(&'static str, Counter)> {
        let counters = [
            self.gateway.logins.clone(),
            self.router.messages_accepted.clone(),
            self.router.messages_delivered.clone(),
            self.router.receipts_acknowledged.clone(),
            self.gateway.frames_in.clone(),
            self.gateway.frames_out.clone(),
            self.gateway.bytes_in.clone(),
            self.gateway.bytes_out.clone(),
            registration.codes_sent.clone(),
        ];
        RATED.into_iter().zip(counters).collect()
    }
}

/// How often (in one-second ticks) undelivered entries past the TTL are
/// deleted. The TTL is days; a sweep looks at the front of every mailbox.
const EXPIRY_EVERY_TICKS: u64 = 10;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Once a second: the router's census (queue depth, deepest mailbox, age
/// of the oldest entry) and the decaying rates; every ten seconds, expiry
/// of undelivered entries past the TTL. Runs until `stop`.
pub async fn tick(
    metrics: Arc<Metrics>,
    registration: RegistrationMetrics,
    router: MemoryRouter,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let rated = metrics.rated(&registration);
    let mut last: Vec<u64> = rated.iter().map(|(_, c)| c.get()).collect();
    let mut averages = vec![[0.0f64; RATE_WINDOWS.len()]; rated.len()];
    let mut ticks = 0u64;
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let started = std::time::Instant::now();
        router.census().await;
        ticks += 1;
        if ticks.is_multiple_of(EXPIRY_EVERY_TICKS) {
            router.expire(now_ms()).await;
        }
        let took = started.elapsed();
        if took >= Duration::from_millis(20) {
            tracing::warn!(
                elapsed_ms = took.as_millis() as u64,
                "slow census or expiry sweep (they hold the mailbox locks)"
            );
        }
        for (i, (name, counter)) in rated.iter().enumerate() {
            let now = counter.get();
            let delta = now.saturating_sub(last[i]) as f64;
            last[i] = now;
            for (w, (window, seconds)) in RATE_WINDOWS.iter().enumerate() {
                let average = &mut averages[i][w];
                *average += (delta - *average) * (1.0 - (-1.0 / seconds).exp());
                metrics
                    .rates
                    .get_or_create(&[("counter", name), ("window", window)])
                    .set(*average);
            }
        }
    }
}

/// State of the admin routes.
#[derive(Clone, Debug)]
pub struct Admin {
    pub metrics: Arc<Metrics>,
    /// True while the node accepts phones.
    pub ready: Arc<AtomicBool>,
    /// `None`: this node takes no backups (tests of the other routes).
    pub backups: Option<crate::backup::Backups>,
}

pub fn app(admin: Admin) -> axum::Router {
    axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/admin/backup", axum::routing::post(backup))
        .with_state(admin)
}

async fn backup(State(admin): State<Admin>) -> Response {
    use crate::backup::BackupError;
    let error = |status: StatusCode, code: &str, message: String| {
        let body = serde_json::json!({"error": {"code": code, "message": message}});
        (status, axum::Json(body)).into_response()
    };
    let Some(backups) = &admin.backups else {
        return error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "this node takes no backups".to_owned(),
        );
    };
    match backups.run().await {
        Ok(report) => (StatusCode::OK, axum::Json(report)).into_response(),
        Err(err @ BackupError::Busy) => {
            error(StatusCode::CONFLICT, "BACKUP_RUNNING", err.to_string())
        }
        Err(err) => {
            tracing::error!(error = %err, "backup failed");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "BACKUP_FAILED",
                err.to_string(),
            )
        }
    }
}

async fn metrics(State(admin): State<Admin>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        admin.metrics.encode(),
    )
}

async fn ready(State(admin): State<Admin>) -> (StatusCode, &'static str) {
    if admin.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt as _;

    #[tokio::test]
    async fn metrics_readiness_and_rates_are_served() {
        let registration = RegistrationMetrics::default();
        let mut metrics = Metrics::default();
        metrics.add_registration(&registration);
        let metrics = Arc::new(metrics);
        let ready = Arc::new(AtomicBool::new(false));
        let app = app(Admin {
            metrics: metrics.clone(),
            ready: ready.clone(),
            backups: None,
        });
        let get = |path: &'static str| {
            let app = app.clone();
            async move {
                let response = app
                    .oneshot(
                        Request::get(path)
                            .body(axum::body::Body::empty())
                            .expect("request"),
                    )
                    .await
                    .expect("response");
                let status = response.status();
                let body = axum::body::to_bytes(response.into_body(), 1 << 20)
                    .await
                    .expect("body");
                (status, String::from_utf8_lossy(&body).into_owned())
            }
        };
        assert_eq!(get("/healthz").await.0, StatusCode::OK);
        assert_eq!(get("/readyz").await.0, StatusCode::SERVICE_UNAVAILABLE);
        ready.store(true, Ordering::Relaxed);
        assert_eq!(get("/readyz").await.0, StatusCode::OK);

        metrics.router.messages_accepted.inc_by(5);
        let (status, body) = get("/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            body.contains("parley_router_messages_accepted_total 5"),
            "{body}"
        );
        assert!(body.contains("parley_gateway_sessions_open"), "{body}");
        assert!(
            body.contains("parley_registration_codes_sent_total"),
            "{body}"
        );
    }
}
