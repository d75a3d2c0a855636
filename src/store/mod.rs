//! The store: SQLite (embedded default) or PostgreSQL behind one type.
//!
//! Both backends run the same SQL text (`$n` placeholders work on SQLite
//! too); `on_db!` type-checks each body once per backend. Instants are UTC
//! epoch milliseconds. Nothing outside this module matches on the backend.

/// Runs the same body against whichever pool is in use.
macro_rules! on_db {
    ($store:expr, |$p:ident| $body:expr) => {
        match $store {
            Store::Sqlite($p) => $body,
            Store::Postgres($p) => $body,
        }
    };
}

/// Begins a write transaction: `BEGIN IMMEDIATE` on SQLite, so a transaction
/// never fails half-way with SQLITE_BUSY when it upgrades to a write.
pub(crate) trait WritePool {
    type Db: sqlx::Database;
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, Self::Db>, sqlx::Error>;
}

impl WritePool for SqlitePool {
    type Db = sqlx::Sqlite;
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
        self.begin_with("BEGIN IMMEDIATE").await
    }
}

impl WritePool for PgPool {
    type Db = sqlx::Postgres;
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
        self.begin().await
    }
}

mod exercises;
mod messages;
mod notices;
mod opt_outs;
mod receipts;
mod rows;

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

pub use exercises::LoadResult;
pub use messages::{Claim, Clockwork, FanoutClaim, FanoutPart, Finished, message_count};
pub use notices::{NewNotice, NoticeRow};
pub use opt_outs::OptOut;
pub use receipts::{
    DeliveryReport, MessageDelivery, NewReceipt, RECEIPT_CHANNEL, ReceiptEffect, ReceiptRow,
};
pub use rows::*;

use crate::domain::codes::sha256_hex;
use crate::domain::contacts::Roster;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database URL `{0}`: use sqlite://FILE or postgres://USER@HOST/DB")]
    Url(String),
    #[error("the database schema is not current ({0}); run `rollcall db migrate`")]
    StaleSchema(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Conflict(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("cancelled: {0}")]
    Cancelled(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Clone, Debug)]
pub enum Store {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Stores an instant as UTC epoch milliseconds.
pub fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// Reads a stored instant (UTC epoch milliseconds).
pub fn from_ms(v: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(v).unwrap_or_default()
}

impl Store {
    /// Opens the store a URL names. SQLite files are created and migrated on
    /// open; PostgreSQL must be migrated by `db migrate` (or [`Store::migrate`]).
    pub async fn connect(url: &str) -> Result<Store> {
        Self::open(url, true).await
    }

    /// Opens a throwaway SQLite file (a `simulate` run without `--db`)
    /// without waiting for the disk on every commit: nothing in it must
    /// survive a power cut, and a nine-day simulation is fsync-bound otherwise.
    pub async fn connect_scratch(url: &str) -> Result<Store> {
        Self::open(url, false).await
    }

    async fn open(url: &str, durable: bool) -> Result<Store> {
        /// SQLite's `wal_autocheckpoint`, in pages (see below).
        const WAL_AUTOCHECKPOINT_PAGES: u32 = 20_000;
        if let Some(rest) = url.strip_prefix("sqlite:") {
            let opts = SqliteConnectOptions::from_str(&format!("sqlite:{rest}"))?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(if durable {
                    SqliteSynchronous::Full
                } else {
                    SqliteSynchronous::Off
                })
                .foreign_keys(true)
                .busy_timeout(Duration::from_secs(10));
            // SQLite copies the log back into the database (and syncs both)
            // once the log passes this many pages, inside whichever commit
            // crosses the mark. At the default (1,000 pages, 4 MB) a round of
            // tens of thousands of messages pays that copy several times
            // during its fan-out, and copies a message's page again for its
            // claim and for its result; at 20,000 pages (about 80 MB of log,
            // far more than a round of seventy departments writes) the
            // fan-out of a 30,000-message round is 10–20% faster. The log is
            // as durable either way: every commit is synced.
            let opts = opts.pragma("wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES.to_string());
            let pool = SqlitePoolOptions::new()
                .max_connections(4)
                .connect_with(opts)
                .await?;
            let store = Store::Sqlite(pool);
            store.migrate().await?;
            if let Some(file) = sqlite_file(rest) {
                restrict_permissions(&file);
            }
            Ok(store)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            // The store runs short, indexed statements; JIT compiling one
            // that the planner overestimates costs more than it saves.
            let opts = PgConnectOptions::from_str(url)?.options([("jit", "off")]);
            let pool = PgPoolOptions::new()
                .max_connections(8)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(opts)
                .await?;
            Ok(Store::Postgres(pool))
        } else {
            Err(StoreError::Url(url.to_owned()))
        }
    }

    pub async fn migrate(&self) -> Result<()> {
        match self {
            Store::Sqlite(p) => SQLITE_MIGRATIONS.run(p).await?,
            Store::Postgres(p) => POSTGRES_MIGRATIONS.run(p).await?,
        }
        Ok(())
    }

    /// Refuses to work on a schema older than this build's migrations.
    pub async fn check_schema(&self) -> Result<()> {
        let (migrator, applied): (&sqlx::migrate::Migrator, Vec<i64>) = match self {
            Store::Sqlite(p) => (
                &SQLITE_MIGRATIONS,
                applied(sqlx::query_as(APPLIED).fetch_all(p).await),
            ),
            Store::Postgres(p) => (
                &POSTGRES_MIGRATIONS,
                applied(sqlx::query_as(APPLIED).fetch_all(p).await),
            ),
        };
        let missing: Vec<String> = migrator
            .iter()
            .filter(|m| !applied.contains(&m.version))
            .map(|m| m.version.to_string())
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(StoreError::StaleSchema(format!(
                "missing migrations {}",
                missing.join(", ")
            )))
        }
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    pub async fn close(&self) {
        on_db!(self, |p| p.close().await)
    }

    // ---- rosters -------------------------------------------------------

    /// Stores the roster as a new version unless it equals the latest one.
    pub async fn save_roster(&self, roster: &Roster, now: DateTime<Utc>) -> Result<i64> {
        let json = serde_json::to_string(roster).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let digest = sha256_hex(json.as_bytes());
        const LATEST: &str = "SELECT id, digest FROM roster_versions ORDER BY id DESC LIMIT 1";
        const INSERT: &str = "INSERT INTO roster_versions (loaded_at, digest, roster_json) VALUES ($1, $2, $3) RETURNING id";
        let latest: Option<(i64, String)> =
            on_db!(self, |p| sqlx::query_as(LATEST).fetch_optional(p).await)?;
        if let Some((id, d)) = latest
            && d == digest
        {
            return Ok(id);
        }
        let id: i64 = on_db!(self, |p| sqlx::query_scalar(INSERT)
            .bind(ms(now))
            .bind(&digest)
            .bind(&json)
            .fetch_one(p)
            .await)?;
        self.event(
            now,
            "roster.loaded",
            None,
            serde_json::json!({"version": id, "digest": digest}),
        )
        .await?;
        Ok(id)
    }

    pub async fn roster(&self, version: i64) -> Result<Roster> {
        const Q: &str = "SELECT roster_json FROM roster_versions WHERE id = $1";
        let json: Option<String> = on_db!(self, |p| sqlx::query_scalar(Q)
            .bind(version)
            .fetch_optional(p)
            .await)?;
        let json = json.ok_or_else(|| StoreError::NotFound(format!("roster version {version}")))?;
        serde_json::from_str(&json)
            .map_err(|e| StoreError::Corrupt(format!("roster version {version}: {e}")))
    }

    pub async fn latest_roster_version(&self) -> Result<Option<i64>> {
        const Q: &str = "SELECT MAX(id) FROM roster_versions";
        Ok(on_db!(self, |p| sqlx::query_scalar::<_, Option<i64>>(Q)
            .fetch_one(p)
            .await)?)
    }

    // ---- events --------------------------------------------------------

    /// Appends an event with the next gap-free sequence number.
    pub async fn event(
        &self,
        at: DateTime<Utc>,
        kind: &str,
        exercise: Option<&str>,
        data: serde_json::Value,
    ) -> Result<i64> {
        const INSERT: &str = "INSERT INTO events (seq, at, kind, exercise_id, data) \
             SELECT COALESCE(MAX(seq), 0) + 1, $1, $2, $3, $4 FROM events RETURNING seq";
        let data = data.to_string();
        match self {
            Store::Sqlite(p) => {
                let mut tx = p.begin_write().await?;
                let seq: i64 = sqlx::query_scalar(INSERT)
                    .bind(ms(at))
                    .bind(kind)
                    .bind(exercise)
                    .bind(&data)
                    .fetch_one(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(seq)
            }
            Store::Postgres(p) => {
                let mut tx = p.begin().await?;
                // One writer at a time keeps `seq` gap-free across instances.
                sqlx::query("SELECT pg_advisory_xact_lock(7469)")
                    .execute(&mut *tx)
                    .await?;
                let seq: i64 = sqlx::query_scalar(INSERT)
                    .bind(ms(at))
                    .bind(kind)
                    .bind(exercise)
                    .bind(&data)
                    .fetch_one(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(seq)
            }
        }
    }

    pub async fn events(&self, exercise: Option<&str>) -> Result<Vec<EventRow>> {
        const Q: &str = "SELECT seq, at, kind, exercise_id, data FROM events WHERE exercise_id = $1 ORDER BY seq";
        const QA: &str = "SELECT seq, at, kind, exercise_id, data FROM events ORDER BY seq";
        Ok(match exercise {
            Some(e) => on_db!(self, |p| sqlx::query_as(Q).bind(e).fetch_all(p).await)?,
            None => on_db!(self, |p| sqlx::query_as(QA).fetch_all(p).await)?,
        })
    }

    // ---- heartbeat -----------------------------------------------------

    pub async fn heartbeat(&self, name: &str, now: DateTime<Utc>) -> Result<()> {
        const Q: &str = "INSERT INTO heartbeats (name, at) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET at = excluded.at";
        on_db!(self, |p| sqlx::query(Q)
            .bind(name)
            .bind(ms(now))
            .execute(p)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(())
    }

    pub async fn last_heartbeat(&self) -> Result<Option<DateTime<Utc>>> {
        const Q: &str = "SELECT MAX(at) FROM heartbeats";
        let v: Option<i64> = on_db!(self, |p| sqlx::query_scalar(Q).fetch_one(p).await)?;
        Ok(v.map(from_ms))
    }
}

fn sqlite_file(rest: &str) -> Option<std::path::PathBuf> {
    let path = rest.trim_start_matches("//");
    let path = path.split('?').next().unwrap_or(path);
    (!path.is_empty() && path != ":memory:").then(|| std::path::PathBuf::from(path))
}

/// The database holds personal data: owner read/write only.
fn restrict_permissions(file: &std::path::Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600));
    }
    #[cfg(not(unix))]
    let _ = file;
}

const APPLIED: &str = "SELECT version FROM _sqlx_migrations WHERE success";

/// Versions applied so far; a database never migrated has none.
fn applied(rows: Result<Vec<(i64,)>, sqlx::Error>) -> Vec<i64> {
    rows.map(|r| r.into_iter().map(|(v,)| v).collect())
        .unwrap_or_default()
}
