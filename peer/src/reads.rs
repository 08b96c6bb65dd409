//! Read state: how far each conversation has been read, so that unread counts survive restarts and agree
//! between the app, `peer unread` and the `unread` field of `peer friends --json` / `peer groups --json`.
//!
//! A conversation is `u:USER` (a friend: the mark is a local message id) or `g:GROUP` (the mark is a group
//! sequence number). Only the agent writes marks (`ControlRequest::MarkRead`); anyone may read them.

use crate::db::Db;
use anyhow::Result;
use serde::Serialize;
use sqlx::Row;
use std::fmt;
use std::str::FromStr;

/// A conversation: with a friend, or in a group.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Conversation {
    Friend(String),
    Group(i64),
}

impl fmt::Display for Conversation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Friend(u) => write!(f, "u:{u}"),
            Self::Group(g) => write!(f, "g:{g}"),
        }
    }
}

impl FromStr for Conversation {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.split_once(':') {
            Some(("u", u)) if shared::validate::username(u).is_ok() => Ok(Self::Friend(u.to_string())),
            Some(("g", g)) => Ok(Self::Group(g.parse()?)),
            _ => anyhow::bail!("not a conversation: {s:?} (u:USER or g:GROUP)"),
        }
    }
}

/// Unread messages in one conversation, and when it last saw a message (for sorting by activity).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Unread {
    #[serde(skip)]
    pub(crate) conversation: Conversation,
    pub(crate) unread: i64,
    pub(crate) last_at: i64,
}

/// The unread count of one conversation in a list from [`all`] (0 if it has none).
pub(crate) fn count(list: &[Unread], conversation: &Conversation) -> i64 {
    list.iter().find(|u| &u.conversation == conversation).map_or(0, |u| u.unread)
}

/// Records that `conversation` is read up to `up_to`; a mark never moves back.
pub(crate) async fn mark(db: &Db, conversation: &Conversation, up_to: i64) -> Result<()> {
    sqlx::query(
        "INSERT INTO read_marks (conversation, up_to) VALUES (?, ?) \
         ON CONFLICT(conversation) DO UPDATE SET up_to = MAX(up_to, excluded.up_to)",
    )
    .bind(conversation.to_string())
    .bind(up_to)
    .execute(&mut *db.lock().await)
    .await?;
    Ok(())
}

/// Every conversation with messages: its unread count (messages from others past the mark) and last
/// activity. Group notices and one's own posts are never unread.
pub(crate) async fn all(db: &Db, me: &str) -> Result<Vec<Unread>> {
    let mut conn = db.lock().await;
    let direct = sqlx::query(
        "SELECT m.peer AS who, SUM(CASE WHEN m.outgoing = 0 AND m.local_id > COALESCE(r.up_to, 0) THEN 1 ELSE 0 END) \
         AS unread, MAX(m.stored_at) AS last_at FROM messages m LEFT JOIN read_marks r ON r.conversation = 'u:' || m.peer GROUP BY m.peer",
    )
    .fetch_all(&mut *conn)
    .await?;
    let groups = sqlx::query(
        "SELECT g.group_id AS who, SUM(CASE WHEN g.system = 0 AND g.sender <> ? AND g.seq > COALESCE(r.up_to, 0) \
         THEN 1 ELSE 0 END) AS unread, MAX(g.stored_at) AS last_at FROM group_messages g \
         LEFT JOIN read_marks r ON r.conversation = 'g:' || g.group_id GROUP BY g.group_id",
    )
    .bind(me)
    .fetch_all(&mut *conn)
    .await?;
    let mut out = Vec::with_capacity(direct.len() + groups.len());
    for r in direct {
        out.push(Unread {
            conversation: Conversation::Friend(r.try_get("who")?),
            unread: r.try_get("unread")?,
            last_at: r.try_get("last_at")?,
        });
    }
    for r in groups {
        out.push(Unread {
            conversation: Conversation::Group(r.try_get("who")?),
            unread: r.try_get("unread")?,
            last_at: r.try_get("last_at")?,
        });
    }
    Ok(out)
}

/// The newest mark a conversation can have now: its last local id (friend) or sequence number (group).
pub(crate) async fn newest(db: &Db, conversation: &Conversation) -> Result<i64> {
    let mut conn = db.lock().await;
    let newest: i64 = match conversation {
        Conversation::Friend(u) => {
            sqlx::query_scalar("SELECT COALESCE(MAX(local_id), 0) FROM messages WHERE peer = ?")
                .bind(u)
                .fetch_one(&mut *conn)
                .await?
        }
        Conversation::Group(g) => {
            sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM group_messages WHERE group_id = ?")
                .bind(g)
                .fetch_one(&mut *conn)
                .await?
        }
    };
    Ok(newest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversations_parse_and_print() {
        for s in ["u:bob", "g:7"] {
            assert_eq!(s.parse::<Conversation>().unwrap().to_string(), s);
        }
        for bad in ["bob", "u:", "u:Bob Smith", "g:x", "x:1"] {
            assert!(bad.parse::<Conversation>().is_err(), "{bad}");
        }
    }
}
