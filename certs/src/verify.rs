//! rustls verifiers that trust by fingerprint instead of by certificate authority.
//!
//! Each still checks the handshake signature with the presented key (TLS 1.3 only), so presenting someone
//! else's certificate without their private key fails.

use crate::Fingerprint;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::collections::HashSet;
use std::sync::{Arc, Mutex, RwLock};

fn algorithms() -> WebPkiSupportedAlgorithms {
    crate::config::provider().signature_verification_algorithms
}

fn tls12_refused() -> Result<HandshakeSignatureValid, Error> {
    Err(Error::PeerIncompatible(rustls::PeerIncompatible::Tls13RequiredForQuic))
}

fn pin_mismatch(expected: &Fingerprint, got: &Fingerprint) -> Error {
    Error::General(format!("certificate fingerprint {got} does not match the pinned {expected}"))
}

/// What a client expects of the server it connects to.
#[derive(Debug, Clone)]
pub enum ServerPin {
    /// Exactly this certificate.
    Exact(Fingerprint),
    /// Whatever is presented the first time (trust on first use); the fingerprint is recorded here so that
    /// the caller can pin it from then on.
    FirstUse(Arc<Mutex<Option<Fingerprint>>>),
    /// Exactly `expected`; a different certificate is refused and recorded in `refused`, so that the caller
    /// can tell a changed identity ([`IdentityChanged`]) from any other failed handshake by type, not by
    /// reading an error message (the TLS stack below passes only text up).
    Watched { expected: Fingerprint, refused: Arc<Mutex<Option<Fingerprint>>> },
}

/// The server presented another certificate than the one pinned: someone may be intercepting the
/// connection, or the server's identity was replaced. Never worth retrying by itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the server's certificate {got} does not match the pinned {expected}")]
pub struct IdentityChanged {
    pub expected: Fingerprint,
    pub got: Fingerprint,
}

impl ServerPin {
    /// A pin on `expected` that records a refused certificate; read it with [`ServerPin::changed`].
    pub fn watched(expected: Fingerprint) -> Self {
        Self::Watched { expected, refused: Arc::default() }
    }

    /// After a failed handshake with a [`ServerPin::Watched`] pin: whether it failed because the identity
    /// changed.
    pub fn changed(&self) -> Option<IdentityChanged> {
        match self {
            Self::Watched { expected, refused } => {
                refused.lock().ok()?.map(|got| IdentityChanged { expected: *expected, got })
            }
            _ => None,
        }
    }
}

/// Verifies the server (the broker, or a friend's agent answering our connection) against a [`ServerPin`].
#[derive(Debug)]
pub struct PinnedServer {
    pin: ServerPin,
    algs: WebPkiSupportedAlgorithms,
}

impl PinnedServer {
    pub fn new(pin: ServerPin) -> Arc<Self> {
        Arc::new(Self { pin, algs: algorithms() })
    }
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let got = Fingerprint::of(end_entity);
        match &self.pin {
            ServerPin::Exact(expected) if *expected == got => Ok(ServerCertVerified::assertion()),
            ServerPin::Exact(expected) => Err(pin_mismatch(expected, &got)),
            ServerPin::Watched { expected, .. } if *expected == got => Ok(ServerCertVerified::assertion()),
            ServerPin::Watched { expected, refused } => {
                if let Ok(mut r) = refused.lock() {
                    *r = Some(got);
                }
                Err(pin_mismatch(expected, &got))
            }
            ServerPin::FirstUse(seen) => {
                if let Ok(mut s) = seen.lock() {
                    *s = Some(got);
                }
                Ok(ServerCertVerified::assertion())
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        tls12_refused()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Which client certificates a server accepts.
#[derive(Debug, Clone)]
pub enum ClientPolicy {
    /// Any self-signed certificate: the broker learns a device's fingerprint from its handshake and
    /// authenticates the user by token; the fingerprint is what it later vouches for.
    AnyDevice,
    /// Only the listed fingerprints: an agent accepts exactly the devices the broker told it to expect.
    Allowed(Arc<RwLock<HashSet<Fingerprint>>>),
}

/// Verifies connecting clients against a [`ClientPolicy`]. A client certificate is always required.
#[derive(Debug)]
pub struct PinnedClients {
    policy: ClientPolicy,
    algs: WebPkiSupportedAlgorithms,
}

impl PinnedClients {
    pub fn new(policy: ClientPolicy) -> Arc<Self> {
        Arc::new(Self { policy, algs: algorithms() })
    }
}

impl ClientCertVerifier for PinnedClients {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        match &self.policy {
            ClientPolicy::AnyDevice => Ok(ClientCertVerified::assertion()),
            ClientPolicy::Allowed(set) => {
                let got = Fingerprint::of(end_entity);
                let ok = set.read().map(|s| s.contains(&got)).unwrap_or(false);
                if ok {
                    Ok(ClientCertVerified::assertion())
                } else {
                    Err(Error::General(format!("device {got} is not expected here")))
                }
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        tls12_refused()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Identity;

    fn verify(pin: ServerPin, presented: &Identity) -> Result<ServerCertVerified, Error> {
        let name = ServerName::try_from("p2pim-broker").expect("a valid name");
        PinnedServer::new(pin).verify_server_cert(&presented.cert, &[], &name, &[], UnixTime::now())
    }

    #[test]
    fn a_watched_pin_records_what_it_refused() {
        let (ours, theirs) = (Identity::generate("broker").unwrap(), Identity::generate("impostor").unwrap());
        let pin = ServerPin::watched(ours.fingerprint());
        assert!(verify(pin.clone(), &ours).is_ok());
        assert_eq!(pin.changed(), None, "nothing refused yet");
        assert!(verify(pin.clone(), &theirs).is_err());
        assert_eq!(pin.changed(), Some(IdentityChanged { expected: ours.fingerprint(), got: theirs.fingerprint() }));
        assert_eq!(ServerPin::Exact(ours.fingerprint()).changed(), None);
    }
}
