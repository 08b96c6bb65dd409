//! Chat history in the agent's SQLite database: every message sent and received, committed before it is
//! acknowledged. The CLI reads it directly (WAL allows a reader beside the agent), so history works even
//! when the agent is not running.

use crate::db::Db;
use anyhow::Result;
use serde_json::Value;
use shared::control::MessageStatus;
use shared::proto::{GroupMessage, Millis};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

/// One stored message.
#[derive(Debug, Clone)]
pub(crate) struct Message {
    pub(crate) local_id: i64,
    pub(crate) id: String,
    pub(crate) peer: String,
    pub(crate) outgoing: bool,
    pub(crate) text: String,
    pub(crate) sent_at: Millis,
    pub(crate) stored_at: Millis,
    pub(crate) status: Status,
}

/// Where a stored message stands, as the `status` column holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    /// Outgoing: as `peer send` reports it.
    Out(MessageStatus),
    /// Incoming: stored here.
    Received,
}

impl Status {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Out(s) => s.as_str(),
            Self::Received => "received",
        }
    }

    /// The column's text back; anything else is a damaged row, an error rather than a guess.
    fn parse(s: &str) -> Option<Self> {
        if s == "received" {
            return Some(Self::Received);
        }
        [
            MessageStatus::Sending,
            MessageStatus::Queued,
            MessageStatus::Delivered,
            MessageStatus::Failed,
            MessageStatus::Sent,
        ]
        .into_iter()
        .find(|m| m.as_str() == s)
        .map(Self::Out)
    }
}

fn status_column(r: &SqliteRow, column: &str) -> Result<Status, sqlx::Error> {
    let text: String = r.try_get(column)?;
    Status::parse(&text).ok_or_else(|| sqlx::Error::Decode(format!("unknown message status {text:?}").into()))
}

const COLUMNS: &str = "local_id, id, peer, outgoing, text, sent_at, stored_at, status";

fn from_row(r: &SqliteRow) -> Result<Message, sqlx::Error> {
    Ok(Message {
        local_id: r.try_get("local_id")?,
        id: r.try_get("id")?,
        peer: r.try_get("peer")?,
        outgoing: r.try_get::<i64, _>("outgoing")? != 0,
        text: r.try_get("text")?,
        sent_at: r.try_get("sent_at")?,
        stored_at: r.try_get("stored_at")?,
        status: status_column(r, "status")?,
    })
}

impl Message {
    pub(crate) fn json(&self, me: &str) -> Value {
        crate::views::value(crate::views::HistoryMessage::new(self, me))
    }
}

/// Rows per multi-row statement: well under SQLite's limit on bound variables.
const ROWS_PER_STATEMENT: usize = 256;

/// Records outgoing messages (status `sending`) in one statement per 256, in the given order, which is the
/// order they are delivered in.
pub(crate) async fn insert_outgoing(db: &Db, rows: &[(String, String, String)], now: Millis) -> Result<()> {
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let values = vec!["(?, ?, 1, ?, ?, ?, 'sending')"; chunk.len()].join(", ");
        let sql =
            format!("INSERT INTO messages (id, peer, outgoing, text, sent_at, stored_at, status) VALUES {values}");
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (id, peer, text) in chunk {
            q = q.bind(id).bind(peer).bind(text).bind(now).bind(now);
        }
        q.execute(&mut *db.lock().await).await?;
    }
    Ok(())
}

/// Stores incoming messages from `peer` in one statement; returns the ids that were new (a retried id is
/// stored once and not reported again).
pub(crate) async fn insert_incoming(
    db: &Db,
    peer: &str,
    msgs: &[(String, String, Millis)],
    now: Millis,
) -> Result<Vec<String>> {
    let mut fresh = Vec::new();
    if let [(id, text, sent_at)] = msgs {
        // The usual case, live chat: `rows_affected` says whether it was new, and a plain execute is one
        // answer from SQLite's thread where `RETURNING` rows stream back in several.
        let done = sqlx::query(
            "INSERT OR IGNORE INTO messages (id, peer, outgoing, text, sent_at, stored_at, status) \
             VALUES (?, ?, 0, ?, ?, ?, 'received')",
        )
        .bind(id)
        .bind(peer)
        .bind(text)
        .bind(*sent_at)
        .bind(now)
        .execute(&mut *db.lock().await)
        .await?;
        if done.rows_affected() == 1 {
            fresh.push(id.clone());
        }
        return Ok(fresh);
    }
    for chunk in msgs.chunks(ROWS_PER_STATEMENT) {
        let values = vec!["(?, ?, 0, ?, ?, ?, 'received')"; chunk.len()].join(", ");
        let sql = format!(
            "INSERT OR IGNORE INTO messages (id, peer, outgoing, text, sent_at, stored_at, status) VALUES {values} RETURNING id"
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (id, text, sent_at) in chunk {
            q = q.bind(id).bind(peer).bind(text).bind(*sent_at).bind(now);
        }
        for row in q.fetch_all(&mut *db.lock().await).await? {
            fresh.push(row.try_get("id")?);
        }
    }
    Ok(fresh)
}

/// Stores copies of messages this account sent to `peer` from another device (status as the copy says),
/// de-duplicated by id; a copy saying delivered marks one already here delivered. Returns the new ids.
pub(crate) async fn insert_copies(
    db: &Db,
    peer: &str,
    msgs: &[(String, String, Millis)],
    status: MessageStatus,
    now: Millis,
) -> Result<Vec<String>> {
    let mut fresh = Vec::new();
    for chunk in msgs.chunks(ROWS_PER_STATEMENT) {
        let values = vec!["(?, ?, 1, ?, ?, ?, ?)"; chunk.len()].join(", ");
        let sql = format!(
            "INSERT OR IGNORE INTO messages (id, peer, outgoing, text, sent_at, stored_at, status) VALUES {values} RETURNING id"
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (id, text, sent_at) in chunk {
            q = q.bind(id).bind(peer).bind(text).bind(*sent_at).bind(now).bind(status.as_str());
        }
        for row in q.fetch_all(&mut *db.lock().await).await? {
            fresh.push(row.try_get("id")?);
        }
    }
    if status == MessageStatus::Delivered {
        let ids: Vec<String> = msgs.iter().map(|m| m.0.clone()).collect();
        mark_delivered(db, peer, &ids).await?;
    }
    Ok(fresh)
}

/// Marks messages to `peer` delivered (a receipt from one of their devices); returns the ids that were not
/// delivered before. Only that friend's own messages: a receipt names nothing else.
pub(crate) async fn mark_delivered(db: &Db, peer: &str, ids: &[String]) -> Result<Vec<String>> {
    let mut changed = Vec::new();
    for chunk in ids.chunks(ROWS_PER_STATEMENT) {
        let marks = vec!["?"; chunk.len()].join(", ");
        let sql = format!(
            "UPDATE messages SET status = 'delivered' WHERE peer = ? AND outgoing = 1 AND status <> 'delivered' \
             AND status <> 'failed' AND id IN ({marks}) RETURNING id"
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(peer);
        for id in chunk {
            q = q.bind(id);
        }
        for row in q.fetch_all(&mut *db.lock().await).await? {
            changed.push(row.try_get("id")?);
        }
    }
    Ok(changed)
}

/// Sets the status of many messages, one statement per 256.
pub(crate) async fn set_status_many(db: &Db, ids: &[String], status: MessageStatus) -> Result<()> {
    for chunk in ids.chunks(ROWS_PER_STATEMENT) {
        let marks = vec!["?"; chunk.len()].join(", ");
        let sql = format!("UPDATE messages SET status = ? WHERE id IN ({marks})");
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(status.as_str());
        for id in chunk {
            q = q.bind(id);
        }
        q.execute(&mut *db.lock().await).await?;
    }
    Ok(())
}

pub(crate) async fn set_status(db: &Db, id: &str, status: MessageStatus) -> Result<()> {
    sqlx::query("UPDATE messages SET status = ? WHERE id = ?")
        .bind(status.as_str())
        .bind(id)
        .execute(&mut *db.lock().await)
        .await?;
    Ok(())
}

pub(crate) async fn status(db: &Db, id: &str) -> Result<Option<Status>> {
    let row =
        sqlx::query("SELECT status FROM messages WHERE id = ?").bind(id).fetch_optional(&mut *db.lock().await).await?;
    Ok(row.map(|r| status_column(&r, "status")).transpose()?)
}

/// Outgoing messages to `peer` not yet delivered, oldest first.
pub(crate) async fn pending(db: &Db, peer: &str) -> Result<Vec<Message>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM messages WHERE status IN ('sending', 'queued') AND outgoing = 1 AND peer = ? ORDER BY local_id"
    )))
    .bind(peer)
    .fetch_all(&mut *db.lock().await)
    .await?;
    Ok(rows.iter().map(from_row).collect::<Result<_, _>>()?)
}

/// Friends with undelivered messages.
pub(crate) async fn peers_with_pending(db: &Db) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar("SELECT DISTINCT peer FROM messages WHERE status IN ('sending', 'queued') AND outgoing = 1")
        .fetch_all(&mut *db.lock().await)
        .await?)
}

/// The conversation with `peer`, newest `limit` messages before `before` (a local id), oldest first.
pub(crate) async fn conversation(db: &Db, peer: &str, limit: i64, before: Option<i64>) -> Result<Vec<Message>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM messages WHERE peer = ? AND local_id < ? ORDER BY local_id DESC LIMIT ?"
    )))
    .bind(peer)
    .bind(before.unwrap_or(i64::MAX))
    .bind(limit)
    .fetch_all(&mut *db.lock().await)
    .await?;
    let mut out: Vec<Message> = rows.iter().map(from_row).collect::<Result<_, _>>()?;
    out.reverse();
    Ok(out)
}

/// Messages containing `text` (case-insensitive for ASCII), across conversations, oldest first.
pub(crate) async fn search(db: &Db, text: &str, limit: i64) -> Result<Vec<Message>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM messages WHERE text LIKE ? ESCAPE '!' ORDER BY local_id DESC LIMIT ?"
    )))
    .bind(shared::validate::like_contains(text))
    .bind(limit)
    .fetch_all(&mut *db.lock().await)
    .await?;
    let mut out: Vec<Message> = rows.iter().map(from_row).collect::<Result<_, _>>()?;
    out.reverse();
    Ok(out)
}

/// Stores group messages (in the broker's order); returns those that were new.
pub(crate) async fn insert_group(db: &Db, msgs: &[GroupMessage], now: Millis) -> Result<Vec<GroupMessage>> {
    let mut fresh = Vec::new();
    for chunk in msgs.chunks(ROWS_PER_STATEMENT) {
        let values = vec!["(?, ?, ?, ?, ?, ?, ?)"; chunk.len()].join(", ");
        let sql = format!(
            "INSERT OR IGNORE INTO group_messages (group_id, seq, sender, system, text, sent_at, stored_at) \
             VALUES {values} RETURNING group_id, seq"
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for m in chunk {
            q = q
                .bind(m.group_id)
                .bind(m.seq)
                .bind(&m.sender)
                .bind(i64::from(m.system))
                .bind(&m.text)
                .bind(m.at)
                .bind(now);
        }
        let new: std::collections::HashSet<(i64, i64)> = q
            .fetch_all(&mut *db.lock().await)
            .await?
            .iter()
            .map(|r| Ok((r.try_get("group_id")?, r.try_get("seq")?)))
            .collect::<Result<_, sqlx::Error>>()?;
        fresh.extend(chunk.iter().filter(|m| new.contains(&(m.group_id, m.seq))).cloned());
    }
    Ok(fresh)
}

/// The newest sequence number stored for a group (0 if none).
pub(crate) async fn last_group_seq(db: &Db, group_id: i64) -> Result<i64> {
    Ok(sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM group_messages WHERE group_id = ?")
        .bind(group_id)
        .fetch_one(&mut *db.lock().await)
        .await?)
}

/// A group's messages, newest `limit` before `before` (a sequence number), oldest first.
pub(crate) async fn group_conversation(
    db: &Db,
    group_id: i64,
    limit: i64,
    before: Option<i64>,
) -> Result<Vec<GroupMessage>> {
    let rows = sqlx::query(
        "SELECT group_id, seq, sender, system, text, sent_at FROM group_messages WHERE group_id = ? AND seq < ? \
         ORDER BY seq DESC LIMIT ?",
    )
    .bind(group_id)
    .bind(before.unwrap_or(i64::MAX))
    .bind(limit)
    .fetch_all(&mut *db.lock().await)
    .await?;
    let mut out = rows
        .iter()
        .map(|r| {
            Ok(GroupMessage {
                group_id: r.try_get("group_id")?,
                seq: r.try_get("seq")?,
                sender: r.try_get("sender")?,
                system: r.try_get::<i64, _>("system")? != 0,
                text: r.try_get("text")?,
                at: r.try_get("sent_at")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    out.reverse();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn db() -> Db {
        let db = Db::memory().await;
        for stmt in include_str!("../migrations/0002_messages.sql").split(';').map(str::trim).filter(|s| !s.is_empty())
        {
            sqlx::query(sqlx::AssertSqlSafe(stmt.to_string())).execute(&mut *db.lock().await).await.unwrap();
        }
        db
    }

    #[tokio::test]
    async fn a_retried_message_is_stored_once() {
        let db = db().await;
        let one = vec![("id1".to_string(), "hi".to_string(), 1)];
        assert_eq!(insert_incoming(&db, "alice", &one, 2).await.unwrap(), ["id1"]);
        assert!(insert_incoming(&db, "alice", &one, 3).await.unwrap().is_empty());
        let two = vec![("id1".to_string(), "hi".to_string(), 1), ("id2".to_string(), "again".to_string(), 2)];
        assert_eq!(insert_incoming(&db, "alice", &two, 4).await.unwrap(), ["id2"]);
        assert_eq!(conversation(&db, "alice", 10, None).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn pending_is_oldest_first_and_per_friend() {
        let db = db().await;
        let rows: Vec<(String, String, String)> = [("a", "bob"), ("b", "carol"), ("c", "bob")]
            .iter()
            .map(|(id, peer)| (id.to_string(), peer.to_string(), id.to_string()))
            .collect();
        insert_outgoing(&db, &rows, 1).await.unwrap();
        set_status_many(&db, &["a".to_string()], MessageStatus::Delivered).await.unwrap();
        let p: Vec<String> = pending(&db, "bob").await.unwrap().into_iter().map(|m| m.id).collect();
        assert_eq!(p, ["c"]);
        let mut peers = peers_with_pending(&db).await.unwrap();
        peers.sort();
        assert_eq!(peers, ["bob", "carol"]);
        assert_eq!(search(&db, "b", 10).await.unwrap().len(), 1);
        assert!(search(&db, "%", 10).await.unwrap().is_empty(), "wildcards are literal");
    }
}
