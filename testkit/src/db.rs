//! Fresh databases per test, on every backend the run was given.
//!
//! SQLite always runs. PostgreSQL and MariaDB/MySQL run when `TEST_POSTGRES_URL` / `TEST_MYSQL_URL` name a
//! server; each test then creates a database with a random name there and drops it afterwards. With
//! `TEST_REQUIRE_ALL_DBS=1` (set by `.ci/run`) a missing URL fails the run instead of narrowing it.

use sqlx::Connection;
use std::path::Path;

/// A database server a test can run the broker on.
#[derive(Debug, Clone)]
pub enum Backend {
    Sqlite,
    Postgres(String),
    MySql(String),
}

impl Backend {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres(_) => "postgres",
            Self::MySql(_) => "mysql",
        }
    }
}

/// The backends of this run: SQLite, plus each server whose URL is set.
pub fn backends() -> Vec<Backend> {
    let mut out = vec![Backend::Sqlite];
    let require = std::env::var("TEST_REQUIRE_ALL_DBS").is_ok_and(|v| v == "1");
    for (var, make) in [
        ("TEST_POSTGRES_URL", Backend::Postgres as fn(String) -> Backend),
        ("TEST_MYSQL_URL", Backend::MySql as fn(String) -> Backend),
    ] {
        match std::env::var(var) {
            Ok(url) if !url.is_empty() => out.push(make(url)),
            _ if require => panic!("TEST_REQUIRE_ALL_DBS=1 but {var} is not set"),
            _ => eprintln!("note: {var} not set; this run covers SQLite without that server"),
        }
    }
    out
}

/// A database made for one test, dropped with it.
pub struct TestDb {
    pub url: String,
    admin_url: Option<String>,
    name: String,
}

/// Runs `fut` to completion on a thread of its own, so that it works from sync and async tests alike.
fn block_on<T: Send + 'static, F: std::future::Future<Output = T> + Send + 'static>(fut: F) -> T {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(fut)
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// The database server a `scheme://user:pass@HOST:PORT/name` URL names (where a [`crate::TcpCut`] in
/// front of it forwards to).
pub fn server_of(url: &str) -> std::net::SocketAddr {
    let authority = url.split_once('@').expect("a database URL with credentials").1;
    let authority = authority.split_once('/').expect("a database URL with a name").0;
    std::net::ToSocketAddrs::to_socket_addrs(authority).unwrap().next().expect("the database host resolves")
}

/// The same URL reaching the server at `through` instead (a forwarder).
pub fn url_through(url: &str, through: std::net::SocketAddr) -> String {
    let (head, rest) = url.split_once('@').expect("a database URL with credentials");
    let (_, tail) = rest.split_once('/').expect("a database URL with a name");
    format!("{head}@{through}/{tail}")
}

fn random_name() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("t_{}_{}", std::process::id(), nanos % 1_000_000_000_000)
}

/// `scheme://user@host:port/db?x` with the database name swapped.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let root = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    format!("{root}/{name}{query}")
}

impl TestDb {
    /// A new empty database on `backend`; for SQLite a file in `dir`.
    pub fn create(backend: &Backend, dir: &Path) -> Self {
        let name = random_name();
        match backend {
            Backend::Sqlite => {
                Self { url: format!("sqlite:{}?mode=rwc", dir.join("broker.db").display()), admin_url: None, name }
            }
            Backend::Postgres(admin) => {
                let (admin2, name2) = (admin.clone(), name.clone());
                block_on(async move {
                    let mut c = sqlx::PgConnection::connect(&admin2).await.expect("connect to TEST_POSTGRES_URL");
                    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name2}")))
                        .execute(&mut c)
                        .await
                        .unwrap();
                });
                Self { url: with_database(admin, &name), admin_url: Some(admin.clone()), name }
            }
            Backend::MySql(admin) => {
                let (admin2, name2) = (admin.clone(), name.clone());
                block_on(async move {
                    let mut c = sqlx::MySqlConnection::connect(&admin2).await.expect("connect to TEST_MYSQL_URL");
                    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name2} CHARACTER SET utf8mb4")))
                        .execute(&mut c)
                        .await
                        .unwrap();
                });
                Self { url: with_database(admin, &name), admin_url: Some(admin.clone()), name }
            }
        }
    }
}

impl TestDb {
    /// The same database for a second process; dropping it leaves the database to the first.
    pub fn shared(&self) -> Self {
        Self { url: self.url.clone(), admin_url: None, name: self.name.clone() }
    }

    /// The first column of what `sql` selects, as text, read on a connection of its own (what another
    /// session sees: only what was committed).
    pub fn column(&self, sql: &str) -> Vec<String> {
        let (url, sql) = (self.url.clone(), sql.to_string());
        block_on(async move {
            let q = sqlx::AssertSqlSafe(sql);
            if url.starts_with("sqlite") {
                let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
                sqlx::query_scalar(q).fetch_all(&mut c).await.unwrap()
            } else if url.starts_with("postgres") {
                let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
                sqlx::query_scalar(q).fetch_all(&mut c).await.unwrap()
            } else {
                let mut c = sqlx::MySqlConnection::connect(&url).await.unwrap();
                sqlx::query_scalar(q).fetch_all(&mut c).await.unwrap()
            }
        })
    }

    /// Runs SQL statements against this database directly, behind the broker's back: what a tampered or
    /// restored database would hold.
    pub fn execute(&self, sql: &str) {
        let (url, sql) = (self.url.clone(), sql.to_string());
        block_on(async move {
            let sql = sqlx::AssertSqlSafe(sql);
            if url.starts_with("sqlite") {
                let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
                sqlx::raw_sql(sql).execute(&mut c).await.unwrap();
            } else if url.starts_with("postgres") {
                let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
                sqlx::raw_sql(sql).execute(&mut c).await.unwrap();
            } else {
                let mut c = sqlx::MySqlConnection::connect(&url).await.unwrap();
                sqlx::raw_sql(sql).execute(&mut c).await.unwrap();
            }
        });
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(admin) = &self.admin_url else { return };
        let name = self.name.clone();
        let admin = admin.clone();
        // Best effort: a leftover database only costs disk on a test server.
        block_on(async move {
            if admin.starts_with("postgres") {
                if let Ok(mut c) = sqlx::PgConnection::connect(&admin).await {
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
                        .execute(&mut c)
                        .await;
                }
            } else if let Ok(mut c) = sqlx::MySqlConnection::connect(&admin).await {
                let _ =
                    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name}"))).execute(&mut c).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn database_swapped_in_url() {
        assert_eq!(super::with_database("postgres://u@h:5432/test", "x"), "postgres://u@h:5432/x");
        assert_eq!(
            super::with_database("mysql://root@127.0.0.1:3306/test?ssl-mode=disabled", "x"),
            "mysql://root@127.0.0.1:3306/x?ssl-mode=disabled"
        );
        assert_eq!(super::with_database("mysql://root@127.0.0.1:3306", "x"), "mysql://root@127.0.0.1:3306/x");
    }
}
