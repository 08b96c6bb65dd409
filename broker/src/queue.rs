//! A session's queue of event frames: the connection table pushes (`Sender`, held in the session's row), the
//! session's event writer drains it onto the event stream (`Receiver`).
//!
//! Why not tokio's bounded channel, which did this before: every online session holds one for as long as it
//! lasts, mostly empty, and tokio's costs ~1.1 KiB before the first event (cache-padded state, and a first
//! block of 32 slots allocated up front; heaptrack on `bench broker`). This one is a mutex over a `VecDeque`
//! that allocates only while frames wait, and gives its room back once drained: ~0.1 KiB when idle.
//!
//! Semantics as the table relied on them: bounded (a full queue refuses, and the table then disconnects the
//! stuck session); the receiver sees the end once every sender is gone and what they queued is drained; a
//! push after the receiver is gone is refused as closed.

use crate::table::Frame;
use std::collections::VecDeque;
use std::sync::Arc;

/// The room a drained queue may keep (a frame is 16 bytes): more is given back.
const KEEP_SLOTS: usize = 8;

/// Why a push was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    #[error("the event queue is full")]
    Full,
    #[error("the session's event writer is gone")]
    Closed,
}

struct Shared {
    state: parking_lot::Mutex<State>,
    /// Wakes the one receiver; a wake-up given while it is not waiting is kept for its next wait.
    ready: tokio::sync::Notify,
    capacity: usize,
}

struct State {
    frames: VecDeque<Frame>,
    senders: usize,
    receiver: bool,
}

/// A queue holding at most `capacity` frames.
pub fn queue(capacity: usize) -> (Sender, Receiver) {
    let shared = Arc::new(Shared {
        state: parking_lot::Mutex::new(State { frames: VecDeque::new(), senders: 1, receiver: true }),
        ready: tokio::sync::Notify::new(),
        capacity,
    });
    (Sender(shared.clone()), Receiver(shared))
}

/// The pushing end; clones share the queue, and the queue ends when the last is dropped.
pub struct Sender(Arc<Shared>);

impl Sender {
    /// Queues `frame` without waiting.
    pub fn try_send(&self, frame: Frame) -> Result<(), PushError> {
        let mut s = self.0.state.lock();
        if !s.receiver {
            return Err(PushError::Closed);
        }
        if s.frames.len() >= self.0.capacity {
            return Err(PushError::Full);
        }
        s.frames.push_back(frame);
        drop(s);
        self.0.ready.notify_one();
        Ok(())
    }
}

impl Clone for Sender {
    fn clone(&self) -> Self {
        self.0.state.lock().senders += 1;
        Self(self.0.clone())
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        let mut s = self.0.state.lock();
        s.senders -= 1;
        let last = s.senders == 0;
        drop(s);
        if last {
            self.0.ready.notify_one();
        }
    }
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender").field("queued", &self.0.state.lock().frames.len()).finish()
    }
}

/// The draining end (one per queue).
pub struct Receiver(Arc<Shared>);

impl Receiver {
    /// The next frame, waiting for one; `None` once every sender is gone and the queue is drained.
    pub async fn recv(&mut self) -> Option<Frame> {
        loop {
            {
                let mut s = self.0.state.lock();
                if let Some(frame) = pop(&mut s) {
                    return Some(frame);
                }
                if s.senders == 0 {
                    return None;
                }
            }
            self.0.ready.notified().await;
        }
    }

    /// The next frame if one is queued.
    pub fn try_recv(&mut self) -> Option<Frame> {
        pop(&mut self.0.state.lock())
    }
}

fn pop(s: &mut State) -> Option<Frame> {
    let frame = s.frames.pop_front()?;
    if s.frames.is_empty() && s.frames.capacity() > KEEP_SLOTS {
        s.frames = VecDeque::new();
    }
    Some(frame)
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let mut s = self.0.state.lock();
        s.receiver = false;
        s.frames = VecDeque::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(b: u8) -> Frame {
        Frame::from(vec![b])
    }

    #[tokio::test]
    async fn frames_come_out_in_order_and_the_end_after_the_last() {
        let (tx, mut rx) = queue(4);
        let other = tx.clone();
        tx.try_send(frame(1)).unwrap();
        other.try_send(frame(2)).unwrap();
        drop(tx);
        assert_eq!(rx.recv().await.as_deref(), Some(&[1u8][..]));
        drop(other);
        // Every sender gone: what was queued still comes out, then the end.
        assert_eq!(rx.recv().await.as_deref(), Some(&[2u8][..]));
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn a_full_queue_refuses_and_takes_again_once_drained() {
        let (tx, mut rx) = queue(2);
        tx.try_send(frame(1)).unwrap();
        tx.try_send(frame(2)).unwrap();
        assert_eq!(tx.try_send(frame(3)), Err(PushError::Full));
        assert_eq!(rx.try_recv().as_deref(), Some(&[1u8][..]));
        tx.try_send(frame(3)).unwrap();
        assert_eq!(rx.try_recv().as_deref(), Some(&[2u8][..]));
        assert_eq!(rx.try_recv().as_deref(), Some(&[3u8][..]));
        assert_eq!(rx.try_recv(), None);
    }

    #[tokio::test]
    async fn a_push_after_the_writer_is_gone_is_refused() {
        let (tx, rx) = queue(2);
        drop(rx);
        assert_eq!(tx.try_send(frame(1)), Err(PushError::Closed));
    }

    #[tokio::test]
    async fn a_waiting_receiver_wakes_for_a_push_and_for_the_end() {
        let (tx, mut rx) = queue(2);
        let waiting = tokio::spawn(async move {
            let first = rx.recv().await;
            let end = rx.recv().await;
            (first, end)
        });
        tokio::task::yield_now().await;
        tx.try_send(frame(7)).unwrap();
        tokio::task::yield_now().await;
        drop(tx);
        let (first, end) = waiting.await.unwrap();
        assert_eq!(first.as_deref(), Some(&[7u8][..]));
        assert_eq!(end, None);
    }

    #[tokio::test]
    async fn a_drained_queue_gives_its_room_back() {
        let (tx, mut rx) = queue(256);
        for i in 0..200 {
            tx.try_send(frame(i)).unwrap();
        }
        while rx.try_recv().is_some() {}
        assert!(rx.0.state.lock().frames.capacity() <= KEEP_SLOTS);
    }
}
