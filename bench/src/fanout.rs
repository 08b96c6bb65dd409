//! The group bench's QUIC baseline: the raw server's fan-out ([`crate::raw::FANOUT_ALPN`]) driven like our
//! broker's groups: the same members (one QUIC connection each, with the same mutual TLS), the same senders
//! and pacing, 100-byte posts; the raw server copies each post to every member's stream, with one writer per
//! member, and numbers, stores and checks nothing. What our broker does beyond it is its own cost.

use crate::Proc;
use crate::client::{Clients, GroupFigures};
use anyhow::{Result, anyhow};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Members connected to the raw server's fan-out, each reading its stream.
pub(crate) struct RawFanout {
    conns: Arc<Vec<quinn::Connection>>,
    members: usize,
    /// Each member's receipts: (post number, when).
    received: Arc<Mutex<Vec<(u64, Instant)>>>,
}

impl RawFanout {
    pub(crate) async fn build(raw: &Proc, members: usize) -> Result<Self> {
        let clients = Arc::new(Clients::new()?);
        let cfg = clients.config(&raw.fingerprint, crate::raw::FANOUT_ALPN)?;
        let received: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::default();
        let listen = {
            let received = received.clone();
            move |_: usize, conn: quinn::Connection| {
                let received = received.clone();
                async move {
                    // The server's first byte says this member is listed.
                    let mut stream = conn.accept_uni().await?;
                    let mut hello = [0u8; 1];
                    stream.read_exact(&mut hello).await?;
                    tokio::spawn(async move {
                        let mut post = [0u8; 100];
                        while stream.read_exact(&mut post).await.is_ok() {
                            let k = u64::from_be_bytes(post[..8].try_into().unwrap_or_default());
                            if let Ok(mut r) = received.lock() {
                                r.push((k, Instant::now()));
                            }
                        }
                    });
                    Ok(conn)
                }
            }
        };
        let addrs: [SocketAddr; 1] = [raw.addr];
        let (conns, _) = crate::client::open_many(&clients, &cfg, &addrs, 0..members, 16, listen).await?;
        Ok(Self { conns: Arc::new(conns), members, received })
    }

    /// One round of `messages` posts by `senders` members, paced at `rate` posts/s (0: each as soon as
    /// the last was answered), as [`crate::client`]'s group rounds.
    pub(crate) async fn round(&self, raw: &Proc, senders: usize, messages: usize, rate: f64) -> Result<GroupFigures> {
        self.received.lock().map_err(|_| anyhow!("poisoned"))?.clear();
        let sent: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; messages]));
        let cpu_before = crate::cpu_seconds(raw.child.id());
        let start = Instant::now();
        let mut tasks = Vec::new();
        for s in 0..senders.min(self.members) {
            let (conns, sent) = (self.conns.clone(), sent.clone());
            tasks.push(tokio::spawn(async move {
                for k in (s..messages).step_by(senders) {
                    if rate > 0.0 {
                        tokio::time::sleep_until((start + Duration::from_secs_f64(k as f64 / rate)).into()).await;
                    }
                    let mut post = [b'x'; 100];
                    post[..8].copy_from_slice(&(k as u64).to_be_bytes());
                    sent.lock().map_err(|_| anyhow!("poisoned"))?[k] = Some(Instant::now());
                    let (mut send, mut recv) = conns[s].open_bi().await?;
                    send.write_all(&post).await?;
                    send.finish()?;
                    recv.read_to_end(16).await?;
                }
                Ok::<_, anyhow::Error>(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        let expected = messages * self.members;
        let (figures, deliveries, elapsed) =
            GroupFigures::of_baseline_round(&self.received, &sent, expected, (raw.child.id(), cpu_before), start)
                .await?;
        figures.report(
            "raw quinn fan-out (one writer per member, nothing stored)",
            "groups-raw-quinn",
            (deliveries, expected, elapsed),
            (self.members, senders, messages, rate),
        )?;
        Ok(figures)
    }
}
