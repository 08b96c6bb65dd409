//! The agent's one UDP socket and its connections: to the broker (pinned), and later to friends.
//!
//! One quinn endpoint is both client and server, so the address the broker observes for our session is the
//! very mapping a friend can reach us on, NAT included.

use anyhow::{Context, Result, anyhow};
use certs::verify::{ClientPolicy, ServerPin};
use certs::{Fingerprint, Identity};
use shared::io::{read_frame, write_frame};
use shared::proto::{BROKER_ALPN, PEER_ALPN, Request, Response};
use std::collections::HashSet;
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Keep-alive period: well inside the broker's 15 s idle timeout, and frequent enough to keep NAT mappings.
pub(crate) const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// How long a broker request may take before the CLI gives up.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// The devices this agent will accept connections from (filled by broker lookups).
pub(crate) type Allowed = Arc<RwLock<HashSet<Fingerprint>>>;

fn transport() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(KEEP_ALIVE));
    t.max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(15_000))));
    t
}

/// The agent's endpoint, and the server settings for friends who arrive through the relay.
pub(crate) struct Bound {
    pub(crate) endpoint: quinn::Endpoint,
    pub(crate) relay_server: Arc<quinn::ServerConfig>,
}

/// Binds the endpoint: a server for friends (only allowed devices) and a client for everything, on one UDP
/// socket with the broker relay beside it.
pub(crate) fn endpoint(
    identity: &Identity,
    bind: SocketAddr,
    allowed: Allowed,
    relays: Arc<crate::relay::Relays>,
) -> Result<Bound> {
    let tls = Arc::new(quinn::crypto::rustls::QuicServerConfig::try_from(certs::config::server(
        identity,
        ClientPolicy::Allowed(allowed),
        &[PEER_ALPN, shared::link::LINK_ALPN],
    )?)?);
    let mut server = quinn::ServerConfig::with_crypto(tls.clone());
    server.transport_config(Arc::new(crate::direct::transport()));
    let mut relay_server = quinn::ServerConfig::with_crypto(tls);
    relay_server.transport_config(Arc::new(crate::direct::relay_transport()));
    let socket = shared::udp::bind(bind).with_context(|| format!("cannot bind UDP {bind}"))?.socket;
    let runtime = quinn::default_runtime().ok_or_else(|| anyhow!("no async runtime"))?;
    let socket = Arc::new(crate::relay::RelaySocket::new(runtime.wrap_udp_socket(socket)?, relays));
    // Friends may send packets this large: only relayed connections do (direct paths discover their MTU).
    let mut config = quinn::EndpointConfig::default();
    config.max_udp_payload_size(crate::direct::RELAY_MTU)?;
    let endpoint = quinn::Endpoint::new_with_abstract_socket(config, Some(server), socket, runtime)?;
    Ok(Bound { endpoint, relay_server: Arc::new(relay_server) })
}

/// Resolves `HOST:PORT` (a missing port means the default 7878).
pub(crate) async fn resolve(broker: &str) -> Result<SocketAddr> {
    let with_port = if broker.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) && !broker.ends_with(']')
    {
        broker.to_string()
    } else {
        format!("{broker}:{}", shared::proto::DEFAULT_PORT)
    };
    tokio::net::lookup_host(&with_port)
        .await
        .with_context(|| format!("cannot resolve broker address {broker}"))?
        .next()
        .ok_or_else(|| anyhow!("broker address {broker} resolves to nothing"))
}

/// Connects to the broker, checking its certificate against `pin`.
pub(crate) async fn connect_broker(
    endpoint: &quinn::Endpoint,
    identity: &Identity,
    addr: SocketAddr,
    pin: ServerPin,
) -> Result<quinn::Connection> {
    // An exact pin is watched, so that a changed identity is known by type (see `BrokerIdentityChanged`).
    let pin = match pin {
        ServerPin::Exact(fp) => ServerPin::watched(fp),
        other => other,
    };
    let tls = certs::config::client(identity, pin.clone(), &[BROKER_ALPN])?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(tls)?));
    cfg.transport_config(Arc::new(transport()));
    let connecting = endpoint.connect_with(cfg, addr, "p2pim-broker")?;
    match tokio::time::timeout(Duration::from_secs(10), connecting).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => match pin.changed() {
            Some(changed) => Err(BrokerIdentityChanged { changed, addr }.into()),
            None => Err(anyhow!("cannot connect to the broker at {addr}: {e}")),
        },
        Err(_) => Err(anyhow!("no answer from the broker at {addr} within 10 s: is it running, and is UDP open?")),
    }
}

/// The broker presented another identity than the one pinned. The agent stops on it (no retry can help);
/// the message says what to do.
#[derive(Debug, thiserror::Error)]
#[error(
    "BROKER IDENTITY CHANGED: {changed}.\nSomeone may be intercepting your connection, or the broker's identity \
     was replaced. If the operator confirms the new fingerprint, run `peer login USER --broker {addr} \
     --broker-fingerprint NEW`."
)]
pub(crate) struct BrokerIdentityChanged {
    pub(crate) changed: certs::verify::IdentityChanged,
    pub(crate) addr: SocketAddr,
}

/// One request to the broker without an agent (register, login, a logout with no agent running): a client
/// endpoint and connection of its own, closed cleanly once the answer is in.
pub(crate) async fn request_once(
    identity: &Identity,
    addr: SocketAddr,
    pin: ServerPin,
    req: &Request,
) -> Result<Response> {
    let bind: SocketAddr = if addr.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    let endpoint = quinn::Endpoint::client(bind)?;
    let conn = connect_broker(&endpoint, identity, addr, pin).await?;
    let resp = request(&conn, req).await;
    conn.close(quinn::VarInt::from_u32(0), b"done");
    endpoint.wait_idle().await;
    resp
}

/// Sends one request on its own stream and waits for the one response.
pub(crate) async fn request(conn: &quinn::Connection, req: &Request) -> Result<Response> {
    let exchange = async {
        let (mut send, mut recv) = conn.open_bi().await?;
        write_frame(&mut send, req).await?;
        send.finish()?;
        read_frame::<Response, _>(&mut recv)
            .await?
            .ok_or_else(|| anyhow!("the broker closed the stream without answering"))
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| anyhow!("the broker did not answer within {} s", REQUEST_TIMEOUT.as_secs()))?
}

/// The addresses a friend on our LAN could use: the interface address that routes towards the broker, with
/// our endpoint's port. (Asks the OS for a route; sends nothing.)
pub(crate) fn local_candidates(endpoint: &quinn::Endpoint, broker: SocketAddr) -> Vec<SocketAddr> {
    let Ok(bound) = endpoint.local_addr() else {
        return vec![];
    };
    if !bound.ip().is_unspecified() {
        return vec![bound];
    }
    let probe_bind: SocketAddr = if broker.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    UdpSocket::bind(probe_bind)
        .and_then(|s| {
            s.connect(broker)?;
            s.local_addr()
        })
        .map(|a| vec![SocketAddr::new(a.ip(), bound.port())])
        .unwrap_or_default()
}
