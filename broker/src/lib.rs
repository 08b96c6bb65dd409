//! The broker: a rendezvous for peers. It authenticates users, keeps the connection table, the friend graph
//! and groups, answers friends-only lookups, and relays what cannot go direct. It never sees direct messages.
//!
//! # Layout
//! - [`server`]: the QUIC endpoint, accept loop and shutdown.
//! - [`conn`]: one peer connection: request streams, event stream, session life.
//! - [`config_file`]: the optional TOML config file, read into flags.
//! - [`error`]: what a request can fail with, whichever part serves it.
//! - [`accounts`]: registration, password login (argon2id), tokens (stored hashed).
//! - [`ratelimit`]: failure limiters and quotas with bounded memory (pure).
//! - [`lockout`]: who may try a password now: counted before the hash, known devices not locked out (pure).
//! - [`table`]: the in-memory connection table and event fan-out.
//! - [`devices`]: account keys' device records, revocations, key resets, and linking a new device.
//! - [`friends`]: the friend graph and presence announcements.
//! - [`groups`]: groups, invitations, and the ordered, stored, fanned-out group message log.
//! - [`relay`]: friends' QUIC packets carried between their agents when no direct path opens.
//! - [`channels`]: the relay's fast path, plain datagrams beside the endpoint's socket.
//! - [`store`]: all SQL: one storage layer over SQLite, PostgreSQL and MySQL/MariaDB (rows decoded by
//!   column name), with per-backend migrations.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod accounts;
pub mod channels;
pub mod cluster;
pub mod config_file;
pub mod conn;
pub mod devices;
pub mod error;
pub mod friends;
pub mod groups;
pub mod health;
pub mod lockout;
pub mod mailbox;
pub mod nodes;
pub mod queue;
pub mod ratelimit;
pub mod relay;
pub mod server;
pub mod store;
pub mod table;
