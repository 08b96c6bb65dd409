//! The local copy of a group's log: the broker numbers each group's messages 1, 2, 3, ...; the agent keeps
//! them in that order with no holes, so what it shows is what every member sees.

/// What to do with a group message that arrived live.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Already stored (a repeat, or fetched by a catch-up that overtook the event).
    Ignore,
    /// The next one: store and show it.
    Store,
    /// Messages are missing before it (offline, or an event was dropped): fetch everything after `after`;
    /// the message itself comes with them.
    CatchUp { after: i64 },
}

/// `last`: the highest sequence number stored; `seq`: the arriving message's.
pub(crate) fn on_live(last: i64, seq: i64) -> Step {
    if seq <= last {
        Step::Ignore
    } else if seq == last + 1 {
        Step::Store
    } else {
        Step::CatchUp { after: last }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        for (last, seq, want) in [
            (0, 1, Step::Store),
            (5, 6, Step::Store),
            (5, 5, Step::Ignore),
            (5, 2, Step::Ignore),
            (0, 3, Step::CatchUp { after: 0 }),
            (5, 9, Step::CatchUp { after: 5 }),
        ] {
            assert_eq!(on_live(last, seq), want, "last {last}, seq {seq}");
        }
    }
}
