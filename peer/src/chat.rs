//! One-to-one chat: the agent's outbox (ordered, de-duplicated, surviving restarts) and its inbox (commit,
//! then acknowledge).
//!
//! Sends are group-committed: the outbox task takes every `peer send` waiting at that moment, stores them
//! in one statement, and delivers each friend's pending messages as one batch on one stream, so that a burst
//! costs a few database statements and one round trip instead of that many per message. Order is the order
//! of storing, per friend, and delivery stops at the first message that cannot be delivered.

use crate::agent::{Agent, Reach, now_ms, random_id};
use crate::core::outbox::{self, Batch};
use crate::direct::{Direct, peer_fingerprint};
use crate::history::{self, Status};
use anyhow::Result;
use shared::control::{AgentEvent, ControlErrorCode as Code, ControlResponse, MessageStatus};
use shared::io::{read_frame, write_frame};
use shared::peer::{Chat, MessageId, PeerAck, PeerFrame, batches, check_text};
use shared::proto::DeviceEndpoint;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

/// How long an incoming stream may take to deliver its frame.
const FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to keep retrying a refused handshake while the friend's agent learns our key from the broker.
pub(crate) const CONNECT_PATIENCE: Duration = Duration::from_secs(5);
/// How often queued messages are retried even without a presence change.
pub(crate) const RETRY_EVERY: Duration = Duration::from_secs(30);

/// A `peer send` waiting for its outcome.
pub(crate) struct Outgoing {
    id: String,
    text: String,
    sent_at: i64,
    /// When the agent took the request: `bench chat` reads how long each took inside the agent.
    taken: std::time::Instant,
    reply: oneshot::Sender<ControlResponse>,
}

/// One try of an exchange with a friend's device.
pub(crate) enum Attempt<T> {
    Done(T),
    /// Worth another try on a fresh connection while patience lasts.
    Retry(anyhow::Error),
}

/// What one delivery run settled.
#[derive(Default)]
struct Report {
    delivered: HashSet<String>,
    failed: HashMap<String, String>,
    /// Delivered, in order: their status is recorded after the senders have their answer.
    to_record: Vec<String>,
}

impl Agent {
    /// `peer send`: hands the message to the friend's outbox and waits for its outcome.
    pub(crate) async fn send_message(self: &Arc<Self>, to: &str, text: &str) -> ControlResponse {
        if let Err(e) = check_text(text) {
            return ControlResponse::failed(Code::InvalidText, e);
        }
        if to == self.account.username {
            return ControlResponse::failed(Code::InvalidRequest, "you cannot send messages to yourself");
        }
        let (reply, outcome) = oneshot::channel();
        let out = Outgoing {
            id: MessageId(random_id()).to_string(),
            text: text.to_string(),
            sent_at: now_ms(),
            taken: std::time::Instant::now(),
            reply,
        };
        let spawn = self.outboxes.lock().push(to, out);
        if spawn {
            self.tasks.spawn(self.clone().friend_worker(to.to_string()));
        }
        outcome.await.unwrap_or_else(|_| ControlResponse::failed(Code::Stopping, "the agent is stopping"))
    }

    /// Delivers a friend's sends until none are waiting, answering each `peer send` with its outcome. At
    /// most one per friend runs; sends arriving during a run go in the next, so a burst costs a few runs of
    /// one multi-row INSERT, one exchange and one UPDATE each.
    async fn friend_worker(self: Arc<Self>, friend: String) {
        loop {
            let Some(Batch { items: batch, clean }) = self.outboxes.lock().next_batch(&friend) else { return };
            let run = self.deliver_batch(&friend, &batch, clean).await;
            let all_done = matches!(&run, Ok(r) if r.delivered.len() == batch.len());
            for out in batch {
                let outcome = self.outcome(&out.id, &run).await;
                // Off unless asked for (`PEER_LOG=peer::latency=debug`): the agent's own share of a send.
                tracing::debug!(target: "peer::latency", us = out.taken.elapsed().as_micros() as u64, "send answered");
                let _ = out.reply.send(outcome);
            }
            if let Ok(report) = &run {
                self.record(&friend, report).await;
            }
            self.outboxes.lock().finished(&friend, all_done);
        }
    }

    /// Stores a batch of new sends and delivers it. With nothing older waiting (`clean`) the batch goes from
    /// memory, sent while it is being stored (it is answered once both are done); otherwise it is stored and
    /// then everything pending to the friend goes, oldest first.
    async fn deliver_batch(&self, friend: &str, batch: &[Outgoing], clean: bool) -> Result<Report> {
        let rows: Vec<(String, String, String)> =
            batch.iter().map(|o| (o.id.clone(), friend.to_string(), o.text.clone())).collect();
        let at = batch.first().map_or_else(now_ms, |o| o.sent_at);
        if !clean {
            history::insert_outgoing(&self.home.db, &rows, at)
                .await
                .map_err(|e| anyhow::anyhow!("could not store the message: {e}"))?;
            return self.deliver_pending(friend).await;
        }
        let _turn = self.turn(friend).await;
        let pending: Vec<history::Message> = batch
            .iter()
            .map(|o| history::Message {
                local_id: 0,
                id: o.id.clone(),
                peer: friend.to_string(),
                outgoing: true,
                text: o.text.clone(),
                sent_at: at,
                stored_at: at,
                status: Status::Out(MessageStatus::Sending),
            })
            .collect();
        let (stored, run) =
            tokio::join!(history::insert_outgoing(&self.home.db, &rows, at), self.deliver(friend, &pending));
        stored.map_err(|e| anyhow::anyhow!("could not store the message (it may have reached {friend}): {e}"))?;
        if let Ok(report) = &run {
            // A refusal may have been recorded before the row existed.
            for id in report.failed.keys() {
                history::set_status(&self.home.db, id, MessageStatus::Failed).await?;
            }
        }
        run
    }

    /// The friend's turn: one delivery to a friend at a time, so that order holds.
    async fn turn(&self, friend: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let gate = self.outbox_locks.lock().entry(friend.to_string()).or_default().clone();
        gate.lock_owned().await
    }

    /// Where message `id` ended up after a delivery run.
    async fn outcome(&self, id: &str, run: &Result<Report>) -> ControlResponse {
        let (status, detail) = match run {
            Ok(r) if r.delivered.contains(id) => (MessageStatus::Delivered, None),
            Ok(r) if r.failed.contains_key(id) => (MessageStatus::Failed, r.failed.get(id).cloned()),
            // Settled by an earlier run (it held the friend's turn when this one was stored).
            Ok(_) => match history::status(&self.home.db, id).await {
                Ok(Some(Status::Out(MessageStatus::Delivered))) => (MessageStatus::Delivered, None),
                Ok(Some(Status::Out(MessageStatus::Failed))) => (MessageStatus::Failed, None),
                _ => (MessageStatus::Queued, None),
            },
            // Queued only if it is stored: a message that could not be stored (a full disk) is an error for
            // `peer send` to report, never "queued" (nothing would ever deliver it).
            Err(e) => match history::status(&self.home.db, id).await {
                Ok(Some(Status::Out(MessageStatus::Failed))) => (MessageStatus::Failed, Some(e.to_string())),
                Ok(Some(_)) => (MessageStatus::Queued, Some(e.to_string())),
                Ok(None) => {
                    return ControlResponse::failed(Code::Storage, format!("{e:#}; nothing was queued, send it again"));
                }
                Err(read) => {
                    return ControlResponse::failed(
                        Code::Storage,
                        format!(
                            "{e:#}; and its state cannot be read ({read}): check `peer history` before sending again"
                        ),
                    );
                }
            },
        };
        ControlResponse::Sent { id: id.to_string(), status, detail }
    }

    /// Delivers the friend's pending messages from the database, oldest first, and records the outcome.
    /// One delivery per friend at a time. `Err` means the rest stay queued.
    async fn deliver_pending(&self, friend: &str) -> Result<Report> {
        let _turn = self.turn(friend).await;
        let pending = history::pending(&self.home.db, friend).await?;
        if pending.is_empty() {
            return Ok(Report::default());
        }
        let report = self.deliver(friend, &pending).await?;
        self.record(friend, &report).await;
        Ok(Report { to_record: Vec::new(), ..report })
    }

    /// Marks delivered messages and tells watchers (after the senders have their answers).
    async fn record(&self, friend: &str, report: &Report) {
        if report.to_record.is_empty() {
            return;
        }
        if let Err(e) = history::set_status_many(&self.home.db, &report.to_record, MessageStatus::Delivered).await {
            // They stay `sending` and are sent again later: the friend's agent stores each id once.
            tracing::warn!(error = %e, "could not record delivered messages");
            return;
        }
        let at = now_ms();
        for id in &report.to_record {
            self.emit(AgentEvent::MessageDelivered { to: friend.to_string(), id: id.clone(), at });
        }
    }

    /// Sends messages in order, stopping at the first that cannot be delivered (so that order holds).
    /// `Err` means the rest stay queued. The caller holds the friend's turn and records the report.
    async fn deliver(&self, friend: &str, pending: &[history::Message]) -> Result<Report> {
        let devices = match self.devices_of(friend).await {
            Ok(d) => d,
            Err(Reach::NotFriends(why)) => {
                for m in pending {
                    self.fail(friend, &m.id, &why).await?;
                }
                return Err(anyhow::anyhow!("{why}"));
            }
            Err(Reach::Unreachable(why)) => return self.queue(pending, &why).await,
        };
        if devices.is_empty() {
            return self.queue(pending, &format!("{friend} is offline")).await;
        }
        // An id that does not parse means a damaged database: nothing is sent under a made-up id.
        let chats = pending
            .iter()
            .map(|m| Ok(Chat { id: m.id.parse()?, sent_at: m.sent_at, text: m.text.clone() }))
            .collect::<Result<Vec<Chat>>>()?;
        let frames = batches(chats);
        let mut answers = Vec::new();
        let mut errors = Vec::new();
        for device in &devices {
            match self.send_to_device(friend, device, &frames).await {
                Ok((acks, err)) => {
                    answers.push(acks);
                    if let Some(e) = err {
                        errors.push(e.to_string());
                        self.devices.lock().remove(friend);
                    }
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        if answers.is_empty() {
            self.devices.lock().remove(friend);
            return self.queue(pending, &errors.join("; ")).await;
        }
        if errors.is_empty() {
            self.devices.lock().insert(friend.to_string(), devices);
        }
        let settled = outbox::settle(pending.len(), &answers);
        let mut report = Report::default();
        for (i, why) in &settled.failed {
            self.fail(friend, &pending[*i].id, why).await?;
            report.failed.insert(pending[*i].id.clone(), why.clone());
        }
        report.to_record = settled.delivered.iter().map(|i| pending[*i].id.clone()).collect();
        report.delivered = report.to_record.iter().cloned().collect();
        match settled.queued_from {
            Some(i) => {
                self.record(friend, &report).await;
                self.queue(&pending[i..], &errors.join("; ")).await
            }
            None => Ok(report),
        }
    }

    /// Runs `attempt` on a connection to one device, retrying it for a few seconds on a fresh connection
    /// while it asks to. The friend's agent learns our key through the broker at the same moment as we learn
    /// theirs, and in TLS 1.3 a client's handshake completes before the server has checked the client's
    /// certificate: a refusal shows up as the connection closing before any answer. Once patience is out,
    /// the last error is the outcome.
    pub(crate) async fn patiently<T, F, Fut>(&self, friend: &str, device: &DeviceEndpoint, mut attempt: F) -> Result<T>
    where
        F: FnMut(quinn::Connection) -> Fut,
        Fut: std::future::Future<Output = Attempt<T>>,
    {
        let deadline = tokio::time::Instant::now() + CONNECT_PATIENCE;
        loop {
            let patient = tokio::time::Instant::now() < deadline;
            match self.direct.connect(friend, device).await {
                Ok(conn) => match attempt(conn).await {
                    Attempt::Done(v) => return Ok(v),
                    Attempt::Retry(e) if !patient => return Err(e),
                    Attempt::Retry(e) => tracing::debug!(friend, error = %e, "not answered yet; retrying"),
                },
                Err(e) if !patient => return Err(e),
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Sends the frames to one device (see [`Agent::patiently`]): the answers, and what cut them short.
    async fn send_to_device(
        &self,
        friend: &str,
        device: &DeviceEndpoint,
        frames: &[PeerFrame],
    ) -> Result<(Vec<PeerAck>, Option<anyhow::Error>)> {
        self.patiently(friend, device, |conn| async move {
            let (acks, err) = Direct::send_batch(&conn, frames).await;
            match err {
                Some(e) if acks.is_empty() && conn.close_reason().is_some() => Attempt::Retry(e),
                err => Attempt::Done((acks, err)),
            }
        })
        .await
    }

    /// Retries every friend with pending messages (after reconnecting, on a friend coming online, and
    /// periodically).
    pub(crate) async fn deliver_all(self: Arc<Self>) {
        let Ok(peers) = history::peers_with_pending(&self.home.db).await else { return };
        for p in peers {
            self.deliver_to(&p).await;
        }
    }

    /// Retries one friend, logging rather than reporting.
    pub(crate) async fn deliver_to(&self, friend: &str) {
        if let Err(e) = self.deliver_pending(friend).await {
            tracing::debug!(friend, error = %e, "messages stay queued");
        }
    }

    /// Marks messages queued; always `Err(why)`, for the caller to return.
    async fn queue(&self, msgs: &[history::Message], why: &str) -> Result<Report> {
        let ids: Vec<String> = msgs.iter().map(|m| m.id.clone()).collect();
        history::set_status_many(&self.home.db, &ids, MessageStatus::Queued).await?;
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
        mut opened: mpsc::UnboundedReceiver<(quinn::Connection, String)>,
    ) {
        // Handshakes and the connections' stream servers, owned by this loop: they end with it.
        let mut conns = tokio::task::JoinSet::new();
        loop {
            while conns.try_join_next().is_some() {}
            tokio::select! {
                incoming = self.endpoint.accept() => {
                    let Some(incoming) = incoming else { return };
                    let agent = self.clone();
                    conns.spawn(async move {
                        let connecting = if crate::relay::is_relay_addr(&incoming.remote_address()) {
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
                Some((conn, friend)) = opened.recv() => {
                    conns.spawn(self.clone().serve_streams(conn, friend));
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
        let mut streams = tokio::task::JoinSet::new();
        while let Ok((send, recv)) = conn.accept_bi().await {
            while streams.try_join_next().is_some() {}
            streams.spawn(self.clone().serve_stream(friend.clone(), send, recv));
        }
        // Let the streams already read finish their commits (their connection is gone, not their data).
        while streams.join_next().await.is_some() {}
    }

    async fn serve_stream(self: Arc<Self>, friend: String, mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
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
            if matches!(frame, PeerFrame::Chat(_) | PeerFrame::ChatBatch(_)) && !self.direct.is_friend(&friend) {
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
