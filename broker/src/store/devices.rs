//! Account keys and the device records they signed. Keys, fingerprints and records are stored as hex text
//! (every backend carries text through `Any` alike); what they mean is checked in `crate::devices`, never
//! here. Each change that depends on what is stored (the account's key, a revocation) reads and writes in
//! one transaction, behind a write on the user's row that serialises it with every other such change.

use super::{Db, DbError};
use sqlx::Connection as _;

/// One stored device record.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct DeviceRow {
    pub(crate) fingerprint: String,
    pub(crate) record: String,
    pub(crate) last_seen: Option<i64>,
}

/// What storing a record came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Certified {
    /// Stored; `first_key` when the account had no key until now, `changed` unless the same record was
    /// there already.
    Stored { first_key: bool, changed: bool },
    /// The account has another key.
    OtherKey,
    /// The device was revoked.
    Revoked,
}

impl Db {
    /// The account's key (hex), if it has one.
    pub(crate) async fn account_key(&self, username: &str) -> Result<Option<String>, DbError> {
        self.run(async |c| {
            let key: Option<Option<String>> =
                sqlx::query_scalar(self.sql(sql!("SELECT account_key FROM users WHERE username = ?")))
                    .bind(username)
                    .fetch_optional(&mut *c)
                    .await?;
            Ok(key.flatten())
        })
        .await
    }

    /// Stores a device record under the account key `key`: the first key an account presents becomes its
    /// key; after that only the same key may store records, never for a revoked device. A record for a
    /// device already stored replaces it (a rename) and keeps when it was first stored.
    pub(crate) async fn certify(
        &self,
        username: &str,
        key: &str,
        fingerprint: &str,
        record: &str,
        now: i64,
    ) -> Result<Certified, DbError> {
        // The usual case, a device publishing at each session start the record it published before: one
        // read, no write (a revocation deletes the record in the same step, so a stored one is not revoked).
        if let (Some(k), Some(r)) = self.key_and_record(username, fingerprint).await?
            && k == key
            && r == record
        {
            return Ok(Certified::Stored { first_key: false, changed: false });
        }
        self.run(async |c| {
            let mut tx = c.begin().await?;
            // Takes the user's row for the rest of the transaction (a write lock on every backend).
            sqlx::query(self.sql(sql!("UPDATE users SET account_key = account_key WHERE username = ?")))
                .bind(username)
                .execute(&mut *tx)
                .await?;
            let stored: Option<Option<String>> =
                sqlx::query_scalar(self.sql(sql!("SELECT account_key FROM users WHERE username = ?")))
                    .bind(username)
                    .fetch_optional(&mut *tx)
                    .await?;
            let first_key = match stored.flatten() {
                None => true,
                Some(k) if k == key => false,
                Some(_) => return Ok(Certified::OtherKey),
            };
            let revoked: Option<i64> = sqlx::query_scalar(
                self.sql(sql!("SELECT at FROM revoked_devices WHERE username = ? AND fingerprint = ?")),
            )
            .bind(username)
            .bind(fingerprint)
            .fetch_optional(&mut *tx)
            .await?;
            if revoked.is_some() {
                return Ok(Certified::Revoked);
            }
            let existing: Option<i64> = sqlx::query_scalar(
                self.sql(sql!("SELECT created_at FROM devices WHERE username = ? AND fingerprint = ?")),
            )
            .bind(username)
            .bind(fingerprint)
            .fetch_optional(&mut *tx)
            .await?;
            if first_key {
                sqlx::query(self.sql(sql!("UPDATE users SET account_key = ? WHERE username = ?")))
                    .bind(key)
                    .bind(username)
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query(self.sql(sql!("DELETE FROM devices WHERE username = ? AND fingerprint = ?")))
                .bind(username)
                .bind(fingerprint)
                .execute(&mut *tx)
                .await?;
            self.insert_device(&mut tx, username, fingerprint, record, existing.unwrap_or(now)).await?;
            tx.commit().await?;
            Ok(Certified::Stored { first_key, changed: true })
        })
        .await
    }

    /// The account's key and one device's record, in one read (`None`s for what is not there).
    pub(crate) async fn key_and_record(
        &self,
        username: &str,
        fingerprint: &str,
    ) -> Result<(Option<String>, Option<String>), DbError> {
        self.run(async |c| {
            let row: Option<(Option<String>, Option<String>)> = sqlx::query_as(self.sql(sql!(
                "SELECT u.account_key, d.record FROM users u \
                 LEFT JOIN devices d ON d.username = u.username AND d.fingerprint = ? WHERE u.username = ?"
            )))
            .bind(fingerprint)
            .bind(username)
            .fetch_optional(&mut *c)
            .await?;
            Ok(row.unwrap_or((None, None)))
        })
        .await
    }

    /// The account's key and every device record it has.
    pub(crate) async fn devices(&self, username: &str) -> Result<(Option<String>, Vec<DeviceRow>), DbError> {
        let key = self.account_key(username).await?;
        self.run(async |c| {
            let rows = sqlx::query_as(self.sql(sql!(
                "SELECT fingerprint, record, last_seen FROM devices WHERE username = ? ORDER BY created_at, fingerprint"
            )))
            .bind(username)
            .fetch_all(&mut *c)
            .await?;
            Ok((key, rows))
        })
        .await
    }

    /// Cuts a device off: its record and tokens go and it is remembered as revoked, in one step. `false` if
    /// the account has no such device (nothing changed).
    pub(crate) async fn revoke_device(
        &self,
        username: &str,
        fingerprint: &str,
        revocation: &str,
        now: i64,
    ) -> Result<bool, DbError> {
        self.run(async |c| {
            let mut tx = c.begin().await?;
            let gone = sqlx::query(self.sql(sql!("DELETE FROM devices WHERE username = ? AND fingerprint = ?")))
                .bind(username)
                .bind(fingerprint)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if gone == 0 {
                return Ok(false);
            }
            sqlx::query(
                self.sql(sql!(
                    "INSERT INTO revoked_devices (username, fingerprint, revocation, at) VALUES (?, ?, ?, ?)"
                )),
            )
            .bind(username)
            .bind(fingerprint)
            .bind(revocation)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            sqlx::query(self.sql(sql!("DELETE FROM tokens WHERE username = ? AND device = ?")))
                .bind(username)
                .bind(fingerprint)
                .execute(&mut *tx)
                .await?;
            // Its letters go with it: a revoked device gets nothing more, waiting or new.
            for q in [
                sql!("DELETE FROM deposits WHERE username = ? AND device = ?"),
                sql!("DELETE FROM mailbox_keys WHERE username = ? AND fingerprint = ?"),
            ] {
                sqlx::query(self.sql(q)).bind(username).bind(fingerprint).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(true)
        })
        .await
    }

    /// Replaces the account key: every device record goes but `record` (the resetting device's, under the
    /// new key), and every token of another device is revoked, in one step.
    pub(crate) async fn reset_account_key(
        &self,
        username: &str,
        key: &str,
        fingerprint: &str,
        record: &str,
        now: i64,
    ) -> Result<(), DbError> {
        self.run(async |c| {
            let mut tx = c.begin().await?;
            sqlx::query(self.sql(sql!("UPDATE users SET account_key = ? WHERE username = ?")))
                .bind(key)
                .bind(username)
                .execute(&mut *tx)
                .await?;
            sqlx::query(self.sql(sql!("DELETE FROM devices WHERE username = ?")))
                .bind(username)
                .execute(&mut *tx)
                .await?;
            // A device revoked under the old key stays revoked: it was cut off for a reason.
            self.insert_device(&mut tx, username, fingerprint, record, now).await?;
            for q in [
                sql!("DELETE FROM tokens WHERE username = ? AND (device IS NULL OR device <> ?)"),
                // Letters sealed to devices that are gone can never be opened; the resetting device's own keys
                // stand (they are certified again under the new key when it next publishes them).
                sql!("DELETE FROM deposits WHERE username = ? AND device <> ?"),
                sql!("DELETE FROM mailbox_keys WHERE username = ? AND fingerprint <> ?"),
            ] {
                sqlx::query(self.sql(q)).bind(username).bind(fingerprint).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn insert_device(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        username: &str,
        fingerprint: &str,
        record: &str,
        created_at: i64,
    ) -> Result<(), DbError> {
        sqlx::query(
            self.sql(sql!("INSERT INTO devices (username, fingerprint, record, created_at) VALUES (?, ?, ?, ?)")),
        )
        .bind(username)
        .bind(fingerprint)
        .bind(record)
        .bind(created_at)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Records when a device's session ended.
    pub(crate) async fn device_seen(&self, username: &str, fingerprint: &str, at: i64) -> Result<(), DbError> {
        self.run(async |c| {
            sqlx::query(self.sql(sql!("UPDATE devices SET last_seen = ? WHERE username = ? AND fingerprint = ?")))
                .bind(at)
                .bind(username)
                .bind(fingerprint)
                .execute(&mut *c)
                .await?;
            Ok(())
        })
        .await
    }
}
