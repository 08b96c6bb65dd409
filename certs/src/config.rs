//! TLS 1.3-only rustls configurations, all on the ring provider (the one quinn uses), so that no
//! process-wide default provider has to be installed.

use crate::verify::{ClientPolicy, PinnedClients, PinnedServer, ServerPin};
use crate::{Error, Identity};
use rustls::crypto::CryptoProvider;
use std::sync::Arc;

/// The one crypto provider used everywhere.
pub fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// A server config presenting `identity`, requiring a client certificate that satisfies `policy`.
pub fn server(identity: &Identity, policy: ClientPolicy, alpn: &[&[u8]]) -> Result<rustls::ServerConfig, Error> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(PinnedClients::new(policy))
        .with_single_cert(vec![identity.cert.clone()], identity.key.clone_key())?;
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Ok(cfg)
}

/// A client config presenting `identity` and expecting a server that satisfies `pin`.
pub fn client(identity: &Identity, pin: ServerPin, alpn: &[&[u8]]) -> Result<rustls::ClientConfig, Error> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(PinnedServer::new(pin))
        .with_client_auth_cert(vec![identity.cert.clone()], identity.key.clone_key())?;
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Ok(cfg)
}
