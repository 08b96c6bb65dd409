//! The agent's one UDP socket and its connections: to the broker (pinned), and later to friends.
//!
//! One quinn endpoint is both client and server, so the address the broker observes for our session is the
//! very mapping a friend can reach us on, NAT included.

use anyhow::{Context, Result, anyhow, bail};
use certs::verify::{ClientPolicy, ServerPin};
use certs::{Fingerprint, Identity};
use shared::io::{read_frame, write_frame};
use shared::proto::{BROKER_ALPN, BROKER_ALPN_CHANNELS, PEER_ALPN, Request, Response};
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

/// How the agent watches its broker connection, by how many brokers it knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Watch {
    /// How long a broker may take to answer a connection.
    pub(crate) patience: Duration,
    /// Silence after which the connection counts as dead (QUIC's idle timeout; the smaller of both sides').
    pub(crate) idle: Duration,
    /// Keep-alive period while nothing else is sent.
    pub(crate) keep_alive: Duration,
}

impl Watch {
    /// With one broker there is nowhere else to go: a lost broker is waited for patiently, and keep-alives
    /// are rare (they cost every idle session a packet). With several (a standby or a cluster), a broker
    /// host that dies is noticed within 3 s (a keep-alive every second, each lost one probed again by
    /// QUIC's loss recovery, so a lossy link does not end a healthy session) and the next broker is tried
    /// at once: failover within 5 s (`bench cluster`), for a packet a second per idle session, which is
    /// what the operator chose by running more than one.
    pub(crate) fn for_brokers(brokers: usize) -> Self {
        if brokers > 1 {
            Self { patience: Duration::from_secs(3), idle: Duration::from_secs(3), keep_alive: Duration::from_secs(1) }
        } else {
            Self { patience: Duration::from_secs(10), idle: Duration::from_secs(15), keep_alive: KEEP_ALIVE }
        }
    }

    fn transport(self) -> quinn::TransportConfig {
        let mut t = quinn::TransportConfig::default();
        t.keep_alive_interval(Some(self.keep_alive));
        let idle = quinn::VarInt::from_u64(self.idle.as_millis() as u64).unwrap_or(quinn::VarInt::from_u32(15_000));
        t.max_idle_timeout(Some(quinn::IdleTimeout::from(idle)));
        t
    }
}

/// The agent's endpoint, and the server settings for friends who arrive through the relay.
pub(crate) struct Bound {
    pub(crate) endpoint: quinn::Endpoint,
    pub(crate) relay_server: Arc<quinn::ServerConfig>,
    /// The same, for friends whose relay link has a channel (packets that fit a datagram).
    pub(crate) channel_server: Arc<quinn::ServerConfig>,
    /// The same UDP socket, for the few short-lived packets that open our NAT before a punch
    /// ([`crate::direct::Direct`]'s `open_nat`).
    pub(crate) opener: Option<std::net::UdpSocket>,
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
    let mut relay_server = quinn::ServerConfig::with_crypto(tls.clone());
    relay_server.transport_config(Arc::new(crate::direct::relay_transport(false)));
    let mut channel_server = quinn::ServerConfig::with_crypto(tls);
    channel_server.transport_config(Arc::new(crate::direct::relay_transport(true)));
    let socket = shared::udp::bind(bind).with_context(|| format!("cannot bind UDP {bind}"))?.socket;
    let opener = socket.try_clone().ok();
    let runtime = quinn::default_runtime().ok_or_else(|| anyhow!("no async runtime"))?;
    let socket = Arc::new(crate::relay::RelaySocket::new(runtime.wrap_udp_socket(socket)?, relays));
    // Friends may send packets this large: only relayed connections do (direct paths discover their MTU).
    let mut config = quinn::EndpointConfig::default();
    config.max_udp_payload_size(crate::direct::RELAY_MTU)?;
    // Friends and brokers then never clear QUIC's fixed bit towards us: a datagram without it is a relay
    // channel's (see `crate::relay`).
    config.grease_quic_bit(false);
    let endpoint = quinn::Endpoint::new_with_abstract_socket(config, Some(server), socket, runtime)?;
    Ok(Bound { endpoint, relay_server: Arc::new(relay_server), channel_server: Arc::new(channel_server), opener })
}

/// Resolves a broker setting: `HOST:PORT` (a missing port means the default 7878), or several of them
/// separated by commas (brokers that serve the same users), each name to every address it has. In the
/// order given, without repeats: the agent tries them in that order.
pub(crate) async fn resolve_all(brokers: &str) -> Result<Vec<SocketAddr>> {
    let mut out = Vec::new();
    for broker in brokers.split(',').map(str::trim).filter(|b| !b.is_empty()) {
        let with_port =
            if broker.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) && !broker.ends_with(']') {
                broker.to_string()
            } else {
                format!("{broker}:{}", shared::proto::DEFAULT_PORT)
            };
        let found = tokio::net::lookup_host(&with_port)
            .await
            .with_context(|| format!("cannot resolve broker address {broker}"))?;
        let mut any = false;
        for addr in found {
            any = true;
            if !out.contains(&addr) {
                out.push(addr);
            }
        }
        if !any {
            bail!("broker address {broker} resolves to nothing");
        }
    }
    if out.is_empty() {
        bail!("no broker address given: --broker HOST:PORT (or several, separated by commas)");
    }
    Ok(out)
}

/// Connects to the broker, checking its certificate against `pin`, waiting at most `watch.patience` for
/// the handshake.
pub(crate) async fn connect_broker(
    endpoint: &quinn::Endpoint,
    identity: &Identity,
    addr: SocketAddr,
    pin: ServerPin,
    watch: Watch,
) -> Result<quinn::Connection> {
    let patience = watch.patience;
    // An exact pin is watched, so that a changed identity is known by type (see `BrokerIdentityChanged`).
    let pin = match pin {
        ServerPin::Exact(fp) => ServerPin::watched(fp),
        other => other,
    };
    // Channels offered first; a broker without them answers in the protocol both have.
    let tls = certs::config::client(identity, pin.clone(), &[BROKER_ALPN_CHANNELS, BROKER_ALPN])?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(tls)?));
    cfg.transport_config(Arc::new(watch.transport()));
    let connecting = endpoint.connect_with(cfg, addr, "p2pim-broker")?;
    match tokio::time::timeout(patience, connecting).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => match pin.changed() {
            Some(changed) => Err(BrokerIdentityChanged { changed, addr }.into()),
            None => Err(anyhow!("cannot connect to the broker at {addr}: {e}")),
        },
        Err(_) => Err(anyhow!(
            "no answer from the broker at {addr} within {} s: is it running, and is UDP open?",
            patience.as_secs()
        )),
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
    addrs: &[SocketAddr],
    pin: ServerPin,
    req: &Request,
) -> Result<Response> {
    let (endpoint, conn) = connect_first(identity, addrs, pin).await?;
    let resp = request(&conn, req).await;
    conn.close(quinn::VarInt::from_u32(0), b"done");
    endpoint.wait_idle().await;
    resp
}

/// A client endpoint and a connection to the first of `addrs` that answers (brokers that serve the same
/// users). A broker whose identity changed is an answer: nothing else is tried after it.
pub(crate) async fn connect_first(
    identity: &Identity,
    addrs: &[SocketAddr],
    pin: ServerPin,
) -> Result<(quinn::Endpoint, quinn::Connection)> {
    let mut errors = Vec::new();
    for addr in addrs {
        let bind: SocketAddr = if addr.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
        let endpoint = quinn::Endpoint::client(bind)?;
        match connect_broker(&endpoint, identity, *addr, pin.clone(), Watch::for_brokers(addrs.len())).await {
            Ok(conn) => return Ok((endpoint, conn)),
            Err(e) if e.downcast_ref::<BrokerIdentityChanged>().is_some() => return Err(e),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    match errors.as_slice() {
        [one] => bail!("{one}"),
        _ => bail!("no broker answered: {}", errors.join("; ")),
    }
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

/// The agent's socket when `--bind` is not given: every IPv4 interface, or IPv6 and IPv4 together when a
/// broker has an IPv6 address (an IPv4-only socket could not reach it).
pub(crate) fn default_bind(brokers: &[SocketAddr]) -> SocketAddr {
    if brokers.iter().any(SocketAddr::is_ipv6) { ([0u16; 8], 0).into() } else { ([0, 0, 0, 0], 0).into() }
}

/// The addresses a friend on our LAN could use: the interface address that routes towards the broker, with
/// our endpoint's port; on a dual-stack socket, the other family's address too (towards a documentation
/// address, so only when the machine has a route of that family at all), so that friends with IPv6 can
/// reach us directly whatever the broker speaks. (Asks the OS for routes; sends nothing.)
pub(crate) fn local_candidates(endpoint: &quinn::Endpoint, broker: SocketAddr) -> Vec<SocketAddr> {
    let Ok(bound) = endpoint.local_addr() else {
        return vec![];
    };
    if !bound.ip().is_unspecified() {
        return vec![shared::udp::canonical(bound)];
    }
    let broker = shared::udp::canonical(broker);
    let mut towards = vec![broker];
    if bound.is_ipv6() {
        let other: SocketAddr =
            if broker.is_ipv4() { "[2001:db8::1]:7878".parse() } else { "192.0.2.1:7878".parse() }.expect("an address");
        towards.push(other);
    }
    towards
        .into_iter()
        .filter_map(|to| {
            let probe_bind: SocketAddr = if to.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
            let local = UdpSocket::bind(probe_bind)
                .and_then(|s| {
                    s.connect(to)?;
                    s.local_addr()
                })
                .ok()?;
            Some(SocketAddr::new(local.ip(), bound.port())).filter(|a| reachable_by_others(a.ip()))
        })
        .collect()
}

/// An address someone else could send to: not link-local (which needs a scope), unspecified or
/// multicast. Loopback stays: a friend on the same machine uses it.
fn reachable_by_others(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => !v4.is_unspecified() && !v4.is_link_local(),
        std::net::IpAddr::V6(v6) => !v6.is_unspecified() && !v6.is_unicast_link_local() && !v6.is_multicast(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_socket_speaks_every_family_a_broker_has() {
        let v4: SocketAddr = "192.0.2.7:7878".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::7]:7878".parse().unwrap();
        assert_eq!(default_bind(&[v4]), "0.0.0.0:0".parse().unwrap());
        assert_eq!(default_bind(&[v4, v6]), "[::]:0".parse().unwrap());
    }

    #[test]
    fn link_local_addresses_are_not_offered() {
        for (ip, offered) in [
            ("192.0.2.7", true),
            ("127.0.0.1", true),
            ("169.254.1.1", false),
            ("2001:db8::7", true),
            ("::1", true),
            ("fe80::1", false),
            ("::", false),
        ] {
            assert_eq!(reachable_by_others(ip.parse().unwrap()), offered, "{ip}");
        }
    }
}
