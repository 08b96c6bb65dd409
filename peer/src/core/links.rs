//! Which connection to a friend's device is kept when there are two: both agents' attempts completed at
//! once (simultaneous open, which the broker arranges on purpose to open both NATs), or a direct path
//! opened beside a relayed one. Both agents must keep the same connection without asking each other, or
//! each would close the one the other kept.

use certs::Fingerprint;

/// How a connection's packets travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Path {
    Direct,
    /// Through the broker's relay.
    Relayed,
}

impl Path {
    /// As `peer status` and `friends --json` name it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Relayed => "relayed",
        }
    }
}

/// Whether the `new` connection replaces the live `old` one. A direct path beats a relayed one (it is
/// faster and costs the broker nothing); between two of a kind, both sides keep the one opened by the side
/// with the smaller device fingerprint, which each side can tell from `new_opened_by_me`.
pub(crate) fn keep_new(me: &Fingerprint, them: &Fingerprint, old: Path, new: Path, new_opened_by_me: bool) -> bool {
    if old != new {
        return old == Path::Relayed;
    }
    (me < them) == new_opened_by_me
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One connection as one agent sees it: its path, and whether this agent opened it.
    #[derive(Clone, Copy, PartialEq, Debug)]
    struct Conn {
        path: Path,
        opened_by_a: bool,
    }

    /// Which connection an agent keeps when it learns of `first` and then `second`.
    fn kept(me: &Fingerprint, them: &Fingerprint, i_am_a: bool, first: Conn, second: Conn) -> Conn {
        let mine = |c: Conn| c.opened_by_a == i_am_a;
        if keep_new(me, them, first.path, second.path, mine(second)) { second } else { first }
    }

    #[test]
    fn both_sides_keep_the_same_connection_whatever_order_they_learn_of_them() {
        let (a, b) = (Fingerprint([1; 32]), Fingerprint([2; 32]));
        let paths = [Path::Direct, Path::Relayed];
        for (fa, fb) in [(a, b), (b, a)] {
            for p1 in paths {
                for p2 in paths {
                    // One connection opened by each side (simultaneous open).
                    let by_a = Conn { path: p1, opened_by_a: true };
                    let by_b = Conn { path: p2, opened_by_a: false };
                    for a_order in [(by_a, by_b), (by_b, by_a)] {
                        for b_order in [(by_a, by_b), (by_b, by_a)] {
                            let at_a = kept(&fa, &fb, true, a_order.0, a_order.1);
                            let at_b = kept(&fb, &fa, false, b_order.0, b_order.1);
                            assert_eq!(at_a, at_b, "paths {p1:?}/{p2:?}, orders {a_order:?} {b_order:?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn direct_beats_relayed() {
        let (a, b) = (Fingerprint([1; 32]), Fingerprint([2; 32]));
        for by_me in [true, false] {
            assert!(keep_new(&a, &b, Path::Relayed, Path::Direct, by_me));
            assert!(!keep_new(&a, &b, Path::Direct, Path::Relayed, by_me));
        }
    }

    #[test]
    fn of_a_kind_the_smaller_fingerprint_opens_the_kept_one() {
        let (small, big) = (Fingerprint([1; 32]), Fingerprint([2; 32]));
        // The smaller side keeps what it opened; the bigger side keeps what the smaller opened.
        assert!(keep_new(&small, &big, Path::Direct, Path::Direct, true));
        assert!(!keep_new(&small, &big, Path::Direct, Path::Direct, false));
        assert!(keep_new(&big, &small, Path::Direct, Path::Direct, false));
        assert!(!keep_new(&big, &small, Path::Direct, Path::Direct, true));
    }
}
