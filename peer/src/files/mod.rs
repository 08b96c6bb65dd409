//! File transfers between friends' agents: offers, accept/decline/cancel, and the byte streams.
//!
//! The receiver pulls (see [`shared::files`]): after an accept it opens a stream asking for the bytes from
//! what its partial file already holds, so a transfer cut by either agent dying or the link dropping resumes
//! from there, started again by the agent itself when both are online (or by running `send-file` again).
//! Disk I/O and hashing run on a blocking thread fed through a small bounded channel, so memory stays
//! constant whatever the file size; file streams have a lower priority than chat on the same connection.
//!
//! Here: offers and the commands (`send-file`, `files accept|decline|cancel`). [`transfer`]: the byte
//! streams of both sides. [`disk`]: the blocking file work. [`live`]: transfers in motion and their signals.

use crate::agent::{Agent, now_ms, random_id};
use crate::chat::Attempt;
use crate::core::transfer as rules;
use crate::transfers::{self, Record};
use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use shared::control::{AgentEvent, ControlError, ControlErrorCode as Code, ControlResponse, Transfer, TransferState};
use shared::files::{FileOffer, OfferAnswer, TransferId, check_space, format_size, numbered_name, sanitize_name};
use shared::io::{read_frame, write_frame};
use shared::peer::{PeerAck, PeerFrame, from_hex, to_hex};
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

mod disk;
mod live;
mod transfer;

pub(crate) use disk::hash_file;
use disk::*;
pub(crate) use live::Live;
use live::*;

/// QUIC chunks taken per read.
const CHUNKS_PER_READ: usize = 64;
/// Most chunks in one block: one `writev`, well under any system's limit on its slices.
const CHUNKS_PER_BLOCK: usize = 512;
/// Stream error code for a cancelled transfer.
const CANCELLED: quinn::VarInt = quinn::VarInt::from_u32(2);
/// A receiver stops a relayed stream with this when it fetches the rest over a direct path: the sender's
/// run ends without recording anything (the new fetch takes the transfer over).
const MOVED: quinn::VarInt = quinn::VarInt::from_u32(3);
/// How long a stream may take to answer a file frame.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// The offer of an outgoing transfer, as it travels.
fn offer_of(t: &Transfer) -> Result<FileOffer> {
    Ok(FileOffer {
        id: t.id.parse()?,
        name: t.name.clone(),
        size: t.size,
        hash: from_hex(&t.hash).ok_or_else(|| anyhow!("transfer {} has a malformed hash recorded", t.id))?,
    })
}

/// Options of `peer up` for incoming files.
#[derive(Debug, Clone)]
pub(crate) struct FilePolicy {
    /// Accept every offered file into this directory.
    pub(crate) auto_accept: Option<PathBuf>,
    /// Refuse offers of files larger than this.
    pub(crate) max_size: u64,
}

/// Why a transfer step stopped.
enum Stop {
    /// Try again later (peer offline, link dropped): the transfer stays where it is.
    Later(String),
    /// Nothing more will happen: the transfer ends in this state.
    Final(TransferState, String),
    /// Cancelled, or a newer run took over: whoever halted it recorded why (a cancel's reason, say), so
    /// this run leaves the records alone.
    Halted,
    /// The receiver's link moved from the relay to a direct path: fetch again at once, over it.
    Moved,
}

impl From<anyhow::Error> for Stop {
    fn from(e: anyhow::Error) -> Self {
        Stop::Later(format!("{e:#}"))
    }
}

impl Agent {
    fn transfer_event(&self, t: &Transfer) {
        self.emit(AgentEvent::FileUpdated { transfer: t.clone(), at: now_ms() });
    }

    fn progress_event(&self, t: &Transfer, bytes: u64) {
        self.emit(AgentEvent::FileProgress {
            id: t.id.clone(),
            peer: t.peer.clone(),
            outgoing: t.outgoing,
            bytes,
            size: t.size,
            at: now_ms(),
        });
    }

    /// Sets a transfer's state and tells watchers. A transfer that ended meanwhile (a cancel racing its
    /// last bytes, say) keeps its end: the error says where it stands.
    async fn settle(&self, id: &str, state: TransferState, error: Option<&str>) -> Result<Transfer> {
        if !transfers::set_state(&self.home.db, id, state, error, now_ms()).await? {
            let t = self.announce(id).await?;
            return Err(not_now(format!("{} is already {}", t.name, t.state.as_str())));
        }
        self.announce(id).await
    }

    /// Records a verified transfer (the receiver: where it was saved) and tells watchers.
    async fn record_done(&self, id: &str, size: u64, saved_as: Option<&str>) -> Result<Transfer> {
        if !transfers::done(&self.home.db, id, size, saved_as, now_ms()).await? {
            let t = self.announce(id).await?;
            return Err(not_now(format!("{} is already {}", t.name, t.state.as_str())));
        }
        self.announce(id).await
    }

    /// A run cut short: the bytes so far are kept, and the transfer waits to resume.
    async fn interrupted(&self, id: &str, bytes: u64, why: &str) -> Result<Transfer> {
        let _ = transfers::set_bytes(&self.home.db, id, bytes, now_ms()).await;
        self.settle(id, TransferState::Transferring, Some(&format!("interrupted: {why}"))).await
    }

    /// Tells watchers where a transfer now stands, as recorded.
    async fn announce(&self, id: &str) -> Result<Transfer> {
        let rec = transfers::get(&self.home.db, id).await?.ok_or_else(|| anyhow!("transfer {id} vanished"))?;
        self.transfer_event(&rec.t);
        Ok(rec.t)
    }

    /// `peer files`.
    pub(crate) async fn list_files(&self) -> ControlResponse {
        match transfers::list(&self.home.db).await {
            Ok(rows) => ControlResponse::Transfers(
                rows.into_iter()
                    .map(|mut r| {
                        self.files.overlay(&mut r.t);
                        r.t
                    })
                    .collect(),
            ),
            Err(e) => ControlResponse::failed(Code::Storage, format!("could not read transfers: {e}")),
        }
    }

    /// `peer send-file`: records the offer (or finds the same file's unfinished transfer) and offers it.
    pub(crate) async fn send_file(
        &self,
        to: &str,
        path: &str,
        name: &str,
        size: u64,
        hash: [u8; 32],
    ) -> ControlResponse {
        answer(self.send_file_inner(to, path, name, size, hash).await)
    }

    async fn send_file_inner(&self, to: &str, path: &str, name: &str, size: u64, hash: [u8; 32]) -> Result<Transfer> {
        if to == self.account.username {
            bail!("you cannot send files to yourself");
        }
        let meta = std::fs::metadata(path).with_context(|| format!("cannot read {path}"))?;
        if !meta.is_file() {
            bail!("{path} is not a regular file");
        }
        if meta.len() != size {
            bail!("{path} changed while it was being hashed; send it again");
        }
        sanitize_name(name).map_err(|e| anyhow!("{e}; pick another with --name"))?;
        let hash_hex = to_hex(&hash);
        let rec = match transfers::find_outgoing(&self.home.db, to, path, &hash_hex, name).await? {
            Some(rec) => rec,
            None => {
                let now = now_ms();
                let rec = Record {
                    t: Transfer {
                        id: TransferId(random_id()).to_string(),
                        peer: to.to_string(),
                        outgoing: true,
                        name: name.to_string(),
                        size,
                        hash: hash_hex,
                        state: TransferState::Waiting,
                        bytes: 0,
                        path: Some(path.to_string()),
                        error: None,
                        resumed_from: 0,
                        created_at: now,
                        updated_at: now,
                    },
                    dir: None,
                };
                transfers::insert(&self.home.db, &rec).await?;
                rec
            }
        };
        if rec.t.state == TransferState::Done {
            return Ok(rec.t);
        }
        let t = self.offer(&rec).await?;
        if t.state != TransferState::Waiting {
            return Ok(t);
        }
        // Not reachable: the offer (never the file) goes to their mailbox, so that they see it and can
        // accept it while we are away; the bytes go once both are online.
        match self.mail_offer(to, offer_of(&t)?).await {
            Ok(()) => {
                let why =
                    format!("{to} is offline: the offer is in their mailbox; the file goes when you are both online");
                self.settle(&t.id, TransferState::Waiting, Some(&why)).await
            }
            Err(why) => {
                tracing::debug!(to, why, "the offer was not left in the mailbox");
                Ok(t)
            }
        }
    }

    /// Offers (again) an outgoing transfer and records where the receiver stands.
    async fn offer(&self, rec: &Record) -> Result<Transfer> {
        let t = &rec.t;
        let (state, error) = match self.exchange(&t.peer, &PeerFrame::FileOffer(offer_of(t)?)).await {
            Ok((_, _, PeerAck::Offer(OfferAnswer::Done))) => return self.record_done(&t.id, t.size, None).await,
            Ok((_, _, PeerAck::Offer(answer))) => rules::after_answer(&answer, &t.peer),
            Ok((_, _, PeerAck::Refused(why))) => (TransferState::Failed, Some(format!("{} refused it: {why}", t.peer))),
            Ok((_, _, other)) => (TransferState::Waiting, Some(format!("unexpected answer: {other:?}"))),
            Err(Stop::Final(state, why)) => (state, Some(why)),
            Err(Stop::Later(why)) => (TransferState::Waiting, Some(why)),
            Err(Stop::Halted | Stop::Moved) => return Ok(t.clone()),
        };
        if (state, error.as_deref()) == (t.state, t.error.as_deref()) {
            return Ok(t.clone());
        }
        self.settle(&t.id, state, error.as_deref()).await
    }

    /// Sends one file frame to the friend's first device that answers, waiting out the moment in which the
    /// friend's agent has not yet heard from the broker that we may connect (as chat does).
    async fn exchange(
        &self,
        friend: &str,
        frame: &PeerFrame,
    ) -> Result<(quinn::SendStream, quinn::RecvStream, PeerAck), Stop> {
        let devices = match self.devices_of(friend).await {
            Ok(d) if d.is_empty() => return Err(Stop::Later(format!("{friend} is offline"))),
            Ok(d) => d,
            Err(crate::agent::Reach::NotFriends(why)) => return Err(Stop::Final(TransferState::Failed, why)),
            Err(crate::agent::Reach::Unreachable(why) | crate::agent::Reach::Held(why)) => {
                return Err(Stop::Later(why));
            }
        };
        let mut errors = Vec::new();
        for device in &devices {
            let exchanged = self
                .patiently(friend, device, |conn| async move {
                    let heard = crate::direct::received(&conn);
                    let exchange = async {
                        let (mut send, mut recv) = conn.open_bi().await?;
                        write_frame(&mut send, frame).await?;
                        let ack = tokio::time::timeout(ANSWER_TIMEOUT, read_frame::<PeerAck, _>(&mut recv))
                            .await
                            .map_err(|_| {
                                crate::direct::close_if_silent(&conn, heard);
                                anyhow!("no answer")
                            })??
                            .ok_or_else(|| anyhow!("the friend's agent closed the stream"))?;
                        Ok::<_, anyhow::Error>((send, recv, ack))
                    };
                    match exchange.await {
                        Ok(r) => Attempt::Done(r),
                        Err(e) => Attempt::Retry(e),
                    }
                })
                .await;
            match exchanged {
                Ok(r) => {
                    self.direct.remember_devices(friend, devices.clone());
                    return Ok(r);
                }
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        self.direct.forget_devices(friend);
        Err(Stop::Later(format!("could not reach {friend}: {}", errors.join("; "))))
    }

    /// A friend offers a file (or offers it again, to learn where we stand).
    pub(crate) async fn on_offer(self: &Arc<Self>, friend: &str, offer: FileOffer) -> PeerAck {
        let id = offer.id.to_string();
        match transfers::get(&self.home.db, &id).await {
            Ok(Some(rec)) if rec.t.peer == friend && !rec.t.outgoing => {
                let answer = rules::answer_repeated_offer(rec.t.state, rec.t.bytes);
                if let OfferAnswer::Receiving { .. } = answer {
                    self.tasks.spawn(self.clone().fetch(id.clone()));
                }
                return PeerAck::Offer(answer);
            }
            Ok(Some(_)) => return PeerAck::Refused("that transfer id is taken".into()),
            Ok(None) => {}
            Err(e) => return PeerAck::Refused(format!("the receiver could not read its database: {e}")),
        }
        let name = match sanitize_name(&offer.name) {
            Ok(n) => n,
            Err(e) => return PeerAck::Refused(e.to_string()),
        };
        if offer.size > self.policy.max_size {
            return PeerAck::Refused(format!(
                "{name} is {}; {} accepts files up to {}",
                format_size(offer.size),
                self.account.username,
                format_size(self.policy.max_size)
            ));
        }
        let now = now_ms();
        let rec = Record {
            t: Transfer {
                id: id.clone(),
                peer: friend.to_string(),
                outgoing: false,
                name,
                size: offer.size,
                hash: to_hex(&offer.hash),
                state: TransferState::Offered,
                bytes: 0,
                path: None,
                error: None,
                resumed_from: 0,
                created_at: now,
                updated_at: now,
            },
            dir: None,
        };
        if let Err(e) = transfers::insert(&self.home.db, &rec).await {
            return PeerAck::Refused(format!("the receiver could not record the offer: {e}"));
        }
        tracing::info!(friend, id, name = rec.t.name, size = rec.t.size, "file offered");
        self.emit(AgentEvent::FileOffered { transfer: rec.t.clone(), at: now });
        if let Some(dir) = self.policy.auto_accept.clone() {
            let agent = self.clone();
            self.tasks.spawn(async move {
                if let ControlResponse::Failed(e) = agent.accept_file(&id, &dir.to_string_lossy()).await {
                    let e = e.message;
                    tracing::warn!(id, error = e, "could not auto-accept a file");
                    let _ = agent.cancel_file(&id, &format!("the receiver could not accept it: {e}")).await;
                }
            });
        }
        PeerAck::Offer(OfferAnswer::Offered)
    }

    /// `peer files accept`.
    pub(crate) async fn accept_file(self: &Arc<Self>, id: &str, dir: &str) -> ControlResponse {
        let result = async {
            let rec = transfers::resolve(&self.home.db, id).await?;
            rules::check_accept(&rec.t).map_err(not_now)?;
            let dir = Path::new(dir);
            if !dir.is_dir() {
                return Err(not_now(format!(
                    "{} is not a directory; create it or pass another with --to",
                    dir.display()
                )));
            }
            let have = std::fs::metadata(partial_path(dir, &rec.t.id)).map(|m| m.len()).unwrap_or(0);
            let free =
                fs4::available_space(dir).with_context(|| format!("cannot check free space in {}", dir.display()))?;
            check_space(rec.t.size, have, free).map_err(|e| {
                not_now(format!(
                    "not enough space in {}: {e}; free some space or accept with --to DIR elsewhere",
                    dir.display()
                ))
            })?;
            transfers::accept(&self.home.db, &rec.t.id, &dir.to_string_lossy(), now_ms()).await?;
            let t = self.announce(&rec.t.id).await?;
            self.tasks.spawn(self.clone().fetch(rec.t.id.clone()));
            Ok(t)
        };
        answer(result.await)
    }

    /// `peer files decline`.
    pub(crate) async fn decline_file(self: &Arc<Self>, id: &str) -> ControlResponse {
        let result = async {
            let rec = transfers::resolve(&self.home.db, id).await?;
            rules::check_decline(&rec.t).map_err(not_now)?;
            let t = self.settle(&rec.t.id, TransferState::Declined, Some("you declined it")).await?;
            self.notify_cancel(&t, true, "declined");
            Ok(t)
        };
        answer(result.await)
    }

    /// `peer files cancel`, from either side.
    pub(crate) async fn cancel_file(self: &Arc<Self>, id: &str, reason: &str) -> ControlResponse {
        let result = async {
            let rec = transfers::resolve(&self.home.db, id).await?;
            rules::check_cancel(&rec.t).map_err(not_now)?;
            self.files.cancel(&rec.t.id);
            discard_partial(&rec);
            let t = self.settle(&rec.t.id, TransferState::Cancelled, Some(reason)).await?;
            self.notify_cancel(&t, false, reason);
            Ok(t)
        };
        answer(result.await)
    }

    /// Tells the other side, in the background; if it cannot be reached it learns at its next offer or fetch.
    fn notify_cancel(self: &Arc<Self>, t: &Transfer, declined: bool, reason: &str) {
        let Ok(id) = t.id.parse() else { return };
        let frame = PeerFrame::FileCancel { id, declined, reason: reason.to_string() };
        let (agent, peer) = (self.clone(), t.peer.clone());
        self.tasks.spawn(async move {
            if let Err(Stop::Later(e) | Stop::Final(_, e)) = agent.exchange(&peer, &frame).await.map(|_| ()) {
                tracing::info!(peer, error = e, "could not tell the friend about a cancelled transfer");
            }
        });
    }

    /// The friend declined or cancelled a transfer.
    pub(crate) async fn on_cancel(&self, friend: &str, id: TransferId, declined: bool, reason: &str) -> PeerAck {
        let id = id.to_string();
        let Ok(Some(rec)) = transfers::get(&self.home.db, &id).await else { return PeerAck::Stored };
        if rec.t.peer != friend || rec.t.state.is_final() {
            return PeerAck::Stored;
        }
        self.files.cancel(&id);
        discard_partial(&rec);
        let (state, why) = if declined {
            (TransferState::Declined, format!("{friend} declined the file"))
        } else {
            (TransferState::Cancelled, format!("{friend} cancelled: {reason}"))
        };
        if let Err(e) = self.settle(&id, state, Some(&why)).await {
            tracing::warn!(id, error = %e, "could not record a cancelled transfer");
        }
        PeerAck::Stored
    }

    /// Starts again whatever can move: incoming transfers that were accepted (from what the partial file
    /// holds) and outgoing offers the friend has not answered. `friend` limits it to one friend.
    pub(crate) async fn resume_files(self: Arc<Self>, friend: Option<String>) {
        let mine = |r: &Record| friend.as_deref().is_none_or(|f| f == r.t.peer) && !self.files.is_active(&r.t.id);
        if let Ok(rows) = transfers::unfinished(&self.home.db, false).await {
            for rec in rows.into_iter().filter(|r| mine(r) && r.t.state == TransferState::Transferring) {
                self.tasks.spawn(self.clone().fetch(rec.t.id));
            }
        }
        if let Ok(rows) = transfers::unfinished(&self.home.db, true).await {
            for rec in rows.into_iter().filter(mine) {
                if let Err(e) = self.offer(&rec).await {
                    tracing::debug!(id = rec.t.id, error = %e, "offer not answered");
                }
            }
        }
    }
}

/// A command's outcome as the CLI gets it: a [`ControlError`] raised on the way keeps its code.
fn answer(result: Result<Transfer>) -> ControlResponse {
    match result {
        Ok(t) => ControlResponse::Transfer(t),
        Err(e) => match e.downcast::<ControlError>() {
            Ok(e) => ControlResponse::Failed(e),
            Err(e) => ControlResponse::failed(Code::Other, format!("{e:#}")),
        },
    }
}

/// A refusal because of where the transfer (or the disk) stands.
fn not_now(message: impl Into<String>) -> anyhow::Error {
    ControlError { code: Code::NotNow, message: message.into() }.into()
}
