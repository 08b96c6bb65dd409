//! Group chat, relayed by the broker: groups, invitations, membership, and an ordered, stored message log per
//! group that every online member's every device receives and offline members catch up on.
//!
//! Order: each group has a counter (`chat_groups.last_seq`); a post takes the next number and is stored in
//! the same transaction, under a per-group lock that is held through the fan-out, so every member sees the
//! same order with no gaps. A member who missed messages asks for everything after its last number.

use crate::error::RequestError;
use crate::ratelimit::Quota;
use crate::store::groups::NewMessage;
use crate::store::{Db, now_ms};
use crate::table::Table;
use parking_lot::Mutex;
use shared::peer::check_text;
use shared::proto::{ErrorCode, Event, GroupInfo, GroupInvitation, GroupMember, GroupMessage, UserInfo};
use shared::validate;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

type Result<T> = std::result::Result<T, RequestError>;

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

/// A message for a group's log: a member's post (with the sender's id for it, if it is to be stored at
/// most once) or a notice of the broker's (`system`: joins, leaves, renames).
struct Post<'a> {
    sender: &'a str,
    group_id: i64,
    text: &'a str,
    system: bool,
    post_id: Option<&'a str>,
}

impl<'a> Post<'a> {
    fn notice(sender: &'a str, group_id: i64, text: &'a str) -> Self {
        Self { sender, group_id, text, system: true, post_id: None }
    }
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
        let id = self.db.create_group(name, me, now_ms()).await?.ok_or(ErrorCode::Internal)?;
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
        if !self.db.insert_invite(group_id, friend, me, created_at).await? {
            return Err(ErrorCode::RequestPending.into());
        }
        let inviter = self.user(me).await?;
        self.table.push(friend, &Event::GroupInvited(GroupInvitation { group_id, name, inviter, created_at }));
        Ok(())
    }

    /// `me`'s pending invitations.
    pub async fn invitations(&self, me: &str) -> Result<Vec<GroupInvitation>> {
        Ok(self.db.invitations(me).await?)
    }

    /// Joins on an invitation; the group sees a notice.
    pub async fn join(&self, me: &str, group_id: i64) -> Result<()> {
        self.change_members(group_id, self.add_invited(me, group_id)).await?;
        self.post_as(Post::notice(me, group_id, &format!("{me} joined"))).await?;
        Ok(())
    }

    async fn add_invited(&self, me: &str, group_id: i64) -> Result<()> {
        if !self.db.accept_invite(group_id, me, now_ms()).await? {
            return Err(ErrorCode::NotInvited.into());
        }
        Ok(())
    }

    /// Declines an invitation.
    pub async fn decline(&self, me: &str, group_id: i64) -> Result<()> {
        if !self.db.delete_invite(group_id, me).await? {
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
            self.post_as(Post::notice(me, group_id, &format!("{me} left"))).await?;
        }
        Ok(())
    }

    /// Takes `me` out; the owner's role passes on, and the last one out deletes the group. Returns the
    /// longest-standing remaining member, if any.
    async fn remove_member(&self, me: &str, group_id: i64) -> Result<Option<String>> {
        Ok(self.db.leave_group(group_id, me).await?)
    }

    /// Members with presence; only for members.
    pub async fn members(&self, me: &str, group_id: i64) -> Result<Vec<GroupMember>> {
        self.require_member(me, group_id).await?;
        let rows = self.db.members(group_id).await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let owner = r.is_owner();
                let user = r.user();
                GroupMember { owner, online: self.table.presence(&user.username).online, user }
            })
            .collect())
    }

    /// The groups `me` is in.
    pub async fn list(&self, me: &str) -> Result<Vec<GroupInfo>> {
        Ok(self.db.groups_of(me).await?)
    }

    /// A member's post: numbered, stored, then delivered to every online member's devices.
    pub async fn post(&self, me: &str, group_id: i64, text: &str) -> Result<i64> {
        check_text(text).map_err(ErrorCode::InvalidText)?;
        self.post_as(Post { sender: me, group_id, text, system: false, post_id: None }).await
    }

    /// [`Groups::post`] at most once: a post whose id the group already holds from `me` is answered with
    /// the number it has (and pushed again, for a member who missed it: agents ignore repeats).
    pub async fn post_once(&self, me: &str, group_id: i64, text: &str, post_id: [u8; 16]) -> Result<i64> {
        check_text(text).map_err(ErrorCode::InvalidText)?;
        self.post_as(Post { sender: me, group_id, text, system: false, post_id: Some(&hex::encode(post_id)) }).await
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
        self.post_in_turn(Post::notice(me, group_id, &format!("{user} was removed by {me}"))).await?;
        let deleted = self.db.delete_member(group_id, user).await;
        self.members.lock().remove(&group_id);
        deleted?;
        Ok(())
    }

    /// Owner only: renames the group.
    pub async fn rename(&self, me: &str, group_id: i64, name: &str) -> Result<()> {
        validate::display_name(name).map_err(|_| ErrorCode::InvalidText("group names are 1-64 characters".into()))?;
        self.require_owner(me, group_id).await?;
        self.db.rename_group(group_id, name).await?;
        self.post_as(Post::notice(me, group_id, &format!("{me} renamed the group to {name}"))).await?;
        Ok(())
    }

    /// Owner only: hands ownership to another member.
    pub async fn transfer(&self, me: &str, group_id: i64, user: &str) -> Result<()> {
        self.require_owner(me, group_id).await?;
        if !self.is_member(user, group_id).await? {
            return Err(ErrorCode::NotMember.into());
        }
        self.db.set_group_owner(group_id, user).await?;
        self.post_as(Post::notice(me, group_id, &format!("{me} made {user} the owner"))).await?;
        Ok(())
    }

    /// Owner only: the members are told, then the group and everything in it is deleted.
    pub async fn disband(&self, me: &str, group_id: i64) -> Result<()> {
        self.require_owner(me, group_id).await?;
        self.post_as(Post::notice(me, group_id, &format!("{me} disbanded the group"))).await?;
        let delete = async { Ok(self.db.delete_group(group_id).await?) };
        self.change_members(group_id, delete).await?;
        tracing::info!(group = group_id, owner = me, "group disbanded");
        Ok(())
    }

    /// Drops messages older than the retention age, in every group (the count bound is kept on each post).
    pub async fn prune_old(&self) -> Result<u64> {
        let cutoff = now_ms() - self.retention.max_age.as_millis() as i64;
        Ok(self.db.prune_messages(cutoff).await?)
    }

    /// Messages after `after_seq`, for members only, and only from when they joined: the group's earlier
    /// conversation is not theirs to read (their own "joined" notice is the first they get).
    pub async fn sync(&self, me: &str, group_id: i64, after_seq: i64, limit: u32) -> Result<Vec<GroupMessage>> {
        self.require_member(me, group_id).await?;
        Ok(self.db.messages_since(group_id, me, after_seq, i64::from(limit.clamp(1, MAX_SYNC))).await?)
    }

    /// Numbers, stores and fans out a message in the group's turn. A member's post (`!system`) is checked
    /// against the member list read in that same turn (someone removed a moment ago can no longer post),
    /// then against the sender's post rate.
    async fn post_as(&self, post: Post<'_>) -> Result<i64> {
        let gate = self.gate(post.group_id);
        let _turn = gate.lock().await;
        self.post_in_turn(post).await
    }

    /// [`Groups::post_as`] for a caller that holds the group's turn.
    async fn post_in_turn(&self, post: Post<'_>) -> Result<i64> {
        let Post { sender, group_id, text, system, post_id } = post;
        let members = self.members_of(group_id).await?;
        if !system {
            if !members.iter().any(|m| m == sender) {
                return Err(ErrorCode::NotMember.into());
            }
            self.posts
                .lock()
                .take(&sender.to_string(), Instant::now())
                .map_err(|retry_after_secs| ErrorCode::RateLimited { retry_after_secs })?;
        }
        let at = now_ms();
        let new = NewMessage { group_id, sender, system, text, at, keep: self.retention.max_messages, post_id };
        let stored = self.db.append_message(&new).await?.ok_or(ErrorCode::UnknownGroup)?;
        let (seq, at) = (stored.seq, stored.at);
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
        for (group_id, member) in self.db.fellow_members(user).await? {
            self.table.push(&member, &Event::GroupPresence { group_id, username: user.to_string(), online, at });
        }
        Ok(())
    }

    /// As [`Groups::announce_presence`], to the sessions this node serves only: every node of a cluster
    /// does it for its own when a user's node went away.
    pub async fn announce_presence_here(&self, user: &str, online: bool, at: i64) -> Result<()> {
        for (group_id, member) in self.db.fellow_members(user).await? {
            let event = Event::GroupPresence { group_id, username: user.to_string(), online, at };
            self.table.push_local([member.as_str()], &event);
        }
        Ok(())
    }

    /// The member list, cached. Only ever called in the group's turn: membership changes drop the entry in
    /// the same turn, so a list read from the database can never be written back after a change to it.
    async fn members_of(&self, group_id: i64) -> Result<Arc<Vec<String>>> {
        // In a cluster another node may change the members (a join served there): read them every time,
        // inside the turn, so that a post never misses a member who joined before it was numbered.
        if self.table.is_clustered() {
            return Ok(Arc::new(self.db.member_names(group_id).await?));
        }
        if let Some(m) = self.members.lock().get(&group_id) {
            return Ok(m.clone());
        }
        let names = self.db.member_names(group_id).await?;
        let names = Arc::new(names);
        self.members.lock().insert(group_id, names.clone());
        Ok(names)
    }

    /// The group's turn: numbering, fan-out and membership changes happen one at a time.
    fn gate(&self, group_id: i64) -> Arc<tokio::sync::Mutex<()>> {
        self.order.lock().entry(group_id).or_default().clone()
    }

    /// Runs a membership change in the group's turn and forgets the cached member list.
    async fn change_members<T, Fut>(&self, group_id: i64, change: Fut) -> Result<T>
    where
        Fut: std::future::Future<Output = Result<T>>,
    {
        let gate = self.gate(group_id);
        let _turn = gate.lock().await;
        let res = change.await;
        self.members.lock().remove(&group_id);
        res
    }

    async fn is_member(&self, user: &str, group_id: i64) -> Result<bool> {
        Ok(self.db.group_name_for(group_id, user).await?.is_some())
    }

    /// The group's name if `me` is a member; otherwise why not (a non-member cannot tell a group it is not
    /// in from one that does not exist).
    async fn require_member(&self, me: &str, group_id: i64) -> Result<String> {
        Ok(self.db.group_name_for(group_id, me).await?.ok_or(ErrorCode::NotMember)?)
    }

    async fn require_owner(&self, me: &str, group_id: i64) -> Result<()> {
        self.require_member(me, group_id).await?;
        let owner = self.db.group_owner(group_id).await?.ok_or(ErrorCode::NotMember)?;
        if owner != me {
            return Err(ErrorCode::NotOwner.into());
        }
        Ok(())
    }

    async fn user(&self, username: &str) -> Result<UserInfo> {
        Ok(self.db.user(username).await?.ok_or(ErrorCode::UnknownUser)?)
    }
}
