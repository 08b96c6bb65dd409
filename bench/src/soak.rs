//! `bench soak`: the broker under a long mixed load. Thousands of sessions stay online while some drop and
//! come back every second (presence to friends and fellow group members), friends look each other up (what
//! a direct chat asks of the broker) and group owners post (stored, numbered, fanned out). Every ten seconds
//! it prints the broker's RSS, the sessions alive, errors, and the window's p99 latencies; at the end, the
//! first and last minute side by side. A leak shows as RSS climbing after warm-up; a slowdown as the last
//! minute's p99 above the first's.

use crate::client::{Clients, call, register_users, username};
use crate::start_broker;
use crate::stats::{ms, percentile};
use anyhow::{Result, anyhow, bail};
use serde_json::json;
use shared::io::read_frame;
use shared::proto::{BROKER_ALPN, Event, Request, Response};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Members per group (the owner and the next users after it, all befriended by the owner).
const GROUP_SIZE: usize = 20;
/// Each user's friends on either side in a ring.
const RING: usize = 2;

/// The load's settings.
pub(crate) struct SoakConfig {
    pub(crate) sessions: usize,
    pub(crate) duration: Duration,
    /// Sessions dropped and reopened per second.
    pub(crate) churn: u32,
    /// Friend lookups per second.
    pub(crate) lookups: u32,
    /// Group posts per second.
    pub(crate) posts: u32,
}

/// What the load measured in one window.
#[derive(Default)]
struct Window {
    lookups: Vec<Duration>,
    posts: Vec<Duration>,
    reconnects: Vec<Duration>,
}

struct Shared {
    clients: Clients,
    cfg: quinn::ClientConfig,
    addr: std::net::SocketAddr,
    tokens: Vec<String>,
    sessions: Vec<Mutex<Option<quinn::Connection>>>,
    window: Mutex<Window>,
    /// When each (group, seq) was posted, for the delivery delay.
    posted: Mutex<HashMap<(i64, i64), Instant>>,
    errors: AtomicU64,
    /// Each group's id, by group number (the owner is user `number * GROUP_SIZE`); set after setup.
    groups: std::sync::OnceLock<Vec<i64>>,
}

impl Shared {
    fn session(&self, i: usize) -> Option<quinn::Connection> {
        self.sessions[i].lock().ok()?.clone().filter(|c| c.close_reason().is_none())
    }

    fn error(&self, what: &str, e: &anyhow::Error) {
        if self.errors.fetch_add(1, Ordering::Relaxed) < 10 {
            eprintln!("  error ({what}): {e:#}");
        }
    }

    /// Opens session `i` (connection + hello) and starts reading its events.
    async fn open(self: &Arc<Self>, i: usize) -> Result<()> {
        let conn = self.clients.connect(i, &self.cfg, self.addr).await?;
        match call(&conn, &Request::Hello { token: self.tokens[i].clone(), local_addrs: vec![] }).await? {
            Response::Welcome { .. } => {}
            other => bail!("hello: {other:?}"),
        }
        let (me, c) = (self.clone(), conn.clone());
        tokio::spawn(async move {
            let Ok(mut events) = c.accept_uni().await else { return };
            while let Ok(Some(ev)) = read_frame::<Event, _>(&mut events).await {
                if let Event::GroupMessage(m) = ev
                    && !m.system
                {
                    let sent = me.posted.lock().ok().and_then(|p| p.get(&(m.group_id, m.seq)).copied());
                    if let (Some(t), Ok(mut w)) = (sent, me.window.lock()) {
                        w.posts.push(t.elapsed());
                    }
                }
            }
        });
        *self.sessions[i].lock().map_err(|_| anyhow!("poisoned"))? = Some(conn);
        Ok(())
    }
}

/// A small seeded generator for picking users (no dependency for it).
struct Pick(u64);

impl Pick {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

pub(crate) async fn soak_bench(c: SoakConfig) -> Result<()> {
    let n = c.sessions;
    if n < GROUP_SIZE * 2 {
        bail!("at least {} sessions", GROUP_SIZE * 2);
    }
    let broker = start_broker()?;
    let clients = Clients::new()?;
    eprintln!("registering {n} users ...");
    let tokens = register_users(&clients, &broker, n).await?;
    let cfg = clients.config(&broker.fingerprint, BROKER_ALPN)?;
    let shared = Arc::new(Shared {
        clients,
        cfg,
        addr: broker.addr,
        tokens,
        sessions: (0..n).map(|_| Mutex::new(None)).collect(),
        window: Mutex::default(),
        posted: Mutex::default(),
        errors: AtomicU64::new(0),
        groups: std::sync::OnceLock::new(),
    });
    eprintln!("bringing {n} sessions online ...");
    each(n, 64, |i| {
        let s = shared.clone();
        async move { s.open(i).await }
    })
    .await?;

    eprintln!("friendships (a ring of {RING} each side) and {} groups of {GROUP_SIZE} ...", n / GROUP_SIZE);
    let befriend = {
        let shared = shared.clone();
        move |a: usize, b: usize| {
            let s = shared.clone();
            async move {
                let (ca, cb) = (s.session(a).ok_or(anyhow!("offline"))?, s.session(b).ok_or(anyhow!("offline"))?);
                call(&ca, &Request::FriendAdd { username: username(b), message: String::new() }).await?;
                call(&cb, &Request::FriendAccept { username: username(a) }).await?;
                Ok::<_, anyhow::Error>(())
            }
        }
    };
    each(n, 64, |i| {
        let befriend = befriend.clone();
        async move {
            for k in 1..=RING {
                befriend(i, (i + k) % n).await?;
            }
            Ok(())
        }
    })
    .await?;
    let owners: Vec<usize> = (0..n / GROUP_SIZE).map(|g| g * GROUP_SIZE).collect();
    let groups = Arc::new(Mutex::new(vec![0i64; owners.len()]));
    each(owners.len(), 32, |g| {
        let (s, befriend, groups) = (shared.clone(), befriend.clone(), groups.clone());
        async move {
            let owner = g * GROUP_SIZE;
            let conn = s.session(owner).ok_or(anyhow!("offline"))?;
            let Response::GroupCreated { group_id } =
                call(&conn, &Request::GroupCreate { name: format!("soak {g}") }).await?
            else {
                bail!("group create")
            };
            for m in owner + 1..owner + GROUP_SIZE {
                if m - owner > RING {
                    befriend(owner, m).await?;
                }
                call(&conn, &Request::GroupInvite { group_id, username: username(m) }).await?;
                call(&s.session(m).ok_or(anyhow!("offline"))?, &Request::GroupJoin { group_id }).await?;
            }
            groups.lock().map_err(|_| anyhow!("poisoned"))?[g] = group_id;
            Ok(())
        }
    })
    .await?;
    let groups = groups.lock().map_err(|_| anyhow!("poisoned"))?.clone();
    let _ = shared.groups.set(groups);

    eprintln!(
        "soaking for {} s: {} reconnects/s, {} lookups/s, {} group posts/s ...",
        c.duration.as_secs(),
        c.churn,
        c.lookups,
        c.posts
    );
    let start = Instant::now();
    let stop = start + c.duration;
    let mut load = Vec::new();
    load.push(tokio::spawn(paced(shared.clone(), c.churn, stop, 1, |s, i| async move {
        if let Some(old) = s.session(i) {
            old.close(0u32.into(), b"churn");
        }
        let t = Instant::now();
        s.open(i).await?;
        s.window.lock().map_err(|_| anyhow!("poisoned"))?.reconnects.push(t.elapsed());
        Ok(())
    })));
    load.push(tokio::spawn(paced(shared.clone(), c.lookups, stop, 2, |s, i| async move {
        let Some(conn) = s.session(i) else { return Ok(()) };
        let t = Instant::now();
        match call(&conn, &Request::Lookup { username: username((i + 1) % s.sessions.len()) }).await {
            Ok(Response::Endpoints(_)) => s.window.lock().map_err(|_| anyhow!("poisoned"))?.lookups.push(t.elapsed()),
            Ok(other) => bail!("lookup: {other:?}"),
            // The session was churned away under the request: not the broker's error.
            Err(_) if conn.close_reason().is_some() => {}
            Err(e) => return Err(e),
        }
        Ok(())
    })));
    load.push(tokio::spawn(paced(shared.clone(), c.posts, stop, 3, |s, i| async move {
        let groups = s.groups.get().ok_or(anyhow!("no groups"))?;
        let g = i % groups.len();
        let Some(conn) = s.session(g * GROUP_SIZE) else { return Ok(()) };
        let t = Instant::now();
        let mut post_id = [0u8; 16];
        post_id[..8].copy_from_slice(&(i as u64).to_be_bytes());
        let req = Request::GroupPostOnce { group_id: groups[g], text: format!("{:0>100}", i), post_id };
        match call(&conn, &req).await {
            Ok(Response::GroupPosted { seq }) => {
                s.posted.lock().map_err(|_| anyhow!("poisoned"))?.insert((groups[g], seq), t);
            }
            Ok(other) => bail!("post: {other:?}"),
            Err(_) if conn.close_reason().is_some() => {}
            Err(e) => return Err(e),
        }
        Ok(())
    })));

    println!("soak: {n} sessions, {} groups of {GROUP_SIZE}, {} friends each", n / GROUP_SIZE, RING * 2);
    println!("   t(s)   RSS(MiB)  alive  errors   lookup p99   post->member p99   reconnect p99");
    let mut samples = Vec::new();
    let mut windows = Vec::new();
    while Instant::now() < stop {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let mut w = std::mem::take(&mut *shared.window.lock().map_err(|_| anyhow!("poisoned"))?);
        // Posts older than a minute will not be delivered any more (or were): forget them.
        if let Ok(mut p) = shared.posted.lock() {
            p.retain(|_, t| t.elapsed() < Duration::from_secs(60));
        }
        let rss = broker.rss_kib().unwrap_or(0);
        let alive = (0..n).filter(|&i| shared.session(i).is_some()).count();
        let errors = shared.errors.load(Ordering::Relaxed);
        let t = start.elapsed().as_secs();
        let (l99, p99, r99) =
            (percentile(&mut w.lookups, 99.0), percentile(&mut w.posts, 99.0), percentile(&mut w.reconnects, 99.0));
        println!(
            "{t:>7} {:>10.1} {alive:>6} {errors:>7} {:>12} {:>18} {:>15}",
            rss as f64 / 1024.0,
            ms(l99),
            ms(p99),
            ms(r99)
        );
        samples.push(json!({ "t": t, "rss_kib": rss, "alive": alive, "errors": errors,
            "lookup_p99_ms": l99.as_secs_f64() * 1e3, "post_p99_ms": p99.as_secs_f64() * 1e3 }));
        windows.push(w);
    }
    for l in load {
        l.await??;
    }
    // The first and last minute (six windows each), merged.
    let merge = |ws: &[Window]| {
        let mut m = Window::default();
        for w in ws {
            m.lookups.extend(&w.lookups);
            m.posts.extend(&w.posts);
            m.reconnects.extend(&w.reconnects);
        }
        m
    };
    let k = windows.len().min(6);
    let (mut first, mut last) = (merge(&windows[..k]), merge(&windows[windows.len() - k..]));
    let rss: Vec<u64> = samples.iter().filter_map(|s| s["rss_kib"].as_u64()).collect();
    let errors = shared.errors.load(Ordering::Relaxed);
    for (label, w) in [("first minute", &mut first), ("last minute: ", &mut last)] {
        println!(
            "{label}: lookup p99 {}, post->member p99 {} ({} deliveries), reconnect p99 {}",
            ms(percentile(&mut w.lookups, 99.0)),
            ms(percentile(&mut w.posts, 99.0)),
            w.posts.len(),
            ms(percentile(&mut w.reconnects, 99.0))
        );
    }
    println!(
        "broker RSS: {:.1} MiB after the first minute, {:.1} MiB at the end, max {:.1} MiB; errors {errors}",
        rss.get(k.saturating_sub(1)).copied().unwrap_or(0) as f64 / 1024.0,
        rss.last().copied().unwrap_or(0) as f64 / 1024.0,
        rss.iter().max().copied().unwrap_or(0) as f64 / 1024.0
    );
    println!(
        "{}",
        json!({ "bench": "soak", "sessions": n, "duration_s": c.duration.as_secs(), "churn": c.churn,
        "lookups": c.lookups, "posts": c.posts, "errors": errors, "samples": samples,
        "first_minute": { "lookup_p99_ms": percentile(&mut first.lookups, 99.0).as_secs_f64() * 1e3,
            "post_p99_ms": percentile(&mut first.posts, 99.0).as_secs_f64() * 1e3 },
        "last_minute": { "lookup_p99_ms": percentile(&mut last.lookups, 99.0).as_secs_f64() * 1e3,
            "post_p99_ms": percentile(&mut last.posts, 99.0).as_secs_f64() * 1e3 } })
    );
    if errors > 0 {
        bail!("{errors} errors during the soak");
    }
    Ok(())
}

/// Runs `f` for indexes 0..n, at most `concurrency` at once.
async fn each<F, Fut>(n: usize, concurrency: usize, f: F) -> Result<()>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<()>> + Send + 'static,
{
    let sem = Arc::new(Semaphore::new(concurrency));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let permit = sem.clone().acquire_owned().await?;
        let fut = f(i);
        tasks.push(tokio::spawn(async move {
            let r = fut.await;
            drop(permit);
            r
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// Calls `f` on random users `per_second` times a second until `stop`, each call on its own task; errors
/// are counted (the first few printed), not fatal.
async fn paced<F, Fut>(s: Arc<Shared>, per_second: u32, stop: Instant, seed: u64, f: F) -> Result<()>
where
    F: Fn(Arc<Shared>, usize) -> Fut,
    Fut: std::future::Future<Output = Result<()>> + Send + 'static,
{
    if per_second == 0 {
        return Ok(());
    }
    let mut pick = Pick(0x9E37_79B9 ^ seed);
    let every = Duration::from_secs_f64(1.0 / f64::from(per_second));
    let mut next = Instant::now();
    while next < stop {
        tokio::time::sleep_until(next.into()).await;
        next += every;
        let i = pick.below(s.sessions.len());
        let (fut, s2) = (f(s.clone(), i), s.clone());
        tokio::spawn(async move {
            if let Err(e) = fut.await {
                s2.error("load", &e);
            }
        });
    }
    Ok(())
}
