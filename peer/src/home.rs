//! The peer's home directory: device identity, settings (broker, pinned fingerprint, token) and its SQLite
//! database. Everything secret is 0600 in a 0700 directory.

use crate::db::Db;
use anyhow::{Context, Result, bail};
use certs::account::AccountKeyPair;
use certs::{Fingerprint, Identity};
use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use std::path::{Path, PathBuf};

/// Schema steps, applied in order; the index + 1 is the version stored in `PRAGMA user_version`.
const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/0001_settings.sql"),
    include_str!("../migrations/0002_messages.sql"),
    include_str!("../migrations/0003_group_messages.sql"),
    include_str!("../migrations/0004_transfers.sql"),
    include_str!("../migrations/0005_read_marks.sql"),
    include_str!("../migrations/0006_trust.sql"),
];

/// An opened home directory.
#[derive(Clone)]
pub(crate) struct Home {
    pub(crate) dir: PathBuf,
    pub(crate) db: Db,
}

/// What `register`/`login` store and `up` needs.
#[derive(Debug, Clone)]
pub(crate) struct Account {
    pub(crate) username: String,
    pub(crate) broker: String,
    pub(crate) broker_fingerprint: Fingerprint,
    pub(crate) token: String,
}

impl Home {
    /// `--home`, else `PEER_HOME` (clap fills both), else the platform's data directory.
    pub(crate) fn resolve(arg: Option<PathBuf>) -> Result<PathBuf> {
        if let Some(p) = arg {
            return Ok(p);
        }
        let dirs = directories::ProjectDirs::from("", "", "p2pim")
            .context("no home directory found: pass --home DIR or set PEER_HOME")?;
        Ok(dirs.data_dir().to_path_buf())
    }

    /// Opens (creating if needed) the home directory and its database.
    pub(crate) async fn open(dir: &Path) -> Result<Self> {
        // A home is made private (0700): never do that to a folder that holds someone's other files.
        if !dir.join("peer.db").exists()
            && let Ok(mut entries) = std::fs::read_dir(dir)
            && entries.next().is_some()
        {
            bail!(
                "{} is not a p2pim home and is not empty: pick a new or empty folder for --home (p2pim would \
                 make it private to you, 0700)",
                dir.display()
            );
        }
        certs::secret_file::private_dir(dir)
            .with_context(|| format!("cannot create home directory {}", dir.display()))?;
        let db_path = dir.join("peer.db");
        if !db_path.exists() {
            certs::secret_file::owner_only().truncate(false).open(&db_path)?;
        }
        certs::secret_file::restrict(&db_path)?;
        let opts = SqliteConnectOptions::new()
            .filename(&db_path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal);
        let db = Db::open(&opts).await.with_context(|| format!("cannot open {}", db_path.display()))?;
        let home = Self { dir: dir.to_path_buf(), db };
        home.migrate().await?;
        Ok(home)
    }

    async fn migrate(&self) -> Result<()> {
        let current: i64 = sqlx::query_scalar("PRAGMA user_version").fetch_one(&mut *self.db.lock().await).await?;
        for (i, script) in MIGRATIONS.iter().enumerate().skip(current as usize) {
            let mut conn = self.db.lock().await;
            let mut tx = conn.begin().await?;
            for stmt in script.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                sqlx::query(sqlx::AssertSqlSafe(stmt.to_string())).execute(&mut *tx).await?;
            }
            sqlx::query(sqlx::AssertSqlSafe(format!("PRAGMA user_version = {}", i + 1))).execute(&mut *tx).await?;
            tx.commit().await?;
        }
        Ok(())
    }

    /// Moves WAL checkpoints off the agent's one connection: SQLite otherwise runs one inside whichever
    /// commit crosses 1,000 WAL pages, and that commit (a message being sent or stored) waits milliseconds
    /// for it. A second connection checkpoints passively every 2 s instead, beside the writer.
    pub(crate) async fn checkpoint_in_background(&self) -> Result<tokio::task::JoinHandle<()>> {
        sqlx::query("PRAGMA wal_autocheckpoint = 0").execute(&mut *self.db.lock().await).await?;
        let opts = SqliteConnectOptions::new().filename(self.dir.join("peer.db"));
        let mut conn = sqlx::ConnectOptions::connect(&opts).await?;
        Ok(tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&mut conn).await {
                    tracing::debug!(error = %e, "checkpoint skipped");
                }
            }
        }))
    }

    /// This device's identity, made on first use.
    pub(crate) fn identity(&self) -> Result<Identity> {
        Ok(Identity::load_or_create(&self.dir, "identity", "p2pim-peer")?)
    }

    /// Where this home keeps the account key (0600): on every linked device, never on the broker.
    pub(crate) fn account_key_path(&self) -> PathBuf {
        self.dir.join("account.key")
    }

    /// The account key, if this device holds it.
    pub(crate) fn account_key(&self) -> Result<Option<AccountKeyPair>> {
        Ok(AccountKeyPair::load(&self.account_key_path())?)
    }

    /// Makes a new account key and stores it (the first device of an account, or a reset).
    pub(crate) fn create_account_key(&self) -> Result<AccountKeyPair> {
        let key = AccountKeyPair::generate()?;
        self.save_account_key(&key)?;
        Ok(key)
    }

    /// Stores the account key (replacing any).
    pub(crate) fn save_account_key(&self, key: &AccountKeyPair) -> Result<()> {
        Ok(key.save(&self.account_key_path())?)
    }

    /// The name this device goes by in `peer devices` (its host name unless the user chose one).
    pub(crate) async fn device_name(&self) -> Result<String> {
        Ok(match self.get("device_name").await? {
            Some(n) => n,
            None => default_device_name(),
        })
    }

    pub(crate) async fn get(&self, key: &str) -> Result<Option<String>> {
        Ok(sqlx::query_scalar("SELECT value FROM settings WHERE key = ?")
            .bind(key)
            .fetch_optional(&mut *self.db.lock().await)
            .await?)
    }

    pub(crate) async fn set(&self, key: &str, value: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        )
        .bind(key)
        .bind(value)
        .execute(&mut *self.db.lock().await)
        .await?;
        Ok(())
    }

    pub(crate) async fn delete(&self, key: &str) -> Result<()> {
        sqlx::query("DELETE FROM settings WHERE key = ?").bind(key).execute(&mut *self.db.lock().await).await?;
        Ok(())
    }

    /// The broker fingerprint pinned for `broker`, if this home has talked to that broker before.
    pub(crate) async fn pinned(&self, broker: &str) -> Result<Option<Fingerprint>> {
        if self.get("broker").await?.as_deref() != Some(broker) {
            return Ok(None);
        }
        Ok(match self.get("broker_fingerprint").await? {
            Some(fp) => Some(fp.parse()?),
            None => None,
        })
    }

    /// What this home holds of its account, in words: "N messages, M group messages, K transfers".
    pub(crate) async fn held(&self) -> Result<String> {
        let mut counts = Vec::new();
        for (table, what) in
            [("messages", "messages"), ("group_messages", "group messages"), ("transfers", "transfers")]
        {
            let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
                .fetch_one(&mut *self.db.lock().await)
                .await?;
            counts.push(format!("{n} {what}"));
        }
        Ok(counts.join(", "))
    }

    /// Deletes the account this home holds: its login, history and transfers (the device identity stays).
    pub(crate) async fn forget_account(&self) -> Result<()> {
        let mut conn = self.db.lock().await;
        let mut tx = conn.begin().await?;
        for table in
            ["messages", "group_messages", "transfers", "settings", "read_marks", "friend_keys", "revoked_keys"]
        {
            sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {table}"))).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        // The account key belongs to the account forgotten.
        match std::fs::remove_file(self.account_key_path()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
        Ok(())
    }

    /// Stores a fresh login.
    pub(crate) async fn save_account(&self, a: &Account) -> Result<()> {
        self.set("username", &a.username).await?;
        self.set("broker", &a.broker).await?;
        self.set("broker_fingerprint", &a.broker_fingerprint.to_string()).await?;
        self.set("token", &a.token).await
    }

    /// The stored login, or what to do about its absence.
    pub(crate) async fn account(&self) -> Result<Account> {
        let (Some(username), Some(broker), Some(fp)) =
            (self.get("username").await?, self.get("broker").await?, self.get("broker_fingerprint").await?)
        else {
            bail!(
                "this home has no account yet: run `peer register USER --broker HOST:PORT` or `peer login USER --broker HOST:PORT`"
            );
        };
        let Some(token) = self.get("token").await? else {
            bail!("logged out: run `peer login {username} --broker {broker}`");
        };
        Ok(Account { username, broker, broker_fingerprint: fp.parse()?, token })
    }
}

/// The machine's host name, cleaned to a short printable name; "device" if there is none.
pub(crate) fn default_device_name() -> String {
    let raw = std::env::var("COMPUTERNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .unwrap_or_default();
    let name: String = raw.trim().chars().filter(|c| !c.is_control()).take(64).collect();
    if name.is_empty() { "device".into() } else { name }
}
