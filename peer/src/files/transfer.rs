//! Moving a file's bytes: the receiver's fetch (from what its partial file holds, retried until it finishes
//! or is cancelled) and the sender's side of it.

use super::*;

impl Agent {
    /// Receiver: fetches the rest of an accepted file, verifies it and puts it in place. One run at a time per
    /// transfer; an interrupted fetch keeps the partial file and tries again (with growing pauses, at once
    /// when the friend comes online) until it finishes or is cancelled. It logs inside a span of its own.
    pub(crate) async fn fetch(self: Arc<Self>, id: String) {
        let span = tracing::info_span!("transfer", id = crate::output::short_id(&id), side = "receiving");
        tracing::Instrument::instrument(self.fetch_runs(id), span).await
    }

    async fn fetch_runs(self: Arc<Self>, id: String) {
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
                Ok(()) | Err(Stop::Halted) => break,
                Err(Stop::Moved) => {
                    tracing::info!(id, "the link is direct now; the transfer goes on over it");
                    backoff.reset();
                    continue;
                }
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
                    tracing::info!(id, reason = why, "transfer interrupted; it resumes when both agents are online");
                    self.interrupted(&id, run.bytes.load(Ordering::Relaxed), &why).await
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
                _ = run.signal.wait_for(|s| s.halted || s.kicks != kicks) => {}
            }
            if run.signal.borrow().halted {
                break;
            }
        }
        self.files.finish(&id, &run);
    }

    async fn fetch_once(&self, id: &str, run: &mut Run) -> Result<(), Stop> {
        let bytes = run.bytes.clone();
        let wire_id: TransferId =
            id.parse().map_err(|e: shared::id::BadId| Stop::Final(TransferState::Failed, e.to_string()))?;
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
        // Read before the stream is opened: a move while it opens costs one needless restart, never a
        // transfer left on the relay.
        let moves = run.signal.borrow().moves;
        let (mut send, mut recv, ack) =
            self.exchange(&rec.t.peer, &PeerFrame::FileFetch { id: wire_id, offset: have }).await?;
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
                        stop = stopped_or_moved(&mut run.signal, moves) => {
                            let code = if matches!(stop, Stop::Moved) { MOVED } else { CANCELLED };
                            let _ = recv.stop(code);
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
        if to_hex(hash.as_bytes()) != t.hash {
            let why = "the received data does not match the file's hash; the partial data was discarded".to_string();
            let _ =
                write_frame(&mut send, &PeerFrame::FileResult { id: wire_id, ok: false, reason: why.clone() }).await;
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
        self.record_done(id, size, Some(&saved_str)).await?;
        tracing::info!(id, from = t.peer, saved = saved_str, "file received and verified");
        // The sender learns it arrived; if this is lost, its next offer is answered "done".
        let _ = write_frame(&mut send, &PeerFrame::FileResult { id: wire_id, ok: true, reason: String::new() }).await;
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
        let id = id.to_string();
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
            Ok(()) | Err(Stop::Halted | Stop::Moved) => Ok(()),
            Err(Stop::Later(why)) => {
                tracing::info!(id, reason = why, "sending interrupted; the receiver resumes it");
                self.interrupted(&id, bytes.load(Ordering::Relaxed), &why).await.map(|_| ())
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
        let source = rec.t.path.clone().unwrap_or_default();
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
        let source = PathBuf::from(rec.t.path.clone().unwrap_or_default());
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
                r = send.write_chunk(Bytes::from(block)) => r.map_err(|e| match e {
                    // The receiver fetches the rest over a direct path; that run records what happens.
                    quinn::WriteError::Stopped(code) if code == MOVED => Stop::Halted,
                    e => anyhow!("{e}").into(),
                })?,
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
                self.record_done(&t.id, t.size, None).await?;
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
