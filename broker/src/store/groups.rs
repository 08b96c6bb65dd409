//! Groups: the group row (name, owner, message counter), members, invitations and the numbered log.

use super::accounts::UserRow;
use super::{Backend, Db, DbError, Sql, created};
use shared::proto::{GroupInfo, GroupInvitation, GroupMessage, UserInfo};
use sqlx::Connection as _;

#[derive(sqlx::FromRow)]
struct InvitationRow {
    group_id: i64,
    name: String,
    #[sqlx(flatten)]
    inviter: UserRow,
    created_at: i64,
}

/// A member as listed, with the group's owner.
#[derive(sqlx::FromRow)]
pub(crate) struct MemberRow {
    #[sqlx(flatten)]
    user: UserRow,
    owner: String,
}

impl MemberRow {
    pub(crate) fn is_owner(&self) -> bool {
        self.owner == self.user.username
    }

    pub(crate) fn user(self) -> UserInfo {
        self.user.into()
    }
}

#[derive(sqlx::FromRow)]
struct GroupRow {
    id: i64,
    name: String,
    owner: String,
    last_seq: i64,
    members: i64,
}

#[derive(sqlx::FromRow)]
struct MessageRow {
    seq: i64,
    sender: String,
    system: i64,
    text: String,
    created_at: i64,
}

/// A message to store.
pub(crate) struct NewMessage<'a> {
    pub(crate) group_id: i64,
    pub(crate) sender: &'a str,
    pub(crate) system: bool,
    pub(crate) text: &'a str,
    pub(crate) at: i64,
    /// Keep at most this many of the group's newest messages.
    pub(crate) keep: i64,
    /// The sender's id for the post (hex), if it is to be stored at most once.
    pub(crate) post_id: Option<&'a str>,
}

/// A message in the group's log: its number and time, and whether it was stored just now (or was there
/// already, with the same post id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Appended {
    pub(crate) seq: i64,
    pub(crate) at: i64,
    pub(crate) new: bool,
}

/// Deletes every row of a group, children first.
static DELETE_GROUP: [Sql; 4] = [
    Sql::new("DELETE FROM group_messages WHERE group_id = ?"),
    Sql::new("DELETE FROM group_invites WHERE group_id = ?"),
    Sql::new("DELETE FROM group_members WHERE group_id = ?"),
    Sql::new("DELETE FROM chat_groups WHERE id = ?"),
];

impl Db {
    /// Creates a group with `owner` as its only member; its id.
    pub(crate) async fn create_group(&self, name: &str, owner: &str, now: i64) -> Result<Option<i64>, DbError> {
        self.run(async |c| {
            let mut tx = c.begin().await?;
            // SQLite and PostgreSQL return the new id; MySQL reports it (sqlx's Any driver gives SQLite none).
            let id: Option<i64> = if self.backend != Backend::MySql {
                Some(
                    sqlx::query_scalar(self.sql(sql!(
                        "INSERT INTO chat_groups (name, owner, last_seq, created_at) VALUES (?, ?, 0, ?) RETURNING id"
                    )))
                    .bind(name)
                    .bind(owner)
                    .bind(now)
                    .fetch_one(&mut *tx)
                    .await?,
                )
            } else {
                sqlx::query(
                    self.sql(sql!("INSERT INTO chat_groups (name, owner, last_seq, created_at) VALUES (?, ?, 0, ?)")),
                )
                .bind(name)
                .bind(owner)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .last_insert_id()
            };
            let Some(id) = id else { return Ok(None) };
            sqlx::query(self.sql(sql!("INSERT INTO group_members (group_id, username, joined_at) VALUES (?, ?, ?)")))
                .bind(id)
                .bind(owner)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(Some(id))
        })
        .await
    }

    /// Records an invitation; `false` if one is pending already.
    pub(crate) async fn insert_invite(
        &self,
        group_id: i64,
        username: &str,
        inviter: &str,
        created_at: i64,
    ) -> Result<bool, DbError> {
        self.run(async |c| {
            let res =
                sqlx::query(self.sql(sql!(
                    "INSERT INTO group_invites (group_id, username, inviter, created_at) VALUES (?, ?, ?, ?)"
                )))
                .bind(group_id)
                .bind(username)
                .bind(inviter)
                .bind(created_at)
                .execute(&mut *c)
                .await;
            created(res)
        })
        .await
    }

    /// `me`'s pending invitations, oldest first.
    pub(crate) async fn invitations(&self, me: &str) -> Result<Vec<GroupInvitation>, DbError> {
        self.run(async |c| {
            let rows: Vec<InvitationRow> = sqlx::query_as(self.sql(sql!(
                "SELECT g.id AS group_id, g.name, u.username, u.display_name, i.created_at FROM group_invites i \
                 JOIN chat_groups g ON g.id = i.group_id JOIN users u ON u.username = i.inviter \
                 WHERE i.username = ? ORDER BY i.created_at"
            )))
            .bind(me)
            .fetch_all(&mut *c)
            .await?;
            Ok(rows
                .into_iter()
                .map(|r| GroupInvitation {
                    group_id: r.group_id,
                    name: r.name,
                    inviter: r.inviter.into(),
                    created_at: r.created_at,
                })
                .collect())
        })
        .await
    }

    /// Deletes `me`'s invitation; whether there was one.
    pub(crate) async fn delete_invite(&self, group_id: i64, me: &str) -> Result<bool, DbError> {
        self.run(async |c| {
            let res = sqlx::query(self.sql(sql!("DELETE FROM group_invites WHERE group_id = ? AND username = ?")))
                .bind(group_id)
                .bind(me)
                .execute(&mut *c)
                .await?;
            Ok(res.rows_affected() > 0)
        })
        .await
    }

    /// Turns `me`'s invitation into membership, together; `false` if there was no invitation.
    pub(crate) async fn accept_invite(&self, group_id: i64, me: &str, now: i64) -> Result<bool, DbError> {
        self.run(async |c| {
            let mut tx = c.begin().await?;
            let res = sqlx::query(self.sql(sql!("DELETE FROM group_invites WHERE group_id = ? AND username = ?")))
                .bind(group_id)
                .bind(me)
                .execute(&mut *tx)
                .await?;
            if res.rows_affected() == 0 {
                return Ok(false);
            }
            sqlx::query(self.sql(sql!("INSERT INTO group_members (group_id, username, joined_at) VALUES (?, ?, ?)")))
                .bind(group_id)
                .bind(me)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(true)
        })
        .await
    }

    /// Takes `me` out of the group, together with what follows: the owner's role passes to the
    /// longest-standing member, and the last one out deletes the group. That member, if any.
    pub(crate) async fn leave_group(&self, group_id: i64, me: &str) -> Result<Option<String>, DbError> {
        self.run(async |c| {
            let mut tx = c.begin().await?;
            sqlx::query(self.sql(sql!("DELETE FROM group_members WHERE group_id = ? AND username = ?")))
                .bind(group_id)
                .bind(me)
                .execute(&mut *tx)
                .await?;
            let heir: Option<String> = sqlx::query_scalar(self.sql(sql!(
                "SELECT username FROM group_members WHERE group_id = ? ORDER BY joined_at, username LIMIT 1"
            )))
            .bind(group_id)
            .fetch_optional(&mut *tx)
            .await?;
            match &heir {
                Some(heir) => {
                    sqlx::query(self.sql(sql!("UPDATE chat_groups SET owner = ? WHERE id = ? AND owner = ?")))
                        .bind(heir)
                        .bind(group_id)
                        .bind(me)
                        .execute(&mut *tx)
                        .await?;
                }
                None => {
                    for q in &DELETE_GROUP {
                        sqlx::query(self.sql(q)).bind(group_id).execute(&mut *tx).await?;
                    }
                }
            }
            tx.commit().await?;
            Ok(heir)
        })
        .await
    }

    /// Deletes the group and everything in it, together.
    pub(crate) async fn delete_group(&self, group_id: i64) -> Result<(), DbError> {
        self.run(async |c| {
            let mut tx = c.begin().await?;
            for q in &DELETE_GROUP {
                sqlx::query(self.sql(q)).bind(group_id).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    pub(crate) async fn delete_member(&self, group_id: i64, user: &str) -> Result<(), DbError> {
        self.run(async |c| {
            sqlx::query(self.sql(sql!("DELETE FROM group_members WHERE group_id = ? AND username = ?")))
                .bind(group_id)
                .bind(user)
                .execute(&mut *c)
                .await?;
            Ok(())
        })
        .await
    }

    /// Members in joining order, with the group's owner.
    pub(crate) async fn members(&self, group_id: i64) -> Result<Vec<MemberRow>, DbError> {
        self.run(async |c| {
            Ok(sqlx::query_as(self.sql(sql!(
                "SELECT u.username, u.display_name, g.owner FROM group_members m JOIN users u ON u.username = m.username \
                 JOIN chat_groups g ON g.id = m.group_id WHERE m.group_id = ? ORDER BY m.joined_at, u.username"
            )))
            .bind(group_id)
            .fetch_all(&mut *c)
            .await?)
        })
        .await
    }

    pub(crate) async fn member_names(&self, group_id: i64) -> Result<Vec<String>, DbError> {
        self.run(async |c| {
            Ok(sqlx::query_scalar(self.sql(sql!("SELECT username FROM group_members WHERE group_id = ?")))
                .bind(group_id)
                .fetch_all(&mut *c)
                .await?)
        })
        .await
    }

    /// The groups `me` is in, by id.
    pub(crate) async fn groups_of(&self, me: &str) -> Result<Vec<GroupInfo>, DbError> {
        self.run(async |c| {
            let rows: Vec<GroupRow> = sqlx::query_as(self.sql(sql!(
                "SELECT g.id, g.name, g.owner, g.last_seq, \
                 (SELECT COUNT(*) FROM group_members c WHERE c.group_id = g.id) AS members \
                 FROM group_members m JOIN chat_groups g ON g.id = m.group_id WHERE m.username = ? ORDER BY g.id"
            )))
            .bind(me)
            .fetch_all(&mut *c)
            .await?;
            Ok(rows
                .into_iter()
                .map(|r| GroupInfo {
                    group_id: r.id,
                    name: r.name,
                    owner: r.owner,
                    last_seq: r.last_seq,
                    members: r.members,
                })
                .collect())
        })
        .await
    }

    pub(crate) async fn rename_group(&self, group_id: i64, name: &str) -> Result<(), DbError> {
        self.run(async |c| {
            sqlx::query(self.sql(sql!("UPDATE chat_groups SET name = ? WHERE id = ?")))
                .bind(name)
                .bind(group_id)
                .execute(&mut *c)
                .await?;
            Ok(())
        })
        .await
    }

    pub(crate) async fn set_group_owner(&self, group_id: i64, owner: &str) -> Result<(), DbError> {
        self.run(async |c| {
            sqlx::query(self.sql(sql!("UPDATE chat_groups SET owner = ? WHERE id = ?")))
                .bind(owner)
                .bind(group_id)
                .execute(&mut *c)
                .await?;
            Ok(())
        })
        .await
    }

    /// The group's owner, if the group exists.
    pub(crate) async fn group_owner(&self, group_id: i64) -> Result<Option<String>, DbError> {
        self.run(async |c| {
            Ok(sqlx::query_scalar(self.sql(sql!("SELECT owner FROM chat_groups WHERE id = ?")))
                .bind(group_id)
                .fetch_optional(&mut *c)
                .await?)
        })
        .await
    }

    /// The group's name if `user` is a member.
    pub(crate) async fn group_name_for(&self, group_id: i64, user: &str) -> Result<Option<String>, DbError> {
        self.run(async |c| {
            Ok(sqlx::query_scalar(self.sql(
                sql!("SELECT g.name FROM chat_groups g JOIN group_members m ON m.group_id = g.id WHERE g.id = ? AND m.username = ?"),
            ))
            .bind(group_id)
            .bind(user)
            .fetch_optional(&mut *c)
            .await?)
        })
        .await
    }

    /// Messages older than `cutoff` dropped from every group; how many.
    pub(crate) async fn prune_messages(&self, cutoff: i64) -> Result<u64, DbError> {
        self.run(async |c| {
            let res = sqlx::query(self.sql(sql!("DELETE FROM group_messages WHERE created_at < ?")))
                .bind(cutoff)
                .execute(&mut *c)
                .await?;
            Ok(res.rows_affected())
        })
        .await
    }

    /// Up to `limit` messages after `after_seq`, none from before `me` joined.
    pub(crate) async fn messages_since(
        &self,
        group_id: i64,
        me: &str,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<GroupMessage>, DbError> {
        self.run(async |c| {
            let rows: Vec<MessageRow> = sqlx::query_as(self.sql(sql!(
                "SELECT seq, sender, system, text, created_at FROM group_messages WHERE group_id = ? AND seq > ? \
                 AND created_at >= (SELECT joined_at FROM group_members WHERE group_id = ? AND username = ?) \
                 ORDER BY seq LIMIT ?"
            )))
            .bind(group_id)
            .bind(after_seq)
            .bind(group_id)
            .bind(me)
            .bind(limit)
            .fetch_all(&mut *c)
            .await?;
            Ok(rows
                .into_iter()
                .map(|r| GroupMessage {
                    group_id,
                    seq: r.seq,
                    sender: r.sender,
                    system: r.system != 0,
                    text: r.text,
                    at: r.created_at,
                })
                .collect())
        })
        .await
    }

    /// Numbers and stores a message, and trims the log to `keep`, together; its number, or `None` if the
    /// group is gone.
    pub(crate) async fn append_message(&self, m: &NewMessage<'_>) -> Result<Option<Appended>, DbError> {
        self.run(async |c| {
            let mut tx = c.begin().await?;
            // The group's row first: it holds every other post to the group (on any node) until this one
            // commits, so the look-up below sees a post with the same id that committed meanwhile.
            sqlx::query(self.sql(sql!("UPDATE chat_groups SET last_seq = last_seq + 1 WHERE id = ?")))
                .bind(m.group_id)
                .execute(&mut *tx)
                .await?;
            if let Some(post_id) = m.post_id {
                let stored: Option<(i64, i64)> = sqlx::query_as(self.sql(sql!(
                    "SELECT seq, created_at FROM group_messages WHERE group_id = ? AND sender = ? AND post_id = ?"
                )))
                .bind(m.group_id)
                .bind(m.sender)
                .bind(post_id)
                .fetch_optional(&mut *tx)
                .await?;
                if let Some((seq, at)) = stored {
                    // Sent again: the number it has, and no new one (the increment is undone).
                    tx.rollback().await?;
                    return Ok(Some(Appended { seq, at, new: false }));
                }
            }
            let seq: Option<i64> = sqlx::query_scalar(self.sql(sql!("SELECT last_seq FROM chat_groups WHERE id = ?")))
                .bind(m.group_id)
                .fetch_optional(&mut *tx)
                .await?;
            let Some(seq) = seq else { return Ok(None) };
            sqlx::query(self.sql(sql!(
                "INSERT INTO group_messages (group_id, seq, sender, system, text, created_at, post_id) \
                 VALUES (?, ?, ?, ?, ?, ?, ?)"
            )))
            .bind(m.group_id)
            .bind(seq)
            .bind(m.sender)
            .bind(i64::from(m.system))
            .bind(m.text)
            .bind(m.at)
            .bind(m.post_id)
            .execute(&mut *tx)
            .await?;
            if seq > m.keep {
                sqlx::query(self.sql(sql!("DELETE FROM group_messages WHERE group_id = ? AND seq <= ?")))
                    .bind(m.group_id)
                    .bind(seq - m.keep)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(Some(Appended { seq, at: m.at, new: true }))
        })
        .await
    }

    /// For each group `user` is in, every other member: (group, member).
    pub(crate) async fn fellow_members(&self, user: &str) -> Result<Vec<(i64, String)>, DbError> {
        self.run(async |c| {
            Ok(sqlx::query_as(self.sql(sql!(
                "SELECT o.group_id, o.username FROM group_members m JOIN group_members o ON o.group_id = m.group_id \
                 WHERE m.username = ? AND o.username <> ?"
            )))
            .bind(user)
            .bind(user)
            .fetch_all(&mut *c)
            .await?)
        })
        .await
    }
}
