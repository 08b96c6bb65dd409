//! The agent's decisions, without I/O: each module holds one set of rules as plain data and functions, with
//! time passed in where it matters, so that it is tested by tables in milliseconds. The async code that
//! stores, sends and listens around them (`agent`, `chat`, `direct`, `groups`, `files`) feeds them events
//! and does what they answer.

pub(crate) mod grouplog;
pub(crate) mod links;
pub(crate) mod mailbox;
pub(crate) mod outbox;
pub(crate) mod search;
pub(crate) mod session;
pub(crate) mod transfer;
pub(crate) mod trust;
