//! What `--json` prints: one struct per shape, derived `Serialize`, so the compiler checks every field name
//! and a shape is read in one place. The wire types stay free of serde attributes (bincode would encode
//! them differently); these borrow from them.

use serde::Serialize;
use serde_json::Value;
use shared::control::{AgentEvent, AgentStatus, PeerLink, Transfer};
use shared::proto::{Event, FriendInfo, FriendRequestInfo, GroupMessage, Millis, UserInfo};

/// A view as a JSON value (for callers that add a field, such as an unread count).
pub(crate) fn value(view: impl Serialize) -> Value {
    // Structs of strings, numbers and options with string keys: serialising them cannot fail.
    serde_json::to_value(view).unwrap_or(Value::Null)
}

#[derive(Serialize)]
pub(crate) struct User<'a> {
    pub(crate) username: &'a str,
    pub(crate) display_name: &'a str,
}

impl<'a> From<&'a UserInfo> for User<'a> {
    fn from(u: &'a UserInfo) -> Self {
        Self { username: &u.username, display_name: &u.display_name }
    }
}

/// A live connection to a friend's device: `path` is `direct` or `relayed`; with an agent that keeps them,
/// since when, and how often it moved from the relay to a direct path (`upgrades`) and back (`fallbacks`).
#[derive(Serialize)]
pub(crate) struct Connection<'a> {
    pub(crate) path: &'a str,
    pub(crate) remote_addr: String,
    pub(crate) device_fingerprint: &'a str,
    /// On a relayed path: `channel` or `stream` (see `PeerLink::relay`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) relay: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) path_since: Option<Millis>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) upgrades: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) fallbacks: Option<u32>,
}

impl<'a> Connection<'a> {
    pub(crate) fn new(l: &'a PeerLink, paths: &[shared::control::PathHistory]) -> Self {
        let h = paths.iter().find(|h| h.device_fingerprint == l.device_fingerprint && h.path == l.path);
        Self {
            path: &l.path,
            remote_addr: l.remote_addr.to_string(),
            device_fingerprint: &l.device_fingerprint,
            relay: l.relay.as_deref(),
            path_since: h.map(|h| h.since),
            upgrades: h.map(|h| h.upgrades),
            fallbacks: h.map(|h| h.fallbacks),
        }
    }
}

#[derive(Serialize)]
pub(crate) struct Friend<'a> {
    #[serde(flatten)]
    pub(crate) user: User<'a>,
    pub(crate) remark: Option<&'a str>,
    pub(crate) online: bool,
    pub(crate) since: Option<Millis>,
    pub(crate) connections: Vec<Connection<'a>>,
}

impl<'a> Friend<'a> {
    pub(crate) fn new(f: &'a FriendInfo, links: &'a [PeerLink], paths: &[shared::control::PathHistory]) -> Self {
        Self {
            user: (&f.user).into(),
            remark: f.remark.as_deref(),
            online: f.online,
            since: f.since,
            connections: links
                .iter()
                .filter(|l| l.username == f.user.username)
                .map(|l| Connection::new(l, paths))
                .collect(),
        }
    }
}

#[derive(Serialize)]
pub(crate) struct Request<'a> {
    pub(crate) direction: &'a str,
    #[serde(flatten)]
    pub(crate) user: User<'a>,
    pub(crate) message: &'a str,
    pub(crate) created_at: Millis,
}

impl<'a> Request<'a> {
    pub(crate) fn new(r: &'a FriendRequestInfo, direction: &'a str) -> Self {
        Self { direction, user: (&r.user).into(), message: &r.message, created_at: r.created_at }
    }
}

/// A device connection in `peer status`.
#[derive(Serialize)]
pub(crate) struct Peer<'a> {
    pub(crate) username: &'a str,
    #[serde(flatten)]
    pub(crate) connection: Connection<'a>,
}

#[derive(Serialize)]
pub(crate) struct Status<'a> {
    pub(crate) username: &'a str,
    pub(crate) display_name: Option<&'a str>,
    pub(crate) broker: &'a str,
    pub(crate) broker_fingerprint: &'a str,
    pub(crate) device_fingerprint: &'a str,
    pub(crate) online: bool,
    pub(crate) session_id: Option<u64>,
    pub(crate) observed_addr: Option<String>,
    pub(crate) local_addrs: Vec<String>,
    pub(crate) since: Option<Millis>,
    pub(crate) agent_pid: u32,
    pub(crate) peers: Vec<Peer<'a>>,
}

impl<'a> Status<'a> {
    pub(crate) fn new(s: &'a AgentStatus, paths: &[shared::control::PathHistory]) -> Self {
        Self {
            username: &s.username,
            display_name: s.display_name.as_deref(),
            broker: &s.broker,
            broker_fingerprint: &s.broker_fingerprint,
            device_fingerprint: &s.device_fingerprint,
            online: s.online,
            session_id: s.session_id,
            observed_addr: s.observed_addr.map(|a| a.to_string()),
            local_addrs: s.local_addrs.iter().map(ToString::to_string).collect(),
            since: s.since,
            agent_pid: s.agent_pid,
            peers: s
                .peers
                .iter()
                .map(|p| Peer { username: &p.username, connection: Connection::new(p, paths) })
                .collect(),
        }
    }
}

/// `in` or `out`, as listings say it.
fn direction(outgoing: bool) -> &'static str {
    if outgoing { "out" } else { "in" }
}

#[derive(Serialize)]
pub(crate) struct TransferView<'a> {
    pub(crate) id: &'a str,
    pub(crate) peer: &'a str,
    pub(crate) direction: &'static str,
    pub(crate) name: &'a str,
    pub(crate) size: u64,
    pub(crate) hash: &'a str,
    pub(crate) state: &'static str,
    pub(crate) bytes: u64,
    pub(crate) path: Option<&'a str>,
    pub(crate) error: Option<&'a str>,
    pub(crate) resumed_from: u64,
    pub(crate) created_at: Millis,
    pub(crate) updated_at: Millis,
}

impl<'a> From<&'a Transfer> for TransferView<'a> {
    fn from(t: &'a Transfer) -> Self {
        Self {
            id: &t.id,
            peer: &t.peer,
            direction: direction(t.outgoing),
            name: &t.name,
            size: t.size,
            hash: &t.hash,
            state: t.state.as_str(),
            bytes: t.bytes,
            path: t.path.as_deref(),
            error: t.error.as_deref(),
            resumed_from: t.resumed_from,
            created_at: t.created_at,
            updated_at: t.updated_at,
        }
    }
}

/// A group message's fields (with `type: group_message` when it stands alone).
#[derive(Serialize)]
pub(crate) struct GroupPost<'a> {
    pub(crate) group_id: i64,
    pub(crate) seq: i64,
    pub(crate) username: &'a str,
    pub(crate) system: bool,
    pub(crate) text: &'a str,
    pub(crate) sent_at: Millis,
}

impl<'a> From<&'a GroupMessage> for GroupPost<'a> {
    fn from(m: &'a GroupMessage) -> Self {
        Self { group_id: m.group_id, seq: m.seq, username: &m.sender, system: m.system, text: &m.text, sent_at: m.at }
    }
}

/// A group message in a listing: as in the watch stream, with its `type`.
#[derive(Serialize)]
#[serde(tag = "type", rename = "group_message")]
pub(crate) struct GroupMessageView<'a> {
    #[serde(flatten)]
    pub(crate) post: GroupPost<'a>,
}

/// Presence as the watch stream says it.
#[derive(Serialize)]
pub(crate) struct PresenceView<'a> {
    pub(crate) username: &'a str,
    pub(crate) online: bool,
    pub(crate) changed_at: Millis,
}

/// One watch event, flat, with a `type` and the moment the agent saw it (`at`).
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum EventView<'a> {
    Connected {
        observed_addr: String,
        at: Millis,
    },
    Disconnected {
        reason: &'a str,
        at: Millis,
    },
    MessageReceived {
        username: &'a str,
        id: &'a str,
        text: &'a str,
        sent_at: Millis,
        at: Millis,
    },
    MessageDelivered {
        username: &'a str,
        id: &'a str,
        at: Millis,
    },
    MessageFailed {
        username: &'a str,
        id: &'a str,
        reason: &'a str,
        at: Millis,
    },
    /// In the mailbox of the friend's devices that were not reachable.
    MessageSent {
        username: &'a str,
        id: &'a str,
        at: Millis,
    },
    /// Sent to `username` from another device of this account.
    MessageCopied {
        username: &'a str,
        id: &'a str,
        text: &'a str,
        sent_at: Millis,
        delivered: bool,
        at: Millis,
    },
    FileOffered {
        #[serde(flatten)]
        transfer: TransferView<'a>,
        at: Millis,
    },
    FileUpdated {
        #[serde(flatten)]
        transfer: TransferView<'a>,
        at: Millis,
    },
    FileProgress {
        id: &'a str,
        peer: &'a str,
        direction: &'static str,
        bytes: u64,
        size: u64,
        at: Millis,
    },
    Read {
        conversation: &'a str,
        up_to: i64,
        at: Millis,
    },
    FriendRequest {
        username: &'a str,
        display_name: &'a str,
        message: &'a str,
        created_at: Millis,
        at: Millis,
    },
    FriendAccepted {
        username: &'a str,
        display_name: &'a str,
        at: Millis,
    },
    FriendRemoved {
        username: &'a str,
        at: Millis,
    },
    FriendOnline {
        #[serde(flatten)]
        presence: PresenceView<'a>,
        at: Millis,
    },
    FriendOffline {
        #[serde(flatten)]
        presence: PresenceView<'a>,
        at: Millis,
    },
    FriendProfile {
        username: &'a str,
        display_name: &'a str,
        at: Millis,
    },
    SessionRevoked {
        at: Millis,
    },
    PeerIncoming {
        username: &'a str,
        at: Millis,
    },
    GroupInvitation {
        group_id: i64,
        name: &'a str,
        username: &'a str,
        display_name: &'a str,
        created_at: Millis,
        at: Millis,
    },
    GroupMessage {
        #[serde(flatten)]
        post: GroupPost<'a>,
        at: Millis,
    },
    FriendDevices {
        username: &'a str,
        devices: usize,
        at: Millis,
    },
    GroupMemberOnline {
        group_id: i64,
        #[serde(flatten)]
        presence: PresenceView<'a>,
        at: Millis,
    },
    GroupMemberOffline {
        group_id: i64,
        #[serde(flatten)]
        presence: PresenceView<'a>,
        at: Millis,
    },
    /// The broker served a friend's account key other than the pinned one (found by this agent).
    KeyChanged {
        username: &'a str,
        at: Millis,
    },
    /// A friend said they replaced their account key (their agent will be checked against the pin).
    FriendKeyReset {
        username: &'a str,
        at: Millis,
    },
    DeviceRevoked {
        username: &'a str,
        device: String,
        at: Millis,
    },
    LinkRequest {
        link_id: String,
        device_name: &'a str,
        words: &'a str,
        at: Millis,
    },
    Linked {
        link_id: String,
        device_name: &'a str,
        messages: u64,
        at: Millis,
    },
    LinkFailed {
        link_id: String,
        reason: &'a str,
        at: Millis,
    },
    LinkClaimed {
        link_id: String,
        at: Millis,
    },
    MailWaiting {
        at: Millis,
    },
}

impl<'a> From<&'a AgentEvent> for EventView<'a> {
    fn from(e: &'a AgentEvent) -> Self {
        match e {
            AgentEvent::Connected { observed_addr, at } => {
                Self::Connected { observed_addr: observed_addr.to_string(), at: *at }
            }
            AgentEvent::Disconnected { reason, at } => Self::Disconnected { reason, at: *at },
            AgentEvent::MessageReceived { from, id, text, sent_at, at } => {
                Self::MessageReceived { username: from, id, text, sent_at: *sent_at, at: *at }
            }
            AgentEvent::MessageDelivered { to, id, at } => Self::MessageDelivered { username: to, id, at: *at },
            AgentEvent::MessageFailed { to, id, reason, at } => {
                Self::MessageFailed { username: to, id, reason, at: *at }
            }
            AgentEvent::MessageSent { to, id, at } => Self::MessageSent { username: to, id, at: *at },
            AgentEvent::MessageCopied { to, id, text, sent_at, delivered, at } => {
                Self::MessageCopied { username: to, id, text, sent_at: *sent_at, delivered: *delivered, at: *at }
            }
            AgentEvent::FileOffered { transfer, at } => Self::FileOffered { transfer: transfer.into(), at: *at },
            AgentEvent::FileUpdated { transfer, at } => Self::FileUpdated { transfer: transfer.into(), at: *at },
            AgentEvent::Read { conversation, up_to, at } => Self::Read { conversation, up_to: *up_to, at: *at },
            AgentEvent::FileProgress { id, peer, outgoing, bytes, size, at } => {
                Self::FileProgress { id, peer, direction: direction(*outgoing), bytes: *bytes, size: *size, at: *at }
            }
            AgentEvent::Broker { event, at } => Self::broker(event, *at),
            AgentEvent::KeyChanged { username, at } => Self::KeyChanged { username, at: *at },
            AgentEvent::LinkRequest { link_id, device_name, words, at } => {
                Self::LinkRequest { link_id: hex::encode(link_id), device_name, words, at: *at }
            }
            AgentEvent::Linked { link_id, device_name, messages, at } => {
                Self::Linked { link_id: hex::encode(link_id), device_name, messages: *messages, at: *at }
            }
            AgentEvent::LinkFailed { link_id, reason, at } => {
                Self::LinkFailed { link_id: hex::encode(link_id), reason, at: *at }
            }
        }
    }
}

impl<'a> EventView<'a> {
    fn broker(event: &'a Event, at: Millis) -> Self {
        match event {
            Event::FriendRequest { from, message, created_at } => Self::FriendRequest {
                username: &from.username,
                display_name: &from.display_name,
                message,
                created_at: *created_at,
                at,
            },
            Event::FriendAccepted { friend } => {
                Self::FriendAccepted { username: &friend.username, display_name: &friend.display_name, at }
            }
            Event::FriendRemoved { username } => Self::FriendRemoved { username, at },
            Event::Presence { username, online, at: changed_at } => {
                let presence = PresenceView { username, online: *online, changed_at: *changed_at };
                if *online { Self::FriendOnline { presence, at } } else { Self::FriendOffline { presence, at } }
            }
            Event::FriendProfile { friend } => {
                Self::FriendProfile { username: &friend.username, display_name: &friend.display_name, at }
            }
            Event::SessionRevoked => Self::SessionRevoked { at },
            Event::PeerIncoming { username, .. } | Event::PeerCalling { username, .. } => {
                Self::PeerIncoming { username, at }
            }
            Event::AccountKeyChanged { username } => Self::FriendKeyReset { username, at },
            Event::DeviceRevoked { username, revocation } => {
                Self::DeviceRevoked { username, device: hex::encode(revocation.body.fingerprint), at }
            }
            // The agent handles it and tells watchers with `LinkRequest` once the device proved the code.
            Event::LinkClaimed { link_id, .. } => Self::LinkClaimed { link_id: hex::encode(link_id), at },
            // The agent picks the letters up and tells watchers of each message it stores.
            Event::MailWaiting => Self::MailWaiting { at },
            Event::GroupInvited(i) => Self::GroupInvitation {
                group_id: i.group_id,
                name: &i.name,
                username: &i.inviter.username,
                display_name: &i.inviter.display_name,
                created_at: i.created_at,
                at,
            },
            Event::GroupMessage(m) => Self::GroupMessage { post: m.into(), at },
            Event::FriendDevices { username, fingerprints } => {
                Self::FriendDevices { username, devices: fingerprints.len(), at }
            }
            Event::GroupPresence { group_id, username, online, at: changed_at } => {
                let presence = PresenceView { username, online: *online, changed_at: *changed_at };
                if *online {
                    Self::GroupMemberOnline { group_id: *group_id, presence, at }
                } else {
                    Self::GroupMemberOffline { group_id: *group_id, presence, at }
                }
            }
        }
    }
}

/// The first line of `peer watch --json`: subscribed, nothing from here on is missed.
#[derive(Serialize)]
#[serde(tag = "type", rename = "watching")]
pub(crate) struct Watching<'a> {
    pub(crate) username: &'a str,
    pub(crate) online: bool,
}

/// A failure in a `--json` stream or command: a code for scripts, a message for people.
#[derive(Serialize)]
pub(crate) struct Failure<'a> {
    pub(crate) code: &'a str,
    /// The broker's own code, when the broker refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) broker_code: Option<&'a shared::proto::ErrorCode>,
    pub(crate) message: &'a str,
}

/// A failed command's one JSON document: `{"error": {...}}`.
#[derive(Serialize)]
pub(crate) struct Failed<'a> {
    pub(crate) error: Failure<'a>,
}

/// A failure inside `peer watch --json`: `{"type": "error", ...}`.
#[derive(Serialize)]
#[serde(tag = "type", rename = "error")]
pub(crate) struct StreamFailure<'a> {
    #[serde(flatten)]
    pub(crate) failure: Failure<'a>,
}

/// A conversation with unread messages.
#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Unread<'a> {
    Friend { username: &'a str, unread: i64, last_at: Millis },
    Group { group_id: i64, unread: i64, last_at: Millis },
}

/// A group in `peer groups --json`.
#[derive(Serialize)]
pub(crate) struct Group<'a> {
    pub(crate) group_id: i64,
    pub(crate) name: &'a str,
    pub(crate) owner: &'a str,
    pub(crate) members: i64,
    pub(crate) last_seq: i64,
    pub(crate) unread: i64,
}

/// An invitation in `peer groups invitations --json`.
#[derive(Serialize)]
pub(crate) struct Invitation<'a> {
    pub(crate) group_id: i64,
    pub(crate) name: &'a str,
    pub(crate) inviter: &'a str,
    pub(crate) created_at: Millis,
}

/// A member in `peer groups members --json`.
#[derive(Serialize)]
pub(crate) struct Member<'a> {
    #[serde(flatten)]
    pub(crate) user: User<'a>,
    pub(crate) owner: bool,
    pub(crate) online: bool,
}

/// A one-to-one message in `peer history --json`.
#[derive(Serialize)]
pub(crate) struct HistoryMessage<'a> {
    pub(crate) local_id: i64,
    pub(crate) id: &'a str,
    pub(crate) peer: &'a str,
    pub(crate) from: &'a str,
    pub(crate) to: &'a str,
    pub(crate) direction: &'static str,
    pub(crate) text: &'a str,
    pub(crate) sent_at: Millis,
    pub(crate) stored_at: Millis,
    pub(crate) status: &'static str,
}

impl<'a> HistoryMessage<'a> {
    pub(crate) fn new(m: &'a crate::history::Message, me: &'a str) -> Self {
        let (from, to) = if m.outgoing { (me, m.peer.as_str()) } else { (m.peer.as_str(), me) };
        Self {
            local_id: m.local_id,
            id: &m.id,
            peer: &m.peer,
            from,
            to,
            direction: direction(m.outgoing),
            text: &m.text,
            sent_at: m.sent_at,
            stored_at: m.stored_at,
            status: m.status.as_str(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn events_keep_their_flat_shape() {
        let at = 5;
        let presence =
            AgentEvent::Broker { event: Event::Presence { username: "bob".into(), online: true, at: 4 }, at };
        assert_eq!(
            value(EventView::from(&presence)),
            json!({ "type": "friend_online", "username": "bob", "online": true, "changed_at": 4, "at": 5 })
        );
        let m = GroupMessage { group_id: 7, seq: 2, sender: "bob".into(), system: false, text: "hi".into(), at: 3 };
        let posted = AgentEvent::Broker { event: Event::GroupMessage(m.clone()), at };
        assert_eq!(
            value(EventView::from(&posted)),
            json!({ "type": "group_message", "group_id": 7, "seq": 2, "username": "bob", "system": false,
                    "text": "hi", "sent_at": 3, "at": 5 })
        );
        assert_eq!(
            value(GroupMessageView { post: (&m).into() }),
            json!({ "type": "group_message", "group_id": 7, "seq": 2, "username": "bob", "system": false,
                    "text": "hi", "sent_at": 3 })
        );
        let left = AgentEvent::Broker {
            event: Event::GroupPresence { group_id: 7, username: "bob".into(), online: false, at: 4 },
            at,
        };
        assert_eq!(
            value(EventView::from(&left)),
            json!({ "type": "group_member_offline", "group_id": 7, "username": "bob", "online": false,
                    "changed_at": 4, "at": 5 })
        );
    }
}

/// `peer devices --json`.
#[derive(Serialize)]
pub(crate) struct DevicesView<'a> {
    /// The account key (hex), or null before any device made it.
    pub(crate) account_key: Option<String>,
    pub(crate) devices: Vec<DeviceView<'a>>,
}

#[derive(Serialize)]
pub(crate) struct DeviceView<'a> {
    /// The device key's SHA-256 (hex): `peer devices rename/revoke` take any 4+ digit prefix.
    pub(crate) id: String,
    pub(crate) name: &'a str,
    pub(crate) this_device: bool,
    pub(crate) online: bool,
    pub(crate) last_seen: Option<Millis>,
    pub(crate) created_at: Millis,
}

impl<'a> DevicesView<'a> {
    pub(crate) fn new(
        key: Option<&shared::trust::AccountKey>,
        list: &'a [shared::trust::OwnDevice],
        me: &[u8; 32],
    ) -> Self {
        Self {
            account_key: key.map(hex::encode),
            devices: list
                .iter()
                .map(|d| DeviceView {
                    id: hex::encode(d.record.body.fingerprint),
                    name: &d.record.body.name,
                    this_device: &d.record.body.fingerprint == me,
                    online: d.online,
                    last_seen: d.last_seen,
                    created_at: d.record.body.created_at,
                })
                .collect(),
        }
    }
}

/// `peer verify --json`.
#[derive(Serialize)]
pub(crate) struct VerificationView<'a> {
    pub(crate) username: &'a str,
    pub(crate) safety_number: Option<&'a str>,
    pub(crate) account_key: Option<&'a str>,
    pub(crate) verified: bool,
    pub(crate) key_changed: bool,
}

impl<'a> From<&'a shared::control::Verification> for VerificationView<'a> {
    fn from(v: &'a shared::control::Verification) -> Self {
        Self {
            username: &v.username,
            safety_number: v.safety_number.as_deref(),
            account_key: v.their_key.as_deref(),
            verified: v.verified,
            key_changed: v.key_changed,
        }
    }
}
