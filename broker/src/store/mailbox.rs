//! The mailbox's rows: each device's certified mailbox keys (hex of the signed statement, checked in
//! `crate::mailbox`), and sealed letters waiting for a device, stored as the opaque bytes they arrived as.
//! A letter is taken (its limits checked and it stored) in one transaction behind a write on the
//! recipient's user row, so two deposits racing for the last room cannot both get it.

use super::{Db, DbError};
use sqlx::Connection as _;
use sqlx::Row;

/// One letter waiting for a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LetterRow {
    pub(crate) id: i64,
    pub(crate) sender: String,
    pub(crate) letter: Vec<u8>,
    pub(crate) at: i64,
}

/// What a deposit came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Deposited {
    Stored,
    /// The device is not one of the user's (never was, or was revoked).
    NoDevice,
    /// Over a limit: letters already waiting for the device, and their bytes.
    Full {
        count: i64,
        bytes: i64,
    },
}

/// Most letters and bytes that may wait for one device.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Room {
    pub(crate) count: i64,
    pub(crate) bytes: i64,
}

impl Db {
    /// Stores a device's mailbox keys (replacing what it published before). `false`: the same keys were
    /// there already, nothing was written.
    pub(crate) async fn publish_mailbox(&self, username: &str, fingerprint: &str, keys: &str) -> Result<bool, DbError> {
        self.run(async |c| {
            let stored: Option<String> = sqlx::query_scalar(
                self.sql(sql!("SELECT mail_keys FROM mailbox_keys WHERE username = ? AND fingerprint = ?")),
            )
            .bind(username)
            .bind(fingerprint)
            .fetch_optional(&mut *c)
            .await?;
            if stored.as_deref() == Some(keys) {
                return Ok(false);
            }
            let mut tx = c.begin().await?;
            sqlx::query(self.sql(sql!("DELETE FROM mailbox_keys WHERE username = ? AND fingerprint = ?")))
                .bind(username)
                .bind(fingerprint)
                .execute(&mut *tx)
                .await?;
            sqlx::query(self.sql(sql!("INSERT INTO mailbox_keys (username, fingerprint, mail_keys) VALUES (?, ?, ?)")))
                .bind(username)
                .bind(fingerprint)
                .bind(keys)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(true)
        })
        .await
    }

    /// The account key and the mailbox keys of each device that has a record (a revoked or reset-away
    /// device has none, so its keys are not served even if a row lingers).
    pub(crate) async fn mailboxes(&self, username: &str) -> Result<(Option<String>, Vec<String>), DbError> {
        let key = self.account_key(username).await?;
        self.run(async |c| {
            let keys = sqlx::query_scalar(self.sql(sql!(
                "SELECT m.mail_keys FROM mailbox_keys m JOIN devices d \
                 ON d.username = m.username AND d.fingerprint = m.fingerprint WHERE m.username = ? ORDER BY d.created_at"
            )))
            .bind(username)
            .fetch_all(&mut *c)
            .await?;
            Ok((key, keys))
        })
        .await
    }

    /// Leaves a letter for one of `username`'s devices, within `room`.
    pub(crate) async fn deposit(
        &self,
        username: &str,
        device: &str,
        sender: &str,
        letter: &[u8],
        room: Room,
        now: i64,
    ) -> Result<Deposited, DbError> {
        self.run(async |c| {
            let mut tx = c.begin().await?;
            // Serialises deposits to this user's devices (a write lock on every backend) until the commit.
            sqlx::query(self.sql(sql!("UPDATE users SET account_key = account_key WHERE username = ?")))
                .bind(username)
                .execute(&mut *tx)
                .await?;
            let known: Option<i64> =
                sqlx::query_scalar(self.sql(sql!("SELECT created_at FROM devices WHERE username = ? AND fingerprint = ?")))
                    .bind(username)
                    .bind(device)
                    .fetch_optional(&mut *tx)
                    .await?;
            if known.is_none() {
                return Ok(Deposited::NoDevice);
            }
            // SUM's own type differs per backend (DECIMAL on MySQL, NUMERIC on PostgreSQL): cast to an integer.
            let usage = match self.backend {
                super::Backend::MySql => sql!(
                    "SELECT COUNT(*) AS n, CAST(COALESCE(SUM(size), 0) AS SIGNED) AS bytes FROM deposits WHERE device = ?"
                ),
                _ => sql!(
                    "SELECT COUNT(*) AS n, CAST(COALESCE(SUM(size), 0) AS BIGINT) AS bytes FROM deposits WHERE device = ?"
                ),
            };
            let row = sqlx::query(self.sql(usage)).bind(device).fetch_one(&mut *tx).await?;
            let (count, bytes): (i64, i64) = (row.try_get("n")?, row.try_get("bytes")?);
            let size = letter.len() as i64;
            if count + 1 > room.count || bytes + size > room.bytes {
                return Ok(Deposited::Full { count, bytes });
            }
            sqlx::query(
                self.sql(sql!(
                    "INSERT INTO deposits (username, device, sender, letter, size, at) VALUES (?, ?, ?, ?, ?, ?)"
                )),
            )
            .bind(username)
            .bind(device)
            .bind(sender)
            .bind(letter)
            .bind(size)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(Deposited::Stored)
        })
        .await
    }

    /// Letters waiting for `device` after id `after`, oldest first, at most `limit`.
    pub(crate) async fn pickup(&self, device: &str, after: i64, limit: i64) -> Result<Vec<LetterRow>, DbError> {
        self.run(async |c| {
            let rows = sqlx::query(self.sql(sql!(
                "SELECT id, sender, letter, at FROM deposits WHERE device = ? AND id > ? ORDER BY id LIMIT ?"
            )))
            .bind(device)
            .bind(after)
            .bind(limit)
            .fetch_all(&mut *c)
            .await?;
            let read = |r: &sqlx::any::AnyRow| -> Result<LetterRow, sqlx::Error> {
                Ok(LetterRow {
                    id: r.try_get("id")?,
                    sender: r.try_get("sender")?,
                    letter: r.try_get("letter")?,
                    at: r.try_get("at")?,
                })
            };
            // A row that does not decode (edited by hand into another type) is passed over, not allowed to stop
            // every letter behind it; retention deletes it in time.
            Ok(rows
                .iter()
                .filter_map(|r| {
                    read(r)
                        .map_err(|e| tracing::error!(device, error = %e, "a stored letter does not decode; skipped"))
                        .ok()
                })
                .collect())
        })
        .await
    }

    /// Deletes letters `device` stored; returns how many went.
    pub(crate) async fn ack(&self, device: &str, ids: &[i64]) -> Result<u64, DbError> {
        self.run(async |c| {
            let mut gone = 0;
            for chunk in ids.chunks(256) {
                let marks = vec!["?"; chunk.len()].join(", ");
                let text = format!("DELETE FROM deposits WHERE device = ? AND id IN ({marks})");
                let text = match self.backend {
                    super::Backend::Postgres => super::numbered_placeholders(&text),
                    _ => text,
                };
                let mut q = sqlx::query(sqlx::AssertSqlSafe(text)).bind(device);
                for id in chunk {
                    q = q.bind(*id);
                }
                gone += q.execute(&mut *c).await?.rows_affected();
            }
            Ok(gone)
        })
        .await
    }

    /// Deletes letters deposited before `cutoff`.
    pub(crate) async fn prune_deposits(&self, cutoff: i64) -> Result<u64, DbError> {
        self.run(async |c| {
            Ok(sqlx::query(self.sql(sql!("DELETE FROM deposits WHERE at < ?")))
                .bind(cutoff)
                .execute(&mut *c)
                .await?
                .rows_affected())
        })
        .await
    }

    /// Bytes of letters stored, and how many (for `bench mailbox`'s bytes per message, and the operator).
    pub(crate) async fn mailbox_usage(&self) -> Result<(i64, i64), DbError> {
        self.run(async |c| {
            let text = match self.backend {
                super::Backend::MySql => {
                    "SELECT COUNT(*) AS n, CAST(COALESCE(SUM(size), 0) AS SIGNED) AS bytes FROM deposits"
                }
                _ => "SELECT COUNT(*) AS n, CAST(COALESCE(SUM(size), 0) AS BIGINT) AS bytes FROM deposits",
            };
            let row = sqlx::query(text).fetch_one(&mut *c).await?;
            Ok((row.try_get("n")?, row.try_get("bytes")?))
        })
        .await
    }
}
