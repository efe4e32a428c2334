//! TLS configuration: loading the certificate and key both listeners
//! present, and starting a rustls session for an accepted socket. Reading
//! and writing through a session is `net::Stream`'s job.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use rustls::ServerConnection;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::Error;

/// The certificate and key both listeners present.
#[derive(Clone)]
pub struct TlsConfig(Arc<rustls::ServerConfig>);

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsConfig")
    }
}

impl TlsConfig {
    /// Loads a PEM certificate chain and private key.
    pub fn load(cert: &Path, key: &Path) -> Result<TlsConfig, Error> {
        fn tls_error(
            path: &Path,
            message: &str,
            source: impl std::error::Error + Send + Sync + 'static,
        ) -> Error {
            Error::Tls {
                path: path.to_path_buf(),
                message: format!("{message}: {source}"),
                source: Some(Box::new(source)),
            }
        }
        let certs = CertificateDer::pem_file_iter(cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| tls_error(cert, "cannot read a PEM certificate chain", e))?;
        if certs.is_empty() {
            return Err(Error::Tls {
                path: cert.to_path_buf(),
                message: "it holds no certificate".into(),
                source: None,
            });
        }
        let key_der = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| tls_error(key, "cannot read a PEM private key", e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key_der))
            .map_err(|e| tls_error(key, "the key does not fit the certificate", e))?;
        Ok(TlsConfig(Arc::new(config)))
    }

    /// A new server session, shared by a connection's reading and writing
    /// halves.
    pub fn session(&self) -> std::io::Result<Session> {
        let session = ServerConnection::new(self.0.clone()).map_err(std::io::Error::other)?;
        Ok(Session(Arc::new(Mutex::new(session))))
    }
}

/// One rustls server session, shared by a connection's two threads.
#[derive(Clone)]
pub struct Session(Arc<Mutex<ServerConnection>>);

impl Session {
    /// The session, for one rustls call or one record write at a time.
    pub fn lock(&self) -> MutexGuard<'_, ServerConnection> {
        self.0
            .lock()
            .expect("BUG: no thread panics while holding a TLS session")
    }
}
