//! The agent's broker session: how a session's start and end are read, how long to wait before the next
//! one, and what each pushed event asks of the agent. The shell (`agent.rs`) connects, reads and performs
//! the [`Effect`]s; this decides.

use certs::Fingerprint;
use shared::backoff::Backoff;
use shared::proto::{DeviceEndpoint, ErrorCode, Event, GroupMessage, Response, UserInfo};
use shared::trust::{AccountKey, CertifiedDevice, SignedRevocation};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

/// How a broker session ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// It was up and then dropped: reconnect promptly.
    Lost(String),
    /// It was up and then went silent (nothing heard within the idle timeout): the host may be gone, so
    /// with several brokers the next is tried first; reconnect promptly.
    Silent(String),
    /// It never came up: reconnect with growing delays.
    Failed(String),
    /// Reconnecting cannot help (the token was refused or revoked, the broker's identity changed).
    Fatal(String),
}

impl End {
    pub(crate) fn reason(&self) -> &str {
        match self {
            End::Lost(r) | End::Silent(r) | End::Failed(r) | End::Fatal(r) => r,
        }
    }

    /// Whether the next session should go to the next of several brokers: this one never answered, or went
    /// silent. One that closed or reset the session is tried again first: it is up (it may have restarted).
    pub(crate) fn moves_on(&self) -> bool {
        matches!(self, End::Failed(_) | End::Silent(_))
    }
}

/// What the broker's answer to `Hello` opened.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Welcome {
    pub(crate) session_id: u64,
    pub(crate) user: UserInfo,
    pub(crate) observed_addr: SocketAddr,
}

/// Reads the answer to `Hello` (or why there was none).
pub(crate) fn on_hello(answer: Result<Response, String>) -> Result<Welcome, End> {
    match answer {
        Ok(Response::Welcome { session_id, user, observed_addr }) => Ok(Welcome { session_id, user, observed_addr }),
        Ok(Response::Error(e)) if e.code == ErrorCode::InvalidToken => Err(End::Fatal(e.message)),
        Ok(other) => Err(End::Failed(format!("unexpected answer to hello: {other:?}"))),
        Err(e) => Err(End::Failed(e)),
    }
}

/// When to try again after sessions end: at once after a session that was up (the broker restarted or the
/// network moved), with growing delays while none comes up, never after a fatal end.
#[derive(Default)]
pub(crate) struct Reconnect {
    backoff: Backoff,
}

impl Reconnect {
    /// The wait before the next session, or `None`: stop. `jitter` in [0, 1) spreads agents that lost the
    /// same broker at the same moment.
    pub(crate) fn after(&mut self, end: &End, jitter: f64) -> Option<Duration> {
        match end {
            End::Fatal(_) => return None,
            End::Lost(_) | End::Silent(_) => self.backoff.reset(),
            End::Failed(_) => {}
        }
        Some(self.backoff.next_delay(jitter))
    }
}

/// What a pushed event asks the agent to do, in order.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Effect {
    /// Forget the last lookup of the friend's devices: the next send asks the broker again.
    ForgetDevices(String),
    /// Retry what waits for the friend (messages, file offers and fetches).
    Retry(String),
    /// No longer a friend: refuse their keys and close their connections.
    Unfriend(String),
    /// A new friend.
    Befriend(String),
    /// Keep only these device keys of the friend (the others were cut off).
    KeepDevices(String, Vec<Fingerprint>),
    /// A friend's device is about to connect: accept its key (if still a friend and its record verifies
    /// under the pinned account key) and open paths towards it.
    Expect(String, Option<AccountKey>, CertifiedDevice),
    /// A friend cut one of their devices off: check the revocation against their pinned key, then drop it.
    Revoke(String, SignedRevocation),
    /// A friend replaced their account key: look them up now, so that the change is noticed (and held).
    CheckKey(String),
    /// A new device claimed one of our link codes: connect to it and check its proof.
    Link([u8; 5], DeviceEndpoint),
    /// Letters wait in this device's mailbox: pick them up.
    Pickup,
    /// Store a group message in order (fetching any gap), then show it.
    Group(GroupMessage),
    /// Tell watchers.
    Emit(Event),
    /// The session was revoked: it ends for good.
    Revoked,
}

/// One broker session's view of the pushed events.
#[derive(Default)]
pub(crate) struct Session {
    /// Last known presence of each friend in this session: the broker may say "online" twice when two
    /// friends log in at the same moment (its snapshot and its announcement cross); watchers hear it once.
    presence: HashMap<String, bool>,
}

impl Session {
    pub(crate) fn on_event(&mut self, event: Event) -> Vec<Effect> {
        let mut fx = Vec::new();
        match &event {
            Event::SessionRevoked => return vec![Effect::Revoked],
            Event::Presence { username, online, .. } => {
                // Any device change: look the friend up afresh, and retry what is queued for them.
                fx.push(Effect::ForgetDevices(username.clone()));
                if *online {
                    fx.push(Effect::Retry(username.clone()));
                }
                if self.presence.insert(username.clone(), *online) == Some(*online) {
                    return fx;
                }
            }
            Event::FriendRemoved { username } => {
                self.presence.remove(username);
                fx.push(Effect::ForgetDevices(username.clone()));
                fx.push(Effect::Unfriend(username.clone()));
            }
            Event::FriendAccepted { friend } => fx.push(Effect::Befriend(friend.username.clone())),
            Event::FriendDevices { username, fingerprints } => {
                fx.push(Effect::ForgetDevices(username.clone()));
                fx.push(Effect::KeepDevices(username.clone(), fingerprints.iter().map(|f| Fingerprint(*f)).collect()));
            }
            // A caller without a record cannot be checked: this agent trusts only what a friend's key signed.
            Event::PeerIncoming { .. } => return Vec::new(),
            Event::PeerCalling { username, account_key, device } => {
                return vec![Effect::Expect(username.clone(), *account_key, device.clone())];
            }
            Event::DeviceRevoked { username, revocation } => {
                fx.push(Effect::ForgetDevices(username.clone()));
                fx.push(Effect::Revoke(username.clone(), revocation.clone()));
            }
            Event::AccountKeyChanged { username } => {
                fx.push(Effect::ForgetDevices(username.clone()));
                fx.push(Effect::CheckKey(username.clone()));
            }
            Event::LinkClaimed { link_id, device } => return vec![Effect::Link(*link_id, device.clone())],
            Event::MailWaiting => return vec![Effect::Pickup],
            Event::GroupMessage(m) => return vec![Effect::Group(m.clone())],
            Event::FriendRequest { .. }
            | Event::FriendProfile { .. }
            | Event::GroupInvited(_)
            | Event::GroupPresence { .. } => {}
        }
        fx.push(Effect::Emit(event));
        fx
    }

    /// Whether the friend is online, as this session last heard.
    #[cfg(test)]
    fn online(&self, friend: &str) -> Option<bool> {
        self.presence.get(friend).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::proto::ErrorBody as ApiError;

    fn presence(user: &str, online: bool) -> Event {
        Event::Presence { username: user.into(), online, at: 1 }
    }

    fn user(name: &str) -> UserInfo {
        UserInfo { username: name.into(), display_name: name.into() }
    }

    #[test]
    fn hello_answers() {
        let welcome =
            Response::Welcome { session_id: 7, user: user("alice"), observed_addr: "127.0.0.1:9".parse().unwrap() };
        assert_eq!(on_hello(Ok(welcome)).map(|w| w.session_id), Ok(7));
        let refused = Response::Error(ApiError { code: ErrorCode::InvalidToken, message: "log in again".into() });
        assert_eq!(on_hello(Ok(refused)), Err(End::Fatal("log in again".into())));
        let busy = Response::Error(ApiError {
            code: ErrorCode::RateLimited { retry_after_secs: 1 },
            message: "slow down".into(),
        });
        assert!(matches!(on_hello(Ok(busy)), Err(End::Failed(_))), "only a refused token is fatal");
        assert_eq!(on_hello(Err("timed out".into())), Err(End::Failed("timed out".into())));
    }

    #[test]
    fn reconnect_waits_grow_while_failing_and_restart_after_a_session_was_up() {
        let mut r = Reconnect::default();
        let fail = End::Failed("refused".into());
        let first = r.after(&fail, 0.0).unwrap();
        let second = r.after(&fail, 0.0).unwrap();
        let third = r.after(&fail, 0.0).unwrap();
        assert!(first < second && second < third, "{first:?} {second:?} {third:?}");
        assert_eq!(r.after(&End::Lost("reset".into()), 0.0), Some(first), "a session that was up resets the delay");
        assert_eq!(r.after(&End::Fatal("revoked".into()), 0.0), None);
        r.after(&fail, 0.0);
        assert_eq!(r.after(&End::Silent("timed out".into()), 0.0), Some(first), "so does one that went silent");
    }

    #[test]
    fn a_broker_that_never_answered_or_went_silent_is_left_for_the_next() {
        assert!(End::Failed("no answer".into()).moves_on());
        assert!(End::Silent("timed out".into()).moves_on());
        assert!(!End::Lost("reset".into()).moves_on(), "a broker that reset the session is up: try it again");
        assert!(!End::Fatal("revoked".into()).moves_on());
    }

    #[test]
    fn presence_is_told_once_and_online_retries() {
        let mut s = Session::default();
        let fx = s.on_event(presence("bob", true));
        assert_eq!(
            fx,
            vec![Effect::ForgetDevices("bob".into()), Effect::Retry("bob".into()), Effect::Emit(presence("bob", true))]
        );
        let again = s.on_event(presence("bob", true));
        assert_eq!(again, vec![Effect::ForgetDevices("bob".into()), Effect::Retry("bob".into())], "not told twice");
        let off = s.on_event(presence("bob", false));
        assert_eq!(off, vec![Effect::ForgetDevices("bob".into()), Effect::Emit(presence("bob", false))]);
        assert_eq!(s.online("bob"), Some(false));
    }

    #[test]
    fn removal_forgets_presence_so_a_new_friendship_hears_it_again() {
        let mut s = Session::default();
        s.on_event(presence("bob", true));
        let removed = Event::FriendRemoved { username: "bob".into() };
        let fx = s.on_event(removed.clone());
        assert_eq!(
            fx,
            vec![Effect::ForgetDevices("bob".into()), Effect::Unfriend("bob".into()), Effect::Emit(removed)]
        );
        assert_eq!(s.online("bob"), None);
        assert!(s.on_event(presence("bob", true)).contains(&Effect::Emit(presence("bob", true))));
    }

    #[test]
    fn events_that_are_handled_not_shown() {
        let mut s = Session::default();
        assert_eq!(s.on_event(Event::SessionRevoked), vec![Effect::Revoked]);
        let device = DeviceEndpoint { fingerprint: [3; 32], observed: "127.0.0.1:1".parse().unwrap(), local: vec![] };
        assert_eq!(
            s.on_event(Event::PeerIncoming { username: "bob".into(), device: device.clone() }),
            vec![],
            "a caller with no record is not even looked at"
        );
        let certified = CertifiedDevice { endpoint: device.clone(), record: None };
        let calling =
            Event::PeerCalling { username: "bob".into(), account_key: Some([9; 32]), device: certified.clone() };
        assert_eq!(s.on_event(calling), vec![Effect::Expect("bob".into(), Some([9; 32]), certified)]);
        let claimed = Event::LinkClaimed { link_id: [1; 5], device: device.clone() };
        assert_eq!(s.on_event(claimed), vec![Effect::Link([1; 5], device)]);
        let reset = Event::AccountKeyChanged { username: "bob".into() };
        assert_eq!(
            s.on_event(reset.clone()),
            vec![Effect::ForgetDevices("bob".into()), Effect::CheckKey("bob".into()), Effect::Emit(reset)]
        );
        let cut = Event::FriendDevices { username: "bob".into(), fingerprints: vec![[1; 32]] };
        assert_eq!(
            s.on_event(cut.clone()),
            vec![
                Effect::ForgetDevices("bob".into()),
                Effect::KeepDevices("bob".into(), vec![Fingerprint([1; 32])]),
                Effect::Emit(cut)
            ]
        );
        let accepted = Event::FriendAccepted { friend: user("carol") };
        assert_eq!(s.on_event(accepted.clone()), vec![Effect::Befriend("carol".into()), Effect::Emit(accepted)]);
    }
}
