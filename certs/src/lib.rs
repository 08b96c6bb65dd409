//! Identities and trust: who a broker or a device is, and how the other side checks it.
//!
//! Nothing here uses certificate authorities. Every identity is a self-signed certificate made with rcgen,
//! known by the SHA-256 [`Fingerprint`] of its DER encoding, and trusted by pinning that fingerprint:
//! the broker's on first use (like SSH), a device's because the broker vouches for it.
//!
//! # Layout
//! - [`account`]: the account key that certifies a user's devices, safety numbers, key backups, link codes.
//! - [`fingerprint`]: the SHA-256 fingerprint and its text form.
//! - [`identity`]: making, storing (0600) and loading a key pair with its certificate.
//! - [`verify`]: rustls verifiers that accept exactly the pinned fingerprints (TLS 1.3 signatures checked).
//! - [`config`]: TLS 1.3-only rustls configs for the broker, the agent and direct peer connections.
//! - [`seal`]: HPKE (RFC 9180) sealing of mailbox letters, and a device's mailbox keys.
//! - [`secret_file`]: writing files only their owner can read.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod account;
pub mod config;
pub mod fingerprint;
pub mod identity;
pub mod seal;
pub mod secret_file;
pub mod verify;

pub use fingerprint::Fingerprint;
pub use identity::Identity;

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("could not create an identity: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("{path}: {source}")]
    File { path: std::path::PathBuf, source: std::io::Error },
    #[error("{path}: not a valid PEM {what}")]
    Pem { path: std::path::PathBuf, what: &'static str },
    #[error("not a SHA-256 fingerprint (64 hex digits, colons allowed): {0:?}")]
    BadFingerprint(String),
}
