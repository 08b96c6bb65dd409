//! All of the broker's SQL: one storage layer for SQLite, PostgreSQL and MySQL/MariaDB, through sqlx's
//! `Any` driver. The domain modules (`accounts`, `friends`, `groups`) decide; the functions here read and
//! write, one statement or one transaction each, and decode rows by column name (`FromRow`). A change that
//! must be atomic (a friendship and its requests, a post and its number) is one function here.
//!
//! Queries are written once with `?` placeholders (`sql!`); `Db::sql` gives PostgreSQL `$n` instead, made
//! once per query text on first use. Only types that every backend carries through `Any` are used:
//! `i64`, `String`, `Option<String>`, and `Vec<u8>` for sealed letters (hex would double them). DDL differs per backend, so each has its own migrations folder, embedded
//! in the binary and applied in order at start-up.

/// A query text written once with `?` placeholders: `sql!("SELECT ... WHERE a = ?")`, for [`Db::sql`].
macro_rules! sql {
    ($text:expr) => {{
        static Q: $crate::store::Sql = $crate::store::Sql::new($text);
        &Q
    }};
}

pub(crate) mod accounts;
pub(crate) mod cluster;
pub(crate) mod devices;
pub(crate) mod friends;
pub(crate) mod groups;
pub(crate) mod mailbox;
mod migrate;
#[cfg(test)]
mod parity;

use sqlx::any::AnyPoolOptions;
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AnyPool};
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

/// How long one read or write (one statement or one transaction, waiting for a connection included) may
/// take. A database that stops answering without closing anything (a partition that drops packets)
/// would otherwise hold each request until TCP gives up, minutes later: past this the request is
/// answered "busy, try again shortly" like any unreachable database, well inside the agent's own 20 s.
/// Above SQLite's 5 s busy timeout, so that a write waiting for the lock gets SQLite's own answer.
pub const DEADLINE: Duration = Duration::from_secs(6);

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
    #[error(
        "migration {version} was changed after this database applied it; run the broker release that \
         applied it, or restore the script"
    )]
    Changed { version: usize },
    #[error("this database is at schema version {found}, newer than this broker knows ({known}); run a newer broker")]
    Newer { found: usize, known: usize },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the database did not answer within {} s", DEADLINE.as_secs())]
    Deadline,
}

impl DbError {
    /// The database could not be reached (restarting, a network cut, no connection free in time), as
    /// opposed to refusing a statement.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            Self::Sqlx(
                sqlx::Error::Io(_)
                    | sqlx::Error::Tls(_)
                    | sqlx::Error::Protocol(_)
                    | sqlx::Error::PoolTimedOut
                    | sqlx::Error::PoolClosed
                    | sqlx::Error::WorkerCrashed
            ) | Self::Deadline
        )
    }

    /// A primary-key or unique constraint refused the write (a duplicate).
    pub fn is_duplicate(&self) -> bool {
        matches!(self, Self::Sqlx(sqlx::Error::Database(e)) if e.is_unique_violation())
    }
}

const SQLITE: &[&str] = &[
    include_str!("../../migrations/sqlite/0001_accounts.sql"),
    include_str!("../../migrations/sqlite/0002_groups.sql"),
    include_str!("../../migrations/sqlite/0003_blocks.sql"),
    include_str!("../../migrations/sqlite/0004_devices.sql"),
    include_str!("../../migrations/sqlite/0005_mailbox.sql"),
    include_str!("../../migrations/sqlite/0006_cluster.sql"),
    include_str!("../../migrations/sqlite/0007_group_post_ids.sql"),
];
const POSTGRES: &[&str] = &[
    include_str!("../../migrations/postgres/0001_accounts.sql"),
    include_str!("../../migrations/postgres/0002_groups.sql"),
    include_str!("../../migrations/postgres/0003_blocks.sql"),
    include_str!("../../migrations/postgres/0004_devices.sql"),
    include_str!("../../migrations/postgres/0005_mailbox.sql"),
    include_str!("../../migrations/postgres/0006_cluster.sql"),
    include_str!("../../migrations/postgres/0007_group_post_ids.sql"),
];
const MYSQL: &[&str] = &[
    include_str!("../../migrations/mysql/0001_accounts.sql"),
    include_str!("../../migrations/mysql/0002_groups.sql"),
    include_str!("../../migrations/mysql/0003_blocks.sql"),
    include_str!("../../migrations/mysql/0004_devices.sql"),
    include_str!("../../migrations/mysql/0005_mailbox.sql"),
    include_str!("../../migrations/mysql/0006_cluster.sql"),
    include_str!("../../migrations/mysql/0007_group_post_ids.sql"),
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
        // A wait for a pooled connection past sqlx's threshold (2 s) is logged at debug, not once per request
        // at warn: a login storm queues thousands at once, and an unreachable database is logged once by
        // `health` with what it means. Requests that wait too long end at `DEADLINE` as "busy".
        let mut opts = AnyPoolOptions::new().max_connections(max).acquire_slow_level(log::LevelFilter::Debug);
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

    /// Whether the database answers at all.
    pub async fn ping(&self) -> Result<(), DbError> {
        self.run(async |c| {
            sqlx::query("SELECT 1").execute(&mut *c).await?;
            Ok(())
        })
        .await
    }

    /// SQLite only: copies the WAL back into the database without blocking writers (run every few seconds
    /// by the server, since automatic checkpoints are off). A no-op on the other backends.
    pub async fn checkpoint(&self) -> Result<(), DbError> {
        if self.backend == Backend::Sqlite {
            self.run(async |c| {
                sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&mut *c).await?;
                Ok(())
            })
            .await?;
        }
        Ok(())
    }

    /// Every read and write goes through here: `work` gets a connection of its own and [`DEADLINE`] to
    /// finish on it. Work that stops midway (past its deadline, or dropped with its request) closes the
    /// connection instead of handing it back to the pool (see [`Abandonable`]).
    pub(crate) async fn run<T>(
        &self,
        work: impl AsyncFnOnce(&mut AnyConnection) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        let attempt = async {
            let mut conn = Abandonable(Some(self.pool.acquire().await?));
            let out = work(conn.get()).await;
            conn.done();
            out
        };
        tokio::time::timeout(DEADLINE, attempt).await.map_err(|_| DbError::Deadline)?
    }

    /// The query text for this backend: as written, or with numbered placeholders for PostgreSQL (made
    /// once per query, on first use).
    pub(crate) fn sql(&self, q: &'static Sql) -> &'static str {
        match self.backend {
            Backend::Postgres => q.numbered.get_or_init(|| numbered_placeholders(q.text)),
            Backend::Sqlite | Backend::MySql => q.text,
        }
    }
}

/// A pooled connection that is closed, not handed back, if the work on it stops midway. sqlx hands a
/// connection back whatever state it is in: with a statement still in flight, and, if a `BEGIN` was
/// cancelled before its answer, inside a transaction that sqlx does not know about, which the next
/// statements on that connection would silently join and never commit (sqlx issue 4393 at transact-rs,
/// fixed after 0.9.0; closing also covers a plain statement abandoned in flight, which that fix does not).
struct Abandonable(Option<PoolConnection<Any>>);

impl Abandonable {
    fn get(&mut self) -> &mut AnyConnection {
        self.0.as_mut().expect("taken only by done or drop")
    }

    /// The work ran to its end (an error included, which sqlx cleans up after): back to the pool.
    fn done(mut self) {
        self.0.take();
    }
}

impl Drop for Abandonable {
    fn drop(&mut self) {
        if let Some(mut conn) = self.0.take() {
            conn.close_on_drop();
        }
    }
}

/// See [`sql!`].
pub(crate) struct Sql {
    text: &'static str,
    numbered: OnceLock<String>,
}

impl Sql {
    pub(crate) const fn new(text: &'static str) -> Self {
        Self { text, numbered: OnceLock::new() }
    }
}

/// An INSERT's outcome: `true` if the row was added, `false` if a unique key refused it (a duplicate is an
/// answer for the caller to give, not a failure).
fn created(res: Result<sqlx::any::AnyQueryResult, sqlx::Error>) -> Result<bool, DbError> {
    match res.map_err(DbError::from) {
        Ok(_) => Ok(true),
        Err(e) if e.is_duplicate() => Ok(false),
        Err(e) => Err(e),
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

    /// A `BEGIN` whose answer does not come (the link went silent) is abandoned at the deadline. sqlx
    /// would hand that connection back to the pool, and once the link healed it would be inside a
    /// transaction sqlx does not know of: the writes that reused it would be acknowledged and never
    /// committed. Closed instead, every acknowledged write is there for another session to see.
    #[tokio::test(flavor = "multi_thread")]
    async fn work_abandoned_midway_leaves_no_connection_inside_a_transaction() {
        for backend in testkit::backends().into_iter().filter(|b| b.name() != "sqlite") {
            let dir = tempfile::tempdir().unwrap();
            let test_db = testkit::TestDb::create(&backend, dir.path());
            let cut = testkit::TcpCut::to(testkit::db::server_of(&test_db.url));
            let db = Db::open(&testkit::db::url_through(&test_db.url, cut.addr())).await.unwrap();
            let exec = |q: String| {
                let db = db.clone();
                async move {
                    db.run(async |c| {
                        sqlx::query(sqlx::AssertSqlSafe(q)).execute(&mut *c).await?;
                        Ok(())
                    })
                    .await
                }
            };
            exec("CREATE TABLE marks (n VARCHAR(8))".into()).await.unwrap();

            let abandoned = db
                .run(async |c| {
                    cut.silence();
                    let _tx = sqlx::Connection::begin(c).await?;
                    Ok(())
                })
                .await;
            assert!(matches!(abandoned, Err(DbError::Deadline)), "{}: {abandoned:?}", backend.name());
            cut.heal();
            // Room for the connection sqlx would have handed back to be idle again, and so be reused.
            tokio::time::sleep(Duration::from_millis(500)).await;
            for n in 0..20 {
                exec(format!("INSERT INTO marks (n) VALUES ('{n}')")).await.unwrap();
            }
            let seen = test_db.column("SELECT n FROM marks");
            assert_eq!(seen.len(), 20, "{}: every acknowledged write committed: {seen:?}", backend.name());
            db.pool.close().await;
        }
    }

    #[test]
    fn placeholders_numbered() {
        assert_eq!(
            numbered_placeholders("SELECT a FROM t WHERE b = ? AND c = ?"),
            "SELECT a FROM t WHERE b = $1 AND c = $2"
        );
    }
}
