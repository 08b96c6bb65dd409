//! `bench cluster`: the presence wave on one broker and on three brokers in a cluster (NATS between them,
//! one PostgreSQL database for both runs' shapes), in the same run: users log in to node `i % n`, so most
//! of each user's friends are on other nodes, and every presence event crosses NATS. Figures side by side
//! with their ratio (target: cross-node within 2x of single-node).

use crate::client::{PresenceFigures, presence_over};
use crate::stats::ms;
use crate::{Proc, start_broker_with, start_raw};
use anyhow::{Context, Result};
use sqlx::Connection;

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

pub(crate) async fn cluster_bench(users: usize, friends: usize, concurrency: usize) -> Result<()> {
    let admin = std::env::var("BENCH_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://p2pim_test:p2pim_test@127.0.0.1:5432/postgres".into());
    let nats = std::env::var("BENCH_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let raw = start_raw()?;
    let mut results: Vec<(usize, PresenceFigures)> = Vec::new();
    for n in [1, 3] {
        let db = Database::create(&admin, &format!("n{n}")).await?;
        let nodes = start_nodes(&db.url(), &nats, n)?;
        let figures = presence_over(&nodes, &raw, users, friends, concurrency).await;
        drop(nodes);
        db.drop_it().await;
        results.push((n, figures?));
    }
    let (one, three) = (&results[0].1, &results[1].1);
    println!("cluster bench: presence, {users} users x {friends} friends, PostgreSQL");
    for (n, f) in &results {
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
            "bench": "cluster", "users": users, "friends": friends,
            "one_node": {"events_per_s": one.events_per_s, "p50_ms": one.p50.as_secs_f64() * 1e3, "p99_ms": one.p99.as_secs_f64() * 1e3},
            "three_nodes": {"events_per_s": three.events_per_s, "p50_ms": three.p50.as_secs_f64() * 1e3, "p99_ms": three.p99.as_secs_f64() * 1e3},
            "p99_ratio": three.p99.as_secs_f64() / one.p99.as_secs_f64(),
        })
    );
    Ok(())
}
