//! The chat outbox's decisions: which sends go in the next delivery run for a friend, and what a run's
//! answers settle. The shell (`chat.rs`) stores, sends and answers `peer send`; this decides.
//!
//! Two rules keep order: every delivery to a friend, new sends and retries of what is stored alike, goes
//! through that friend's one run at a time ([`Queues`]), and a run settles its messages in order, stopping
//! at the first one no device stored ([`settle`]) so that nothing overtakes it.

use shared::peer::PeerAck;
use std::collections::{HashMap, HashSet};

/// Sends waiting per friend, and whether a delivery run is under way for each.
pub(crate) struct Queues<T> {
    friends: HashMap<String, FriendQueue<T>>,
}

struct FriendQueue<T> {
    waiting: Vec<T>,
    /// A run is delivering to this friend.
    running: bool,
    /// Nothing older is waiting in the database (the last run delivered everything), so the next batch
    /// may go straight from memory; until then every run reads the stored backlog first.
    clean: bool,
    /// Asked to try the stored backlog again (the friend came online, the broker session is back, the
    /// periodic retry).
    retry: bool,
}

impl<T> Default for FriendQueue<T> {
    fn default() -> Self {
        Self { waiting: Vec::new(), running: false, clean: false, retry: false }
    }
}

impl<T> Default for Queues<T> {
    fn default() -> Self {
        Self { friends: HashMap::new() }
    }
}

/// What one run does next.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Batch<T> {
    /// New sends. `clean`: nothing older is stored, so they may go from memory while they are stored.
    Sends { items: Vec<T>, clean: bool },
    /// No new sends: deliver what is stored for the friend, oldest first.
    Backlog,
}

impl<T> Queues<T> {
    /// Queues a send. `true`: no run is under way for this friend, start one (it takes batches with
    /// [`Queues::next_batch`] until that says stop).
    pub(crate) fn push(&mut self, friend: &str, item: T) -> bool {
        let q = self.friends.entry(friend.to_string()).or_default();
        q.waiting.push(item);
        !std::mem::replace(&mut q.running, true)
    }

    /// Asks for the stored backlog to be tried again. `true`: no run is under way for this friend, start
    /// one. A run under way takes the request as its next batch, so a retry never races a send.
    pub(crate) fn retry(&mut self, friend: &str) -> bool {
        let q = self.friends.entry(friend.to_string()).or_default();
        q.retry = true;
        !std::mem::replace(&mut q.running, true)
    }

    /// What the run under way does next: every send waiting for the friend (they include any retry, as
    /// their run reads the backlog first when it is not clean), else the backlog if a retry was asked for;
    /// `None` when nothing is left, and the run ends (the next send or retry starts a new one).
    pub(crate) fn next_batch(&mut self, friend: &str) -> Option<Batch<T>> {
        let q = self.friends.get_mut(friend)?;
        if !q.waiting.is_empty() {
            if !q.clean {
                q.retry = false;
            }
            return Some(Batch::Sends { items: std::mem::take(&mut q.waiting), clean: q.clean });
        }
        if std::mem::take(&mut q.retry) {
            return Some(Batch::Backlog);
        }
        q.running = false;
        if !q.clean {
            // Nothing worth remembering: the next run reads the backlog anyway. Keeps the map to the
            // friends actually being written to.
            self.friends.remove(friend);
        }
        None
    }

    /// A batch's run is over: `all_delivered` if every one of its messages (or the whole backlog) reached
    /// the friend.
    pub(crate) fn finished(&mut self, friend: &str, all_delivered: bool) {
        if let Some(q) = self.friends.get_mut(friend) {
            q.clean = all_delivered;
        }
    }

    /// Whether a run is under way for the friend.
    #[cfg(test)]
    fn running(&self, friend: &str) -> bool {
        self.friends.get(friend).is_some_and(|q| q.running)
    }
}

/// What a run's answers settle, by position in the run's messages.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Settlement {
    /// Stored by a device of the friend.
    pub(crate) delivered: Vec<usize>,
    /// Refused for good, with why: retrying will not help.
    pub(crate) failed: Vec<(usize, String)>,
    /// Stored by no device yet, but sealed in the mailbox of every device of the friend's that takes
    /// letters.
    pub(crate) sent: Vec<usize>,
    /// The first message that no device stored or refused: it and every one after it stay queued.
    pub(crate) queued_from: Option<usize>,
}

/// Which messages of a run went into whose mailbox.
#[derive(Debug, Default)]
pub(crate) struct Mail {
    /// The friend's devices that take letters.
    pub(crate) devices: Vec<[u8; 32]>,
    /// (device, message index) for every message sealed into that device's mailbox.
    pub(crate) deposited: HashSet<([u8; 32], usize)>,
}

/// Settles `count` messages sent in order from the answers of each device that was reached (each list in
/// message order, possibly cut short) and what went into mailboxes. A message counts as delivered if any
/// device stored it; otherwise refused if a device refused it; otherwise sent if every device that takes
/// letters has it in its mailbox (there being at least one); otherwise it is the gap, and nothing after it
/// is settled.
pub(crate) fn settle(count: usize, answers: &[Vec<PeerAck>], mail: &Mail) -> Settlement {
    let mut out = Settlement::default();
    for i in 0..count {
        let mine = || answers.iter().filter_map(move |a| a.get(i));
        if mine().any(|a| *a == PeerAck::Stored) {
            out.delivered.push(i);
        } else if let Some(why) = mine().find_map(|a| match a {
            PeerAck::Refused(why) => Some(why.clone()),
            _ => None,
        }) {
            out.failed.push((i, why));
        } else if !mail.devices.is_empty() && mail.devices.iter().all(|d| mail.deposited.contains(&(*d, i))) {
            out.sent.push(i);
        } else {
            out.queued_from = Some(i);
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use PeerAck::{Refused, Stored};

    fn no(why: &str) -> PeerAck {
        Refused(why.into())
    }

    #[test]
    fn settle_table() {
        struct Case {
            name: &'static str,
            count: usize,
            answers: Vec<Vec<PeerAck>>,
            delivered: Vec<usize>,
            failed: Vec<(usize, &'static str)>,
            queued_from: Option<usize>,
        }
        let cases = [
            Case {
                name: "all stored",
                count: 3,
                answers: vec![vec![Stored, Stored, Stored]],
                delivered: vec![0, 1, 2],
                failed: vec![],
                queued_from: None,
            },
            Case {
                name: "no device reached",
                count: 2,
                answers: vec![],
                delivered: vec![],
                failed: vec![],
                queued_from: Some(0),
            },
            Case {
                name: "cut short: the rest stay queued in order",
                count: 4,
                answers: vec![vec![Stored, Stored]],
                delivered: vec![0, 1],
                failed: vec![],
                queued_from: Some(2),
            },
            Case {
                name: "a refusal does not stop the ones after it",
                count: 3,
                answers: vec![vec![Stored, no("too long"), Stored]],
                delivered: vec![0, 2],
                failed: vec![(1, "too long")],
                queued_from: None,
            },
            Case {
                name: "stored on one device beats a refusal on another",
                count: 2,
                answers: vec![vec![no("full"), Stored], vec![Stored, no("full")]],
                delivered: vec![0, 1],
                failed: vec![],
                queued_from: None,
            },
            Case {
                name: "one device's gap is filled by another",
                count: 3,
                answers: vec![vec![Stored], vec![Stored, Stored, Stored]],
                delivered: vec![0, 1, 2],
                failed: vec![],
                queued_from: None,
            },
            Case {
                name: "nothing after a gap is settled, even if stored later in the list",
                count: 3,
                answers: vec![vec![Stored, PeerAck::Batch(vec![]), Stored]],
                delivered: vec![0],
                failed: vec![],
                queued_from: Some(1),
            },
        ];
        for c in cases {
            let got = settle(c.count, &c.answers, &Mail::default());
            let want = Settlement {
                delivered: c.delivered,
                failed: c.failed.into_iter().map(|(i, w)| (i, w.to_string())).collect(),
                sent: vec![],
                queued_from: c.queued_from,
            };
            assert_eq!(got, want, "{}", c.name);
        }
    }

    #[test]
    fn the_mailbox_settles_what_no_device_took() {
        let (a, b) = ([1; 32], [2; 32]);
        let mail = |deposited: &[([u8; 32], usize)]| Mail {
            devices: vec![a, b],
            deposited: deposited.iter().copied().collect(),
        };
        // Device a took the first directly; both mailboxes have the second; only a's has the third.
        let got = settle(3, &[vec![Stored]], &mail(&[(b, 0), (a, 1), (b, 1), (a, 2)]));
        assert_eq!(got.delivered, vec![0]);
        assert_eq!(got.sent, vec![1]);
        assert_eq!(got.queued_from, Some(2), "in one mailbox of two: not sent, and it stops there");
        // No device takes letters (an older agent, a broker without a mailbox): queued as before.
        let none = settle(1, &[], &Mail { devices: vec![], deposited: HashSet::new() });
        assert_eq!(none.queued_from, Some(0));
        assert!(none.sent.is_empty());
    }

    fn sends<T>(items: Vec<T>, clean: bool) -> Option<Batch<T>> {
        Some(Batch::Sends { items, clean })
    }

    #[test]
    fn one_run_per_friend_and_batches_take_everything_waiting() {
        let mut q = Queues::default();
        assert!(q.push("bob", 1), "the first send starts a run");
        assert!(!q.push("bob", 2), "a second send joins it");
        assert!(q.push("carol", 9), "friends run independently");
        assert_eq!(q.next_batch("bob"), sends(vec![1, 2], false));
        assert!(!q.push("bob", 3), "sent during a run: goes in the next batch, no second run");
        q.finished("bob", true);
        assert_eq!(q.next_batch("bob"), sends(vec![3], true));
        q.finished("bob", false);
        assert_eq!(q.next_batch("bob"), None, "nothing left: the run ends");
        assert!(!q.running("bob"));
        assert!(q.push("bob", 4), "after the run ended, a send starts a new one");
        assert_eq!(q.next_batch("bob"), sends(vec![4], false), "the backlog is read first");
    }

    #[test]
    fn clean_is_remembered_between_runs() {
        let mut q = Queues::default();
        q.push("bob", 1);
        q.next_batch("bob");
        q.finished("bob", true);
        assert_eq!(q.next_batch("bob"), None);
        q.push("bob", 2);
        assert_eq!(q.next_batch("bob"), sends(vec![2], true));
    }

    #[test]
    fn retries_go_through_the_friends_one_run() {
        let mut q: Queues<u8> = Queues::default();
        assert!(q.retry("bob"), "a retry with no run under way starts one");
        assert!(!q.retry("bob"), "asked again before it ran: still one run, one backlog pass");
        assert_eq!(q.next_batch("bob"), Some(Batch::Backlog));
        assert!(!q.retry("bob"), "asked during the backlog pass: the same run does another");
        assert!(!q.push("bob", 1));
        assert_eq!(q.next_batch("bob"), sends(vec![1], false), "sends first; their run reads the backlog too");
        q.finished("bob", true);
        assert_eq!(q.next_batch("bob"), None, "the retry was served by that run");
        assert!(!q.running("bob"));
    }

    #[test]
    fn a_retry_after_a_clean_run_still_reads_the_backlog() {
        let mut q = Queues::default();
        q.push("bob", 1);
        q.next_batch("bob");
        q.finished("bob", true);
        assert!(!q.retry("bob"), "the run is still under way");
        assert!(!q.push("bob", 2));
        assert_eq!(q.next_batch("bob"), sends(vec![2], true), "clean sends go from memory");
        assert_eq!(q.next_batch("bob"), Some(Batch::Backlog), "and the retry still has its pass");
        assert_eq!(q.next_batch("bob"), None);
    }

    #[test]
    fn unknown_friend_has_no_batch() {
        let mut q: Queues<u8> = Queues::default();
        assert_eq!(q.next_batch("nobody"), None);
        q.finished("nobody", true);
        assert_eq!(q.next_batch("nobody"), None);
    }
}
