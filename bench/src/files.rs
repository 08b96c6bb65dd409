//! `bench files`: one file from one real agent to another on loopback (release `peer` binaries): disk →
//! sender agent → direct QUIC stream → receiver agent (BLAKE3, disk, fsync, rename) → verified. Beside it,
//! in the same run, a raw quinn blast of the same number of bytes on one stream from memory to a discarding
//! server: the ceiling for the transport on this machine.

use crate::chat::{Agent, peer, socket, start_agent, start_agent_with};
use crate::{Proc, start_broker, start_raw};
use anyhow::{Context, Result, bail};
use serde_json::json;
use shared::control::{AgentEvent, ControlRequest, ControlResponse, TransferState};
use shared::io::{read_frame, write_frame};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// Peak resident memory of a process (Linux `VmHWM`), in KiB.
fn peak_rss_kib(agent: &Agent) -> Option<u64> {
    crate::proc_status_kib(agent.child.as_ref()?.id(), "VmHWM:")
}

/// CPU time a process has used so far (user + system), from Linux `/proc`.
fn cpu_time(pid: u32) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return Duration::ZERO };
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th of those.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    let ticks = f.get(10).copied().unwrap_or(0) + f.get(11).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// A file of pseudo-random bytes (xorshift: incompressible, and cheap to make).
pub(crate) fn random_file(path: &Path, size: u64) -> Result<()> {
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut block = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for chunk in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(block.len() as u64) as usize;
        out.write_all(&block[..n])?;
        left -= n as u64;
    }
    out.flush()?;
    // On disk before the clock starts: its dirty pages would otherwise throttle the receiver's writes.
    out.get_ref().sync_all()?;
    Ok(())
}

/// The raw baseline: `size` bytes on one stream, timed until the server has counted them all.
async fn raw_blast(raw: &Proc, size: u64) -> Result<Duration> {
    let clients = crate::client::Clients::new()?;
    let cfg = clients.config(&raw.fingerprint, crate::raw::SINK_ALPN)?;
    let conn = clients.connect(0, &cfg, raw.addr).await?;
    let block = bytes_block();
    let start = Instant::now();
    let (mut send, mut recv) = conn.open_bi().await?;
    let mut left = size;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        send.write_chunk(block.slice(..n)).await?;
        left -= n as u64;
    }
    send.finish()?;
    let mut count = [0u8; 8];
    recv.read_exact(&mut count).await?;
    let took = start.elapsed();
    if u64::from_be_bytes(count) != size {
        bail!("the raw server counted {} of {size} bytes", u64::from_be_bytes(count));
    }
    conn.close(0u32.into(), b"done");
    Ok(took)
}

/// The physical baseline of the same work: `src` read by a thread in 1 MiB blocks, sent on one quinn stream
/// (the same mutual TLS 1.3) to the raw server, which writes it to `dst` from a thread of its own in 1 MiB
/// blocks and fsyncs; timed until the server has counted every byte on disk.
async fn raw_file_copy(raw: &Proc, src: &Path, dst: &Path, size: u64) -> Result<Duration> {
    raw_file_copy_via(raw, Via::Direct, src, dst, size).await
}

/// How the raw file copy reaches the raw server.
#[derive(Clone, Copy)]
pub(crate) enum Via<'a> {
    Direct,
    /// Another raw server, which splices the stream to the first (a stream relay).
    Splice(&'a Proc),
    /// A bare UDP forwarder (a datagram relay).
    Forwarder(&'a Proc),
}

/// [`raw_file_copy`], reaching `raw` as `via` says.
pub(crate) async fn raw_file_copy_via(raw: &Proc, via: Via<'_>, src: &Path, dst: &Path, size: u64) -> Result<Duration> {
    let clients = crate::client::Clients::new()?;
    let (pin, alpn, addr) = match via {
        Via::Splice(r) => (&r.fingerprint, crate::raw::RELAY_ALPN, r.addr),
        Via::Forwarder(f) => (&raw.fingerprint, crate::raw::FILE_ALPN, f.addr),
        Via::Direct => (&raw.fingerprint, crate::raw::FILE_ALPN, raw.addr),
    };
    let cfg = clients.config(pin, alpn)?;
    let conn = clients.connect(0, &cfg, addr).await?;
    let start = Instant::now();
    let (mut send, mut recv) = conn.open_bi().await?;
    if matches!(via, Via::Splice(_)) {
        let target = format!("{} {}", raw.addr, raw.fingerprint);
        send.write_all(&u16::try_from(target.len())?.to_be_bytes()).await?;
        send.write_all(target.as_bytes()).await?;
    }
    let path = dst.to_string_lossy().into_owned();
    send.write_all(&u16::try_from(path.len())?.to_be_bytes()).await?;
    send.write_all(path.as_bytes()).await?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(8);
    let src = src.to_path_buf();
    let reader = std::thread::spawn(move || -> std::io::Result<()> {
        use std::io::Read;
        let mut file = std::fs::File::open(src)?;
        loop {
            let mut block = vec![0u8; crate::raw::FILE_BLOCK];
            let mut filled = 0;
            while filled < block.len() {
                match file.read(&mut block[filled..])? {
                    0 => break,
                    n => filled += n,
                }
            }
            if filled == 0 {
                return Ok(());
            }
            block.truncate(filled);
            if tx.blocking_send(bytes::Bytes::from(block)).is_err() {
                return Ok(());
            }
        }
    });
    while let Some(block) = rx.recv().await {
        send.write_chunk(block).await?;
    }
    send.finish()?;
    reader.join().map_err(|_| anyhow::anyhow!("the reader thread panicked"))??;
    let mut count = [0u8; 8];
    recv.read_exact(&mut count).await?;
    let took = start.elapsed();
    if u64::from_be_bytes(count) != size {
        bail!("the raw server stored {} of {size} bytes", u64::from_be_bytes(count));
    }
    conn.close(0u32.into(), b"done");
    Ok(took)
}

/// One MiB of non-repeating bytes, sent again and again by the raw blast.
fn bytes_block() -> bytes::Bytes {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut v = vec![0u8; 1 << 20];
    for chunk in v.chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes());
    }
    bytes::Bytes::from(v)
}

pub(crate) async fn files_bench(size: u64, dir: Option<std::path::PathBuf>) -> Result<()> {
    let broker = start_broker()?;
    let raw = start_raw()?;
    let inbox = match &dir {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    };
    let src = match &dir {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    };
    let alice = start_agent(&broker, "alice")?;
    let bob = start_agent_with(&broker, "bob", &["--auto-accept-files", &inbox.path().to_string_lossy()])?;
    peer(alice.home.path(), &["friends", "add", "bob"], None)?;
    peer(bob.home.path(), &["friends", "accept", "alice"], None)?;
    let file = src.path().join("payload.bin");
    random_file(&file, size)?;

    // Raw first, so that both runs find the file in the page cache equally (the raw blast does not read it).
    let raw_cpu0 = cpu_time(raw.child.id()) + cpu_time(std::process::id());
    let raw_time = raw_blast(&raw, size).await?;
    let raw_cpu = cpu_time(raw.child.id()) + cpu_time(std::process::id()) - raw_cpu0;
    // The physical baseline: the same file, disk to disk over one quinn stream, into the same directory.
    let raw_copy_to = inbox.path().join("raw-copy.bin");
    let raw_file_time = raw_file_copy(&raw, &file, &raw_copy_to, size).await?;
    std::fs::remove_file(&raw_copy_to)?;
    let pids = [alice.child.as_ref().map(|c| c.id()), bob.child.as_ref().map(|c| c.id())];
    let agents_cpu = || pids.iter().flatten().map(|p| cpu_time(*p)).sum::<Duration>();
    let agents_cpu0 = agents_cpu();

    let mut watch = tokio::net::UnixStream::connect(socket(alice.home.path())).await?;
    write_frame(&mut watch, &ControlRequest::Watch).await?;
    read_frame::<ControlResponse, _>(&mut watch).await?.context("watch")?;
    let start = Instant::now();
    let mut sender = std::process::Command::new(crate::sibling("peer")?)
        .arg("--home")
        .arg(alice.home.path())
        .args(["send-file", "bob"])
        .arg(&file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let mut moving_at = None;
    let done_at = loop {
        let Some(ControlResponse::Event(AgentEvent::FileUpdated { transfer, .. })) =
            read_frame::<ControlResponse, _>(&mut watch).await?
        else {
            continue;
        };
        match transfer.state {
            TransferState::Transferring if moving_at.is_none() && transfer.error.is_none() => {
                moving_at = Some(Instant::now())
            }
            TransferState::Done => break Instant::now(),
            s if s.is_final() => bail!("the transfer ended {}: {:?}", s.as_str(), transfer.error),
            _ => {}
        }
    };
    let status = tokio::task::spawn_blocking(move || sender.wait()).await??;
    if !status.success() {
        bail!("send-file failed");
    }
    let total = start.elapsed();
    let our_cpu = agents_cpu() - agents_cpu0;
    let moving_at = moving_at.context("no transfer start seen")?;
    let transfer = done_at - moving_at;
    let (rss_a, rss_b) = (peak_rss_kib(&alice).unwrap_or(0), peak_rss_kib(&bob).unwrap_or(0));
    let received = inbox.path().join("payload.bin");
    if std::fs::metadata(&received)?.len() != size {
        bail!("the received file has the wrong size");
    }
    // The physical baseline again, now that the agents have run: the page cache and the disk are in a
    // different state than before them, and the faster of the two runs is the baseline (the harder bar).
    let raw_file_time = raw_file_time.min(raw_file_copy(&raw, &file, &raw_copy_to, size).await?);
    std::fs::remove_file(&raw_copy_to)?;
    // Reference: the same bytes copied file to file on this machine (the page cache and disk's own speed).
    let copy_to = inbox.path().join("local-copy.bin");
    let t = Instant::now();
    std::fs::copy(&file, &copy_to)?;
    std::fs::File::open(&copy_to)?.sync_all()?;
    let copy_time = t.elapsed();
    std::fs::remove_file(&copy_to)?;
    let mb = size as f64 / 1e6;
    let (ours, base) = (mb / transfer.as_secs_f64(), mb / raw_time.as_secs_f64());
    let file_base = mb / raw_file_time.as_secs_f64();
    println!("files bench: {} random bytes, alice -> bob on loopback", size);
    println!("  raw quinn single-stream blast (memory -> discard): {base:.0} MB/s");
    println!("  raw quinn file -> file (1 MiB blocks, fsync; best of a run before and after): {file_base:.0} MB/s");
    println!(
        "  agents, first byte -> verified on disk:            {ours:.0} MB/s  ratio {:.2}x to the file copy, {:.2}x to the blast",
        ours / file_base,
        ours / base
    );
    println!("  local file copy + fsync on this machine (reference): {:.0} MB/s", mb / copy_time.as_secs_f64());
    println!(
        "  end to end incl. hashing the file before the offer: {:.0} MB/s ({:.2} s)",
        mb / total.as_secs_f64(),
        total.as_secs_f64()
    );
    println!("  peak RSS: sender agent {} MiB, receiver agent {} MiB", rss_a / 1024, rss_b / 1024);
    println!(
        "  CPU used: raw {:.2} s (client + server), agents {:.2} s (both, incl. the offer and verification)",
        raw_cpu.as_secs_f64(),
        our_cpu.as_secs_f64()
    );
    println!(
        "{}",
        json!({
            "bench": "files", "bytes": size, "raw_mb_per_s": base, "raw_file_mb_per_s": file_base,
            "agents_mb_per_s": ours, "ratio": ours / base, "ratio_to_file_copy": ours / file_base,
            "end_to_end_s": total.as_secs_f64(), "raw_cpu_s": raw_cpu.as_secs_f64(), "local_copy_mb_per_s": mb / copy_time.as_secs_f64(), "agents_cpu_s": our_cpu.as_secs_f64(), "sender_peak_rss_kib": rss_a, "receiver_peak_rss_kib": rss_b,
        })
    );
    Ok(())
}
