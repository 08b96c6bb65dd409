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

const SQLITE: &[&str] =
    &[include_str!("../migrations/sqlite/0001_accounts.sql"), include_str!("../migrations/sqlite/0002_groups.sql")];
const POSTGRES: &[&str] =
    &[include_str!("../migrations/postgres/0001_accounts.sql"), include_str!("../migrations/postgres/0002_groups.sql")];
const MYSQL: &[&str] =
    &[include_str!("../migrations/mysql/0001_accounts.sql"), include_str!("../migrations/mysql/0002_groups.sql")];

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

    async fn migrate(&self) -> Result<(), DbError> {
        let steps = match self.backend {
            Backend::Sqlite => SQLITE,
            Backend::Postgres => POSTGRES,
            Backend::MySql => MYSQL,
        };
        sqlx::query("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)").execute(&self.pool).await?;
        let rows: Vec<AnyRow> = sqlx::query("SELECT version FROM schema_version").fetch_all(&self.pool).await?;
        let current = rows.iter().filter_map(|r| r.try_get::<i64, _>(0).ok()).max().unwrap_or(0) as usize;
        for (i, script) in steps.iter().enumerate().skip(current) {
            let version = i + 1;
            let mut tx = self.pool.begin().await?;
            for stmt in script.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                sqlx::query(sqlx::AssertSqlSafe(stmt.to_string()))
                    .execute(&mut *tx)
                    .await
                    .map_err(|source| DbError::Migration { version, source })?;
            }
            sqlx::query(self.sql("INSERT INTO schema_version (version) VALUES (?)"))
                .bind(version as i64)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            tracing::info!(version, "applied database migration");
        }
        Ok(())
    }
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
