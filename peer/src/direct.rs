//! Direct connections between friends' agents, on the agent's one endpoint.
//!
//! Both sides pin the other's device key as the broker vouched for it: we connect only to the fingerprint a
//! lookup returned, and accept only fingerprints the broker announced (`PeerIncoming`). The connection tells
//! us who the sender is; no frame can claim otherwise. Connections are kept and reused in both directions.
//! Both ends send keep-alives, so that a friend's agent that died is noticed within [`DEAD_AFTER`] (a
//! transfer then resumes on a fresh connection) and NAT mappings stay open; a link that carried no stream
//! data for [`UNUSED`] is closed by [`Direct::reap`].

use crate::net::Allowed;
use anyhow::{Result, anyhow};
use certs::verify::ServerPin;
use certs::{Fingerprint, Identity};
use shared::io::read_frame;
use shared::peer::{PeerAck, PeerFrame};
use shared::proto::{DeviceEndpoint, PEER_ALPN};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A direct connection that carried no stream data this long is closed.
pub(crate) const UNUSED: Duration = Duration::from_secs(60);
/// A friend's agent silent this long (no keep-alive answered) is gone.
pub(crate) const DEAD_AFTER: Duration = Duration::from_secs(10);
/// Keep-alive period on direct connections.
const KEEP_ALIVE: Duration = Duration::from_secs(2);
/// How long to wait for a handshake on one candidate address.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long to wait for a friend's agent to store a message.
const ACK_TIMEOUT: Duration = Duration::from_secs(4);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The transport for peer connections, both directions.
pub(crate) fn transport() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(KEEP_ALIVE));
    t.max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(DEAD_AFTER.as_millis() as u32))));
    t
}

/// Who may connect, and the live connections.
pub(crate) struct Direct {
    endpoint: quinn::Endpoint,
    identity: Identity,
    allowed: Allowed,
    who: Mutex<HashMap<Fingerprint, String>>,
    conns: Mutex<HashMap<Fingerprint, quinn::Connection>>,
    /// Per connection (by stable id): stream frames counted at the last reap, and when that count last moved.
    usage: Mutex<HashMap<usize, (u64, std::time::Instant)>>,
    /// Connections we opened, handed to the agent so that it serves the friend's streams on them too.
    opened: tokio::sync::mpsc::UnboundedSender<(quinn::Connection, String)>,
}

impl Direct {
    pub(crate) fn new(
        endpoint: quinn::Endpoint,
        identity: Identity,
        allowed: Allowed,
        opened: tokio::sync::mpsc::UnboundedSender<(quinn::Connection, String)>,
    ) -> Self {
        Self {
            endpoint,
            identity,
            allowed,
            who: Mutex::default(),
            conns: Mutex::default(),
            usage: Mutex::default(),
            opened,
        }
    }

    /// Accept `username`'s device `fp` from now on (the broker said it is about to connect).
    pub(crate) fn expect(&self, username: &str, fp: Fingerprint) {
        lock(&self.who).insert(fp, username.to_string());
        if let Ok(mut a) = self.allowed.write() {
            a.insert(fp);
        }
    }

    /// Stop accepting and drop every connection of `username` (no longer a friend).
    pub(crate) fn forget(&self, username: &str) {
        let gone: Vec<Fingerprint> =
            lock(&self.who).iter().filter(|(_, u)| u.as_str() == username).map(|(f, _)| *f).collect();
        for fp in gone {
            lock(&self.who).remove(&fp);
            if let Ok(mut a) = self.allowed.write() {
                a.remove(&fp);
            }
            if let Some(c) = lock(&self.conns).remove(&fp) {
                c.close(quinn::VarInt::from_u32(1), b"no longer friends");
            }
        }
    }

    /// The live connections, for `peer status`.
    pub(crate) fn links(&self) -> Vec<shared::control::PeerLink> {
        let who = lock(&self.who).clone();
        let mut links: Vec<_> = lock(&self.conns)
            .iter()
            .filter(|(_, c)| c.close_reason().is_none())
            .map(|(fp, c)| shared::control::PeerLink {
                username: who.get(fp).cloned().unwrap_or_default(),
                path: "direct".into(),
                remote_addr: c.remote_address(),
                device_fingerprint: fp.to_string(),
            })
            .collect();
        links.sort_by(|a, b| a.username.cmp(&b.username));
        links
    }

    /// Closes connections that carried no stream data for [`UNUSED`] and forgets closed ones.
    pub(crate) fn reap(&self) {
        let now = std::time::Instant::now();
        let mut usage = lock(&self.usage);
        let mut conns = lock(&self.conns);
        conns.retain(|_, c| {
            if c.close_reason().is_some() {
                usage.remove(&c.stable_id());
                return false;
            }
            let stats = c.stats();
            let frames = stats.frame_tx.stream + stats.frame_rx.stream;
            let entry = usage.entry(c.stable_id()).or_insert((frames, now));
            if entry.0 != frames {
                *entry = (frames, now);
            }
            if now.duration_since(entry.1) >= UNUSED {
                c.close(quinn::VarInt::from_u32(0), b"unused");
                usage.remove(&c.stable_id());
                return false;
            }
            true
        });
    }

    /// The friend behind a device key.
    pub(crate) fn username_of(&self, fp: &Fingerprint) -> Option<String> {
        lock(&self.who).get(fp).cloned()
    }

    /// Keeps an accepted connection for reuse in the other direction.
    pub(crate) fn adopt(&self, fp: Fingerprint, conn: quinn::Connection) {
        lock(&self.conns).insert(fp, conn);
    }

    /// A connection to the device, reusing a live one; otherwise tries every candidate address at once and
    /// keeps the first that completes a mutually authenticated handshake.
    pub(crate) async fn connect(&self, username: &str, device: &DeviceEndpoint) -> Result<quinn::Connection> {
        let fp = Fingerprint(device.fingerprint);
        self.expect(username, fp);
        if let Some(c) = lock(&self.conns).get(&fp).filter(|c| c.close_reason().is_none()).cloned() {
            return Ok(c);
        }
        let tls = certs::config::client(&self.identity, ServerPin::Exact(fp), &[PEER_ALPN])?;
        let mut cfg = quinn::ClientConfig::new(Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(tls)?));
        cfg.transport_config(Arc::new(transport()));
        let mut candidates: Vec<SocketAddr> = vec![device.observed];
        candidates.extend(device.local.iter().copied().filter(|a| *a != device.observed));
        let (tx, mut rx) = tokio::sync::mpsc::channel(candidates.len().max(1));
        for addr in candidates {
            let connecting = self.endpoint.connect_with(cfg.clone(), addr, "p2pim-peer");
            let tx = tx.clone();
            tokio::spawn(async move {
                let res = match connecting {
                    Ok(c) => match tokio::time::timeout(CONNECT_TIMEOUT, c).await {
                        Ok(r) => r.map_err(|e| anyhow!("{addr}: {e}")),
                        Err(_) => Err(anyhow!("{addr}: no answer")),
                    },
                    Err(e) => Err(anyhow!("{addr}: {e}")),
                };
                let _ = tx.send(res).await;
            });
        }
        drop(tx);
        let mut errors = Vec::new();
        while let Some(res) = rx.recv().await {
            match res {
                Ok(conn) => {
                    lock(&self.conns).insert(fp, conn.clone());
                    let _ = self.opened.send((conn.clone(), username.to_string()));
                    return Ok(conn);
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        Err(anyhow!("could not reach {username}'s device: {}", errors.join("; ")))
    }

    /// Sends frames in order on one stream and collects the receiver's answers, flattened to one per
    /// message. Fewer answers than messages, with the error that cut them short, when the stream or
    /// connection breaks part way.
    pub(crate) async fn send_batch(
        conn: &quinn::Connection,
        frames: &[PeerFrame],
    ) -> (Vec<PeerAck>, Option<anyhow::Error>) {
        let mut acks = Vec::new();
        let limit = ACK_TIMEOUT + Duration::from_millis(frames.len() as u64 * 10);
        let exchange = async {
            let (mut send, mut recv) = conn.open_bi().await?;
            let mut bytes = Vec::new();
            for f in frames {
                bytes.extend_from_slice(&shared::frame::encode(f)?);
            }
            let writer = async move {
                tokio::io::AsyncWriteExt::write_all(&mut send, &bytes).await?;
                send.finish()?;
                Ok::<_, anyhow::Error>(())
            };
            let reader = async {
                for f in frames {
                    let count = match f {
                        PeerFrame::Chat(_) => 1,
                        PeerFrame::ChatBatch(v) => v.len(),
                        _ => 1,
                    };
                    match read_frame::<PeerAck, _>(&mut recv).await? {
                        Some(PeerAck::Batch(v)) => acks.extend(v),
                        // One answer for a whole frame (a refusal of the frame itself) applies to each message.
                        Some(other) => acks.extend(std::iter::repeat_n(other, count)),
                        None => return Err(anyhow!("the friend's agent stopped acknowledging")),
                    }
                }
                Ok::<_, anyhow::Error>(())
            };
            let (w, r) = tokio::join!(writer, reader);
            w.and(r)
        };
        let err = match tokio::time::timeout(limit, exchange).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(_) => Some(anyhow!("no acknowledgement within {} s", limit.as_secs())),
        };
        (acks, err)
    }
}

/// The fingerprint a connection's peer presented.
pub(crate) fn peer_fingerprint(conn: &quinn::Connection) -> Option<Fingerprint> {
    let certs = conn.peer_identity()?.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>().ok()?;
    certs.first().map(|c| Fingerprint::of(c))
}
