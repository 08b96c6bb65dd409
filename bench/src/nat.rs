//! `bench nat` (root): in the NAT lab (`scripts/natlab`), the time from a friend lookup to the first
//! delivered message over a direct path through two port-preserving NATs ((b)-(b)) and through the broker's
//! relay between two symmetric NATs ((c)-(c)), and file throughput over each. With `--matrix`: every pair
//! of the lab's kinds of host, the path it starts on, and whether and when it ends direct.

use crate::chat::{Agent, start_agent_via};
use anyhow::{Context, Result, bail};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/natlab")
}

/// The lab, torn down when dropped.
struct Lab(String);

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new(script()).args(["down", &self.0]).status();
    }
}

/// A process killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn in_ns(ns: &str, bin: &str) -> Result<Command> {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).arg(crate::sibling(bin)?);
    Ok(c)
}

fn peer(ns: &str, home: &Path, args: &[&str], stdin: Option<&str>) -> Result<(String, Duration)> {
    let t = Instant::now();
    let out = crate::chat::run_peer(in_ns(ns, "peer")?, home, args, stdin)?;
    Ok((out, t.elapsed()))
}

/// A user on a lab host with its agent running (and online).
struct User {
    ns: String,
    agent: Agent,
}

fn user(lab: &Lab, host: &str, name: &str, broker: &str, extra: &[&str]) -> Result<User> {
    let ns = format!("{}-{host}", lab.0);
    let agent = start_agent_via(&|| in_ns(&ns, "peer"), broker, name, "0.0.0.0:0", extra)?;
    Ok(User { ns, agent })
}

impl User {
    fn run(&self, args: &[&str]) -> Result<String> {
        peer(&self.ns, self.agent.home.path(), args, None).map(|(s, _)| s)
    }

    fn timed(&self, args: &[&str]) -> Result<(String, Duration)> {
        peer(&self.ns, self.agent.home.path(), args, None)
    }

    fn path_to(&self) -> Result<String> {
        let friends: serde_json::Value = serde_json::from_str(&self.run(&["friends", "--json"])?)?;
        Ok(friends[0]["connections"][0]["path"].as_str().unwrap_or("none").to_string())
    }
}

/// One pair: first message (lookup, path set-up, delivery) and a file's throughput.
struct Pair {
    first: Duration,
    path: String,
    file_mb_s: f64,
}

fn pair(lab: &Lab, broker: &str, hosts: (&str, &str), names: (&str, &str), file: &Path, size: u64) -> Result<Pair> {
    let inbox = tempfile::tempdir()?;
    let a = user(lab, hosts.0, names.0, broker, &[])?;
    let b = user(lab, hosts.1, names.1, broker, &["--auto-accept-files", &inbox.path().to_string_lossy()])?;
    a.run(&["friends", "add", names.1])?;
    b.run(&["friends", "accept", names.0])?;
    let (out, first) = a.timed(&["send", names.1, "first message"])?;
    if !out.contains("delivered") {
        bail!("first message not delivered: {out}");
    }
    let path = a.path_to()?;
    let (out, took) = a.timed(&["send-file", names.1, &file.to_string_lossy()])?;
    if !out.contains("verified") {
        bail!("file not delivered: {out}");
    }
    Ok(Pair { first, path, file_mb_s: size as f64 / 1e6 / took.as_secs_f64() })
}

/// The lab built, with a broker (relay unpaced) on its public segment.
struct LabBroker {
    _broker: Running,
    _data: tempfile::TempDir,
    lab: Lab,
}

fn lab_with_broker() -> Result<LabBroker> {
    let lab = Lab(format!("nlbench{}", std::process::id()));
    let out = Command::new(script()).args(["up", &lab.0]).output()?;
    if !out.status.success() {
        bail!("could not build the NAT lab (needs root and nftables): {}", String::from_utf8_lossy(&out.stderr));
    }
    let data = tempfile::tempdir()?;
    let broker_ns = format!("{}-broker", lab.0);
    let mut child = in_ns(&broker_ns, "broker")?
        .args(["--listen", BROKER, "--data"])
        .arg(data.path())
        .args(["--relay-user-rate", "0", "--relay-total-rate", "0"])
        .env("BROKER_ARGON2_MEMORY_KIB", "1024")
        .env("BROKER_ARGON2_ITERATIONS", "1")
        .env("BROKER_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let broker = Running(child);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
    Ok(LabBroker { _broker: broker, _data: data, lab })
}

const BROKER: &str = "203.0.113.1:7878";

/// The lab's kinds of host: a name, and the hosts of that kind (a second one where the lab has it).
const KINDS: [(&str, &str, Option<&str>); 7] = [
    ("public", "a1", Some("a2")),
    ("preserving", "b1", Some("b2")),
    ("symmetric", "c1", Some("c2")),
    ("one LAN", "d1", Some("d2")),
    ("no firewall", "e1", Some("e2")),
    ("shifting", "f1", None),
    ("carrier", "g1", Some("g2")),
];

/// What one pair did: the path of its first message and how long that took, then the path it ended on
/// and when (since the first message was sent).
struct Outcome {
    first: Duration,
    first_path: String,
    last_path: String,
    settled: Duration,
}

fn watch_pair(lab: &Lab, hosts: (&str, &str), n: usize, watch: Duration) -> Result<Outcome> {
    let (a, b) = (format!("m{n}a"), format!("m{n}b"));
    let ua = user(lab, hosts.0, &a, BROKER, &[])?;
    let ub = user(lab, hosts.1, &b, BROKER, &[])?;
    ua.run(&["friends", "add", &b])?;
    ub.run(&["friends", "accept", &a])?;
    let start = Instant::now();
    let (out, first) = ua.timed(&["send", &b, "first message"])?;
    if !out.contains("delivered") {
        bail!("{}-{}: first message not delivered: {out}", hosts.0, hosts.1);
    }
    let first_path = ua.path_to()?;
    let mut last_path = first_path.clone();
    while last_path != "direct" && start.elapsed() < watch {
        std::thread::sleep(Duration::from_millis(100));
        last_path = ua.path_to()?;
    }
    let settled = start.elapsed();
    // A pair that went direct must still carry a message.
    if !ua.run(&["send", &b, "and another"])?.contains("delivered") {
        bail!("{}-{}: second message not delivered", hosts.0, hosts.1);
    }
    Ok(Outcome { first, first_path, last_path, settled })
}

pub(crate) async fn matrix_bench(watch_secs: u64) -> Result<()> {
    let running = lab_with_broker()?;
    let watch = Duration::from_secs(watch_secs);
    let mut cells = Vec::new();
    let mut n = 0;
    for (i, (kind_a, host_a, _)) in KINDS.iter().enumerate() {
        for (kind_b, host_b, second) in &KINDS[i..] {
            let host_b = if kind_a == kind_b {
                match second {
                    Some(h) => *h,
                    None => continue,
                }
            } else {
                *host_b
            };
            n += 1;
            let o = watch_pair(&running.lab, (host_a, host_b), n, watch)?;
            let cell = match (o.first_path.as_str(), o.last_path.as_str()) {
                ("direct", _) => format!("direct {:.0} ms", o.first.as_secs_f64() * 1e3),
                (_, "direct") => {
                    format!("relayed {:.0} ms, direct by {:.1} s", o.first.as_secs_f64() * 1e3, o.settled.as_secs_f64())
                }
                (p, _) => format!("{p} {:.0} ms", o.first.as_secs_f64() * 1e3),
            };
            println!("  {kind_a} ({host_a}) - {kind_b} ({host_b}): {cell}");
            cells.push(json!({
                "a": kind_a, "b": kind_b, "hosts": [host_a, host_b], "first_ms": o.first.as_secs_f64() * 1e3,
                "first_path": o.first_path, "final_path": o.last_path,
                "direct_after_s": (o.last_path == "direct").then_some(o.settled.as_secs_f64()),
            }));
        }
    }
    println!("{}", json!({"bench": "nat-matrix", "watch_s": watch_secs, "pairs": cells}));
    Ok(())
}

pub(crate) async fn nat_bench(size: u64) -> Result<()> {
    let running = lab_with_broker()?;
    let lab = &running.lab;
    let broker = BROKER;

    let src = tempfile::tempdir()?;
    let file = src.path().join("payload.bin");
    crate::files::random_file(&file, size)?;

    let direct = pair(lab, broker, ("b1", "b2"), ("alice", "bob"), &file, size)?;
    let relayed = pair(lab, broker, ("c1", "c2"), ("carol", "dave"), &file, size)?;
    if direct.path != "direct" || relayed.path != "relayed" {
        bail!("unexpected paths: (b)-(b) {}, (c)-(c) {}", direct.path, relayed.path);
    }
    let ratio = relayed.file_mb_s / direct.file_mb_s;
    println!("nat bench ({} MB file), in the NAT lab", size / 1_000_000);
    println!("  (b)-(b) direct:  lookup -> first message delivered {:>7.1} ms", direct.first.as_secs_f64() * 1e3);
    println!("  (c)-(c) relayed: lookup -> first message delivered {:>7.1} ms", relayed.first.as_secs_f64() * 1e3);
    println!(
        "  file, send-file start -> verified: direct {:.0} MB/s, relayed {:.0} MB/s",
        direct.file_mb_s, relayed.file_mb_s
    );
    println!("  relayed / direct: {ratio:.2}x");
    println!(
        "{}",
        json!({
            "bench": "nat", "bytes": size, "direct_first_ms": direct.first.as_secs_f64() * 1e3,
            "relayed_first_ms": relayed.first.as_secs_f64() * 1e3, "direct_file_mb_per_s": direct.file_mb_s,
            "relayed_file_mb_per_s": relayed.file_mb_s, "ratio": ratio,
        })
    );
    Ok(())
}
