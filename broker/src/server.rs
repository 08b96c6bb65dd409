//! The broker's QUIC endpoint: accept loop, connection cap, graceful shutdown.

use crate::accounts::{Accounts, HashCost};
use crate::friends::Friends;
use crate::store::Db;
use crate::table::Table;
use certs::Identity;
use certs::verify::ClientPolicy;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;
use tracing::field::Empty;

/// Everything the broker needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// The identity's key file (its certificate beside it, `.crt`); `None`: `DATA/broker.key`.
    pub identity: Option<PathBuf>,
    pub database_url: String,
    pub hash_cost: HashCost,
    pub token_ttl: Duration,
    pub max_connections: usize,
    /// Accounts one address may create per hour.
    pub registrations_per_hour: u32,
    /// Password attempts from unknown devices and addresses the whole broker takes per minute.
    pub login_strangers_per_minute: u32,
    /// Group posts one user may make per second.
    pub group_posts_per_second: u32,
    /// How much of each group's log is kept.
    pub group_retention: crate::groups::Retention,
    pub relay: crate::relay::RelayConfig,
    pub mailbox: crate::mailbox::MailboxConfig,
    /// Join a cluster of brokers over NATS (`--cluster`); `None`: one broker on its own.
    pub cluster: Option<crate::cluster::ClusterConfig>,
}

/// Shared state of all connections.
pub struct Ctx {
    pub accounts: Arc<Accounts>,
    pub friends: Friends,
    pub groups: crate::groups::Groups,
    pub table: Arc<Table>,
    pub relay: Arc<crate::relay::Relay>,
    /// The relay's fast path, beside the endpoint's socket.
    pub channels: Arc<crate::channels::Channels>,
    pub devices: crate::devices::Devices,
    pub mailbox: crate::mailbox::Mailbox,
    /// In a cluster: the other nodes, for relays between them.
    pub nodes: Option<crate::nodes::Nodes>,
    /// Whether the database answers (see `crate::health`).
    pub db_health: crate::health::DbHealth,
}

/// A broker bound and ready to serve.
pub struct Broker {
    endpoint: quinn::Endpoint,
    /// In a cluster: the NATS client, this node's id, and the queues the link task reads.
    cluster: Option<ClusterParts>,
    ctx: Arc<Ctx>,
    db: Db,
    max_connections: usize,
    handshakes: Handshakes,
    pub fingerprint: certs::Fingerprint,
}

struct ClusterParts {
    client: async_nats::Client,
    node: u64,
    out: tokio::sync::mpsc::UnboundedReceiver<crate::table::Outbound>,
    events: tokio::sync::mpsc::UnboundedReceiver<async_nats::Event>,
}

/// Handshakes that have begun but not finished: what a stranger can make the broker hold without ever
/// authenticating. Past [`Handshakes::RETRY_ABOVE`] in progress, a client must first prove it receives at
/// its address (a QUIC Retry: stateless, so spoofed floods cost nothing); past [`Handshakes::MAX`] new
/// ones are dropped unanswered; and each must finish within [`Handshakes::DEADLINE`].
#[derive(Clone, Default)]
struct Handshakes(Arc<std::sync::atomic::AtomicUsize>);

/// One admitted handshake, counted until it ends either way.
struct Handshake {
    incoming: quinn::Incoming,
    count: Handshakes,
}

impl Handshakes {
    const RETRY_ABOVE: usize = 64;
    const MAX: usize = 2048;
    const DEADLINE: Duration = Duration::from_secs(5);

    fn admit(&self, incoming: quinn::Incoming) -> Option<Handshake> {
        use std::sync::atomic::Ordering;
        let now = self.0.load(Ordering::Relaxed);
        if now >= Self::MAX {
            incoming.ignore();
            return None;
        }
        if now >= Self::RETRY_ABOVE && !incoming.remote_address_validated() && incoming.may_retry() {
            let _ = incoming.retry();
            return None;
        }
        self.0.fetch_add(1, Ordering::Relaxed);
        Some(Handshake { incoming, count: self.clone() })
    }
}

impl Handshake {
    /// Takes the handshake boxed and frees the box when done: a box that outlived this would keep the
    /// `quinn::Incoming` (~0.4 KiB) for the rest of the session.
    async fn complete(self: Box<Self>) -> anyhow::Result<quinn::Connection> {
        let Self { incoming, count } = *self;
        let done = tokio::time::timeout(Handshakes::DEADLINE, async { incoming.accept()?.await }).await;
        count.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        Ok(done.map_err(|_| anyhow::anyhow!("handshake not finished in time"))??)
    }
}

/// One connection, from its handshake to its end: a node of the cluster, or a peer's session.
///
/// An idle session's task holds this future for as long as the session lasts, and a task's cell is as large
/// as its future's largest state. So the states that are live only for a moment (the handshake, a node's
/// link, and in `conn::serve` going offline) are boxed: the cell stays the size of the idle state, not of the
/// handshake's (2.4 KiB per session before, heaptrack on `bench broker`). The handshake comes boxed too: a
/// future keeps its arguments in its first state, and a `quinn::Incoming` is ~0.4 KiB.
async fn connection(ctx: Arc<Ctx>, handshake: Box<Handshake>) {
    match Box::pin(handshake.complete()).await {
        Ok(conn) if crate::nodes::asks_to_be_node(&conn) => {
            if ctx.nodes.as_ref().is_some_and(|n| n.is_ours(&conn)) {
                Box::pin(crate::nodes::serve(ctx, conn)).await;
            } else {
                tracing::warn!("a connection asked to be a node without the cluster's identity");
                conn.close(quinn::VarInt::from_u32(1), b"not a node of this cluster");
            }
        }
        Ok(conn) => crate::conn::serve(ctx, conn).await,
        Err(e) => tracing::debug!(error = %e, "handshake failed"),
    }
}

/// The idle timeout after which a silent peer counts as gone (its agent sends keep-alives well inside it).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(15);

impl Broker {
    /// Opens the data directory, identity and database, and binds the UDP socket.
    pub async fn bind(cfg: &Config) -> anyhow::Result<Self> {
        certs::secret_file::private_dir(&cfg.data_dir)?;
        let identity = match &cfg.identity {
            Some(file) => {
                let dir = file.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
                let stem = file.file_stem().and_then(|s| s.to_str()).ok_or_else(|| {
                    anyhow::anyhow!("--identity {}: name the key file, e.g. /etc/p2pim/broker.key", file.display())
                })?;
                Identity::load_or_create(dir, stem, "p2pim-broker")?
            }
            None => Identity::load_or_create(&cfg.data_dir, "broker", "p2pim-broker")?,
        };
        let db = Db::open(&cfg.database_url).await?;
        let (table, cluster) = match &cfg.cluster {
            None => (Arc::new(Table::default()), None),
            Some(c) => {
                if db.backend == crate::store::Backend::Sqlite {
                    anyhow::bail!(
                        "--cluster needs a database every node shares: --database postgres://... or mysql://..."
                    );
                }
                let (client, events) = crate::cluster::connect(c).await?;
                let (tx, out) = tokio::sync::mpsc::unbounded_channel();
                (Arc::new(Table::clustered(c.node, tx)), Some(ClusterParts { client, node: c.node, out, events }))
            }
        };
        let accounts = Accounts::new(
            db.clone(),
            cfg.hash_cost,
            cfg.token_ttl,
            cfg.registrations_per_hour,
            cfg.login_strangers_per_minute,
        )?;
        let friends = Friends::new(db.clone(), table.clone());
        let groups =
            crate::groups::Groups::new(db.clone(), table.clone(), cfg.group_posts_per_second, cfg.group_retention);
        // Nodes of a cluster also reach each other here, with an ALPN of their own.
        let alpn: &[&[u8]] = if cluster.is_some() {
            &[
                shared::proto::BROKER_ALPN_CHANNELS,
                shared::proto::BROKER_ALPN,
                crate::nodes::NODE_ALPN_CHANNELS,
                crate::nodes::NODE_ALPN,
            ]
        } else {
            &[shared::proto::BROKER_ALPN_CHANNELS, shared::proto::BROKER_ALPN]
        };
        let tls = certs::config::server(&identity, ClientPolicy::AnyDevice, alpn)?;
        let mut server =
            quinn::ServerConfig::with_crypto(Arc::new(quinn::crypto::rustls::QuicServerConfig::try_from(tls)?));
        server.transport_config(Arc::new(transport()));
        let bound = match shared::udp::bind(cfg.listen) {
            // `[::]` (the default) on a system without IPv6: IPv4 alone, rather than not at all.
            Err(e) if cfg.listen.is_ipv6() && cfg.listen.ip().is_unspecified() => {
                let v4 = std::net::SocketAddr::from(([0, 0, 0, 0], cfg.listen.port()));
                tracing::info!(error = %e, "no IPv6 on this system; listening on IPv4 only");
                shared::udp::bind(v4)?
            }
            other => other?,
        };
        if bound.is_low() {
            tracing::warn!(
                recv_buffer = bound.recv_buffer,
                send_buffer = bound.send_buffer,
                "small UDP buffers: bursts (a busy group) may be dropped and resent late; raise the OS cap \
                 (Linux: sysctl -w net.core.rmem_max=8388608 net.core.wmem_max=8388608) and restart"
            );
        }
        let runtime = quinn::default_runtime().ok_or_else(|| anyhow::anyhow!("no async runtime"))?;
        let relay = Arc::new(crate::relay::Relay::new(cfg.relay));
        let channels = Arc::new(crate::channels::Channels::new(relay.clone()));
        let socket =
            Arc::new(crate::channels::ChannelSocket::new(runtime.wrap_udp_socket(bound.socket)?, channels.clone()));
        let endpoint =
            quinn::Endpoint::new_with_abstract_socket(endpoint_config(&identity), Some(server), socket, runtime)?;
        let nodes = match &cfg.cluster {
            None => None,
            Some(c) => {
                let bound = endpoint.local_addr()?;
                let advertised = c.advertise.or((!bound.ip().is_unspecified()).then_some(bound));
                if advertised.is_none() {
                    tracing::warn!(
                        listen = %bound,
                        "cluster: no address for relays between nodes (this node listens on every interface); \
                         set --cluster-addr HOST:PORT, the address the other nodes reach this one at, or agents \
                         on other nodes cannot be relayed to agents on this one"
                    );
                }
                let bus =
                    cluster.as_ref().map(|c| c.client.clone()).ok_or_else(|| anyhow::anyhow!("no NATS client"))?;
                Some(crate::nodes::Nodes::new(endpoint.clone(), &identity, advertised, bus)?)
            }
        };
        Ok(Self {
            endpoint,
            cluster,
            ctx: Arc::new(Ctx {
                devices: crate::devices::Devices::new(db.clone(), table.clone(), accounts.clone()),
                mailbox: crate::mailbox::Mailbox::new(db.clone(), table.clone(), cfg.mailbox),
                accounts,
                friends,
                groups,
                table,
                relay,
                channels,
                nodes,
                db_health: crate::health::DbHealth::default(),
            }),
            db,
            max_connections: cfg.max_connections,
            handshakes: Handshakes::default(),
            fingerprint: identity.fingerprint(),
        })
    }

    /// The bound address (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Serves until `shutdown` resolves, then closes every connection, waits for their handlers, and closes
    /// the database last. Every task has an owner: the periodic jobs and the connection handlers are in
    /// `JoinSet`s held here (each connection owns its stream tasks in turn, see `conn::serve`).
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut background = tokio::task::JoinSet::new();
        let leave = self.cluster.take().map(|c| {
            let leave = (c.client.clone(), c.node);
            background.spawn(crate::cluster::run(
                self.ctx.clone(),
                self.db.clone(),
                c.client,
                self.fingerprint,
                c.node,
                c.out,
                c.events,
            ));
            leave
        });
        background.spawn({
            let (ctx, db) = (self.ctx.clone(), self.db.clone());
            async move { ctx.db_health.watch(db).await }
        });
        background.spawn({
            let db = self.db.clone();
            async move {
                let mut every = tokio::time::interval(Duration::from_secs(2));
                loop {
                    every.tick().await;
                    if let Err(e) = db.checkpoint().await {
                        tracing::debug!(error = %e, "checkpoint skipped");
                    }
                }
            }
        });
        background.spawn({
            let ctx = self.ctx.clone();
            async move {
                let mut every = tokio::time::interval(Duration::from_secs(600));
                loop {
                    every.tick().await;
                    match ctx.groups.prune_old().await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(messages = n, "pruned old group messages"),
                        Err(e) => tracing::warn!(error = %e, "pruning group messages failed"),
                    }
                    if let Err(e) = ctx.mailbox.prune_old().await {
                        tracing::warn!(error = %e, "pruning the mailbox failed");
                    }
                }
            }
        });
        let mut connections = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                incoming = self.endpoint.accept() => {
                    let Some(incoming) = incoming else { break };
                    if self.endpoint.open_connections() > self.max_connections {
                        tracing::warn!(remote = %incoming.remote_address(), "connection cap reached; refusing");
                        incoming.refuse();
                        continue;
                    }
                    // Everything logged for this connection carries its address, and its user once known.
                    let span = tracing::info_span!("conn", remote = %incoming.remote_address(), user = Empty);
                    let Some(handshake) = self.handshakes.admit(incoming) else { continue };
                    connections.spawn(connection(self.ctx.clone(), Box::new(handshake)).instrument(span));
                }
                // Finished handlers are reaped as they end, so the set holds only live connections.
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                () = &mut shutdown => break,
            }
        }
        background.abort_all();
        if let Some((client, node)) = &leave {
            crate::cluster::leave(client, &self.fingerprint, *node).await;
        }
        tracing::info!(online = self.ctx.table.len(), "shutting down");
        self.endpoint.close(quinn::VarInt::from_u32(0), b"broker shutting down");
        // Handlers finish what they were writing before the database goes (their connections are closed, so
        // this is quick); one that does not within the limit is stopped.
        let drained =
            tokio::time::timeout(Duration::from_secs(5), async { while connections.join_next().await.is_some() {} })
                .await;
        if drained.is_err() {
            tracing::warn!(left = connections.len(), "connection handlers still running at shutdown; stopping them");
            connections.abort_all();
        }
        let _ = tokio::time::timeout(Duration::from_secs(3), self.endpoint.wait_idle()).await;
        self.db.pool.close().await;
    }
}

/// A stateless-reset key derived from the broker's identity, so that it survives restarts: after a crash or
/// upgrade, the first packet an agent sends on its old connection is answered with a valid reset, and the
/// agent reconnects at once instead of waiting out its idle timeout.
fn endpoint_config(identity: &Identity) -> quinn::EndpointConfig {
    let mut material = b"p2pim broker stateless reset v1".to_vec();
    material.extend_from_slice(identity.key.secret_der());
    let seed = ring::digest::digest(&ring::digest::SHA256, &material);
    let mut cfg = quinn::EndpointConfig::new(Arc::new(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, seed.as_ref())));
    // Connection IDs must validate across restarts too, or the new process drops the old IDs unanswered.
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&seed.as_ref()[..8]);
    let cid_key = u64::from_le_bytes(cid_key);
    cfg.cid_generator(move || Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key)));
    // Agents then never clear QUIC's fixed bit towards us: a datagram without it is a relay channel's.
    cfg.grease_quic_bit(false);
    cfg
}

/// Streams an agent may have open to the broker at once for its requests. quinn keeps a slot, in two hash
/// maps, for every stream the other side may open, for the whole life of the connection: 7 fills hashbrown's
/// 8-bucket tables, where 32 took 64 buckets (~2.3 KiB more per idle session, measured). Requests are short,
/// and one over the limit waits in the agent for a stream to end. A relay holds its stream as long as it
/// stands, so each relay raises its connection's limit while it does (`conn::RelayHold`): relays never use
/// up the requests' streams.
pub(crate) const REQUEST_STREAMS: u32 = 7;

/// The stream limit for a connection holding `relays` relays: room for all of them and still
/// [`REQUEST_STREAMS`] for requests. quinn tells the agent about new room only once more than an eighth of
/// the limit has piled up unannounced (to save packets), so up to `limit / 8` of it may be room the agent
/// does not know of yet; the limit is raised by that much more. Without it, an agent whose relays left
/// fewer free streams than that eighth would wait for a stream forever.
pub(crate) fn stream_limit(relays: u32) -> u32 {
    let needed = REQUEST_STREAMS + relays;
    let mut limit = needed;
    while limit - limit / 8 < needed {
        limit += 1;
    }
    limit
}

/// Modest windows: a broker session carries small frames, and 10,000 idle sessions must fit in little memory
/// (windows are limits, not allocations). A relay stream needs a round trip's worth in flight to keep its
/// speed; what a connection can make the broker hold is bounded by `receive_window`.
pub(crate) fn transport() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(
        IDLE_TIMEOUT.try_into().unwrap_or(quinn::IdleTimeout::from(quinn::VarInt::from_u32(15_000))),
    ));
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(REQUEST_STREAMS));
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    t.stream_receive_window(quinn::VarInt::from_u32(1024 * 1024));
    t.receive_window(quinn::VarInt::from_u32(2 * 1024 * 1024));
    t.send_window(2 * 1024 * 1024);
    // Busy groups send each member a stream of small packets; members acknowledging every other one doubles
    // the packets the broker handles. Ask for an ACK every 8 (or after the usual delay) instead.
    let mut ack = quinn::AckFrequencyConfig::default();
    ack.ack_eliciting_threshold(quinn::VarInt::from_u32(8));
    t.ack_frequency_config(Some(ack));
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future an async function returns, without calling it.
    fn future_size<A, B, F: std::future::Future>(_: impl FnOnce(A, B) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn the_stream_limit_leaves_requests_room_the_agent_knows_of() {
        assert_eq!(stream_limit(0), REQUEST_STREAMS, "an idle session's limit fills hashbrown's 8 buckets");
        for relays in 0..=crate::conn::MAX_RELAYS_PER_DEVICE {
            let limit = stream_limit(relays);
            // Held back by quinn until more than an eighth of the limit is unannounced.
            let unannounced = limit / 8;
            assert!(limit - unannounced - relays >= REQUEST_STREAMS, "{relays} relays, limit {limit}");
        }
    }

    #[test]
    fn an_idle_session_keeps_a_small_task() {
        let size = future_size(connection);
        assert!(size <= 512, "a connection's task holds {size} bytes for its whole life; box its rare states");
    }
}
