//! Accounts, their devices, pending codes, link codes and code-request
//! history in SQL.
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
//!
//! Devices follow the same rule with two more locks: an account's
//! `link_codes` row (by `user_id`) and its `accounts` row. Whoever takes
//! both takes the link code's first: making a code writes the code row
//! first; redeeming one locks the code row, then the account row (a no-op
//! update) before it counts and adds devices; re-registration deletes the
//! account's codes, then updates the account row, then replaces its
//! devices. One order everywhere, so PostgreSQL never deadlocks among them,
//! and a link and a re-registration of one account are serialised: the
//! re-registration sees (and removes) every device linked before it, and a
//! code made by a primary that was replaced since links nothing.
//! Unlinking and the inactivity sweep are single statements.

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

use parley_identity::Device;

use crate::seen::SeenThrottle;
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

/// The account's primary device and registration generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceRecord {
    pub device: DeviceId,
    pub generation: u64,
}

/// One device of an account, as the account's own devices see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    pub device: DeviceId,
    pub name: String,
    /// The device registered by SMS; the others are linked.
    pub primary: bool,
    /// Unix ms.
    pub created_at_ms: i64,
    /// Unix ms of its last session (to within an hour), or of its creation.
    pub last_seen_at_ms: i64,
}

/// The name the primary device gets: registration asks for none.
pub const PRIMARY_NAME: &str = "Phone";

/// The limits a link code is made and redeemed under.
#[derive(Clone, Copy, Debug)]
pub struct LinkPolicy {
    /// How long a code stays valid.
    pub ttl: Duration,
    /// Wrong secrets a code survives.
    pub max_attempts: u32,
    /// Devices per account, the primary included.
    pub max_devices: u32,
}

/// The answer to [`AccountStore::create_link_code`].
#[derive(Debug, PartialEq, Eq)]
pub enum LinkCodeRequest {
    /// Stored, replacing the account's previous code.
    Created,
    /// The asking device is not the account's primary; nothing changed.
    NotPrimary,
    /// The account has its most devices; nothing changed.
    DeviceLimit,
    /// Another account's live code has this id; draw another code.
    IdTaken,
}

/// The answer to [`AccountStore::redeem_link_code`].
#[derive(Debug, PartialEq, Eq)]
pub enum Redemption {
    /// No such code, or expired, used, killed by wrong secrets, made by a
    /// primary since replaced, or this attempt's secret was wrong (and
    /// counted).
    Invalid,
    /// The code is right but the account has its most devices; the code is
    /// left as it was, to be used once a device is unlinked.
    DeviceLimit,
    /// The device is committed and the code consumed.
    Linked(Link),
}

/// The device a link code made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Link {
    pub user: UserId,
    pub device: DeviceId,
    pub generation: u64,
}

/// The answer to [`AccountStore::unlink`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unlink {
    /// The device row is gone.
    Unlinked,
    /// Not a device of this account.
    NoSuchDevice,
    /// The primary cannot be unlinked (register the number elsewhere instead).
    PrimaryDevice,
    /// A linked device may unlink only itself.
    Forbidden,
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
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    pub user: UserId,
    pub device: DeviceId,
    pub generation: u64,
    /// The primary device this one replaced, if the number was already
    /// registered.
    pub replaced_device: Option<DeviceId>,
    /// The linked devices the re-registration removed, in link order.
    pub removed_linked: Vec<DeviceId>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

/// Cheap to clone: clones share one connection pool (and one last-seen
/// throttle).
#[derive(Clone, Debug)]
pub struct AccountStore {
    pool: AnyPool,
    backend: Backend,
    seen: std::sync::Arc<SeenThrottle>,
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
        Ok(Self {
            pool,
            backend,
            seen: std::sync::Arc::default(),
        })
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

    /// The account's primary device and registration generation, None if
    /// no such user.
    pub async fn device(&self, user: UserId) -> Result<Option<DeviceRecord>, StoreError> {
        let Some(user) = to_i64(user) else {
            return Ok(None);
        };
        let row = sqlx::query(
            "SELECT d.device_id, a.generation FROM accounts a \
             JOIN devices d ON d.user_id = a.user_id AND d.is_primary = 1 \
             WHERE a.user_id = $1",
        )
        .bind(user)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(DeviceRecord {
                device: to_u64(row.try_get(0)?, "devices.device_id")?,
                generation: to_u64(row.try_get(1)?, "accounts.generation")?,
            })
        })
        .transpose()
    }

    /// The generation a credential of `device` must carry, if `device` is
    /// one of `user`'s devices now.
    pub async fn credential(
        &self,
        user: UserId,
        device: DeviceId,
    ) -> Result<Option<u64>, StoreError> {
        let (Some(user), Some(device)) = (to_i64(user), to_i64(device)) else {
            return Ok(None);
        };
        let generation: Option<i64> = sqlx::query_scalar(
            "SELECT a.generation FROM devices d JOIN accounts a ON a.user_id = d.user_id \
             WHERE d.user_id = $1 AND d.device_id = $2",
        )
        .bind(user)
        .bind(device)
        .fetch_optional(&self.pool)
        .await?;
        generation
            .map(|g| to_u64(g, "accounts.generation"))
            .transpose()
    }

    /// The ids of `user`'s devices: the primary first, then the linked ones
    /// in the order they were linked. Empty for no such user.
    pub async fn device_ids(&self, user: UserId) -> Result<Vec<DeviceId>, StoreError> {
        let Some(user) = to_i64(user) else {
            return Ok(Vec::new());
        };
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT device_id FROM devices WHERE user_id = $1 \
             ORDER BY is_primary DESC, created_at, device_id",
        )
        .bind(user)
        .fetch_all(&self.pool)
        .await?;
        ids.into_iter()
            .map(|id| to_u64(id, "devices.device_id"))
            .collect()
    }

    /// `user`'s devices with their names and times, in the order of
    /// [`AccountStore::device_ids`].
    pub async fn devices(&self, user: UserId) -> Result<Vec<DeviceInfo>, StoreError> {
        let Some(user) = to_i64(user) else {
            return Ok(Vec::new());
        };
        let rows = sqlx::query(
            "SELECT device_id, name, is_primary, created_at, last_seen_at FROM devices \
             WHERE user_id = $1 ORDER BY is_primary DESC, created_at, device_id",
        )
        .bind(user)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(DeviceInfo {
                    device: to_u64(row.try_get(0)?, "devices.device_id")?,
                    name: row.try_get(1)?,
                    primary: flag(row.try_get(2)?)?,
                    created_at_ms: row.try_get(3)?,
                    last_seen_at_ms: row.try_get(4)?,
                })
            })
            .collect()
    }

    /// Every account's primary device, for upgrading a journal of the
    /// one-device release (whose mailboxes were keyed by user). Read once,
    /// at start, only when such a journal is found.
    pub async fn primary_devices(
        &self,
    ) -> Result<std::collections::HashMap<UserId, DeviceId>, StoreError> {
        let rows = sqlx::query("SELECT user_id, device_id FROM devices WHERE is_primary = 1")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    to_u64(row.try_get(0)?, "devices.user_id")?,
                    to_u64(row.try_get(1)?, "devices.device_id")?,
                ))
            })
            .collect()
    }

    pub async fn user_exists(&self, user: UserId) -> Result<bool, StoreError> {
        let Some(user) = to_i64(user) else {
            return Ok(false);
        };
        let found: Option<i64> =
            sqlx::query_scalar("SELECT user_id FROM accounts WHERE user_id = $1")
                .bind(user)
                .fetch_optional(&self.pool)
                .await?;
        Ok(found.is_some())
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

    /// Adds `count` linked devices to each of `users` without link codes, in
    /// one transaction per thousand users: the operator's bulk path for
    /// benchmarks (`parley provision --devices`). Never reachable over HTTP,
    /// and it does not check the device cap. Returns each user's new
    /// device ids, in link order.
    pub async fn provision_linked(
        &self,
        users: &[UserId],
        count: usize,
        now_ms: i64,
    ) -> Result<Vec<Vec<DeviceId>>, StoreError> {
        let mut out = Vec::with_capacity(users.len());
        for chunk in users.chunks(1000) {
            let mut tx = self.pool.begin().await?;
            for &user in chunk {
                let user = to_i64(user).ok_or(StoreError::Corrupt("user id out of range"))?;
                let (_, newest) = devices_in(&mut tx, user).await?;
                let mut devices = Vec::with_capacity(count);
                let mut taken = Vec::with_capacity(count);
                for n in 0..count {
                    // After the account's newest device: link order holds.
                    let at = newest.unwrap_or(now_ms).max(now_ms) + 1 + n as i64;
                    let name = format!("bench device {}", n + 2);
                    let device = insert_device_in(&mut tx, user, &name, false, at, &taken).await?;
                    taken.push(device);
                    devices.push(to_u64(device, "devices.device_id")?);
                }
                out.push(devices);
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

    /// Stores a link code for `user`'s account, replacing its previous one,
    /// if `device` is the account's primary and the account may have
    /// another device. Nothing changes unless the answer is
    /// [`LinkCodeRequest::Created`].
    pub async fn create_link_code(
        &self,
        user: UserId,
        device: DeviceId,
        code_id: &str,
        secret_hash: &[u8],
        now_ms: i64,
        policy: &LinkPolicy,
    ) -> Result<LinkCodeRequest, StoreError> {
        let (Some(user), Some(device)) = (to_i64(user), to_i64(device)) else {
            return Ok(LinkCodeRequest::NotPrimary);
        };
        let mut tx = self.pool.begin().await?;
        // Write first: the account's code row is its linking lock (module
        // docs). Rolled back below if the device may not make a code.
        let written = sqlx::query(
            "INSERT INTO link_codes \
             (code_id, user_id, created_by, secret_hash, expires_at, attempts_left, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (user_id) DO UPDATE SET code_id = excluded.code_id, \
             created_by = excluded.created_by, secret_hash = excluded.secret_hash, \
             expires_at = excluded.expires_at, attempts_left = excluded.attempts_left, \
             created_at = excluded.created_at",
        )
        .bind(code_id)
        .bind(user)
        .bind(device)
        .bind(secret_hash)
        .bind(now_ms.saturating_add(millis(policy.ttl)))
        .bind(i64::from(policy.max_attempts))
        .bind(now_ms)
        .execute(&mut *tx)
        .await;
        match written {
            Ok(_) => {}
            // The id of another account's code: an error that aborts the
            // PostgreSQL transaction, so the caller retries with a new code.
            Err(e) if is_unique_violation(&e) => {
                tx.rollback().await?;
                return Ok(LinkCodeRequest::IdTaken);
            }
            Err(e) => return Err(e.into()),
        }
        if !is_primary_in(&mut tx, user, device).await? {
            tx.rollback().await?;
            return Ok(LinkCodeRequest::NotPrimary);
        }
        if devices_in(&mut tx, user).await?.0 >= i64::from(policy.max_devices) {
            tx.rollback().await?;
            return Ok(LinkCodeRequest::DeviceLimit);
        }
        tx.commit().await?;
        Ok(LinkCodeRequest::Created)
    }

    /// Checks a link code (its id and the hash of its secret) and, if it is
    /// right and the account may have another device, consumes it and adds
    /// a linked device named `name` (random id, the account's generation),
    /// in one transaction. A wrong secret costs the code an attempt; the
    /// last one deletes it.
    pub async fn redeem_link_code(
        &self,
        code_id: &str,
        secret_hash: &[u8],
        name: &str,
        now_ms: i64,
        max_devices: u32,
    ) -> Result<Redemption, StoreError> {
        let mut tx = self.pool.begin().await?;
        // A no-op write, only to take the code's lock (see module docs); it
        // also tells whether the code exists at all.
        let locked =
            sqlx::query("UPDATE link_codes SET attempts_left = attempts_left WHERE code_id = $1")
                .bind(code_id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        if locked == 0 {
            tx.rollback().await?;
            return Ok(Redemption::Invalid);
        }
        let row = sqlx::query(
            "SELECT user_id, created_by, secret_hash, expires_at, attempts_left \
             FROM link_codes WHERE code_id = $1",
        )
        .bind(code_id)
        .fetch_one(&mut *tx)
        .await?;
        let user: i64 = row.try_get(0)?;
        let created_by: i64 = row.try_get(1)?;
        let stored_hash: Vec<u8> = row.try_get(2)?;
        let expires_at: i64 = row.try_get(3)?;
        let attempts_left: i64 = row.try_get(4)?;
        let delete_code = "DELETE FROM link_codes WHERE code_id = $1";

        if now_ms >= expires_at {
            sqlx::query(delete_code)
                .bind(code_id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            return Ok(Redemption::Invalid);
        }
        if !crate::code::hashes_match(&stored_hash, secret_hash) {
            let left = attempts_left.saturating_sub(1).max(0);
            if left == 0 {
                sqlx::query(delete_code)
                    .bind(code_id)
                    .execute(&mut *tx)
                    .await?;
            } else {
                sqlx::query("UPDATE link_codes SET attempts_left = $1 WHERE code_id = $2")
                    .bind(left)
                    .bind(code_id)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            return Ok(Redemption::Invalid);
        }

        // The account's lock, after the code's (module docs): from here no
        // re-registration of this account can run alongside.
        sqlx::query("UPDATE accounts SET generation = generation WHERE user_id = $1")
            .bind(user)
            .execute(&mut *tx)
            .await?;
        let generation: Option<i64> =
            sqlx::query_scalar("SELECT generation FROM accounts WHERE user_id = $1")
                .bind(user)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(generation) = generation else {
            return Err(StoreError::Corrupt("link code of no account"));
        };
        if !is_primary_in(&mut tx, user, created_by).await? {
            // Made by a primary that was replaced since: worthless.
            sqlx::query(delete_code)
                .bind(code_id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            return Ok(Redemption::Invalid);
        }
        let (count, newest) = devices_in(&mut tx, user).await?;
        if count >= i64::from(max_devices) {
            tx.rollback().await?;
            return Ok(Redemption::DeviceLimit);
        }
        sqlx::query(delete_code)
            .bind(code_id)
            .execute(&mut *tx)
            .await?;
        // Later than every device of the account, even within one
        // millisecond, so that `created_at` orders devices by link time.
        let created = now_ms.max(newest.map_or(i64::MIN, |t| t.saturating_add(1)));
        let device = insert_device_in(&mut tx, user, name, false, created, &[]).await?;
        tx.commit().await?;
        Ok(Redemption::Linked(Link {
            user: to_u64(user, "link_codes.user_id")?,
            device: to_u64(device, "devices.device_id")?,
            generation: to_u64(generation, "accounts.generation")?,
        }))
    }

    /// Removes `target` from `user`'s devices on the request of `by` (a
    /// device of the same account): the primary may unlink any linked
    /// device, a linked device only itself, and nobody the primary.
    pub async fn unlink(
        &self,
        user: UserId,
        by: DeviceId,
        target: DeviceId,
    ) -> Result<Unlink, StoreError> {
        let (Some(user), Some(by), Some(target)) = (to_i64(user), to_i64(by), to_i64(target))
        else {
            return Ok(Unlink::NoSuchDevice);
        };
        let rows = sqlx::query(
            "SELECT device_id, is_primary FROM devices \
             WHERE user_id = $1 AND device_id IN ($2, $3)",
        )
        .bind(user)
        .bind(by)
        .bind(target)
        .fetch_all(&self.pool)
        .await?;
        let mut target_primary = None;
        let mut by_primary = false;
        for row in &rows {
            let id: i64 = row.try_get(0)?;
            let primary = flag(row.try_get(1)?)?;
            if id == target {
                target_primary = Some(primary);
            }
            if id == by {
                by_primary = primary;
            }
        }
        match target_primary {
            None => return Ok(Unlink::NoSuchDevice),
            Some(true) => return Ok(Unlink::PrimaryDevice),
            Some(false) if !(by_primary || by == target) => return Ok(Unlink::Forbidden),
            Some(false) => {}
        }
        // One statement: a concurrent unlink or re-registration that got
        // there first leaves nothing to delete, which is "no such device".
        let deleted = sqlx::query(
            "DELETE FROM devices WHERE user_id = $1 AND device_id = $2 AND is_primary = 0",
        )
        .bind(user)
        .bind(target)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(if deleted == 1 {
            Unlink::Unlinked
        } else {
            Unlink::NoSuchDevice
        })
    }

    /// Up to `limit` linked devices not seen since `seen_before_ms`, least
    /// recently seen first. Primaries are never listed.
    pub async fn inactive_devices(
        &self,
        seen_before_ms: i64,
        limit: u32,
    ) -> Result<Vec<Device>, StoreError> {
        let rows = sqlx::query(
            "SELECT user_id, device_id FROM devices \
             WHERE is_primary = 0 AND last_seen_at < $1 \
             ORDER BY last_seen_at LIMIT $2",
        )
        .bind(seen_before_ms)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Device::new(
                    to_u64(row.try_get(0)?, "devices.user_id")?,
                    to_u64(row.try_get(1)?, "devices.device_id")?,
                ))
            })
            .collect()
    }

    /// Unlinks `device` if it is a linked device still not seen since
    /// `seen_before_ms` (it may have connected since it was listed).
    pub async fn unlink_if_inactive(
        &self,
        device: Device,
        seen_before_ms: i64,
    ) -> Result<bool, StoreError> {
        let (Some(user), Some(id)) = (to_i64(device.user), to_i64(device.device)) else {
            return Ok(false);
        };
        let deleted = sqlx::query(
            "DELETE FROM devices WHERE user_id = $1 AND device_id = $2 \
             AND is_primary = 0 AND last_seen_at < $3",
        )
        .bind(user)
        .bind(id)
        .bind(seen_before_ms)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(deleted == 1)
    }

    /// Records that `device` of `user` had a session at `now_ms`, at most
    /// once an hour per device and a few writes at a time (see
    /// [`crate::seen`]). `Ok(true)` if a row was written.
    pub async fn mark_seen(
        &self,
        user: UserId,
        device: DeviceId,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let (Some(user_i), Some(device_i)) = (to_i64(user), to_i64(device)) else {
            return Ok(false);
        };
        let key = Device::new(user, device);
        let Some(_permit) = self.seen.claim(key, now_ms) else {
            return Ok(false);
        };
        // Never moves back: a late report does not undo a newer one.
        let written = sqlx::query(
            "UPDATE devices SET last_seen_at = $1 \
             WHERE user_id = $2 AND device_id = $3 AND last_seen_at < $1",
        )
        .bind(now_ms)
        .bind(user_i)
        .bind(device_i)
        .execute(&self.pool)
        .await;
        match written {
            Ok(done) => Ok(done.rows_affected() == 1),
            Err(e) => {
                self.seen.failed(key);
                Err(e.into())
            }
        }
    }

    /// `device`'s push target, unless it has none or its token is dead.
    pub async fn push_target(
        &self,
        device: Device,
    ) -> Result<Option<parley_push::Target>, StoreError> {
        let (Some(user), Some(id)) = (to_i64(device.user), to_i64(device.device)) else {
            return Ok(None);
        };
        let row = sqlx::query(
            "SELECT platform, token, endpoint FROM push_tokens \
             WHERE user_id = $1 AND device_id = $2 AND dead = 0",
        )
        .bind(user)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            let platform: String = row.try_get(0)?;
            Ok(parley_push::Target {
                platform: parley_push::Platform::parse(&platform)
                    .ok_or(StoreError::Corrupt("push_tokens.platform"))?,
                token: row.try_get(1)?,
                endpoint: row.try_get(2)?,
            })
        })
        .transpose()
    }

    /// The endpoint stored for `token` of `platform` on any device, else
    /// `device`'s endpoint for `platform`.
    pub async fn known_push_endpoint(
        &self,
        device: Device,
        platform: parley_push::Platform,
        token: &str,
    ) -> Result<Option<String>, StoreError> {
        let (user, id) = (
            to_i64(device.user).unwrap_or(0),
            to_i64(device.device).unwrap_or(0),
        );
        // The token's own row sorts first.
        let endpoint: Option<String> = sqlx::query_scalar(
            "SELECT endpoint FROM push_tokens WHERE platform = $1 \
             AND (token = $2 OR (user_id = $3 AND device_id = $4)) \
             ORDER BY CASE WHEN token = $2 THEN 0 ELSE 1 END LIMIT 1",
        )
        .bind(platform.as_str())
        .bind(token)
        .bind(user)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(endpoint)
    }

    /// Makes `target` `device`'s live push target, taking its token from
    /// any other device. `Ok(false)`: no such device.
    pub async fn save_push_target(
        &self,
        device: Device,
        target: &parley_push::Target,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let (Some(user), Some(id)) = (to_i64(device.user), to_i64(device.device)) else {
            return Ok(false);
        };
        let platform = target.platform.as_str();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "DELETE FROM push_tokens WHERE platform = $1 AND token = $2 \
             AND NOT (user_id = $3 AND device_id = $4)",
        )
        .bind(platform)
        .bind(&target.token)
        .bind(user)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        // From the devices row, so that a device unlinked meanwhile gets
        // no row (and the answer says so).
        let saved = sqlx::query(
            "INSERT INTO push_tokens \
             (user_id, device_id, platform, token, endpoint, dead, updated_at) \
             SELECT user_id, device_id, $3, $4, $5, 0, $6 FROM devices \
             WHERE user_id = $1 AND device_id = $2 \
             ON CONFLICT (user_id, device_id) DO UPDATE SET \
             platform = excluded.platform, token = excluded.token, \
             endpoint = excluded.endpoint, dead = 0, updated_at = excluded.updated_at",
        )
        .bind(user)
        .bind(id)
        .bind(platform)
        .bind(&target.token)
        .bind(&target.endpoint)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(saved == 1)
    }

    /// Forgets `device`'s push token. `Ok(false)`: it had none.
    pub async fn clear_push_target(&self, device: Device) -> Result<bool, StoreError> {
        let (Some(user), Some(id)) = (to_i64(device.user), to_i64(device.device)) else {
            return Ok(false);
        };
        let deleted = sqlx::query("DELETE FROM push_tokens WHERE user_id = $1 AND device_id = $2")
            .bind(user)
            .bind(id)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(deleted == 1)
    }

    /// Marks `device`'s token dead if it is still `target` (a token
    /// registered since the failed push stays live).
    pub async fn mark_push_dead(
        &self,
        device: Device,
        target: &parley_push::Target,
    ) -> Result<bool, StoreError> {
        let (Some(user), Some(id)) = (to_i64(device.user), to_i64(device.device)) else {
            return Ok(false);
        };
        let marked = sqlx::query(
            "UPDATE push_tokens SET dead = 1 WHERE user_id = $1 AND device_id = $2 \
             AND platform = $3 AND token = $4 AND endpoint = $5 AND dead = 0",
        )
        .bind(user)
        .bind(id)
        .bind(target.platform.as_str())
        .bind(&target.token)
        .bind(&target.endpoint)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(marked == 1)
    }

    /// Deletes code-request history older than the 24-hour window, codes
    /// that expired more than a day ago and expired link codes; returns the
    /// number of rows deleted.
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
        // Expired link codes answer like unknown ones: nothing to keep.
        let link_codes = sqlx::query("DELETE FROM link_codes WHERE expires_at <= $1")
            .bind(now_ms)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(history + codes + link_codes)
    }
}

/// A stored 0/1 flag.
fn flag(v: i64) -> Result<bool, StoreError> {
    match v {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(StoreError::Corrupt("devices.is_primary")),
    }
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|e| e.is_unique_violation())
}

async fn is_primary_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    user: i64,
    device: i64,
) -> Result<bool, StoreError> {
    let primary: Option<i64> =
        sqlx::query_scalar("SELECT is_primary FROM devices WHERE user_id = $1 AND device_id = $2")
            .bind(user)
            .bind(device)
            .fetch_optional(&mut **tx)
            .await?;
    primary.map_or(Ok(false), flag)
}

/// How many devices `user` has, and the newest one's `created_at`.
async fn devices_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    user: i64,
) -> Result<(i64, Option<i64>), StoreError> {
    let row = sqlx::query("SELECT COUNT(*), MAX(created_at) FROM devices WHERE user_id = $1")
        .bind(user)
        .fetch_one(&mut **tx)
        .await?;
    Ok((row.try_get(0)?, row.try_get(1)?))
}

/// Adds a device with a new random id (none of `avoid`) to `user` inside
/// `tx`; returns its id.
async fn insert_device_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    user: i64,
    name: &str,
    primary: bool,
    now_ms: i64,
    avoid: &[i64],
) -> Result<i64, StoreError> {
    for _ in 0..ID_ATTEMPTS {
        let device = random_id();
        if avoid.contains(&device) {
            continue;
        }
        // DO NOTHING rather than an error, which would abort the whole
        // PostgreSQL transaction and forbid the retry.
        let inserted = sqlx::query(
            "INSERT INTO devices \
             (user_id, device_id, name, is_primary, created_at, last_seen_at) \
             VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (user_id, device_id) DO NOTHING",
        )
        .bind(user)
        .bind(device)
        .bind(name)
        .bind(i64::from(primary))
        .bind(now_ms)
        .execute(&mut **tx)
        .await?
        .rows_affected();
        if inserted == 1 {
            return Ok(device);
        }
    }
    Err(StoreError::IdExhausted)
}

/// Registers `phone` inside `tx`: a new account with its primary device,
/// or, for a number that has one, a new generation of the same user whose
/// only device is a new primary: every old device and the account's link
/// code are removed. The caller holds whatever lock makes this number's
/// registration exclusive; the account's own locks are taken in the order
/// of the module docs.
async fn register_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    phone: &str,
    now_ms: i64,
) -> Result<Registration, StoreError> {
    let existing = sqlx::query("SELECT user_id, generation FROM accounts WHERE phone = $1")
        .bind(phone)
        .fetch_optional(&mut **tx)
        .await?;
    let registration = match existing {
        Some(row) => {
            let user: i64 = row.try_get(0)?;
            let generation: i64 = row.try_get(1)?;
            let new_generation = generation
                .checked_add(1)
                .ok_or(StoreError::Corrupt("accounts.generation overflows"))?;
            sqlx::query("DELETE FROM link_codes WHERE user_id = $1")
                .bind(user)
                .execute(&mut **tx)
                .await?;
            let updated = sqlx::query(
                "UPDATE accounts SET generation = $1, updated_at = $2 \
                     WHERE user_id = $3 AND generation = $4",
            )
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
            // Read under the account's lock: no link can add a device now.
            let rows = sqlx::query(
                "SELECT device_id, is_primary FROM devices WHERE user_id = $1 \
                 ORDER BY is_primary DESC, created_at, device_id",
            )
            .bind(user)
            .fetch_all(&mut **tx)
            .await?;
            let mut old_primary = None;
            let mut old = Vec::with_capacity(rows.len());
            let mut removed_linked = Vec::new();
            for row in &rows {
                let id: i64 = row.try_get(0)?;
                old.push(id);
                if flag(row.try_get(1)?)? {
                    old_primary = Some(to_u64(id, "devices.device_id")?);
                } else {
                    removed_linked.push(to_u64(id, "devices.device_id")?);
                }
            }
            sqlx::query("DELETE FROM devices WHERE user_id = $1")
                .bind(user)
                .execute(&mut **tx)
                .await?;
            // A different id from every old one, so that nothing keyed by an
            // old device (a live session, a mailbox) can be mistaken for it.
            let device = insert_device_in(tx, user, PRIMARY_NAME, true, now_ms, &old).await?;
            Registration {
                user: to_u64(user, "accounts.user_id")?,
                device: to_u64(device, "devices.device_id")?,
                generation: to_u64(new_generation, "accounts.generation")?,
                replaced_device: old_primary,
                removed_linked,
            }
        }
        None => {
            let mut created = None;
            for _ in 0..ID_ATTEMPTS {
                let user = random_id();
                // DO NOTHING rather than an error, because an error would
                // abort the whole PostgreSQL transaction and forbid the retry.
                let inserted = sqlx::query(
                    "INSERT INTO accounts (user_id, phone, generation, created_at, updated_at) \
                         VALUES ($1, $2, 1, $3, $3) ON CONFLICT (user_id) DO NOTHING",
                )
                .bind(user)
                .bind(phone)
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
            let device = insert_device_in(tx, user, PRIMARY_NAME, true, now_ms, &[]).await?;
            Registration {
                user: to_u64(user, "accounts.user_id")?,
                device: to_u64(device, "devices.device_id")?,
                generation: 1,
                replaced_device: None,
                removed_linked: Vec::new(),
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
const SQLITE_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../migrations/sqlite/0001_init.sql"),
    ),
    (
        2,
        "devices",
        include_str!("../migrations/sqlite/0002_devices.sql"),
    ),
    (
        3,
        "push_tokens",
        include_str!("../migrations/sqlite/0003_push_tokens.sql"),
    ),
];
const POSTGRES_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../migrations/postgres/0001_init.sql"),
    ),
    (
        2,
        "devices",
        include_str!("../migrations/postgres/0002_devices.sql"),
    ),
    (
        3,
        "push_tokens",
        include_str!("../migrations/postgres/0003_push_tokens.sql"),
    ),
];

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
