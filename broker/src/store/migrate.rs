//! The schema, brought up to date at start-up by whichever broker gets there first.
//!
//! Why not sqlx's own migrator: on MySQL/MariaDB every DDL statement commits by itself, and sqlx marks a
//! migration cut short there as dirty, to be repaired by hand; this runner records each statement and
//! resumes after the last one instead. Like sqlx's, it takes a database lock and keeps a checksum of each
//! applied script, so that an edited migration is refused at start-up instead of silently diverging.

use super::{Backend, Db, DbError, MYSQL, POSTGRES, SQLITE, already_applied};

impl Db {
    /// Brings the schema up to date, safely when several brokers start at once and when a start was cut
    /// short half-way:
    /// - one broker migrates at a time: a database lock held on one connection (PostgreSQL advisory lock,
    ///   MySQL `GET_LOCK`, SQLite `BEGIN IMMEDIATE`), and the version is read only once it is held;
    /// - PostgreSQL and SQLite apply each version in one transaction (their DDL is transactional);
    /// - MySQL/MariaDB commit every DDL statement by itself, so each statement's completion is recorded in
    ///   `schema_steps`, and a restart resumes after the last recorded one. A statement that ran but whose
    ///   record was lost (a crash between the two) fails with "already exists" when run again, which counts
    ///   as done.
    pub(super) async fn migrate(&self) -> Result<(), DbError> {
        let mut conn = self.pool.acquire().await?;
        let (lock, unlock) = match self.backend {
            Backend::Sqlite => ("BEGIN IMMEDIATE", "COMMIT"),
            Backend::Postgres => ("SELECT pg_advisory_lock(7878001)", "SELECT pg_advisory_unlock(7878001)"),
            Backend::MySql => ("SELECT GET_LOCK('p2pim_migrations', 300)", "SELECT RELEASE_LOCK('p2pim_migrations')"),
        };
        if self.backend == Backend::MySql {
            // GET_LOCK answers 0 on a timeout instead of failing: migrating then would race the holder.
            let got: Option<i64> = sqlx::query_scalar(lock).fetch_one(&mut *conn).await?;
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
        let versions: Vec<i64> = sqlx::query_scalar("SELECT version FROM schema_version").fetch_all(&mut *conn).await?;
        let current = versions.into_iter().max().unwrap_or(0) as usize;
        if current > steps.len() {
            return Err(DbError::Newer { found: current, known: steps.len() });
        }
        self.check_sums(conn, steps, current).await?;
        for (i, script) in steps.iter().enumerate().skip(current) {
            let version = i + 1;
            let statements = statements(script);
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
            self.record_sum(conn, version, script).await?;
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
        sqlx::query(self.sql(sql!("INSERT INTO schema_version (version) VALUES (?)")))
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
        let done: Vec<i64> = sqlx::query_scalar("SELECT step FROM schema_steps WHERE version = ?")
            .bind(version as i64)
            .fetch_all(&mut *conn)
            .await?;
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

    /// Records each applied version's checksum, and refuses to go on if a script that was applied has
    /// changed since (versions applied before checksums were kept are recorded as they are now).
    async fn check_sums(
        &self,
        conn: &mut sqlx::AnyConnection,
        scripts: &[&str],
        applied: usize,
    ) -> Result<(), DbError> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS schema_checksums (version BIGINT NOT NULL, sha256 VARCHAR(64) NOT NULL)",
        )
        .execute(&mut *conn)
        .await?;
        let rows: Vec<(i64, String)> =
            sqlx::query_as("SELECT version, sha256 FROM schema_checksums").fetch_all(&mut *conn).await?;
        for (i, script) in scripts.iter().enumerate().take(applied) {
            let version = i + 1;
            let sum = checksum(script);
            match rows.iter().find(|(v, _)| *v == version as i64) {
                Some((_, recorded)) if *recorded == sum => {}
                Some(_) => return Err(DbError::Changed { version }),
                None => self.record_sum(conn, version, script).await?,
            }
        }
        Ok(())
    }

    /// Records a just-applied (or previously unrecorded) version's checksum.
    async fn record_sum(&self, conn: &mut sqlx::AnyConnection, version: usize, script: &str) -> Result<(), DbError> {
        sqlx::query(self.sql(sql!("INSERT INTO schema_checksums (version, sha256) VALUES (?, ?)")))
            .bind(version as i64)
            .bind(checksum(script))
            .execute(&mut *conn)
            .await?;
        Ok(())
    }
}

/// SHA-256 of a migration script, hex.
fn checksum(script: &str) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, script.as_bytes()))
}

/// A script's statements: split at `;` outside quotes and comments, empty ones dropped.
pub(super) fn statements(script: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quote, mut comment) = (0, None::<u8>, false);
    let bytes = script.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match (quote, comment) {
            (_, true) => comment = c != b'\n',
            (Some(q), _) => {
                if c == q {
                    quote = None;
                }
            }
            (None, false) => match c {
                b'\'' | b'"' | b'`' => quote = Some(c),
                b'-' if bytes.get(i + 1) == Some(&b'-') => comment = true,
                b';' => {
                    out.push(script[start..i].trim());
                    start = i + 1;
                }
                _ => {}
            },
        }
        i += 1;
    }
    out.push(script[start..].trim());
    out.retain(|s| !s.is_empty() && !s.lines().all(|l| l.trim().is_empty() || l.trim().starts_with("--")));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_split_outside_quotes_and_comments() {
        let script = "CREATE TABLE a (x TEXT DEFAULT 'a;b'); -- a comment; still a comment\n\
                      CREATE INDEX i ON a (x);\n-- only a comment\n";
        assert_eq!(
            statements(script),
            vec!["CREATE TABLE a (x TEXT DEFAULT 'a;b')", "-- a comment; still a comment\nCREATE INDEX i ON a (x)"]
        );
    }

    #[test]
    fn every_shipped_script_splits_as_before() {
        // The scripts hold no `;` in quotes or comments, so the careful split agrees with a plain one.
        for script in SQLITE.iter().chain(POSTGRES).chain(MYSQL) {
            let plain: Vec<&str> = script.split(';').map(str::trim).filter(|s| !s.is_empty()).collect();
            assert_eq!(statements(script), plain);
        }
    }
}
