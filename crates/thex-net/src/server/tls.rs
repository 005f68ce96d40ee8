//! TLS for the server: a certificate chain and private key from PEM files (rustls, ring).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::{NetError, Result};

/// A server's TLS certificate chain and key, ready to accept connections.
#[derive(Clone)]
pub struct TlsIdentity {
    pub(crate) acceptor: tokio_rustls::TlsAcceptor,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsIdentity(..)")
    }
}

impl TlsIdentity {
    /// Reads a PEM certificate chain (leaf first) and its PEM private key (PKCS#8, PKCS#1 or
    /// SEC1); TLS 1.2 and 1.3 with rustls' safe defaults.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self> {
        let bad = |path: &Path, what: &str, e: String| {
            NetError::Config(format!("{}: {what}: {e}", path.display()))
        };
        let certs = CertificateDer::pem_file_iter(cert)
            .map_err(|e| bad(cert, "certificate file", e.to_string()))?
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| bad(cert, "certificate file", e.to_string()))?;
        if certs.is_empty() {
            return Err(bad(cert, "certificate file", "no certificate in it".into()));
        }
        let key_der = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| bad(key, "private key file", e.to_string()))?;
        // ring, as the client's ureq uses: classical key exchange (X25519, ECDHE) only, no
        // post-quantum hybrid, which is what rustls deprecates the function for.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| NetError::Config(format!("TLS: {e}")))?
            .with_no_client_auth()
            .with_single_cert(certs, key_der)
            .map_err(|e| bad(cert, "certificate and key", e.to_string()))?;
        Ok(Self {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        })
    }
}
