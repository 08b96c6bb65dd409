//! The friend graph: search, requests with consent, accept/decline, remove, remarks, and the presence that
//! friendship unlocks. Every operation acts for the session's own user; nothing about another user's graph is
//! taken from the client.

use crate::error::RequestError;
use crate::store::friends::Direction;
use crate::store::{Db, now_ms};
use crate::table::Table;
use shared::proto::{DeviceEndpoint, ErrorCode, Event, FriendInfo, FriendRequestInfo, MAX_SEARCH_RESULTS, UserInfo};
use shared::validate;
use std::sync::Arc;

type Result<T> = std::result::Result<T, RequestError>;

/// Friend operations over the database, announcing changes through the connection table.
pub struct Friends {
    db: Db,
    table: Arc<Table>,
    pairs: PairLocks,
}

/// One lock per pair of users (striped): every decision about a pair's friendship and the pushes that
/// follow from it happen under it, so that a check can never be overtaken by a change. A lookup that found
/// them friends has pushed its `PeerIncoming` before a removal can delete the rows and push
/// `FriendRemoved`; requests crossing each other, and two devices accepting at once, see each other's work.
struct PairLocks([tokio::sync::Mutex<()>; 64]);

impl PairLocks {
    fn new() -> Self {
        Self(std::array::from_fn(|_| tokio::sync::Mutex::new(())))
    }

    async fn lock(&self, a: &str, b: &str) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (a.min(b), a.max(b)).hash(&mut h);
        self.0[(h.finish() % self.0.len() as u64) as usize].lock().await
    }
}

impl Friends {
    pub fn new(db: Db, table: Arc<Table>) -> Self {
        Self { db, table, pairs: PairLocks::new() }
    }

    /// Users whose username or display name contains `query`, case-insensitively; never `me`.
    pub async fn search(&self, me: &str, query: &str, offset: u32, limit: u32) -> Result<Vec<UserInfo>> {
        let q = query.trim();
        if q.is_empty() {
            return Err(ErrorCode::InvalidText("search text must not be empty".into()).into());
        }
        validate::text("search text", q, validate::MAX_NAME_CHARS)?;
        let pattern = validate::like_contains(&q.to_lowercase());
        let limit = limit.clamp(1, MAX_SEARCH_RESULTS);
        Ok(self.db.search_users(&pattern, me, i64::from(limit), i64::from(offset)).await?)
    }

    /// Asks `to` to become `me`'s friend; if `to` already asked `me`, they become friends at once.
    pub async fn add(&self, me: &str, to: &str, message: &str) -> Result<bool> {
        validate::username(to).map_err(|_| ErrorCode::UnknownUser)?;
        validate::text("request message", message, validate::MAX_REQUEST_MESSAGE_CHARS)?;
        if me == to {
            return Err(ErrorCode::SelfRequest.into());
        }
        let Some(target) = self.user(to).await? else {
            return Err(ErrorCode::UnknownUser.into());
        };
        let _pair = self.pairs.lock(me, to).await;
        if self.db.blocks(me, to).await? {
            return Err(ErrorCode::YouBlocked(to.to_string()).into());
        }
        if self.db.blocks(to, me).await? {
            // Dropped without a word, as a blocked user expects nothing else: no request is stored and
            // nobody is told (the answer is the same as for a request that reached them).
            return Ok(false);
        }
        if self.are_friends(me, to).await? {
            return Err(ErrorCode::AlreadyFriends.into());
        }
        if self.db.request_pending(to, me).await? {
            self.befriend(me, to).await?;
            return Ok(true);
        }
        if self.db.request_pending(me, to).await? {
            return Err(ErrorCode::RequestPending.into());
        }
        let created_at = now_ms();
        if !self.db.insert_request(me, &target.username, message, created_at).await? {
            return Err(ErrorCode::RequestPending.into());
        }
        let from = self.user(me).await?.ok_or(ErrorCode::UnknownUser)?;
        self.table.push(to, &Event::FriendRequest { from, message: message.to_string(), created_at });
        Ok(false)
    }

    /// Pending requests to and from `me`.
    pub async fn requests(&self, me: &str) -> Result<(Vec<FriendRequestInfo>, Vec<FriendRequestInfo>)> {
        let incoming = self.db.requests(me, Direction::Incoming).await?;
        let outgoing = self.db.requests(me, Direction::Outgoing).await?;
        Ok((incoming, outgoing))
    }

    /// Accepts the pending request from `from`.
    pub async fn accept(&self, me: &str, from: &str) -> Result<()> {
        let _pair = self.pairs.lock(me, from).await;
        if !self.db.request_pending(from, me).await? {
            return Err(ErrorCode::NoSuchRequest.into());
        }
        self.befriend(me, from).await
    }

    /// Declines the pending request from `from`. The requester is not told (as in most messengers): their
    /// request simply stops being pending.
    pub async fn decline(&self, me: &str, from: &str) -> Result<()> {
        if !self.db.delete_request(from, me).await? {
            return Err(ErrorCode::NoSuchRequest.into());
        }
        Ok(())
    }

    /// Ends the friendship on both sides at once.
    pub async fn remove(&self, me: &str, other: &str) -> Result<()> {
        let _pair = self.pairs.lock(me, other).await;
        if !self.db.unfriend(me, other).await? {
            return Err(ErrorCode::NotFriends.into());
        }
        self.tell_ended(me, other);
        Ok(())
    }

    /// Tells both sides their friendship ended.
    fn tell_ended(&self, a: &str, b: &str) {
        self.table.push(b, &Event::FriendRemoved { username: a.to_string() });
        self.table.push(a, &Event::FriendRemoved { username: b.to_string() });
    }

    /// Blocks `other`: their friendship and requests with `me` end (both are told of an ended friendship, as
    /// with a removal), and their requests to `me` are dropped from now on.
    pub async fn block(&self, me: &str, other: &str) -> Result<()> {
        validate::username(other).map_err(|_| ErrorCode::UnknownUser)?;
        if me == other {
            return Err(ErrorCode::SelfRequest.into());
        }
        if self.user(other).await?.is_none() {
            return Err(ErrorCode::UnknownUser.into());
        }
        let _pair = self.pairs.lock(me, other).await;
        if self.db.block(me, other, now_ms()).await? {
            self.tell_ended(me, other);
        }
        Ok(())
    }

    /// Lifts `me`'s block of `other`.
    pub async fn unblock(&self, me: &str, other: &str) -> Result<()> {
        if !self.db.unblock(me, other).await? {
            return Err(ErrorCode::NotBlocked.into());
        }
        Ok(())
    }

    /// The users `me` blocked.
    pub async fn blocked(&self, me: &str) -> Result<Vec<UserInfo>> {
        Ok(self.db.blocked(me).await?)
    }

    /// Sets `me`'s private alias for `friend` (empty clears it).
    pub async fn remark(&self, me: &str, friend: &str, remark: &str) -> Result<()> {
        validate::text("remark", remark, validate::MAX_NAME_CHARS)?;
        if !self.are_friends(me, friend).await? {
            return Err(ErrorCode::NotFriends.into());
        }
        let remark = (!remark.trim().is_empty()).then(|| remark.trim());
        Ok(self.db.set_remark(me, friend, remark).await?)
    }

    /// `me`'s friends, with presence from the connection table.
    pub async fn list(&self, me: &str) -> Result<Vec<FriendInfo>> {
        let rows = self.db.friends(me).await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let user = r.user();
                let p = self.table.presence(&user.username);
                FriendInfo { remark: r.remark, online: p.online, since: p.since, user }
            })
            .collect())
    }

    /// Usernames of `me`'s friends: who hears about `me`'s presence.
    pub async fn usernames(&self, me: &str) -> Result<Vec<String>> {
        Ok(self.db.friend_names(me).await?)
    }

    /// Gives a new session the presence of every online friend, so that a (re)connecting agent starts from
    /// the truth instead of from whatever it saw before.
    pub fn presence_snapshot(&self, friends: &[String], me: &str, session_id: u64) {
        for f in friends {
            let p = self.table.presence(f);
            if p.online {
                let event = Event::Presence { username: f.clone(), online: true, at: p.since.unwrap_or_else(now_ms) };
                self.table.push_to(me, session_id, &event);
            }
        }
    }

    /// Tells `me`'s online friends that `me` came online or went offline.
    pub fn announce_presence(&self, friends: &[String], me: &str, online: bool, at: i64) {
        let event = Event::Presence { username: me.to_string(), online, at };
        self.table.push_many(friends.iter().map(String::as_str), &event);
    }

    /// Where `friend`'s online devices are, for `me` only if they are friends. Each of those devices is told
    /// to expect `me`'s device (its key and addresses), so both sides can open the path at once. The check
    /// and the push happen under the pair's lock: a removal cannot slip between them.
    pub async fn lookup(&self, me: &str, session_id: u64, friend: &str) -> Result<Vec<DeviceEndpoint>> {
        let endpoint = |r: &crate::table::Row| DeviceEndpoint {
            fingerprint: r.fingerprint.0,
            observed: r.observed,
            local: r.local.clone(),
        };
        let answer = async {
            let devices: Vec<DeviceEndpoint> = self.table.sessions(friend).iter().map(endpoint).collect();
            if let Some(mine) = self.table.session(me, session_id) {
                let event = Event::PeerIncoming { username: me.to_string(), device: endpoint(&mine) };
                self.table.push(friend, &event);
            }
            Ok(devices)
        };
        self.while_friends(me, friend, answer).await
    }

    /// Runs `f` only if `me` and `friend` are friends, under the pair's lock, so that what `f` pushes to the
    /// friend (a `PeerIncoming`, a relay's hello) reaches them before any removal can be pushed.
    pub async fn while_friends<T>(
        &self,
        me: &str,
        friend: &str,
        f: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        let _pair = self.pairs.lock(me, friend).await;
        if !self.are_friends(me, friend).await? {
            return Err(ErrorCode::NotFriends.into());
        }
        f.await
    }

    /// Tells `me`'s friends about a new display name.
    pub async fn announce_profile(&self, me: &UserInfo) -> Result<()> {
        let friends = self.usernames(&me.username).await?;
        self.table.push_many(friends.iter().map(String::as_str), &Event::FriendProfile { friend: me.clone() });
        Ok(())
    }

    pub async fn are_friends(&self, a: &str, b: &str) -> Result<bool> {
        Ok(self.db.are_friends(a, b).await?)
    }

    async fn user(&self, username: &str) -> Result<Option<UserInfo>> {
        Ok(self.db.user(username).await?)
    }

    /// Makes `a` and `b` friends (both rows, requests between them gone) and tells both, with presence.
    async fn befriend(&self, a: &str, b: &str) -> Result<()> {
        let now = now_ms();
        self.db.befriend(a, b, now).await?;
        let (ua, ub) = (self.user(a).await?, self.user(b).await?);
        for (to, friend) in [(a, ub), (b, ua)] {
            let Some(friend) = friend else { continue };
            let presence = self.table.presence(&friend.username);
            let name = friend.username.clone();
            self.table.push(to, &Event::FriendAccepted { friend });
            if presence.online {
                self.table
                    .push(to, &Event::Presence { username: name, online: true, at: presence.since.unwrap_or(now) });
            }
        }
        Ok(())
    }
}
