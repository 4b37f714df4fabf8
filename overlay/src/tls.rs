//! rustls configurations from the CA, a member's certificate and key, and the CRL.
//!
//! TLS 1.3 only, ALPN `onehop/1`, the `ring` provider passed explicitly. Both sides verify the
//! peer's chain against the provider's CA and the CRL in force: every connection is mutual TLS.
//! CRLs given to a verifier are fixed when it is built, so a daemon rebuilds its configurations
//! when the CRL changes ([`crate::net::spawn_crl_enforcer`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

use crate::crl::CrlState;
use crate::identity::{identity_from_der, Identity};
use crate::wire::ALPN;

/// Where a participant's TLS material lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The provider's CA certificate (PEM).
    pub ca: PathBuf,
    /// This participant's certificate (PEM).
    pub cert: PathBuf,
    /// This participant's private key (PEM, PKCS#8).
    pub key: PathBuf,
    /// The CRL file (PEM), watched for changes and written when a newer CRL is published.
    #[serde(default)]
    pub crl: Option<PathBuf>,
}

/// A TLS set-up error, naming the file and the problem.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or parsed.
    #[error("{path}: {problem}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// Our own certificate is not acceptable.
    #[error("{path}: {problem}")]
    Certificate {
        /// The certificate file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// rustls refused the configuration.
    #[error("tls configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The verifier could not be built.
    #[error("tls verifier: {0}")]
    Verifier(String),
}

/// A participant's loaded credentials.
#[derive(Debug)]
pub struct Credentials {
    /// The CA certificate.
    pub ca: CertificateDer<'static>,
    /// Our certificate.
    pub cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    /// Who we are, read from our own certificate.
    pub identity: Identity,
}

fn file_err(path: &Path, problem: impl ToString) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        problem: problem.to_string(),
    }
}

impl Credentials {
    /// Loads and checks the CA, certificate and key named in `files`.
    pub fn load(files: &TlsFiles) -> Result<Credentials, TlsError> {
        let ca = CertificateDer::from_pem_file(&files.ca).map_err(|e| file_err(&files.ca, e))?;
        let cert =
            CertificateDer::from_pem_file(&files.cert).map_err(|e| file_err(&files.cert, e))?;
        let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| file_err(&files.key, e))?;
        let identity = identity_from_der(&cert).map_err(|e| TlsError::Certificate {
            path: files.cert.clone(),
            problem: e.to_string(),
        })?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        if identity.not_after < now {
            return Err(TlsError::Certificate {
                path: files.cert.clone(),
                problem: format!(
                    "certificate of {} expired (not after {})",
                    identity.name, identity.not_after
                ),
            });
        }
        let creds = Credentials {
            ca,
            cert,
            key,
            identity,
        };
        // Building a client config checks that the key matches the certificate.
        creds
            .client_config(&CrlState::default())
            .map_err(|e| TlsError::Certificate {
                path: files.key.clone(),
                problem: format!("key does not fit the certificate: {e}"),
            })?;
        Ok(creds)
    }

    fn roots(&self) -> Result<Arc<RootCertStore>, TlsError> {
        let mut roots = RootCertStore::empty();
        roots
            .add(self.ca.clone())
            .map_err(|e| TlsError::Verifier(format!("CA certificate: {e}")))?;
        Ok(Arc::new(roots))
    }

    /// A server configuration that requires a client certificate from our CA, not revoked.
    pub fn server_config(&self, crl: &CrlState) -> Result<rustls::ServerConfig, TlsError> {
        let provider = provider();
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots()?, provider.clone())
            .with_crls(crl.rustls_crls())
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![self.cert.clone()], self.key.clone_key())?;
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        Ok(cfg)
    }

    /// A client configuration that presents our certificate and accepts only servers with a
    /// certificate from our CA, not revoked.
    pub fn client_config(&self, crl: &CrlState) -> Result<rustls::ClientConfig, TlsError> {
        let provider = provider();
        let verifier = WebPkiServerVerifier::builder_with_provider(self.roots()?, provider.clone())
            .with_crls(crl.rustls_crls())
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_webpki_verifier(verifier)
            .with_client_auth_cert(vec![self.cert.clone()], self.key.clone_key())?;
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        Ok(cfg)
    }
}

/// The crypto provider every onehop configuration uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
