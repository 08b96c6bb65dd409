//! `bench mailbox`: messages deposited for a friend's device that is offline, then the device comes online.
//! Deposit rate (alice's sends answered `sent`, with latency percentiles), the broker's bytes per stored
//! message beside the plaintext, and the time from starting bob's agent until all of them are in his
//! database (pickup rate, his agent's peak memory), beside the floor of the storing part measured in the
//! same run: SQLite copying the same rows between two files.

use crate::chat::{Agent, peer, socket, start_agent};
use crate::link::open;
use crate::stats::{ms, percentile};
use crate::{Proc, sibling, start_broker_with};
use anyhow::{Context, Result, bail};
use shared::control::{ControlRequest, ControlResponse, MessageStatus};
use shared::io::{read_frame, write_frame};
use sqlx::Connection;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A message of about 100 bytes, as `bench chat` sends.
const TEXT: &str = "a message of about one hundred bytes, the size of an ordinary chat line, padded out to it ...";

async fn count(db: &Path) -> Result<i64> {
    let mut c = open(db).await?;
    let n = sqlx::query_scalar("SELECT COUNT(*) FROM messages WHERE outgoing = 0").fetch_one(&mut c).await?;
    c.close().await?;
    Ok(n)
}

/// One send on a control connection that must be answered `sent` (sealed into bob's mailbox).
async fn send(s: &mut tokio::net::UnixStream, text: &str) -> Result<Duration> {
    let t = Instant::now();
    write_frame(s, &ControlRequest::Send { to: "bob".into(), text: text.into() }).await?;
    match read_frame::<ControlResponse, _>(s).await? {
        Some(ControlResponse::Sent { status: MessageStatus::Sent, .. }) => Ok(t.elapsed()),
        other => bail!("not sent to the mailbox: {other:?}"),
    }
}

/// Peak resident memory of a process, in KiB.
fn peak_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

pub(crate) async fn mailbox_bench(messages: usize, concurrency: usize) -> Result<()> {
    // Limits high enough for the run (the defaults are per-user protections, not what is measured).
    let broker: Proc = start_broker_with(&[
        ("BROKER_MAILBOX_DEPOSITS_PER_MINUTE", "1000000"),
        ("BROKER_MAILBOX_LETTERS_PER_DEVICE", "1000000"),
        ("BROKER_MAILBOX_BYTES_PER_DEVICE", "1G"),
    ])?;
    let alice = start_agent(&broker, "alice")?;
    let mut bob: Agent = start_agent(&broker, "bob")?;
    peer(alice.home.path(), &["friends", "add", "bob"], None)?;
    peer(bob.home.path(), &["friends", "accept", "alice"], None)?;
    // Bob goes away (his mailbox keys are published by now).
    if let Some(mut c) = bob.child.take() {
        c.kill()?;
        c.wait()?;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !peer(alice.home.path(), &["friends", "--json"], None)?.contains("\"online\": false") {
        if Instant::now() > deadline {
            bail!("bob never showed offline");
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    // Deposits: `concurrency` senders at once, as a burst of pastes would.
    let sock = Arc::new(socket(alice.home.path()));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let sock = sock.clone();
        tasks.push(tokio::spawn(async move {
            let mut control = tokio::net::UnixStream::connect(sock.as_path()).await?;
            let mut took = Vec::new();
            for _ in (w..messages).step_by(concurrency) {
                took.push(send(&mut control, TEXT).await?);
            }
            Ok::<_, anyhow::Error>(took)
        }));
    }
    let mut latencies = Vec::with_capacity(messages);
    for t in tasks {
        latencies.extend(t.await??);
    }
    let deposit_s = started.elapsed().as_secs_f64();
    let (d50, d99) = (percentile(&mut latencies, 50.0), percentile(&mut latencies, 99.0));

    let broker_db = broker.data_dir().context("the broker's data directory")?.join("broker.db");
    let mut c = open(&broker_db).await?;
    let (letters, stored_bytes): (i64, i64) =
        sqlx::query_as("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM deposits").fetch_one(&mut c).await?;
    c.close().await?;
    let plaintext = (messages * TEXT.len()) as i64;

    // Pickup: bob's agent starts again on the same home; time until every message is in his database.
    let bob_db = bob.home.path().join("peer.db");
    let log = std::fs::File::create(bob.home.path().join("agent-pickup.log"))?;
    let started = Instant::now();
    let mut child = Command::new(sibling("peer")?)
        .arg("--home")
        .arg(bob.home.path())
        .args(["up", "--bind", "127.0.0.1:0"])
        .env("PEER_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    let pid = child.id();
    let mut peak = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        peak = peak.max(peak_kib(pid));
        if count(&bob_db).await? as usize >= messages {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("bob's agent stored {} of {messages} in 120 s", count(&bob_db).await?);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let pickup = started.elapsed();
    peak = peak.max(peak_kib(pid));
    let _ = child.kill();
    let _ = child.wait();

    // The floor of storing them: SQLite copying the same rows into a fresh file.
    let floor = crate::link::sqlite_copy(&bob_db, bob.home.path()).await?;

    let per_message = stored_bytes as f64 / messages as f64;
    println!("mailbox bench: {messages} messages of {} bytes to an offline device, {concurrency} senders", TEXT.len());
    println!(
        "  deposit: {:.0} messages/s ({letters} letters); send -> sent p50 {}  p99 {}",
        messages as f64 / deposit_s,
        ms(d50),
        ms(d99)
    );
    println!(
        "  broker keeps {per_message:.0} bytes per message ({:.2}x the plaintext's {} bytes)",
        per_message / TEXT.len() as f64,
        TEXT.len()
    );
    println!(
        "  pickup: all {messages} stored {:.2} s after bob's agent started ({:.0} messages/s); peak RSS {} MiB",
        pickup.as_secs_f64(),
        messages as f64 / pickup.as_secs_f64(),
        peak / 1024
    );
    println!(
        "  floor: SQLite copying the same rows {}; ratio {:.1}x",
        ms(floor),
        pickup.as_secs_f64() / floor.as_secs_f64()
    );
    println!(
        "{}",
        serde_json::json!({
            "bench": "mailbox", "messages": messages, "text_bytes": TEXT.len(), "letters": letters,
            "deposit_messages_per_s": (messages as f64 / deposit_s).round(),
            "deposit_p50_ms": d50.as_secs_f64() * 1e3, "deposit_p99_ms": d99.as_secs_f64() * 1e3,
            "broker_bytes": stored_bytes, "plaintext_bytes": plaintext,
            "broker_bytes_per_message": per_message.round(),
            "pickup_s": (pickup.as_secs_f64() * 1000.0).round() / 1000.0,
            "pickup_messages_per_s": (messages as f64 / pickup.as_secs_f64()).round(),
            "pickup_peak_rss_kib": peak,
            "baseline_sqlite_copy_s": (floor.as_secs_f64() * 1000.0).round() / 1000.0,
            "ratio_to_baseline": (pickup.as_secs_f64() / floor.as_secs_f64() * 10.0).round() / 10.0,
            "target_pickup_s": 5,
        })
    );
    Ok(())
}
