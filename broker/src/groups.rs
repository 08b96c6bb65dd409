//! Group chat, relayed by the broker: groups, invitations, membership, and an ordered, stored message log per
//! group that every online member's every device receives and offline members catch up on.
//!
//! Order: each group has a counter (`chat_groups.last_seq`); a post takes the next number and is stored in
//! the same transaction, under a per-group lock that is held through the fan-out, so every member sees the
//! same order with no gaps. A member who missed messages asks for everything after its last number.

use crate::accounts::AccountError;
use crate::db::{Backend, Db, now_ms};
use crate::ratelimit::Quota;
use crate::table::Table;
use shared::peer::check_text;
use shared::proto::{ErrorCode, Event, GroupInfo, GroupInvitation, GroupMember, GroupMessage, UserInfo};
use shared::validate;
use sqlx::Row;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type Result<T> = std::result::Result<T, AccountError>;

/// Most messages one sync returns.
pub const MAX_SYNC: u32 = 500;

/// Group operations over the database, delivering through the connection table.
pub struct Groups {
    db: Db,
    table: Arc<Table>,
    /// One post at a time per group: numbering, storing and fan-out happen in order.
    order: Mutex<HashMap<i64, Arc<tokio::sync::Mutex<()>>>>,
    posts: Mutex<Quota<String>>,
    retention: Retention,
    /// Member lists of groups posted to since the broker started (as large as their rows in
    /// `group_members`, at most), so a post to a thousand members costs no query. Every membership change
    /// drops its group's entry while holding that group's turn, so no post can use a list older than it.
    members: Mutex<HashMap<i64, Arc<Vec<String>>>>,
}

/// How much of each group's log the broker keeps: members who were away longer catch up from the oldest
/// message still kept.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub max_messages: i64,
    pub max_age: Duration,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Groups {
    /// `posts_per_second`: what one member may post, summed over their groups, before getting
    /// [`ErrorCode::RateLimited`].
    pub fn new(db: Db, table: Arc<Table>, posts_per_second: u32, retention: Retention) -> Self {
        Self {
            db,
            table,
            order: Mutex::default(),
            posts: Mutex::new(Quota::new(posts_per_second.max(1), Duration::from_secs(1))),
            retention,
            members: Mutex::default(),
        }
    }

    /// Creates a group with `me` as owner and only member.
    pub async fn create(&self, me: &str, name: &str) -> Result<i64> {
        validate::display_name(name).map_err(|_| ErrorCode::InvalidText("group names are 1-64 characters".into()))?;
        let now = now_ms();
        let mut tx = self.db.pool.begin().await?;
        // SQLite and PostgreSQL return the new id; MySQL reports it (sqlx's Any driver gives SQLite none).
        let id: i64 =
            if self.db.backend != Backend::MySql {
                sqlx::query(self.db.sql(
                    "INSERT INTO chat_groups (name, owner, last_seq, created_at) VALUES (?, ?, 0, ?) RETURNING id",
                ))
                .bind(name)
                .bind(me)
                .bind(now)
                .fetch_one(&mut *tx)
                .await?
                .try_get(0)?
            } else {
                let res = sqlx::query(
                    self.db.sql("INSERT INTO chat_groups (name, owner, last_seq, created_at) VALUES (?, ?, 0, ?)"),
                )
                .bind(name)
                .bind(me)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                res.last_insert_id().ok_or(ErrorCode::Internal)?
            };
        sqlx::query(self.db.sql("INSERT INTO group_members (group_id, username, joined_at) VALUES (?, ?, ?)"))
            .bind(id)
            .bind(me)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(group = id, owner = me, "group created");
        Ok(id)
    }

    /// Invites `friend` (who must be `me`'s friend) into a group `me` is in.
    pub async fn invite(&self, me: &str, group_id: i64, friend: &str, are_friends: bool) -> Result<()> {
        let name = self.require_member(me, group_id).await?;
        if !are_friends {
            return Err(ErrorCode::NotFriends.into());
        }
        if self.is_member(friend, group_id).await? {
            return Err(ErrorCode::AlreadyMember.into());
        }
        let created_at = now_ms();
        let res = sqlx::query(
            self.db.sql("INSERT INTO group_invites (group_id, username, inviter, created_at) VALUES (?, ?, ?, ?)"),
        )
        .bind(group_id)
        .bind(friend)
        .bind(me)
        .bind(created_at)
        .execute(&self.db.pool)
        .await
        .map_err(crate::db::DbError::from);
        match res {
            Err(e) if e.is_duplicate() => return Err(ErrorCode::RequestPending.into()),
            other => other?,
        };
        let inviter = self.user(me).await?;
        self.table.push(friend, &Event::GroupInvited(GroupInvitation { group_id, name, inviter, created_at }));
        Ok(())
    }

    /// `me`'s pending invitations.
    pub async fn invitations(&self, me: &str) -> Result<Vec<GroupInvitation>> {
        let rows = sqlx::query(self.db.sql(
            "SELECT g.id, g.name, u.username, u.display_name, i.created_at FROM group_invites i \
             JOIN chat_groups g ON g.id = i.group_id JOIN users u ON u.username = i.inviter \
             WHERE i.username = ? ORDER BY i.created_at",
        ))
        .bind(me)
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(GroupInvitation {
                    group_id: r.try_get(0)?,
                    name: r.try_get(1)?,
                    inviter: UserInfo { username: r.try_get(2)?, display_name: r.try_get(3)? },
                    created_at: r.try_get(4)?,
                })
            })
            .collect()
    }

    /// Joins on an invitation; the group sees a notice.
    pub async fn join(&self, me: &str, group_id: i64) -> Result<()> {
        self.change_members(group_id, self.add_invited(me, group_id)).await?;
        self.post_as(me, group_id, &format!("{me} joined"), true).await?;
        Ok(())
    }

    async fn add_invited(&self, me: &str, group_id: i64) -> Result<()> {
        let mut tx = self.db.pool.begin().await?;
        let res = sqlx::query(self.db.sql("DELETE FROM group_invites WHERE group_id = ? AND username = ?"))
            .bind(group_id)
            .bind(me)
            .execute(&mut *tx)
            .await?;
        if res.rows_affected() == 0 {
            return Err(ErrorCode::NotInvited.into());
        }
        sqlx::query(self.db.sql("INSERT INTO group_members (group_id, username, joined_at) VALUES (?, ?, ?)"))
            .bind(group_id)
            .bind(me)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Declines an invitation.
    pub async fn decline(&self, me: &str, group_id: i64) -> Result<()> {
        let res = sqlx::query(self.db.sql("DELETE FROM group_invites WHERE group_id = ? AND username = ?"))
            .bind(group_id)
            .bind(me)
            .execute(&self.db.pool)
            .await?;
        if res.rows_affected() == 0 {
            return Err(ErrorCode::NotInvited.into());
        }
        Ok(())
    }

    /// Leaves a group. The owner's role passes to the longest-standing member; the last member's leaving
    /// deletes the group and its messages.
    pub async fn leave(&self, me: &str, group_id: i64) -> Result<()> {
        self.require_member(me, group_id).await?;
        let heir = self.change_members(group_id, self.remove_member(me, group_id)).await?;
        if heir.is_some() {
            self.post_as(me, group_id, &format!("{me} left"), true).await?;
        }
        Ok(())
    }

    /// Takes `me` out; the owner's role passes on, and the last one out deletes the group. Returns the
    /// longest-standing remaining member, if any.
    async fn remove_member(&self, me: &str, group_id: i64) -> Result<Option<String>> {
        let mut tx = self.db.pool.begin().await?;
        sqlx::query(self.db.sql("DELETE FROM group_members WHERE group_id = ? AND username = ?"))
            .bind(group_id)
            .bind(me)
            .execute(&mut *tx)
            .await?;
        let next: Option<String> = sqlx::query(
            self.db.sql("SELECT username FROM group_members WHERE group_id = ? ORDER BY joined_at, username LIMIT 1"),
        )
        .bind(group_id)
        .fetch_optional(&mut *tx)
        .await?
        .map(|r| r.try_get(0))
        .transpose()?;
        match &next {
            Some(heir) => {
                sqlx::query(self.db.sql("UPDATE chat_groups SET owner = ? WHERE id = ? AND owner = ?"))
                    .bind(heir)
                    .bind(group_id)
                    .bind(me)
                    .execute(&mut *tx)
                    .await?;
            }
            None => {
                for q in [
                    "DELETE FROM group_messages WHERE group_id = ?",
                    "DELETE FROM group_invites WHERE group_id = ?",
                    "DELETE FROM chat_groups WHERE id = ?",
                ] {
                    sqlx::query(self.db.sql(q)).bind(group_id).execute(&mut *tx).await?;
                }
            }
        }
        tx.commit().await?;
        Ok(next)
    }

    /// Members with presence; only for members.
    pub async fn members(&self, me: &str, group_id: i64) -> Result<Vec<GroupMember>> {
        self.require_member(me, group_id).await?;
        let rows = sqlx::query(self.db.sql(
            "SELECT u.username, u.display_name, g.owner FROM group_members m JOIN users u ON u.username = m.username \
             JOIN chat_groups g ON g.id = m.group_id WHERE m.group_id = ? ORDER BY m.joined_at, u.username",
        ))
        .bind(group_id)
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let user = UserInfo { username: r.try_get(0)?, display_name: r.try_get(1)? };
                let owner: String = r.try_get(2)?;
                Ok(GroupMember {
                    owner: owner == user.username,
                    online: self.table.presence(&user.username).online,
                    user,
                })
            })
            .collect()
    }

    /// The groups `me` is in.
    pub async fn list(&self, me: &str) -> Result<Vec<GroupInfo>> {
        let rows = sqlx::query(self.db.sql(
            "SELECT g.id, g.name, g.owner, g.last_seq, (SELECT COUNT(*) FROM group_members c WHERE c.group_id = g.id) \
             FROM group_members m JOIN chat_groups g ON g.id = m.group_id WHERE m.username = ? ORDER BY g.id",
        ))
        .bind(me)
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(GroupInfo {
                    group_id: r.try_get(0)?,
                    name: r.try_get(1)?,
                    owner: r.try_get(2)?,
                    last_seq: r.try_get(3)?,
                    members: r.try_get(4)?,
                })
            })
            .collect()
    }

    /// A member's post: numbered, stored, then delivered to every online member's devices.
    pub async fn post(&self, me: &str, group_id: i64, text: &str) -> Result<i64> {
        check_text(text).map_err(ErrorCode::InvalidText)?;
        self.post_as(me, group_id, text, false).await
    }

    /// Owner only: removes `user`, who is told in the group's log and then gets nothing more.
    pub async fn remove(&self, me: &str, group_id: i64, user: &str) -> Result<()> {
        self.require_owner(me, group_id).await?;
        if user == me || !self.is_member(user, group_id).await? {
            return Err(ErrorCode::NotMember.into());
        }
        // One turn: the notice is the last thing the removed member gets and no post of theirs can be
        // numbered after it.
        let gate = self.gate(group_id);
        let _turn = gate.lock().await;
        self.post_in_turn(me, group_id, &format!("{user} was removed by {me}"), true).await?;
        let deleted = sqlx::query(self.db.sql("DELETE FROM group_members WHERE group_id = ? AND username = ?"))
            .bind(group_id)
            .bind(user)
            .execute(&self.db.pool)
            .await;
        lock(&self.members).remove(&group_id);
        deleted?;
        Ok(())
    }

    /// Owner only: renames the group.
    pub async fn rename(&self, me: &str, group_id: i64, name: &str) -> Result<()> {
        validate::display_name(name).map_err(|_| ErrorCode::InvalidText("group names are 1-64 characters".into()))?;
        self.require_owner(me, group_id).await?;
        sqlx::query(self.db.sql("UPDATE chat_groups SET name = ? WHERE id = ?"))
            .bind(name)
            .bind(group_id)
            .execute(&self.db.pool)
            .await?;
        self.post_as(me, group_id, &format!("{me} renamed the group to {name}"), true).await?;
        Ok(())
    }

    /// Owner only: hands ownership to another member.
    pub async fn transfer(&self, me: &str, group_id: i64, user: &str) -> Result<()> {
        self.require_owner(me, group_id).await?;
        if !self.is_member(user, group_id).await? {
            return Err(ErrorCode::NotMember.into());
        }
        sqlx::query(self.db.sql("UPDATE chat_groups SET owner = ? WHERE id = ?"))
            .bind(user)
            .bind(group_id)
            .execute(&self.db.pool)
            .await?;
        self.post_as(me, group_id, &format!("{me} made {user} the owner"), true).await?;
        Ok(())
    }

    /// Owner only: the members are told, then the group and everything in it is deleted.
    pub async fn disband(&self, me: &str, group_id: i64) -> Result<()> {
        self.require_owner(me, group_id).await?;
        self.post_as(me, group_id, &format!("{me} disbanded the group"), true).await?;
        let delete = async {
            let mut tx = self.db.pool.begin().await?;
            for q in [
                "DELETE FROM group_messages WHERE group_id = ?",
                "DELETE FROM group_invites WHERE group_id = ?",
                "DELETE FROM group_members WHERE group_id = ?",
                "DELETE FROM chat_groups WHERE id = ?",
            ] {
                sqlx::query(self.db.sql(q)).bind(group_id).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(())
        };
        self.change_members(group_id, delete).await?;
        tracing::info!(group = group_id, owner = me, "group disbanded");
        Ok(())
    }

    /// Drops messages older than the retention age, in every group (the count bound is kept on each post).
    pub async fn prune_old(&self) -> Result<u64> {
        let cutoff = now_ms() - self.retention.max_age.as_millis() as i64;
        let res = sqlx::query(self.db.sql("DELETE FROM group_messages WHERE created_at < ?"))
            .bind(cutoff)
            .execute(&self.db.pool)
            .await?;
        Ok(res.rows_affected())
    }

    /// Messages after `after_seq`, for members only, and only from when they joined: the group's earlier
    /// conversation is not theirs to read (their own "joined" notice is the first they get).
    pub async fn sync(&self, me: &str, group_id: i64, after_seq: i64, limit: u32) -> Result<Vec<GroupMessage>> {
        self.require_member(me, group_id).await?;
        let rows = sqlx::query(self.db.sql(
            "SELECT seq, sender, system, text, created_at FROM group_messages WHERE group_id = ? AND seq > ? \
             AND created_at >= (SELECT joined_at FROM group_members WHERE group_id = ? AND username = ?) \
             ORDER BY seq LIMIT ?",
        ))
        .bind(group_id)
        .bind(after_seq)
        .bind(group_id)
        .bind(me)
        .bind(i64::from(limit.clamp(1, MAX_SYNC)))
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(GroupMessage {
                    group_id,
                    seq: r.try_get(0)?,
                    sender: r.try_get(1)?,
                    system: r.try_get::<i64, _>(2)? != 0,
                    text: r.try_get(3)?,
                    at: r.try_get(4)?,
                })
            })
            .collect()
    }

    /// Numbers, stores and fans out a message in the group's turn. A member's post (`!system`) is checked
    /// against the member list read in that same turn (someone removed a moment ago can no longer post),
    /// then against the sender's post rate.
    async fn post_as(&self, sender: &str, group_id: i64, text: &str, system: bool) -> Result<i64> {
        let gate = self.gate(group_id);
        let _turn = gate.lock().await;
        self.post_in_turn(sender, group_id, text, system).await
    }

    /// [`Groups::post_as`] for a caller that holds the group's turn.
    async fn post_in_turn(&self, sender: &str, group_id: i64, text: &str, system: bool) -> Result<i64> {
        let members = self.members_of(group_id).await?;
        if !system {
            if !members.iter().any(|m| m == sender) {
                return Err(ErrorCode::NotMember.into());
            }
            lock(&self.posts)
                .take(&sender.to_string(), Instant::now())
                .map_err(|retry_after_secs| ErrorCode::RateLimited { retry_after_secs })?;
        }
        let at = now_ms();
        let mut tx = self.db.pool.begin().await?;
        sqlx::query(self.db.sql("UPDATE chat_groups SET last_seq = last_seq + 1 WHERE id = ?"))
            .bind(group_id)
            .execute(&mut *tx)
            .await?;
        let seq: i64 = sqlx::query(self.db.sql("SELECT last_seq FROM chat_groups WHERE id = ?"))
            .bind(group_id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(ErrorCode::UnknownGroup)?
            .try_get(0)?;
        sqlx::query(self.db.sql(
            "INSERT INTO group_messages (group_id, seq, sender, system, text, created_at) VALUES (?, ?, ?, ?, ?, ?)",
        ))
        .bind(group_id)
        .bind(seq)
        .bind(sender)
        .bind(i64::from(system))
        .bind(text)
        .bind(at)
        .execute(&mut *tx)
        .await?;
        if seq > self.retention.max_messages {
            sqlx::query(self.db.sql("DELETE FROM group_messages WHERE group_id = ? AND seq <= ?"))
                .bind(group_id)
                .bind(seq - self.retention.max_messages)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        let event = Event::GroupMessage(GroupMessage {
            group_id,
            seq,
            sender: sender.to_string(),
            system,
            text: text.to_string(),
            at,
        });
        self.table.push_many(members.iter().map(String::as_str), &event);
        Ok(seq)
    }

    /// Tells `user`'s fellow members, in each of their groups, that `user` came online or went offline.
    pub async fn announce_presence(&self, user: &str, online: bool, at: i64) -> Result<()> {
        let rows = sqlx::query(self.db.sql(
            "SELECT o.group_id, o.username FROM group_members m JOIN group_members o ON o.group_id = m.group_id \
             WHERE m.username = ? AND o.username <> ?",
        ))
        .bind(user)
        .bind(user)
        .fetch_all(&self.db.pool)
        .await?;
        for r in rows {
            let (group_id, member): (i64, String) = (r.try_get(0)?, r.try_get(1)?);
            self.table.push(&member, &Event::GroupPresence { group_id, username: user.to_string(), online, at });
        }
        Ok(())
    }

    /// The member list, cached. Only ever called in the group's turn: membership changes drop the entry in
    /// the same turn, so a list read from the database can never be written back after a change to it.
    async fn members_of(&self, group_id: i64) -> Result<Arc<Vec<String>>> {
        if let Some(m) = lock(&self.members).get(&group_id) {
            return Ok(m.clone());
        }
        let rows = sqlx::query(self.db.sql("SELECT username FROM group_members WHERE group_id = ?"))
            .bind(group_id)
            .fetch_all(&self.db.pool)
            .await?;
        let names: Vec<String> = rows.iter().map(|r| r.try_get(0)).collect::<std::result::Result<_, _>>()?;
        let names = Arc::new(names);
        lock(&self.members).insert(group_id, names.clone());
        Ok(names)
    }

    /// The group's turn: numbering, fan-out and membership changes happen one at a time.
    fn gate(&self, group_id: i64) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.order).entry(group_id).or_default().clone()
    }

    /// Runs a membership change in the group's turn and forgets the cached member list.
    async fn change_members<T, Fut>(&self, group_id: i64, change: Fut) -> Result<T>
    where
        Fut: std::future::Future<Output = Result<T>>,
    {
        let gate = self.gate(group_id);
        let _turn = gate.lock().await;
        let res = change.await;
        lock(&self.members).remove(&group_id);
        res
    }

    async fn is_member(&self, user: &str, group_id: i64) -> Result<bool> {
        let row = sqlx::query(self.db.sql("SELECT 1 FROM group_members WHERE group_id = ? AND username = ?"))
            .bind(group_id)
            .bind(user)
            .fetch_optional(&self.db.pool)
            .await?;
        Ok(row.is_some())
    }

    /// The group's name if `me` is a member; otherwise why not (a non-member cannot tell a group it is not
    /// in from one that does not exist).
    async fn require_member(&self, me: &str, group_id: i64) -> Result<String> {
        let row = sqlx::query(self.db.sql(
            "SELECT g.name FROM chat_groups g JOIN group_members m ON m.group_id = g.id WHERE g.id = ? AND m.username = ?",
        ))
        .bind(group_id)
        .bind(me)
        .fetch_optional(&self.db.pool)
        .await?;
        match row {
            Some(r) => Ok(r.try_get(0)?),
            None => Err(ErrorCode::NotMember.into()),
        }
    }

    async fn require_owner(&self, me: &str, group_id: i64) -> Result<()> {
        self.require_member(me, group_id).await?;
        let owner: String = sqlx::query(self.db.sql("SELECT owner FROM chat_groups WHERE id = ?"))
            .bind(group_id)
            .fetch_one(&self.db.pool)
            .await?
            .try_get(0)?;
        if owner != me {
            return Err(ErrorCode::NotOwner.into());
        }
        Ok(())
    }

    async fn user(&self, username: &str) -> Result<UserInfo> {
        Ok(crate::friends::find_user(&self.db, username).await?.ok_or(ErrorCode::UnknownUser)?)
    }
}
