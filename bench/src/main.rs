//! `bench`: measures the real broker against a raw-quinn baseline taken in the same run.
//!
//! - `bench broker`: token logins over fresh QUIC connections (sessions/s), broker RSS per idle session at
//!   1,000 and 10,000 sessions, and bare mutual-TLS QUIC handshakes/s against a raw quinn server.
//! - `bench files`: one file between two real agents (MB/s, peak RSS) beside a raw quinn single-stream blast.
//! - `bench relay`: one file direct and relayed between two agents on loopback, beside raw quinn direct,
//!   through a bare UDP forwarder and through a raw splicing relay.
//! - `bench nat` (root, Linux): in the NAT lab, first message and file throughput, direct and relayed.
//! - `bench soak`: a long mixed load (churn, lookups, group posts over 10,000 sessions): RSS over time and
//!   p99 latencies at the start and the end.
//! - `bench link`: a device with 100,000 messages links a new one: time until the new device holds them
//!   all, beside SQLite copying the same rows between two files.
//! - `bench mailbox`: messages deposited for an offline device, then the device comes online: deposit
//!   rate, the broker's bytes per message, time until all are stored, beside SQLite copying the same rows.
//! - `bench cluster`: one broker beside three in a cluster (NATS, PostgreSQL): the presence wave, idle
//!   sessions and memory, group fan-out, a relayed file across nodes, failover.
//! - `bench tui`: the full-screen app in-process on a test backend: first frame, frame times, memory.
//! - `bench presence`: users with 50 friends each come online; presence events/s and the delay from a
//!   user's hello to each friend's event, beside a raw quinn request/response round trip.
//!
//! The broker and the raw server run as separate processes (the raw server is this binary's hidden
//! `raw-server` command), so both sides of the comparison cost the same process boundaries.

#[cfg(unix)]
mod chat;
mod client;
mod cluster;
mod fanout;
#[cfg(unix)]
mod files;
#[cfg(unix)]
mod forward;
#[cfg(unix)]
mod link;
#[cfg(unix)]
mod mailbox;
#[cfg(target_os = "linux")]
mod nat;
mod raw;
mod relay;
mod seed;
mod soak;
mod stats;
#[cfg(unix)]
mod tui;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

#[derive(Parser)]
#[command(about = "Benchmarks of the real components beside a raw-quinn baseline")]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Session opening rate and memory per idle session.
    Broker {
        /// Concurrent sessions to hold open at the end.
        #[arg(long, default_value_t = 10_000)]
        sessions: usize,
        /// Handshakes in flight at once.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
    },
    /// Presence fan-out.
    Presence {
        #[arg(long, default_value_t = 1_000)]
        users: usize,
        #[arg(long, default_value_t = 50)]
        friends: usize,
        /// Logins in flight at once during the wave.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
    },
    /// Group fan-out: one group, many online members, several senders.
    Groups {
        #[arg(long, default_value_t = 1_000)]
        members: usize,
        #[arg(long, default_value_t = 4)]
        senders: usize,
        /// Posts in all.
        #[arg(long, default_value_t = 200)]
        messages: usize,
        /// Posts per second in all (0: each sender posts as soon as its last post is answered).
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        /// Rounds of posts over the same group, each followed by the seed-shaped server and raw quinn's
        /// fan-out with the same load; the spread over the rounds is printed at the end.
        #[arg(long, default_value_t = 1)]
        runs: usize,
    },
    /// Two real agents chatting: round trip and sustained rate.
    Chat {
        /// Round trips to time (the sustained phase sends five times as many).
        #[arg(long, default_value_t = 2_000)]
        messages: usize,
        /// Senders at once in the sustained phase.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
    },
    /// One file between two real agents: MB/s beside a raw quinn blast, and each agent's peak memory.
    Files {
        /// Bytes to send (e.g. 1G, 256M).
        #[arg(long, default_value = "1G", value_parser = shared::files::parse_size)]
        size: u64,
        /// Where the file is made and received (default: the system's temp directory).
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
    /// One file between two real agents, direct and through the broker's relay, beside raw quinn direct,
    /// through a bare UDP forwarder and through a raw splicing relay (the physical baseline of the extra
    /// hop, as datagrams and as a stream), in the same run.
    Relay {
        #[arg(long, default_value = "256M", value_parser = shared::files::parse_size)]
        size: u64,
        #[arg(long, default_value_t = 2)]
        runs: usize,
    },
    /// A device with a long history links a new one: time until the new device holds all of it.
    Link {
        #[arg(long, default_value_t = 100_000)]
        messages: usize,
    },
    /// One broker beside three in a cluster (needs PostgreSQL and NATS: BENCH_POSTGRES_URL, BENCH_NATS_URL):
    /// presence, idle sessions and their memory, group fan-out, a relayed file, failover.
    Cluster {
        #[arg(long, default_value_t = 1_000)]
        users: usize,
        #[arg(long, default_value_t = 20)]
        friends: usize,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Idle sessions held in the sessions part.
        #[arg(long, default_value_t = 3_000)]
        sessions: usize,
        /// Only these parts (comma-separated): presence, sessions, groups, relay, failover. Default: all.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
    /// Messages sealed into an offline friend's mailbox, then picked up when the friend comes online.
    Mailbox {
        #[arg(long, default_value_t = 10_000)]
        messages: usize,
        /// Senders at once while depositing.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
    },
    /// In the NAT lab (root): first message and file throughput, direct through NATs and relayed.
    Nat {
        #[arg(long, default_value = "256M", value_parser = shared::files::parse_size)]
        size: u64,
        /// Instead: every pair of the lab's kinds of host (no NAT, port-preserving, symmetric, one LAN,
        /// no WAN firewall, port-shifting, carrier-grade), the path each ends on and how soon.
        #[arg(long)]
        matrix: bool,
        /// With --matrix: how long a pair that starts relayed is watched for a direct path.
        #[arg(long, default_value_t = 35)]
        watch_secs: u64,
    },
    /// A long mixed load: sessions held with churn, friend lookups and group posts; the broker's RSS over
    /// time and p99 latencies at the start and the end.
    Soak {
        #[arg(long, default_value_t = 10_000)]
        sessions: usize,
        /// How long to hold the load, in seconds.
        #[arg(long, default_value_t = 600)]
        seconds: u64,
        /// Sessions dropped and reopened per second.
        #[arg(long, default_value_t = 20)]
        churn: u32,
        /// Friend lookups per second.
        #[arg(long, default_value_t = 200)]
        lookups: u32,
        /// Group posts per second (each to 20 members).
        #[arg(long, default_value_t = 100)]
        posts: u32,
    },
    /// The app's state and drawing in-process: first frame, scrolling and arrival frame times, memory.
    Tui {
        #[arg(long, default_value_t = 100_000)]
        messages: usize,
        #[arg(long, default_value_t = 500)]
        conversations: usize,
        /// Messages arriving while the app runs.
        #[arg(long, default_value_t = 1_000)]
        arrivals: usize,
    },
    /// A bare quinn server (the baseline); prints its address and certificate fingerprint.
    #[command(hide = true)]
    RawServer,
    /// A bare UDP forwarder to one server (the channel relay's baseline); prints its address.
    #[command(hide = true)]
    RawForwarder {
        #[arg(long)]
        to: SocketAddr,
    },
    /// The seed's group server rebuilt (the `bench groups` baseline); prints its address.
    #[command(hide = true)]
    SeedServer,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match args.cmd {
        Cmd::RawServer => rt.block_on(raw::serve()),
        Cmd::RawForwarder { to } => rt.block_on(forward::serve(to)),
        Cmd::SeedServer => seed::serve(),
        Cmd::Groups { members, senders, messages, rate, runs } => {
            rt.block_on(client::groups_bench(members, senders, messages, rate, runs))
        }
        #[cfg(unix)]
        Cmd::Chat { messages, concurrency } => rt.block_on(chat::chat_bench(messages, concurrency)),
        #[cfg(not(unix))]
        Cmd::Chat { .. } => anyhow::bail!("the chat bench drives the agent's Unix control socket"),
        #[cfg(target_os = "linux")]
        Cmd::Nat { matrix: true, watch_secs, .. } => rt.block_on(nat::matrix_bench(watch_secs)),
        Cmd::Nat { size, .. } => rt.block_on(nat::nat_bench(size)),
        #[cfg(not(target_os = "linux"))]
        Cmd::Nat { .. } => anyhow::bail!("the NAT lab needs Linux network namespaces"),
        #[cfg(unix)]
        Cmd::Files { size, dir } => rt.block_on(files::files_bench(size, dir)),
        #[cfg(unix)]
        Cmd::Relay { size, runs } => rt.block_on(relay::relay_bench(size, runs)),
        #[cfg(not(unix))]
        Cmd::Relay { .. } => anyhow::bail!("the relay bench drives `peer` on Unix"),
        #[cfg(unix)]
        Cmd::Link { messages } => rt.block_on(link::link_bench(messages)),
        #[cfg(unix)]
        Cmd::Mailbox { messages, concurrency } => rt.block_on(mailbox::mailbox_bench(messages, concurrency)),
        #[cfg(not(unix))]
        Cmd::Mailbox { .. } => anyhow::bail!("the mailbox bench drives the agent's Unix control socket"),
        #[cfg(not(unix))]
        Cmd::Link { .. } => anyhow::bail!("the link bench drives `peer devices link` on a Unix agent"),
        #[cfg(not(unix))]
        Cmd::Files { .. } => anyhow::bail!("the files bench drives the agent's Unix control socket"),
        Cmd::Cluster { users, friends, concurrency, sessions, only } => {
            rt.block_on(cluster::cluster_bench(users, friends, concurrency, sessions, &only))
        }
        Cmd::Broker { sessions, concurrency } => rt.block_on(client::broker_bench(sessions, concurrency)),
        #[cfg(unix)]
        Cmd::Tui { messages, conversations, arrivals } => {
            rt.block_on(tui::tui_bench(messages, conversations, arrivals))
        }
        #[cfg(not(unix))]
        Cmd::Tui { .. } => anyhow::bail!("the app's bench runs on Unix"),
        Cmd::Soak { sessions, seconds, churn, lookups, posts } => rt.block_on(soak::soak_bench(soak::SoakConfig {
            sessions,
            duration: std::time::Duration::from_secs(seconds),
            churn,
            lookups,
            posts,
        })),
        Cmd::Presence { users, friends, concurrency } => {
            rt.block_on(client::presence_bench(users, friends, concurrency))
        }
    }
}

/// A child process that is killed when dropped.
pub(crate) struct Proc {
    pub(crate) child: Child,
    pub(crate) addr: SocketAddr,
    pub(crate) fingerprint: String,
    _dir: Option<tempfile::TempDir>,
}

impl Proc {
    /// The broker's data directory (none for the raw server).
    pub(crate) fn data_dir(&self) -> Option<&std::path::Path> {
        self._dir.as_ref().map(tempfile::TempDir::path)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// Resident memory of the process, in KiB (Linux /proc).
    pub(crate) fn rss_kib(&self) -> Option<u64> {
        proc_status_kib(self.child.id(), "VmRSS:")
    }
}

/// A KiB figure from `/proc/PID/status` (Linux): `VmRSS:` now, `VmHWM:` at its peak.
pub(crate) fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// CPU time (user and system, all threads) a process has used so far, in seconds (Linux `/proc/PID/stat`,
/// whose clock ticks are USER_HZ, 100 per second on every Linux ABI).
pub(crate) fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after its closing parenthesis are plain.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, so 11 and 12 after the state (field 3).
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// UDP datagrams this host dropped because a socket's receive buffer was full (Linux `/proc/net/snmp`,
/// all sockets): a drop costs QUIC a probe timeout, so a tail latency is read beside it.
pub(crate) fn udp_rcvbuf_drops() -> Option<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next()?, udp.next()?);
    let i = names.split_whitespace().position(|n| n == "RcvbufErrors")?;
    values.split_whitespace().nth(i)?.parse().ok()
}

pub(crate) fn sibling(name: &str) -> Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.with_file_name(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !path.exists() {
        bail!("{} not found: build it first with `cargo build --release -p {name}`", path.display());
    }
    Ok(path)
}

/// Reads "... on ADDR fingerprint HEX" from the child's first stdout line.
pub(crate) fn ready_line(child: &mut Child) -> Result<(SocketAddr, String)> {
    let stdout = child.stdout.take().context("no stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "on").context("no address in ready line")?;
    let fp = words.iter().position(|w| *w == "fingerprint").context("no fingerprint in ready line")?;
    Ok((words[at + 1].parse()?, words[fp + 1].to_string()))
}

/// Starts the real broker (release build beside this binary) on SQLite in a temp dir. Account creation uses
/// cheap argon2 parameters so that setting up thousands of users does not dominate the run; logins in the
/// measured part use tokens and never hash.
pub(crate) fn start_broker() -> Result<Proc> {
    start_broker_with(&[])
}

/// [`start_broker`] with extra settings (environment variables).
pub(crate) fn start_broker_with(env: &[(&str, &str)]) -> Result<Proc> {
    let dir = tempfile::tempdir()?;
    let mut child = Command::new(sibling("broker")?)
        .args(["--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path())
        .envs(env.iter().copied())
        .env("BROKER_ARGON2_MEMORY_KIB", "1024")
        .env("BROKER_ARGON2_ITERATIONS", "1")
        .env("BROKER_REGISTRATIONS_PER_IP_HOUR", "1000000")
        .env("BROKER_GROUP_POSTS_PER_SECOND", "1000000")
        .env("BROKER_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let (addr, fingerprint) = ready_line(&mut child)?;
    Ok(Proc { child, addr, fingerprint, _dir: Some(dir) })
}

/// Starts the raw quinn baseline server.
pub(crate) fn start_raw() -> Result<Proc> {
    let mut child = Command::new(std::env::current_exe()?).arg("raw-server").stdout(Stdio::piped()).spawn()?;
    let (addr, fingerprint) = ready_line(&mut child)?;
    Ok(Proc { child, addr, fingerprint, _dir: None })
}

/// A bare UDP forwarder to `to` (see `forward`).
pub(crate) fn start_forwarder(to: SocketAddr) -> Result<Proc> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(["raw-forwarder", "--to", &to.to_string()])
        .stdout(Stdio::piped())
        .spawn()?;
    let (addr, fingerprint) = ready_line(&mut child)?;
    Ok(Proc { child, addr, fingerprint, _dir: None })
}
