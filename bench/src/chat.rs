//! `bench chat`: two real agents (release `peer` binaries) exchange 100-byte messages through the real
//! path: control socket → sender agent → direct QUIC → receiver agent's database → acknowledgement → back.

use crate::stats::{ms, percentile};
use crate::{Proc, sibling, start_broker, start_raw};
use anyhow::{Context, Result, bail};
use serde_json::json;
use shared::control::{ControlRequest, ControlResponse, MessageStatus};
use shared::io::{read_frame, write_frame};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PASSWORD: &str = "bench password";

/// A peer home with its agent running.
pub(crate) struct Agent {
    pub(crate) home: tempfile::TempDir,
    pub(crate) child: Option<Child>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `a` (named `names.0`) asks `b` (`names.1`) to be friends, and `b` accepts.
pub(crate) fn befriend(a: &Agent, b: &Agent, names: (&str, &str)) -> Result<()> {
    peer(a.home.path(), &["friends", "add", names.1], None)?;
    peer(b.home.path(), &["friends", "accept", names.0], None)?;
    Ok(())
}

/// `alice` (named `names.0`) befriends `bob` (`names.1`, accepting files), sends a warm-up message, then
/// `file`: MB/s from `send-file` starting to the file verified on bob's side.
pub(crate) fn befriend_and_send_file(alice: &Agent, bob: &Agent, names: (&str, &str), file: &Path) -> Result<f64> {
    let b = names.1;
    befriend(alice, bob, names)?;
    let out = peer(alice.home.path(), &["send", b, "warm-up"], None)?;
    if !out.contains("delivered") {
        bail!("the warm-up message was not delivered: {out}");
    }
    let t = Instant::now();
    let out = peer(alice.home.path(), &["send-file", b, &file.to_string_lossy()], None)?;
    let took = t.elapsed();
    if !out.contains("verified") {
        bail!("the file was not delivered: {out}");
    }
    Ok(std::fs::metadata(file)?.len() as f64 / 1e6 / took.as_secs_f64())
}

pub(crate) fn peer(home: &Path, args: &[&str], stdin: Option<&str>) -> Result<String> {
    run_peer(Command::new(sibling("peer")?), home, args, stdin)
}

/// Runs `peer` (as `cmd` starts it: directly, or inside a network namespace) against `home`; its stdout.
pub(crate) fn run_peer(mut cmd: Command, home: &Path, args: &[&str], stdin: Option<&str>) -> Result<String> {
    use std::io::Write;
    let mut child = cmd
        .arg("--home")
        .arg(home)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(input) = stdin {
        child.stdin.take().context("stdin")?.write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("peer {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) fn start_agent(broker: &Proc, name: &str) -> Result<Agent> {
    start_agent_with(broker, name, &[])
}

/// Registers `name` and runs its agent on loopback with extra `peer up` options, waiting until it is online.
pub(crate) fn start_agent_with(broker: &Proc, name: &str, extra: &[&str]) -> Result<Agent> {
    start_agent_via(&|| Ok(Command::new(sibling("peer")?)), &broker.addr.to_string(), name, "127.0.0.1:0", extra)
}

/// Registers `name` at `broker` and runs its agent (`peer up --bind BIND`, plus `extra`), each `peer` started
/// by `launch` (directly, or inside a network namespace); returns once the agent is online.
pub(crate) fn start_agent_via(
    launch: &dyn Fn() -> Result<Command>,
    broker: &str,
    name: &str,
    bind: &str,
    extra: &[&str],
) -> Result<Agent> {
    let home = tempfile::tempdir()?;
    let register = ["register", name, "--broker", broker, "--password-stdin"];
    run_peer(launch()?, home.path(), &register, Some(&format!("{PASSWORD}\n")))?;
    // The agent's log goes to HOME/agent.log (`bench chat` reads its latency lines from there).
    let log = std::fs::File::create(home.path().join("agent.log"))?;
    let child = launch()?
        .arg("--home")
        .arg(home.path())
        .args(["up", "--bind", bind])
        .args(extra)
        .env("PEER_LOG", "warn,peer::latency=debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    let agent = Agent { home, child: Some(child) };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !run_peer(launch()?, agent.home.path(), &["status", "--json"], None)
        .is_ok_and(|s| s.contains("\"online\": true"))
    {
        if Instant::now() > deadline {
            bail!("agent {name} did not come online");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(agent)
}

/// How long each send took inside an agent, in order, from its log (`peer::latency` lines: `us=N`).
fn agent_latencies(home: &Path) -> Result<Vec<Duration>> {
    let log = std::fs::read_to_string(home.join("agent.log"))?;
    Ok(log
        .lines()
        .filter(|l| l.contains("send answered"))
        .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("us=")))
        .filter_map(|us| us.parse().ok())
        .map(Duration::from_micros)
        .collect())
}

pub(crate) fn socket(home: &Path) -> PathBuf {
    home.join("agent.sock")
}

/// One `peer send` on a control connection; returns when the friend's agent has stored it.
async fn send(s: &mut tokio::net::UnixStream, text: &str) -> Result<()> {
    write_frame(s, &ControlRequest::Send { to: "bob".into(), text: text.into() }).await?;
    match read_frame::<ControlResponse, _>(s).await? {
        Some(ControlResponse::Sent { status: MessageStatus::Delivered, .. }) => Ok(()),
        other => bail!("not delivered: {other:?}"),
    }
}

pub(crate) async fn chat_bench(messages: usize, concurrency: usize) -> Result<()> {
    let broker = start_broker()?;
    let raw = start_raw()?;
    let alice = start_agent(&broker, "alice")?;
    let bob = start_agent(&broker, "bob")?;
    peer(alice.home.path(), &["friends", "add", "bob"], None)?;
    peer(bob.home.path(), &["friends", "accept", "alice"], None)?;
    let sock = socket(alice.home.path());
    let text = "x".repeat(100);

    // First message: broker lookup, handshake with the friend's agent, store, ack.
    let mut control = tokio::net::UnixStream::connect(&sock).await?;
    let t = Instant::now();
    send(&mut control, &text).await?;
    let first = t.elapsed();
    let answered_before = agent_latencies(alice.home.path())?.len();

    // Round trips, one at a time.
    let mut rtts = Vec::with_capacity(messages);
    for _ in 0..messages {
        let t = Instant::now();
        send(&mut control, &text).await?;
        rtts.push(t.elapsed());
    }
    let (p50, p99) = (percentile(&mut rtts, 50.0), percentile(&mut rtts, 99.0));
    // The same sends as alice's agent saw them: from taking the request to answering it (no CLI hop).
    // (An agent build from before these lines logs none: the figure is then left out.)
    let mut inside: Vec<Duration> = agent_latencies(alice.home.path())?.split_off(answered_before);
    let inside_logged = inside.len() == messages;
    let (i50, i99) =
        if inside_logged { (percentile(&mut inside, 50.0), percentile(&mut inside, 99.0)) } else { Default::default() };

    // The local hop alone: `peer status` on the same control connection (answered from memory), which
    // the raw-quinn baseline does not have to make.
    let mut hops = Vec::with_capacity(messages);
    for _ in 0..messages {
        let t = Instant::now();
        write_frame(&mut control, &ControlRequest::Status).await?;
        let Some(ControlResponse::Status(_)) = read_frame::<ControlResponse, _>(&mut control).await? else {
            bail!("status: unexpected answer");
        };
        hops.push(t.elapsed());
    }
    let hop = percentile(&mut hops, 50.0);

    // Sustained: `concurrency` senders at once.
    let total = messages * 5;
    let start = Instant::now();
    let sock = Arc::new(sock);
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let (sock, text) = (sock.clone(), text.clone());
        tasks.push(tokio::spawn(async move {
            let mut control = tokio::net::UnixStream::connect(sock.as_path()).await?;
            for _ in (w..total).step_by(concurrency) {
                send(&mut control, &text).await?;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let rate = total as f64 / start.elapsed().as_secs_f64();

    let clients = crate::client::Clients::new()?;
    let mut raw_rtt = crate::client::raw_rtt(&clients, &raw, messages).await?;
    let (r50, r99) = (percentile(&mut raw_rtt, 50.0), percentile(&mut raw_rtt, 99.0));
    println!("chat bench: {messages} round trips, then {total} messages with {concurrency} senders");
    println!("  first message (lookup + handshake + store + ack): {}", ms(first));
    println!("  send -> delivered (stored on both sides): p50 {}  p99 {}", ms(p50), ms(p99));
    if inside_logged {
        println!("  the same, inside alice's agent (no CLI):  p50 {}  p99 {}", ms(i50), ms(i99));
    }
    println!("  raw quinn 100-byte round trip:            p50 {}  p99 {}", ms(r50), ms(r99));
    if inside_logged {
        println!("  ratio p50 inside the agent: {:.1}x", i50.as_secs_f64() / r50.as_secs_f64());
    }
    println!("  ratio p50: {:.1}x", p50.as_secs_f64() / r50.as_secs_f64());
    println!(
        "  of which the local control hop (peer status round trip) p50 {}; without it {:.1}x",
        ms(hop),
        (p50.saturating_sub(hop)).as_secs_f64() / r50.as_secs_f64()
    );
    println!("  sustained: {rate:.0} messages/s stored on both sides");
    println!(
        "{}",
        json!({
            "bench": "chat", "first_ms": first.as_secs_f64() * 1e3, "p50_ms": p50.as_secs_f64() * 1e3,
            "p99_ms": p99.as_secs_f64() * 1e3, "raw_p50_ms": r50.as_secs_f64() * 1e3, "raw_p99_ms": r99.as_secs_f64() * 1e3,
            "control_hop_p50_ms": hop.as_secs_f64() * 1e3,
            "agent_p50_ms": i50.as_secs_f64() * 1e3, "agent_p99_ms": i99.as_secs_f64() * 1e3,
            "messages_per_s": rate, "concurrency": concurrency,
        })
    );
    Ok(())
}
