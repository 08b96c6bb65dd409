//! Chat history in the agent's SQLite database: every message sent and received, committed before it is
//! acknowledged. The CLI reads it directly (WAL allows a reader beside the agent), so history works even
//! when the agent is not running.

use anyhow::Result;
use serde_json::{Value, json};
use shared::control::MessageStatus;
use shared::proto::Millis;
use sqlx::Row;
use sqlx::sqlite::{SqlitePool, SqliteRow};

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
    pub(crate) status: String,
}

const COLUMNS: &str = "local_id, id, peer, outgoing, text, sent_at, stored_at, status";

fn from_row(r: &SqliteRow) -> Result<Message, sqlx::Error> {
    Ok(Message {
        local_id: r.try_get(0)?,
        id: r.try_get(1)?,
        peer: r.try_get(2)?,
        outgoing: r.try_get::<i64, _>(3)? != 0,
        text: r.try_get(4)?,
        sent_at: r.try_get(5)?,
        stored_at: r.try_get(6)?,
        status: r.try_get(7)?,
    })
}

impl Message {
    pub(crate) fn json(&self, me: &str) -> Value {
        let (from, to) = if self.outgoing { (me, self.peer.as_str()) } else { (self.peer.as_str(), me) };
        json!({
            "local_id": self.local_id, "id": self.id, "peer": self.peer, "from": from, "to": to,
            "direction": if self.outgoing { "out" } else { "in" }, "text": self.text,
            "sent_at": self.sent_at, "stored_at": self.stored_at, "status": self.status,
        })
    }
}

/// Records an outgoing message (status `sending`).
pub(crate) async fn insert_outgoing(db: &SqlitePool, id: &str, peer: &str, text: &str, now: Millis) -> Result<()> {
    sqlx::query(
        "INSERT INTO messages (id, peer, outgoing, text, sent_at, stored_at, status) VALUES (?, ?, 1, ?, ?, ?, 'sending')",
    )
    .bind(id)
    .bind(peer)
    .bind(text)
    .bind(now)
    .bind(now)
    .execute(db)
    .await?;
    Ok(())
}

/// Stores an incoming message; `false` if that id was already stored (a retry).
pub(crate) async fn insert_incoming(
    db: &SqlitePool,
    id: &str,
    peer: &str,
    text: &str,
    sent_at: Millis,
    now: Millis,
) -> Result<bool> {
    let res = sqlx::query(
        "INSERT OR IGNORE INTO messages (id, peer, outgoing, text, sent_at, stored_at, status) \
         VALUES (?, ?, 0, ?, ?, ?, 'received')",
    )
    .bind(id)
    .bind(peer)
    .bind(text)
    .bind(sent_at)
    .bind(now)
    .execute(db)
    .await?;
    Ok(res.rows_affected() == 1)
}

pub(crate) async fn set_status(db: &SqlitePool, id: &str, status: MessageStatus) -> Result<()> {
    sqlx::query("UPDATE messages SET status = ? WHERE id = ?").bind(status.as_str()).bind(id).execute(db).await?;
    Ok(())
}

/// Marks a batch delivered in one transaction.
pub(crate) async fn set_delivered(db: &SqlitePool, ids: &[String]) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let mut tx = db.begin().await?;
    for id in ids {
        sqlx::query("UPDATE messages SET status = 'delivered' WHERE id = ?").bind(id).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

pub(crate) async fn status(db: &SqlitePool, id: &str) -> Result<Option<String>> {
    let row = sqlx::query("SELECT status FROM messages WHERE id = ?").bind(id).fetch_optional(db).await?;
    Ok(row.map(|r| r.try_get(0)).transpose()?)
}

/// Outgoing messages to `peer` not yet delivered, oldest first.
pub(crate) async fn pending(db: &SqlitePool, peer: &str) -> Result<Vec<Message>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM messages WHERE status IN ('sending', 'queued') AND outgoing = 1 AND peer = ? ORDER BY local_id"
    )))
    .bind(peer)
    .fetch_all(db)
    .await?;
    Ok(rows.iter().map(from_row).collect::<Result<_, _>>()?)
}

/// Friends with undelivered messages.
pub(crate) async fn peers_with_pending(db: &SqlitePool) -> Result<Vec<String>> {
    let rows = sqlx::query("SELECT DISTINCT peer FROM messages WHERE status IN ('sending', 'queued') AND outgoing = 1")
        .fetch_all(db)
        .await?;
    Ok(rows.iter().map(|r| r.try_get(0)).collect::<Result<_, _>>()?)
}

/// The conversation with `peer`, newest `limit` messages before `before` (a local id), oldest first.
pub(crate) async fn conversation(db: &SqlitePool, peer: &str, limit: i64, before: Option<i64>) -> Result<Vec<Message>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM messages WHERE peer = ? AND local_id < ? ORDER BY local_id DESC LIMIT ?"
    )))
    .bind(peer)
    .bind(before.unwrap_or(i64::MAX))
    .bind(limit)
    .fetch_all(db)
    .await?;
    let mut out: Vec<Message> = rows.iter().map(from_row).collect::<Result<_, _>>()?;
    out.reverse();
    Ok(out)
}

/// Messages containing `text` (case-insensitive for ASCII), across conversations, oldest first.
pub(crate) async fn search(db: &SqlitePool, text: &str, limit: i64) -> Result<Vec<Message>> {
    let escaped: String =
        text.chars().flat_map(|c| if matches!(c, '%' | '_' | '!') { vec!['!', c] } else { vec![c] }).collect();
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM messages WHERE text LIKE ? ESCAPE '!' ORDER BY local_id DESC LIMIT ?"
    )))
    .bind(format!("%{escaped}%"))
    .bind(limit)
    .fetch_all(db)
    .await?;
    let mut out: Vec<Message> = rows.iter().map(from_row).collect::<Result<_, _>>()?;
    out.reverse();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn db() -> SqlitePool {
        let pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect("sqlite::memory:").await.unwrap();
        for stmt in include_str!("../migrations/0002_messages.sql").split(';').map(str::trim).filter(|s| !s.is_empty())
        {
            sqlx::query(sqlx::AssertSqlSafe(stmt.to_string())).execute(&pool).await.unwrap();
        }
        pool
    }

    #[tokio::test]
    async fn a_retried_message_is_stored_once() {
        let db = db().await;
        assert!(insert_incoming(&db, "id1", "alice", "hi", 1, 2).await.unwrap());
        assert!(!insert_incoming(&db, "id1", "alice", "hi", 1, 3).await.unwrap());
        assert_eq!(conversation(&db, "alice", 10, None).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn pending_is_oldest_first_and_per_friend() {
        let db = db().await;
        for (id, peer) in [("a", "bob"), ("b", "carol"), ("c", "bob")] {
            insert_outgoing(&db, id, peer, id, 1).await.unwrap();
        }
        set_status(&db, "a", MessageStatus::Delivered).await.unwrap();
        let p: Vec<String> = pending(&db, "bob").await.unwrap().into_iter().map(|m| m.id).collect();
        assert_eq!(p, ["c"]);
        let mut peers = peers_with_pending(&db).await.unwrap();
        peers.sort();
        assert_eq!(peers, ["bob", "carol"]);
        assert_eq!(search(&db, "b", 10).await.unwrap().len(), 1);
        assert!(search(&db, "%", 10).await.unwrap().is_empty(), "wildcards are literal");
    }
}
