//! What the `peer` CLI says to its running agent over the local control socket.
//!
//! Each [`ControlRequest`] frame gets one [`ControlResponse`] frame, in order; a client may send several on one
//! connection (the CLI sends one). After [`ControlRequest::Watch`] the agent writes [`ControlResponse::Event`]
//! frames until either side goes away. Broker requests pass through the agent unchanged
//! ([`ControlRequest::Broker`]), so that every CLI command uses the agent's one authenticated session.

use crate::proto::{self, Millis};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// A CLI command for the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub enum ControlRequest {
    /// The agent's state ([`ControlResponse::Status`]).
    Status,
    /// Stream events until the connection closes.
    Watch,
    /// Revoke the token at the broker, forget it, and stop the agent.
    Logout,
    /// Forward a request to the broker over the agent's session.
    Broker(proto::Request),
    /// Send a chat message to a friend; answered once it is delivered, queued or failed.
    Send { to: String, text: String },
    /// Offer a file to a friend (the CLI has hashed it); answered with [`ControlResponse::Transfer`] once the
    /// friend's agent has the offer (or it is queued because they are offline). The same file offered again
    /// to the same friend continues the earlier transfer.
    SendFile { to: String, path: String, name: String, size: u64, hash: [u8; 32] },
    /// Every transfer, newest first ([`ControlResponse::Transfers`]).
    Files,
    /// Accept an offered file into `dir` (an absolute path), by id or unique id prefix.
    FileAccept { id: String, dir: String },
    /// Decline an offered file.
    FileDecline { id: String },
    /// Stop a transfer, from either side; partial data is discarded.
    FileCancel { id: String },
    /// Stop the agent (staying logged in): `peer down`.
    Stop,
    /// `conversation` (`u:USER` or `g:GROUP`) is read up to `up_to` (a local message id, or a group
    /// sequence number); watchers hear [`AgentEvent::Read`].
    MarkRead { conversation: String, up_to: i64 },
    /// A friend's account key as this device pinned it, and the safety number of the two accounts
    /// ([`ControlResponse::Verification`]); `action` may also mark it verified or accept a changed key.
    Verify { username: String, action: VerifyAction },
    /// Opens a link code for a new device ([`ControlResponse::LinkCode`]); watchers hear
    /// [`AgentEvent::LinkRequest`] once a device claimed it and proved it holds the code.
    LinkStart,
    /// The user compared the confirmation words: link the device (or refuse it).
    LinkConfirm { link_id: [u8; 5], accept: bool },
    /// How each friend's device has been reached ([`ControlResponse::Paths`]): on which path since when, and
    /// how often it moved between the relay and a direct path.
    Paths,
}

/// The path history of the connection to one friend's device, while the agent runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub struct PathHistory {
    pub device_fingerprint: String,
    /// `direct` or `relayed`.
    pub path: String,
    /// On this path since.
    pub since: Millis,
    /// Moves from the relay to a direct path.
    pub upgrades: u32,
    /// Moves from a direct path (that died) to the relay.
    pub fallbacks: u32,
}

/// What `peer verify` does besides showing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub enum VerifyAction {
    Show,
    /// The safety numbers matched: mark the friend verified.
    Confirm,
    /// Trust the friend's new account key (held messages are sent); verified is cleared.
    AcceptNewKey,
}

/// A friend's key as this device holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub struct Verification {
    pub username: String,
    /// 60 digits in groups of five, the same on both sides; `None` until both accounts have keys.
    pub safety_number: Option<String>,
    /// The pinned key (hex).
    pub their_key: Option<String>,
    pub verified: bool,
    /// The broker served another key than the pinned one; messages wait until it is accepted.
    pub key_changed: bool,
}

/// The agent's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub enum ControlResponse {
    Status(AgentStatus),
    Ok,
    /// The broker's answer to a forwarded request.
    Broker(proto::Response),
    /// One event of a watch.
    Event(AgentEvent),
    /// The agent could not do it, in words only: what agents before typed errors answered. Read as
    /// [`ControlErrorCode::Other`]; today's agents answer [`ControlResponse::Failed`].
    Error(String),
    /// The outcome of [`ControlRequest::Send`].
    Sent {
        id: String,
        status: MessageStatus,
        detail: Option<String>,
    },
    /// Transfers, for [`ControlRequest::Files`].
    Transfers(Vec<Transfer>),
    /// One transfer after the request changed it.
    Transfer(Transfer),
    /// The agent could not do it: a code to branch on and a message for people.
    Failed(ControlError),
    /// For [`ControlRequest::Verify`].
    Verification(Verification),
    /// For [`ControlRequest::LinkStart`]: the code to type on the new device.
    LinkCode {
        code: String,
        link_id: [u8; 5],
        expires_in_secs: u64,
    },
    /// For [`ControlRequest::Paths`].
    Paths(Vec<PathHistory>),
}

impl ControlResponse {
    pub fn failed(code: ControlErrorCode, message: impl Into<String>) -> Self {
        Self::Failed(ControlError { code, message: message.into() })
    }
}

/// Why the agent could not do what it was asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode, thiserror::Error)]
#[error("{message}")]
pub struct ControlError {
    pub code: ControlErrorCode,
    pub message: String,
}

/// What kind of failure a [`ControlError`] is: stable names for scripts (`--json` prints them in
/// snake case). New codes are appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
#[serde(rename_all = "snake_case")]
pub enum ControlErrorCode {
    /// The agent has no broker session right now; it keeps reconnecting, try again shortly.
    Offline,
    /// The request names nothing that exists or is malformed (an unknown or ambiguous transfer id, a bad
    /// conversation name, sending to yourself).
    InvalidRequest,
    /// The text is not acceptable (empty, too long).
    InvalidText,
    /// The local database could not record it (a full disk, say): nothing was done.
    Storage,
    /// Not possible in the current state (a transfer already finished or not yet offered, a directory
    /// that is not there, too little space).
    NotNow,
    /// A watch fell behind and events were skipped: read the state afresh.
    Lagged,
    /// The agent is stopping.
    Stopping,
    /// Anything else; the message says what.
    Other,
}

impl ControlErrorCode {
    /// The name scripts see.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Offline => "offline",
            Self::InvalidRequest => "invalid_request",
            Self::InvalidText => "invalid_text",
            Self::Storage => "storage",
            Self::NotNow => "not_now",
            Self::Lagged => "lagged",
            Self::Stopping => "stopping",
            Self::Other => "other",
        }
    }
}

/// Where a file transfer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub enum TransferState {
    /// Sender: the friend is offline or unreachable; the agent offers it when both are online.
    Waiting,
    /// The receiver has the offer and has not answered yet.
    Offered,
    /// Accepted; bytes are moving, or will again when both are online (resuming where they stopped).
    Transferring,
    /// Received in full, the hash verified, the file in place.
    Done,
    Declined,
    Cancelled,
    /// Gave up for good (hash mismatch, the file changed, refused by the receiver).
    Failed,
}

impl TransferState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Waiting => "waiting",
            Self::Offered => "offered",
            Self::Transferring => "transferring",
            Self::Done => "done",
            Self::Declined => "declined",
            Self::Cancelled => "cancelled",
            Self::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Waiting, Self::Offered, Self::Transferring, Self::Done, Self::Declined, Self::Cancelled, Self::Failed]
            .into_iter()
            .find(|t| t.as_str() == s)
    }

    /// Nothing more will happen to it.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Done | Self::Declined | Self::Cancelled | Self::Failed)
    }
}

/// One file transfer, as either side sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub struct Transfer {
    /// 32 hex digits; commands take any unique prefix.
    pub id: String,
    /// The friend on the other end.
    pub peer: String,
    pub outgoing: bool,
    /// Sanitised on the receiving side.
    pub name: String,
    pub size: u64,
    /// BLAKE3 of the whole file, hex.
    pub hash: String,
    pub state: TransferState,
    /// Bytes the receiver holds (receiving side) or that were sent (sending side).
    pub bytes: u64,
    /// Sender: the file being sent. Receiver: where it was saved, once done.
    pub path: Option<String>,
    /// Why it failed, was cancelled, or is waiting.
    pub error: Option<String>,
    /// The offset the latest fetch started from: above zero when a transfer resumed.
    pub resumed_from: u64,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// Where an outgoing message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub enum MessageStatus {
    /// Being delivered right now.
    Sending,
    /// Stored by at least one of the friend's devices.
    Delivered,
    /// The friend is offline or unreachable; the agent delivers it when both are online.
    Queued,
    /// Refused for good (no longer friends, refused by the receiver).
    Failed,
    /// Sealed in the mailbox of each of the friend's devices that did not take it directly: delivered
    /// when one of them comes online, even if this device is off by then.
    Sent,
}

impl MessageStatus {
    /// How it is stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sending => "sending",
            Self::Delivered => "delivered",
            Self::Queued => "queued",
            Self::Failed => "failed",
            Self::Sent => "sent",
        }
    }
}

/// What `peer status` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub struct AgentStatus {
    pub username: String,
    pub display_name: Option<String>,
    pub broker: String,
    pub broker_fingerprint: String,
    /// This device's identity: what the broker vouches for to friends.
    pub device_fingerprint: String,
    pub online: bool,
    pub session_id: Option<u64>,
    /// The public address the broker sees for this agent's one UDP socket.
    pub observed_addr: Option<SocketAddr>,
    pub local_addrs: Vec<SocketAddr>,
    /// When the current broker session opened, or when the last one was lost.
    pub since: Option<Millis>,
    pub agent_pid: u32,
    /// Live connections to friends' devices.
    pub peers: Vec<PeerLink>,
}

/// One live connection to a friend's device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub struct PeerLink {
    pub username: String,
    /// `direct` (a QUIC connection between the two agents) or `relayed` (through the broker).
    pub path: String,
    pub remote_addr: SocketAddr,
    pub device_fingerprint: String,
    /// On a relayed path, what carries its packets through the broker: `channel` (plain datagrams the broker
    /// forwards, the fast path) or `stream` (inside the agent's own broker connection, where the channel's
    /// datagrams do not get through, or before its probe has come back).
    pub relay: Option<String>,
}

impl PeerLink {
    /// The path as a person reads it: `direct`, `relayed (channel)` or `relayed (stream)`.
    pub fn describe(&self) -> String {
        match &self.relay {
            Some(via) => format!("{} ({via})", self.path),
            None => self.path.clone(),
        }
    }
}

/// An event as `peer watch` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode)]
pub enum AgentEvent {
    /// The agent's broker session opened.
    Connected { observed_addr: SocketAddr, at: Millis },
    /// The agent lost its broker session; it is reconnecting.
    Disconnected { reason: String, at: Millis },
    /// Something the broker pushed.
    Broker { event: proto::Event, at: Millis },
    /// A friend's message arrived (and is stored).
    MessageReceived { from: String, id: String, text: String, sent_at: Millis, at: Millis },
    /// A message of ours was stored by the friend's agent.
    MessageDelivered { to: String, id: String, at: Millis },
    /// A message of ours will not be delivered.
    MessageFailed { to: String, id: String, reason: String, at: Millis },
    /// A friend offers a file.
    FileOffered { transfer: Transfer, at: Millis },
    /// Bytes moved (at most a few times a second per transfer).
    FileProgress { id: String, peer: String, outgoing: bool, bytes: u64, size: u64, at: Millis },
    /// A transfer changed state (accepted, completed, declined, cancelled, failed, waiting).
    FileUpdated { transfer: Transfer, at: Millis },
    /// A conversation was read up to a point (on this device, in any window).
    Read { conversation: String, up_to: i64, at: Millis },
    /// The broker served a friend's account key other than the one pinned: messages to them are held.
    KeyChanged { username: String, at: Millis },
    /// A device claimed a link code and proved it holds it: the user compares the words and confirms.
    LinkRequest { link_id: [u8; 5], device_name: String, words: String, at: Millis },
    /// A device was linked and has copied the history (`messages` of them).
    Linked { link_id: [u8; 5], device_name: String, messages: u64, at: Millis },
    /// Linking failed or was refused.
    LinkFailed { link_id: [u8; 5], reason: String, at: Millis },
    /// A message of ours is in the mailbox of each of the friend's devices that did not take it directly.
    MessageSent { to: String, id: String, at: Millis },
    /// A message this account sent from another of its devices (copied here, so every device has it).
    MessageCopied { to: String, id: String, text: String, sent_at: Millis, delivered: bool, at: Millis },
}
