//! Brokers in a cluster: nodes on one database (PostgreSQL or MariaDB) that tell each other, over NATS,
//! which sessions each serves and carry each other's pushes, so that users on different nodes find each
//! other, see each other's presence and get each other's events as on one broker.
//!
//! NATS core pub/sub only (at most once): every node publishes its sessions as they come and go on
//! `p2pim.CLUSTER.all` (CLUSTER: from the identity every node presents), with a heartbeat every 2 s that carries how many it serves. A node that hears a count
//! other than what it holds for that node twice in a row asks it for a snapshot (`Resync`), and a node that
//! joins (or whose link to NATS comes back) says `Hello` and gets everyone's snapshot, so a lost message is
//! repaired within seconds. A node silent for the idle timeout is taken out with its sessions, and each
//! survivor tells its own sessions' friends. Pushes to sessions on another node go to that node's own
//! subject (`p2pim.CLUSTER.node.ID`), naming the sessions, one message per node however many sessions.
//!
//! Relays between agents on different nodes go through both nodes, and a link code claimed on a node that
//! does not hold it is claimed by request on `p2pim.CLUSTER.claims` (see `nodes`). What stays with one
//! node: the turn that orders one group's fan-out (numbering is in the database, so order never forks; an agent that
//! sees a gap fetches it, as after being offline).

use crate::server::Ctx;
use crate::store::now_ms;
use crate::table::{Announced, Frame, Outbound};
use bytes::Bytes;
use futures_util::StreamExt;
use shared::proto::Event;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How often a node says it is alive (and how many sessions it serves).
const HEARTBEAT: Duration = Duration::from_secs(2);
/// Silence after which a node counts as gone: the same as an agent's idle timeout.
const SILENT: Duration = crate::server::IDLE_TIMEOUT;
/// A node that has not heard its own heartbeat come back through NATS for this long does not hear NATS,
/// whatever its client says: a link that went silent (a partition that drops packets rather than refusing
/// them) keeps the client "connected" until its pings time out, minutes later.
const ECHO_WITHIN: Duration = Duration::from_secs(3 * HEARTBEAT.as_secs());
/// How long one publish may wait for the NATS client's buffer (full when the link has gone silent): the
/// link's loop must go on beating and checking, not hang on one message.
const PUBLISH_WITHIN: Duration = Duration::from_secs(1);
/// How long a claim of a link code held elsewhere waits for the node that holds it.
const CLAIM_WAIT: Duration = Duration::from_secs(2);
/// Largest cluster message either side accepts: NATS's default payload limit (1 MiB). Decoding counts
/// what it would allocate, not only the bytes (bincode claims `len * size_of::<T>()` for a `Vec<T>`), so
/// the parts below are sized by that.
const BUS_LIMIT: usize = 1 << 20;
/// What one snapshot part or one push may cost to decode: a quarter of the limit, so that any part fits.
const PART_BUDGET: usize = BUS_LIMIT / 4;
/// The subjects of one cluster: named after the identity its nodes share, so that clusters (or tests)
/// that share a NATS server never hear each other.
#[derive(Debug, Clone)]
struct Subjects {
    all: String,
    prefix: String,
    /// Link codes claimed on a node that does not hold them: a request every node hears, answered by
    /// the one that holds the code.
    claims: String,
}

impl Subjects {
    fn new(identity: &certs::Fingerprint) -> Self {
        let name = &identity.to_string()[..16];
        Self {
            all: format!("p2pim.{name}.all"),
            prefix: format!("p2pim.{name}.node."),
            claims: format!("p2pim.{name}.claims"),
        }
    }

    fn node(&self, node: u64) -> String {
        format!("{}{node}", self.prefix)
    }
}

/// Joining a cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub url: String,
    /// This node's id (unique in the cluster; random if not set).
    pub node: u64,
    /// The address the other nodes reach this one at, for relays between nodes (`None`: the listening
    /// address, unless that is every interface).
    pub advertise: Option<std::net::SocketAddr>,
}

/// What nodes say to each other.
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
enum Bus {
    Hello {
        node: u64,
        addr: Option<SocketAddr>,
    },
    Heartbeat {
        node: u64,
        sessions: u64,
        addr: Option<SocketAddr>,
    },
    Up {
        node: u64,
        session: Announced,
    },
    Down {
        node: u64,
        user: String,
        session_id: u64,
        at: i64,
    },
    /// One part of a node's sessions; `last` ends it, and then they replace what was known of that node.
    Snapshot {
        node: u64,
        epoch: u64,
        rows: Vec<Announced>,
        last: bool,
    },
    /// The node is shutting down: take its sessions out now.
    Bye {
        node: u64,
    },
    /// To one node: send your snapshot.
    Resync,
    /// To one node: deliver this frame to these sessions of yours.
    Push {
        sessions: Vec<(String, u64)>,
        frame: Vec<u8>,
    },
    /// To one node: these sessions of yours were revoked; close them after this frame.
    Close {
        user: String,
        sessions: Vec<u64>,
        frame: Option<Vec<u8>>,
    },
    /// To every node (a request): a device claims this link code here; the node that holds it answers.
    Claim {
        link_id: [u8; 5],
        device: [u8; 32],
        observed: SocketAddr,
        local: Vec<SocketAddr>,
    },
    /// The answer to `Claim`: whose code it was, and where the offering device is.
    Claimed {
        username: String,
        device: shared::proto::DeviceEndpoint,
    },
}

fn encode(msg: &Bus) -> Option<Bytes> {
    match bincode::encode_to_vec(msg, bincode::config::standard()) {
        Ok(b) if b.len() <= BUS_LIMIT => Some(Bytes::from(b)),
        Ok(b) => {
            tracing::error!(bytes = b.len(), "a cluster message over the limit; not sent");
            None
        }
        Err(e) => {
            tracing::error!(error = %e, "could not encode a cluster message");
            None
        }
    }
}

/// Reads one cluster message: the whole payload, within [`BUS_LIMIT`].
fn decode(payload: &[u8]) -> Result<Bus, shared::frame::FrameError> {
    shared::frame::decode_within::<BUS_LIMIT, Bus>(payload)
}

/// What a snapshot row costs to decode (see [`BUS_LIMIT`]).
fn row_cost(row: &Announced) -> usize {
    std::mem::size_of::<Announced>() + row.user.len() + row.local.len() * std::mem::size_of::<SocketAddr>()
}

/// What one addressee of a push costs to decode.
fn addressee_cost((user, _): &(String, u64)) -> usize {
    std::mem::size_of::<(String, u64)>() + user.len()
}

/// A node's sessions in snapshot parts, each within [`PART_BUDGET`] (one empty part when there are none, so
/// that the others still replace what they knew).
fn snapshot_parts(rows: Vec<Announced>) -> Vec<Vec<Announced>> {
    let parts = shared::frame::pack(rows, PART_BUDGET, row_cost);
    if parts.is_empty() { vec![Vec::new()] } else { parts }
}

/// Connects to NATS: the client, and the link's own events (reconnected, disconnected).
pub async fn connect(
    cfg: &ClusterConfig,
) -> anyhow::Result<(async_nats::Client, mpsc::UnboundedReceiver<async_nats::Event>)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let client = async_nats::ConnectOptions::new()
        .name(format!("p2pim-broker-{}", cfg.node))
        .event_callback(move |e| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(e);
            }
        })
        .connect(cfg.url.as_str())
        .await
        .map_err(|e| anyhow::anyhow!("--cluster {}: cannot reach NATS: {e}", cfg.url))?;
    Ok((client, rx))
}

/// What this node knows of the others.
#[derive(Default)]
struct Peers {
    heard: HashMap<u64, Instant>,
    /// How many sessions each node last said it serves.
    announced: HashMap<u64, u64>,
    /// Checks in a row whose count differed from what this node holds.
    mismatched: HashMap<u64, u32>,
    /// When this node's own last heartbeat came back through NATS.
    echo: Option<Instant>,
    /// Snapshots being received, by node: their epoch and rows so far.
    staging: HashMap<u64, (u64, Vec<Announced>)>,
}

/// What to do about being cut off from NATS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    /// The other nodes have NATS and have taken this node's sessions out: send its users to them.
    Isolate,
    /// Serve sessions again (NATS is back, or it is down for every node, so no node is better placed).
    Rejoin,
}

/// Whether this node should serve sessions, from its own link to NATS and what the database says of the
/// others' (pure: time and the database's answer passed in). A node cut off from NATS for the idle timeout
/// has been taken out by the others, so its users would be online to nobody but it: if other nodes still
/// hear NATS, it is the one partitioned away and sends its users to them; if none does, NATS itself is
/// down and every node keeps serving its own users as best it can.
#[derive(Debug, Default)]
struct Isolation {
    cut_since: Option<Instant>,
    isolated: bool,
}

/// Whether a node hears NATS: its client is connected and its own heartbeat came back within
/// [`ECHO_WITHIN`] (of `since`: the last echo, or when the link started).
fn hears_nats(connected: bool, since: Instant, now: Instant) -> bool {
    connected && now.saturating_duration_since(since) < ECHO_WITHIN
}

impl Isolation {
    /// The link to NATS came back or went away.
    fn link(&mut self, up: bool, now: Instant) -> Option<Change> {
        if up {
            self.cut_since = None;
            return std::mem::take(&mut self.isolated).then_some(Change::Rejoin);
        }
        self.cut_since.get_or_insert(now);
        None
    }

    /// Whether it is time to ask the database about the others: cut off for the idle timeout.
    fn due(&self, now: Instant) -> bool {
        self.cut_since.is_some_and(|t| now.duration_since(t) >= SILENT)
    }

    /// What the database said: whether any other node heard NATS lately.
    fn others(&mut self, hear_nats: bool) -> Option<Change> {
        match (self.isolated, hear_nats) {
            (false, true) => {
                self.isolated = true;
                Some(Change::Isolate)
            }
            (true, false) => {
                self.isolated = false;
                Some(Change::Rejoin)
            }
            _ => None,
        }
    }
}

/// The cluster link: runs until the broker stops.
pub async fn run(
    ctx: Arc<Ctx>,
    db: crate::store::Db,
    client: async_nats::Client,
    identity: certs::Fingerprint,
    node: u64,
    mut out: mpsc::UnboundedReceiver<Outbound>,
    mut link_events: mpsc::UnboundedReceiver<async_nats::Event>,
) {
    let subjects = Subjects::new(&identity);
    let subscribed = (
        client.subscribe(subjects.all.clone()).await,
        client.subscribe(subjects.node(node)).await,
        client.subscribe(subjects.claims.clone()).await,
    );
    let (mut all, mut mine, mut claims) = match subscribed {
        (Ok(a), Ok(m), Ok(c)) => (a, m, c),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            tracing::error!(error = %e, "cluster: cannot subscribe; this node serves only its own sessions");
            return;
        }
    };
    let addr = ctx.nodes.as_ref().and_then(|n| n.advertised);
    let link = Link { ctx, client, node, subjects, epoch: std::sync::atomic::AtomicU64::new(0) };
    tracing::info!(node, relay_addr = ?addr, "joined the cluster");
    link.publish(&link.subjects.all, &Bus::Hello { node, addr }).await;
    link.snapshot().await;
    let mut peers = Peers::default();
    let started = Instant::now();
    let mut isolation = Isolation::default();
    let mut beat = tokio::time::interval(HEARTBEAT);
    loop {
        tokio::select! {
            Some(o) = out.recv() => link.outbound(o).await,
            Some(m) = all.next() => link.inbound(&mut peers, &m.payload).await,
            Some(m) = mine.next() => link.inbound(&mut peers, &m.payload).await,
            Some(m) = claims.next() => link.claim(m).await,
            Some(e) = link_events.recv() => match e {
                async_nats::Event::Connected => {
                    // Back after NATS went away: the others may have dropped us, and we missed their news.
                    if isolation.link(true, Instant::now()) == Some(Change::Rejoin) {
                        link.rejoin();
                    }
                    tracing::info!(node, "cluster: connected to NATS again; resynchronising");
                    link.publish(&link.subjects.all, &Bus::Hello { node, addr }).await;
                    link.snapshot().await;
                }
                async_nats::Event::Disconnected => {
                    tracing::warn!(node, "cluster: lost NATS; reconnecting");
                    isolation.link(false, Instant::now());
                }
                other => tracing::debug!(event = %other, "cluster link"),
            },
            _ = beat.tick() => {
                link.publish(&link.subjects.all, &Bus::Heartbeat { node, sessions: link.ctx.table.len() as u64, addr }).await;
                link.sweep(&mut peers).await;
                let connected = link.client.connection_state() == async_nats::connection::State::Connected;
                let hears = hears_nats(connected, peers.echo.unwrap_or(started), Instant::now());
                if link.check_isolation(&db, &mut isolation, hears).await {
                    // Its heartbeats went unheard while the link was silent: the others dropped us.
                    link.rejoin();
                    tracing::info!(node, "cluster: hearing NATS again; resynchronising");
                    link.publish(&link.subjects.all, &Bus::Hello { node, addr }).await;
                    link.snapshot().await;
                }
            }
            else => break,
        }
    }
}

struct Link {
    ctx: Arc<Ctx>,
    client: async_nats::Client,
    node: u64,
    subjects: Subjects,
    epoch: std::sync::atomic::AtomicU64,
}

impl Link {
    async fn publish(&self, subject: &str, msg: &Bus) {
        let Some(bytes) = encode(msg) else { return };
        match tokio::time::timeout(PUBLISH_WITHIN, self.client.publish(subject.to_string(), bytes)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cluster: could not publish"),
            Err(_) => tracing::debug!("cluster: NATS took no message for a second; dropped"),
        }
    }

    /// Publishes every session this node serves, in parts.
    async fn snapshot(&self) {
        let rows = self.ctx.table.local_rows();
        let epoch = self.epoch.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let parts = snapshot_parts(rows);
        let n = parts.len();
        for (i, rows) in parts.into_iter().enumerate() {
            self.publish(&self.subjects.all, &Bus::Snapshot { node: self.node, epoch, rows, last: i + 1 == n }).await;
        }
    }

    async fn outbound(&self, o: Outbound) {
        let node = self.node;
        match o {
            Outbound::Up(session) => self.publish(&self.subjects.all, &Bus::Up { node, session }).await,
            Outbound::Down { user, session_id, at } => {
                self.publish(&self.subjects.all, &Bus::Down { node, user, session_id, at }).await
            }
            Outbound::Push { node: to, sessions, frame } => {
                // A big group's push to one node is split by addressees, each part carrying the frame.
                for sessions in shared::frame::pack(sessions, PART_BUDGET, addressee_cost) {
                    self.publish(&self.subjects.node(to), &Bus::Push { sessions, frame: frame.to_vec() }).await;
                }
            }
            Outbound::Close { node: to, user, sessions, frame } => {
                let frame = frame.map(|f| f.to_vec());
                self.publish(&self.subjects.node(to), &Bus::Close { user, sessions, frame }).await;
            }
        }
    }

    async fn inbound(&self, peers: &mut Peers, payload: &[u8]) {
        let msg: Bus = match decode(payload) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "cluster: a message that does not decode; ignored");
                return;
            }
        };
        let table = &self.ctx.table;
        match msg {
            Bus::Heartbeat { node, .. } if node == self.node => peers.echo = Some(Instant::now()),
            Bus::Hello { node, .. }
            | Bus::Heartbeat { node, .. }
            | Bus::Up { node, .. }
            | Bus::Down { node, .. }
            | Bus::Snapshot { node, .. }
            | Bus::Bye { node }
                if node == self.node => {}
            Bus::Hello { node, addr } => {
                peers.heard.insert(node, Instant::now());
                self.learned(node, addr);
                tracing::info!(node, "cluster: a node joined");
                self.snapshot().await;
            }
            // Compared with what this node holds once per tick, for every node at once (`sweep`): one pass
            // over the table however many nodes beat.
            Bus::Heartbeat { node, sessions, addr } => {
                peers.heard.insert(node, Instant::now());
                self.learned(node, addr);
                peers.announced.insert(node, sessions);
            }
            Bus::Up { node, session } => {
                peers.heard.insert(node, Instant::now());
                table.insert_remote(node, session);
            }
            Bus::Down { user, session_id, at, .. } => {
                table.remove_remote(&user, session_id, at);
            }
            Bus::Snapshot { node, epoch, rows, last } => {
                peers.heard.insert(node, Instant::now());
                let staged = peers.staging.entry(node).or_insert((epoch, Vec::new()));
                if staged.0 != epoch {
                    *staged = (epoch, Vec::new());
                }
                staged.1.extend(rows);
                if last && let Some((_, rows)) = peers.staging.remove(&node) {
                    let gone = table.replace_node(node, rows, now_ms());
                    self.gone_offline(gone).await;
                }
            }
            Bus::Bye { node } => {
                tracing::info!(node, "cluster: a node left");
                peers.heard.remove(&node);
                self.forget(node);
                let gone = table.drop_node(node, now_ms());
                self.gone_offline(gone).await;
            }
            Bus::Resync => self.snapshot().await,
            Bus::Push { sessions, frame } => table.deliver(&sessions, &Frame::from(frame)),
            Bus::Claim { .. } | Bus::Claimed { .. } => {}
            Bus::Close { user, sessions, frame } => table.close_sessions(&user, &sessions, frame.map(Frame::from)),
        }
    }

    /// Records in the database that this node hears NATS (`hears`, see [`hears_nats`]), or, cut off for the
    /// idle timeout, asks it whether the others do (see [`Isolation`]). `true` when this node had sent its
    /// users away and hears NATS again: the caller rejoins.
    async fn check_isolation(&self, db: &crate::store::Db, isolation: &mut Isolation, hears: bool) -> bool {
        let now = Instant::now();
        if hears {
            if let Err(e) = db.node_heard_nats(self.node, now_ms()).await {
                tracing::debug!(error = %e, "cluster: could not record hearing NATS");
            }
            return isolation.link(true, now) == Some(Change::Rejoin);
        }
        isolation.link(false, now);
        if !isolation.due(now) {
            return false;
        }
        let since = now_ms() - 3 * HEARTBEAT.as_millis() as i64;
        let others = match db.nodes_hearing_nats(self.node, since).await {
            Ok(n) => n > 0,
            // Without the database either, nothing here can be served anyway; nothing to decide.
            Err(_) => return false,
        };
        match isolation.others(others) {
            Some(Change::Isolate) => {
                if let Some(n) = &self.ctx.nodes {
                    n.set_isolated(true);
                }
                let closed =
                    self.ctx.table.close_local(b"this broker node is cut off from its cluster; connect to another");
                tracing::error!(
                    node = self.node,
                    sessions = closed,
                    "cluster: cut off from NATS while other nodes have it; sending this node's users to them and \
                     taking no session until NATS is back"
                );
            }
            Some(Change::Rejoin) => {
                tracing::warn!(node = self.node, "cluster: NATS is down for every node; serving sessions again");
                self.rejoin();
            }
            None => {}
        }
        false
    }

    fn rejoin(&self) {
        if let Some(n) = &self.ctx.nodes {
            n.set_isolated(false);
        }
    }

    /// Another node asks whether a link code is held here; answered only if it is (and is claimed by this).
    async fn claim(&self, m: async_nats::Message) {
        let (Some(reply), Ok(Bus::Claim { link_id, device, observed, local })) = (m.reply, decode(&m.payload)) else {
            return;
        };
        let Ok((username, device)) = self.ctx.devices.claim(link_id, certs::Fingerprint(device), observed, local)
        else {
            return;
        };
        self.publish(reply.as_str(), &Bus::Claimed { username, device }).await;
    }

    fn learned(&self, node: u64, addr: Option<SocketAddr>) {
        if let Some(nodes) = &self.ctx.nodes {
            nodes.learned(node, addr);
        }
    }

    fn forget(&self, node: u64) {
        if let Some(nodes) = &self.ctx.nodes {
            nodes.forget(node);
        }
    }

    /// Takes out nodes silent for the idle timeout, and asks for the snapshot of any whose count disagrees.
    async fn sweep(&self, peers: &mut Peers) {
        let silent: Vec<u64> =
            peers.heard.iter().filter(|(_, at)| at.elapsed() > SILENT).map(|(node, _)| *node).collect();
        for node in silent {
            peers.heard.remove(&node);
            peers.mismatched.remove(&node);
            peers.announced.remove(&node);
            tracing::warn!(node, "cluster: a node went silent; its sessions are taken out");
            self.forget(node);
            let gone = self.ctx.table.drop_node(node, now_ms());
            self.gone_offline(gone).await;
        }
        // A node whose count disagrees with what this one holds twice in a row (not a message in flight)
        // is asked for its snapshot.
        let held = self.ctx.table.remote_counts();
        let mut resync = Vec::new();
        for (node, sessions) in &peers.announced {
            let off = peers.mismatched.entry(*node).or_default();
            *off = if held.get(node).copied().unwrap_or(0) == *sessions { 0 } else { *off + 1 };
            if *off >= 2 {
                *off = 0;
                resync.push(*node);
            }
        }
        for node in resync {
            self.publish(&self.subjects.node(node), &Bus::Resync).await;
        }
    }

    /// Users whose last device was on a node that went away (or that a snapshot no longer lists): this
    /// node tells its own sessions of their friends (every survivor does the same for its own).
    async fn gone_offline(&self, users: Vec<String>) {
        let at = now_ms();
        for user in users {
            match self.ctx.friends.usernames(&user).await {
                Ok(friends) => {
                    let event = Event::Presence { username: user.clone(), online: false, at };
                    self.ctx.table.push_local(friends.iter().map(String::as_str), &event);
                }
                Err(e) => tracing::warn!(error = %e, "cluster: could not tell friends a user went offline"),
            }
            if let Err(e) = self.ctx.groups.announce_presence_here(&user, false, at).await {
                tracing::warn!(error = %e, "cluster: could not tell fellow members a user went offline");
            }
        }
    }
}

/// Claims a link code that another node holds (this one does not): whose code it is and where the offering
/// device is, or `None` when no node answers in time (no such code, expired, or already claimed).
pub async fn claim_elsewhere(
    client: &async_nats::Client,
    identity: &certs::Fingerprint,
    link_id: [u8; 5],
    device: certs::Fingerprint,
    observed: SocketAddr,
    local: Vec<SocketAddr>,
) -> Option<(String, shared::proto::DeviceEndpoint)> {
    let ask = encode(&Bus::Claim { link_id, device: device.0, observed, local })?;
    let subject = Subjects::new(identity).claims;
    let answer = tokio::time::timeout(CLAIM_WAIT, client.request(subject, ask)).await.ok()?.ok()?;
    match decode(&answer.payload) {
        Ok(Bus::Claimed { username, device }) => Some((username, device)),
        _ => None,
    }
}

/// Tells the cluster this node is leaving (at shutdown), so the others take its sessions out at once.
pub async fn leave(client: &async_nats::Client, identity: &certs::Fingerprint, node: u64) {
    if let Some(bytes) = encode(&Bus::Bye { node }) {
        let _ = client.publish(Subjects::new(identity).all, bytes).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), client.flush()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_cut_off_while_others_hear_nats_sends_its_users_away_until_nats_is_back() {
        let t0 = Instant::now();
        let mut i = Isolation::default();
        assert_eq!(i.link(false, t0), None);
        assert!(!i.due(t0 + SILENT / 2), "a short blip decides nothing");
        assert!(i.due(t0 + SILENT));
        assert_eq!(i.others(true), Some(Change::Isolate));
        assert_eq!(i.others(true), None, "once");
        assert_eq!(i.link(true, t0 + SILENT * 2), Some(Change::Rejoin));
        assert!(!i.due(t0 + SILENT * 3));
    }

    #[test]
    fn a_node_hears_nats_only_while_its_own_heartbeat_comes_back() {
        let t0 = Instant::now();
        assert!(hears_nats(true, t0, t0 + HEARTBEAT), "an echo a beat ago");
        assert!(!hears_nats(true, t0, t0 + ECHO_WITHIN), "connected, but silent: a partition that drops packets");
        assert!(!hears_nats(false, t0, t0), "the client knows it lost NATS");
    }

    fn busy_row(i: usize) -> Announced {
        Announced {
            user: format!("{i:0>32}"),
            session_id: i as u64,
            observed: "192.0.2.1:7878".parse().unwrap(),
            local: vec!["[2001:db8::1]:7878".parse().unwrap(); 16],
            fingerprint: [7; 32],
            connected_at: 1,
        }
    }

    #[test]
    fn a_node_with_many_sessions_sends_a_snapshot_every_other_node_can_read() {
        // Before: 2,000 rows a part, which decoding refused (a part of 1,000 short rows already did).
        let rows: Vec<Announced> = (0..20_000).map(busy_row).collect();
        let parts = snapshot_parts(rows.clone());
        assert!(parts.len() > 1);
        let mut back = Vec::new();
        for (i, rows) in parts.into_iter().enumerate() {
            let bytes = encode(&Bus::Snapshot { node: 1, epoch: 1, rows, last: false }).expect("within the limit");
            let Ok(Bus::Snapshot { rows, .. }) = decode(&bytes) else { panic!("part {i} does not decode") };
            back.extend(rows);
        }
        assert_eq!(back, rows, "every row, in order");
        assert_eq!(snapshot_parts(Vec::new()), vec![Vec::<Announced>::new()], "an empty node still says so");
    }

    #[test]
    fn a_push_to_a_big_group_on_another_node_arrives_whole() {
        let sessions: Vec<(String, u64)> = (0..100_000).map(|i| (format!("{i:0>32}"), i)).collect();
        let frame = vec![1u8; shared::frame::MAX_FRAME];
        let mut back = Vec::new();
        for part in shared::frame::pack(sessions.clone(), PART_BUDGET, addressee_cost) {
            let bytes = encode(&Bus::Push { sessions: part, frame: frame.clone() }).expect("within the limit");
            let Ok(Bus::Push { sessions, frame: f }) = decode(&bytes) else { panic!("a part does not decode") };
            assert_eq!(f, frame);
            back.extend(sessions);
        }
        assert_eq!(back, sessions);
    }

    #[test]
    fn a_cluster_message_that_claims_more_than_the_limit_is_refused() {
        // A push whose addressee count promises 2^40 entries: refused before anything is allocated.
        let tag = encode(&Bus::Push { sessions: vec![], frame: vec![] }).unwrap()[0];
        let mut hostile = vec![tag, 253];
        hostile.extend_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(decode(&hostile).is_err());
        assert!(decode(&[]).is_err());
    }

    #[test]
    fn when_nats_is_down_for_every_node_each_keeps_serving() {
        let t0 = Instant::now();
        let mut i = Isolation::default();
        i.link(false, t0);
        assert_eq!(i.others(false), None, "nobody hears NATS: stay");
        assert_eq!(i.others(true), Some(Change::Isolate));
        assert_eq!(i.others(false), Some(Change::Rejoin), "the others lost it too");
        assert_eq!(i.link(true, t0), None, "not isolated: nothing to undo");
    }
}
