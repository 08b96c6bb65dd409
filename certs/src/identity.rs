//! A key pair with its self-signed certificate: the broker's, or one device's.

use crate::{Error, Fingerprint, secret_file};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;

/// A key pair and the certificate that carries its public half.
#[derive(Debug)]
pub struct Identity {
    pub cert: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self { cert: self.cert.clone(), key: self.key.clone_key() }
    }
}

impl Identity {
    /// A fresh ECDSA P-256 identity. `name` goes into the certificate's SAN; nobody checks it, since trust
    /// comes from the fingerprint, but it makes captures readable.
    pub fn generate(name: &str) -> Result<Self, Error> {
        let ck = rcgen::generate_simple_self_signed(vec![name.to_string()])?;
        Ok(Self { cert: ck.cert.der().clone(), key: PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into()) })
    }

    /// This identity's fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.cert)
    }

    /// Loads `<dir>/<stem>.key` and `<dir>/<stem>.crt`, or makes and stores a new identity if neither exists.
    /// The key file is 0600; a half-present pair is an error rather than silently replaced, since replacing
    /// an identity breaks every pin on it.
    pub fn load_or_create(dir: &Path, stem: &str, name: &str) -> Result<Self, Error> {
        let key_path = dir.join(format!("{stem}.key"));
        let crt_path = dir.join(format!("{stem}.crt"));
        let file_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::File { path, source }
        };
        if !key_path.exists() && !crt_path.exists() {
            let ck = rcgen::generate_simple_self_signed(vec![name.to_string()])?;
            secret_file::write(&key_path, ck.signing_key.serialize_pem().as_bytes()).map_err(file_err(&key_path))?;
            std::fs::write(&crt_path, ck.cert.pem()).map_err(file_err(&crt_path))?;
            return Ok(Self {
                cert: ck.cert.der().clone(),
                key: PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into()),
            });
        }
        secret_file::restrict(&key_path).map_err(file_err(&key_path))?;
        let key = PrivateKeyDer::from_pem_file(&key_path)
            .map_err(|_| Error::Pem { path: key_path.clone(), what: "private key" })?;
        let cert = CertificateDer::from_pem_file(&crt_path)
            .map_err(|_| Error::Pem { path: crt_path.clone(), what: "certificate" })?;
        Ok(Self { cert, key })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_identity_survives_reload() {
        let dir = tempfile::tempdir().unwrap();
        let a = Identity::load_or_create(dir.path(), "identity", "test").unwrap();
        let b = Identity::load_or_create(dir.path(), "identity", "test").unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.key.secret_der(), b.key.secret_der());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("identity.key")).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn half_present_pair_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        Identity::load_or_create(dir.path(), "identity", "test").unwrap();
        std::fs::remove_file(dir.path().join("identity.crt")).unwrap();
        assert!(Identity::load_or_create(dir.path(), "identity", "test").is_err());
    }
}
