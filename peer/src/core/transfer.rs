//! A file transfer's states and the moves between them, as both sides see them. A final state (done,
//! declined, cancelled, failed) is never left; every other state may move anywhere (a resumed offer can
//! find the receiver at any point). The database applies that rule in the statement that moves a transfer
//! (`transfers::set_state` and `transfers::done` only touch rows in [`OPEN_STATES`]), so a late
//! "interrupted" cannot reopen a transfer that was cancelled or finished meanwhile.

use shared::control::{Transfer, TransferState};
use shared::files::OfferAnswer;

/// The states a transfer can still leave.
pub(crate) const OPEN_STATES: [TransferState; 3] =
    [TransferState::Waiting, TransferState::Offered, TransferState::Transferring];

/// The receiver's answer to an offer it has seen before (the sender offers again to learn where it
/// stands): from the receiver's record of it, with `have` bytes on disk.
pub(crate) fn answer_repeated_offer(state: TransferState, have: u64) -> OfferAnswer {
    match state {
        TransferState::Done => OfferAnswer::Done,
        TransferState::Declined => OfferAnswer::Declined,
        TransferState::Cancelled | TransferState::Failed => OfferAnswer::Cancelled,
        TransferState::Waiting | TransferState::Offered => OfferAnswer::Offered,
        TransferState::Transferring => OfferAnswer::Receiving { have },
    }
}

/// Where the sender's record moves on the receiver's answer to its offer (with why, for the user).
/// `Done` is recorded with the file's size by the caller.
pub(crate) fn after_answer(answer: &OfferAnswer, peer: &str) -> (TransferState, Option<String>) {
    match answer {
        // The receiver drives from here: it fetches once accepted.
        OfferAnswer::Offered => (TransferState::Offered, None),
        OfferAnswer::Receiving { .. } => (TransferState::Transferring, None),
        OfferAnswer::Done => (TransferState::Done, None),
        OfferAnswer::Declined => (TransferState::Declined, Some(format!("{peer} declined the file"))),
        OfferAnswer::Cancelled => (TransferState::Cancelled, Some(format!("{peer} cancelled it"))),
    }
}

/// Why the user cannot accept this transfer now.
pub(crate) fn check_accept(t: &Transfer) -> Result<(), String> {
    if t.outgoing {
        return Err(format!("{} is a file you are sending; only {} can accept it", t.name, t.peer));
    }
    match t.state {
        TransferState::Offered => Ok(()),
        TransferState::Transferring => Err(format!("{} is already accepted", t.name)),
        s => Err(format!("{} is {}; it cannot be accepted any more", t.name, s.as_str())),
    }
}

/// Why the user cannot decline this transfer.
pub(crate) fn check_decline(t: &Transfer) -> Result<(), String> {
    if t.outgoing || t.state != TransferState::Offered {
        return Err(
            "only a file offered to you and not yet accepted can be declined; `peer files cancel` stops others".into(),
        );
    }
    Ok(())
}

/// Why the user cannot cancel this transfer.
pub(crate) fn check_cancel(t: &Transfer) -> Result<(), String> {
    if t.state.is_final() {
        return Err(format!("{} is already {}", t.name, t.state.as_str()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use TransferState::*;

    const ALL: [TransferState; 7] = [Waiting, Offered, Transferring, Done, Declined, Cancelled, Failed];

    fn transfer(outgoing: bool, state: TransferState) -> Transfer {
        Transfer {
            id: "00".repeat(16),
            peer: "bob".into(),
            outgoing,
            name: "a.txt".into(),
            size: 10,
            hash: String::new(),
            state,
            bytes: 0,
            path: None,
            error: None,
            resumed_from: 0,
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn the_open_states_are_exactly_those_not_final() {
        for s in ALL {
            assert_eq!(OPEN_STATES.contains(&s), !s.is_final(), "{s:?}");
        }
    }

    #[test]
    fn a_repeated_offer_is_answered_from_the_receivers_record_and_the_sender_follows_it() {
        for (state, answer, sender) in [
            (Done, OfferAnswer::Done, Done),
            (Declined, OfferAnswer::Declined, Declined),
            (Cancelled, OfferAnswer::Cancelled, Cancelled),
            (Failed, OfferAnswer::Cancelled, Cancelled),
            (Waiting, OfferAnswer::Offered, Offered),
            (Offered, OfferAnswer::Offered, Offered),
            (Transferring, OfferAnswer::Receiving { have: 7 }, Transferring),
        ] {
            let got = answer_repeated_offer(state, 7);
            assert_eq!(got, answer, "receiver in {state:?}");
            assert_eq!(after_answer(&got, "bob").0, sender, "sender after {got:?}");
        }
        assert_eq!(after_answer(&OfferAnswer::Declined, "bob").1.as_deref(), Some("bob declined the file"));
    }

    #[test]
    fn what_the_user_may_do_in_each_state() {
        for state in ALL {
            let incoming = transfer(false, state);
            let outgoing = transfer(true, state);
            assert_eq!(check_accept(&incoming).is_ok(), state == Offered, "accept {state:?}");
            assert!(check_accept(&outgoing).is_err(), "the sender never accepts");
            assert_eq!(check_decline(&incoming).is_ok(), state == Offered, "decline {state:?}");
            assert!(check_decline(&outgoing).is_err(), "the sender never declines");
            assert_eq!(check_cancel(&incoming).is_ok(), !state.is_final(), "cancel {state:?}");
            assert_eq!(check_cancel(&outgoing).is_ok(), !state.is_final(), "cancel {state:?}");
        }
    }
}
