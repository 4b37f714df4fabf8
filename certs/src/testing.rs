//! A CA for tests that start real QUIC endpoints in one process: credentials for a member in
//! one call, with the member's kind, roles and address in its certificate.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use onehop_overlay::status::{Kind, Role};
use onehop_overlay::tls::{Credentials, TlsFiles};

use crate::{Ca, IssueRequest};

/// A CA made in a directory the test owns, issuing into it.
pub struct TestPki {
    dir: PathBuf,
    ca: Ca,
}

impl TestPki {
    /// A new CA for `domain` under `dir` (which must be empty or missing).
    pub fn new(dir: &Path, domain: &str) -> anyhow::Result<TestPki> {
        let ca = Ca::init(dir.join("ca"), domain)?;
        Ok(TestPki {
            dir: dir.to_path_buf(),
            ca,
        })
    }

    /// The CA itself (to revoke, say).
    pub fn ca(&mut self) -> &mut Ca {
        &mut self.ca
    }

    /// Loaded credentials for member `name` of `kind` at `ip`, with `roles`.
    pub fn issue(
        &mut self,
        name: &str,
        kind: Kind,
        ip: IpAddr,
        roles: &[&str],
    ) -> anyhow::Result<Arc<Credentials>> {
        let roles = roles
            .iter()
            .map(|r| Role::new(r).map_err(|e| anyhow::anyhow!("role {r}: {e}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let req = IssueRequest::new(name, kind).roles(roles).ips([ip]);
        let issued = self.ca.issue(&req, self.dir.join("certs"))?;
        Ok(Arc::new(Credentials::load(&TlsFiles {
            ca: self.ca.cert_path(),
            cert: issued.cert_path,
            key: issued.key_path,
            crl: None,
        })?))
    }
}
