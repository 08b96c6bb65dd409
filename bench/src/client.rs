//! Simulated peers in one process, speaking the real protocol to the real broker.

use crate::stats::{ms, percentile};
use crate::{Proc, raw, start_broker, start_raw};
use anyhow::{Context, Result, anyhow, bail};
use certs::Identity;
use certs::verify::ServerPin;
use serde_json::json;
use shared::io::{read_frame, write_frame};
use shared::proto::{BROKER_ALPN, Event, Request, Response};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Client sockets the simulated peers spread over (one UDP socket each).
const ENDPOINTS: usize = 16;
const PASSWORD: &str = "bench password";

/// The simulated peers' side: a few endpoints and one device identity.
pub(crate) struct Clients {
    endpoints: Vec<quinn::Endpoint>,
    identity: Identity,
}

/// A quinn endpoint on a socket with the same deep buffers as the broker's and the agents'.
pub(crate) fn endpoint(server: Option<quinn::ServerConfig>) -> Result<quinn::Endpoint> {
    let socket = shared::udp::bind("127.0.0.1:0".parse()?)?.socket;
    let runtime = quinn::default_runtime().ok_or_else(|| anyhow!("no async runtime"))?;
    Ok(quinn::Endpoint::new(quinn::EndpointConfig::default(), server, socket, runtime)?)
}

impl Clients {
    pub(crate) fn new() -> Result<Self> {
        let endpoints = (0..ENDPOINTS).map(|_| endpoint(None)).collect::<Result<_>>()?;
        Ok(Self { endpoints, identity: Identity::generate("bench-device")? })
    }

    pub(crate) fn config(&self, fingerprint: &str, alpn: &[u8]) -> Result<quinn::ClientConfig> {
        let tls = certs::config::client(&self.identity, ServerPin::Exact(fingerprint.parse()?), &[alpn])?;
        let mut cfg = quinn::ClientConfig::new(Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(tls)?));
        let mut t = quinn::TransportConfig::default();
        t.keep_alive_interval(Some(Duration::from_secs(5)));
        cfg.transport_config(Arc::new(t));
        Ok(cfg)
    }

    pub(crate) async fn connect(
        &self,
        i: usize,
        cfg: &quinn::ClientConfig,
        addr: SocketAddr,
    ) -> Result<quinn::Connection> {
        Ok(self.endpoints[i % ENDPOINTS].connect_with(cfg.clone(), addr, "bench")?.await?)
    }
}

pub(crate) async fn call(conn: &quinn::Connection, req: &Request) -> Result<Response> {
    let (mut send, mut recv) = conn.open_bi().await?;
    write_frame(&mut send, req).await?;
    send.finish()?;
    match read_frame::<Response, _>(&mut recv).await? {
        Some(Response::Error(e)) => bail!("{}: {}", req.kind(), e.message),
        Some(r) => Ok(r),
        None => bail!("no response"),
    }
}

pub(crate) fn username(i: usize) -> String {
    format!("user{i:05}")
}

/// Registers `n` users over a few connections; returns their tokens.
pub(crate) async fn register_users(clients: &Clients, broker: &Proc, n: usize) -> Result<Vec<String>> {
    let cfg = clients.config(&broker.fingerprint, BROKER_ALPN)?;
    let workers = 8;
    let tokens = Arc::new(Mutex::new(vec![String::new(); n]));
    let mut tasks = Vec::new();
    for w in 0..workers {
        let conn = clients.connect(w, &cfg, broker.addr).await?;
        let tokens = tokens.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..n).step_by(workers) {
                let req = Request::Register {
                    username: username(i),
                    display_name: format!("User {i}"),
                    password: PASSWORD.into(),
                };
                match call(&conn, &req).await? {
                    Response::Token { token, .. } => tokens.lock().map_err(|_| anyhow!("poisoned"))?[i] = token,
                    other => bail!("register: {other:?}"),
                }
            }
            conn.close(0u32.into(), b"done");
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let tokens = tokens.lock().map_err(|_| anyhow!("poisoned"))?.clone();
    Ok(tokens)
}

/// Opens `count` connections with at most `concurrency` handshakes in flight, connection `i` to
/// `addrs[i % addrs.len()]` (brokers of a cluster, or one); `then` runs on each.
pub(crate) async fn open_many<F, Fut>(
    clients: &Arc<Clients>,
    cfg: &quinn::ClientConfig,
    addrs: &[SocketAddr],
    range: std::ops::Range<usize>,
    concurrency: usize,
    then: F,
) -> Result<(Vec<quinn::Connection>, Duration)>
where
    F: Fn(usize, quinn::Connection) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<quinn::Connection>> + Send,
{
    let sem = Arc::new(Semaphore::new(concurrency));
    let then = Arc::new(then);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(range.len());
    for i in range {
        let permit = sem.clone().acquire_owned().await?;
        let (clients, cfg, then) = (clients.clone(), cfg.clone(), then.clone());
        let addr = addrs[i % addrs.len()];
        tasks.push(tokio::spawn(async move {
            let conn = clients.connect(i, &cfg, addr).await?;
            let conn = then(i, conn).await?;
            drop(permit);
            Ok::<_, anyhow::Error>(conn)
        }));
    }
    let mut conns = Vec::with_capacity(tasks.len());
    for t in tasks {
        conns.push(t.await??);
    }
    Ok((conns, start.elapsed()))
}

/// For [`open_many`]: connection `i` says hello with token `i`, and must be welcomed.
fn token_hello(
    tokens: Arc<Vec<String>>,
) -> impl Fn(
    usize,
    quinn::Connection,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<quinn::Connection>> + Send>>
+ Clone {
    move |i: usize, conn: quinn::Connection| {
        let token = tokens[i].clone();
        Box::pin(async move {
            match call(&conn, &Request::Hello { token, local_addrs: vec![] }).await? {
                Response::Welcome { .. } => Ok(conn),
                other => bail!("hello: {other:?}"),
            }
        })
    }
}

pub(crate) async fn broker_bench(sessions: usize, concurrency: usize) -> Result<()> {
    let broker = start_broker()?;
    let raw = start_raw()?;
    let clients = Arc::new(Clients::new()?);
    eprintln!("registering {sessions} users ...");
    let tokens = Arc::new(register_users(&clients, &broker, sessions).await?);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_base = broker.rss_kib().context("broker RSS")?;

    // Baseline: bare mutual-TLS handshakes against the raw quinn server, same concurrency.
    let n_raw = sessions.min(5_000);
    let raw_cfg = clients.config(&raw.fingerprint, raw::ALPN)?;
    // Warm-up (not counted): thread pools, allocator and caches on both sides.
    let (warm, _) =
        open_many(&clients, &raw_cfg, &[raw.addr], 0..200, concurrency, |_, c| async move { Ok(c) }).await?;
    for c in &warm {
        c.close(0u32.into(), b"done");
    }
    drop(warm);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let raw_base = raw.rss_kib().context("raw server RSS")?;
    let (raw_conns, raw_time) =
        open_many(&clients, &raw_cfg, &[raw.addr], 0..n_raw, concurrency, |_, c| async move { Ok(c) }).await?;
    // The memory baseline: the same mutual-TLS QUIC connections held idle by bare quinn, nothing else.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let raw_per_conn = raw.rss_kib().context("raw server RSS")?.saturating_sub(raw_base) as f64 / n_raw as f64;
    for c in &raw_conns {
        c.close(0u32.into(), b"done");
    }
    drop(raw_conns);
    let raw_rate = n_raw as f64 / raw_time.as_secs_f64();

    // The broker: fresh connection + hello with a token = one session.
    let cfg = clients.config(&broker.fingerprint, BROKER_ALPN)?;
    let hello = token_hello(tokens.clone());
    let first = sessions.min(1_000);
    let (mut held, t_first) = open_many(&clients, &cfg, &[broker.addr], 0..first, concurrency, hello.clone()).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_1k = broker.rss_kib().context("broker RSS")?;
    let (rest, t_rest) = open_many(&clients, &cfg, &[broker.addr], first..sessions, concurrency, hello).await?;
    held.extend(rest);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_all = broker.rss_kib().context("broker RSS")?;
    // Idle for longer than the idle timeout: every session must still be there (keep-alives work).
    tokio::time::sleep(Duration::from_secs(20)).await;
    let alive = held.iter().filter(|c| c.close_reason().is_none()).count();
    let rss_idle = broker.rss_kib().context("broker RSS")?;

    let rate = sessions as f64 / (t_first + t_rest).as_secs_f64();
    let per_1k = (rss_1k.saturating_sub(rss_base)) as f64 / first as f64;
    let per_all = (rss_idle.saturating_sub(rss_base)) as f64 / sessions as f64;
    println!("broker bench: {sessions} sessions, {concurrency} handshakes in flight, {ENDPOINTS} client sockets");
    println!("  raw quinn handshakes/s (mutual TLS 1.3): {raw_rate:>10.0}");
    println!("  broker sessions opened/s (handshake + token hello): {rate:>10.0}   ratio {:.2}", rate / raw_rate);
    println!(
        "  broker RSS: base {rss_base} KiB, at {first} sessions {rss_1k} KiB, at {sessions} sessions {rss_all} KiB, idle 20 s later {rss_idle} KiB"
    );
    println!("  broker memory per idle session: {per_1k:.1} KiB at {first}, {per_all:.1} KiB at {sessions}");
    println!(
        "  raw quinn server memory per idle connection (same TLS, nothing else): {raw_per_conn:.1} KiB at {n_raw}; \
         broker per session / raw per connection {:.2}x",
        per_all / raw_per_conn
    );
    println!("  sessions still alive after 20 s idle: {alive}/{sessions}");
    println!(
        "{}",
        json!({
            "bench": "broker", "sessions": sessions, "raw_handshakes_per_s": raw_rate, "sessions_per_s": rate,
            "ratio": rate / raw_rate, "rss_base_kib": rss_base, "rss_1k_kib": rss_1k, "rss_all_kib": rss_all,
            "rss_idle_kib": rss_idle, "kib_per_session_1k": per_1k, "kib_per_session_all": per_all, "alive": alive,
            "raw_kib_per_connection": raw_per_conn, "raw_connections": n_raw,
        })
    );
    for c in &held {
        c.close(0u32.into(), b"done");
    }
    Ok(())
}

/// Idle sessions spread over brokers: how many are still held after an idle spell, and what they cost.
pub(crate) struct SessionFigures {
    pub(crate) alive: usize,
    /// All brokers' RSS growth over the sessions, per session.
    pub(crate) kib_per_session: f64,
    /// Per broker: sessions it serves (user `i` on broker `i % n`) and its RSS in KiB at the end.
    pub(crate) per_node: Vec<(usize, u64)>,
}

/// `sessions` users log in (user `i` to broker `i % brokers.len()`) and stay idle for 20 s, longer than
/// the idle timeout, so that only sessions kept alive count.
pub(crate) async fn sessions_over(
    brokers: &[Proc],
    clients: &Arc<Clients>,
    tokens: &[String],
    concurrency: usize,
) -> Result<SessionFigures> {
    let sessions = tokens.len();
    let tokens = Arc::new(tokens.to_vec());
    let cfg = clients.config(&brokers[0].fingerprint, BROKER_ALPN)?;
    let addrs: Vec<SocketAddr> = brokers.iter().map(|b| b.addr).collect();
    let rss = || brokers.iter().map(Proc::rss_kib).collect::<Option<Vec<u64>>>().context("broker RSS");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let base: u64 = rss()?.iter().sum();
    let hello = token_hello(tokens.clone());
    let (held, _) = open_many(clients, &cfg, &addrs, 0..sessions, concurrency, hello).await?;
    tokio::time::sleep(Duration::from_secs(20)).await;
    let alive = held.iter().filter(|c| c.close_reason().is_none()).count();
    let each = rss()?;
    let n = brokers.len();
    let per_node =
        each.iter().enumerate().map(|(k, kib)| ((0..sessions).filter(|i| i % n == k).count(), *kib)).collect();
    for c in &held {
        c.close(0u32.into(), b"done");
    }
    let grown = each.iter().sum::<u64>().saturating_sub(base);
    Ok(SessionFigures { alive, kib_per_session: grown as f64 / sessions as f64, per_node })
}

/// Round trips of 100-byte echoes against the raw server: the floor for any one-way-and-back message.
pub(crate) async fn raw_rtt(clients: &Clients, raw: &Proc, n: usize) -> Result<Vec<Duration>> {
    let cfg = clients.config(&raw.fingerprint, raw::ALPN)?;
    let conn = clients.connect(0, &cfg, raw.addr).await?;
    let payload = vec![7u8; 100];
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let (mut s, mut r) = conn.open_bi().await?;
        s.write_all(&payload).await?;
        s.finish()?;
        r.read_to_end(1024).await?;
        out.push(t.elapsed());
    }
    Ok(out)
}

pub(crate) async fn presence_bench(users: usize, friends: usize, concurrency: usize) -> Result<()> {
    let broker = start_broker()?;
    let raw = start_raw()?;
    presence_over(&[broker], &raw, users, friends, concurrency).await.map(|_| ())
}

/// Presence's figures: events/s, and the p50 and p99 from a login to each friend's event.
pub(crate) struct PresenceFigures {
    pub(crate) events_per_s: f64,
    pub(crate) p50: Duration,
    pub(crate) p99: Duration,
}

/// The presence wave over `brokers` (one, or the nodes of a cluster: user `i` logs in to node
/// `i % brokers.len()`, so most friends are on other nodes).
pub(crate) async fn presence_over(
    brokers: &[Proc],
    raw: &Proc,
    users: usize,
    friends: usize,
    concurrency: usize,
) -> Result<PresenceFigures> {
    let broker = &brokers[0];
    let addrs: Vec<SocketAddr> = brokers.iter().map(|b| b.addr).collect();
    let clients = Arc::new(Clients::new()?);
    eprintln!("registering {users} users ...");
    let tokens = Arc::new(register_users(&clients, broker, users).await?);
    let cfg = clients.config(&broker.fingerprint, BROKER_ALPN)?;

    // Friendships: a ring where each user befriends the next friends/2 users (so everyone has `friends`).
    eprintln!("making {} friendships ...", users * friends / 2);
    let hello = {
        let tokens = tokens.clone();
        move |i: usize, conn: quinn::Connection| {
            let token = tokens[i].clone();
            async move {
                call(&conn, &Request::Hello { token, local_addrs: vec![] }).await?;
                Ok(conn)
            }
        }
    };
    let (setup, _) = open_many(&clients, &cfg, &addrs, 0..users, 64, hello.clone()).await?;
    let setup = Arc::new(setup);
    let half = friends / 2;
    let sem = Arc::new(Semaphore::new(64));
    let mut tasks = Vec::new();
    for i in 0..users {
        for k in 1..=half {
            let j = (i + k) % users;
            let (setup, permit) = (setup.clone(), sem.clone().acquire_owned().await?);
            tasks.push(tokio::spawn(async move {
                call(&setup[i], &Request::FriendAdd { username: username(j), message: String::new() }).await?;
                call(&setup[j], &Request::FriendAccept { username: username(i) }).await?;
                drop(permit);
                Ok::<_, anyhow::Error>(())
            }));
        }
    }
    for t in tasks {
        t.await??;
    }
    for c in setup.iter() {
        c.close(0u32.into(), b"setup done");
    }
    drop(setup);
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The wave: everyone comes online; each session reads its event stream and timestamps presence events.
    eprintln!("bringing {users} users online ...");
    // Per user: when its hello was sent and when it was welcomed; per event: (receiver, subject, time).
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let welcomed: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let received: Arc<Mutex<Vec<(String, String, Instant)>>> = Arc::default();
    let wave = {
        let (tokens, sent, welcomed, received) = (tokens.clone(), sent.clone(), welcomed.clone(), received.clone());
        move |i: usize, conn: quinn::Connection| {
            let (token, sent, welcomed, received) =
                (tokens[i].clone(), sent.clone(), welcomed.clone(), received.clone());
            async move {
                sent.lock().map_err(|_| anyhow!("poisoned"))?.insert(username(i), Instant::now());
                call(&conn, &Request::Hello { token, local_addrs: vec![] }).await?;
                welcomed.lock().map_err(|_| anyhow!("poisoned"))?.insert(username(i), Instant::now());
                let c = conn.clone();
                tokio::spawn(async move {
                    let Ok(mut events) = c.accept_uni().await else { return };
                    while let Ok(Some(ev)) = read_frame::<Event, _>(&mut events).await {
                        if let Event::Presence { username: subject, online: true, .. } = ev
                            && let Ok(mut r) = received.lock()
                        {
                            r.push((username(i), subject, Instant::now()));
                        }
                    }
                });
                Ok(conn)
            }
        }
    };
    let start = Instant::now();
    let (online, login_time) = open_many(&clients, &cfg, &addrs, 0..users, concurrency, wave).await?;
    // Every friendship yields exactly one online event in one direction (the later of the two logs in
    // after the earlier is online) or two (snapshot + announce race); wait until the count settles.
    // Each friendship yields an event each way: the announcement to whoever was online first, and the
    // snapshot to whoever came second (a few more when two friends log in at the same instant).
    let expected = users * half * 2;
    let mut last = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let n = received.lock().map_err(|_| anyhow!("poisoned"))?.len();
        if n >= expected && n == last {
            break;
        }
        if n == last && start.elapsed() > login_time + Duration::from_secs(10) {
            break;
        }
        last = n;
    }
    let received = received.lock().map_err(|_| anyhow!("poisoned"))?.clone();
    let sent = sent.lock().map_err(|_| anyhow!("poisoned"))?.clone();
    let welcomed = welcomed.lock().map_err(|_| anyhow!("poisoned"))?.clone();
    let last_event = received.iter().map(|(_, _, t)| *t).max().unwrap_or(start);
    // Latency is measured on announcements only: events whose receiver was already online when the
    // subject sent its hello (a snapshot's age is the time between two logins, not a delivery delay).
    let mut delays: Vec<Duration> = received
        .iter()
        .filter_map(|(rx, subject, t)| {
            let (s, w) = (sent.get(subject)?, welcomed.get(rx)?);
            (w < s).then(|| t.saturating_duration_since(*s))
        })
        .collect();
    let events = received.len();
    let span = last_event.duration_since(start);
    let rate = events as f64 / span.as_secs_f64();
    let (p50, p99) = (percentile(&mut delays, 50.0), percentile(&mut delays, 99.0));
    let mut rtt = raw_rtt(&clients, raw, 1_000).await?;
    let (r50, r99) = (percentile(&mut rtt, 50.0), percentile(&mut rtt, 99.0));
    println!(
        "presence bench: {users} users x {friends} friends over {} broker node(s), logins {concurrency} in flight",
        brokers.len()
    );
    println!(
        "  presence events delivered: {events} (at least {expected} expected) in {:.2} s = {rate:.0} events/s",
        span.as_secs_f64()
    );
    println!("  login -> friend's event ({} announcements): p50 {}  p99 {}", delays.len(), ms(p50), ms(p99));
    println!("  raw quinn 100-byte round trip: p50 {}  p99 {}", ms(r50), ms(r99));
    println!(
        "{}",
        json!({
            "bench": "presence", "nodes": brokers.len(), "users": users, "concurrency": concurrency, "friends": friends, "events": events, "events_per_s": rate,
            "p50_ms": p50.as_secs_f64() * 1e3, "p99_ms": p99.as_secs_f64() * 1e3,
            "raw_rtt_p50_ms": r50.as_secs_f64() * 1e3, "raw_rtt_p99_ms": r99.as_secs_f64() * 1e3,
        })
    );
    for c in &online {
        c.close(0u32.into(), b"done");
    }
    if events < expected {
        bail!("only {events} of {expected} presence events arrived");
    }
    Ok(PresenceFigures { events_per_s: rate, p50, p99 })
}

/// `bench groups`: one group of `members` online members (simulated in this process), `senders` of them
/// posting `messages` in all; deliveries/s and the delay from a post being sent to each member receiving it.
/// Each of `runs` rounds measures our broker and then, with the same load, the seed-shaped server and raw
/// quinn's fan-out.
pub(crate) async fn groups_bench(
    members: usize,
    senders: usize,
    messages: usize,
    rate: f64,
    runs: usize,
) -> Result<()> {
    let brokers = [start_broker()?];
    let raw = start_raw()?;
    let rig = GroupRig::build(&brokers, members).await?;
    let fanout = crate::fanout::RawFanout::build(&raw, members).await?;
    // Per round: ours, the seed-shaped server, raw quinn.
    let mut rounds: Vec<[GroupFigures; 3]> = Vec::new();
    for round in 1..=runs.max(1) {
        eprintln!("round {round} of {runs}");
        let ours = rig.round(&brokers, &raw, senders, messages, rate).await?;
        let seed = crate::seed::seed_groups(members, senders, messages, rate).await?;
        let quic = fanout.round(&raw, senders, messages, rate).await?;
        rounds.push([ours, seed, quic]);
    }
    let spread = |f: &dyn Fn(&[GroupFigures; 3]) -> Option<f64>| match crate::stats::span(rounds.iter().filter_map(f)) {
        None => "n/a".to_string(),
        Some((lo, hi)) if lo == hi => format!("{lo:.1}"),
        Some((lo, hi)) => format!("{lo:.1} - {hi:.1}"),
    };
    println!("over {} round(s), ours beside the seed-shaped server and raw quinn (min - max):", rounds.len());
    for (what, i) in [("ours", 0), ("seed-shaped", 1), ("raw quinn", 2)] {
        println!(
            "  {what}: {} deliveries/s, p50 {} ms, p99 {} ms, server CPU per delivery {} µs",
            spread(&|r| Some(r[i].deliveries_per_s)),
            spread(&|r| Some(ms_f(r[i].p50))),
            spread(&|r| Some(ms_f(r[i].p99))),
            spread(&|r| r[i].cpu_us_per_delivery),
        );
    }
    println!(
        "  deliveries/s, ours / seed-shaped {}, ours / raw quinn {}",
        spread(&|r| Some(r[0].deliveries_per_s / r[1].deliveries_per_s)),
        spread(&|r| Some(r[0].deliveries_per_s / r[2].deliveries_per_s)),
    );
    Ok(())
}

fn ms_f(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Group fan-out's figures: deliveries/s, the p50 and p99 from a post to each member's receipt, and the
/// brokers' CPU time per delivery.
pub(crate) struct GroupFigures {
    pub(crate) deliveries_per_s: f64,
    pub(crate) p50: Duration,
    pub(crate) p99: Duration,
    pub(crate) cpu_us_per_delivery: Option<f64>,
}

impl GroupFigures {
    /// A round's figures from each receipt (the post's key, when) against when that post was sent
    /// (`sent_at(key)`), counted from `start`, with the server's CPU seconds over the round; and the
    /// deliveries and the seconds they took.
    pub(crate) fn of_round<K: Copy>(
        received: &[(K, Instant)],
        sent_at: impl Fn(K) -> Option<Instant>,
        start: Instant,
        cpu: Option<f64>,
    ) -> (Self, usize, f64) {
        let deliveries = received.len();
        let last = received.iter().map(|(_, t)| *t).max().unwrap_or(start);
        let elapsed = last.duration_since(start).as_secs_f64();
        let mut delays: Vec<Duration> =
            received.iter().filter_map(|(k, t)| sent_at(*k).map(|s| t.saturating_duration_since(s))).collect();
        let figures = Self {
            deliveries_per_s: deliveries as f64 / elapsed,
            p50: percentile(&mut delays, 50.0),
            p99: percentile(&mut delays, 99.0),
            cpu_us_per_delivery: cpu.map(|c| c * 1e6 / deliveries.max(1) as f64),
        };
        (figures, deliveries, elapsed)
    }

    /// For [`GroupFigures::of_round`]: when post `k` was sent, from a table indexed by post number.
    /// A baseline round's end: waits (at most 2 minutes) until `expected` receipts are in, then its figures
    /// from the receipts against when each post (by index) was sent, with the server's CPU since
    /// `cpu_before`. The receipts and send times as they stand then.
    pub(crate) async fn of_baseline_round(
        received: &Mutex<Vec<(u64, Instant)>>,
        sent: &Mutex<Vec<Option<Instant>>>,
        expected: usize,
        (server, cpu_before): (u32, Option<f64>),
        start: Instant,
    ) -> Result<(Self, usize, f64)> {
        let deadline = Instant::now() + Duration::from_secs(120);
        while received.lock().map_err(|_| anyhow!("poisoned"))?.len() < expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let cpu = crate::cpu_seconds(server).zip(cpu_before).map(|(a, b)| a - b);
        let received = received.lock().map_err(|_| anyhow!("poisoned"))?.clone();
        let sent = sent.lock().map_err(|_| anyhow!("poisoned"))?.clone();
        Ok(Self::of_round(&received, Self::sent_by_index(&sent), start, cpu))
    }

    pub(crate) fn sent_by_index(sent: &[Option<Instant>]) -> impl Fn(u64) -> Option<Instant> + '_ {
        |k| sent.get(usize::try_from(k).ok()?).copied().flatten()
    }

    /// Prints a baseline round (a line, then JSON named `bench`); fails if deliveries are missing.
    pub(crate) fn report(
        &self,
        label: &str,
        bench: &str,
        (deliveries, expected, elapsed): (usize, usize, f64),
        (members, senders, messages, rate): (usize, usize, usize, f64),
    ) -> Result<()> {
        let cpu = self.cpu_us_per_delivery;
        println!(
            "  {label}, same load: {deliveries} of {expected} in {elapsed:.2} s = {:.0} deliveries/s, p50 {}  p99 {}{}",
            self.deliveries_per_s,
            ms(self.p50),
            ms(self.p99),
            cpu.map(|c| format!(", {c:.2} µs of its CPU per delivery")).unwrap_or_default()
        );
        println!(
            "{}",
            json!({
                "bench": bench, "members": members, "senders": senders, "messages": messages, "rate": rate,
                "deliveries": deliveries, "deliveries_per_s": self.deliveries_per_s,
                "p50_ms": self.p50.as_secs_f64() * 1e3, "p99_ms": self.p99.as_secs_f64() * 1e3, "cpu_us_per_delivery": cpu,
            })
        );
        if deliveries < expected {
            bail!("{label}: only {deliveries} of {expected} deliveries arrived");
        }
        Ok(())
    }
}

/// One group's fan-out over `brokers` (one, or the nodes of a cluster: member `i` is online on node
/// `i % brokers.len()`, so most deliveries of every post go to other nodes).
pub(crate) async fn groups_over(
    brokers: &[Proc],
    raw: &Proc,
    members: usize,
    senders: usize,
    messages: usize,
    rate: f64,
) -> Result<GroupFigures> {
    GroupRig::build(brokers, members).await?.round(brokers, raw, senders, messages, rate).await
}

/// A group with all its members online, ready for rounds of posts.
struct GroupRig {
    clients: Arc<Clients>,
    conns: Arc<Vec<quinn::Connection>>,
    group_id: i64,
    members: usize,
    /// Each session's receipts of the bench's posts: (the post's number in the group, when).
    received: Arc<Mutex<Vec<(i64, Instant)>>>,
}

impl GroupRig {
    async fn build(brokers: &[Proc], members: usize) -> Result<Self> {
        let broker = &brokers[0];
        let clients = Arc::new(Clients::new()?);
        eprintln!("registering {members} users ...");
        let tokens = Arc::new(register_users(&clients, broker, members).await?);
        let cfg = clients.config(&broker.fingerprint, BROKER_ALPN)?;
        let addrs: Vec<SocketAddr> = brokers.iter().map(|b| b.addr).collect();

        // Everyone online; each session counts the bench's posts it receives, with the time.
        let received: Arc<Mutex<Vec<(i64, Instant)>>> = Arc::default();
        let online = {
            let (tokens, received) = (tokens.clone(), received.clone());
            move |i: usize, conn: quinn::Connection| {
                let (token, received) = (tokens[i].clone(), received.clone());
                async move {
                    call(&conn, &Request::Hello { token, local_addrs: vec![] }).await?;
                    let c = conn.clone();
                    tokio::spawn(async move {
                        let Ok(mut events) = c.accept_uni().await else { return };
                        while let Ok(Some(ev)) = read_frame::<Event, _>(&mut events).await {
                            if let Event::GroupMessage(m) = ev
                                && !m.system
                                && let Ok(mut r) = received.lock()
                            {
                                r.push((m.seq, Instant::now()));
                            }
                        }
                    });
                    Ok(conn)
                }
            }
        };
        let (conns, _) = open_many(&clients, &cfg, &addrs, 0..members, 16, online).await?;
        let conns = Arc::new(conns);

        eprintln!("building a group of {members} ...");
        let Response::GroupCreated { group_id } =
            call(&conns[0], &Request::GroupCreate { name: "bench".into() }).await?
        else {
            bail!("group create")
        };
        let sem = Arc::new(Semaphore::new(16));
        let mut tasks = Vec::new();
        for i in 1..members {
            let (conns, permit) = (conns.clone(), sem.clone().acquire_owned().await?);
            tasks.push(tokio::spawn(async move {
                call(&conns[0], &Request::FriendAdd { username: username(i), message: String::new() }).await?;
                call(&conns[i], &Request::FriendAccept { username: username(0) }).await?;
                call(&conns[0], &Request::GroupInvite { group_id, username: username(i) }).await?;
                call(&conns[i], &Request::GroupJoin { group_id }).await?;
                drop(permit);
                Ok::<_, anyhow::Error>(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        Ok(Self { clients, conns, group_id, members, received })
    }

    /// `senders` members post `messages` in all (paced at `rate` posts/s, or as fast as answered) and
    /// every member's receipts are timed.
    async fn round(
        &self,
        brokers: &[Proc],
        raw: &Proc,
        senders: usize,
        messages: usize,
        rate: f64,
    ) -> Result<GroupFigures> {
        let (members, group_id) = (self.members, self.group_id);
        self.received.lock().map_err(|_| anyhow!("poisoned"))?.clear();
        eprintln!("{senders} senders posting {messages} messages ...");
        let sent: Arc<Mutex<HashMap<i64, Instant>>> = Arc::default();
        let drops_before = crate::udp_rcvbuf_drops();
        let broker_cpu = || brokers.iter().map(|b| crate::cpu_seconds(b.child.id())).sum::<Option<f64>>();
        let cpu_before = broker_cpu();
        let start = Instant::now();
        let mut tasks = Vec::new();
        for s in 0..senders {
            let (conns, sent) = (self.conns.clone(), sent.clone());
            tasks.push(tokio::spawn(async move {
                for k in (s..messages).step_by(senders) {
                    if rate > 0.0 {
                        // Paced: post k is due at k / rate seconds after the start.
                        let due = start + Duration::from_secs_f64(k as f64 / rate);
                        tokio::time::sleep_until(due.into()).await;
                    }
                    let t = Instant::now();
                    // As the agents post: with an id, stored at most once.
                    let mut post_id = [0u8; 16];
                    post_id[..8].copy_from_slice(&(k as u64).to_be_bytes());
                    let req = Request::GroupPostOnce { group_id, text: format!("{:0>100}", k), post_id };
                    let Response::GroupPosted { seq } = call(&conns[s], &req).await? else { bail!("post") };
                    sent.lock().map_err(|_| anyhow!("poisoned"))?.insert(seq, t);
                }
                Ok::<_, anyhow::Error>(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        let expected = messages * members;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let n = self.received.lock().map_err(|_| anyhow!("poisoned"))?.len();
            if n >= expected || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let cpu = broker_cpu().zip(cpu_before).map(|(a, b)| a - b);
        let drops = crate::udp_rcvbuf_drops().zip(drops_before).map(|(a, b)| a.saturating_sub(b));
        let received = self.received.lock().map_err(|_| anyhow!("poisoned"))?.clone();
        let sent = sent.lock().map_err(|_| anyhow!("poisoned"))?.clone();
        let (figures, deliveries, elapsed) =
            GroupFigures::of_round(&received, |seq| sent.get(&seq).copied(), start, cpu);
        let GroupFigures { deliveries_per_s: delivered_per_s, p50, p99, cpu_us_per_delivery } = figures;
        let mut rtt = raw_rtt(&self.clients, raw, 1_000).await?;
        let (r50, r99) = (percentile(&mut rtt, 50.0), percentile(&mut rtt, 99.0));
        let pace = if rate > 0.0 { format!("{rate} posts/s") } else { "as fast as answered".to_string() };
        println!(
            "groups bench: 1 group of {members} online members on {} broker node(s), {senders} senders, {messages} \
             posts of 100 bytes, {pace}",
            brokers.len()
        );
        println!("  deliveries: {deliveries} of {expected} in {elapsed:.2} s = {delivered_per_s:.0} deliveries/s");
        println!("  post sent -> member received: p50 {}  p99 {}", ms(p50), ms(p99));
        if let Some(c) = cpu_us_per_delivery {
            println!("  the broker's CPU per delivery (posting, numbering, storing, encrypting, sending): {c:.2} µs");
        }
        if let Some(d) = drops {
            println!("  UDP datagrams dropped by full receive buffers meanwhile (host-wide): {d}");
        }
        println!("  raw quinn 100-byte round trip: p50 {}  p99 {}", ms(r50), ms(r99));
        println!(
            "{}",
            json!({
                "bench": "groups", "nodes": brokers.len(), "members": members, "senders": senders, "messages": messages,
                "rate": rate, "deliveries": deliveries, "deliveries_per_s": delivered_per_s,
                "p50_ms": p50.as_secs_f64() * 1e3, "p99_ms": p99.as_secs_f64() * 1e3,
                "cpu_us_per_delivery": cpu_us_per_delivery, "raw_rtt_p50_ms": r50.as_secs_f64() * 1e3,
                "raw_rtt_p99_ms": r99.as_secs_f64() * 1e3, "udp_drops": drops,
            })
        );
        if deliveries < expected {
            bail!("only {deliveries} of {expected} deliveries arrived");
        }
        Ok(figures)
    }
}
