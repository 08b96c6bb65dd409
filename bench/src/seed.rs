//! The seed's group server, as the baseline for `bench groups`: the original design's C program
//! (`server_app.c` in the article) rebuilt in Rust with the same shape, and a client side that drives it
//! the way the bench drives our broker.
//!
//! Its shape, kept on purpose: plain TCP, a thread per client, 151-byte packets (`name[50]`, `data[100]`,
//! `type`), one list of client sockets behind a read-write lock, and the thread that read a packet writing
//! it to every other client itself, in turn, under the read lock. Nothing is authenticated, encrypted,
//! numbered or stored, and a member who is offline simply misses the post.

use crate::client::GroupFigures;
use crate::{Proc, cpu_seconds};
use anyhow::{Context, Result, anyhow, bail};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The seed's `struct send_pack`: 50 bytes of name, 100 of text, one of type.
const PACKET: usize = 151;
/// The seed's packet types: 0 is chat, 1 "came online" (used here as the readiness probe).
const CHAT: u8 = 0;
const PROBE: u8 = 1;

/// `bench seed-server`: listens on loopback and prints its address, then serves like the seed's server.
pub(crate) fn serve() -> Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    // The ready line's shape is the one `ready_line` reads from every child (no fingerprint: plain TCP).
    println!("seed listening on {} fingerprint none", listener.local_addr()?);
    std::io::stdout().flush()?;
    let clients: Arc<RwLock<Vec<(u64, TcpStream)>>> = Arc::default();
    for (id, stream) in (0u64..).zip(listener.incoming()) {
        let stream = stream?;
        let clients = clients.clone();
        std::thread::spawn(move || client_thread(id, stream, &clients));
    }
    Ok(())
}

/// The seed's `func_start`: add the socket to the list, then read a packet at a time and write it to
/// every other client under the read lock; on end of stream, leave the list.
fn client_thread(id: u64, mut stream: TcpStream, clients: &RwLock<Vec<(u64, TcpStream)>>) {
    let Ok(writer) = stream.try_clone() else { return };
    if let Ok(mut list) = clients.write() {
        list.push((id, writer));
    }
    let mut packet = [0u8; PACKET];
    while stream.read_exact(&mut packet).is_ok() {
        let Ok(list) = clients.read() else { break };
        for (other, mut socket) in list.iter().map(|(i, s)| (*i, s)) {
            if other != id {
                // Like the seed, a failed write to one client is ignored.
                let _ = socket.write_all(&packet);
            }
        }
    }
    if let Ok(mut list) = clients.write() {
        list.retain(|(i, _)| *i != id);
    }
}

/// Starts the seed-shaped server as a child process.
fn start() -> Result<Proc> {
    let mut child = Command::new(std::env::current_exe()?).arg("seed-server").stdout(Stdio::piped()).spawn()?;
    let (addr, fingerprint) = crate::ready_line(&mut child)?;
    Ok(Proc { child, addr, fingerprint, _dir: None })
}

fn packet(sender: usize, k: i64, kind: u8) -> [u8; PACKET] {
    let mut p = [0u8; PACKET];
    let name = format!("user{sender}");
    p[..name.len()].copy_from_slice(name.as_bytes());
    // The text is the post's number padded to the 100 bytes, as our bench's posts are 100 bytes of text.
    let text = format!("{k:0>100}");
    p[50..150].copy_from_slice(text.as_bytes());
    p[150] = kind;
    p
}

fn post_number(p: &[u8; PACKET]) -> Option<i64> {
    std::str::from_utf8(&p[50..150]).ok()?.parse().ok()
}

/// The same load as `groups_over` against the seed-shaped server: `members` connected, `senders` of them
/// posting `messages` in all at `rate` posts/s (0: as fast as TCP takes them). The seed does not echo a
/// post to its sender, so a post makes `members - 1` deliveries.
pub(crate) async fn seed_groups(members: usize, senders: usize, messages: usize, rate: f64) -> Result<GroupFigures> {
    let server = start()?;
    let received: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::default();
    let probes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut writers = Vec::new();
    let mut readers = Vec::new();
    for _ in 0..members {
        let stream = tokio::net::TcpStream::connect(server.addr).await.context("connecting to the seed server")?;
        let (mut read, write) = stream.into_split();
        writers.push(write);
        let (received, probes) = (received.clone(), probes.clone());
        readers.push(tokio::spawn(async move {
            let mut p = [0u8; PACKET];
            while read.read_exact(&mut p).await.is_ok() {
                if p[150] == PROBE {
                    probes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                } else if let Some(k) = post_number(&p).and_then(|k| u64::try_from(k).ok())
                    && let Ok(mut r) = received.lock()
                {
                    r.push((k, Instant::now()));
                }
            }
        }));
    }
    // The server adds a client when its thread starts: probe until a probe reaches everyone else, so that
    // no post is sent before every member is on the list.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        probes.store(0, std::sync::atomic::Ordering::Relaxed);
        writers[0].write_all(&packet(0, -1, PROBE)).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        if probes.load(std::sync::atomic::Ordering::Relaxed) >= members - 1 {
            break;
        }
        if Instant::now() > deadline {
            bail!("the seed server did not list all {members} members");
        }
    }

    let cpu_before = cpu_seconds(server.child.id());
    let sent: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; messages]));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (s, mut writer) in writers.drain(..senders.min(members)).enumerate() {
        let sent = sent.clone();
        tasks.push(tokio::spawn(async move {
            for k in (s..messages).step_by(senders) {
                if rate > 0.0 {
                    tokio::time::sleep_until((start + Duration::from_secs_f64(k as f64 / rate)).into()).await;
                }
                sent.lock().map_err(|_| anyhow!("poisoned"))?[k] = Some(Instant::now());
                writer.write_all(&packet(s, k as i64, CHAT)).await?;
            }
            Ok::<_, anyhow::Error>(writer)
        }));
    }
    let mut kept = Vec::new();
    for t in tasks {
        kept.push(t.await??);
    }
    let expected = messages * (members - 1);
    let (figures, deliveries, elapsed) =
        GroupFigures::of_baseline_round(&received, &sent, expected, (server.child.id(), cpu_before), start).await?;
    drop((kept, writers, server));
    for r in readers {
        r.abort();
    }
    figures.report(
        "seed-shaped server (plain TCP, thread per client, 151-byte packets, nothing stored)",
        "groups-seed",
        (deliveries, expected, elapsed),
        (members, senders, messages, rate),
    )?;
    Ok(figures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packet_carries_its_post_number_in_the_text() {
        let p = packet(3, 42, CHAT);
        assert_eq!(post_number(&p), Some(42));
        assert_eq!(&p[..5], b"user3");
        assert_eq!(p[150], CHAT);
    }
}
