//! The HTTP routes of registration and their shared state.
//!
//! - `POST /v1/registration/code` `{"phone"}` → `202 {"expires_in", "next_code_in"}`
//! - `POST /v1/registration/verify` `{"phone", "code"}` → `200 {"user_id", "device_id", "token"}`
//! - `POST /v1/contacts/lookup` (bearer credential) `{"phones": [..]}` →
//!   `200 {"contacts": [{"phone", "user_id"}]}`
//!
//! Ids are decimal strings; durations are whole seconds. Errors: see
//! [`crate::error`].
//!
//! Limits, all per router (i.e. per process):
//! - request bodies: [`BODY_LIMIT`] (64 KiB), else `413 PAYLOAD_TOO_LARGE`;
//! - requests in flight: [`RegistrationConfig::max_in_flight`]; requests
//!   beyond it are shed at once with `503 UNAVAILABLE` rather than queued;
//! - time per request: [`RegistrationConfig::request_timeout`], then
//!   `503 UNAVAILABLE` (the handler is dropped, rolling back its transaction);
//! - time per SMS: [`RegistrationConfig::sms_timeout`], then `502 SMS_FAILED`;
//! - codes: see [`RegistrationConfig`]; enforced in the database, so they hold
//!   across processes;
//! - lookups: a per-user token bucket in memory, see [`crate::ratelimit`].

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use axum::error_handling::HandleErrorLayer;
use axum::extract::{DefaultBodyLimit, FromRef, State};
use axum::routing::post;
use axum::{BoxError, Extension, Json, Router};
use http::StatusCode;

use crate::metrics::RegistrationMetrics;
use serde::{Deserialize, Serialize};
use tower::ServiceBuilder;
use tower::limit::GlobalConcurrencyLimitLayer;

use crate::code;
use crate::error::{AppError, Internal};
use crate::events::DeviceEvents;
use crate::extract::JsonBody;
use crate::phone::is_e164;
use crate::ratelimit::{IpRateLimiter, UserRateLimiter};
use crate::sms::{SmsError, SmsSender};
use crate::store::{self, AccountStore, CodeCheck, CodePolicy, CodeRequest};
use parley_identity::{Authenticator, BearerDevice, TokenKeys};

/// Every route and the statuses it answers with (docs/protocol.md), so the
/// server can show every `(route, status)` series from the start.
pub const ROUTES: [(&str, &[u16]); 3] = [
    (
        "/v1/registration/code",
        &[202, 400, 413, 429, 500, 502, 503],
    ),
    (
        "/v1/registration/verify",
        &[200, 400, 401, 404, 410, 413, 429, 500, 503],
    ),
    ("/v1/contacts/lookup", &[200, 400, 401, 413, 429, 500, 503]),
];

/// Largest accepted request body. A lookup of 1000 numbers is about 20 KiB.
pub const BODY_LIMIT: usize = 64 * 1024;

/// How often (at most) a code request also prunes old history and codes.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Tunables of the registration API. `Default` is the production policy.
#[derive(Clone, Debug)]
pub struct RegistrationConfig {
    /// How long a code is valid (10 min).
    pub code_ttl: Duration,
    /// Minimum time between two codes for one number (60 s).
    pub code_interval: Duration,
    /// Codes per number per rolling 24 h (5).
    pub codes_per_day: u32,
    /// Wrong guesses that kill a code (5).
    pub max_attempts: u32,
    /// Lifetime of a device credential (365 days). Re-registration revokes
    /// it earlier.
    pub token_ttl: Duration,
    /// Contact lookups a user may make at once (20) ...
    pub lookup_burst: u32,
    /// ... and per minute after that (20).
    pub lookup_per_minute: u32,
    /// Phone numbers per lookup request (1000).
    pub lookup_max_phones: usize,
    /// Code requests from one client address (token bucket). Generous,
    /// because many phones share an address behind carrier NAT; it stops
    /// one machine from cycling through numbers. Applied only when the
    /// server attaches the client's address ([`ClientIp`]).
    pub codes_per_ip_burst: u32,
    pub codes_per_ip_per_minute: u32,
    /// Verification attempts from one client address (token bucket): the
    /// per-code limit stops guessing one code; this stops guessing many.
    pub verifies_per_ip_burst: u32,
    pub verifies_per_ip_per_minute: u32,
    /// How long an SMS may take to send before the request fails with
    /// `SMS_FAILED` and the code is not counted (5 s).
    pub sms_timeout: Duration,
    /// Time limit of one request, body reading included (10 s).
    pub request_timeout: Duration,
    /// Requests handled at once; more are refused with 503 (256).
    pub max_in_flight: usize,
}

impl Default for RegistrationConfig {
    fn default() -> Self {
        Self {
            code_ttl: Duration::from_secs(10 * 60),
            code_interval: Duration::from_secs(60),
            codes_per_day: 5,
            max_attempts: 5,
            token_ttl: Duration::from_secs(365 * 24 * 60 * 60),
            lookup_burst: 20,
            lookup_per_minute: 20,
            lookup_max_phones: 1000,
            codes_per_ip_burst: 20,
            codes_per_ip_per_minute: 10,
            verifies_per_ip_burst: 50,
            verifies_per_ip_per_minute: 30,
            sms_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            max_in_flight: 256,
        }
    }
}

/// Every problem found by [`RegistrationConfig::validate`], not just the first.
#[derive(Debug, thiserror::Error)]
#[error("invalid registration settings: {}", .problems.join("; "))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl RegistrationConfig {
    /// Checks the settings once at start-up, reporting every bad value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut positive = |ok: bool, name: &str| {
            if !ok {
                problems.push(format!("{name} must be greater than zero"));
            }
        };
        positive(!self.code_ttl.is_zero(), "code_ttl");
        positive(self.codes_per_day > 0, "codes_per_day");
        positive(self.codes_per_ip_burst > 0, "codes_per_ip_burst");
        positive(self.verifies_per_ip_burst > 0, "verifies_per_ip_burst");
        positive(self.max_attempts > 0, "max_attempts");
        positive(!self.token_ttl.is_zero(), "token_ttl");
        positive(self.lookup_burst > 0, "lookup_burst");
        positive(self.lookup_per_minute > 0, "lookup_per_minute");
        positive(self.lookup_max_phones > 0, "lookup_max_phones");
        positive(!self.sms_timeout.is_zero(), "sms_timeout");
        positive(!self.request_timeout.is_zero(), "request_timeout");
        positive(self.max_in_flight > 0, "max_in_flight");
        if self.sms_timeout >= self.request_timeout {
            problems.push(
                "sms_timeout must be shorter than request_timeout, so a slow SMS is \
                 answered with SMS_FAILED and uncounted rather than cut off"
                    .to_owned(),
            );
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }

    fn code_policy(&self) -> CodePolicy {
        CodePolicy {
            ttl: self.code_ttl,
            interval: self.code_interval,
            per_day: self.codes_per_day,
            max_attempts: self.max_attempts,
        }
    }
}

/// Cheap clonable handle to everything the handlers share.
#[derive(Clone)]
pub struct RegistrationState {
    inner: Arc<Inner>,
}

struct Inner {
    store: AccountStore,
    keys: Arc<TokenKeys>,
    /// Built once from `keys` and `store`, for the lookup route's credential.
    authenticator: Authenticator,
    sms: Arc<dyn SmsSender>,
    events: Arc<dyn DeviceEvents>,
    lookup_limiter: UserRateLimiter,
    codes_per_ip: IpRateLimiter,
    verifies_per_ip: IpRateLimiter,
    config: RegistrationConfig,
    /// Unix ms after which the next code request prunes old rows. Atomic so
    /// that exactly one concurrent request wins each pruning turn.
    next_prune_ms: AtomicI64,
    metrics: RegistrationMetrics,
}

impl fmt::Debug for RegistrationState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistrationState")
            .field("store", &self.inner.store)
            .field("keys", &self.inner.keys)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// The address of the client behind a request, attached by the server that
/// accepted the connection (as an axum `Extension`). Per-address limits
/// apply only to requests that carry it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientIp(pub std::net::IpAddr);

impl RegistrationState {
    /// Spends one of `client`'s tokens in `limiter`, if the request carries
    /// its address.
    fn check_ip(
        &self,
        limiter: &IpRateLimiter,
        client: Option<Extension<ClientIp>>,
        name: &'static str,
    ) -> Result<(), AppError> {
        let Some(Extension(ClientIp(ip))) = client else {
            return Ok(());
        };
        limiter.check(ip).map_err(|retry_after| {
            self.inner
                .metrics
                .rate_limited
                .get_or_create(&[("limiter", name)])
                .inc();
            AppError::RateLimited { retry_after }
        })
    }

    /// What this state counts; the server registers it once.
    pub fn metrics(&self) -> &RegistrationMetrics {
        &self.inner.metrics
    }

    /// Takes `config` as given; call [`RegistrationConfig::validate`] at
    /// start-up to report bad values first.
    pub fn new(
        store: AccountStore,
        keys: Arc<TokenKeys>,
        sms: Arc<dyn SmsSender>,
        events: Arc<dyn DeviceEvents>,
        config: RegistrationConfig,
    ) -> Self {
        let authenticator = Authenticator::new(Arc::clone(&keys), store.clone());
        let lookup_limiter = UserRateLimiter::new(config.lookup_burst, config.lookup_per_minute);
        let codes_per_ip =
            IpRateLimiter::new(config.codes_per_ip_burst, config.codes_per_ip_per_minute);
        let verifies_per_ip = IpRateLimiter::new(
            config.verifies_per_ip_burst,
            config.verifies_per_ip_per_minute,
        );
        Self {
            inner: Arc::new(Inner {
                store,
                keys,
                authenticator,
                sms,
                events,
                lookup_limiter,
                codes_per_ip,
                verifies_per_ip,
                metrics: RegistrationMetrics::default(),
                config,
                next_prune_ms: AtomicI64::new(0),
            }),
        }
    }

    /// The authenticator the lookup route uses, for other parts of the
    /// process (the gateway) to share.
    pub fn authenticator(&self) -> &Authenticator {
        &self.inner.authenticator
    }

    /// Prunes old code history at most every [`PRUNE_EVERY`]. A failure only
    /// delays pruning, so it is logged and the request goes on.
    async fn maybe_prune(&self, now_ms: i64) {
        let next = self.inner.next_prune_ms.load(Ordering::Relaxed);
        let every = i64::try_from(PRUNE_EVERY.as_millis()).unwrap_or(i64::MAX);
        if now_ms < next
            || self
                .inner
                .next_prune_ms
                .compare_exchange(
                    next,
                    now_ms.saturating_add(every),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            return;
        }
        match self.inner.store.prune(now_ms).await {
            Ok(n) => tracing::debug!(rows = n, "pruned old code history"),
            Err(e) => tracing::warn!(error = %e, "pruning old code history failed"),
        }
    }
}

impl FromRef<RegistrationState> for Authenticator {
    fn from_ref(state: &RegistrationState) -> Self {
        state.inner.authenticator.clone()
    }
}

/// The HTTP routes of this crate, with their limits (see the module docs).
/// The server binary merges it into one axum `Router` and serves it over
/// HTTPS. It sets no fallback, so merging it with other routers is allowed.
pub fn router(state: RegistrationState) -> Router {
    let config = &state.inner.config;
    // Outermost first: errors of the layers below become responses; a full
    // house sheds load at once instead of queueing; the semaphore is global
    // (not per route) so the limit is for the whole router; the timeout is
    // innermost so it times the handler, not the wait for a slot.
    let limits = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(layer_error))
        .load_shed()
        .layer(GlobalConcurrencyLimitLayer::new(
            config.max_in_flight.max(1),
        ))
        .timeout(config.request_timeout);
    Router::new()
        .route(ROUTES[0].0, post(request_code))
        .route(ROUTES[1].0, post(verify))
        .route(ROUTES[2].0, post(lookup))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(limits)
        .with_state(state)
}

async fn layer_error(err: BoxError) -> AppError {
    if err.is::<tower::timeout::error::Elapsed>() || err.is::<tower::load_shed::error::Overloaded>()
    {
        AppError::Unavailable
    } else {
        AppError::Internal(Internal::Other(format!("middleware: {err}")))
    }
}

#[derive(Deserialize)]
struct CodeRequestBody {
    phone: String,
}

#[derive(Serialize)]
struct CodeResponse {
    expires_in: u64,
    next_code_in: u64,
}

#[tracing::instrument(skip_all)]
async fn request_code(
    State(state): State<RegistrationState>,
    client: Option<Extension<ClientIp>>,
    JsonBody(body): JsonBody<CodeRequestBody>,
) -> Result<(StatusCode, Json<CodeResponse>), AppError> {
    if !is_e164(&body.phone) {
        return Err(AppError::InvalidPhone);
    }
    state.check_ip(&state.inner.codes_per_ip, client, "codes_per_ip")?;
    let config = &state.inner.config;
    let store = &state.inner.store;
    let now = store::now_millis();
    state.maybe_prune(now).await;

    let code = code::generate();
    let hash = code::hash(&body.phone, &code);
    let ticket = match store
        .request_code(&body.phone, &hash, now, &config.code_policy())
        .await?
    {
        CodeRequest::Granted(ticket) => ticket,
        CodeRequest::Limited { retry_after } => return Err(AppError::RateLimited { retry_after }),
    };

    let message = format!("Your Parley code is {code}");
    let sent = match tokio::time::timeout(
        config.sms_timeout,
        state.inner.sms.send(&body.phone, &message),
    )
    .await
    {
        Ok(result) => result,
        Err(_elapsed) => Err(SmsError::Timeout(config.sms_timeout)),
    };
    if let Err(e) = sent {
        // Not sent, so not counted: the user may ask again at once.
        if let Err(cancel) = store.cancel_code_request(&body.phone, ticket, &hash).await {
            tracing::error!(error = %cancel, "could not uncount an unsent code");
        }
        return Err(AppError::SmsFailed(e));
    }
    state.inner.metrics.codes_sent.inc();
    Ok((
        StatusCode::ACCEPTED,
        Json(CodeResponse {
            expires_in: config.code_ttl.as_secs(),
            next_code_in: config.code_interval.as_secs(),
        }),
    ))
}

#[derive(Deserialize)]
struct VerifyBody {
    phone: String,
    code: String,
}

#[derive(Serialize)]
struct VerifyResponse {
    user_id: String,
    device_id: String,
    token: String,
}

#[tracing::instrument(skip_all)]
async fn verify(
    State(state): State<RegistrationState>,
    client: Option<Extension<ClientIp>>,
    JsonBody(body): JsonBody<VerifyBody>,
) -> Result<Json<VerifyResponse>, AppError> {
    if !is_e164(&body.phone) {
        return Err(AppError::InvalidPhone);
    }
    state.check_ip(&state.inner.verifies_per_ip, client, "verifies_per_ip")?;
    // Whatever was sent is hashed and compared: a malformed code is just a
    // wrong one, and costs an attempt like any other guess.
    let hash = code::hash(&body.phone, &body.code);
    let refused = |code: &'static str, err: AppError| {
        state
            .inner
            .metrics
            .verify_failures
            .get_or_create(&[("code", code)])
            .inc();
        err
    };
    let registration = match state
        .inner
        .store
        .verify_code(&body.phone, &hash, store::now_millis())
        .await?
    {
        CodeCheck::Registered(registration) => registration,
        CodeCheck::NoPendingCode => {
            return Err(refused("NO_PENDING_CODE", AppError::NoPendingCode));
        }
        CodeCheck::Expired => return Err(refused("CODE_EXPIRED", AppError::CodeExpired)),
        CodeCheck::Wrong { attempts_left } => {
            return Err(refused("WRONG_CODE", AppError::WrongCode { attempts_left }));
        }
    };
    let outcome = if registration.replaced_device.is_some() {
        "reregistered"
    } else {
        "new_account"
    };
    state
        .inner
        .metrics
        .codes_verified
        .get_or_create(&[("outcome", outcome)])
        .inc();
    // Committed: from here on the old device's credential is refused.
    if let Some(old_device) = registration.replaced_device {
        tracing::info!(
            user = registration.user,
            "device replaced by re-registration"
        );
        state
            .inner
            .events
            .device_replaced(registration.user, old_device);
    } else {
        tracing::info!(user = registration.user, "account created");
    }
    let token = state.inner.keys.issue(
        registration.user,
        registration.device,
        registration.generation,
        state.inner.config.token_ttl,
    )?;
    Ok(Json(VerifyResponse {
        user_id: registration.user.to_string(),
        device_id: registration.device.to_string(),
        token,
    }))
}

#[derive(Deserialize)]
struct LookupBody {
    phones: Vec<String>,
}

#[derive(Serialize)]
struct LookupResponse {
    contacts: Vec<Contact>,
}

#[derive(Serialize)]
struct Contact {
    phone: String,
    user_id: String,
}

#[tracing::instrument(skip_all, fields(user = device.0.user))]
async fn lookup(
    State(state): State<RegistrationState>,
    device: BearerDevice,
    JsonBody(body): JsonBody<LookupBody>,
) -> Result<Json<LookupResponse>, AppError> {
    let max = state.inner.config.lookup_max_phones;
    if body.phones.len() > max {
        return Err(AppError::InvalidRequest(format!(
            "at most {max} phone numbers per lookup"
        )));
    }
    state
        .inner
        .lookup_limiter
        .check(device.0.user)
        .map_err(|retry_after| AppError::RateLimited { retry_after })?;

    // Invalid numbers are skipped, not refused: an address book holds all
    // sorts of things. Duplicates are asked for once.
    let mut seen = HashSet::new();
    let wanted: Vec<&str> = body
        .phones
        .iter()
        .map(String::as_str)
        .filter(|p| is_e164(p) && seen.insert(*p))
        .collect();
    let found: HashMap<String, u64> = state
        .inner
        .store
        .lookup(&wanted)
        .await?
        .into_iter()
        .collect();
    // In the order the client asked, so answers line up with its list.
    let contacts = wanted
        .into_iter()
        .filter_map(|phone| {
            found.get(phone).map(|user| Contact {
                phone: phone.to_owned(),
                user_id: user.to_string(),
            })
        })
        .collect();
    Ok(Json(LookupResponse { contacts }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid() {
        assert!(RegistrationConfig::default().validate().is_ok());
    }

    #[test]
    fn validate_reports_every_problem() {
        let config = RegistrationConfig {
            codes_per_day: 0,
            max_attempts: 0,
            lookup_max_phones: 0,
            sms_timeout: Duration::from_secs(20),
            ..RegistrationConfig::default()
        };
        let err = config.validate().expect_err("invalid");
        assert_eq!(err.problems.len(), 4, "{err}");
    }
}
