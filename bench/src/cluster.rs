//! `bench cluster`: the presence wave on one broker and on three brokers in a cluster (NATS between them,
//! one PostgreSQL database for both runs' shapes), in the same run: users log in to node `i % n`, so most
//! of each user's friends are on other nodes, and every presence event crosses NATS. Figures side by side
//! with their ratio (target: cross-node within 2x of single-node); the same for one group's fan-out with its
//! members spread over the nodes. Then, with real agents: a file relayed
//! within one node and across two (ratio), and failover: a node killed under an agent that knows all three,
//! until it is online on another and until its next message is delivered (target: < 5 s).

use crate::chat::{Agent, befriend, befriend_and_send_file, peer, start_agent_via};
use crate::client::{groups_over, presence_over, sessions_over};
use crate::stats::{ms, percentile};
use crate::{Proc, sibling, start_broker_with, start_raw};
use anyhow::{Context, Result, bail};
use sqlx::Connection;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// The group fan-out part: one group of this many members, this many posts.
const GROUP_MEMBERS: usize = 500;
const GROUP_POSTS: usize = 200;

/// A database of the run's own on the PostgreSQL server (`BENCH_POSTGRES_URL`), dropped at the end.
struct Database {
    admin: String,
    name: String,
}

impl Database {
    async fn create(admin: &str, tag: &str) -> Result<Self> {
        let name = format!("bench_{tag}_{}", std::process::id());
        let mut c = sqlx::PgConnection::connect(admin).await.context("BENCH_POSTGRES_URL")?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut c).await?;
        Ok(Self { admin: admin.to_string(), name })
    }

    fn url(&self) -> String {
        let root = self.admin.rsplit_once('/').map_or(self.admin.as_str(), |(r, _)| r);
        format!("{root}/{}", self.name)
    }

    async fn drop_it(self) {
        if let Ok(mut c) = sqlx::PgConnection::connect(&self.admin).await {
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)))
                .execute(&mut c)
                .await;
        }
    }
}

/// `n` brokers on `db` (with `n > 1`: a cluster over `nats`, one identity).
fn start_nodes(db: &str, nats: &str, n: usize) -> Result<Vec<Proc>> {
    let key = tempfile::tempdir()?;
    let identity = key.path().join("broker.key");
    let identity = identity.to_str().context("path")?.to_string();
    let mut out = Vec::new();
    for i in 0..n {
        let node = (i + 1).to_string();
        let mut env = vec![
            ("BROKER_DATABASE", db),
            ("BROKER_IDENTITY", identity.as_str()),
            ("BROKER_LOGIN_STRANGERS_PER_MINUTE", "1000000"),
            // Relays unpaced, for the throughput figure.
            ("BROKER_RELAY_USER_RATE", "0"),
            ("BROKER_RELAY_TOTAL_RATE", "0"),
        ];
        if n > 1 {
            env.push(("BROKER_CLUSTER", nats));
            env.push(("BROKER_NODE_ID", node.as_str()));
        }
        out.push(start_broker_with(&env)?);
    }
    // The key directory must outlive the brokers' start only (each loaded the key by now).
    drop(key);
    Ok(out)
}

/// An agent registered at `first` and knowing every node of `nodes` (from `first` on), started with `extra`.
fn agent_on(nodes: &[Proc], first: usize, name: &str, extra: &[&str]) -> Result<Agent> {
    let brokers: Vec<String> = (0..nodes.len()).map(|i| nodes[(first + i) % nodes.len()].addr.to_string()).collect();
    start_agent_via(&|| Ok(Command::new(sibling("peer")?)), &brokers.join(","), name, "127.0.0.1:0", extra)
}

/// `send-file` of `file` from an agent on node `from` to one on node `to`, both `--relay-only`: MB/s from
/// start to verified.
fn relayed_file(nodes: &[Proc], from: usize, to: usize, file: &Path, tag: &str) -> Result<f64> {
    let inbox = tempfile::tempdir()?;
    let (a, b) = (format!("ra{tag}"), format!("rb{tag}"));
    let alice = agent_on(nodes, from, &a, &["--relay-only"])?;
    let bob = agent_on(nodes, to, &b, &["--relay-only", "--auto-accept-files", &inbox.path().to_string_lossy()])?;
    befriend_and_send_file(&alice, &bob, (&a, &b), file)
}

/// One failover: a fresh cluster of three, alice on node id 1 (knowing all three) and bob on node id 2;
/// node 1 is killed. How long until alice's agent is online on another node, and until a message from her
/// is delivered to bob.
async fn failover_once(admin: &str, nats: &str, run: usize) -> Result<(Duration, Duration)> {
    let db = Database::create(admin, &format!("failover{run}")).await?;
    let result = async {
        let mut nodes = start_nodes(&db.url(), nats, 3)?;
        let alice = agent_on(&nodes, 0, "alice", &[])?;
        let bob = agent_on(&nodes, 1, "bob", &[])?;
        befriend(&alice, &bob, ("alice", "bob"))?;
        if !peer(alice.home.path(), &["send", "bob", "before"], None)?.contains("delivered") {
            bail!("message before the failover not delivered");
        }
        let killed = Instant::now();
        drop(nodes.remove(0));
        let deadline = killed + Duration::from_secs(60);
        let online = loop {
            let status: serde_json::Value =
                serde_json::from_str(&peer(alice.home.path(), &["status", "--json"], None)?)?;
            if status["online"] == true && status["session_id"].as_u64().is_some_and(|id| id >> 32 != 1) {
                break killed.elapsed();
            }
            if Instant::now() > deadline {
                bail!("alice's agent did not move to another node within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        if !peer(alice.home.path(), &["send", "bob", "after"], None)?.contains("delivered") {
            bail!("message after the failover not delivered");
        }
        Ok((online, killed.elapsed()))
    }
    .await;
    db.drop_it().await;
    result
}

/// The parts of `bench cluster`, each run on its own fresh databases and nodes.
pub(crate) const PARTS: [&str; 5] = ["presence", "sessions", "groups", "relay", "failover"];

pub(crate) async fn cluster_bench(
    users: usize,
    friends: usize,
    concurrency: usize,
    sessions: usize,
    only: &[String],
) -> Result<()> {
    let admin = std::env::var("BENCH_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://p2pim_test:p2pim_test@127.0.0.1:5432/postgres".into());
    let nats = std::env::var("BENCH_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    if let Some(unknown) = only.iter().find(|p| !PARTS.contains(&p.as_str())) {
        bail!("no part {unknown:?} in bench cluster; the parts are {}", PARTS.join(", "));
    }
    let wanted = |part: &str| only.is_empty() || only.iter().any(|p| p == part);
    let raw = start_raw()?;
    if wanted("presence") {
        presence_part(&admin, &nats, &raw, users, friends, concurrency).await?;
    }
    if wanted("sessions") {
        sessions_part(&admin, &nats, sessions, concurrency).await?;
    }
    if wanted("groups") {
        groups_part(&admin, &nats, &raw).await?;
    }
    if wanted("relay") {
        relay_part(&admin, &nats).await?;
    }
    if wanted("failover") {
        failover_part(&admin, &nats).await?;
    }
    Ok(())
}

/// Runs `f` with 1 node and then with 3 (`f` gets a fresh database's URL and the node count, and starts
/// the nodes itself), returning both results; each database is dropped after its run.
async fn one_then_three<T, F, Fut>(admin: &str, tag: &str, mut f: F) -> Result<[T; 2]>
where
    F: FnMut(String, usize) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut out = Vec::new();
    for n in [1, 3] {
        let db = Database::create(admin, &format!("{tag}{n}")).await?;
        let result = f(db.url(), n).await;
        db.drop_it().await;
        out.push(result?);
    }
    out.try_into().map_err(|_| anyhow::anyhow!("two results"))
}

async fn presence_part(
    admin: &str,
    nats: &str,
    raw: &Proc,
    users: usize,
    friends: usize,
    concurrency: usize,
) -> Result<()> {
    let [one, three] = one_then_three(admin, "n", |url, n| async move {
        presence_over(&start_nodes(&url, nats, n)?, raw, users, friends, concurrency).await
    })
    .await?;
    println!("cluster bench: presence, {users} users x {friends} friends, PostgreSQL");
    for (n, f) in [(1, &one), (3, &three)] {
        println!(
            "  {n} node(s): {:.0} events/s, login -> friend's event p50 {}  p99 {}",
            f.events_per_s,
            ms(f.p50),
            ms(f.p99)
        );
    }
    println!(
        "  3 nodes vs 1: p99 {:.2}x, events/s {:.2}x (target: within 2x)",
        three.p99.as_secs_f64() / one.p99.as_secs_f64(),
        three.events_per_s / one.events_per_s
    );
    println!(
        "{}",
        serde_json::json!({
            "bench": "cluster-presence", "users": users, "friends": friends,
            "one_node": {"events_per_s": one.events_per_s, "p50_ms": one.p50.as_secs_f64() * 1e3, "p99_ms": one.p99.as_secs_f64() * 1e3},
            "three_nodes": {"events_per_s": three.events_per_s, "p50_ms": three.p50.as_secs_f64() * 1e3, "p99_ms": three.p99.as_secs_f64() * 1e3},
            "p99_ratio": three.p99.as_secs_f64() / one.p99.as_secs_f64(),
        })
    );
    Ok(())
}

/// Idle sessions held on 1 node and spread over 3: how many, the memory each costs (all nodes' RSS growth
/// over the sessions), and each node's share.
async fn sessions_part(admin: &str, nats: &str, sessions: usize, concurrency: usize) -> Result<()> {
    let [one, three] = one_then_three(admin, "s", |url, n| async move {
        // Accounts are made first, on nodes that are then restarted: signing up hashes passwords with
        // argon2, whose freed memory would otherwise hide the sessions' cost on the node that did it.
        let clients = std::sync::Arc::new(crate::client::Clients::new()?);
        let tokens = {
            let nodes = start_nodes(&url, nats, n)?;
            crate::client::register_users(&clients, &nodes[0], sessions).await?
        };
        sessions_over(&start_nodes(&url, nats, n)?, &clients, &tokens, concurrency).await
    })
    .await?;
    println!("cluster bench: {sessions} idle sessions");
    for (n, f) in [(1, &one), (3, &three)] {
        println!(
            "  {n} node(s): {} of {sessions} held after 20 s idle, {:.1} KiB per session over all nodes; per node: {}",
            f.alive,
            f.kib_per_session,
            f.per_node
                .iter()
                .map(|(s, kib)| format!("{s} sessions, {} MiB", kib / 1024))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    println!(
        "  3 nodes vs 1: memory per session {:.2}x (target: within 2x)",
        three.kib_per_session / one.kib_per_session
    );
    println!(
        "{}",
        serde_json::json!({
            "bench": "cluster-sessions", "sessions": sessions,
            "one_node": {"alive": one.alive, "kib_per_session": one.kib_per_session, "per_node": one.per_node},
            "three_nodes": {"alive": three.alive, "kib_per_session": three.kib_per_session, "per_node": three.per_node},
        })
    );
    Ok(())
}

/// One group whose members are spread over the nodes: every post numbered once (in the database) and
/// delivered on every node.
async fn groups_part(admin: &str, nats: &str, raw: &Proc) -> Result<()> {
    let [g1, g3] = one_then_three(admin, "g", |url, n| async move {
        groups_over(&start_nodes(&url, nats, n)?, raw, GROUP_MEMBERS, 4, GROUP_POSTS, 0.0).await
    })
    .await?;
    println!(
        "cluster bench: a group of {GROUP_MEMBERS}, {GROUP_POSTS} posts by 4 senders, members spread over the nodes:"
    );
    for (n, f) in [(1, &g1), (3, &g3)] {
        println!(
            "    {n} node(s): {:.0} deliveries/s, post -> member p50 {}  p99 {}, {} µs of broker CPU per delivery",
            f.deliveries_per_s,
            ms(f.p50),
            ms(f.p99),
            f.cpu_us_per_delivery.map_or("?".into(), |c| format!("{c:.1}"))
        );
    }
    println!(
        "    3 nodes vs 1: p99 {:.2}x, deliveries/s {:.2}x (target: within 2x)",
        g3.p99.as_secs_f64() / g1.p99.as_secs_f64(),
        g3.deliveries_per_s / g1.deliveries_per_s
    );
    println!(
        "{}",
        serde_json::json!({
            "bench": "cluster-groups", "members": GROUP_MEMBERS, "posts": GROUP_POSTS,
            "one_node": {"deliveries_per_s": g1.deliveries_per_s, "p50_ms": g1.p50.as_secs_f64() * 1e3, "p99_ms": g1.p99.as_secs_f64() * 1e3, "cpu_us_per_delivery": g1.cpu_us_per_delivery},
            "three_nodes": {"deliveries_per_s": g3.deliveries_per_s, "p50_ms": g3.p50.as_secs_f64() * 1e3, "p99_ms": g3.p99.as_secs_f64() * 1e3, "cpu_us_per_delivery": g3.cpu_us_per_delivery},
        })
    );
    Ok(())
}

/// Real agents: a relayed file within one node and across two.
async fn relay_part(admin: &str, nats: &str) -> Result<()> {
    let db = Database::create(admin, "relay").await?;
    let relayed = async {
        let nodes = start_nodes(&db.url(), nats, 3)?;
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("relayed.bin");
        crate::files::random_file(&file, 64 << 20)?;
        Ok::<_, anyhow::Error>((relayed_file(&nodes, 0, 0, &file, "1")?, relayed_file(&nodes, 0, 1, &file, "2")?))
    }
    .await;
    db.drop_it().await;
    let (within, across) = relayed?;
    println!(
        "cluster bench: relayed 64 MiB file (agents --relay-only): within one node {within:.0} MB/s, across two \
         nodes {across:.0} MB/s ({:.2}x)",
        across / within
    );
    println!(
        "{}",
        serde_json::json!({"bench": "cluster-relay", "relay_mb_s": {"within_one_node": within, "across_nodes": across}})
    );
    Ok(())
}

async fn failover_part(admin: &str, nats: &str) -> Result<()> {
    let mut online = Vec::new();
    let mut delivered = Vec::new();
    for run in 0..5 {
        let (o, d) = failover_once(admin, nats, run).await?;
        online.push(o);
        delivered.push(d);
    }
    let (o50, o_max) = (percentile(&mut online.clone(), 50.0), *online.iter().max().unwrap_or(&Duration::ZERO));
    let (d50, d_max) = (percentile(&mut delivered.clone(), 50.0), *delivered.iter().max().unwrap_or(&Duration::ZERO));
    println!(
        "cluster bench: failover, node killed under an agent (5 runs): online on another node p50 {} max {}; next \
         message delivered p50 {} max {} (target: < 5 s)",
        ms(o50),
        ms(o_max),
        ms(d50),
        ms(d_max)
    );
    println!(
        "{}",
        serde_json::json!({
            "bench": "cluster-failover",
            "failover_ms": {"online": online.iter().map(|d| d.as_secs_f64() * 1e3).collect::<Vec<_>>(),
                            "delivered": delivered.iter().map(|d| d.as_secs_f64() * 1e3).collect::<Vec<_>>()},
        })
    );
    Ok(())
}
