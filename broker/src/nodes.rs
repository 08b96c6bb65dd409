//! What a node of a cluster asks of the others directly: relays between them, and link codes held by
//! another node (claimed there over NATS request/reply, see `cluster`).
//!
//! Relays between the nodes of a cluster. Two agents served by different nodes are relayed through both:
//! the requester's node checks the friendship (as for any relay), then opens a stream to the node that
//! serves the friend's device and names both ends; that node opens the friend's side as it would for a
//! relay of its own, and each node splices its agent's stream with the stream between them. Bytes stay
//! opaque (the agents' TLS runs end to end inside) and each node applies its caps and counts them.
//!
//! Nodes talk QUIC to each other on their ordinary listening socket with an ALPN of their own, and
//! authenticate each other with the identity they share: a connection offering [`NODE_ALPN`] is served as
//! a node only if its client certificate is that identity, which only the cluster's nodes hold. One
//! connection per pair of nodes carries all their relays, one stream each; it is made on first use and
//! again after it is lost. Each node announces the address the others reach it at in its heartbeats.

use crate::server::Ctx;
use certs::{Fingerprint, Identity};
use parking_lot::Mutex;
use shared::io::{read_frame, write_frame};
use shared::proto::{ErrorCode, Response};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The ALPN of node-to-node connections (agents offer `shared::proto::BROKER_ALPN`).
pub const NODE_ALPN: &[u8] = b"p2pim-node/1";
/// The same, where each relay stream also carries the two halves' channel ids (see `channels`): after
/// the [`NodeRelay`] frame the opening node's record, after the answer `Ok` the other's (0: none). Offered
/// first; a node without it keeps to [`NODE_ALPN`].
pub const NODE_ALPN_CHANNELS: &[u8] = b"p2pim-node/2";
/// Relays one pair of nodes may carry at once (each is one stream on their one connection).
const MAX_RELAYS_PER_NODE: u32 = 10_000;
/// What a node connection may have in flight towards this node, for all its relays together.
const NODE_WINDOW: u32 = 16 * 1024 * 1024;
/// The server name nodes dial each other by (their certificate is pinned by fingerprint, not by name).
const SERVER_NAME: &str = "p2pim-broker";

/// The first frame on a stream between nodes: a relay from `from`'s device to `to`'s, already checked
/// (friends, relay enabled) by the node that opens it.
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct NodeRelay {
    pub from_user: String,
    pub from_device: [u8; 32],
    pub to_user: String,
    pub to_device: [u8; 32],
}

impl shared::frame::Message for NodeRelay {}

/// What this node knows of the others' addresses, and its connections to them.
pub struct Nodes {
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    identity: Fingerprint,
    /// Where this node says the others reach it (`None`: it cannot be relayed through from elsewhere).
    pub advertised: Option<SocketAddr>,
    addrs: Mutex<HashMap<u64, SocketAddr>>,
    conns: Mutex<HashMap<u64, quinn::Connection>>,
    /// The cluster's NATS client, for requests to whichever node holds something (a link code).
    bus: async_nats::Client,
    /// Cut off from NATS while the other nodes still have it: this node sends its users to them (see
    /// `cluster::Isolation`), and takes no new session until it is back.
    isolated: std::sync::atomic::AtomicBool,
}

impl Nodes {
    pub fn new(
        endpoint: quinn::Endpoint,
        identity: &Identity,
        advertised: Option<SocketAddr>,
        bus: async_nats::Client,
    ) -> anyhow::Result<Self> {
        let tls = certs::config::client(
            identity,
            certs::verify::ServerPin::Exact(identity.fingerprint()),
            &[NODE_ALPN_CHANNELS, NODE_ALPN],
        )?;
        let mut client = quinn::ClientConfig::new(Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(tls)?));
        let mut t = crate::server::transport();
        t.stream_receive_window(quinn::VarInt::from_u32(1024 * 1024));
        t.receive_window(quinn::VarInt::from_u32(NODE_WINDOW));
        t.send_window(u64::from(NODE_WINDOW));
        t.keep_alive_interval(Some(Duration::from_secs(5)));
        client.transport_config(Arc::new(t));
        Ok(Self {
            endpoint,
            client,
            identity: identity.fingerprint(),
            advertised,
            addrs: Mutex::default(),
            conns: Mutex::default(),
            bus,
            isolated: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Whether this node is cut off from the cluster (it takes no session then).
    pub fn isolated(&self) -> bool {
        self.isolated.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn set_isolated(&self, yes: bool) {
        self.isolated.store(yes, std::sync::atomic::Ordering::Relaxed);
    }

    /// A link code that this node does not hold, claimed on whichever node does (see `cluster`).
    pub async fn claim(
        &self,
        link_id: [u8; 5],
        device: Fingerprint,
        observed: SocketAddr,
        local: Vec<SocketAddr>,
    ) -> Result<(String, shared::proto::DeviceEndpoint), ErrorCode> {
        crate::cluster::claim_elsewhere(&self.bus, &self.identity, link_id, device, observed, local)
            .await
            .ok_or(ErrorCode::UnknownLink)
    }

    /// `node` says it is reached at `addr` (or at no address).
    pub fn learned(&self, node: u64, addr: Option<SocketAddr>) {
        let mut addrs = self.addrs.lock();
        match addr {
            Some(a) => {
                if addrs.insert(node, a) != Some(a) {
                    // A node that moved (restarted elsewhere) is dialled anew.
                    self.conns.lock().remove(&node);
                }
            }
            None => {
                addrs.remove(&node);
            }
        }
    }

    /// `node` left the cluster.
    pub fn forget(&self, node: u64) {
        self.addrs.lock().remove(&node);
        if let Some(c) = self.conns.lock().remove(&node) {
            c.close(quinn::VarInt::from_u32(0), b"node left");
        }
    }

    /// Opens a relay through `node` to a device it serves: the stream to that node once it has opened the
    /// friend's side, or why not. With `agent` (the asking agent's session, if it speaks channels), this
    /// node's half of a channel too, if the other node makes its own.
    pub async fn open(
        &self,
        node: u64,
        relay: &NodeRelay,
        agent: Option<(&Arc<crate::channels::Channels>, &quinn::Connection)>,
    ) -> Result<((quinn::SendStream, quinn::RecvStream), Option<crate::channels::Pair>), ErrorCode> {
        let unavailable = |why: String| ErrorCode::RelayUnavailable(why);
        let conn = self.connection(node).await.map_err(unavailable)?;
        let channels = speaks_channels(&conn);
        let half = agent
            .filter(|_| channels)
            .map(|(channels, agent)| channels.open_half((&relay.from_user, agent), (&relay.to_user, &conn)));
        let open = async {
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
            write_frame(&mut send, relay).await.map_err(|e| e.to_string())?;
            if channels {
                shared::io::write_channel(&mut send, half.as_ref().map_or(0, |h| h.ids.1))
                    .await
                    .map_err(|e| e.to_string())?;
            }
            match read_frame::<Response, _>(&mut recv).await.map_err(|e| e.to_string())? {
                Some(Response::Ok) => {}
                Some(Response::Error(e)) => return Ok(Err(e.code)),
                Some(other) => return Err(format!("unexpected answer {other:?}")),
                None => return Err("the stream ended".to_string()),
            }
            let theirs =
                if channels { shared::io::read_channel(&mut recv).await.map_err(|e| e.to_string())? } else { None };
            // Both halves stand, or neither (a half dropped is removed).
            let half = match (half, theirs, agent) {
                (Some(half), Some(id), Some((channels, _))) => {
                    channels.join(&half, &conn, id);
                    Some(half)
                }
                _ => None,
            };
            Ok(Ok(((send, recv), half)))
        };
        // The other node waits up to OPEN_TIMEOUT for the friend's agent; this allows for the hop on top.
        match tokio::time::timeout(shared::relay::OPEN_TIMEOUT + Duration::from_secs(2), open).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => {
                tracing::warn!(node, error = %e, "cluster: relay through another node failed");
                Err(unavailable(format!("the broker node serving {}'s device did not relay ({e})", relay.to_user)))
            }
            Err(_) => Err(unavailable(format!("the broker node serving {}'s device did not answer", relay.to_user))),
        }
    }

    /// The connection to `node`: the live one, or a new one.
    async fn connection(&self, node: u64) -> Result<quinn::Connection, String> {
        if let Some(c) = self.conns.lock().get(&node).filter(|c| c.close_reason().is_none()) {
            return Ok(c.clone());
        }
        let addr = self.addrs.lock().get(&node).copied().ok_or_else(|| {
            "the broker node serving that device announces no address for relays between nodes (its operator can \
             set --cluster-addr)"
                .to_string()
        })?;
        let connecting =
            self.endpoint.connect_with(self.client.clone(), addr, SERVER_NAME).map_err(|e| e.to_string())?;
        let conn = tokio::time::timeout(Duration::from_secs(5), connecting)
            .await
            .map_err(|_| format!("the broker node at {addr} did not answer"))?
            .map_err(|e| {
                tracing::warn!(node, %addr, error = %e, "cluster: cannot connect to another node");
                format!("cannot reach the broker node at {addr}: {e}")
            })?;
        tracing::info!(node, %addr, "cluster: connected to another node for relays");
        // Two relays opened at once may both dial; the later one is kept, the other ends when its streams do.
        self.conns.lock().insert(node, conn.clone());
        Ok(conn)
    }

    /// Whether `quic` presents this cluster's own identity (as every node does).
    pub fn is_ours(&self, quic: &quinn::Connection) -> bool {
        crate::conn::device_fingerprint(quic) == Some(self.identity)
    }
}

/// Whether a connection chose a node ALPN: it asks to be served as another node of the cluster.
pub fn asks_to_be_node(quic: &quinn::Connection) -> bool {
    matches!(crate::conn::alpn(quic).as_deref(), Some(NODE_ALPN | NODE_ALPN_CHANNELS))
}

/// Whether a connection between nodes carries channel ids on its relay streams.
fn speaks_channels(quic: &quinn::Connection) -> bool {
    crate::conn::alpn(quic).as_deref() == Some(NODE_ALPN_CHANNELS)
}

/// Serves another node's connection: each stream it opens is one relay to a device this node serves.
pub async fn serve(ctx: Arc<Ctx>, quic: quinn::Connection) {
    quic.set_max_concurrent_bi_streams(quinn::VarInt::from_u32(MAX_RELAYS_PER_NODE));
    quic.set_receive_window(quinn::VarInt::from_u32(NODE_WINDOW));
    tracing::info!(remote = %quic.remote_address(), "cluster: a node connected for relays");
    let mut relays = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = quic.accept_bi() => match accepted {
                Ok((send, recv)) => {
                    relays.spawn(relay(ctx.clone(), quic.clone(), send, recv));
                }
                Err(e) => {
                    tracing::debug!(reason = %e, "cluster: node connection ended");
                    break;
                }
            },
            Some(_) = relays.join_next(), if !relays.is_empty() => {}
        }
    }
    while relays.join_next().await.is_some() {}
}

/// One relay asked for by another node: the friend's side is opened here, then the two are spliced.
async fn relay(ctx: Arc<Ctx>, node: quinn::Connection, mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
    let channels = speaks_channels(&node);
    let asked = async {
        let ask = read_frame::<NodeRelay, _>(&mut recv).await.ok()??;
        let id = if channels { shared::io::read_channel(&mut recv).await.ok()? } else { None };
        Some((ask, id))
    };
    let Ok(Some((ask, their_id))) = tokio::time::timeout(Duration::from_secs(10), asked).await else { return };
    let mut half = None;
    let theirs = async {
        ctx.relay.check_enabled()?;
        let device = Fingerprint(ask.to_device);
        let Some(conn) = ctx.table.device_connection(&ask.to_user, &device) else {
            return Err(ErrorCode::RelayUnavailable(format!("{}'s device is not online", ask.to_user)));
        };
        // The other node's half stands and our agent speaks channels: our half, joined to theirs.
        if let (Some(id), true) = (their_id, crate::channels::speaks_channels(&conn)) {
            let h = ctx.channels.open_half((&ask.to_user, &conn), (&ask.from_user, &node));
            ctx.channels.join(&h, &node, id);
            half = Some(h);
        }
        let mine = half.as_ref().map_or(0, |h| h.ids.0);
        ctx.relay.open(&ask.from_user, Fingerprint(ask.from_device), &conn, mine).await
    };
    let theirs = match theirs.await {
        Ok(t) => t,
        Err(code) => {
            if write_frame(&mut send, &Response::from(code)).await.is_ok() {
                let _ = send.finish();
            }
            return;
        }
    };
    if write_frame(&mut send, &Response::Ok).await.is_err() {
        return;
    }
    if channels && shared::io::write_channel(&mut send, half.as_ref().map_or(0, |h| h.ids.1)).await.is_err() {
        return;
    }
    ctx.relay.splice(&ask.from_user, &ask.to_user, (send, recv), theirs).await;
    // The channel goes with its streams.
    drop(half);
}
