//! Owned background work. Every task the agent starts belongs to a [`Tasks`]: the agent's own (lives as
//! long as the agent), one per broker session (aborted when the session ends, so nothing of a dead session
//! keeps running against the next), and local sets inside a server loop (dropped with it). Nothing is
//! spawned bare: shutdown aborts what is left and waits for it.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;

/// A set of running tasks with one owner.
#[derive(Default)]
pub(crate) struct Tasks {
    set: Mutex<JoinSet<()>>,
    /// Keys of the [`Tasks::spawn_once`] and [`Tasks::spawn_coalesced`] tasks running now; `true` when
    /// the work was asked for again while it ran.
    running: Arc<Mutex<HashMap<String, bool>>>,
}

/// Holds a [`Tasks::spawn_once`] / [`Tasks::spawn_coalesced`] key while its task runs, and frees it however
/// the task ends (finished or aborted).
struct KeyGuard {
    running: Arc<Mutex<HashMap<String, bool>>>,
    key: String,
    /// Still holds the key (cleared once the task freed it itself).
    held: bool,
}

impl Drop for KeyGuard {
    fn drop(&mut self) {
        if self.held {
            self.running.lock().remove(&self.key);
        }
    }
}

impl Tasks {
    pub(crate) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let mut set = self.set.lock();
        // Finished tasks leave their results in the set until joined: clear them as we go.
        while set.try_join_next().is_some() {}
        // In the span of whoever started it (a broker session, a transfer), so its logs say whose it is.
        set.spawn(tracing::Instrument::in_current_span(task));
    }

    /// The key for a new task, or `None` if one holds it already (then, if `again`, that one is asked to
    /// run once more). Checked and taken under one lock, so two callers cannot both start one.
    fn claim(&self, key: String, again: bool) -> Option<KeyGuard> {
        let mut running = self.running.lock();
        if let Some(flag) = running.get_mut(&key) {
            *flag |= again;
            return None;
        }
        running.insert(key.clone(), false);
        Some(KeyGuard { running: self.running.clone(), key, held: true })
    }

    /// Starts `task` unless one with the same key is still running (then it is not started: the running
    /// one does the same work).
    pub(crate) fn spawn_once(&self, key: String, task: impl Future<Output = ()> + Send + 'static) -> bool {
        let Some(guard) = self.claim(key, false) else { return false };
        self.spawn(async move {
            let _guard = guard;
            task.await;
        });
        true
    }

    /// Runs `work()` now, or, if it is running under this key already, once more after it ends (however
    /// often it was asked for meanwhile). So a friend whose presence flaps costs one retry at a time and
    /// one more at most, not a pile, and no request made during a run is lost.
    pub(crate) fn spawn_coalesced<F, Fut>(&self, key: String, work: F)
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Some(mut guard) = self.claim(key, true) else { return };
        self.spawn(async move {
            while guard.held {
                work().await;
                let mut running = guard.running.lock();
                match running.get_mut(&guard.key) {
                    Some(again) if *again => *again = false,
                    // Freed under the same lock that saw no new request: a request after this starts a
                    // task of its own instead of being left with one that is ending.
                    _ => {
                        running.remove(&guard.key);
                        drop(running);
                        guard.held = false;
                    }
                }
            }
        });
    }

    /// Aborts every task (they stop at their next await).
    pub(crate) fn abort_all(&self) {
        self.set.lock().abort_all();
    }

    /// Aborts every task and waits up to `within` for them to be gone.
    pub(crate) async fn shutdown(&self, within: Duration) {
        let mut set = std::mem::take(&mut *self.set.lock());
        set.abort_all();
        let _ = tokio::time::timeout(within, async { while set.join_next().await.is_some() {} }).await;
    }

    /// How many tasks have not been joined yet (finished ones included until the next spawn clears them).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.set.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn spawn_once_runs_one_per_key_and_frees_the_key_when_done_or_aborted() {
        let tasks = Tasks::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        assert!(tasks.spawn_once("bob".into(), async move {
            let _ = rx.await;
        }));
        assert!(!tasks.spawn_once("bob".into(), async {}), "one per key while it runs");
        assert!(tasks.spawn_once("carol".into(), async {}), "keys are independent");
        tx.send(()).unwrap();
        // The key is free once the task has ended.
        for _ in 0..100 {
            if !tasks.running.lock().contains_key("bob") {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(tasks.spawn_once("bob".into(), std::future::pending()));
        tasks.abort_all();
        for _ in 0..100 {
            if !tasks.running.lock().contains_key("bob") {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(!tasks.running.lock().contains_key("bob"), "an aborted task frees its key");
    }

    #[tokio::test]
    async fn coalesced_work_runs_again_once_if_asked_during_a_run() {
        let tasks = Tasks::default();
        let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let work = {
            let (runs, gate) = (runs.clone(), gate.clone());
            move || {
                let (runs, gate) = (runs.clone(), gate.clone());
                async move {
                    runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let _ = gate.acquire().await.map(|p| p.forget());
                }
            }
        };
        tasks.spawn_coalesced("bob".into(), work.clone());
        // Asked three more times while the first run waits: one more run, not three.
        for _ in 0..3 {
            tasks.spawn_coalesced("bob".into(), work.clone());
        }
        gate.add_permits(10);
        for _ in 0..1000 {
            if !tasks.running.lock().contains_key("bob") {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(!tasks.running.lock().contains_key("bob"));
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn shutdown_stops_everything() {
        let tasks = Tasks::default();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        for _ in 0..3 {
            let tx = tx.clone();
            tasks.spawn(async move {
                std::future::pending::<()>().await;
                drop(tx);
            });
        }
        drop(tx);
        assert_eq!(tasks.len(), 3);
        tasks.shutdown(Duration::from_secs(5)).await;
        assert_eq!(tasks.len(), 0);
        assert!(rx.recv().await.is_none(), "every task was dropped, and with it its sender");
    }
}
