//! What a peer and the broker say to each other.
//!
//! Flow on one QUIC connection (ALPN [`BROKER_ALPN`]):
//! - Every request travels on its own bidirectional stream: the peer writes one [`Request`] frame and
//!   finishes; the broker answers with exactly one [`Response`] frame and finishes. A stream that carries
//!   garbage gets a [`Response::Error`] and is closed; the connection and every other stream carry on.
//! - The CLI's `register` and `login` use an anonymous connection for just that request.
//! - The agent opens its session with [`Request::Hello`] and its token. From then on the connection is the
//!   user's row in the broker's connection table, and the broker pushes [`Event`]s on one unidirectional
//!   stream that it opens towards the peer.
//!
//! New variants are only ever appended, so that an older peer sees an unknown variant as a malformed frame
//! (a typed error) rather than as a different message.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// ALPN of a peer's session with the broker; the suffix is the protocol version.
pub const BROKER_ALPN: &[u8] = b"p2pim-broker/1";
/// The same protocol, with relay channels (see [`crate::relay`]): every relay stream begins with the
/// broker's channel record. Agents offer it first and the broker prefers it; either side without it keeps
/// to [`BROKER_ALPN`], on which nothing changed.
pub const BROKER_ALPN_CHANNELS: &[u8] = b"p2pim-broker/2";
/// ALPN of a direct connection between two peers.
pub const PEER_ALPN: &[u8] = b"p2pim-peer/1";
/// The broker's default UDP port.
pub const DEFAULT_PORT: u16 = 7878;
/// Most results one search returns.
pub const MAX_SEARCH_RESULTS: u32 = 50;

/// Milliseconds since the Unix epoch: portable across all three databases and across platforms.
pub type Millis = i64;

/// A request from a peer to the broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub enum Request {
    /// Liveness check; allowed in any state.
    Ping,
    /// Creates an account and logs it in ([`Response::Token`]).
    Register { username: String, display_name: String, password: String },
    /// Exchanges a password for a session token ([`Response::Token`]).
    Login { username: String, password: String },
    /// Opens the agent's session with a token; answered with [`Response::Welcome`].
    Hello { token: String, local_addrs: Vec<SocketAddr> },
    /// Revokes this session's token and ends the session.
    Logout,
    /// Users whose username or display name contains the text (case-insensitive), yourself excluded.
    SearchUsers { query: String, offset: u32, limit: u32 },
    /// Asks `username` to become a friend.
    FriendAdd { username: String, message: String },
    /// Pending friend requests, both directions.
    FriendRequests,
    /// Accepts a pending request from `username`.
    FriendAccept { username: String },
    /// Declines a pending request from `username`.
    FriendDecline { username: String },
    /// Ends a friendship on both sides.
    FriendRemove { username: String },
    /// Sets (or with an empty string clears) your private alias for a friend.
    FriendRemark { username: String, remark: String },
    /// Your friends with their presence.
    Friends,
    /// Changes your display name.
    SetDisplayName { display_name: String },
    /// Changes your password; every other session's token is revoked.
    ChangePassword { old: String, new: String },
    /// Where a friend's online devices can be reached ([`Response::Endpoints`]). Friends only. The friend's
    /// devices are told (with [`Event::PeerIncoming`]) to expect this device's key.
    Lookup { username: String },
    /// Creates a group owned by you ([`Response::GroupCreated`]).
    GroupCreate { name: String },
    /// Invites a friend into a group you are a member of.
    GroupInvite { group_id: i64, username: String },
    /// Your pending group invitations ([`Response::GroupInvitations`]).
    GroupInvitations,
    /// Joins a group you were invited to.
    GroupJoin { group_id: i64 },
    /// Declines an invitation.
    GroupDecline { group_id: i64 },
    /// Leaves a group (ownership passes to the longest-standing member).
    GroupLeave { group_id: i64 },
    /// A group's members with their presence; members only ([`Response::GroupMembers`]).
    GroupMembers { group_id: i64 },
    /// The groups you are in ([`Response::Groups`]).
    Groups,
    /// Posts to a group; answered with its sequence number once stored ([`Response::GroupPosted`]).
    GroupPost { group_id: i64, text: String },
    /// Messages after `after_seq`, oldest first, at most `limit` ([`Response::GroupMessages`]).
    GroupSync { group_id: i64, after_seq: i64, limit: u32 },
    /// Owner only: removes a member (who is told, then gets nothing more).
    GroupRemove { group_id: i64, username: String },
    /// Owner only: renames the group.
    GroupRename { group_id: i64, name: String },
    /// Owner only: hands ownership to another member.
    GroupTransfer { group_id: i64, username: String },
    /// Owner only: deletes the group, its members and its messages.
    GroupDisband { group_id: i64 },
    /// Relay packets to a friend's online device (see [`crate::relay`]): answered [`Response::Ok`], after
    /// which this stream carries framed packets both ways, or with an error (not friends, device offline,
    /// relay switched off or over its limits).
    Relay { username: String, fingerprint: [u8; 32] },
    /// Revokes a token without opening a session with it (`peer logout` with no agent running): friends see
    /// no presence blip. Answered `Ok` whether or not the token was known.
    RevokeToken { token: String },
    /// Blocks a user: any friendship and requests between you end, and their friend requests and group
    /// invitations to you are dropped from then on without telling them.
    Block { username: String },
    /// Lifts a block.
    Unblock { username: String },
    /// The users you blocked ([`Response::Users`]).
    Blocked,
    /// Publishes this device's record, certified by the account key (or a renamed record of another of
    /// your devices). The first key an account presents becomes its key; after that a record must verify
    /// under it, and a revoked device's is refused.
    Certify { account_key: crate::trust::AccountKey, record: crate::trust::SignedRecord },
    /// As [`Request::Lookup`], with the friend's account key and each device's record
    /// ([`Response::Located`]); the friend's devices are told with [`Event::PeerCalling`].
    Locate { username: String },
    /// Your account key and devices ([`Response::Devices`]).
    Devices,
    /// Cuts one of your devices off for good: its record goes, its tokens and sessions end, and friends'
    /// agents are told to drop its key.
    RevokeDevice { revocation: crate::trust::SignedRevocation },
    /// Replaces the account key (every device lost): needs the password. Every other device's record goes,
    /// and friends are told the key changed.
    ResetAccountKey { password: String, account_key: crate::trust::AccountKey, record: crate::trust::SignedRecord },
    /// Opens a link code for a new device (valid for minutes, used once). Only its id is told to the broker;
    /// the code's secret part never leaves the user's devices.
    LinkOffer { link_id: [u8; 5] },
    /// A new device claims a link code (no session needed): answered [`Response::LinkPeer`], and the
    /// offering device is told with [`Event::LinkClaimed`].
    LinkClaim { link_id: [u8; 5], local_addrs: Vec<SocketAddr> },
    /// The offering device, once its user confirmed, asks for the new device's session token
    /// ([`Response::Token`], bound to the claiming device's key), to hand over on their direct connection.
    LinkToken { link_id: [u8; 5] },
    /// Publishes this device's mailbox keys, certified by the account key (after its record).
    PublishMailbox { keys: crate::mailbox::SignedMailboxKeys },
    /// A friend's (or your own) devices that take letters, with their mailbox keys
    /// ([`Response::Mailboxes`]), online or not.
    Mailboxes { username: String },
    /// Leaves a sealed letter for one device of a friend (or of your own) until it picks it up.
    Deposit { username: String, device: [u8; 32], blob: Vec<u8> },
    /// The letters waiting for this device after `after` (a deposit's id), oldest first, as many as fit
    /// in one answer and at most `limit` ([`Response::Deposits`]).
    Pickup { after: i64, limit: u32 },
    /// These letters are stored on this device: the broker deletes them.
    MailboxAck { ids: Vec<i64> },
    /// [`Request::GroupPost`], at most once: a post whose id (the sender's, random) the group already holds
    /// from this sender is answered with its sequence number and not stored again. So a post whose answer
    /// was lost (the broker busy past its deadline, the connection cut) can be sent again safely.
    GroupPostOnce { group_id: i64, text: String, post_id: [u8; 16] },
}

impl Request {
    /// The request's name for logs: never its fields, which may hold a password or token.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Ping => "ping",
            Self::Register { .. } => "register",
            Self::Login { .. } => "login",
            Self::Hello { .. } => "hello",
            Self::Logout => "logout",
            Self::SearchUsers { .. } => "search_users",
            Self::FriendAdd { .. } => "friend_add",
            Self::FriendRequests => "friend_requests",
            Self::FriendAccept { .. } => "friend_accept",
            Self::FriendDecline { .. } => "friend_decline",
            Self::FriendRemove { .. } => "friend_remove",
            Self::FriendRemark { .. } => "friend_remark",
            Self::Friends => "friends",
            Self::SetDisplayName { .. } => "set_display_name",
            Self::ChangePassword { .. } => "change_password",
            Self::Lookup { .. } => "lookup",
            Self::GroupCreate { .. } => "group_create",
            Self::GroupInvite { .. } => "group_invite",
            Self::GroupInvitations => "group_invitations",
            Self::GroupJoin { .. } => "group_join",
            Self::GroupDecline { .. } => "group_decline",
            Self::GroupLeave { .. } => "group_leave",
            Self::GroupMembers { .. } => "group_members",
            Self::Groups => "groups",
            Self::GroupPost { .. } => "group_post",
            Self::GroupSync { .. } => "group_sync",
            Self::GroupRemove { .. } => "group_remove",
            Self::GroupRename { .. } => "group_rename",
            Self::GroupTransfer { .. } => "group_transfer",
            Self::GroupDisband { .. } => "group_disband",
            Self::Relay { .. } => "relay",
            Self::RevokeToken { .. } => "revoke_token",
            Self::Block { .. } => "block",
            Self::Unblock { .. } => "unblock",
            Self::Blocked => "blocked",
            Self::Certify { .. } => "certify",
            Self::Locate { .. } => "locate",
            Self::Devices => "devices",
            Self::RevokeDevice { .. } => "revoke_device",
            Self::ResetAccountKey { .. } => "reset_account_key",
            Self::LinkOffer { .. } => "link_offer",
            Self::LinkClaim { .. } => "link_claim",
            Self::LinkToken { .. } => "link_token",
            Self::PublishMailbox { .. } => "publish_mailbox",
            Self::Mailboxes { .. } => "mailboxes",
            Self::Deposit { .. } => "deposit",
            Self::Pickup { .. } => "pickup",
            Self::MailboxAck { .. } => "mailbox_ack",
            Self::GroupPostOnce { .. } => "group_post_once",
        }
    }
}

/// The broker's one answer to one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub enum Response {
    /// Done, nothing to report.
    Ok,
    /// Answer to [`Request::Ping`].
    Pong,
    /// A fresh session token. Only its hash is kept by the broker.
    Token {
        username: String,
        token: String,
        expires_at: Millis,
    },
    /// The session is open.
    Welcome {
        session_id: u64,
        user: UserInfo,
        observed_addr: SocketAddr,
    },
    /// Search results.
    Users(Vec<UserInfo>),
    /// Pending friend requests.
    FriendRequests {
        incoming: Vec<FriendRequestInfo>,
        outgoing: Vec<FriendRequestInfo>,
    },
    /// Your friends.
    Friends(Vec<FriendInfo>),
    /// Answer to [`Request::FriendAdd`]: `true` when the other side had already asked you, so you are
    /// friends now; `false` when the request is waiting for them.
    FriendAdded {
        now_friends: bool,
    },
    /// The request failed; nothing was changed.
    Error(ErrorBody),
    /// A friend's online devices (empty when the friend is offline).
    Endpoints(Vec<DeviceEndpoint>),
    GroupCreated {
        group_id: i64,
    },
    GroupInvitations(Vec<GroupInvitation>),
    GroupMembers(Vec<GroupMember>),
    Groups(Vec<GroupInfo>),
    GroupPosted {
        seq: i64,
    },
    GroupMessages(Vec<GroupMessage>),
    /// A friend's account key and online devices with their records.
    Located(crate::trust::Located),
    /// Your account key and your devices.
    Devices {
        account_key: Option<crate::trust::AccountKey>,
        devices: Vec<crate::trust::OwnDevice>,
    },
    /// The device that offered a link code: whose it is and where to reach it.
    LinkPeer {
        username: String,
        device: DeviceEndpoint,
    },
    /// A user's account key and the mailbox keys of each of their devices that takes letters.
    Mailboxes {
        account_key: Option<crate::trust::AccountKey>,
        devices: Vec<crate::mailbox::SignedMailboxKeys>,
    },
    /// Letters waiting for this device, oldest first.
    Deposits(Vec<crate::mailbox::Deposit>),
}

/// A group as its members see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub struct GroupInfo {
    pub group_id: i64,
    pub name: String,
    pub owner: String,
    /// Sequence number of the newest message (0 when there is none).
    pub last_seq: i64,
    pub members: i64,
}

/// A member of a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub struct GroupMember {
    pub user: UserInfo,
    pub owner: bool,
    pub online: bool,
}

/// An invitation into a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub struct GroupInvitation {
    pub group_id: i64,
    pub name: String,
    pub inviter: UserInfo,
    pub created_at: Millis,
}

/// One group message, with its place in the group's order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub struct GroupMessage {
    pub group_id: i64,
    pub seq: i64,
    pub sender: String,
    /// A notice from the broker (joined, left), not something a member wrote.
    pub system: bool,
    pub text: String,
    pub at: Millis,
}

/// One online device of a friend, as the broker vouches for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub struct DeviceEndpoint {
    /// SHA-256 of the device's certificate: the only key a connection to it may present.
    pub fingerprint: [u8; 32],
    /// The address the broker observes (the device's public mapping).
    pub observed: SocketAddr,
    /// The addresses the device announced (its LAN side).
    pub local: Vec<SocketAddr>,
}

/// A user as others may see them: never an address, never presence unless they are friends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub struct UserInfo {
    pub username: String,
    pub display_name: String,
}

/// A pending friend request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub struct FriendRequestInfo {
    /// The other side: the requester for incoming, the addressee for outgoing.
    pub user: UserInfo,
    pub message: String,
    pub created_at: Millis,
}

/// One friend, as the friend list shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub struct FriendInfo {
    pub user: UserInfo,
    /// Your private alias for them, if you set one.
    pub remark: Option<String>,
    pub online: bool,
    /// Online since (when online), or last seen by this broker (when offline; `None` if not since it started).
    pub since: Option<Millis>,
}

/// Something the broker tells a connected agent without being asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub enum Event {
    /// Someone asked to become your friend.
    FriendRequest { from: UserInfo, message: String, created_at: Millis },
    /// You and `friend` are friends now (they accepted, or you accepted on another device).
    FriendAccepted { friend: UserInfo },
    /// The friendship with `username` ended (either side removed it).
    FriendRemoved { username: String },
    /// A friend came online (first device) or went offline (last device).
    Presence { username: String, online: bool, at: Millis },
    /// A friend changed their display name.
    FriendProfile { friend: UserInfo },
    /// This session's token was revoked (password change elsewhere): log in again.
    SessionRevoked,
    /// A friend's device looked this one up and is about to connect: accept exactly this key from them.
    PeerIncoming { username: String, device: DeviceEndpoint },
    /// You were invited into a group.
    GroupInvited(GroupInvitation),
    /// A message in one of your groups (members' posts and the broker's notices, in sequence order).
    GroupMessage(GroupMessage),
    /// A member of one of your groups came online (first device) or went offline (last device).
    GroupPresence { group_id: i64, username: String, online: bool, at: Millis },
    /// A friend's devices were cut off (a password change revoked every other session): these are the only
    /// device keys of theirs to accept from now on; drop every other and close its connections.
    FriendDevices { username: String, fingerprints: Vec<[u8; 32]> },
    /// As [`Event::PeerIncoming`], with the caller's account key and device record: sent to devices that
    /// published a record themselves (agents that check records).
    PeerCalling {
        username: String,
        account_key: Option<crate::trust::AccountKey>,
        device: crate::trust::CertifiedDevice,
    },
    /// A friend (or you, on another device) cut a device off: drop its key and close its connections.
    DeviceRevoked { username: String, revocation: crate::trust::SignedRevocation },
    /// A friend replaced their account key (every device lost): their devices need the new key, which
    /// your agent holds back until you accept it.
    AccountKeyChanged { username: String },
    /// A new device claimed your link code: connect to it, check the code's secret, confirm with the user.
    LinkClaimed { link_id: [u8; 5], device: DeviceEndpoint },
    /// Letters are waiting for this device: pick them up.
    MailWaiting,
}

/// A failed request: the code is for programs, the message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode, thiserror::Error)]
#[error("{message}")]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
}

impl From<ErrorCode> for ErrorBody {
    fn from(code: ErrorCode) -> Self {
        Self { message: code.to_string(), code }
    }
}

impl From<ErrorCode> for Response {
    fn from(code: ErrorCode) -> Self {
        Self::Error(code.into())
    }
}

/// Every way a request can fail. Messages say what to do next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode, thiserror::Error)]
pub enum ErrorCode {
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("username must be 3-32 characters of a-z, 0-9, '_', '.' or '-'")]
    InvalidUsername,
    #[error("display name must be 1-64 characters with no control characters")]
    InvalidDisplayName,
    #[error("password must be at least 8 characters (and at most 1024 bytes)")]
    InvalidPassword,
    #[error("text too long or contains control characters: {0}")]
    InvalidText(String),
    #[error("that username is taken; pick another")]
    UsernameTaken,
    #[error("unknown user or wrong password")]
    BadCredentials,
    /// Too many attempts (logins, group posts) in a short time.
    #[error("too many attempts; slow down and try again in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    #[error("this connection has no session yet: run `peer login` and start the agent")]
    NotLoggedIn,
    #[error("the session token is unknown, revoked or expired: run `peer login` again")]
    InvalidToken,
    #[error("this connection already has a session")]
    AlreadyInSession,
    #[error("no such user")]
    UnknownUser,
    #[error("you are not friends with that user")]
    NotFriends,
    #[error("you are already friends")]
    AlreadyFriends,
    #[error("a friend request to that user is already pending")]
    RequestPending,
    #[error("there is no pending friend request from that user")]
    NoSuchRequest,
    #[error("you cannot befriend yourself")]
    SelfRequest,
    #[error("the broker is busy; try again shortly")]
    Busy,
    #[error("internal broker error; try again, and tell the operator if it persists")]
    Internal,
    #[error("no such group")]
    UnknownGroup,
    #[error("you are not a member of that group")]
    NotMember,
    #[error("you have no invitation to that group")]
    NotInvited,
    #[error("already a member of that group")]
    AlreadyMember,
    #[error("only the group's owner can do that")]
    NotOwner,
    #[error("the relay is not available: {0}")]
    RelayUnavailable(String),
    /// You blocked the user you are asking.
    #[error("you blocked {0}: `peer friends unblock {0}` first")]
    YouBlocked(String),
    #[error("you have not blocked that user")]
    NotBlocked,
    #[error("this device holds an account key the account no longer uses: link it again (`peer link`)")]
    AccountKeyMismatch,
    #[error("the record's signature does not verify: {0}")]
    BadSignature(String),
    #[error("this device was revoked: link it again from one of your devices (`peer devices link`)")]
    DeviceRevoked,
    #[error("no such link code, or it expired or was used: run `peer devices link` again")]
    UnknownLink,
    #[error("no such device: `peer devices` lists yours")]
    UnknownDevice,
    #[error(
        "this broker keeps no mailbox (it runs with --no-mailbox): messages wait on your device until both are online"
    )]
    MailboxOff,
    #[error("the recipient's mailbox is full ({0}): the message waits on your device")]
    MailboxFull(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages_say_what_to_do() {
        let e: ErrorBody = ErrorCode::RateLimited { retry_after_secs: 12 }.into();
        assert_eq!(e.to_string(), "too many attempts; slow down and try again in 12 s");
        assert!(ErrorBody::from(ErrorCode::InvalidToken).message.contains("peer login"));
    }

    #[test]
    fn request_kind_hides_secrets() {
        let r = Request::Login { username: "u".into(), password: "hunter2hunter2".into() };
        assert_eq!(r.kind(), "login");
    }
}
