//! What friends send us: the agent accepts their direct (or relayed) connections and serves every stream
//! on them, in either direction's connection. A chat frame is committed, then acknowledged on the same stream
//! in the same order; file frames go to `files`. Whose frame it is comes from the connection's certificate,
//! never from the frame.

use crate::agent::{Agent, now_ms};
use crate::direct::peer_fingerprint;
use crate::history;
use shared::control::AgentEvent;
use shared::io::{read_frame, write_frame};
use shared::peer::{Chat, PeerAck, PeerFrame, check_text};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::Instrument;

/// How long an incoming stream may take to deliver its frame.
const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

impl Agent {
    /// Accepts friends' direct connections on the agent's endpoint, and serves the friend's side of the
    /// connections we open: either side may send on any connection between the two.
    pub(crate) async fn accept_peers(self: Arc<Self>, mut opened: mpsc::UnboundedReceiver<crate::direct::Opened>) {
        // Handshakes and the connections' stream servers, owned by this loop: they end with it.
        let mut conns = tokio::task::JoinSet::new();
        loop {
            while conns.try_join_next().is_some() {}
            tokio::select! {
                incoming = self.endpoint.accept() => {
                    let Some(incoming) = incoming else { return };
                    let agent = self.clone();
                    conns.spawn(async move {
                        let from = incoming.remote_address();
                        let connecting = if agent.relays.has_channel(&from) {
                            incoming.accept_with(agent.channel_server.clone())
                        } else if crate::relay::is_relay_addr(&from) {
                            incoming.accept_with(agent.relay_server.clone())
                        } else {
                            incoming.accept()
                        };
                        match async { connecting?.await }.await {
                            Ok(conn) => agent.serve_incoming(conn).await,
                            Err(e) => tracing::info!(error = %e, "refused a direct connection"),
                        }
                    });
                }
                Some(o) = opened.recv() => {
                    // Kept (or not) as every connection is; either way its streams are served while it lives.
                    if o.late {
                        self.direct.keep_late(o.conn.clone());
                    }
                    conns.spawn(self.clone().serve_streams(o.conn, o.friend));
                }
            }
        }
    }

    async fn serve_incoming(self: Arc<Self>, conn: quinn::Connection) {
        let Some(fp) = peer_fingerprint(&conn) else { return };
        if alpn(&conn).as_deref() == Some(shared::link::LINK_ALPN) {
            return self.serve_link(conn, fp).await;
        }
        let Some(friend) = self.direct.username_of(&fp) else {
            conn.close(quinn::VarInt::from_u32(1), b"unknown device");
            return;
        };
        if self.direct.relay_only() && !crate::relay::is_relay_addr(&conn.remote_address()) {
            conn.close(quinn::VarInt::from_u32(1), b"this agent takes friends through the relay only");
            return;
        }
        tracing::info!(friend, remote = %conn.remote_address(), "direct connection from a friend");
        self.direct.adopt(fp, conn.clone());
        self.serve_streams(conn, friend).await;
    }

    /// Serves the friend's streams on one connection until it closes. A chat stream carries one or more
    /// frames in order; each is committed and then acknowledged on the same stream, in the same order. A
    /// stream that opens with a file fetch carries that file's bytes back instead.
    async fn serve_streams(self: Arc<Self>, conn: quinn::Connection, friend: String) {
        let Some(fp) = peer_fingerprint(&conn) else { return };
        let mut streams = tokio::task::JoinSet::new();
        while let Ok((send, recv)) = conn.accept_bi().await {
            while streams.try_join_next().is_some() {}
            streams.spawn(self.clone().serve_stream(friend.clone(), fp, send, recv));
        }
        // Let the streams already read finish their commits (their connection is gone, not their data).
        while streams.join_next().await.is_some() {}
    }

    async fn serve_stream(
        self: Arc<Self>,
        friend: String,
        fp: certs::Fingerprint,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) {
        let mut first = true;
        loop {
            let frame = match tokio::time::timeout(FRAME_TIMEOUT, read_frame::<PeerFrame, _>(&mut recv)).await {
                Ok(Ok(Some(frame))) => frame,
                Ok(Ok(None)) | Err(_) => break,
                Ok(Err(e)) => {
                    let _ = write_frame(&mut send, &PeerAck::Refused(format!("bad frame: {e}"))).await;
                    break;
                }
            };
            // Checked per frame, not once per connection: a friendship can end while its connection is open.
            if matches!(frame, PeerFrame::Chat(_) | PeerFrame::ChatBatch(_) | PeerFrame::Search(_))
                && !self.direct.is_friend(&friend)
            {
                let _ = write_frame(&mut send, &PeerAck::Refused(format!("{friend} is not a friend"))).await;
                break;
            }
            let ack = match frame {
                PeerFrame::Chat(c) => self.receive(&friend, vec![c], true).await,
                PeerFrame::ChatBatch(v) => self.receive(&friend, v, false).await,
                PeerFrame::FileOffer(offer) => Some(self.on_offer(&friend, offer).await),
                PeerFrame::FileCancel { id, declined, reason } => {
                    Some(self.on_cancel(&friend, id, declined, &reason).await)
                }
                PeerFrame::FileFetch { id, offset } if first => {
                    let short = id.to_string();
                    let span = tracing::info_span!("transfer", id = crate::output::short_id(&short), side = "sending");
                    return self.serve_fetch(&friend, id, offset, send, recv).instrument(span).await;
                }
                PeerFrame::FileFetch { .. } | PeerFrame::FileResult { .. } => {
                    Some(PeerAck::Refused("a file fetch must open its own stream".into()))
                }
                PeerFrame::Search(ask) => Some(self.join_search(&friend, fp, ask).await),
            };
            first = false;
            let Some(ack) = ack else {
                // Not stored: no acknowledgement, so the sender keeps the messages and retries.
                let _ = send.reset(quinn::VarInt::from_u32(1));
                return;
            };
            if write_frame(&mut send, &ack).await.is_err() {
                break;
            }
        }
        let _ = send.finish();
        let _ = send.stopped().await;
    }

    /// Commits incoming messages, then acknowledges them; `None` (no acknowledgement) if they could not be
    /// stored. A retried id is acknowledged without a second copy.
    async fn receive(&self, from: &str, chats: Vec<Chat>, single: bool) -> Option<PeerAck> {
        let mut acks = Vec::with_capacity(chats.len());
        let mut rows = Vec::with_capacity(chats.len());
        for c in &chats {
            match check_text(&c.text) {
                Ok(()) => {
                    acks.push(PeerAck::Stored);
                    rows.push((c.id.to_string(), c.text.clone(), c.sent_at));
                }
                Err(e) => acks.push(PeerAck::Refused(e)),
            }
        }
        let fresh = match history::insert_incoming(&self.home.db, from, &rows, now_ms()).await {
            Ok(f) => f.into_iter().collect::<HashSet<_>>(),
            Err(e) => {
                tracing::error!(error = %e, "could not store incoming messages");
                return None;
            }
        };
        let at = now_ms();
        for (id, text, sent_at) in rows {
            if fresh.contains(&id) {
                self.emit(AgentEvent::MessageReceived { from: from.to_string(), id, text, sent_at, at });
            }
        }
        Some(if single { acks.remove(0) } else { PeerAck::Batch(acks) })
    }
}

/// The application protocol a connection agreed on.
pub(crate) fn alpn(conn: &quinn::Connection) -> Option<Vec<u8>> {
    conn.handshake_data()?.downcast::<quinn::crypto::rustls::HandshakeData>().ok()?.protocol
}
