//! `bench relay`: a file between two real agents on loopback, direct and through the broker's relay
//! (`--relay-only`), beside the physical baseline of both in the same run: the same file disk to disk over
//! one raw quinn stream direct, through a bare UDP forwarder (what the broker's channels do, without
//! checking, pacing or rewriting anything: `forward`), and over two raw quinn streams spliced by a raw relay
//! process (what the broker does where a channel cannot be had). The relayed / direct ratio of ours is read
//! against the same ratios of the baseline: what an extra hop costs on this machine whatever the software.

use crate::chat::{befriend_and_send_file, start_agent_with};
use crate::files::{Via, random_file, raw_file_copy_via};
use crate::stats::span;
use crate::{Proc, start_broker_with, start_forwarder, start_raw};
use anyhow::Result;
use serde_json::json;
use std::path::Path;

/// Our agents: `send-file` from start to verified, MB/s; `relayed` puts both agents on the relay only.
fn ours(broker: &Proc, file: &Path, tag: &str, relayed: bool) -> Result<f64> {
    let inbox = tempfile::tempdir()?;
    let (a, b) = (format!("a{tag}"), format!("b{tag}"));
    let only: &[&str] = if relayed { &["--relay-only"] } else { &[] };
    let alice = start_agent_with(broker, &a, only)?;
    let accept = inbox.path().to_string_lossy().into_owned();
    let bob = start_agent_with(broker, &b, &[only, &["--auto-accept-files", &accept]].concat())?;
    befriend_and_send_file(&alice, &bob, (&a, &b), file)
}

pub(crate) async fn relay_bench(size: u64, runs: usize) -> Result<()> {
    // Relays unpaced: the figure is the path's, not the broker's default caps.
    let broker = start_broker_with(&[("BROKER_RELAY_USER_RATE", "0"), ("BROKER_RELAY_TOTAL_RATE", "0")])?;
    let (raw, raw_relay) = (start_raw()?, start_raw()?);
    let forwarder = start_forwarder(raw.addr)?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("payload.bin");
    random_file(&file, size)?;
    let copy = dir.path().join("raw-copy.bin");
    let mb = size as f64 / 1e6;
    let mut rows = Vec::new();
    for run in 0..runs.max(1) {
        let time = |via| raw_file_copy_via(&raw, via, &file, &copy, size);
        let raw_direct = mb / time(Via::Direct).await?.as_secs_f64();
        let raw_forwarded = mb / time(Via::Forwarder(&forwarder)).await?.as_secs_f64();
        let raw_relayed = mb / time(Via::Splice(&raw_relay)).await?.as_secs_f64();
        std::fs::remove_file(&copy)?;
        let direct = ours(&broker, &file, &format!("d{run}"), false)?;
        let relayed = ours(&broker, &file, &format!("r{run}"), true)?;
        println!(
            "relay bench, run {}: {} MB file on loopback: raw quinn direct {raw_direct:.0} MB/s, through a UDP \
             forwarder {raw_forwarded:.0} MB/s ({:.2}x), through a stream splice {raw_relayed:.0} MB/s ({:.2}x); \
             agents direct {direct:.0} MB/s, relayed {relayed:.0} MB/s ({:.2}x)",
            run + 1,
            mb as u64,
            raw_forwarded / raw_direct,
            raw_relayed / raw_direct,
            relayed / direct,
        );
        println!(
            "{}",
            json!({
                "bench": "relay", "bytes": size, "raw_direct_mb_s": raw_direct, "raw_relayed_mb_s": raw_relayed,
                "raw_forwarded_mb_s": raw_forwarded, "agents_direct_mb_s": direct, "agents_relayed_mb_s": relayed,
                "raw_ratio": raw_relayed / raw_direct, "raw_forwarded_ratio": raw_forwarded / raw_direct,
                "agents_ratio": relayed / direct,
            })
        );
        rows.push((raw_forwarded / raw_direct, raw_relayed / raw_direct, relayed / direct));
    }
    let runs = rows.len();
    let forwarded = span(rows.iter().map(|r| r.0).collect::<Vec<_>>());
    let spliced = span(rows.iter().map(|r| r.1).collect::<Vec<_>>());
    if let (Some(f), Some(r), Some(o)) = (forwarded, spliced, span(rows.iter().map(|r| r.2).collect::<Vec<_>>())) {
        println!(
            "relayed / direct over {runs} run(s): raw quinn through a UDP forwarder {:.2} - {:.2}x, through a \
             stream splice {:.2} - {:.2}x; agents {:.2} - {:.2}x",
            f.0, f.1, r.0, r.1, o.0, o.1
        );
    }
    Ok(())
}
