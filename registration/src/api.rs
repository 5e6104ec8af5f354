//! The HTTP routes of registration and their shared state.
//!
//! - `POST /v1/registration/code` `{"phone"}` → `202 {"expires_in", "next_code_in"}`
//! - `POST /v1/registration/verify` `{"phone", "code"}` → `200 {"user_id", "device_id", "token"}`
//! - `POST /v1/contacts/lookup` (bearer credential) `{"phones": [..]}` →
//!   `200 {"contacts": [{"phone", "user_id"}]}`
//! - `POST /v1/devices/link-code` (bearer credential of the primary) →
//!   `201 {"code", "expires_in"}`
//! - `POST /v1/devices/link` `{"code", "name"}` → `200 {"user_id", "device_id", "token"}`
//! - `GET /v1/devices` (bearer credential) →
//!   `200 {"devices": [{"device_id", "name", "primary", "created_at", "last_seen_at"}]}`
//! - `DELETE /v1/devices/{device_id}` (bearer credential) → `204`
//! - `GET /v1/users/{user_id}/devices` (bearer credential) → `200 {"devices": ["<id>", ..]}`
//! - `PUT /v1/devices/self/push-token` (bearer credential) `{"platform", "token"}` → `204`;
//!   `DELETE` → `204` (see [`crate::push`])
//!
//! `verify` and `link` also take an optional `"push": {"platform", "token"}`
//! and then answer `"push": "registered"` or the code of why not.
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
//! - lookups: a per-user token bucket in memory, see [`crate::ratelimit`];
//! - link codes: see [`RegistrationConfig`] and [`crate::link`]; link
//!   attempts, a per-address token bucket like verifications.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use axum::error_handling::HandleErrorLayer;
use axum::extract::rejection::PathRejection;
use axum::extract::{DefaultBodyLimit, FromRef, Path, State};
use axum::routing::{delete, get, post, put};
use axum::{BoxError, Extension, Json, Router};
use http::StatusCode;

use crate::metrics::RegistrationMetrics;
use serde::{Deserialize, Serialize};
use tower::ServiceBuilder;
use tower::limit::GlobalConcurrencyLimitLayer;

use crate::code;
use crate::error::{AppError, Internal};
use crate::events::{DeviceEvents, UnlinkReason};
use crate::extract::JsonBody;
use crate::link::{self, LinkCode};
use crate::phone::is_e164;
use crate::push::PushTokenBody;
use crate::ratelimit::{IpRateLimiter, UserRateLimiter};
use crate::sms::{SmsError, SmsSender};
use crate::store::{
    self, AccountStore, CodeCheck, CodePolicy, CodeRequest, LinkCodeRequest, LinkPolicy,
    Redemption, StoreError, Unlink,
};
use parley_identity::{Authenticator, BearerDevice, TokenKeys};

/// Every route (method and path) and the statuses it answers with
/// (docs/protocol.md, docs/openapi.json), so the server can show every
/// `(route, status)` series from the start, and tests/openapi.rs can check
/// the OpenAPI document against it. [`router`] serves exactly these.
pub const ROUTES: [(&str, &str, &[u16]); 10] = [
    (
        "POST",
        "/v1/registration/code",
        &[202, 400, 413, 429, 500, 502, 503],
    ),
    (
        "POST",
        "/v1/registration/verify",
        &[200, 400, 401, 404, 410, 413, 429, 500, 503],
    ),
    (
        "POST",
        "/v1/contacts/lookup",
        &[200, 400, 401, 413, 429, 500, 503],
    ),
    (
        "POST",
        "/v1/devices/link-code",
        &[201, 401, 403, 409, 500, 503],
    ),
    (
        "POST",
        "/v1/devices/link",
        &[200, 400, 404, 409, 413, 429, 500, 503],
    ),
    ("GET", "/v1/devices", &[200, 401, 500, 503]),
    (
        "DELETE",
        "/v1/devices/{device_id}",
        &[204, 401, 403, 404, 409, 500, 503],
    ),
    (
        "GET",
        "/v1/users/{user_id}/devices",
        &[200, 401, 404, 500, 503],
    ),
    (
        "PUT",
        "/v1/devices/self/push-token",
        &[204, 400, 401, 404, 413, 429, 500, 502, 503],
    ),
    (
        "DELETE",
        "/v1/devices/self/push-token",
        &[204, 401, 500, 503],
    ),
];

/// Linked devices the inactivity sweep looks at per call of
/// [`RegistrationState::unlink_inactive`]: one call is a bounded amount of
/// work (and of sessions to close at once); the caller calls again while
/// calls come back full.
pub const SWEEP_BATCH: u32 = 500;

/// Link codes drawn before giving up when their ids are taken (ids are 40
/// random bits; see [`crate::link`]).
const LINK_CODE_DRAWS: u32 = 8;

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
    /// How long a link code is valid (10 min).
    pub link_code_ttl: Duration,
    /// Wrong tries that kill a link code (3).
    pub link_code_attempts: u32,
    /// Devices an account may have, the primary included (5). Checked when
    /// a link code is made and when it is redeemed.
    pub max_devices: u32,
    /// Linked devices not seen for this long are unlinked by
    /// [`RegistrationState::unlink_inactive`] (30 days). Never the primary.
    pub inactive_after: Duration,
    /// Link attempts from one client address (token bucket), like
    /// verifications: the per-code limit stops guessing one code; this
    /// stops guessing many.
    pub links_per_ip_burst: u32,
    pub links_per_ip_per_minute: u32,
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
            link_code_ttl: Duration::from_secs(10 * 60),
            link_code_attempts: 3,
            max_devices: 5,
            inactive_after: Duration::from_secs(30 * 24 * 60 * 60),
            links_per_ip_burst: 20,
            links_per_ip_per_minute: 10,
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
        positive(!self.link_code_ttl.is_zero(), "link_code_ttl");
        positive(self.link_code_attempts > 0, "link_code_attempts");
        positive(self.max_devices > 0, "max_devices");
        positive(!self.inactive_after.is_zero(), "inactive_after");
        positive(self.links_per_ip_burst > 0, "links_per_ip_burst");
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

    fn link_policy(&self) -> LinkPolicy {
        LinkPolicy {
            ttl: self.link_code_ttl,
            max_attempts: self.link_code_attempts,
            max_devices: self.max_devices,
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
    /// Push token registrations per account (each may call the push
    /// service): [`crate::push::TOKENS_BURST`], then
    /// [`crate::push::TOKENS_PER_MINUTE`].
    push_token_limiter: UserRateLimiter,
    codes_per_ip: IpRateLimiter,
    verifies_per_ip: IpRateLimiter,
    links_per_ip: IpRateLimiter,
    config: RegistrationConfig,
    /// Devices' push tokens: the push service's endpoints and the store.
    push: parley_push::Registrar,
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
        let links_per_ip =
            IpRateLimiter::new(config.links_per_ip_burst, config.links_per_ip_per_minute);
        Self {
            inner: Arc::new(Inner {
                keys,
                authenticator,
                sms,
                events,
                lookup_limiter,
                push_token_limiter: UserRateLimiter::new(
                    crate::push::TOKENS_BURST,
                    crate::push::TOKENS_PER_MINUTE,
                ),
                codes_per_ip,
                verifies_per_ip,
                links_per_ip,
                metrics: RegistrationMetrics::default(),
                push: parley_push::Registrar::new(
                    Arc::new(parley_push::NoPush),
                    Arc::new(store.clone()),
                    parley_push::PushMetrics::default(),
                    config.sms_timeout,
                ),
                store,
                config,
                next_prune_ms: AtomicI64::new(0),
            }),
        }
    }

    /// Registers push tokens with `push` (without, a token's platform is
    /// unavailable). Before the state is shared (cloned).
    pub fn with_push(mut self, push: parley_push::Registrar) -> Self {
        Arc::get_mut(&mut self.inner)
            .expect("with_push before the state is cloned")
            .push = push;
        self
    }

    /// What registers devices' push tokens (the gateway's `SetPushToken`
    /// uses it too).
    pub fn push(&self) -> &parley_push::Registrar {
        &self.inner.push
    }

    /// Spends one of `user`'s push token registrations.
    pub(crate) fn check_push_token_rate(&self, user: crate::UserId) -> Result<(), AppError> {
        self.inner
            .push_token_limiter
            .check(user)
            .map_err(|retry_after| AppError::RateLimited { retry_after })
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

    /// Unlinks up to [`SWEEP_BATCH`] linked devices not seen for
    /// [`RegistrationConfig::inactive_after`] before `now_ms` (never a
    /// primary), telling [`DeviceEvents`] of each; returns how many. The
    /// server calls it periodically, and again at once while it returns a
    /// full batch.
    pub async fn unlink_inactive(&self, now_ms: i64) -> Result<usize, StoreError> {
        let inner = &self.inner;
        let after = i64::try_from(inner.config.inactive_after.as_millis()).unwrap_or(i64::MAX);
        let seen_before = now_ms.saturating_sub(after);
        let candidates = inner
            .store
            .inactive_devices(seen_before, SWEEP_BATCH)
            .await?;
        let mut unlinked = 0;
        for device in candidates {
            // Checked again one by one: it may have connected since.
            if inner.store.unlink_if_inactive(device, seen_before).await? {
                unlinked += 1;
                self.unlinked(device.user, device.device, UnlinkReason::Inactive);
            }
        }
        Ok(unlinked)
    }

    /// A committed unlinking: counted, logged, and told to the process.
    fn unlinked(&self, user: u64, device: u64, reason: UnlinkReason) {
        self.inner
            .metrics
            .devices_unlinked
            .get_or_create(&[("reason", reason.label())])
            .inc();
        tracing::info!(user, device, reason = reason.label(), "device unlinked");
        self.inner.events.device_unlinked(user, device, reason);
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
        .route(ROUTES[0].1, post(request_code))
        .route(ROUTES[1].1, post(verify))
        .route(ROUTES[2].1, post(lookup))
        .route(ROUTES[3].1, post(make_link_code))
        .route(ROUTES[4].1, post(link))
        .route(ROUTES[5].1, get(list_devices))
        .route(ROUTES[6].1, delete(unlink))
        .route(ROUTES[7].1, get(user_devices))
        // ROUTES[8] and ROUTES[9]: one path, two methods.
        .route(
            ROUTES[8].1,
            put(crate::push::set_push_token).delete(crate::push::clear_push_token),
        )
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
    /// The new device's push token, registered once it exists.
    push: Option<PushTokenBody>,
}

#[derive(Serialize)]
struct VerifyResponse {
    user_id: String,
    device_id: String,
    token: String,
    /// With a `push` in the request: `"registered"` or why not.
    #[serde(skip_serializing_if = "Option::is_none")]
    push: Option<&'static str>,
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
    // Before the code is spent: a token that cannot be registered.
    let push = body.push.map(PushTokenBody::checked).transpose()?;
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
    // Committed: from here on the old devices' credentials are refused.
    if let Some(old_primary) = registration.replaced_device {
        tracing::info!(
            user = registration.user,
            linked_removed = registration.removed_linked.len(),
            "account re-registered: its devices were replaced"
        );
        state.inner.events.account_reregistered(
            registration.user,
            old_primary,
            registration.removed_linked.clone(),
            registration.device,
        );
    } else {
        tracing::info!(user = registration.user, "account created");
    }
    let token = state.inner.keys.issue(
        registration.user,
        registration.device,
        registration.generation,
        state.inner.config.token_ttl,
    )?;
    let push = state
        .push_after_joining(
            parley_identity::Device::new(registration.user, registration.device),
            push,
        )
        .await;
    Ok(Json(VerifyResponse {
        user_id: registration.user.to_string(),
        device_id: registration.device.to_string(),
        token,
        push,
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

#[derive(Serialize)]
struct LinkCodeResponse {
    code: String,
    expires_in: u64,
}

/// A new link code for the caller's account, replacing its previous one.
#[tracing::instrument(skip_all, fields(user = device.0.user))]
async fn make_link_code(
    State(state): State<RegistrationState>,
    device: BearerDevice,
) -> Result<(StatusCode, Json<LinkCodeResponse>), AppError> {
    let claims = device.0;
    let config = &state.inner.config;
    let now = store::now_millis();
    state.maybe_prune(now).await;
    for _ in 0..LINK_CODE_DRAWS {
        let code = LinkCode::generate();
        let made = state
            .inner
            .store
            .create_link_code(
                claims.user,
                claims.device,
                code.id(),
                &code.secret_hash(),
                now,
                &config.link_policy(),
            )
            .await?;
        match made {
            LinkCodeRequest::Created => {
                state.inner.metrics.link_codes_issued.inc();
                return Ok((
                    StatusCode::CREATED,
                    Json(LinkCodeResponse {
                        code: code.display(),
                        expires_in: config.link_code_ttl.as_secs(),
                    }),
                ));
            }
            LinkCodeRequest::NotPrimary => return Err(AppError::PrimaryOnly),
            LinkCodeRequest::DeviceLimit => {
                return Err(AppError::DeviceLimit {
                    max: config.max_devices,
                });
            }
            LinkCodeRequest::IdTaken => {}
        }
    }
    Err(StoreError::IdExhausted.into())
}

#[derive(Deserialize)]
struct LinkBody {
    code: String,
    name: String,
    /// The new device's push token, registered once it is linked.
    push: Option<PushTokenBody>,
}

/// A new device joins the account whose primary made `code`.
#[tracing::instrument(skip_all)]
async fn link(
    State(state): State<RegistrationState>,
    client: Option<Extension<ClientIp>>,
    JsonBody(body): JsonBody<LinkBody>,
) -> Result<Json<VerifyResponse>, AppError> {
    let refused = |code: &'static str, err: AppError| {
        state
            .inner
            .metrics
            .link_failures
            .get_or_create(&[("code", code)])
            .inc();
        err
    };
    if !link::valid_name(&body.name) {
        return Err(refused(
            "INVALID_REQUEST",
            AppError::InvalidRequest(format!(
                "name must be 1 to {} bytes of printable text",
                link::MAX_NAME_BYTES
            )),
        ));
    }
    let push = body
        .push
        .map(PushTokenBody::checked)
        .transpose()
        .map_err(|e| refused("INVALID_PUSH_TOKEN", e))?;
    state.check_ip(&state.inner.links_per_ip, client, "links_per_ip")?;
    // What cannot be a code is refused like a wrong one: one answer for
    // every code that does not link.
    let Some(code) = LinkCode::parse(&body.code) else {
        return Err(refused("LINK_CODE_INVALID", AppError::LinkCodeInvalid));
    };
    let config = &state.inner.config;
    let redeemed = state
        .inner
        .store
        .redeem_link_code(
            code.id(),
            &code.secret_hash(),
            &body.name,
            store::now_millis(),
            config.max_devices,
        )
        .await?;
    let linked = match redeemed {
        Redemption::Linked(linked) => linked,
        Redemption::Invalid => return Err(refused("LINK_CODE_INVALID", AppError::LinkCodeInvalid)),
        Redemption::DeviceLimit => {
            return Err(refused(
                "DEVICE_LIMIT",
                AppError::DeviceLimit {
                    max: config.max_devices,
                },
            ));
        }
    };
    state.inner.metrics.devices_linked.inc();
    tracing::info!(user = linked.user, device = linked.device, "device linked");
    state.inner.events.device_linked(linked.user, linked.device);
    let token = state.inner.keys.issue(
        linked.user,
        linked.device,
        linked.generation,
        config.token_ttl,
    )?;
    let push = state
        .push_after_joining(
            parley_identity::Device::new(linked.user, linked.device),
            push,
        )
        .await;
    Ok(Json(VerifyResponse {
        user_id: linked.user.to_string(),
        device_id: linked.device.to_string(),
        token,
        push,
    }))
}

#[derive(Serialize)]
struct DevicesResponse {
    devices: Vec<DeviceEntry>,
}

#[derive(Serialize)]
struct DeviceEntry {
    device_id: String,
    name: String,
    primary: bool,
    /// Unix seconds.
    created_at: i64,
    /// Unix seconds; to within an hour.
    last_seen_at: i64,
}

/// The caller's account's devices, for any of them.
#[tracing::instrument(skip_all, fields(user = device.0.user))]
async fn list_devices(
    State(state): State<RegistrationState>,
    device: BearerDevice,
) -> Result<Json<DevicesResponse>, AppError> {
    let devices = state.inner.store.devices(device.0.user).await?;
    Ok(Json(DevicesResponse {
        devices: devices
            .into_iter()
            .map(|d| DeviceEntry {
                device_id: d.device.to_string(),
                name: d.name,
                primary: d.primary,
                created_at: d.created_at_ms.div_euclid(1000),
                last_seen_at: d.last_seen_at_ms.div_euclid(1000),
            })
            .collect(),
    }))
}

/// An id in a path: decimal in `1..=i64::MAX`, the range ids are drawn
/// from; anything else names nothing.
fn path_id(path: Result<Path<String>, PathRejection>) -> Option<u64> {
    let Path(text) = path.ok()?;
    if text.is_empty() || text.len() > 19 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u64>()
        .ok()
        .filter(|id| (1..=i64::MAX as u64).contains(id))
}

/// Unlinks a device of the caller's account (see [`AccountStore::unlink`]
/// for who may).
#[tracing::instrument(skip_all, fields(user = device.0.user))]
async fn unlink(
    State(state): State<RegistrationState>,
    device: BearerDevice,
    target: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, AppError> {
    let claims = device.0;
    let target = path_id(target).ok_or(AppError::NoSuchDevice)?;
    match state
        .inner
        .store
        .unlink(claims.user, claims.device, target)
        .await?
    {
        Unlink::Unlinked => {
            state.unlinked(claims.user, target, UnlinkReason::User);
            Ok(StatusCode::NO_CONTENT)
        }
        Unlink::NoSuchDevice => Err(AppError::NoSuchDevice),
        Unlink::PrimaryDevice => Err(AppError::PrimaryDevice),
        Unlink::Forbidden => Err(AppError::Forbidden),
    }
}

#[derive(Serialize)]
struct UserDevicesResponse {
    devices: Vec<String>,
}

/// Another user's device ids (no names, no times), for apps that encrypt
/// one body per device.
#[tracing::instrument(skip_all, fields(user = device.0.user))]
async fn user_devices(
    State(state): State<RegistrationState>,
    device: BearerDevice,
    user: Result<Path<String>, PathRejection>,
) -> Result<Json<UserDevicesResponse>, AppError> {
    let _ = device;
    let user = path_id(user).ok_or(AppError::NoSuchUser)?;
    let ids = state.inner.store.device_ids(user).await?;
    if ids.is_empty() {
        return Err(AppError::NoSuchUser);
    }
    Ok(Json(UserDevicesResponse {
        devices: ids.iter().map(u64::to_string).collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_ids() {
        let id = |text: &str| path_id(Ok(Path(text.to_owned())));
        assert_eq!(id("1"), Some(1));
        assert_eq!(id("9223372036854775807"), Some(i64::MAX as u64));
        for bad in [
            "",
            "0",
            "-1",
            "+1",
            "1x",
            "9223372036854775808",
            "00000000000000000001",
        ] {
            assert_eq!(id(bad), None, "{bad:?}");
        }
    }

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
            max_devices: 0,
            link_code_attempts: 0,
            ..RegistrationConfig::default()
        };
        let err = config.validate().expect_err("invalid");
        assert_eq!(err.problems.len(), 6, "{err}");
    }
}
