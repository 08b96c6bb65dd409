//! The friend graph: friendships (one row per direction), pending requests, and blocks.

use super::accounts::UserRow;
use super::{Db, DbError, Sql, created};
use shared::proto::{FriendRequestInfo, UserInfo};
use sqlx::AnyConnection;
use sqlx::Connection as _;

/// A friend as `owner` sees them.
#[derive(sqlx::FromRow)]
pub(crate) struct FriendRow {
    #[sqlx(flatten)]
    user: UserRow,
    pub(crate) remark: Option<String>,
}

impl FriendRow {
    pub(crate) fn user(&self) -> UserInfo {
        self.user.clone().into()
    }
}

#[derive(sqlx::FromRow)]
struct RequestRow {
    #[sqlx(flatten)]
    user: UserRow,
    message: String,
    created_at: i64,
}

impl From<RequestRow> for FriendRequestInfo {
    fn from(r: RequestRow) -> Self {
        FriendRequestInfo { user: r.user.into(), message: r.message, created_at: r.created_at }
    }
}

/// Which end of the requests to list.
pub(crate) enum Direction {
    /// Requests to the user.
    Incoming,
    /// Requests the user made.
    Outgoing,
}

impl Db {
    pub(crate) async fn are_friends(&self, a: &str, b: &str) -> Result<bool, DbError> {
        self.exists(sql!("SELECT 1 FROM friends WHERE owner = ? AND friend = ?"), a, b).await
    }

    /// Whether `from` asked `to` and it is still pending.
    pub(crate) async fn request_pending(&self, from: &str, to: &str) -> Result<bool, DbError> {
        self.exists(sql!("SELECT 1 FROM friend_requests WHERE from_user = ? AND to_user = ?"), from, to).await
    }

    /// Whether `owner` blocked `blocked`.
    pub(crate) async fn blocks(&self, owner: &str, blocked: &str) -> Result<bool, DbError> {
        self.exists(sql!("SELECT 1 FROM blocks WHERE owner = ? AND blocked = ?"), owner, blocked).await
    }

    async fn exists(&self, q: &'static Sql, a: &str, b: &str) -> Result<bool, DbError> {
        self.run(async |c| {
            // Only whether a row came back: `1` decodes as different integer types on different backends.
            Ok(sqlx::query(self.sql(q)).bind(a).bind(b).fetch_optional(&mut *c).await?.is_some())
        })
        .await
    }

    /// Stores a request; `false` if one from `from` to `to` is pending already.
    pub(crate) async fn insert_request(
        &self,
        from: &str,
        to: &str,
        message: &str,
        created_at: i64,
    ) -> Result<bool, DbError> {
        self.run(async |c| {
            let res = sqlx::query(self.sql(sql!(
                "INSERT INTO friend_requests (from_user, to_user, message, created_at) VALUES (?, ?, ?, ?)"
            )))
            .bind(from)
            .bind(to)
            .bind(message)
            .bind(created_at)
            .execute(&mut *c)
            .await;
            created(res)
        })
        .await
    }

    /// Pending requests to or from `me`, oldest first, with the other user's face.
    pub(crate) async fn requests(&self, me: &str, direction: Direction) -> Result<Vec<FriendRequestInfo>, DbError> {
        self.run(async |c| {
            let q = match direction {
                Direction::Incoming => sql!(
                    "SELECT u.username, u.display_name, r.message, r.created_at FROM friend_requests r \
                     JOIN users u ON u.username = r.from_user WHERE r.to_user = ? ORDER BY r.created_at"
                ),
                Direction::Outgoing => sql!(
                    "SELECT u.username, u.display_name, r.message, r.created_at FROM friend_requests r \
                     JOIN users u ON u.username = r.to_user WHERE r.from_user = ? ORDER BY r.created_at"
                ),
            };
            let rows: Vec<RequestRow> = sqlx::query_as(self.sql(q)).bind(me).fetch_all(&mut *c).await?;
            Ok(rows.into_iter().map(FriendRequestInfo::from).collect())
        })
        .await
    }

    /// Deletes the request from `from` to `to`; whether there was one.
    pub(crate) async fn delete_request(&self, from: &str, to: &str) -> Result<bool, DbError> {
        self.run(async |c| {
            let res = sqlx::query(self.sql(sql!("DELETE FROM friend_requests WHERE from_user = ? AND to_user = ?")))
                .bind(from)
                .bind(to)
                .execute(&mut *c)
                .await?;
            Ok(res.rows_affected() > 0)
        })
        .await
    }

    /// Makes `a` and `b` friends (both rows) and drops the requests between them, together.
    pub(crate) async fn befriend(&self, a: &str, b: &str, now: i64) -> Result<(), DbError> {
        self.run(async |c| {
            let mut tx = c.begin().await?;
            self.drop_requests(&mut tx, a, b).await?;
            for (owner, friend) in [(a, b), (b, a)] {
                sqlx::query(
                    self.sql(sql!("INSERT INTO friends (owner, friend, remark, created_at) VALUES (?, ?, NULL, ?)")),
                )
                .bind(owner)
                .bind(friend)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// Ends the friendship of `a` and `b` (both rows); whether there was one.
    pub(crate) async fn unfriend(&self, a: &str, b: &str) -> Result<bool, DbError> {
        self.run(async |c| self.unfriend_rows(c, a, b).await).await
    }

    /// `me` blocks `other`: their friendship and requests end and the block is recorded, together. Whether
    /// a friendship ended.
    pub(crate) async fn block(&self, me: &str, other: &str, now: i64) -> Result<bool, DbError> {
        self.run(async |c| {
            let mut tx = c.begin().await?;
            let ended = self.unfriend_rows(&mut tx, me, other).await?;
            self.drop_requests(&mut tx, me, other).await?;
            sqlx::query(self.sql(sql!("DELETE FROM blocks WHERE owner = ? AND blocked = ?")))
                .bind(me)
                .bind(other)
                .execute(&mut *tx)
                .await?;
            sqlx::query(self.sql(sql!("INSERT INTO blocks (owner, blocked, created_at) VALUES (?, ?, ?)")))
                .bind(me)
                .bind(other)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(ended)
        })
        .await
    }

    /// Lifts a block; whether there was one.
    pub(crate) async fn unblock(&self, me: &str, other: &str) -> Result<bool, DbError> {
        self.run(async |c| {
            let res = sqlx::query(self.sql(sql!("DELETE FROM blocks WHERE owner = ? AND blocked = ?")))
                .bind(me)
                .bind(other)
                .execute(&mut *c)
                .await?;
            Ok(res.rows_affected() > 0)
        })
        .await
    }

    /// The users `me` blocked, by username.
    pub(crate) async fn blocked(&self, me: &str) -> Result<Vec<UserInfo>, DbError> {
        self.run(async |c| {
            let rows: Vec<UserRow> = sqlx::query_as(self.sql(sql!(
                "SELECT u.username, u.display_name FROM blocks b JOIN users u ON u.username = b.blocked \
                 WHERE b.owner = ? ORDER BY u.username"
            )))
            .bind(me)
            .fetch_all(&mut *c)
            .await?;
            Ok(rows.into_iter().map(UserInfo::from).collect())
        })
        .await
    }

    pub(crate) async fn set_remark(&self, me: &str, friend: &str, remark: Option<&str>) -> Result<(), DbError> {
        self.run(async |c| {
            sqlx::query(self.sql(sql!("UPDATE friends SET remark = ? WHERE owner = ? AND friend = ?")))
                .bind(remark)
                .bind(me)
                .bind(friend)
                .execute(&mut *c)
                .await?;
            Ok(())
        })
        .await
    }

    /// `me`'s friends, by username.
    pub(crate) async fn friends(&self, me: &str) -> Result<Vec<FriendRow>, DbError> {
        self.run(async |c| {
            Ok(sqlx::query_as(self.sql(sql!(
                "SELECT u.username, u.display_name, f.remark FROM friends f JOIN users u ON u.username = f.friend \
                 WHERE f.owner = ? ORDER BY u.username"
            )))
            .bind(me)
            .fetch_all(&mut *c)
            .await?)
        })
        .await
    }

    /// Usernames of `me`'s friends.
    pub(crate) async fn friend_names(&self, me: &str) -> Result<Vec<String>, DbError> {
        self.run(async |c| {
            Ok(sqlx::query_scalar(self.sql(sql!("SELECT friend FROM friends WHERE owner = ?")))
                .bind(me)
                .fetch_all(&mut *c)
                .await?)
        })
        .await
    }

    async fn unfriend_rows(&self, conn: &mut AnyConnection, a: &str, b: &str) -> Result<bool, DbError> {
        let res = sqlx::query(
            self.sql(sql!("DELETE FROM friends WHERE (owner = ? AND friend = ?) OR (owner = ? AND friend = ?)")),
        )
        .bind(a)
        .bind(b)
        .bind(b)
        .bind(a)
        .execute(&mut *conn)
        .await?;
        Ok(res.rows_affected() > 0)
    }

    async fn drop_requests(&self, conn: &mut AnyConnection, a: &str, b: &str) -> Result<(), DbError> {
        sqlx::query(self.sql(sql!(
            "DELETE FROM friend_requests WHERE (from_user = ? AND to_user = ?) OR (from_user = ? AND to_user = ?)"
        )))
        .bind(a)
        .bind(b)
        .bind(b)
        .bind(a)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}
