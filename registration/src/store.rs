//! Accounts, pending codes and code-request history in SQL.
//!
//! One set of portable queries serves SQLite and PostgreSQL through sqlx's
//! `Any` driver: `$N` placeholders, integers as BIGINT/`i64`, times as `i64`
//! unix milliseconds passed in by the caller (never `now()` in SQL, which
//! differs per backend and would make the limits untestable), and upserts as
//! `INSERT .. ON CONFLICT .. DO UPDATE`, which both backends accept.
//!
//! Concurrency: everything that reads then writes the state of one phone
//! number runs in a transaction whose first statement writes that number's
//! `pending_codes` row. On PostgreSQL that takes the row lock, so a second
//! request or verification for the same number waits for the first to commit
//! and then sees its effects; on SQLite the first write takes the database
//! write lock (waiting up to `busy_timeout`), which serialises the same way
//! and avoids the "read lock cannot be upgraded" busy error of read-first
//! transactions. That is what makes the code limits hold across processes.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;
use rand::rngs::OsRng;
use sqlx::any::AnyPoolOptions;
use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::{AnyConnection, AnyPool, Executor, Row};

use crate::{DeviceId, UserId};

/// The rolling window of the per-day code limit. Fixed by the API contract
/// ("per rolling 24 h"), and the age after which history rows are pruned.
pub const CODE_WINDOW: Duration = Duration::from_secs(24 * 60 * 60);

/// How long an expired code is kept (answering `CODE_EXPIRED` rather than
/// `NO_PENDING_CODE`) before pruning removes it.
const EXPIRED_CODE_KEPT: Duration = CODE_WINDOW;

/// Connections per pool. SQLite has one writer at a time anyway and WAL
/// readers are cheap; PostgreSQL connections cost server memory, and a
/// fleet of nodes multiplies this number.
const SQLITE_MAX_CONNECTIONS: u32 = 8;
const POSTGRES_MAX_CONNECTIONS: u32 = 16;

/// How long a query waits for a free pooled connection before failing with
/// a store error (an HTTP 500), instead of queueing without bound.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long SQLite waits for another connection's write lock.
const SQLITE_BUSY_TIMEOUT_MS: u32 = 5_000;

/// Phone numbers per `IN (..)` list in [`AccountStore::lookup`], well below
/// SQLite's 32766 and PostgreSQL's 65535 bind parameters per statement.
const LOOKUP_CHUNK: usize = 500;

/// Random ids collide with probability ~n/2^63; retrying a few times turns
/// "astronomically unlikely" into "never" without looping forever on a bug.
const ID_ATTEMPTS: u32 = 8;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL's scheme is neither `sqlite:` nor `postgres:`/`postgresql:`.
    /// The URL itself is not included: it may carry a password.
    #[error("unsupported database URL (expected sqlite:// or postgres://)")]
    UnsupportedUrl,
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A row holds a value the application never writes.
    #[error("unexpected data in the store: {0}")]
    Corrupt(&'static str),
    #[error("no free random id after {ID_ATTEMPTS} attempts")]
    IdExhausted,
    /// SQLite takes its backup target as text.
    #[error("the backup path {0} is not valid UTF-8")]
    BackupPath(std::path::PathBuf),
}

/// The account's current device and registration generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceRecord {
    pub device: DeviceId,
    pub generation: u64,
}

/// The limits a code request is checked against.
#[derive(Clone, Copy, Debug)]
pub struct CodePolicy {
    /// How long a code stays valid.
    pub ttl: Duration,
    /// Minimum time between two codes for one number.
    pub interval: Duration,
    /// Codes per number per rolling [`CODE_WINDOW`].
    pub per_day: u32,
    /// Wrong guesses a code survives.
    pub max_attempts: u32,
}

/// The answer to [`AccountStore::request_code`].
#[derive(Debug, PartialEq, Eq)]
pub enum CodeRequest {
    /// The code is stored and counted; send it, or hand the ticket back to
    /// [`AccountStore::cancel_code_request`] if sending fails.
    Granted(CodeTicket),
    /// Over a limit; nothing was changed.
    Limited { retry_after: Duration },
}

/// Identifies one granted code request, for cancelling it.
#[derive(Debug, PartialEq, Eq)]
pub struct CodeTicket {
    request_id: i64,
}

/// The answer to [`AccountStore::verify_code`].
#[derive(Debug, PartialEq, Eq)]
pub enum CodeCheck {
    /// Never requested, already used, or killed by wrong guesses.
    NoPendingCode,
    Expired,
    /// The guess was wrong; at 0 the code has been deleted.
    Wrong {
        attempts_left: u32,
    },
    /// The code was right and has been consumed; the account is committed.
    Registered(Registration),
}

/// The device a successful verification created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Registration {
    pub user: UserId,
    pub device: DeviceId,
    pub generation: u64,
    /// The device this one replaced, if the number was already registered.
    pub replaced_device: Option<DeviceId>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

/// Cheap to clone: clones share one connection pool.
#[derive(Clone, Debug)]
pub struct AccountStore {
    pool: AnyPool,
    backend: Backend,
}

/// Current time as the store's timestamps: unix milliseconds.
pub fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn random_id() -> i64 {
    OsRng.gen_range(1..=i64::MAX)
}

/// Ids and generations are stored as BIGINT but are positive by construction.
fn to_u64(v: i64, what: &'static str) -> Result<u64, StoreError> {
    u64::try_from(v)
        .ok()
        .filter(|v| *v > 0)
        .ok_or(StoreError::Corrupt(what))
}

/// Our ids are in `1..=i64::MAX`; anything else names no row.
fn to_i64(v: u64) -> Option<i64> {
    i64::try_from(v).ok().filter(|v| *v > 0)
}

impl AccountStore {
    /// `"sqlite://<path>?mode=rwc"` or `"postgres://..."`. Installs sqlx's
    /// `Any` drivers, connects, runs the migrations for that backend. SQLite
    /// connections get WAL journaling, a busy timeout and foreign keys.
    pub async fn connect(database_url: &str) -> Result<Self, StoreError> {
        let backend = if database_url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if database_url.starts_with("postgres:") || database_url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(StoreError::UnsupportedUrl);
        };
        sqlx::any::install_default_drivers();

        let options = AnyPoolOptions::new().acquire_timeout(ACQUIRE_TIMEOUT);
        let pool = match backend {
            Backend::Sqlite => {
                options
                    .max_connections(SQLITE_MAX_CONNECTIONS)
                    // Per-connection settings, so set on every new connection.
                    .after_connect(|conn, _meta| {
                        Box::pin(async move { sqlite_pragmas(conn).await })
                    })
                    .connect(database_url)
                    .await?
            }
            Backend::Postgres => {
                options
                    .max_connections(POSTGRES_MAX_CONNECTIONS)
                    .connect(database_url)
                    .await?
            }
        };
        if backend == Backend::Sqlite {
            // WAL lets readers (token checks, lookups) proceed while a code
            // request writes. The mode is stored in the database file, so
            // once is enough.
            pool.execute("PRAGMA journal_mode = WAL").await?;
        }
        migrator(backend).await?.run(&pool).await?;
        Ok(Self { pool, backend })
    }

    /// Writes a consistent copy of a SQLite store to `path` (a new file)
    /// while it keeps serving (`VACUUM INTO`: one read transaction, so the
    /// copy is the database as of one instant). `Ok(false)` for PostgreSQL,
    /// whose backups are the database server's business (`pg_dump`, or the
    /// provider's snapshots).
    pub async fn backup_to(&self, path: &std::path::Path) -> Result<bool, StoreError> {
        if self.backend != Backend::Sqlite {
            return Ok(false);
        }
        let path = path
            .to_str()
            .ok_or_else(|| StoreError::BackupPath(path.to_owned()))?;
        sqlx::query("VACUUM INTO $1")
            .bind(path.to_owned())
            .execute(&self.pool)
            .await?;
        Ok(true)
    }

    /// Closes the pool's connections, waiting for checked-out ones.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// The account's current device and registration generation, None if no
    /// such user.
    pub async fn device(&self, user: UserId) -> Result<Option<DeviceRecord>, StoreError> {
        let Some(user) = to_i64(user) else {
            return Ok(None);
        };
        let row = sqlx::query("SELECT device_id, generation FROM accounts WHERE user_id = $1")
            .bind(user)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| {
            Ok(DeviceRecord {
                device: to_u64(row.try_get(0)?, "accounts.device_id")?,
                generation: to_u64(row.try_get(1)?, "accounts.generation")?,
            })
        })
        .transpose()
    }

    pub async fn user_exists(&self, user: UserId) -> Result<bool, StoreError> {
        Ok(self.device(user).await?.is_some())
    }

    /// Stores a new code for `phone` (replacing any pending one) if the
    /// number is within its limits, and counts it. Nothing changes when the
    /// answer is [`CodeRequest::Limited`].
    pub async fn request_code(
        &self,
        phone: &str,
        code_hash: &[u8],
        now_ms: i64,
        policy: &CodePolicy,
    ) -> Result<CodeRequest, StoreError> {
        let mut tx = self.pool.begin().await?;
        // Write first: this is the per-number lock (see the module docs).
        // Rolled back below if the number is over a limit.
        sqlx::query(
            "INSERT INTO pending_codes (phone, code_hash, expires_at, attempts_left, created_at) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (phone) DO UPDATE SET code_hash = excluded.code_hash, \
             expires_at = excluded.expires_at, attempts_left = excluded.attempts_left, \
             created_at = excluded.created_at",
        )
        .bind(phone)
        .bind(code_hash)
        .bind(now_ms.saturating_add(millis(policy.ttl)))
        .bind(i64::from(policy.max_attempts))
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;

        // The newest `per_day` requests inside the window are all the limits
        // need: the newest for the interval, the oldest of them for the day.
        let window_start = now_ms.saturating_sub(millis(CODE_WINDOW));
        let recent: Vec<i64> = sqlx::query_scalar(
            "SELECT requested_at FROM code_requests WHERE phone = $1 AND requested_at > $2 \
             ORDER BY requested_at DESC LIMIT $3",
        )
        .bind(phone)
        .bind(window_start)
        .bind(i64::from(policy.per_day.max(1)))
        .fetch_all(&mut *tx)
        .await?;

        let mut wait_ms: i64 = 0;
        if policy.per_day == 0 {
            wait_ms = millis(CODE_WINDOW);
        }
        if let Some(&newest) = recent.first() {
            wait_ms = wait_ms.max(newest.saturating_add(millis(policy.interval)) - now_ms);
        }
        if policy.per_day > 0
            && recent.len() >= policy.per_day as usize
            && let Some(&oldest) = recent.last()
        {
            wait_ms = wait_ms.max(oldest.saturating_add(millis(CODE_WINDOW)) - now_ms);
        }
        if wait_ms > 0 {
            tx.rollback().await?;
            return Ok(CodeRequest::Limited {
                retry_after: Duration::from_millis(wait_ms.unsigned_abs()),
            });
        }

        // RETURNING is accepted by both backends (SQLite since 3.35); the
        // ids come from each backend's own integer key sequence.
        let request_id: i64 = sqlx::query_scalar(
            "INSERT INTO code_requests (phone, requested_at) VALUES ($1, $2) RETURNING id",
        )
        .bind(phone)
        .bind(now_ms)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(CodeRequest::Granted(CodeTicket { request_id }))
    }

    /// Undoes a granted request whose code could not be sent: it no longer
    /// counts against the limits, and the code is removed unless a newer
    /// request has replaced it since.
    pub async fn cancel_code_request(
        &self,
        phone: &str,
        ticket: CodeTicket,
        code_hash: &[u8],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM pending_codes WHERE phone = $1 AND code_hash = $2")
            .bind(phone)
            .bind(code_hash)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM code_requests WHERE id = $1 AND phone = $2")
            .bind(ticket.request_id)
            .bind(phone)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Checks a guess against the pending code of `phone`. A right guess
    /// consumes the code and, in the same transaction, creates the account
    /// (random user id, random device id, generation 1) or replaces its
    /// device (same user id, new random device id, generation + 1).
    pub async fn verify_code(
        &self,
        phone: &str,
        candidate_hash: &[u8],
        now_ms: i64,
    ) -> Result<CodeCheck, StoreError> {
        let mut tx = self.pool.begin().await?;
        // A no-op write, only to take the per-number lock (see module docs);
        // it also tells whether a code is pending at all.
        let locked =
            sqlx::query("UPDATE pending_codes SET attempts_left = attempts_left WHERE phone = $1")
                .bind(phone)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        if locked == 0 {
            tx.rollback().await?;
            return Ok(CodeCheck::NoPendingCode);
        }
        let row = sqlx::query(
            "SELECT code_hash, expires_at, attempts_left FROM pending_codes WHERE phone = $1",
        )
        .bind(phone)
        .fetch_one(&mut *tx)
        .await?;
        let stored_hash: Vec<u8> = row.try_get(0)?;
        let expires_at: i64 = row.try_get(1)?;
        let attempts_left: i64 = row.try_get(2)?;

        if now_ms >= expires_at {
            // Kept (until pruned) so that further tries keep saying "expired".
            tx.rollback().await?;
            return Ok(CodeCheck::Expired);
        }
        if !crate::code::hashes_match(&stored_hash, candidate_hash) {
            let left = attempts_left.saturating_sub(1).max(0);
            if left == 0 {
                sqlx::query("DELETE FROM pending_codes WHERE phone = $1")
                    .bind(phone)
                    .execute(&mut *tx)
                    .await?;
            } else {
                sqlx::query("UPDATE pending_codes SET attempts_left = $1 WHERE phone = $2")
                    .bind(left)
                    .bind(phone)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            return Ok(CodeCheck::Wrong {
                attempts_left: u32::try_from(left).unwrap_or(u32::MAX),
            });
        }

        sqlx::query("DELETE FROM pending_codes WHERE phone = $1")
            .bind(phone)
            .execute(&mut *tx)
            .await?;
        let registration = register_in(&mut tx, phone, now_ms).await?;
        tx.commit().await?;
        Ok(CodeCheck::Registered(registration))
    }

    /// Registers numbers without SMS codes, in one transaction per
    /// thousand: the operator's bulk path for benchmarks and imports (`parley
    /// provision`). Never reachable over HTTP. Numbers that have an account
    /// are re-registered, exactly as by a verified code.
    pub async fn provision_many(
        &self,
        phones: &[String],
        now_ms: i64,
    ) -> Result<Vec<Registration>, StoreError> {
        let mut out = Vec::with_capacity(phones.len());
        for chunk in phones.chunks(1000) {
            let mut tx = self.pool.begin().await?;
            for phone in chunk {
                out.push(register_in(&mut tx, phone, now_ms).await?);
            }
            tx.commit().await?;
        }
        Ok(out)
    }

    /// The registered ones among `phones`, as (phone, user id), each once.
    pub async fn lookup(&self, phones: &[&str]) -> Result<Vec<(String, UserId)>, StoreError> {
        let mut found = Vec::new();
        for chunk in phones.chunks(LOOKUP_CHUNK) {
            let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT phone, user_id FROM accounts WHERE phone IN ({})",
                placeholders.join(", ")
            );
            let mut query = sqlx::query(&sql);
            for phone in chunk {
                query = query.bind(*phone);
            }
            for row in query.fetch_all(&self.pool).await? {
                let phone: String = row.try_get(0)?;
                let user = to_u64(row.try_get(1)?, "accounts.user_id")?;
                found.push((phone, user));
            }
        }
        Ok(found)
    }

    /// Deletes code-request history older than the 24-hour window and codes
    /// that expired more than a day ago; returns the number of rows deleted.
    ///
    /// Each delete is its own statement touching only rows no request or
    /// verification transaction writes, so it cannot deadlock with them.
    pub async fn prune(&self, now_ms: i64) -> Result<u64, StoreError> {
        let history = sqlx::query("DELETE FROM code_requests WHERE requested_at <= $1")
            .bind(now_ms.saturating_sub(millis(CODE_WINDOW)))
            .execute(&self.pool)
            .await?
            .rows_affected();
        let codes = sqlx::query("DELETE FROM pending_codes WHERE expires_at <= $1")
            .bind(now_ms.saturating_sub(millis(EXPIRED_CODE_KEPT)))
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(history + codes)
    }
}

/// Registers `phone` inside `tx`: a new account, or, for a number that has
/// one, a new device and generation of the same user. The caller holds
/// whatever lock makes this number's registration exclusive.
async fn register_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    phone: &str,
    now_ms: i64,
) -> Result<Registration, StoreError> {
    let existing =
        sqlx::query("SELECT user_id, device_id, generation FROM accounts WHERE phone = $1")
            .bind(phone)
            .fetch_optional(&mut **tx)
            .await?;
    let registration = match existing {
        Some(row) => {
            let user: i64 = row.try_get(0)?;
            let old_device: i64 = row.try_get(1)?;
            let generation: i64 = row.try_get(2)?;
            let new_generation = generation
                .checked_add(1)
                .ok_or(StoreError::Corrupt("accounts.generation overflows"))?;
            // A different id, so nothing keyed by the old device (a
            // live session, a mailbox) can be mistaken for the new one.
            let device = loop {
                let id = random_id();
                if id != old_device {
                    break id;
                }
            };
            let updated = sqlx::query(
                "UPDATE accounts SET device_id = $1, generation = $2, updated_at = $3 \
                     WHERE user_id = $4 AND generation = $5",
            )
            .bind(device)
            .bind(new_generation)
            .bind(now_ms)
            .bind(user)
            .bind(generation)
            .execute(&mut **tx)
            .await?
            .rows_affected();
            if updated != 1 {
                // Cannot happen while we hold the number's lock.
                return Err(StoreError::Corrupt(
                    "account changed during re-registration",
                ));
            }
            Registration {
                user: to_u64(user, "accounts.user_id")?,
                device: to_u64(device, "accounts.device_id")?,
                generation: to_u64(new_generation, "accounts.generation")?,
                replaced_device: Some(to_u64(old_device, "accounts.device_id")?),
            }
        }
        None => {
            let device = random_id();
            let mut created = None;
            for _ in 0..ID_ATTEMPTS {
                let user = random_id();
                // DO NOTHING rather than an error, because an error would
                // abort the whole PostgreSQL transaction and forbid the retry.
                let inserted = sqlx::query(
                    "INSERT INTO accounts \
                         (user_id, phone, device_id, generation, created_at, updated_at) \
                         VALUES ($1, $2, $3, 1, $4, $4) ON CONFLICT (user_id) DO NOTHING",
                )
                .bind(user)
                .bind(phone)
                .bind(device)
                .bind(now_ms)
                .execute(&mut **tx)
                .await?
                .rows_affected();
                if inserted == 1 {
                    created = Some(user);
                    break;
                }
            }
            let user = created.ok_or(StoreError::IdExhausted)?;
            Registration {
                user: to_u64(user, "accounts.user_id")?,
                device: to_u64(device, "accounts.device_id")?,
                generation: 1,
                replaced_device: None,
            }
        }
    };
    Ok(registration)
}

async fn sqlite_pragmas(conn: &mut AnyConnection) -> Result<(), sqlx::Error> {
    conn.execute(format!("PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}").as_str())
        .await?;
    conn.execute("PRAGMA foreign_keys = ON").await?;
    Ok(())
}

/// The migrations of each backend, embedded in the binary. Every file in
/// `migrations/<backend>/` must be listed here (a test checks it). Listed by
/// hand rather than with `sqlx::migrate!`, which needs sqlx's `macros`
/// feature and with it a second, host-side build of the sqlx drivers.
const SQLITE_MIGRATIONS: &[(i64, &str, &str)] = &[(
    1,
    "init",
    include_str!("../migrations/sqlite/0001_init.sql"),
)];
const POSTGRES_MIGRATIONS: &[(i64, &str, &str)] = &[(
    1,
    "init",
    include_str!("../migrations/postgres/0001_init.sql"),
)];

#[derive(Debug)]
struct Embedded(&'static [(i64, &'static str, &'static str)]);

impl MigrationSource<'static> for Embedded {
    fn resolve(
        self,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Migration>, BoxDynError>> + Send + 'static>> {
        Box::pin(async move {
            Ok(self
                .0
                .iter()
                .map(|&(version, description, sql)| {
                    Migration::new(
                        version,
                        Cow::Borrowed(description),
                        MigrationType::Simple,
                        Cow::Borrowed(sql),
                        false,
                    )
                })
                .collect())
        })
    }
}

async fn migrator(backend: Backend) -> Result<Migrator, StoreError> {
    let source = match backend {
        Backend::Sqlite => Embedded(SQLITE_MIGRATIONS),
        Backend::Postgres => Embedded(POSTGRES_MIGRATIONS),
    };
    Ok(Migrator::new(source).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hand-written lists above must match the files on disk, or a new
    /// migration would silently never run.
    #[test]
    fn every_migration_file_is_embedded() {
        for (dir, list) in [
            ("sqlite", SQLITE_MIGRATIONS),
            ("postgres", POSTGRES_MIGRATIONS),
        ] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("migrations")
                .join(dir);
            let mut files: Vec<(i64, String, String)> = std::fs::read_dir(&path)
                .expect("migrations dir")
                .map(|e| {
                    let e = e.expect("entry");
                    let name = e.file_name().into_string().expect("utf-8 name");
                    let stem = name.strip_suffix(".sql").expect(".sql file");
                    let (version, description) = stem.split_once('_').expect("<version>_<name>");
                    (
                        version.parse().expect("numeric version"),
                        description.to_owned(),
                        std::fs::read_to_string(e.path()).expect("read"),
                    )
                })
                .collect();
            files.sort();
            let embedded: Vec<(i64, String, String)> = list
                .iter()
                .map(|&(v, d, s)| (v, d.to_owned(), s.to_owned()))
                .collect();
            assert_eq!(files, embedded, "migrations/{dir}");
        }
    }

    #[test]
    fn id_conversions() {
        assert_eq!(to_i64(0), None);
        assert_eq!(to_i64(u64::MAX), None);
        assert_eq!(to_i64(5), Some(5));
        assert!(to_u64(0, "x").is_err());
        assert!(to_u64(-1, "x").is_err());
        assert_eq!(to_u64(5, "x").ok(), Some(5));
    }

    #[tokio::test]
    async fn rejects_unknown_url_schemes() {
        assert!(matches!(
            AccountStore::connect("mysql://localhost/x").await,
            Err(StoreError::UnsupportedUrl)
        ));
    }
}
