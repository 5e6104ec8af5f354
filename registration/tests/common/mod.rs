//! Shared test harness: a fresh database per test (SQLite in a temp dir, or a
//! uniquely named PostgreSQL database when `PARLEY_TEST_POSTGRES_URL` is set),
//! and a `TestApp` driving `router(state)` with `oneshot`.
//!
//! The PostgreSQL variants are compiled as ignored tests unless the variable
//! was set when they were built (`cfg(parley_postgres)`, see `build.rs`):
//! without a server they are reported as ignored, never as passed. Under
//! `CI=true` a missing variable is a failure (`postgres::configured_in_ci`).

// Each test binary uses its own subset of these helpers.
#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use http::{HeaderMap, Request, StatusCode, header};
use http_body_util::BodyExt;
use parley_registration::{
    AccountStore, DeviceEvents, DeviceId, OutboxSms, RegistrationConfig, RegistrationState,
    SmsSender, TokenKeys, UnlinkReason, UserId, router,
};
use rand::Rng;
use serde_json::Value;
use sqlx::Connection;
use tower::ServiceExt;

pub const POSTGRES_ENV: &str = "PARLEY_TEST_POSTGRES_URL";

/// Where a test's database lives.
#[derive(Clone, Debug)]
pub enum Backend {
    /// A file in the test's temp dir.
    Sqlite,
    /// The URL of a database created for this test alone.
    Postgres(String),
}

impl Backend {
    pub fn url(&self, dir: &Path) -> String {
        match self {
            Self::Sqlite => format!("sqlite://{}?mode=rwc", dir.join("parley.db").display()),
            Self::Postgres(url) => url.clone(),
        }
    }
}

/// The reason the PostgreSQL variants give when they are ignored.
pub const IGNORED_WITHOUT_POSTGRES: &str = "set PARLEY_TEST_POSTGRES_URL to run against PostgreSQL";

/// The URL of the PostgreSQL server to test against. Panics without one: a
/// PostgreSQL test that cannot reach PostgreSQL has not passed.
fn postgres_url() -> String {
    match std::env::var(POSTGRES_ENV) {
        Ok(url) if !url.is_empty() => url,
        _ if cfg!(parley_postgres) => panic!(
            "these tests were built with {POSTGRES_ENV} set, and it is not set now: \
             run them through cargo (which rebuilds them), or set it again"
        ),
        _ => panic!("{IGNORED_WITHOUT_POSTGRES} (these tests are ignored without it)"),
    }
}

/// Under `CI=true`, fails unless the PostgreSQL variants run: CI must test
/// production's database, and an ignored test is easy to miss in a log.
pub fn require_postgres_in_ci() {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    let url = std::env::var(POSTGRES_ENV).is_ok_and(|url| !url.is_empty());
    assert!(
        !ci || (cfg!(parley_postgres) && url),
        "CI is set but {POSTGRES_ENV} is not, so the PostgreSQL tests were ignored: \
         .ci/run sets it (and starts PostgreSQL); elsewhere, set it to a server on which \
         the tests may create and drop databases, e.g. postgres://postgres@127.0.0.1:5432/postgres"
    );
}

/// Runs `test` against a database of its own on the PostgreSQL server named by
/// `PARLEY_TEST_POSTGRES_URL`, and drops the database afterwards, also when
/// the test fails.
pub async fn on_postgres<F, Fut>(test: F)
where
    F: FnOnce(Backend) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let base = postgres_url();
    let name = format!("parley_test_{:016x}", rand::thread_rng().r#gen::<u64>());
    let mut admin = sqlx::PgConnection::connect(&base)
        .await
        .expect("connect to PARLEY_TEST_POSTGRES_URL");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .expect("create test database");
    // Run in a task so that a panicking test still gets its database dropped.
    let outcome = tokio::spawn(test(Backend::Postgres(with_database(&base, &name)))).await;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .expect("drop test database");
    if let Err(e) = outcome {
        if e.is_panic() {
            std::panic::resume_unwind(e.into_panic());
        }
        panic!("test task failed: {e}");
    }
}

/// `base` with its database name replaced by `db`, query string kept.
fn with_database(base: &str, db: &str) -> String {
    let (scheme, rest) = base.split_once("://").expect("URL with a scheme");
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) => (rest, format!("?{query}")),
        None => (rest, String::new()),
    };
    let authority = rest.split('/').next().unwrap_or_default();
    format!("{scheme}://{authority}/{db}{query}")
}

/// Generates two tests per name: `sqlite::<name>` and `postgres::<name>`,
/// each calling `<name>(backend)`; the PostgreSQL ones are ignored unless
/// `PARLEY_TEST_POSTGRES_URL` was set at build time. Plus
/// `postgres::configured_in_ci`, which fails under `CI=true` without it.
#[macro_export]
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::common::Backend::Sqlite).await;
                }
            )*
        }
        mod postgres {
            #[test]
            fn configured_in_ci() {
                super::common::require_postgres_in_ci();
            }
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[cfg_attr(
                    not(parley_postgres),
                    ignore = "set PARLEY_TEST_POSTGRES_URL to run against PostgreSQL"
                )]
                async fn $name() {
                    super::common::on_postgres(super::$name).await;
                }
            )*
        }
    };
}

/// One `account_reregistered` call: (user, old primary, old linked, new primary).
pub type Reregistered = (UserId, DeviceId, Vec<DeviceId>, DeviceId);

/// Records the device events, each kind in its own list.
#[derive(Debug, Default)]
pub struct RecordingEvents {
    /// `(user, old primary)` of each re-registration.
    pub replaced: Mutex<Vec<(UserId, DeviceId)>>,
    pub reregistered: Mutex<Vec<Reregistered>>,
    pub linked: Mutex<Vec<(UserId, DeviceId)>>,
    pub unlinked: Mutex<Vec<(UserId, DeviceId, UnlinkReason)>>,
}

impl DeviceEvents for RecordingEvents {
    fn device_linked(&self, user: UserId, device: DeviceId) {
        self.linked.lock().expect("lock").push((user, device));
    }

    fn device_unlinked(&self, user: UserId, device: DeviceId, reason: UnlinkReason) {
        self.unlinked
            .lock()
            .expect("lock")
            .push((user, device, reason));
    }

    fn account_reregistered(
        &self,
        user: UserId,
        old_primary: DeviceId,
        old_linked: Vec<DeviceId>,
        new_primary: DeviceId,
    ) {
        self.replaced
            .lock()
            .expect("lock")
            .push((user, old_primary));
        self.reregistered
            .lock()
            .expect("lock")
            .push((user, old_primary, old_linked, new_primary));
    }
}

pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Response {
    /// The `error.code` of an error body.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("<none>")
    }

    /// Asserts the documented error shape and returns the code.
    pub fn assert_error(&self, status: StatusCode, code: &str) {
        assert_eq!(self.status, status, "body: {}", self.body);
        assert_eq!(self.code(), code, "body: {}", self.body);
        assert!(
            self.body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "no message: {}",
            self.body
        );
    }

    pub fn retry_after_header(&self) -> u64 {
        self.headers[header::RETRY_AFTER]
            .to_str()
            .expect("ascii")
            .parse()
            .expect("seconds")
    }
}

pub struct TestApp {
    pub dir: tempfile::TempDir,
    pub router: Router,
    pub state: RegistrationState,
    pub store: AccountStore,
    pub keys: Arc<TokenKeys>,
    pub outbox: PathBuf,
    pub events: Arc<RecordingEvents>,
}

impl TestApp {
    pub async fn start(backend: &Backend, config: RegistrationConfig) -> Self {
        Self::start_with(backend, config, |outbox| Arc::new(OutboxSms::new(outbox))).await
    }

    /// With an SMS sender made from the outbox path.
    pub async fn start_with(
        backend: &Backend,
        config: RegistrationConfig,
        sms: impl FnOnce(PathBuf) -> Arc<dyn SmsSender>,
    ) -> Self {
        Self::assemble(backend, None, config, sms).await
    }

    /// A second app (another process, say) on the database of `db_dir`
    /// (for SQLite; PostgreSQL's is the backend's), with keys and outbox of
    /// its own.
    pub async fn start_on(backend: &Backend, db_dir: &Path, config: RegistrationConfig) -> Self {
        Self::assemble(backend, Some(db_dir), config, |outbox| {
            Arc::new(OutboxSms::new(outbox))
        })
        .await
    }

    async fn assemble(
        backend: &Backend,
        db_dir: Option<&Path>,
        config: RegistrationConfig,
        sms: impl FnOnce(PathBuf) -> Arc<dyn SmsSender>,
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = AccountStore::connect(&backend.url(db_dir.unwrap_or(dir.path())))
            .await
            .expect("connect store");
        let keys = Arc::new(TokenKeys::load_or_generate(&dir.path().join("keys")).expect("keys"));
        let outbox = dir.path().join("outbox.jsonl");
        let events = Arc::new(RecordingEvents::default());
        let state = RegistrationState::new(
            store.clone(),
            Arc::clone(&keys),
            sms(outbox.clone()),
            events.clone(),
            config,
        );
        Self {
            router: router(state.clone()),
            state,
            store,
            keys,
            outbox,
            events,
            dir,
        }
    }

    pub async fn send(&self, request: Request<Body>) -> Response {
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!("non-JSON body ({e}): {:?}", String::from_utf8_lossy(&bytes))
            })
        };
        Response {
            status,
            headers,
            body,
        }
    }

    pub async fn post(&self, path: &str, body: Value, token: Option<&str>) -> Response {
        let mut request = Request::post(path).header(header::CONTENT_TYPE, "application/json");
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        self.send(request.body(Body::from(body.to_string())).expect("request"))
            .await
    }

    pub async fn request_code(&self, phone: &str) -> Response {
        self.post(
            "/v1/registration/code",
            serde_json::json!({"phone": phone}),
            None,
        )
        .await
    }

    pub async fn verify(&self, phone: &str, code: &str) -> Response {
        self.post(
            "/v1/registration/verify",
            serde_json::json!({"phone": phone, "code": code}),
            None,
        )
        .await
    }

    pub async fn lookup(&self, token: Option<&str>, phones: &[&str]) -> Response {
        self.post(
            "/v1/contacts/lookup",
            serde_json::json!({"phones": phones}),
            token,
        )
        .await
    }

    /// Every outbox line, parsed.
    pub fn outbox_lines(&self) -> Vec<Value> {
        match std::fs::read_to_string(&self.outbox) {
            Ok(text) => text
                .lines()
                .map(|l| serde_json::from_str(l).expect("JSON line"))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => panic!("reading the outbox: {e}"),
        }
    }

    /// The code in the newest SMS to `phone`, read back from the outbox file
    /// as the end-to-end tests do.
    pub fn last_code(&self, phone: &str) -> String {
        let line = self
            .outbox_lines()
            .into_iter()
            .rev()
            .find(|l| l["to"] == phone)
            .unwrap_or_else(|| panic!("no SMS to {phone}"));
        assert_eq!(line["kind"], "sms");
        let body = line["body"].as_str().expect("body");
        let code = body.strip_prefix("Your Parley code is ").expect("SMS text");
        assert_eq!(code.len(), 6);
        assert!(code.bytes().all(|b| b.is_ascii_digit()));
        code.to_owned()
    }

    /// Requests and verifies a code; returns (user id, device id, token).
    pub async fn register(&self, phone: &str) -> (UserId, DeviceId, String) {
        let r = self.request_code(phone).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
        let r = self.verify(phone, &self.last_code(phone)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        (
            r.body["user_id"]
                .as_str()
                .expect("user_id")
                .parse()
                .expect("decimal"),
            r.body["device_id"]
                .as_str()
                .expect("device_id")
                .parse()
                .expect("decimal"),
            r.body["token"].as_str().expect("token").to_owned(),
        )
    }
}

/// A code that is certainly not `code`.
pub fn other_code(code: &str) -> String {
    let n: u32 = code.parse().expect("digits");
    format!("{:06}", (n + 1) % 1_000_000)
}

/// A fresh account store on `backend`, and the directory it lives in
/// (keep it for the test's length).
pub async fn open_store(backend: &Backend) -> (tempfile::TempDir, AccountStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = AccountStore::connect(&backend.url(dir.path()))
        .await
        .expect("connect");
    (dir, store)
}
