//! `bench link`: a device with a long history links a new one; how long until the new device holds all of
//! it (messages/s), beside the floor of the same work measured in the same run: the same rows copied from
//! one SQLite file into a fresh one by SQLite itself (`ATTACH`, one `INSERT ... SELECT`), no network.

use crate::chat::{peer, start_agent};
use crate::start_broker;
use anyhow::{Context, Result, bail};
use sqlx::{Connection, SqliteConnection};
use std::io::{BufRead, Write};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// A message of about 100 bytes, as `bench chat` sends.
const TEXT: &str = "a message of about one hundred bytes, the size of an ordinary chat line, padded out to it ...";

pub(crate) async fn open(path: &Path) -> Result<SqliteConnection> {
    let url = format!("sqlite:{}?mode=rwc", path.display());
    Ok(SqliteConnection::connect(&url).await?)
}

/// Writes `n` messages with alice's friend into a peer database.
async fn fill(db: &Path, n: usize) -> Result<()> {
    let mut c = open(db).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO messages (id, peer, outgoing, text, sent_at, stored_at, status) \
         WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < {n}) \
         SELECT printf('%032x', n), 'bob', n % 2, '{TEXT}', n, n, CASE n % 2 WHEN 1 THEN 'delivered' ELSE 'received' END FROM c"
    )))
    .execute(&mut c)
    .await?;
    c.close().await?;
    Ok(())
}

/// The floor: SQLite copying the same rows between two files (`dir/copy.db`).
pub(crate) async fn sqlite_copy(from: &Path, dir: &Path) -> Result<Duration> {
    let to = dir.join("copy.db");
    let mut c = open(&to).await?;
    sqlx::query(
        "CREATE TABLE messages (local_id INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, peer TEXT NOT NULL, \
         outgoing INTEGER NOT NULL, text TEXT NOT NULL, sent_at INTEGER NOT NULL, stored_at INTEGER NOT NULL, \
         status TEXT NOT NULL)",
    )
    .execute(&mut c)
    .await?;
    let started = Instant::now();
    sqlx::query(sqlx::AssertSqlSafe(format!("ATTACH DATABASE '{}' AS old", from.display()))).execute(&mut c).await?;
    sqlx::query(
        "INSERT INTO messages (id, peer, outgoing, text, sent_at, stored_at, status) \
         SELECT id, peer, outgoing, text, sent_at, stored_at, status FROM old.messages ORDER BY local_id",
    )
    .execute(&mut c)
    .await?;
    Ok(started.elapsed())
}

pub(crate) async fn link_bench(messages: usize) -> Result<()> {
    let broker = start_broker()?;
    let alice = start_agent(&broker, "alice")?;
    let db = alice.home.path().join("peer.db");
    fill(&db, messages).await?;
    let floor = sqlite_copy(&db, alice.home.path()).await?;

    let mut offer = std::process::Command::new(crate::sibling("peer")?)
        .arg("--home")
        .arg(alice.home.path())
        .args(["devices", "link"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    offer.stdin.take().context("stdin")?.write_all(b"y\n")?;
    let mut lines = std::io::BufReader::new(offer.stdout.take().context("stdout")?).lines();
    let code = loop {
        let line = lines.next().context("no link code printed")??;
        if let Some(rest) = line.trim().strip_prefix("peer link ") {
            break rest.split_whitespace().next().context("no code")?.to_string();
        }
    };
    let laptop = tempfile::tempdir()?;
    let started = Instant::now();
    let out = peer(laptop.path(), &["link", &code, "--broker", &broker.addr.to_string()], None)?;
    let took = started.elapsed();
    if !offer.wait()?.success() {
        bail!("`peer devices link` failed");
    }
    let mut c = open(&laptop.path().join("peer.db")).await?;
    let copied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM messages").fetch_one(&mut c).await?;
    if copied as usize != messages {
        bail!("the new device holds {copied} messages of {messages}: {out}");
    }
    let rate = messages as f64 / took.as_secs_f64();
    let result = serde_json::json!({
        "bench": "link",
        "messages": messages,
        "link_and_history_pull_s": (took.as_secs_f64() * 1000.0).round() / 1000.0,
        "messages_per_s": rate.round(),
        "baseline_sqlite_copy_s": (floor.as_secs_f64() * 1000.0).round() / 1000.0,
        "ratio_to_baseline": (took.as_secs_f64() / floor.as_secs_f64() * 10.0).round() / 10.0,
        "target_s": 10,
    });
    println!("{}", serde_json::to_string_pretty(&result)?);
    Ok(())
}
