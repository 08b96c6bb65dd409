//! Users and session tokens. Tokens are stored by their SHA-256 only.

use super::{Db, DbError, created};
use shared::proto::UserInfo;
use sqlx::Connection as _;

/// A user's public face as stored.
#[derive(Clone, sqlx::FromRow)]
pub(crate) struct UserRow {
    pub(crate) username: String,
    display_name: String,
}

impl From<UserRow> for UserInfo {
    fn from(r: UserRow) -> Self {
        UserInfo { username: r.username, display_name: r.display_name }
    }
}

/// A token's owner and its expiry.
#[derive(sqlx::FromRow)]
pub(crate) struct TokenRow {
    #[sqlx(flatten)]
    user: UserRow,
    pub(crate) expires_at: i64,
    /// The device (certificate fingerprint, hex) it was issued to; `None` for tokens from before devices
    /// were recorded.
    pub(crate) device: Option<String>,
}

impl TokenRow {
    pub(crate) fn user(self) -> UserInfo {
        self.user.into()
    }
}

/// What a new account is stored with.
pub(crate) struct NewUser<'a> {
    pub(crate) username: &'a str,
    pub(crate) display_name: &'a str,
    pub(crate) search_key: &'a str,
    pub(crate) password_hash: &'a str,
    pub(crate) created_at: i64,
}

impl Db {
    /// Stores a new account; `false` if the username is taken.
    pub(crate) async fn insert_user(&self, u: &NewUser<'_>) -> Result<bool, DbError> {
        self.run(async |c| {
            let res = sqlx::query(self.sql(sql!(
                "INSERT INTO users (username, display_name, search_key, password_hash, created_at) VALUES (?, ?, ?, ?, ?)"
            )))
            .bind(u.username)
            .bind(u.display_name)
            .bind(u.search_key)
            .bind(u.password_hash)
            .bind(u.created_at)
            .execute(&mut *c)
            .await;
            created(res)
        })
        .await
    }

    /// A user's public face, if the user exists.
    pub(crate) async fn user(&self, username: &str) -> Result<Option<UserInfo>, DbError> {
        self.run(async |c| {
            let row: Option<UserRow> =
                sqlx::query_as(self.sql(sql!("SELECT username, display_name FROM users WHERE username = ?")))
                    .bind(username)
                    .fetch_optional(&mut *c)
                    .await?;
            Ok(row.map(UserInfo::from))
        })
        .await
    }

    pub(crate) async fn password_hash(&self, username: &str) -> Result<Option<String>, DbError> {
        self.run(async |c| {
            Ok(sqlx::query_scalar(self.sql(sql!("SELECT password_hash FROM users WHERE username = ?")))
                .bind(username)
                .fetch_optional(&mut *c)
                .await?)
        })
        .await
    }

    /// Replaces a password and revokes every token of the user but `keep`, together.
    pub(crate) async fn set_password(&self, username: &str, hash: &str, keep: &str) -> Result<(), DbError> {
        self.run(async |c| {
            let mut tx = c.begin().await?;
            sqlx::query(self.sql(sql!("UPDATE users SET password_hash = ? WHERE username = ?")))
                .bind(hash)
                .bind(username)
                .execute(&mut *tx)
                .await?;
            sqlx::query(self.sql(sql!("DELETE FROM tokens WHERE username = ? AND token_hash <> ?")))
                .bind(username)
                .bind(keep)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    pub(crate) async fn set_display_name(
        &self,
        username: &str,
        display_name: &str,
        search_key: &str,
    ) -> Result<(), DbError> {
        self.run(async |c| {
            sqlx::query(self.sql(sql!("UPDATE users SET display_name = ?, search_key = ? WHERE username = ?")))
                .bind(display_name)
                .bind(search_key)
                .bind(username)
                .execute(&mut *c)
                .await?;
            Ok(())
        })
        .await
    }

    pub(crate) async fn insert_token(
        &self,
        token_hash: &str,
        username: &str,
        device: &str,
        created_at: i64,
        expires_at: i64,
    ) -> Result<(), DbError> {
        self.run(async |c| {
            sqlx::query(self.sql(sql!(
                "INSERT INTO tokens (token_hash, username, device, created_at, expires_at) VALUES (?, ?, ?, ?, ?)"
            )))
            .bind(token_hash)
            .bind(username)
            .bind(device)
            .bind(created_at)
            .bind(expires_at)
            .execute(&mut *c)
            .await?;
            Ok(())
        })
        .await
    }

    /// Who a token (by hash) belongs to, and until when.
    pub(crate) async fn token(&self, token_hash: &str) -> Result<Option<TokenRow>, DbError> {
        self.run(async |c| {
            Ok(sqlx::query_as(self.sql(sql!(
                "SELECT u.username, u.display_name, t.expires_at, t.device FROM tokens t JOIN users u ON u.username = t.username \
                 WHERE t.token_hash = ?"
            )))
            .bind(token_hash)
            .fetch_optional(&mut *c)
            .await?)
        })
        .await
    }

    pub(crate) async fn delete_token(&self, token_hash: &str) -> Result<(), DbError> {
        self.run(async |c| {
            sqlx::query(self.sql(sql!("DELETE FROM tokens WHERE token_hash = ?")))
                .bind(token_hash)
                .execute(&mut *c)
                .await?;
            Ok(())
        })
        .await
    }

    /// Users whose search key matches `pattern` (a LIKE pattern escaped with `!`), but `me`, by username.
    pub(crate) async fn search_users(
        &self,
        pattern: &str,
        me: &str,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<UserInfo>, DbError> {
        self.run(async |c| {
            let rows: Vec<UserRow> = sqlx::query_as(self.sql(sql!(
                "SELECT username, display_name FROM users WHERE search_key LIKE ? ESCAPE '!' AND username <> ? \
                 ORDER BY username LIMIT ? OFFSET ?"
            )))
            .bind(pattern)
            .bind(me)
            .bind(limit)
            .bind(offset)
            .fetch_all(&mut *c)
            .await?;
            Ok(rows.into_iter().map(UserInfo::from).collect())
        })
        .await
    }
}
