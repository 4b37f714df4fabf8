//! The certificate revocation list every daemon enforces.
//!
//! A CRL reaches a daemon two ways: through the `crl` topic (published by an admin) and through
//! its `crl.pem` file, which is polled for changes. Either way it is verified against the CA
//! before use, taken only when it is newer than the one held (CRL number, then this-update),
//! persisted (atomically) to the configured path, and announced to the daemon's tasks through a
//! watch channel so they can rebuild their TLS configurations and close connections whose peer
//! certificate is now revoked. No restart is needed.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateRevocationListDer;
use tokio::sync::watch;
use tracing::{info, warn};
use x509_parser::prelude::*;

use crate::identity::{crl_serials, Serial};

/// Why a CRL was not taken.
#[derive(Debug, thiserror::Error)]
pub enum CrlError {
    /// Not a parsable X.509 CRL.
    #[error("not a valid X.509 CRL: {0}")]
    Parse(String),
    /// Not signed by our CA.
    #[error("CRL signature does not verify against the CA: {0}")]
    Signature(String),
    /// The CA certificate itself does not parse.
    #[error("CA certificate does not parse: {0}")]
    Ca(String),
    /// Reading or writing the CRL file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The revocation list currently in force.
#[derive(Debug, Default)]
pub struct CrlState {
    /// The DER of the CRL, if any was loaded.
    pub der: Option<Vec<u8>>,
    /// Revoked serials.
    pub serials: HashSet<Serial>,
    /// `(crl number, this update in unix seconds)`: the order in which CRLs are taken.
    pub order: (u64, i64),
    /// When the issuer promised the next list (`nextUpdate`, unix seconds), if it said.
    /// Past it the list is stale: still enforced, and reported (see [`crate::certwatch`]).
    pub next_update: Option<i64>,
}

impl CrlState {
    /// Whether a certificate with this serial is revoked.
    pub fn is_revoked(&self, serial: &Serial) -> bool {
        self.serials.contains(serial)
    }

    /// The CRL for rustls, if any.
    pub fn rustls_crls(&self) -> Vec<CertificateRevocationListDer<'static>> {
        self.der
            .iter()
            .map(|d| CertificateRevocationListDer::from(d.clone()))
            .collect()
    }
}

/// Holds the CRL in force and tells watchers when it changes.
#[derive(Debug)]
pub struct CrlStore {
    ca_der: Vec<u8>,
    path: Option<PathBuf>,
    state: ArcSwap<CrlState>,
    changed: watch::Sender<u64>,
}

impl CrlStore {
    /// A store for CRLs signed by the CA in `ca_der`, persisted at `path` (loaded now if the
    /// file exists; a file that does not verify is an error, a missing one is not).
    pub fn open(ca_der: Vec<u8>, path: Option<PathBuf>) -> Result<Arc<CrlStore>, CrlError> {
        let (changed, _) = watch::channel(0);
        let store = CrlStore {
            ca_der,
            path: path.clone(),
            state: ArcSwap::from_pointee(CrlState::default()),
            changed,
        };
        if let Some(p) = &path {
            if p.exists() {
                let der = read_crl_file(p)?;
                store.take(der, false)?;
            }
        }
        Ok(Arc::new(store))
    }

    /// The CRL in force now.
    pub fn current(&self) -> Arc<CrlState> {
        self.state.load_full()
    }

    /// A receiver that sees a new value whenever the CRL in force changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Verifies `der` against the CA and takes it if it is newer than the CRL in force.
    /// Returns whether it was taken. A taken CRL is persisted to the store's path.
    pub fn apply_der(&self, der: &[u8]) -> Result<bool, CrlError> {
        self.take(der.to_vec(), true)
    }

    fn take(&self, der: Vec<u8>, persist: bool) -> Result<bool, CrlError> {
        let order = verify(&self.ca_der, &der)?;
        let cur = self.state.load();
        if cur.der.is_some() && order <= cur.order {
            return Ok(false);
        }
        let serials: HashSet<Serial> = crl_serials(&der)
            .map_err(|e| CrlError::Parse(e.to_string()))?
            .into_iter()
            .collect();
        if persist {
            if let Some(p) = &self.path {
                write_crl_file(p, &der)?;
            }
        }
        info!(
            crl_number = order.0,
            revoked = serials.len(),
            "revocation list taken"
        );
        let next_update = next_update(&der);
        self.state.store(Arc::new(CrlState {
            der: Some(der),
            serials,
            order,
            next_update,
        }));
        self.changed.send_modify(|v| *v += 1);
        Ok(true)
    }

    /// Polls the CRL file every `every` and takes it when it changed and is newer. Runs until
    /// the store is dropped by everyone else.
    pub fn spawn_file_watch(
        self: &Arc<Self>,
        every: Duration,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let path = self.path.clone()?;
        let weak = Arc::downgrade(self);
        Some(tokio::spawn(async move {
            let mut last: Option<(SystemTime, u64)> = file_stamp(&path);
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let Some(store) = weak.upgrade() else { return };
                let stamp = file_stamp(&path);
                if stamp.is_none() || stamp == last {
                    continue;
                }
                last = stamp;
                match read_crl_file(&path).and_then(|der| store.take(der, false)) {
                    Ok(true) => info!(path = %path.display(), "revocation list reloaded from file"),
                    Ok(false) => {}
                    Err(e) => warn!(cause = %e, "revocation list file not taken"),
                }
            }
        }))
    }
}

fn file_stamp(p: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Reads a CRL file, PEM or DER.
pub fn read_crl_file(p: &Path) -> Result<Vec<u8>, CrlError> {
    let bytes = std::fs::read(p).map_err(|source| CrlError::Io {
        path: p.to_path_buf(),
        source,
    })?;
    if bytes.starts_with(b"-----") {
        CertificateRevocationListDer::from_pem_slice(&bytes)
            .map(|d| d.as_ref().to_vec())
            .map_err(|e| CrlError::Parse(format!("{}: {e}", p.display())))
    } else {
        Ok(bytes)
    }
}

/// Writes a CRL as PEM, atomically (temporary file, then rename).
pub fn write_crl_file(p: &Path, der: &[u8]) -> Result<(), CrlError> {
    let pem = ::pem::encode(&::pem::Pem::new("X509 CRL", der.to_vec()));
    let tmp = p.with_extension(format!("tmp{}", std::process::id()));
    let io = |source| CrlError::Io {
        path: p.to_path_buf(),
        source,
    };
    std::fs::write(&tmp, pem).map_err(io)?;
    std::fs::rename(&tmp, p).map_err(io)
}

/// The `nextUpdate` of a DER CRL in unix seconds: `None` when it has none or does not parse.
pub fn next_update(crl_der: &[u8]) -> Option<i64> {
    let (_, crl) = CertificateRevocationList::from_der(crl_der).ok()?;
    crl.next_update().map(|t| t.timestamp())
}

/// Checks that `crl_der` is a CRL signed by the CA; returns its order key.
pub fn verify(ca_der: &[u8], crl_der: &[u8]) -> Result<(u64, i64), CrlError> {
    let (_, ca) = X509Certificate::from_der(ca_der).map_err(|e| CrlError::Ca(e.to_string()))?;
    let (_, crl) =
        CertificateRevocationList::from_der(crl_der).map_err(|e| CrlError::Parse(e.to_string()))?;
    crl.verify_signature(ca.public_key())
        .map_err(|e| CrlError::Signature(e.to_string()))?;
    if crl.issuer() != ca.subject() {
        return Err(CrlError::Signature("issuer is not the CA".into()));
    }
    let number = crl
        .crl_number()
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(0);
    Ok((number, crl.last_update().timestamp()))
}
