//! The sending and listening of a search for a direct path (the rules, and why it works, are in
//! [`crate::core::search`]). A search runs beside the relayed connection it may replace: what it finds is
//! kept as any direct path is (`keep`), and the conversation moves over as it does after any upgrade.

use super::{CONNECT_TIMEOUT, Direct, OPENING_TTL, Opened};
use crate::core::links::Path;
use crate::core::search::{self, PROBES_PER_TICK, Ports, Roles, SEARCH_FOR, SOCKETS, TICK};
use anyhow::{Result, anyhow};
use certs::Fingerprint;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

/// One search, as both sides agreed on it.
pub(crate) struct Plan {
    pub(crate) friend: String,
    /// The friend's device.
    pub(crate) fp: Fingerprint,
    /// Its NAT's public address, as the broker sees it.
    pub(crate) at: SocketAddr,
    /// Carried by every probe.
    pub(crate) token: [u8; 16],
    pub(crate) roles: Roles,
}

/// A listening socket that a probe reached, and the address the probe came from.
type Hit = (std::net::UdpSocket, SocketAddr);

impl Direct {
    /// Whether a search with the device may start now: as its leader, or joining the friend's.
    pub(crate) fn may_search(&self, fp: &Fingerprint, joining: bool) -> bool {
        let pacer = self.searches.lock();
        if joining { pacer.may_join(fp, Instant::now()) } else { pacer.may_lead(fp, Instant::now()) }
    }

    /// A place for one more search, if fewer than [`crate::core::search::AT_ONCE`] run now; held until it ends.
    pub(crate) fn search_slot(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.search_slots.clone().try_acquire_owned().ok()
    }

    /// Whether the device is reached through the relay only, now.
    pub(crate) fn is_relayed(&self, fp: &Fingerprint) -> bool {
        self.live_on(fp, Path::Relayed)
    }

    /// Searches for a direct path to the plan's device, playing the plan's roles, for at most
    /// [`SEARCH_FOR`] or until a direct path to it is kept, whichever side opened it. Both sides run this at
    /// once, with the same token. `_slot` ([`Direct::search_slot`]) is given back when it ends.
    pub(crate) async fn search(&self, plan: Plan, _slot: tokio::sync::OwnedSemaphorePermit) {
        let (friend, fp) = (plan.friend.as_str(), plan.fp);
        // Probes leave from the endpoint's socket, which is IPv4 (see `open_nat`).
        if self.relay_only || !plan.at.is_ipv4() || (plan.roles.probe && self.opener.is_none()) {
            return;
        }
        self.searches.lock().started(fp, Instant::now());
        let (listen, probe) = (plan.roles.listen, plan.roles.probe);
        tracing::info!(friend, listen, probe, "searching for a direct path past the NATs");
        match self.run_search(&plan).await {
            Ok(true) => {
                self.searches.lock().found(&fp);
                tracing::info!(friend, "the search found a direct path");
            }
            Ok(false) => tracing::info!(friend, "the search found no direct path; staying on the relay"),
            Err(e) => tracing::info!(friend, error = %e, "could not search for a direct path"),
        }
    }

    async fn run_search(&self, plan: &Plan) -> Result<bool> {
        let Plan { friend, fp, at, token, roles } = plan;
        let (fp, at, token) = (*fp, *at, *token);
        let probe = search::probe(&token);
        let (hits_tx, mut hits) = tokio::sync::mpsc::channel::<Hit>(SOCKETS);
        // Owned here: they stop listening when the search ends.
        let mut listeners = tokio::task::JoinSet::new();
        if roles.listen {
            for _ in 0..SOCKETS {
                let socket = listening_socket(at, &probe)?;
                listeners.spawn(listen(socket, at.ip(), token, hits_tx.clone()));
            }
        }
        drop(hits_tx);
        let mut ports = Ports::new(u64::from_le_bytes(crate::agent::random_id()[..8].try_into().unwrap_or_default()));
        let mut tick = tokio::time::interval(TICK);
        let deadline = tokio::time::sleep(SEARCH_FOR);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                Some((socket, from)) = hits.recv() => match self.dial_from(socket, from, fp).await {
                    Ok(conn) => {
                        let conn = self.keep(fp, conn, true);
                        let _ = self.opened.send(Opened { conn, friend: friend.to_string(), late: false });
                        return Ok(true);
                    }
                    Err(e) => tracing::debug!(friend, %from, error = %e, "a probe got through, the handshake did not"),
                },
                _ = tick.tick() => {
                    // The friend's side may have found the path (its dial arrived at our endpoint).
                    if self.live_on(&fp, Path::Direct) {
                        return Ok(true);
                    }
                    if roles.probe {
                        self.send_probes(at.ip(), &mut ports, &probe);
                    }
                }
                () = &mut deadline => return Ok(self.live_on(&fp, Path::Direct)),
            }
        }
    }

    /// Sends the next [`PROBES_PER_TICK`] probes from the endpoint's socket, each to another port of `ip`.
    fn send_probes(&self, ip: IpAddr, ports: &mut Ports, probe: &[u8]) {
        let Some(socket) = &self.opener else { return };
        for port in ports.by_ref().take(PROBES_PER_TICK) {
            // A full socket buffer drops a probe, which only costs its chance.
            let _ = socket.send_to(probe, SocketAddr::new(ip, port));
        }
    }

    /// Dials the friend from the listening socket a probe reached: its NAT's port is open to that address,
    /// and the friend's router to ours. The connection gets an endpoint of its own on that socket, which
    /// lives as long as the connection.
    async fn dial_from(
        &self,
        socket: std::net::UdpSocket,
        to: SocketAddr,
        fp: Fingerprint,
    ) -> Result<quinn::Connection> {
        let runtime = quinn::default_runtime().ok_or_else(|| anyhow!("no async runtime"))?;
        let endpoint = quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, runtime)?;
        let connecting = endpoint.connect_with(self.client_config(fp)?, to, "p2pim-peer")?;
        tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| anyhow!("{to}: no answer"))?
            .map_err(Into::into)
    }
}

/// A socket of the listening side: bound anywhere, and with one packet sent towards the friend's address
/// with [`OPENING_TTL`], which makes its port on our NAT and dies before it reaches the friend's router (an
/// unsolicited packet there could make that router renumber the friend's probes).
fn listening_socket(at: SocketAddr, probe: &[u8]) -> Result<tokio::net::UdpSocket> {
    let socket = std::net::UdpSocket::bind(SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), 0))?;
    let normal = socket.ttl()?;
    socket.set_ttl(OPENING_TTL)?;
    // Not sent: that port stays closed, which only costs its chance.
    let _ = socket.send_to(probe, at);
    socket.set_ttl(normal)?;
    socket.set_nonblocking(true)?;
    Ok(tokio::net::UdpSocket::from_std(socket)?)
}

/// Waits on one listening socket for a probe of this search from the friend's address, and hands the
/// socket over when one arrives. Anything else is ignored.
async fn listen(socket: tokio::net::UdpSocket, from_ip: IpAddr, token: [u8; 16], hits: tokio::sync::mpsc::Sender<Hit>) {
    let mut buf = [0u8; 64];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else { return };
        if from.ip() == from_ip && search::is_probe(&buf[..n], &token) {
            if let Ok(socket) = socket.into_std() {
                let _ = hits.send((socket, from)).await;
            }
            return;
        }
    }
}
