//! The agent's SQLite connection: one, shared behind an async lock.
//!
//! Not a sqlx `Pool`: a pool pings each connection on its way back (one more trip to SQLite's worker
//! thread after every statement) and the next statement waits for that ping. SQLite has one writer anyway,
//! so a pool of one buys nothing here, and without it a message is stored in one trip instead of three.

use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use std::sync::Arc;
use tokio::sync::{Mutex, MutexGuard};

#[derive(Clone)]
pub(crate) struct Db(Arc<Mutex<SqliteConnection>>);

impl Db {
    pub(crate) async fn open(opts: &SqliteConnectOptions) -> Result<Self, sqlx::Error> {
        let conn = sqlx::ConnectOptions::connect(opts).await?;
        Ok(Self(Arc::new(Mutex::new(conn))))
    }

    /// The connection, for one statement or transaction; held only that long.
    pub(crate) async fn lock(&self) -> MutexGuard<'_, SqliteConnection> {
        self.0.lock().await
    }

    /// An empty in-memory database (tests).
    #[cfg(test)]
    pub(crate) async fn memory() -> Self {
        Self::open(&"sqlite::memory:".parse().unwrap()).await.unwrap()
    }
}
