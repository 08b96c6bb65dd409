//! File transfers in the agent's SQLite database: one row per transfer on each side, so that a transfer
//! outlives either agent and resumes where it stopped. The receiver's byte count here is only what `peer
//! files` shows between runs; on resume the partial file on disk is what counts.

use crate::core::transfer;
use crate::db::Db;
use anyhow::Result;
use shared::control::{ControlError, ControlErrorCode, Transfer, TransferState};
use shared::proto::Millis;
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

/// A transfer row with what only the agent needs.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    /// For the sender, `t.path` is the file on disk.
    pub(crate) t: Transfer,
    /// Receiver: the directory it goes to (set when accepted).
    pub(crate) dir: Option<String>,
}

const COLUMNS: &str = "id, peer, outgoing, name, size, hash, state, bytes, source, dir, saved_as, error, resumed_from, created_at, updated_at";

fn from_row(r: &SqliteRow) -> Result<Record, sqlx::Error> {
    let outgoing = r.try_get::<i64, _>("outgoing")? != 0;
    let state: String = r.try_get("state")?;
    // A state this build does not know is a damaged row: an error, never a guess at "failed".
    let state = TransferState::parse(&state)
        .ok_or_else(|| sqlx::Error::Decode(format!("unknown transfer state {state:?}").into()))?;
    let source: Option<String> = r.try_get("source")?;
    let saved_as: Option<String> = r.try_get("saved_as")?;
    Ok(Record {
        t: Transfer {
            id: r.try_get("id")?,
            peer: r.try_get("peer")?,
            outgoing,
            name: r.try_get("name")?,
            size: r.try_get::<i64, _>("size")? as u64,
            hash: r.try_get("hash")?,
            state,
            bytes: r.try_get::<i64, _>("bytes")? as u64,
            path: if outgoing { source } else { saved_as },
            error: r.try_get("error")?,
            resumed_from: r.try_get::<i64, _>("resumed_from")? as u64,
            created_at: r.try_get("created_at")?,
            updated_at: r.try_get("updated_at")?,
        },
        dir: r.try_get("dir")?,
    })
}

/// Records a new transfer.
pub(crate) async fn insert(db: &Db, row: &Record) -> Result<()> {
    let t = &row.t;
    sqlx::query(
        "INSERT INTO transfers (id, peer, outgoing, name, size, hash, state, bytes, source, dir, created_at, updated_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?)",
    )
    .bind(&t.id)
    .bind(&t.peer)
    .bind(i64::from(t.outgoing))
    .bind(&t.name)
    .bind(t.size as i64)
    .bind(&t.hash)
    .bind(t.state.as_str())
    .bind(if t.outgoing { t.path.as_deref() } else { None })
    .bind(&row.dir)
    .bind(t.created_at)
    .bind(t.updated_at)
    .execute(&mut *db.lock().await)
    .await?;
    Ok(())
}

pub(crate) async fn get(db: &Db, id: &str) -> Result<Option<Record>> {
    let sql = format!("SELECT {COLUMNS} FROM transfers WHERE id = ?");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(&mut *db.lock().await).await?;
    Ok(row.map(|r| from_row(&r)).transpose()?)
}

/// The rows a move may touch: [`transfer::OPEN_STATES`], as SQL (a test checks they agree).
const STILL_OPEN: &str = "state IN ('waiting', 'offered', 'transferring')";

fn invalid(message: String) -> anyhow::Error {
    ControlError { code: ControlErrorCode::InvalidRequest, message }.into()
}

/// The transfer an id or unique id prefix names.
pub(crate) async fn resolve(db: &Db, prefix: &str) -> Result<Record> {
    let prefix = prefix.trim().to_ascii_lowercase();
    if prefix.is_empty() || !prefix.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(invalid(format!("not a transfer id: {prefix:?} (ids are hex; see `peer files`)")));
    }
    let sql = format!("SELECT {COLUMNS} FROM transfers WHERE id LIKE ? LIMIT 2");
    let rows =
        sqlx::query(sqlx::AssertSqlSafe(sql)).bind(format!("{prefix}%")).fetch_all(&mut *db.lock().await).await?;
    match rows.as_slice() {
        [one] => Ok(from_row(one)?),
        [] => Err(invalid(format!("no transfer {prefix} (see `peer files`)"))),
        _ => Err(invalid(format!("{prefix} matches several transfers; give more of the id"))),
    }
}

/// Every transfer, newest first.
pub(crate) async fn list(db: &Db) -> Result<Vec<Record>> {
    let sql = format!("SELECT {COLUMNS} FROM transfers ORDER BY created_at DESC, id");
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(&mut *db.lock().await).await?;
    Ok(rows.iter().map(from_row).collect::<Result<_, _>>()?)
}

/// Unfinished transfers in one direction, oldest first: what the agent resumes.
pub(crate) async fn unfinished(db: &Db, outgoing: bool) -> Result<Vec<Record>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM transfers WHERE outgoing = ? AND state IN ('waiting', 'offered', 'transferring') \
         ORDER BY created_at"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(i64::from(outgoing)).fetch_all(&mut *db.lock().await).await?;
    Ok(rows.iter().map(from_row).collect::<Result<_, _>>()?)
}

/// The transfer of the same file (path, content, name) to the same friend that did not fail: sending it
/// again continues it, or finds it done.
pub(crate) async fn find_outgoing(db: &Db, peer: &str, source: &str, hash: &str, name: &str) -> Result<Option<Record>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM transfers WHERE outgoing = 1 AND peer = ? AND source = ? AND hash = ? AND name = ? \
         AND state NOT IN ('declined', 'cancelled', 'failed') ORDER BY created_at DESC LIMIT 1"
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(peer)
        .bind(source)
        .bind(hash)
        .bind(name)
        .fetch_optional(&mut *db.lock().await)
        .await?;
    Ok(row.map(|r| from_row(&r)).transpose()?)
}

/// Moves a transfer to `state`, with why (or clearing the reason when `None`), unless it has ended
/// ([`transfer::OPEN_STATES`], checked in the same statement). `false` if it had.
pub(crate) async fn set_state(
    db: &Db,
    id: &str,
    state: TransferState,
    error: Option<&str>,
    now: Millis,
) -> Result<bool> {
    let done =
        sqlx::query("UPDATE transfers SET state = ?, error = ?, updated_at = ? WHERE id = ? AND state IN (?, ?, ?)")
            .bind(state.as_str())
            .bind(error)
            .bind(now)
            .bind(id)
            .bind(transfer::OPEN_STATES[0].as_str())
            .bind(transfer::OPEN_STATES[1].as_str())
            .bind(transfer::OPEN_STATES[2].as_str())
            .execute(&mut *db.lock().await)
            .await?;
    Ok(done.rows_affected() > 0)
}

pub(crate) async fn set_bytes(db: &Db, id: &str, bytes: u64, now: Millis) -> Result<()> {
    sqlx::query("UPDATE transfers SET bytes = ?, updated_at = ? WHERE id = ?")
        .bind(bytes as i64)
        .bind(now)
        .bind(id)
        .execute(&mut *db.lock().await)
        .await?;
    Ok(())
}

/// Receiver: accepted into `dir`.
pub(crate) async fn accept(db: &Db, id: &str, dir: &str, now: Millis) -> Result<()> {
    sqlx::query("UPDATE transfers SET state = 'transferring', dir = ?, error = NULL, updated_at = ? WHERE id = ?")
        .bind(dir)
        .bind(now)
        .bind(id)
        .execute(&mut *db.lock().await)
        .await?;
    Ok(())
}

/// A fetch starts at `offset`.
pub(crate) async fn started(db: &Db, id: &str, offset: u64, now: Millis) -> Result<()> {
    sqlx::query(
        "UPDATE transfers SET state = 'transferring', error = NULL, bytes = ?, resumed_from = ?, updated_at = ? \
         WHERE id = ?",
    )
    .bind(offset as i64)
    .bind(offset as i64)
    .bind(now)
    .bind(id)
    .execute(&mut *db.lock().await)
    .await?;
    Ok(())
}

/// Finished and verified; the receiver records where the file went.
pub(crate) async fn done(db: &Db, id: &str, size: u64, saved_as: Option<&str>, now: Millis) -> Result<bool> {
    let sql = format!(
        "UPDATE transfers SET state = 'done', bytes = ?, saved_as = COALESCE(?, saved_as), error = NULL, \
         updated_at = ? WHERE id = ? AND {STILL_OPEN}"
    );
    let done = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(size as i64)
        .bind(saved_as)
        .bind(now)
        .bind(id)
        .execute(&mut *db.lock().await)
        .await?;
    Ok(done.rows_affected() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn still_open_names_the_open_states() {
        let names: Vec<String> = transfer::OPEN_STATES.iter().map(|s| format!("'{}'", s.as_str())).collect();
        assert_eq!(STILL_OPEN, format!("state IN ({})", names.join(", ")));
    }
}
