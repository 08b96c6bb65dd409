//! File transfers between friends' agents: offers, accept/decline/cancel, and the byte streams.
//!
//! The receiver pulls (see [`shared::files`]): after an accept it opens a stream asking for the bytes from
//! what its partial file already holds, so a transfer cut by either agent dying or the link dropping resumes
//! from there, started again by the agent itself when both are online (or by running `send-file` again).
//! Disk I/O and hashing run on a blocking thread fed through a small bounded channel, so memory stays
//! constant whatever the file size; file streams have a lower priority than chat on the same connection.

use crate::agent::{Agent, lock, now_ms};
use crate::transfers::{self, Record};
use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use shared::control::{AgentEvent, ControlResponse, Transfer, TransferState};
use shared::files::{FileOffer, OfferAnswer, TransferId, check_space, format_size, numbered_name, sanitize_name};
use shared::io::{read_frame, write_frame};
use shared::peer::{PeerAck, PeerFrame, id_hex};
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// Bytes handed between the network and the disk thread at a time.
const BLOCK: usize = 512 * 1024;
/// Bytes read from disk per block on the sending side.
const SEND_BLOCK: usize = 1024 * 1024;
/// Blocks in flight between the network and the disk thread: with [`BLOCK`], the memory a transfer uses.
const BLOCKS_IN_FLIGHT: usize = 8;
/// Received bytes written between syncs to disk.
const SYNC_EVERY: usize = 64 << 20;
/// QUIC chunks taken per read.
const CHUNKS_PER_READ: usize = 64;
/// Most chunks in one block: one `writev`, well under any system's limit on its slices.
const CHUNKS_PER_BLOCK: usize = 512;
/// How often progress is reported to watchers, per transfer.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// Stream error code for a cancelled transfer.
const CANCELLED: quinn::VarInt = quinn::VarInt::from_u32(2);
/// How long a stream may take to answer a file frame.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Options of `peer up` for incoming files.
#[derive(Debug, Clone)]
pub(crate) struct FilePolicy {
    /// Accept every offered file into this directory.
    pub(crate) auto_accept: Option<PathBuf>,
    /// Refuse offers of files larger than this.
    pub(crate) max_size: u64,
}

/// Why a running transfer must stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Halt {
    /// For good: the user cancelled, or the friend did.
    Cancel,
    /// A newer stream serves this transfer (the receiver came back on a new connection): stop quietly.
    Supersede,
}

/// What the agent asks of a running transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Signal {
    halt: Option<Halt>,
    /// Bumped when the friend comes online: a waiting retry goes at once.
    kicks: u32,
}

/// A transfer whose bytes are moving (or whose retry is waiting) in this agent right now.
struct Active {
    peer: String,
    bytes: Arc<AtomicU64>,
    signal: watch::Sender<Signal>,
    /// Tells this run from a newer one of the same transfer.
    generation: u64,
}

/// The live side of transfers.
#[derive(Default)]
pub(crate) struct Live {
    active: std::sync::Mutex<HashMap<String, Active>>,
    generations: AtomicU64,
}

/// A running transfer's handle on its entry in [`Live`].
struct Run {
    bytes: Arc<AtomicU64>,
    signal: watch::Receiver<Signal>,
    generation: u64,
}

/// Why a transfer step stopped.
enum Stop {
    /// Try again later (peer offline, link dropped): the transfer stays where it is.
    Later(String),
    /// Nothing more will happen: the transfer ends in this state.
    Final(TransferState, String),
    /// A newer run took over; this one leaves the records alone.
    Superseded,
}

impl From<anyhow::Error> for Stop {
    fn from(e: anyhow::Error) -> Self {
        Stop::Later(format!("{e:#}"))
    }
}

fn random_id() -> TransferId {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    b
}

fn hex32(h: &[u8; 32]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where the receiver keeps the bytes of a transfer until the hash matches: hidden, beside the final file
/// (same file system, so the final move is an atomic rename).
fn partial_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!(".p2pim-{id}.part"))
}

/// Moves the verified partial file to `name` in `dir`, never replacing an existing file: a taken name
/// becomes `name (1)`, `name (2)`, ... Returns the path used.
fn place(partial: &Path, dir: &Path, name: &str) -> std::io::Result<PathBuf> {
    for n in 0..10_000 {
        let target = dir.join(numbered_name(name, n));
        // A hard link fails when the name exists, so no check-then-rename race can replace a file.
        match std::fs::hard_link(partial, &target) {
            Ok(()) => {
                std::fs::remove_file(partial)?;
                return Ok(target);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            // File systems without hard links: rename, after checking the name is free.
            Err(_) if !target.exists() => {
                std::fs::rename(partial, &target)?;
                return Ok(target);
            }
            Err(_) => continue,
        }
    }
    Err(std::io::Error::other(format!("no free name for {name} in {}", dir.display())))
}

impl Live {
    /// Registers a run of a transfer; `None` if one is running (one stream per transfer at a time), unless
    /// `supersede`, which stops the running one and takes its place.
    fn start(&self, id: &str, peer: &str, supersede: bool) -> Option<Run> {
        let mut active = lock(&self.active);
        if let Some(old) = active.get(id) {
            if !supersede {
                return None;
            }
            old.signal.send_modify(|s| s.halt = Some(Halt::Supersede));
        }
        let (signal, rx) = watch::channel(Signal::default());
        let bytes = Arc::new(AtomicU64::new(0));
        let generation = self.generations.fetch_add(1, Ordering::Relaxed);
        active.insert(id.to_string(), Active { peer: peer.to_string(), bytes: bytes.clone(), signal, generation });
        Some(Run { bytes, signal: rx, generation })
    }

    /// The run ended; its entry goes unless a newer run replaced it.
    fn finish(&self, id: &str, run: &Run) {
        let mut active = lock(&self.active);
        if active.get(id).is_some_and(|a| a.generation == run.generation) {
            active.remove(id);
        }
    }

    fn cancel(&self, id: &str) {
        if let Some(a) = lock(&self.active).remove(id) {
            a.signal.send_modify(|s| s.halt = Some(Halt::Cancel));
        }
    }

    /// Wakes the waiting retries of a friend's transfers (they came online).
    pub(crate) fn kick(&self, peer: &str) {
        for a in lock(&self.active).values().filter(|a| a.peer == peer) {
            a.signal.send_modify(|s| s.kicks = s.kicks.wrapping_add(1));
        }
    }

    fn is_active(&self, id: &str) -> bool {
        lock(&self.active).contains_key(id)
    }

    /// Live byte counts override what the database last recorded.
    fn overlay(&self, t: &mut Transfer) {
        if let Some(a) = lock(&self.active).get(&t.id) {
            t.bytes = a.bytes.load(Ordering::Relaxed);
        }
    }
}

/// Waits for a signal that stops a transfer (cancel or supersede).
async fn stopped(signal: &mut watch::Receiver<Signal>) -> Stop {
    match signal.wait_for(|s| s.halt.is_some()).await.map(|s| s.halt) {
        Ok(Some(Halt::Cancel)) => Stop::Final(TransferState::Cancelled, "cancelled".into()),
        _ => Stop::Superseded,
    }
}

/// Reports progress at most every [`PROGRESS_EVERY`].
struct Progress {
    last: Instant,
}

impl Progress {
    fn new() -> Self {
        Self { last: Instant::now() }
    }

    fn due(&mut self) -> bool {
        if self.last.elapsed() >= PROGRESS_EVERY {
            self.last = Instant::now();
            return true;
        }
        false
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

    /// Sets a transfer's state and tells watchers.
    async fn settle(&self, id: &str, state: TransferState, error: Option<&str>) -> Result<Transfer> {
        transfers::set_state(&self.home.db, id, state, error, now_ms()).await?;
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
            Err(e) => ControlResponse::Error(format!("could not read transfers: {e}")),
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
        match self.send_file_inner(to, path, name, size, hash).await {
            Ok(t) => ControlResponse::Transfer(t),
            Err(e) => ControlResponse::Error(format!("{e:#}")),
        }
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
        let hash_hex = hex32(&hash);
        let rec = match transfers::find_outgoing(&self.home.db, to, path, &hash_hex, name).await? {
            Some(rec) => rec,
            None => {
                let now = now_ms();
                let rec = Record {
                    t: Transfer {
                        id: id_hex(&random_id()),
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
                    source: Some(path.to_string()),
                    dir: None,
                };
                transfers::insert(&self.home.db, &rec).await?;
                rec
            }
        };
        if rec.t.state == TransferState::Done {
            return Ok(rec.t);
        }
        self.offer(&rec).await
    }

    /// Offers (again) an outgoing transfer and records where the receiver stands.
    async fn offer(&self, rec: &Record) -> Result<Transfer> {
        let t = &rec.t;
        let offer = FileOffer { id: parse_id(&t.id), name: t.name.clone(), size: t.size, hash: parse_hash(&t.hash) };
        let (state, error) = match self.exchange(&t.peer, &PeerFrame::FileOffer(offer)).await {
            Ok((_, _, PeerAck::Offer(answer))) => match answer {
                // The receiver drives from here: it fetches once accepted.
                OfferAnswer::Offered => (TransferState::Offered, None),
                OfferAnswer::Receiving { .. } => (TransferState::Transferring, None),
                OfferAnswer::Done => {
                    transfers::done(&self.home.db, &t.id, t.size, None, now_ms()).await?;
                    (TransferState::Done, None)
                }
                OfferAnswer::Declined => (TransferState::Declined, Some(format!("{} declined the file", t.peer))),
                OfferAnswer::Cancelled => (TransferState::Cancelled, Some(format!("{} cancelled it", t.peer))),
            },
            Ok((_, _, PeerAck::Refused(why))) => (TransferState::Failed, Some(format!("{} refused it: {why}", t.peer))),
            Ok((_, _, other)) => (TransferState::Waiting, Some(format!("unexpected answer: {other:?}"))),
            Err(Stop::Final(state, why)) => (state, Some(why)),
            Err(Stop::Later(why)) => (TransferState::Waiting, Some(why)),
            Err(Stop::Superseded) => return Ok(t.clone()),
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
            Err(crate::agent::Reach::Unreachable(why)) => return Err(Stop::Later(why)),
        };
        let mut errors = Vec::new();
        for device in &devices {
            let deadline = tokio::time::Instant::now() + crate::chat::CONNECT_PATIENCE;
            loop {
                let attempt = async {
                    let conn = self.direct.connect(friend, device).await?;
                    let (mut send, mut recv) = conn.open_bi().await?;
                    write_frame(&mut send, frame).await?;
                    let ack = tokio::time::timeout(ANSWER_TIMEOUT, read_frame::<PeerAck, _>(&mut recv))
                        .await
                        .map_err(|_| anyhow!("no answer"))??
                        .ok_or_else(|| anyhow!("the friend's agent closed the stream"))?;
                    Ok::<_, anyhow::Error>((send, recv, ack))
                };
                match attempt.await {
                    Ok(r) => {
                        lock(&self.devices).insert(friend.to_string(), devices.clone());
                        return Ok(r);
                    }
                    Err(e) if tokio::time::Instant::now() < deadline => {
                        tracing::debug!(friend, error = %e, "file frame not answered yet; retrying");
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                    Err(e) => {
                        errors.push(format!("{e:#}"));
                        break;
                    }
                }
            }
        }
        lock(&self.devices).remove(friend);
        Err(Stop::Later(format!("could not reach {friend}: {}", errors.join("; "))))
    }

    /// A friend offers a file (or offers it again, to learn where we stand).
    pub(crate) async fn on_offer(self: &Arc<Self>, friend: &str, offer: FileOffer) -> PeerAck {
        let id = id_hex(&offer.id);
        match transfers::get(&self.home.db, &id).await {
            Ok(Some(rec)) if rec.t.peer == friend && !rec.t.outgoing => {
                return PeerAck::Offer(match rec.t.state {
                    TransferState::Done => OfferAnswer::Done,
                    TransferState::Declined => OfferAnswer::Declined,
                    TransferState::Cancelled | TransferState::Failed => OfferAnswer::Cancelled,
                    TransferState::Waiting | TransferState::Offered => OfferAnswer::Offered,
                    TransferState::Transferring => {
                        tokio::spawn(self.clone().fetch(id.clone()));
                        OfferAnswer::Receiving { have: rec.t.bytes }
                    }
                });
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
                hash: hex32(&offer.hash),
                state: TransferState::Offered,
                bytes: 0,
                path: None,
                error: None,
                resumed_from: 0,
                created_at: now,
                updated_at: now,
            },
            source: None,
            dir: None,
        };
        if let Err(e) = transfers::insert(&self.home.db, &rec).await {
            return PeerAck::Refused(format!("the receiver could not record the offer: {e}"));
        }
        tracing::info!(friend, id, name = rec.t.name, size = rec.t.size, "file offered");
        self.emit(AgentEvent::FileOffered { transfer: rec.t.clone(), at: now });
        if let Some(dir) = self.policy.auto_accept.clone() {
            let agent = self.clone();
            tokio::spawn(async move {
                if let ControlResponse::Error(e) = agent.accept_file(&id, &dir.to_string_lossy()).await {
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
            if rec.t.outgoing {
                bail!("{} is a file you are sending; only {} can accept it", rec.t.name, rec.t.peer);
            }
            match rec.t.state {
                TransferState::Offered => {}
                TransferState::Transferring => bail!("{} is already accepted", rec.t.name),
                s => bail!("{} is {}; it cannot be accepted any more", rec.t.name, s.as_str()),
            }
            let dir = Path::new(dir);
            if !dir.is_dir() {
                bail!("{} is not a directory; create it or pass another with --to", dir.display());
            }
            let have = std::fs::metadata(partial_path(dir, &rec.t.id)).map(|m| m.len()).unwrap_or(0);
            let free =
                fs4::available_space(dir).with_context(|| format!("cannot check free space in {}", dir.display()))?;
            check_space(rec.t.size, have, free).map_err(|e| {
                anyhow!("not enough space in {}: {e}; free some space or accept with --to DIR elsewhere", dir.display())
            })?;
            transfers::accept(&self.home.db, &rec.t.id, &dir.to_string_lossy(), now_ms()).await?;
            let t = self.settle(&rec.t.id, TransferState::Transferring, None).await?;
            tokio::spawn(self.clone().fetch(rec.t.id.clone()));
            Ok(t)
        };
        match result.await {
            Ok(t) => ControlResponse::Transfer(t),
            Err(e) => ControlResponse::Error(format!("{e:#}")),
        }
    }

    /// `peer files decline`.
    pub(crate) async fn decline_file(self: &Arc<Self>, id: &str) -> ControlResponse {
        let result = async {
            let rec = transfers::resolve(&self.home.db, id).await?;
            if rec.t.outgoing || rec.t.state != TransferState::Offered {
                bail!(
                    "only a file offered to you and not yet accepted can be declined; `peer files cancel` stops others"
                );
            }
            let t = self.settle(&rec.t.id, TransferState::Declined, Some("you declined it")).await?;
            self.notify_cancel(&t, true, "declined");
            Ok(t)
        };
        match result.await {
            Ok(t) => ControlResponse::Transfer(t),
            Err(e) => ControlResponse::Error(format!("{e:#}")),
        }
    }

    /// `peer files cancel`, from either side.
    pub(crate) async fn cancel_file(self: &Arc<Self>, id: &str, reason: &str) -> ControlResponse {
        let result = async {
            let rec = transfers::resolve(&self.home.db, id).await?;
            if rec.t.state.is_final() {
                bail!("{} is already {}", rec.t.name, rec.t.state.as_str());
            }
            self.files.cancel(&rec.t.id);
            discard_partial(&rec);
            let t = self.settle(&rec.t.id, TransferState::Cancelled, Some(reason)).await?;
            self.notify_cancel(&t, false, reason);
            Ok(t)
        };
        match result.await {
            Ok(t) => ControlResponse::Transfer(t),
            Err(e) => ControlResponse::Error(format!("{e:#}")),
        }
    }

    /// Tells the other side, in the background; if it cannot be reached it learns at its next offer or fetch.
    fn notify_cancel(self: &Arc<Self>, t: &Transfer, declined: bool, reason: &str) {
        let frame = PeerFrame::FileCancel { id: parse_id(&t.id), declined, reason: reason.to_string() };
        let (agent, peer) = (self.clone(), t.peer.clone());
        tokio::spawn(async move {
            if let Err(Stop::Later(e) | Stop::Final(_, e)) = agent.exchange(&peer, &frame).await.map(|_| ()) {
                tracing::info!(peer, error = e, "could not tell the friend about a cancelled transfer");
            }
        });
    }

    /// The friend declined or cancelled a transfer.
    pub(crate) async fn on_cancel(&self, friend: &str, id: TransferId, declined: bool, reason: &str) -> PeerAck {
        let id = id_hex(&id);
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
                tokio::spawn(self.clone().fetch(rec.t.id));
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

    /// Receiver: fetches the rest of an accepted file, verifies it and puts it in place. One run at a time per
    /// transfer; an interrupted fetch keeps the partial file and tries again (with growing pauses, at once
    /// when the friend comes online) until it finishes or is cancelled.
    pub(crate) async fn fetch(self: Arc<Self>, id: String) {
        let peer = match transfers::get(&self.home.db, &id).await {
            Ok(Some(rec)) => rec.t.peer,
            _ => return,
        };
        let Some(mut run) = self.files.start(&id, &peer, false) else { return };
        let mut backoff = shared::backoff::Backoff::new(Duration::from_secs(1), crate::chat::RETRY_EVERY);
        loop {
            let before = run.bytes.load(Ordering::Relaxed);
            let result = self.fetch_once(&id, &mut run).await;
            let outcome = match result {
                Ok(()) | Err(Stop::Superseded) => break,
                Err(Stop::Final(state, why)) => {
                    if let Ok(Some(rec)) = transfers::get(&self.home.db, &id).await {
                        discard_partial(&rec);
                    }
                    let r = self.settle(&id, state, Some(&why)).await;
                    if let Err(e) = r {
                        tracing::warn!(id, error = %e, "could not record a transfer's state");
                    }
                    break;
                }
                Err(Stop::Later(why)) => {
                    let _ = transfers::set_bytes(&self.home.db, &id, run.bytes.load(Ordering::Relaxed), now_ms()).await;
                    tracing::info!(id, reason = why, "transfer interrupted; it resumes when both agents are online");
                    self.settle(&id, TransferState::Transferring, Some(&format!("interrupted: {why}"))).await
                }
            };
            if let Err(e) = outcome {
                tracing::warn!(id, error = %e, "could not record a transfer's state");
            }
            if run.bytes.load(Ordering::Relaxed) > before {
                backoff.reset();
            }
            let pause = backoff.next_delay(0.0);
            let kicks = run.signal.borrow().kicks;
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                _ = run.signal.wait_for(|s| s.halt.is_some() || s.kicks != kicks) => {}
            }
            if run.signal.borrow().halt.is_some() {
                break;
            }
        }
        self.files.finish(&id, &run);
    }

    async fn fetch_once(&self, id: &str, run: &mut Run) -> Result<(), Stop> {
        let bytes = run.bytes.clone();
        let rec = transfers::get(&self.home.db, id).await?.ok_or_else(|| anyhow!("transfer {id} vanished"))?;
        if rec.t.state != TransferState::Transferring {
            return Ok(());
        }
        let dir = PathBuf::from(rec.dir.clone().ok_or_else(|| anyhow!("accepted without a directory"))?);
        if !dir.is_dir() {
            return Err(Stop::Final(TransferState::Failed, format!("the directory {} is gone", dir.display())));
        }
        let partial = partial_path(&dir, id);
        let size = rec.t.size;
        // What the partial file holds is re-read into the hash: the final check covers old and new bytes.
        let (file, hasher, have) = tokio::task::spawn_blocking({
            let partial = partial.clone();
            move || open_partial(&partial, size)
        })
        .await
        .map_err(|e| anyhow!("{e}"))?
        .with_context(|| format!("cannot open {}", partial.display()))?;
        bytes.store(have, Ordering::Relaxed);
        let (mut send, mut recv, ack) =
            self.exchange(&rec.t.peer, &PeerFrame::FileFetch { id: parse_id(id), offset: have }).await?;
        match ack {
            PeerAck::Stored => {}
            PeerAck::Refused(why) => {
                return Err(Stop::Final(TransferState::Cancelled, format!("{} stopped it: {why}", rec.t.peer)));
            }
            other => return Err(Stop::Later(format!("unexpected answer: {other:?}"))),
        }
        transfers::started(&self.home.db, id, have, now_ms()).await?;
        let mut t = rec.t.clone();
        t.resumed_from = have;
        t.bytes = have;
        t.error = None;
        self.transfer_event(&t);
        tracing::info!(id, from = t.peer, offset = have, "receiving");

        let (tx, rx) = mpsc::channel::<Vec<Bytes>>(BLOCKS_IN_FLIGHT);
        let writer = tokio::task::spawn_blocking(move || write_blocks(file, hasher, rx));
        let mut total = have;
        let mut progress = Progress::new();
        // Chunks go to the disk thread as QUIC hands them over, without copying, a block's worth at a time.
        let mut slots = vec![Bytes::new(); CHUNKS_PER_READ];
        let received: Result<(), Stop> = async {
            loop {
                let mut block: Vec<Bytes> = Vec::with_capacity(CHUNKS_PER_BLOCK);
                let mut filled = 0;
                let mut eof = false;
                while filled < BLOCK && block.len() + CHUNKS_PER_READ <= CHUNKS_PER_BLOCK {
                    tokio::select! {
                        r = recv.read_chunks(&mut slots) => match r.map_err(|e| anyhow!("{e}"))? {
                            Some(n) => {
                                for chunk in slots.iter_mut().take(n) {
                                    filled += chunk.len();
                                    block.push(std::mem::take(chunk));
                                }
                            }
                            None => { eof = true; break; }
                        },
                        stop = stopped(&mut run.signal) => {
                            let _ = recv.stop(CANCELLED);
                            return Err(stop);
                        }
                    }
                }
                total += filled as u64;
                if total > size {
                    return Err(Stop::Final(TransferState::Failed, "the sender sent more than the file's size".into()));
                }
                if !block.is_empty() && tx.send(block).await.is_err() {
                    return Err(Stop::Later("could not write to disk".into()));
                }
                bytes.store(total, Ordering::Relaxed);
                if progress.due() {
                    self.progress_event(&t, total);
                }
                if eof {
                    return Ok(());
                }
            }
        }
        .await;
        drop(tx);
        // The writer flushes what it has in every case, so that an interrupted transfer keeps its bytes.
        let written = writer.await.map_err(|e| anyhow!("{e}"))?;
        received?;
        let hash = written.with_context(|| format!("cannot write {}", partial.display()))?;
        if total < size {
            return Err(Stop::Later(format!("the sender stopped at {} of {}", format_size(total), format_size(size))));
        }
        self.progress_event(&t, total);
        if hex32(hash.as_bytes()) != t.hash {
            let why = "the received data does not match the file's hash; the partial data was discarded".to_string();
            let _ = write_frame(&mut send, &PeerFrame::FileResult { id: parse_id(id), ok: false, reason: why.clone() })
                .await;
            let _ = send.finish();
            return Err(Stop::Final(TransferState::Failed, why));
        }
        let saved = tokio::task::spawn_blocking({
            let (partial, dir, name) = (partial.clone(), dir.clone(), t.name.clone());
            move || place(&partial, &dir, &name)
        })
        .await
        .map_err(|e| anyhow!("{e}"))?
        .map_err(|e| Stop::Final(TransferState::Failed, format!("cannot move the file into place: {e}")))?;
        let saved_str = saved.to_string_lossy().to_string();
        transfers::done(&self.home.db, id, size, Some(&saved_str), now_ms()).await?;
        let rec = transfers::get(&self.home.db, id).await?.ok_or_else(|| anyhow!("transfer {id} vanished"))?;
        self.transfer_event(&rec.t);
        tracing::info!(id, from = t.peer, saved = saved_str, "file received and verified");
        // The sender learns it arrived; if this is lost, its next offer is answered "done".
        let _ =
            write_frame(&mut send, &PeerFrame::FileResult { id: parse_id(id), ok: true, reason: String::new() }).await;
        let _ = send.finish();
        let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
        Ok(())
    }

    /// Sender: a friend asks for a file's bytes from `offset` on.
    pub(crate) async fn serve_fetch(
        &self,
        friend: &str,
        id: TransferId,
        offset: u64,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) {
        let id = id_hex(&id);
        let rec = match self.check_fetch(friend, &id, offset).await {
            Ok(rec) => rec,
            Err(why) => {
                let _ = write_frame(&mut send, &PeerAck::Refused(why)).await;
                let _ = send.finish();
                return;
            }
        };
        // The receiver asks again only when its earlier stream is dead to it: this one takes over.
        let Some(mut run) = self.files.start(&id, friend, true) else { return };
        let result = self.send_bytes(&rec, offset, &mut send, &mut recv, &mut run).await;
        self.files.finish(&id, &run);
        let bytes = run.bytes;
        let outcome = match result {
            Ok(()) | Err(Stop::Superseded) => Ok(()),
            Err(Stop::Later(why)) => {
                let _ = transfers::set_bytes(&self.home.db, &id, bytes.load(Ordering::Relaxed), now_ms()).await;
                tracing::info!(id, reason = why, "sending interrupted; the receiver resumes it");
                self.settle(&id, TransferState::Transferring, Some(&format!("interrupted: {why}"))).await.map(|_| ())
            }
            Err(Stop::Final(state, why)) => self.settle(&id, state, Some(&why)).await.map(|_| ()),
        };
        if let Err(e) = outcome {
            tracing::warn!(id, error = %e, "could not record a transfer's state");
        }
    }

    /// Whether `friend` may fetch transfer `id` from `offset`; the refusal to send otherwise.
    async fn check_fetch(&self, friend: &str, id: &str, offset: u64) -> Result<Record, String> {
        let rec = match transfers::get(&self.home.db, id).await {
            Ok(Some(rec)) if rec.t.outgoing && rec.t.peer == friend => rec,
            Ok(_) => return Err("no such transfer".into()),
            Err(e) => return Err(format!("the sender could not read its database: {e}")),
        };
        match rec.t.state {
            TransferState::Cancelled | TransferState::Declined => return Err("the transfer was cancelled".into()),
            TransferState::Failed => return Err(rec.t.error.clone().unwrap_or_else(|| "the transfer failed".into())),
            TransferState::Done => return Err("the transfer is already complete".into()),
            _ => {}
        }
        if offset > rec.t.size {
            return Err(format!("offset {offset} is past the end of the file"));
        }
        let source = rec.source.clone().unwrap_or_default();
        let changed = match std::fs::metadata(&source) {
            Ok(m) => (m.len() != rec.t.size).then(|| format!("{source} changed since it was offered; send it again")),
            Err(e) => Some(format!("{source} cannot be read any more: {e}")),
        };
        if let Some(why) = changed {
            let _ = self.settle(id, TransferState::Failed, Some(&why)).await;
            return Err(why);
        }
        Ok(rec)
    }

    async fn send_bytes(
        &self,
        rec: &Record,
        offset: u64,
        send: &mut quinn::SendStream,
        recv: &mut quinn::RecvStream,
        run: &mut Run,
    ) -> Result<(), Stop> {
        let bytes = run.bytes.clone();
        let t = &rec.t;
        // Chat on the same connection goes first.
        let _ = send.set_priority(-1);
        write_frame(send, &PeerAck::Stored).await.map_err(|e| anyhow!("{e}"))?;
        transfers::started(&self.home.db, &t.id, offset, now_ms()).await?;
        let mut t = t.clone();
        t.resumed_from = offset;
        t.bytes = offset;
        t.state = TransferState::Transferring;
        t.error = None;
        self.transfer_event(&t);
        tracing::info!(id = t.id, to = t.peer, offset, "sending");
        let (tx, mut rx) = mpsc::channel::<std::io::Result<Vec<u8>>>(BLOCKS_IN_FLIGHT);
        let source = PathBuf::from(rec.source.clone().unwrap_or_default());
        let remaining = t.size - offset;
        let reader = tokio::task::spawn_blocking(move || read_blocks(&source, offset, remaining, tx));
        let mut total = offset;
        let mut progress = Progress::new();
        loop {
            let block = tokio::select! {
                b = rx.recv() => b,
                stop = stopped(&mut run.signal) => {
                    let _ = send.reset(CANCELLED);
                    return Err(stop);
                }
            };
            let Some(block) = block else { break };
            let block = block.map_err(|e| Stop::Final(TransferState::Failed, format!("cannot read the file: {e}")))?;
            total += block.len() as u64;
            tokio::select! {
                r = send.write_chunk(Bytes::from(block)) => r.map_err(|e| anyhow!("{e}"))?,
                stop = stopped(&mut run.signal) => {
                    let _ = send.reset(CANCELLED);
                    return Err(stop);
                }
            }
            bytes.store(total, Ordering::Relaxed);
            if progress.due() {
                self.progress_event(&t, total);
            }
        }
        let _ = reader.await;
        if total != t.size {
            return Err(Stop::Final(TransferState::Failed, "the file became shorter while it was being sent".into()));
        }
        send.finish().map_err(|e| anyhow!("{e}"))?;
        self.progress_event(&t, total);
        // The receiver verifies the whole file and answers on the same stream.
        let verdict = tokio::select! {
            v = read_frame::<PeerFrame, _>(recv) => v.map_err(|e| anyhow!("{e}"))?,
            stop = stopped(&mut run.signal) => return Err(stop),
        };
        match verdict {
            Some(PeerFrame::FileResult { ok: true, .. }) => {
                transfers::done(&self.home.db, &t.id, t.size, None, now_ms()).await?;
                let _ = self.settle(&t.id, TransferState::Done, None).await;
                tracing::info!(id = t.id, to = t.peer, "file delivered and verified");
                Ok(())
            }
            Some(PeerFrame::FileResult { ok: false, reason, .. }) => {
                Err(Stop::Final(TransferState::Failed, format!("{} could not verify it: {reason}", t.peer)))
            }
            _ => Err(Stop::Later("the receiver went away before confirming".into())),
        }
    }
}

/// Removes the receiver's partial data of a transfer that will not finish.
fn discard_partial(rec: &Record) {
    if let (false, Some(dir)) = (rec.t.outgoing, &rec.dir) {
        let _ = std::fs::remove_file(partial_path(Path::new(dir), &rec.t.id));
    }
}

/// Opens (creating) the partial file and hashes what it holds; anything past `size` cannot be ours.
fn open_partial(path: &Path, size: u64) -> std::io::Result<(std::fs::File, blake3::Hasher, u64)> {
    let mut file = certs::secret_file::owner_only().read(true).write(true).truncate(false).open(path)?;
    let mut have = file.metadata()?.len();
    if have > size {
        file.set_len(0)?;
        have = 0;
    }
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; BLOCK];
    let mut left = have;
    while left > 0 {
        let n = file.read(&mut buf[..(left.min(BLOCK as u64) as usize)])?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    file.seek(SeekFrom::Start(have))?;
    Ok((file, hasher, have))
}

/// The disk side of receiving: appends blocks and hashes them; flushes and syncs at the end whatever
/// happened, so bytes received before an interruption are kept for the resume.
fn write_blocks(
    mut file: std::fs::File,
    mut hasher: blake3::Hasher,
    mut rx: mpsc::Receiver<Vec<Bytes>>,
) -> std::io::Result<blake3::Hash> {
    // One contiguous buffer, reused: the page cache and BLAKE3's SIMD both work best on large writes.
    let mut buf = Vec::with_capacity(BLOCK * 2);
    let mut written = Ok(());
    let mut unsynced = 0;
    while let Some(block) = rx.blocking_recv() {
        buf.clear();
        for chunk in &block {
            buf.extend_from_slice(chunk);
        }
        hasher.update(&buf);
        written = file.write_all(&buf);
        if written.is_err() {
            break;
        }
        // Synced as it goes, so that the sync before the verdict has little left to do and the page
        // cache never holds much of a large file dirty.
        unsynced += buf.len();
        if unsynced >= SYNC_EVERY {
            unsynced = 0;
            written = file.sync_data();
            if written.is_err() {
                break;
            }
        }
    }
    file.sync_all()?;
    written.map(|()| hasher.finalize())
}

/// The disk side of sending: reads `len` bytes from `offset` in blocks.
fn read_blocks(path: &Path, offset: u64, len: u64, tx: mpsc::Sender<std::io::Result<Vec<u8>>>) {
    let result = (|| {
        let mut file = std::fs::File::open(path)?;
        file.seek(SeekFrom::Start(offset))?;
        let mut left = len;
        while left > 0 {
            // Read into spare capacity: no zeroing of a buffer about to be overwritten.
            let want = left.min(SEND_BLOCK as u64);
            let mut block = Vec::with_capacity(want as usize);
            let n = (&mut file).take(want).read_to_end(&mut block)?;
            if n == 0 {
                break;
            }
            left -= n as u64;
            if tx.blocking_send(Ok(block)).is_err() {
                return Ok(());
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = tx.blocking_send(Err(e));
    }
}

/// BLAKE3 of a whole file, reporting progress (the CLI hashes before offering).
pub(crate) fn hash_file(path: &Path, mut progress: impl FnMut(u64)) -> std::io::Result<blake3::Hash> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; BLOCK * 2];
    let mut done = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(hasher.finalize());
        }
        hasher.update(&buf[..n]);
        done += n as u64;
        progress(done);
    }
}

fn parse_hex<const N: usize>(hex: &str) -> [u8; N] {
    let mut out = [0u8; N];
    for (i, chunk) in hex.as_bytes().chunks(2).take(N).enumerate() {
        out[i] = std::str::from_utf8(chunk).ok().and_then(|s| u8::from_str_radix(s, 16).ok()).unwrap_or(0);
    }
    out
}

pub(crate) fn parse_id(hex: &str) -> TransferId {
    parse_hex(hex)
}

fn parse_hash(hex: &str) -> [u8; 32] {
    parse_hex(hex)
}
