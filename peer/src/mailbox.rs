//! The sealed mailbox, the agent's side: this device's mailbox keys (published with its record), friends'
//! and our own devices' keys as their account keys certified them, sealing and depositing letters, and
//! picking up what waits for this device. The rules are in `core::mailbox`; sealing is `certs::seal`.
//!
//! What goes by mail: messages to a friend's devices that could not be reached directly or through the
//! relay (`chat.rs` decides, per device), copies of what this device sent to the account's other devices,
//! and receipts telling a friend's devices that their messages are stored here.

use crate::agent::{Agent, now_ms};
use crate::core::mailbox::{self as rules, Writer};
use crate::history;
use anyhow::Result;
use certs::seal::MailboxKeyPair;
use parking_lot::Mutex;
use shared::control::{AgentEvent, ControlResponse, MessageStatus};
use shared::mailbox::{Deposit, Letter, LetterBody, MailboxKeys};
use shared::peer::{Chat, MessageId};
use shared::proto::{ErrorCode, Request, Response};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a user's certified mailbox keys are used before they are asked for again (presence changes
/// and revocations forget them sooner).
const KEYS_FRESH: Duration = Duration::from_secs(300);
/// Letters asked for per pickup request (the broker answers with as many as fit one frame).
const PICKUP_PAGE: u32 = 500;
/// Receipts per letter (16 bytes each and a little framing, well inside a letter's budget).
const RECEIPTS_PER_LETTER: usize = 1000;

/// This device's mailbox keys and the keys it knows of others'.
pub(crate) struct Mail {
    pub(crate) keys: MailboxKeyPair,
    known: Mutex<HashMap<String, (Instant, Vec<MailboxKeys>)>>,
}

/// What became of one letter picked up.
enum Read {
    /// Checked: store what it says.
    Take(Letter),
    /// Never good: dropped (and acknowledged, so the broker deletes it), with why.
    Drop(String),
    /// Not now (the sender's key changed and is held, the broker did not answer): left for a later pickup.
    Keep(String),
}

impl Mail {
    pub(crate) fn load(home: &crate::home::Home) -> Result<Self> {
        let keys = MailboxKeyPair::load_or_create(&home.dir.join("mailbox.key"))?;
        Ok(Self { keys, known: Mutex::default() })
    }

    /// Forgets what is known of a user's devices' keys (their devices changed).
    pub(crate) fn forget(&self, user: &str) {
        self.known.lock().remove(user);
    }
}

/// Why the mailbox cannot take something, for the sender's "queued" answer.
fn refusal(e: &shared::proto::ErrorBody) -> String {
    match e.code {
        ErrorCode::MailboxOff => "and the broker keeps no mailbox (it runs with --no-mailbox)".into(),
        _ => format!("and the mailbox refused it: {}", e.message),
    }
}

impl Agent {
    /// Publishes this device's mailbox keys, certified by the account key (after its record).
    pub(crate) async fn publish_mailbox(
        &self,
        conn: &quinn::Connection,
        key: &certs::account::AccountKeyPair,
        created_at: i64,
    ) {
        let keys = key.sign(MailboxKeys {
            username: self.account.username.clone(),
            fingerprint: self.device_fingerprint().0,
            seal_key: self.mail.keys.seal_key(),
            verify_key: self.mail.keys.verify_key(),
            created_at,
        });
        match crate::net::request(conn, &Request::PublishMailbox { keys }).await {
            Ok(Response::Ok) => tracing::debug!("mailbox keys published"),
            Ok(Response::Error(e)) if e.code == ErrorCode::MailboxOff => {
                tracing::info!("the broker keeps no mailbox: messages to offline friends wait on this device")
            }
            other => tracing::warn!(answer = ?other, "could not publish this device's mailbox keys"),
        }
    }

    /// The mailbox keys of `user`'s devices (a friend's, or this account's) that their account key
    /// certified. `Err`: why none can be used now.
    pub(crate) async fn mailboxes_of(&self, user: &str) -> Result<Vec<MailboxKeys>, String> {
        if let Some((at, keys)) = self.mail.known.lock().get(user)
            && at.elapsed() < KEYS_FRESH
        {
            return Ok(keys.clone());
        }
        // This device's own account key, checked before asking (an unlinked device has none: no request).
        let own = if user == self.account.username {
            match self.home.account_key().map_err(|e| e.to_string())? {
                Some(k) => Some(k.public()),
                None => return Err("this device is not linked to the account".into()),
            }
        } else {
            None
        };
        let (account_key, served) = match self.broker.forward(&Request::Mailboxes { username: user.to_string() }).await
        {
            ControlResponse::Broker(Response::Mailboxes { account_key, devices }) => (account_key, devices),
            ControlResponse::Broker(Response::Error(e)) => return Err(refusal(&e)),
            ControlResponse::Failed(e) => return Err(e.message),
            other => return Err(format!("unexpected answer: {other:?}")),
        };
        let keys = if let Some(mine) = own {
            rules::certified(user, &mine, served, &HashSet::new()).0
        } else {
            self.trust.admit_mailboxes(user, account_key, served).await.map_err(|e| e.to_string())??
        };
        self.mail.known.lock().insert(user.to_string(), (Instant::now(), keys.clone()));
        Ok(keys)
    }

    /// Seals each body into a letter to one device and deposits them in order; how many went before the
    /// first that did not, and why that one did not.
    pub(crate) async fn post(&self, user: &str, to: &MailboxKeys, bodies: Vec<LetterBody>) -> (usize, Option<String>) {
        let mut went = 0;
        for body in bodies {
            let letter = Letter {
                from: self.account.username.clone(),
                from_device: self.device_fingerprint().0,
                to: user.to_string(),
                to_device: to.fingerprint,
                written_at: now_ms(),
                body,
            };
            let blob = match self.mail.keys.seal_letter(letter, to) {
                Ok(b) => b,
                Err(e) => return (went, Some(format!("could not seal a letter: {e}"))),
            };
            let req = Request::Deposit { username: user.to_string(), device: to.fingerprint, blob };
            match self.broker.forward(&req).await {
                ControlResponse::Broker(Response::Ok) => went += 1,
                ControlResponse::Broker(Response::Error(e)) => {
                    if e.code == ErrorCode::UnknownDevice {
                        self.mail.forget(user);
                    }
                    return (went, Some(refusal(&e)));
                }
                ControlResponse::Failed(e) => return (went, Some(e.message)),
                other => return (went, Some(format!("unexpected answer: {other:?}"))),
            }
        }
        (went, None)
    }

    /// Copies what this device sent to `to` into the mailboxes of the account's other devices, so that
    /// each has the same history. Best effort: a copy that cannot be deposited is logged.
    pub(crate) async fn copy_to_own_devices(&self, to: &str, chats: Vec<Chat>, delivered: bool) {
        if chats.is_empty() {
            return;
        }
        let me = self.account.username.clone();
        let mine = self.device_fingerprint().0;
        let devices = match self.mailboxes_of(&me).await {
            Ok(d) => d,
            Err(why) => {
                tracing::debug!(why, "no copies to this account's other devices");
                return;
            }
        };
        for device in devices.iter().filter(|d| d.fingerprint != mine) {
            let bodies = shared::mailbox::letters(chats.clone())
                .into_iter()
                .map(|chats| LetterBody::Copy { to: to.to_string(), chats, delivered })
                .collect();
            if let (_, Some(why)) = self.post(&me, device, bodies).await {
                tracing::warn!(device = %certs::Fingerprint(device.fingerprint), why, "could not copy sent messages to another device of this account");
            }
        }
    }

    /// Leaves a file offer in the mailbox of each of the friend's devices (they are offline): they see it
    /// and can accept it; the bytes go once both are online. `Err(why)`: it could not be left.
    pub(crate) async fn mail_offer(&self, friend: &str, offer: shared::files::FileOffer) -> Result<(), String> {
        let devices = self.mailboxes_of(friend).await?;
        if devices.is_empty() {
            return Err(format!("{friend} has no device that takes letters"));
        }
        for device in &devices {
            if let (_, Some(why)) = self.post(friend, device, vec![LetterBody::FileOffer(offer.clone())]).await {
                return Err(why);
            }
        }
        Ok(())
    }

    /// Tells every device of `friend`'s that these messages of theirs are stored here.
    async fn send_receipts(&self, friend: &str, ids: Vec<MessageId>) {
        let devices = match self.mailboxes_of(friend).await {
            Ok(d) => d,
            Err(why) => {
                tracing::debug!(friend, why, "receipts not sent");
                return;
            }
        };
        for device in &devices {
            let bodies = ids.chunks(RECEIPTS_PER_LETTER).map(|c| LetterBody::Delivered(c.to_vec())).collect();
            if let (_, Some(why)) = self.post(friend, device, bodies).await {
                tracing::info!(friend, why, "could not send delivery receipts");
            }
        }
    }

    /// Picks up every letter waiting for this device: opens and checks each, stores what it says (a page
    /// at a time, de-duplicated by message id), acknowledges the page so the broker deletes it, and then
    /// sends receipts for the messages stored.
    pub(crate) async fn pickup(self: &Arc<Self>) {
        let mut after = 0;
        let mut receipts: HashMap<String, Vec<MessageId>> = HashMap::new();
        let mut refreshed = HashSet::new();
        loop {
            let page = match self.broker.forward(&Request::Pickup { after, limit: PICKUP_PAGE }).await {
                ControlResponse::Broker(Response::Deposits(d)) => d,
                other => {
                    tracing::debug!(answer = ?other, "mailbox pickup stopped");
                    break;
                }
            };
            let Some(last) = page.last() else { break };
            after = last.id;
            let mut acks = Vec::new();
            let mut letters = Vec::new();
            for d in &page {
                match self.read_letter(d, &mut refreshed).await {
                    Read::Take(letter) => {
                        acks.push(d.id);
                        letters.push(letter);
                    }
                    Read::Drop(why) => {
                        tracing::warn!(from = %shared::display::safe(&d.from), letter = d.id, why, "a letter was dropped");
                        acks.push(d.id);
                    }
                    Read::Keep(why) => {
                        tracing::info!(from = %shared::display::safe(&d.from), why, "a letter is left for later")
                    }
                }
            }
            match self.store_letters(letters).await {
                Ok(stored) => {
                    for (from, ids) in stored {
                        receipts.entry(from).or_default().extend(ids);
                    }
                }
                Err(e) => {
                    // Not acknowledged: picked up again next time.
                    tracing::warn!(error = %format!("{e:#}"), "could not store letters; they stay in the mailbox");
                    break;
                }
            }
            if let ControlResponse::Broker(Response::Error(e)) =
                self.broker.forward(&Request::MailboxAck { ids: acks }).await
            {
                tracing::warn!(error = %e, "letters stored but not acknowledged; they come again and are stored once");
            }
        }
        for (friend, ids) in receipts {
            self.send_receipts(&friend, ids).await;
        }
    }

    /// Opens and checks one letter: sealed to this device, signed by a device the sender's account key
    /// certified, addressed to us, and something that writer may send.
    async fn read_letter(&self, d: &Deposit, refreshed: &mut HashSet<String>) -> Read {
        let me = self.device_fingerprint().0;
        let letter = match self.mail.keys.open_letter(&me, &d.blob) {
            Ok(l) => l,
            Err(e) => return Read::Drop(e.to_string()),
        };
        let from = letter.body.from.clone();
        if from != d.from {
            return Read::Drop("the letter names another sender than the one who deposited it".into());
        }
        let writer = if from == self.account.username {
            if letter.body.from_device == me { Writer::Other } else { Writer::OwnDevice }
        } else if self.direct.is_friend(&from) {
            Writer::Friend
        } else {
            Writer::Other
        };
        if let Err(why) = rules::allowed(&letter.body.body, writer) {
            return Read::Drop(why.into());
        }
        loop {
            let keys = match self.mailboxes_of(&from).await {
                Ok(k) => k,
                Err(why) => return Read::Keep(why),
            };
            if let Some(sender) = keys.iter().find(|k| k.fingerprint == letter.body.from_device) {
                return match certs::seal::check_letter(&letter, sender, (&self.account.username, &me)) {
                    Ok(()) => Read::Take(letter.body),
                    Err(e) => Read::Drop(e.to_string()),
                };
            }
            // A device we have not heard of yet: ask once more this pickup, then give up on it.
            if !refreshed.insert(from.clone()) {
                return Read::Drop("its sender device is not certified by the sender's account key".into());
            }
            self.mail.forget(&from);
        }
    }

    /// Stores what a page of letters says; returns, per friend, the ids of their messages now stored here
    /// (for receipts: those stored before too, in case a receipt was lost).
    async fn store_letters(self: &Arc<Self>, letters: Vec<Letter>) -> Result<Vec<(String, Vec<MessageId>)>> {
        let now = now_ms();
        let mut stored: Vec<(String, Vec<MessageId>)> = Vec::new();
        // Consecutive letters of messages from one friend are stored together (a backlog of one-message
        // letters costs a few statements, not one each); order is kept.
        let mut merged: Vec<(String, LetterBody)> = Vec::new();
        for letter in letters {
            match (merged.last_mut(), letter.body) {
                (Some((from, LetterBody::Chat(chats))), LetterBody::Chat(more)) if *from == letter.from => {
                    chats.extend(more);
                }
                (_, body) => merged.push((letter.from, body)),
            }
        }
        for (from, body) in merged {
            match body {
                LetterBody::Chat(chats) => {
                    let rows: Vec<(String, String, i64)> =
                        chats.iter().map(|c| (c.id.to_string(), c.text.clone(), c.sent_at)).collect();
                    let fresh: HashSet<String> =
                        history::insert_incoming(&self.home.db, &from, &rows, now).await?.into_iter().collect();
                    for c in &chats {
                        let id = c.id.to_string();
                        if fresh.contains(&id) {
                            self.emit(AgentEvent::MessageReceived {
                                from: from.clone(),
                                id,
                                text: c.text.clone(),
                                sent_at: c.sent_at,
                                at: now,
                            });
                        }
                    }
                    match stored.iter_mut().find(|(f, _)| *f == from) {
                        Some((_, ids)) => ids.extend(chats.iter().map(|c| c.id)),
                        None => stored.push((from, chats.iter().map(|c| c.id).collect())),
                    }
                }
                LetterBody::Copy { to, chats, delivered } => {
                    let status = if delivered { MessageStatus::Delivered } else { MessageStatus::Sent };
                    let rows: Vec<(String, String, i64)> =
                        chats.iter().map(|c| (c.id.to_string(), c.text.clone(), c.sent_at)).collect();
                    let fresh: HashSet<String> =
                        history::insert_copies(&self.home.db, &to, &rows, status, now).await?.into_iter().collect();
                    for c in chats {
                        let id = c.id.to_string();
                        if fresh.contains(&id) {
                            self.emit(AgentEvent::MessageCopied {
                                to: to.clone(),
                                id,
                                text: c.text,
                                sent_at: c.sent_at,
                                delivered,
                                at: now,
                            });
                        }
                    }
                }
                LetterBody::FileOffer(offer) => {
                    // As if offered directly: recorded and shown; the bytes come once both are online.
                    if let shared::peer::PeerAck::Refused(why) = self.on_offer(&from, offer).await {
                        tracing::info!(friend = from, why, "a file offered by mail was refused");
                    }
                }
                LetterBody::Delivered(ids) => {
                    let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
                    for id in history::mark_delivered(&self.home.db, &from, &ids).await? {
                        self.emit(AgentEvent::MessageDelivered { to: from.clone(), id, at: now });
                    }
                    // A receipt means a device of theirs is online and emptied its mailbox: what still waits
                    // for them here (refused while their mailbox was full, say) goes now, not at the next
                    // periodic retry.
                    self.retry_outbox(&from);
                }
            }
        }
        Ok(stored)
    }

    /// Picks up the mailbox on its own task, coalescing requests that come while one runs.
    pub(crate) fn pickup_soon(self: &Arc<Self>) {
        let agent = self.clone();
        self.session_tasks.spawn_coalesced("pickup".into(), move || {
            let agent = agent.clone();
            async move { agent.pickup().await }
        });
    }
}
