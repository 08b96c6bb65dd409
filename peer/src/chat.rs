//! One-to-one chat, sending: the agent's outbox (ordered, de-duplicated, surviving restarts). The rules are
//! in `core::outbox`; receiving is in `inbound`.
//!
//! Sends are group-committed: the outbox task takes every `peer send` waiting at that moment, stores them
//! in one statement, and delivers each friend's pending messages as one batch on one stream, so that a burst
//! costs a few database statements and one round trip instead of that many per message. Order is the order
//! of storing, per friend, and delivery stops at the first message that cannot be delivered.

use crate::agent::{Agent, Reach, now_ms, random_id};
use crate::core::outbox::{self, Batch, Mail};
use crate::direct::Direct;
use crate::history::{self, Status};
use anyhow::Result;
use shared::control::{AgentEvent, ControlErrorCode as Code, ControlResponse, MessageStatus};
use shared::peer::{Chat, MessageId, PeerAck, PeerFrame, batches, check_text};
use shared::proto::DeviceEndpoint;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

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
    /// Delivered, in order.
    delivered: Vec<String>,
    /// In the mailbox of every device of the friend's that was not reached.
    sent: Vec<String>,
    failed: HashMap<String, String>,
    /// What to copy to this account's other devices once the senders have their answers: the messages,
    /// and whether a device of the friend's stored them already.
    copies: Vec<(Vec<Chat>, bool)>,
    /// The delivered ones are marked in the database already (else that waits until the senders have their
    /// answer: [`Agent::record`]).
    recorded: bool,
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

    /// Asks for what is stored for the friend to be delivered again, through the friend's one run.
    pub(crate) fn retry_outbox(self: &Arc<Self>, friend: &str) {
        if self.outboxes.lock().retry(friend) {
            self.tasks.spawn(self.clone().friend_worker(friend.to_string()));
        }
    }

    /// The friend's one delivery run: new sends (answering each `peer send` with its outcome) and retries
    /// of the stored backlog, one batch at a time (`core::outbox::Queues`), so that order holds without a
    /// lock of its own. Sends arriving during a batch go in the next, so a burst costs a few batches of one
    /// multi-row INSERT, one exchange and one UPDATE each.
    async fn friend_worker(self: Arc<Self>, friend: String) {
        loop {
            let next = self.outboxes.lock().next_batch(&friend);
            let (batch, clean) = match next {
                None => return,
                Some(Batch::Backlog) => {
                    let run = self.deliver_pending(&friend).await;
                    match run {
                        Ok(mut report) => {
                            self.outboxes.lock().finished(&friend, true);
                            self.copy_out(&friend, &mut report).await;
                        }
                        Err(e) => {
                            tracing::debug!(friend, error = %e, "messages stay queued");
                            self.outboxes.lock().finished(&friend, false);
                        }
                    }
                    continue;
                }
                Some(Batch::Sends { items, clean }) => (items, clean),
            };
            let run = self.deliver_batch(&friend, &batch, clean).await;
            let all_done = matches!(&run, Ok(r) if r.delivered.len() + r.sent.len() == batch.len());
            let delivered: HashSet<&str> = run.iter().flat_map(|r| r.delivered.iter().map(String::as_str)).collect();
            let sent: HashSet<&str> = run.iter().flat_map(|r| r.sent.iter().map(String::as_str)).collect();
            for out in batch {
                let outcome = if sent.contains(out.id.as_str()) {
                    ControlResponse::Sent { id: out.id.clone(), status: MessageStatus::Sent, detail: None }
                } else {
                    self.outcome(&out.id, delivered.contains(out.id.as_str()), &run).await
                };
                let took = out.taken.elapsed();
                let _ = out.reply.send(outcome);
                // Off unless asked for (`PEER_LOG=peer::latency=debug`): the agent's own share of a send,
                // logged after the answer so that logging it adds nothing to it.
                tracing::debug!(target: "peer::latency", us = took.as_micros() as u64, "send answered");
            }
            self.outboxes.lock().finished(&friend, all_done);
            if let Ok(mut report) = run {
                self.record(&friend, &mut report).await;
                self.copy_out(&friend, &mut report).await;
            }
        }
    }

    /// Copies what a run settled to this account's other devices, in the run's order (it is still the
    /// friend's one run, so copies keep the order of sending).
    async fn copy_out(&self, friend: &str, report: &mut Report) {
        for (chats, delivered) in std::mem::take(&mut report.copies) {
            self.copy_to_own_devices(friend, chats, delivered).await;
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
            // A refusal, or a seal into the friend's mailbox, may have been recorded before the row existed
            // (left `sending`, it would be sealed again by the next retry).
            for id in report.failed.keys() {
                history::set_status(&self.home.db, id, MessageStatus::Failed).await?;
            }
            if !report.sent.is_empty() {
                history::set_status_many(&self.home.db, &report.sent, MessageStatus::Sent).await?;
            }
        }
        run
    }

    /// Where message `id` ended up after a delivery run (`delivered`: the run says it was).
    async fn outcome(&self, id: &str, delivered: bool, run: &Result<Report>) -> ControlResponse {
        let (status, detail) = match run {
            Ok(_) if delivered => (MessageStatus::Delivered, None),
            Ok(r) if r.failed.contains_key(id) => (MessageStatus::Failed, r.failed.get(id).cloned()),
            // Not in this run's report (it settled only what it sent): as recorded.
            Ok(_) => match history::status(&self.home.db, id).await {
                Ok(Some(Status::Out(s @ (MessageStatus::Delivered | MessageStatus::Failed | MessageStatus::Sent)))) => {
                    (s, None)
                }
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
    /// Only ever called from the friend's one run. `Err` means the rest stay queued.
    async fn deliver_pending(&self, friend: &str) -> Result<Report> {
        let pending = history::pending(&self.home.db, friend).await?;
        if pending.is_empty() {
            return Ok(Report::default());
        }
        let mut report = self.deliver(friend, &pending).await?;
        self.record(friend, &mut report).await;
        Ok(report)
    }

    /// Marks delivered messages and tells watchers (after the senders have their answers), once per report.
    async fn record(&self, friend: &str, report: &mut Report) {
        if std::mem::replace(&mut report.recorded, true) || report.delivered.is_empty() {
            return;
        }
        if let Err(e) = history::set_status_many(&self.home.db, &report.delivered, MessageStatus::Delivered).await {
            // They stay `sending` and are sent again later: the friend's agent stores each id once.
            tracing::warn!(error = %e, "could not record delivered messages");
            return;
        }
        let at = now_ms();
        for id in &report.delivered {
            self.emit(AgentEvent::MessageDelivered { to: friend.to_string(), id: id.clone(), at });
        }
    }

    /// Sends messages in order, stopping at the first that cannot be delivered (so that order holds): to
    /// each of the friend's online devices directly (or relayed), and, sealed, into the mailbox of each of
    /// their devices that did not store them that way. `Err` means the rest stay queued. Only the friend's
    /// one run calls it; the caller records the report.
    async fn deliver(&self, friend: &str, pending: &[history::Message]) -> Result<Report> {
        let devices = match self.devices_of(friend).await {
            Ok(d) => d,
            Err(Reach::NotFriends(why)) => {
                for m in pending {
                    self.fail(friend, &m.id, &why).await?;
                }
                return Err(anyhow::anyhow!("{why}"));
            }
            // A held key holds the mailbox too; a broker out of reach has no mailbox either.
            Err(Reach::Unreachable(why) | Reach::Held(why)) => return self.queue(pending, &why).await,
        };
        // An id that does not parse means a damaged database: nothing is sent under a made-up id.
        let chats = pending
            .iter()
            .map(|m| Ok(Chat { id: m.id.parse()?, sent_at: m.sent_at, text: m.text.clone() }))
            .collect::<Result<Vec<Chat>>>()?;
        let frames = batches(chats.clone());
        let direct = async {
            let mut answers = Vec::new();
            let mut errors = Vec::new();
            for device in &devices {
                match self.send_to_device(friend, device, &frames).await {
                    Ok((acks, err)) => {
                        answers.push((device.fingerprint, acks));
                        if let Some(e) = err {
                            errors.push(e.to_string());
                            self.direct.forget_devices(friend);
                        }
                    }
                    Err(e) => errors.push(e.to_string()),
                }
            }
            (answers, errors)
        };
        // The friend's mailboxes are looked up while the direct attempts run (usually known already).
        let ((answers, mut errors), boxes) = tokio::join!(direct, self.mailboxes_of(friend));
        if answers.is_empty() {
            self.direct.forget_devices(friend);
        } else if errors.is_empty() {
            self.direct.remember_devices(friend, devices.clone());
        }
        if devices.is_empty() {
            errors.insert(0, format!("{friend} is offline"));
        }
        let acks: Vec<Vec<PeerAck>> = answers.iter().map(|(_, a)| a.clone()).collect();
        let refused: HashSet<usize> =
            outbox::settle(pending.len(), &acks, &Mail::default()).failed.iter().map(|(i, _)| *i).collect();
        let mut mail = Mail::default();
        match boxes {
            Ok(boxes) => {
                mail.devices = boxes.iter().map(|b| b.fingerprint).collect();
                for (device, need) in crate::core::mailbox::missing(pending.len(), &answers, &mail.devices, &refused) {
                    let Some(keys) = boxes.iter().find(|b| b.fingerprint == device) else { continue };
                    let (went, err) = self.post_chats(friend, keys, &chats, &need).await;
                    mail.deposited.extend(need[..went].iter().map(|i| (device, *i)));
                    if let Some(e) = err {
                        errors.push(e);
                    }
                }
            }
            Err(why) if devices.is_empty() || answers.len() < devices.len() => errors.push(why),
            Err(why) => tracing::debug!(friend, why, "no mailbox for the friend's other devices"),
        }
        let settled = outbox::settle(pending.len(), &acks, &mail);
        let mut report = Report::default();
        for (i, why) in &settled.failed {
            self.fail(friend, &pending[*i].id, why).await?;
            report.failed.insert(pending[*i].id.clone(), why.clone());
        }
        report.delivered = settled.delivered.iter().map(|i| pending[*i].id.clone()).collect();
        report.sent = settled.sent.iter().map(|i| pending[*i].id.clone()).collect();
        if !report.sent.is_empty() {
            history::set_status_many(&self.home.db, &report.sent, MessageStatus::Sent).await?;
            let at = now_ms();
            for id in &report.sent {
                self.emit(AgentEvent::MessageSent { to: friend.to_string(), id: id.clone(), at });
            }
            tracing::info!(friend, count = report.sent.len(), "messages sealed into the friend's mailbox");
        }
        let pick = |idx: &[usize]| idx.iter().map(|i| chats[*i].clone()).collect::<Vec<Chat>>();
        report.copies = vec![(pick(&settled.delivered), true), (pick(&settled.sent), false)];
        match settled.queued_from {
            Some(i) => {
                self.record(friend, &mut report).await;
                self.copy_out(friend, &mut report).await;
                self.queue(&pending[i..], &errors.join("; ")).await
            }
            None => Ok(report),
        }
    }

    /// Seals the messages at `need` (indexes into `chats`, in order) into letters to one device and deposits
    /// them; how many of `need` went, and why the rest did not.
    async fn post_chats(
        &self,
        friend: &str,
        to: &shared::mailbox::MailboxKeys,
        chats: &[Chat],
        need: &[usize],
    ) -> (usize, Option<String>) {
        let letters = shared::mailbox::letters(need.iter().map(|i| chats[*i].clone()).collect());
        let sizes: Vec<usize> = letters.iter().map(Vec::len).collect();
        let bodies = letters.into_iter().map(shared::mailbox::LetterBody::Chat).collect();
        let (went, err) = self.post(friend, to, bodies).await;
        (sizes[..went].iter().sum(), err)
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

    /// Retries every friend with pending messages (after reconnecting, and periodically), each through
    /// that friend's run.
    pub(crate) async fn deliver_all(self: Arc<Self>) {
        let Ok(peers) = history::peers_with_pending(&self.home.db).await else { return };
        for p in peers {
            self.retry_outbox(&p);
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
}
