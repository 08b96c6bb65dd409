//! One storage layer for SQLite, PostgreSQL and MySQL/MariaDB, through sqlx's `Any` driver.
//!
//! Queries are written once with `?` placeholders; [`Db::sql`] rewrites them to `$n` for PostgreSQL (once per
//! query text, cached for the process). Only types that every backend carries through `Any` are used:
//! `i64`, `String`, `Option<String>`. DDL differs per backend, so each has its own migrations folder, embedded
//! in the binary and applied in order at start-up.

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{LazyLock, Mutex};

/// Which database is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
    MySql,
}

/// Storage failures. The broker answers them with [`shared::proto::ErrorCode::Internal`] and logs the cause.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("unsupported database URL {0:?}: use sqlite:PATH, postgres://... or mysql://...")]
    Url(String),
    #[error("migration {version}: {source}")]
    Migration { version: usize, source: sqlx::Error },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl DbError {
    /// A primary-key or unique constraint refused the write (a duplicate).
    pub fn is_duplicate(&self) -> bool {
        matches!(self, Self::Sqlx(sqlx::Error::Database(e)) if e.is_unique_violation())
    }
}

const SQLITE: &[&str] = &[
    include_str!("../migrations/sqlite/0001_accounts.sql"),
    include_str!("../migrations/sqlite/0002_groups.sql"),
    include_str!("../migrations/sqlite/0003_blocks.sql"),
];
const POSTGRES: &[&str] = &[
    include_str!("../migrations/postgres/0001_accounts.sql"),
    include_str!("../migrations/postgres/0002_groups.sql"),
    include_str!("../migrations/postgres/0003_blocks.sql"),
];
const MYSQL: &[&str] = &[
    include_str!("../migrations/mysql/0001_accounts.sql"),
    include_str!("../migrations/mysql/0002_groups.sql"),
    include_str!("../migrations/mysql/0003_blocks.sql"),
];

/// A cheap-to-clone handle on the pool.
#[derive(Clone, Debug)]
pub struct Db {
    pub pool: AnyPool,
    pub backend: Backend,
}

impl Db {
    /// Connects to `url` and brings the schema up to date. A SQLite file is created 0600 if missing.
    pub async fn open(url: &str) -> Result<Self, DbError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else if url.starts_with("mysql://") || url.starts_with("mariadb://") {
            Backend::MySql
        } else {
            return Err(DbError::Url(url.to_string()));
        };
        let url = url.replacen("mariadb://", "mysql://", 1);
        if backend == Backend::Sqlite {
            create_sqlite_file(&url)?;
        }
        let max = if backend == Backend::Sqlite { 4 } else { 16 };
        let mut opts = AnyPoolOptions::new().max_connections(max);
        if backend == Backend::Sqlite {
            // WAL with NORMAL sync: commits survive a crash of the broker (not of the OS, for the last
            // moment), and a login costs no fsync. Foreign keys are off by default in SQLite.
            opts = opts.after_connect(|conn, _| {
                Box::pin(async move {
                    for pragma in [
                        "PRAGMA journal_mode = WAL",
                        "PRAGMA synchronous = NORMAL",
                        "PRAGMA foreign_keys = ON",
                        "PRAGMA busy_timeout = 5000",
                        // Checkpoints run beside the writers (`Db::checkpoint`), not inside whichever commit
                        // crosses 1,000 WAL pages, which would stall that request (and a busy group) for ms.
                        "PRAGMA wal_autocheckpoint = 0",
                    ] {
                        sqlx::query(pragma).execute(&mut *conn).await?;
                    }
                    Ok(())
                })
            });
        }
        let pool = opts.connect(&url).await?;
        let db = Self { pool, backend };
        db.migrate().await?;
        Ok(db)
    }

    /// SQLite only: copies the WAL back into the database without blocking writers (run every few seconds
    /// by the server, since automatic checkpoints are off). A no-op on the other backends.
    pub async fn checkpoint(&self) -> Result<(), DbError> {
        if self.backend == Backend::Sqlite {
            sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&self.pool).await?;
        }
        Ok(())
    }

    /// The query text for this backend (placeholders rewritten for PostgreSQL).
    pub fn sql(&self, q: &'static str) -> &'static str {
        if self.backend != Backend::Postgres {
            return q;
        }
        static CACHE: LazyLock<Mutex<HashMap<&'static str, &'static str>>> = LazyLock::new(Default::default);
        let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
        // Leaked once per distinct query text of this program: a bounded set.
        cache.entry(q).or_insert_with(|| Box::leak(numbered_placeholders(q).into_boxed_str()))
    }

    /// Brings the schema up to date, safely when several brokers start at once and when a start was cut
    /// short half-way:
    /// - one broker migrates at a time: a database lock held on one connection (PostgreSQL advisory lock,
    ///   MySQL `GET_LOCK`, SQLite `BEGIN IMMEDIATE`), and the version is read only once it is held;
    /// - PostgreSQL and SQLite apply each version in one transaction (their DDL is transactional);
    /// - MySQL/MariaDB commit every DDL statement by itself, so each statement's completion is recorded in
    ///   `schema_steps`, and a restart resumes after the last recorded one. A statement that ran but whose
    ///   record was lost (a crash between the two) fails with "already exists" when run again, which counts
    ///   as done.
    async fn migrate(&self) -> Result<(), DbError> {
        let mut conn = self.pool.acquire().await?;
        let (lock, unlock) = match self.backend {
            Backend::Sqlite => ("BEGIN IMMEDIATE", "COMMIT"),
            Backend::Postgres => ("SELECT pg_advisory_lock(7878001)", "SELECT pg_advisory_unlock(7878001)"),
            Backend::MySql => ("SELECT GET_LOCK('p2pim_migrations', 300)", "SELECT RELEASE_LOCK('p2pim_migrations')"),
        };
        if self.backend == Backend::MySql {
            // GET_LOCK answers 0 on a timeout instead of failing: migrating then would race the holder.
            let got: Option<i64> = sqlx::query(lock).fetch_one(&mut *conn).await?.try_get(0)?;
            if got != Some(1) {
                return Err(DbError::Io(std::io::Error::other(
                    "another broker has held the migration lock for 300 s; is one stuck migrating?",
                )));
            }
        } else {
            sqlx::query(lock).execute(&mut *conn).await?;
        }
        let result = self.migrate_locked(&mut conn).await;
        let unlocked = if result.is_err() && self.backend == Backend::Sqlite {
            sqlx::query("ROLLBACK").execute(&mut *conn).await
        } else {
            sqlx::query(unlock).execute(&mut *conn).await
        };
        result?;
        unlocked?;
        Ok(())
    }

    async fn migrate_locked(&self, conn: &mut sqlx::AnyConnection) -> Result<(), DbError> {
        let steps = match self.backend {
            Backend::Sqlite => SQLITE,
            Backend::Postgres => POSTGRES,
            Backend::MySql => MYSQL,
        };
        sqlx::query("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)").execute(&mut *conn).await?;
        let rows: Vec<AnyRow> = sqlx::query("SELECT version FROM schema_version").fetch_all(&mut *conn).await?;
        let current = rows.iter().filter_map(|r| r.try_get::<i64, _>(0).ok()).max().unwrap_or(0) as usize;
        for (i, script) in steps.iter().enumerate().skip(current) {
            let version = i + 1;
            let statements: Vec<&str> = script.split(';').map(str::trim).filter(|s| !s.is_empty()).collect();
            match self.backend {
                Backend::MySql => self.apply_resumable(conn, version, &statements).await?,
                Backend::Postgres => {
                    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
                    self.apply(&mut tx, version, &statements).await?;
                    tx.commit().await?;
                }
                // Already inside BEGIN IMMEDIATE: every version commits together at the end.
                Backend::Sqlite => self.apply(conn, version, &statements).await?,
            }
            tracing::info!(version, "applied database migration");
        }
        Ok(())
    }

    /// Runs a version's statements and records the version, on a connection inside a transaction.
    async fn apply(&self, conn: &mut sqlx::AnyConnection, version: usize, statements: &[&str]) -> Result<(), DbError> {
        for stmt in statements {
            sqlx::query(sqlx::AssertSqlSafe(stmt.to_string()))
                .execute(&mut *conn)
                .await
                .map_err(|source| DbError::Migration { version, source })?;
        }
        sqlx::query(self.sql("INSERT INTO schema_version (version) VALUES (?)"))
            .bind(version as i64)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    /// MySQL: runs a version's statements one by one, recording each, skipping those already recorded.
    async fn apply_resumable(
        &self,
        conn: &mut sqlx::AnyConnection,
        version: usize,
        statements: &[&str],
    ) -> Result<(), DbError> {
        sqlx::query("CREATE TABLE IF NOT EXISTS schema_steps (version BIGINT NOT NULL, step BIGINT NOT NULL)")
            .execute(&mut *conn)
            .await?;
        let done: Vec<i64> = sqlx::query("SELECT step FROM schema_steps WHERE version = ?")
            .bind(version as i64)
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .filter_map(|r| r.try_get(0).ok())
            .collect();
        for (step, stmt) in statements.iter().enumerate() {
            if done.contains(&(step as i64)) {
                continue;
            }
            match sqlx::query(sqlx::AssertSqlSafe(stmt.to_string())).execute(&mut *conn).await {
                Ok(_) => {}
                Err(e) if already_applied(&e) => {
                    tracing::warn!(version, step, "migration step had run before its record was written; skipped")
                }
                Err(source) => return Err(DbError::Migration { version, source }),
            }
            sqlx::query("INSERT INTO schema_steps (version, step) VALUES (?, ?)")
                .bind(version as i64)
                .bind(step as i64)
                .execute(&mut *conn)
                .await?;
        }
        sqlx::query("INSERT INTO schema_version (version) VALUES (?)").bind(version as i64).execute(&mut *conn).await?;
        sqlx::query("DELETE FROM schema_steps WHERE version = ?").bind(version as i64).execute(&mut *conn).await?;
        Ok(())
    }
}

/// MySQL's answer to DDL that has been applied already: table (1050), column (1060) or key (1061) exists,
/// or a key to drop (1091) is gone.
fn already_applied(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = e else { return false };
    db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
        .is_some_and(|m| matches!(m.number(), 1050 | 1060 | 1061 | 1091))
}

fn create_sqlite_file(url: &str) -> Result<(), DbError> {
    let path = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
    let path = path.split('?').next().unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        return Ok(());
    }
    let path = Path::new(path);
    if !path.exists() {
        certs::secret_file::owner_only().truncate(false).open(path)?;
    }
    certs::secret_file::restrict(path)?;
    Ok(())
}

/// `?` → `$1`, `$2`, … (our query texts hold no `?` inside string literals).
fn numbered_placeholders(q: &str) -> String {
    let mut out = String::with_capacity(q.len() + 8);
    let mut n = 0;
    for c in q.chars() {
        if c == '?' {
            n += 1;
            out.push('$');
            out.push_str(&n.to_string());
        } else {
            out.push(c);
        }
    }
    out
}

/// Milliseconds since the Unix epoch, as stored.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_numbered() {
        assert_eq!(
            numbered_placeholders("SELECT a FROM t WHERE b = ? AND c = ?"),
            "SELECT a FROM t WHERE b = $1 AND c = $2"
        );
    }
}
