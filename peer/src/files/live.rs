//! Transfers whose bytes are moving in this agent right now: their live byte counts, and the signals that
//! stop them (cancel, a newer stream taking over) or wake their waiting retries.

use super::*;

/// What the agent asks of a running transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Signal {
    /// Stop: the transfer was cancelled (by either side), or a newer stream serves it (the receiver came
    /// back on a new connection). Whoever halts it records the transfer's state.
    pub(super) halted: bool,
    /// Bumped when the friend comes online: a waiting retry goes at once.
    pub(super) kicks: u32,
    /// Bumped when the link to the friend moved from the relay to a direct path: a fetch running over the
    /// relay stops at a block boundary and goes on over the direct one.
    pub(super) moves: u32,
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
    active: parking_lot::Mutex<HashMap<String, Active>>,
    generations: AtomicU64,
}

/// A running transfer's handle on its entry in [`Live`].
pub(super) struct Run {
    pub(super) bytes: Arc<AtomicU64>,
    pub(super) signal: watch::Receiver<Signal>,
    generation: u64,
}

impl Live {
    /// Registers a run of a transfer; `None` if one is running (one stream per transfer at a time), unless
    /// `supersede`, which stops the running one and takes its place.
    pub(super) fn start(&self, id: &str, peer: &str, supersede: bool) -> Option<Run> {
        let mut active = self.active.lock();
        if let Some(old) = active.get(id) {
            if !supersede {
                return None;
            }
            old.signal.send_modify(|s| s.halted = true);
        }
        let (signal, rx) = watch::channel(Signal::default());
        let bytes = Arc::new(AtomicU64::new(0));
        let generation = self.generations.fetch_add(1, Ordering::Relaxed);
        active.insert(id.to_string(), Active { peer: peer.to_string(), bytes: bytes.clone(), signal, generation });
        Some(Run { bytes, signal: rx, generation })
    }

    /// The run ended; its entry goes unless a newer run replaced it.
    pub(super) fn finish(&self, id: &str, run: &Run) {
        let mut active = self.active.lock();
        if active.get(id).is_some_and(|a| a.generation == run.generation) {
            active.remove(id);
        }
    }

    pub(super) fn cancel(&self, id: &str) {
        if let Some(a) = self.active.lock().remove(id) {
            a.signal.send_modify(|s| s.halted = true);
        }
    }

    /// Wakes the waiting retries of a friend's transfers (they came online).
    pub(crate) fn kick(&self, peer: &str) {
        for a in self.active.lock().values().filter(|a| a.peer == peer) {
            a.signal.send_modify(|s| s.kicks = s.kicks.wrapping_add(1));
        }
    }

    /// The link to `peer` is direct now: their running fetches move over to it.
    pub(crate) fn moved(&self, peer: &str) {
        for a in self.active.lock().values().filter(|a| a.peer == peer) {
            a.signal.send_modify(|s| s.moves = s.moves.wrapping_add(1));
        }
    }

    pub(super) fn is_active(&self, id: &str) -> bool {
        self.active.lock().contains_key(id)
    }

    /// Live byte counts override what the database last recorded.
    pub(super) fn overlay(&self, t: &mut Transfer) {
        if let Some(a) = self.active.lock().get(&t.id) {
            t.bytes = a.bytes.load(Ordering::Relaxed);
        }
    }
}

/// Waits for the transfer to be halted (cancelled or superseded).
pub(super) async fn stopped(signal: &mut watch::Receiver<Signal>) -> Stop {
    let _ = signal.wait_for(|s| s.halted).await;
    Stop::Halted
}

/// A receiver's stop: halted, or the link moved since `moves` was read (see [`Signal::moves`]).
pub(super) async fn stopped_or_moved(signal: &mut watch::Receiver<Signal>, moves: u32) -> Stop {
    match signal.wait_for(|s| s.halted || s.moves != moves).await {
        Ok(s) if !s.halted => Stop::Moved,
        _ => Stop::Halted,
    }
}

/// How often progress is reported to watchers, per transfer.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// Reports progress at most every [`PROGRESS_EVERY`].
pub(super) struct Progress {
    last: Instant,
}

impl Progress {
    pub(super) fn new() -> Self {
        Self { last: Instant::now() }
    }

    pub(super) fn due(&mut self) -> bool {
        if self.last.elapsed() >= PROGRESS_EVERY {
            self.last = Instant::now();
            return true;
        }
        false
    }
}
