//! One-to-one chat: the agent's outbox (ordered, de-duplicated, surviving restarts) and its inbox (commit,
//! then acknowledge).

use crate::agent::{Agent, lock, now_ms};
use crate::direct::{Direct, peer_fingerprint};
use crate::history;
use anyhow::Result;
use shared::control::{AgentEvent, ControlResponse, MessageStatus};
use shared::io::{read_frame, write_frame};
use shared::peer::{PeerAck, PeerFrame, check_text, id_hex};
use shared::proto::{DeviceEndpoint, ErrorCode, Request, Response};
use std::sync::Arc;
use std::time::Duration;

/// How long an incoming stream may take to deliver its frame.
const FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to keep retrying a refused handshake while the friend's agent learns our key from the broker.
const CONNECT_PATIENCE: Duration = Duration::from_secs(5);
/// How often queued messages are retried even without a presence change.
pub(crate) const RETRY_EVERY: Duration = Duration::from_secs(30);

fn random_id() -> [u8; 16] {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    b
}

impl Agent {
    /// `peer send`: stores the message, delivers everything pending to that friend in order, and reports
    /// where this one ended up.
    pub(crate) async fn send_message(&self, to: &str, text: &str) -> ControlResponse {
        if let Err(e) = check_text(text) {
            return ControlResponse::Error(e);
        }
        if to == self.account.username {
            return ControlResponse::Error("you cannot send messages to yourself".into());
        }
        let id = id_hex(&random_id());
        if let Err(e) = history::insert_outgoing(&self.home.db, &id, to, text, now_ms()).await {
            return ControlResponse::Error(format!("could not store the message: {e}"));
        }
        let detail = self.deliver_pending(to).await.err().map(|e| e.to_string());
        let status = match history::status(&self.home.db, &id).await {
            Ok(Some(s)) if s == "delivered" => MessageStatus::Delivered,
            Ok(Some(s)) if s == "failed" => MessageStatus::Failed,
            _ => MessageStatus::Queued,
        };
        ControlResponse::Sent { id, status, detail }
    }

    /// Delivers the friend's pending messages, oldest first, stopping at the first that cannot be delivered
    /// (so that order holds). One delivery per friend at a time.
    pub(crate) async fn deliver_pending(&self, friend: &str) -> Result<()> {
        let gate = lock(&self.outbox_locks).entry(friend.to_string()).or_default().clone();
        let _turn = gate.lock().await;
        let pending = history::pending(&self.home.db, friend).await?;
        if pending.is_empty() {
            return Ok(());
        }
        let cached = lock(&self.devices).get(friend).cloned();
        let devices = match cached {
            Some(d) => d,
            None => match self.lookup(friend, &pending).await {
                Ok(d) => d,
                Err(e) => return Err(e),
            },
        };
        if devices.is_empty() {
            return self.queue(&pending, &format!("{friend} is offline")).await;
        }
        let mut conns = Vec::new();
        let mut errors = Vec::new();
        for device in &devices {
            // The friend's agent learns our key through the broker at the same moment as we learn theirs;
            // give that announcement a moment if our first handshake outruns it.
            let deadline = tokio::time::Instant::now() + CONNECT_PATIENCE;
            let mut attempt = self.direct.connect(friend, device).await;
            while attempt.is_err() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(250)).await;
                attempt = self.direct.connect(friend, device).await;
            }
            match attempt {
                Ok(c) => conns.push(c),
                Err(e) => errors.push(e.to_string()),
            }
        }
        if conns.is_empty() {
            lock(&self.devices).remove(friend);
            return self.queue(&pending, &errors.join("; ")).await;
        }
        lock(&self.devices).insert(friend.to_string(), devices);
        let frames: Vec<PeerFrame> = pending
            .iter()
            .map(|m| PeerFrame::Chat { id: parse_id(&m.id), sent_at: m.sent_at, text: m.text.clone() })
            .collect();
        // Per message: stored by some device, or refused (with why) by one.
        let mut stored = vec![false; pending.len()];
        let mut refused: Vec<Option<String>> = vec![None; pending.len()];
        for conn in &conns {
            let (acks, err) = Direct::send_batch(conn, &frames).await;
            for (i, ack) in acks.into_iter().enumerate() {
                match ack {
                    PeerAck::Stored => stored[i] = true,
                    PeerAck::Refused(why) => refused[i] = Some(why),
                }
            }
            if let Some(e) = err {
                errors.push(e.to_string());
                lock(&self.devices).remove(friend);
            }
        }
        // Settle in order: delivered, failed for good, or (at the first gap) queued with all after it.
        let mut delivered = Vec::new();
        for (i, m) in pending.iter().enumerate() {
            if stored[i] {
                delivered.push(m.id.clone());
            } else if let Some(why) = &refused[i] {
                self.fail(friend, &m.id, why).await?;
            } else {
                history::set_delivered(&self.home.db, &delivered).await?;
                self.announce_delivered(friend, &delivered);
                return self.queue(&pending[i..], &errors.join("; ")).await;
            }
        }
        history::set_delivered(&self.home.db, &delivered).await?;
        self.announce_delivered(friend, &delivered);
        Ok(())
    }

    fn announce_delivered(&self, friend: &str, ids: &[String]) {
        let at = now_ms();
        for id in ids {
            self.emit(AgentEvent::MessageDelivered { to: friend.to_string(), id: id.clone(), at });
        }
    }

    /// Asks the broker where the friend's devices are (and tells them to expect us).
    async fn lookup(&self, friend: &str, pending: &[history::Message]) -> Result<Vec<DeviceEndpoint>> {
        match self.forward(&Request::Lookup { username: friend.to_string() }).await {
            ControlResponse::Broker(Response::Endpoints(d)) => Ok(d),
            ControlResponse::Broker(Response::Error(e)) if matches!(e.code, ErrorCode::NotFriends) => {
                for m in pending {
                    self.fail(friend, &m.id, &e.message).await?;
                }
                Err(anyhow::anyhow!("{}", e.message))
            }
            ControlResponse::Broker(Response::Error(e)) => self.queue(pending, &e.message).await.map(|()| vec![]),
            ControlResponse::Error(e) => self.queue(pending, &e).await.map(|()| vec![]),
            other => self.queue(pending, &format!("unexpected answer: {other:?}")).await.map(|()| vec![]),
        }
    }

    /// Retries every friend with pending messages (after reconnecting, and periodically).
    pub(crate) async fn deliver_all(self: Arc<Self>) {
        let Ok(peers) = history::peers_with_pending(&self.home.db).await else { return };
        for p in peers {
            if let Err(e) = self.deliver_pending(&p).await {
                tracing::debug!(friend = p, error = %e, "messages stay queued");
            }
        }
    }

    async fn queue(&self, msgs: &[history::Message], why: &str) -> Result<()> {
        for m in msgs {
            history::set_status(&self.home.db, &m.id, MessageStatus::Queued).await?;
        }
        tracing::info!(count = msgs.len(), reason = why, "messages queued");
        Err(anyhow::anyhow!("{why}"))
    }

    async fn fail(&self, to: &str, id: &str, reason: &str) -> Result<()> {
        history::set_status(&self.home.db, id, MessageStatus::Failed).await?;
        self.emit(AgentEvent::MessageFailed {
            to: to.to_string(),
            id: id.to_string(),
            reason: reason.to_string(),
            at: now_ms(),
        });
        Ok(())
    }

    /// Accepts friends' direct connections on the agent's endpoint, and serves the friend's side of the
    /// connections we open: either side may send on any connection between the two.
    pub(crate) async fn accept_peers(
        self: Arc<Self>,
        mut opened: tokio::sync::mpsc::UnboundedReceiver<(quinn::Connection, String)>,
    ) {
        loop {
            tokio::select! {
                incoming = self.endpoint.accept() => {
                    let Some(incoming) = incoming else { return };
                    let agent = self.clone();
                    tokio::spawn(async move {
                        match incoming.await {
                            Ok(conn) => agent.serve_incoming(conn).await,
                            Err(e) => tracing::info!(error = %e, "refused a direct connection"),
                        }
                    });
                }
                Some((conn, friend)) = opened.recv() => {
                    tokio::spawn(self.clone().serve_streams(conn, friend));
                }
            }
        }
    }

    async fn serve_incoming(self: Arc<Self>, conn: quinn::Connection) {
        let Some(fp) = peer_fingerprint(&conn) else { return };
        let Some(friend) = self.direct.username_of(&fp) else {
            conn.close(quinn::VarInt::from_u32(1), b"unknown device");
            return;
        };
        tracing::info!(friend, remote = %conn.remote_address(), "direct connection from a friend");
        self.direct.adopt(fp, conn.clone());
        self.serve_streams(conn, friend).await;
    }

    /// Serves the friend's streams on one connection until it closes. A stream carries one or more frames in
    /// order; each is committed and then acknowledged on the same stream, in the same order.
    async fn serve_streams(self: Arc<Self>, conn: quinn::Connection, friend: String) {
        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
            let (agent, friend) = (self.clone(), friend.clone());
            tokio::spawn(async move {
                loop {
                    let ack = match tokio::time::timeout(FRAME_TIMEOUT, read_frame::<PeerFrame, _>(&mut recv)).await {
                        Ok(Ok(Some(frame))) => agent.receive(&friend, frame).await,
                        Ok(Ok(None)) => break,
                        Ok(Err(e)) => Some(PeerAck::Refused(format!("bad frame: {e}"))),
                        Err(_) => Some(PeerAck::Refused("no frame within 10 s".into())),
                    };
                    let Some(ack) = ack else {
                        // Not stored: no acknowledgement, so the sender keeps the message and retries.
                        let _ = send.reset(quinn::VarInt::from_u32(1));
                        return;
                    };
                    let last = matches!(ack, PeerAck::Refused(ref why) if why.starts_with("bad frame") || why.starts_with("no frame"));
                    if write_frame(&mut send, &ack).await.is_err() || last {
                        break;
                    }
                }
                let _ = send.finish();
                let _ = send.stopped().await;
            });
        }
    }

    /// Commits an incoming message, then acknowledges it. A retried id is acknowledged without a second copy.
    async fn receive(&self, from: &str, frame: PeerFrame) -> Option<PeerAck> {
        match frame {
            PeerFrame::Chat { id, sent_at, text } => {
                if let Err(e) = check_text(&text) {
                    return Some(PeerAck::Refused(e));
                }
                let id = id_hex(&id);
                match history::insert_incoming(&self.home.db, &id, from, &text, sent_at, now_ms()).await {
                    Ok(true) => {
                        self.emit(AgentEvent::MessageReceived {
                            from: from.to_string(),
                            id,
                            text,
                            sent_at,
                            at: now_ms(),
                        });
                        Some(PeerAck::Stored)
                    }
                    Ok(false) => Some(PeerAck::Stored),
                    Err(e) => {
                        tracing::error!(error = %e, "could not store an incoming message");
                        None
                    }
                }
            }
        }
    }
}

fn parse_id(hex: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, chunk) in hex.as_bytes().chunks(2).take(16).enumerate() {
        out[i] = std::str::from_utf8(chunk).ok().and_then(|s| u8::from_str_radix(s, 16).ok()).unwrap_or(0);
    }
    out
}
