//! Test harness for the integration suites: runs the real `broker` and `peer` binaries on loopback with
//! temporary directories and random ports, and gives each test fresh databases of its own.
//!
//! Every process started here is killed when its handle drops, so a failing test leaves nothing running.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod client;
mod cut;
pub mod db;
pub mod natlab;
mod proc;

pub use client::{Client, Tap};
pub use cut::TcpCut;
pub use db::{Backend, TestDb, backends};
pub use natlab::{Lab, SmallDisk};
pub use proc::{
    Agent, Broker, DetachedAgent, Friends, Nats, Node, Peer, RelayedPair, WAIT, Watch, alice_and_bob, bin, nats_url,
    texts, wait_until,
};

/// Password used for test accounts.
pub const PASSWORD: &str = "correct horse battery";
