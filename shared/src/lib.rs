//! The messenger's wire protocol, free of I/O so that every rule in it can be tested without sockets.
//!
//! # Layout
//! - [`frame`]: length-prefixed bincode frames with a hard size limit, and a sans-IO decoder.
//! - [`proto`]: what a peer and the broker say to each other: requests, responses, typed errors, pushed events.
//! - [`peer`]: what two peers say on a direct connection (chat messages and their acknowledgements).
//! - [`mailbox`]: devices' mailbox keys and the sealed letters left for a device while it is offline.
//! - [`link`]: what a new device and the device that links it say on their direct connection.
//! - [`files`]: file offers, name sanitising and size rules for transfers between friends.
//! - [`control`]: what the `peer` CLI says to its own running agent over the local control socket.
//! - [`relay`]: how the broker carries friends' QUIC packets when no direct path opens.
//! - [`session`]: which broker requests are allowed in which state of a broker connection.
//! - [`trust`]: account keys' signed statements about devices (records, revocations), as they travel.
//! - [`display`]: text from a remote party made safe to print on a terminal (controls and bidi escaped).
//! - [`validate`]: the rules for usernames, display names and passwords, shared by both ends.
//! - [`backoff`]: the agent's reconnect schedule.
//! - [`io`] (feature `io`): thin async adapters that move frames over tokio streams.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod backoff;
pub mod control;
pub mod display;
pub mod files;
pub mod frame;
pub mod id;
#[cfg(feature = "io")]
pub mod io;
pub mod link;
pub mod mailbox;
pub mod peer;
pub mod proto;
pub mod relay;
pub mod session;
pub mod trust;
#[cfg(feature = "io")]
pub mod udp;
pub mod validate;

pub use frame::{FrameError, MAX_FRAME};
