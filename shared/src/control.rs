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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
}

/// The agent's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlResponse {
    Status(AgentStatus),
    Ok,
    /// The broker's answer to a forwarded request.
    Broker(proto::Response),
    /// One event of a watch.
    Event(AgentEvent),
    /// The agent could not do it (for example: not connected to the broker right now).
    Error(String),
    /// The outcome of [`ControlRequest::Send`].
    Sent {
        id: String,
        status: MessageStatus,
        detail: Option<String>,
    },
}

/// Where an outgoing message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageStatus {
    /// Being delivered right now.
    Sending,
    /// Stored by at least one of the friend's devices.
    Delivered,
    /// The friend is offline or unreachable; the agent delivers it when both are online.
    Queued,
    /// Refused for good (no longer friends, refused by the receiver).
    Failed,
}

impl MessageStatus {
    /// How it is stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sending => "sending",
            Self::Delivered => "delivered",
            Self::Queued => "queued",
            Self::Failed => "failed",
        }
    }
}

/// What `peer status` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerLink {
    pub username: String,
    /// `direct` (a QUIC connection between the two agents); relayed paths will say `relayed`.
    pub path: String,
    pub remote_addr: SocketAddr,
    pub device_fingerprint: String,
}

/// An event as `peer watch` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
}
