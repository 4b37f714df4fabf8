//! onehop-certs: the provider's own certificate authority.
//!
//! Every onehop daemon talks QUIC with mutual TLS; every certificate comes from one CA kept in a
//! directory:
//!
//! - `ca.pem`: the self-signed CA certificate (CN `onehop CA for DOMAIN`, ten years).
//! - `ca.key`: its private key (PKCS#8 PEM, mode 0600).
//! - `crl.pem`: the certificate revocation list, re-signed on every revocation.
//! - `index.json`: the domain, the CRL number and every certificate issued ([`Index`]).
//!
//! Leaf certificates carry the member name as CN, `NAME.DOMAIN` and the given addresses as
//! subject alternative names, and our non-critical identity extension (kind and roles, see
//! [`onehop_overlay::identity`]).
//!
//! The library is what the `onehop-certs` binary runs, and what the farm launcher calls
//! directly: [`Ca::init`], [`Ca::open`], [`Ca::issue`], [`Ca::revoke`], [`Ca::list`], [`show`].
//! A CA directory has a single writer at a time: two processes issuing or revoking in the same
//! directory at once may lose an index update.

mod cli;
pub mod testing;
pub use cli::cli_main;

use std::fmt;
use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use onehop_overlay::identity::{
    crl_serials, encode_extension_with_carriers, identity_from_der, with_extension_oid, Identity,
    IdentityError, Serial, PLACEHOLDER_OID,
};
use onehop_overlay::status::{check_member_name, Kind, NameError, Role};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CustomExtension,
    DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair,
    KeyUsagePurpose, PublicKeyData, RevokedCertParams, SanType, SerialNumber, SignatureAlgorithm,
    SigningKey,
};
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

/// File name of the CA certificate in a CA directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key in a CA directory.
pub const CA_KEY_FILE: &str = "ca.key";
/// File name of the revocation list in a CA directory.
pub const CRL_FILE: &str = "crl.pem";
/// File name of the index of issued certificates in a CA directory.
pub const INDEX_FILE: &str = "index.json";
/// Default validity of a leaf certificate, in days.
pub const DEFAULT_DAYS: u32 = 825;
/// Validity of the CA certificate, in days (ten years).
pub const CA_DAYS: i64 = 3653;
/// How long a freshly signed CRL is current (its `nextUpdate`), in days.
pub const CRL_DAYS: i64 = 7;

/// Result with a [`CertsError`].
pub type Result<T, E = CertsError> = std::result::Result<T, E>;

/// Everything that can go wrong; every message is one lowercase line.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    /// The directory holds no CA.
    #[error("no CA in {}: run `onehop-certs init --domain DOMAIN --dir {}` first", .dir.display(), .dir.display())]
    NoCa {
        /// The directory.
        dir: PathBuf,
    },
    /// `init` on a directory that already holds a CA.
    #[error("a CA already exists in {}", .dir.display())]
    CaExists {
        /// The directory.
        dir: PathBuf,
    },
    /// The name has a live (not revoked) certificate.
    #[error("{name} is already issued (serial {serial}); revoke it first or pick another name")]
    AlreadyIssued {
        /// The member name.
        name: String,
        /// The serial of the live certificate.
        serial: Serial,
    },
    /// Every certificate of the name is revoked already.
    #[error("{name} is already revoked")]
    AlreadyRevoked {
        /// The member name.
        name: String,
    },
    /// The CA never issued this name.
    #[error("{name} was never issued by the CA in {}", .dir.display())]
    UnknownName {
        /// The member name.
        name: String,
        /// The CA directory.
        dir: PathBuf,
    },
    /// An unknown kind, an invalid role or an invalid member name.
    #[error("{0}")]
    Name(NameError),
    /// Roles requested for a kind other than `node`.
    #[error("only node certificates carry roles")]
    RolesOnlyForNodes,
    /// Carriers requested for a kind other than `admin`, or not valid OCNs.
    #[error("{0}")]
    BadCarriers(String),
    /// Not a DNS domain.
    #[error("invalid domain {0:?}: expected a dns name such as example.net")]
    BadDomain(String),
    /// Not an IP address.
    #[error("invalid ip address {0:?}")]
    BadIp(String),
    /// Not an RFC 3339 time.
    #[error("invalid time {0:?}: expected rfc 3339, such as 2030-01-31T12:00:00Z")]
    BadTime(String),
    /// An impossible validity period.
    #[error("invalid validity: {0}")]
    BadValidity(String),
    /// A file could not be read.
    #[error("cannot read {}: {err}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        err: std::io::Error,
    },
    /// A file or directory could not be written.
    #[error("cannot write {}: {err}", .path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        err: std::io::Error,
    },
    /// A file was read but its content is not what it should be.
    #[error("{}: {reason}", .path.display())]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Generating a key, certificate or CRL failed.
    #[error("cannot generate {what}: {reason}")]
    Generate {
        /// What was being generated.
        what: &'static str,
        /// Why.
        reason: String,
    },
}

impl From<NameError> for CertsError {
    fn from(e: NameError) -> Self {
        CertsError::Name(e)
    }
}

fn gen_err<E: fmt::Display>(what: &'static str) -> impl FnOnce(E) -> CertsError {
    move |err| {
        let text = err.to_string();
        let mut chars = text.chars();
        let reason = match chars.next() {
            Some(first) => first.to_lowercase().chain(chars).collect(),
            None => text,
        };
        CertsError::Generate { what, reason }
    }
}

fn bad_file(path: &Path, reason: impl fmt::Display) -> CertsError {
    CertsError::BadFile {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Parses a kind name (`eventserver`, `manager`, `dns`, `node`, `monitor`, `admin`).
pub fn parse_kind(s: &str) -> Result<Kind> {
    Ok(s.parse::<Kind>()?)
}

/// Parses a comma-separated role list (`sip_proxy,registrar`); blanks around names are ignored,
/// an empty string gives no roles. The result is sorted and deduplicated.
pub fn parse_roles(s: &str) -> Result<Vec<Role>> {
    let mut roles = s
        .split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(Role::new)
        .collect::<Result<Vec<_>, _>>()?;
    roles.sort();
    roles.dedup();
    Ok(roles)
}

/// Parses an IP address.
pub fn parse_ip(s: &str) -> Result<IpAddr> {
    s.trim()
        .parse()
        .map_err(|_| CertsError::BadIp(s.to_string()))
}

/// Parses an RFC 3339 time, such as `2030-01-31T12:00:00Z`.
pub fn parse_time(s: &str) -> Result<OffsetDateTime> {
    OffsetDateTime::parse(s.trim(), &Rfc3339).map_err(|_| CertsError::BadTime(s.to_string()))
}

/// Formats a time as RFC 3339 in UTC, to the second.
pub fn format_time(t: OffsetDateTime) -> String {
    let t = t
        .to_offset(time::UtcOffset::UTC)
        .replace_nanosecond(0)
        .unwrap_or(t);
    t.format(&Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

fn from_unix(secs: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(secs).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn now() -> OffsetDateTime {
    let t = OffsetDateTime::now_utc();
    t.replace_nanosecond(0).unwrap_or(t)
}

/// Checks a DNS domain and returns it lowercased.
pub fn check_domain(domain: &str) -> Result<String> {
    let d = domain.trim_end_matches('.').to_ascii_lowercase();
    let ok = !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        });
    if ok {
        Ok(d)
    } else {
        Err(CertsError::BadDomain(domain.to_string()))
    }
}

/// Reads a file to a string, naming the path in the error.
pub fn read_string(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|err| CertsError::Read {
        path: path.to_path_buf(),
        err,
    })
}

/// Writes a file atomically (a temporary file in the same directory, then a rename). With
/// `private`, the file is created with mode 0600.
pub fn write_atomic(path: &Path, bytes: &[u8], private: bool) -> Result<()> {
    let write_err = |err| CertsError::Write {
        path: path.to_path_buf(),
        err,
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    let result = (|| {
        let mut f = opts.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(write_err(e));
    }
    Ok(())
}

fn ca_file(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

fn require_ca(dir: &Path) -> Result<()> {
    if ca_file(dir, CA_CERT_FILE).is_file() {
        Ok(())
    } else {
        Err(CertsError::NoCa {
            dir: dir.to_path_buf(),
        })
    }
}

/// Reads the CA certificate (PEM) of the CA in `dir`.
pub fn load_ca_pem(dir: impl AsRef<Path>) -> Result<String> {
    let dir = dir.as_ref();
    require_ca(dir)?;
    read_string(&ca_file(dir, CA_CERT_FILE))
}

/// Reads the revocation list (PEM) of the CA in `dir`.
pub fn load_crl_pem(dir: impl AsRef<Path>) -> Result<String> {
    let dir = dir.as_ref();
    require_ca(dir)?;
    read_string(&ca_file(dir, CRL_FILE))
}

/// The DER content of the first PEM block tagged `tag` in the file `path`.
pub fn pem_block_der(path: &Path, text: &str, tag: &str) -> Result<Vec<u8>> {
    let blocks = pem::parse_many(text).map_err(|e| bad_file(path, format!("bad pem: {e}")))?;
    blocks
        .into_iter()
        .find(|b| b.tag() == tag)
        .map(|b| b.into_contents())
        .ok_or_else(|| bad_file(path, format!("no {tag} block")))
}

/// Where a certificate stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// Within its validity period and not revoked.
    Valid,
    /// Its validity period has not started.
    NotYetValid,
    /// Its validity period is over.
    Expired,
    /// Revoked.
    Revoked,
}

impl State {
    /// The name printed by `list`.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Valid => "valid",
            State::NotYetValid => "not-yet-valid",
            State::Expired => "expired",
            State::Revoked => "revoked",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One issued certificate, as recorded in `index.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The member name (CN).
    pub name: String,
    /// The kind.
    pub kind: Kind,
    /// The roles (nodes only), sorted.
    pub roles: Vec<Role>,
    /// The IP subject alternative names.
    pub ips: Vec<IpAddr>,
    /// The serial, hex.
    pub serial: Serial,
    /// Start of validity.
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    /// End of validity.
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    /// Whether the certificate is revoked.
    pub revoked: bool,
    /// When it was revoked.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub revoked_at: Option<OffsetDateTime>,
}

impl Entry {
    /// The state at `at`.
    pub fn state_at(&self, at: OffsetDateTime) -> State {
        if self.revoked {
            State::Revoked
        } else if at > self.not_after {
            State::Expired
        } else if at < self.not_before {
            State::NotYetValid
        } else {
            State::Valid
        }
    }
}

/// The content of `index.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Index {
    /// The domain: leaf certificates get `NAME.DOMAIN` as DNS name.
    pub domain: String,
    /// The number of the current CRL.
    pub crl_number: u64,
    /// Every certificate issued, oldest first.
    pub certs: Vec<Entry>,
}

/// What to issue; build with [`IssueRequest::new`] and set the optional fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssueRequest {
    /// The member name (CN), checked with [`check_member_name`].
    pub name: String,
    /// The kind.
    pub kind: Kind,
    /// The roles; only for [`Kind::Node`].
    pub roles: Vec<Role>,
    /// The carriers (OCNs) an [`Kind::Admin`] certificate administers; `None`: farm-wide.
    pub carriers: Option<Vec<String>>,
    /// IP addresses added as subject alternative names.
    pub ips: Vec<IpAddr>,
    /// Validity in days ([`DEFAULT_DAYS`] if `None`); not together with `not_after`.
    pub days: Option<u32>,
    /// Start of validity: now if `None` (or, when only a past `not_after` is given, `days`
    /// before it).
    pub not_before: Option<OffsetDateTime>,
    /// End of validity: `not_before + days` if `None`. May be in the past (for tests).
    pub not_after: Option<OffsetDateTime>,
}

impl IssueRequest {
    /// A request for `name` of `kind`, no roles, no addresses, default validity.
    pub fn new(name: impl Into<String>, kind: Kind) -> Self {
        IssueRequest {
            name: name.into(),
            kind,
            roles: Vec::new(),
            carriers: None,
            ips: Vec::new(),
            days: None,
            not_before: None,
            not_after: None,
        }
    }

    /// Sets the roles.
    pub fn roles(mut self, roles: impl IntoIterator<Item = Role>) -> Self {
        self.roles = roles.into_iter().collect();
        self
    }

    /// Sets the IP addresses.
    pub fn ips(mut self, ips: impl IntoIterator<Item = IpAddr>) -> Self {
        self.ips = ips.into_iter().collect();
        self
    }

    /// The validity period, checked.
    fn validity(&self, now: OffsetDateTime) -> Result<(OffsetDateTime, OffsetDateTime)> {
        if self.days == Some(0) {
            return Err(CertsError::BadValidity(
                "--days must be at least 1".to_string(),
            ));
        }
        if self.days.is_some() && self.not_after.is_some() {
            return Err(CertsError::BadValidity(
                "give either --days or --not-after, not both".to_string(),
            ));
        }
        let days = Duration::days(i64::from(self.days.unwrap_or(DEFAULT_DAYS)));
        let (nb, na) = match (self.not_before, self.not_after) {
            (Some(nb), Some(na)) => (nb, na),
            (Some(nb), None) => (nb, nb + days),
            (None, Some(na)) if na <= now => (na - days, na),
            (None, Some(na)) => (now, na),
            (None, None) => (now, now + days),
        };
        if na <= nb {
            return Err(CertsError::BadValidity(
                "--not-after must be later than --not-before".to_string(),
            ));
        }
        Ok((nb, na))
    }
}

/// A certificate just issued.
#[derive(Debug, Clone)]
pub struct Issued {
    /// `OUT/NAME.pem`: the leaf certificate.
    pub cert_path: PathBuf,
    /// `OUT/NAME.key`: its private key (PKCS#8 PEM, mode 0600).
    pub key_path: PathBuf,
    /// The identity read back from the certificate.
    pub identity: Identity,
    /// The index entry recorded.
    pub entry: Entry,
}

/// Options for publishing the CRL through the event servers (`revoke --publish`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishOptions {
    /// The CA directory.
    pub ca_dir: PathBuf,
    /// The CRL to publish (DER).
    pub crl_der: Vec<u8>,
    /// A farm directory to take the admin certificate and event server addresses from.
    pub farm: Option<PathBuf>,
    /// The admin certificate to connect with.
    pub cert: Option<PathBuf>,
    /// The admin certificate's key.
    pub key: Option<PathBuf>,
    /// Event server addresses (`HOST:PORT`).
    pub eventservers: Vec<String>,
}

/// Signs with the CA key after swapping the real extension OID into the to-be-signed bytes
/// (see [`onehop_overlay::identity`]: rcgen cannot write our OID).
struct OidSwappingKey<'a>(&'a KeyPair);

impl PublicKeyData for OidSwappingKey<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.0.der_bytes()
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.0.algorithm()
    }
}

impl SigningKey for OidSwappingKey<'_> {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let tbs = with_extension_oid(msg).map_err(|_| rcgen::Error::RemoteKeyError)?;
        self.0.sign(&tbs)
    }
}

/// A random positive 16-byte serial (126 random bits, the top byte never zero).
fn random_serial() -> Vec<u8> {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    bytes.to_vec()
}

/// An open CA directory.
pub struct Ca {
    dir: PathBuf,
    cert_pem: String,
    cert_der: Vec<u8>,
    key: KeyPair,
    index: Index,
    crl_pem: String,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("dir", &self.dir)
            .field("domain", &self.index.domain)
            .field("certs", &self.index.certs.len())
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// Creates a new CA in `dir` (created if missing) for `domain`: `ca.pem`, `ca.key` (0600),
    /// an empty signed `crl.pem` and `index.json`. Fails if `dir/ca.pem` exists.
    pub fn init(dir: impl AsRef<Path>, domain: &str) -> Result<Ca> {
        Ca::init_for_days(dir, domain, CA_DAYS as u32)
    }

    /// [`Ca::init`] with a CA certificate valid `days` days (at least 1) instead of
    /// [`CA_DAYS`]: a short-lived CA, to see how a farm reports one nearing its end.
    pub fn init_for_days(dir: impl AsRef<Path>, domain: &str, days: u32) -> Result<Ca> {
        if days == 0 {
            return Err(CertsError::BadValidity(
                "--days must be at least 1".to_string(),
            ));
        }
        let dir = dir.as_ref().to_path_buf();
        let domain = check_domain(domain)?;
        if ca_file(&dir, CA_CERT_FILE).exists() {
            return Err(CertsError::CaExists { dir });
        }
        fs::create_dir_all(&dir).map_err(|err| CertsError::Write {
            path: dir.clone(),
            err,
        })?;

        let key = KeyPair::generate().map_err(gen_err("the CA key"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("onehop CA for {domain}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(SerialNumber::from_slice(&random_serial()));
        let start = now();
        params.not_before = start;
        params.not_after = start + Duration::days(i64::from(days));
        let cert = params
            .self_signed(&key)
            .map_err(gen_err("the CA certificate"))?;

        let mut ca = Ca {
            dir: dir.clone(),
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key,
            index: Index {
                domain,
                crl_number: 0,
                certs: Vec::new(),
            },
            crl_pem: String::new(),
        };
        // ca.pem is written last: it marks a complete CA, so an interrupted init can be rerun.
        write_atomic(
            &ca_file(&dir, CA_KEY_FILE),
            ca.key.serialize_pem().as_bytes(),
            true,
        )?;
        ca.sign_crl()?;
        ca.save_index()?;
        write_atomic(&ca_file(&dir, CA_CERT_FILE), ca.cert_pem.as_bytes(), false)?;
        Ok(ca)
    }

    /// Opens the CA in `dir`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Ca> {
        let dir = dir.as_ref().to_path_buf();
        let cert_pem = load_ca_pem(&dir)?;
        let cert_path = ca_file(&dir, CA_CERT_FILE);
        let cert_der = pem_block_der(&cert_path, &cert_pem, "CERTIFICATE")?;

        let key_path = ca_file(&dir, CA_KEY_FILE);
        let key = KeyPair::from_pem(&read_string(&key_path)?)
            .map_err(|e| bad_file(&key_path, format!("not a private key: {e}")))?;
        let (_, cert) = X509Certificate::from_der(&cert_der)
            .map_err(|e| bad_file(&cert_path, format!("not a certificate: {e}")))?;
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(bad_file(&key_path, "does not match ca.pem"));
        }

        let index_path = ca_file(&dir, INDEX_FILE);
        let index: Index = serde_json::from_str(&read_string(&index_path)?)
            .map_err(|e| bad_file(&index_path, format!("corrupt index: {e}")))?;
        let crl_pem = read_string(&ca_file(&dir, CRL_FILE))?;
        Ok(Ca {
            dir,
            cert_pem,
            cert_der,
            key,
            index,
            crl_pem,
        })
    }

    /// The CA directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The domain.
    pub fn domain(&self) -> &str {
        &self.index.domain
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// Path of `ca.pem`.
    pub fn cert_path(&self) -> PathBuf {
        ca_file(&self.dir, CA_CERT_FILE)
    }

    /// Path of `crl.pem`.
    pub fn crl_path(&self) -> PathBuf {
        ca_file(&self.dir, CRL_FILE)
    }

    /// The current revocation list, PEM.
    pub fn crl_pem(&self) -> &str {
        &self.crl_pem
    }

    /// The current revocation list, DER.
    pub fn crl_der(&self) -> Vec<u8> {
        pem::parse(&self.crl_pem)
            .map(|p| p.into_contents())
            .unwrap_or_default()
    }

    /// The number of the current revocation list.
    pub fn crl_number(&self) -> u64 {
        self.index.crl_number
    }

    /// Every certificate issued, oldest first.
    pub fn list(&self) -> Vec<Entry> {
        self.index.certs.clone()
    }

    /// The live (not revoked) certificate of `name`, if any.
    pub fn live(&self, name: &str) -> Option<&Entry> {
        self.index
            .certs
            .iter()
            .find(|e| e.name == name && !e.revoked)
    }

    /// Whether the CA revoked the certificate with this serial.
    pub fn is_revoked(&self, serial: &Serial) -> bool {
        self.index
            .certs
            .iter()
            .any(|e| e.revoked && &e.serial == serial)
    }

    /// Issues a certificate and writes `out_dir/NAME.pem` and `out_dir/NAME.key` (0600),
    /// creating `out_dir` if missing, then records it in `index.json`.
    pub fn issue(&mut self, req: &IssueRequest, out_dir: impl AsRef<Path>) -> Result<Issued> {
        check_member_name(&req.name)?;
        if !req.roles.is_empty() && req.kind != Kind::Node {
            return Err(CertsError::RolesOnlyForNodes);
        }
        if let Some(carriers) = &req.carriers {
            if req.kind != Kind::Admin {
                return Err(CertsError::BadCarriers(
                    "only admin certificates name carriers (--carriers)".into(),
                ));
            }
            if carriers.is_empty() || carriers.len() > onehop_overlay::identity::MAX_CARRIERS {
                return Err(CertsError::BadCarriers(format!(
                    "--carriers takes 1 to {} OCNs",
                    onehop_overlay::identity::MAX_CARRIERS
                )));
            }
            for c in carriers {
                onehop_overlay::identity::check_carrier(c).map_err(CertsError::BadCarriers)?;
            }
        }
        if let Some(live) = self.live(&req.name) {
            return Err(CertsError::AlreadyIssued {
                name: req.name.clone(),
                serial: live.serial.clone(),
            });
        }
        let (not_before, not_after) = req.validity(now())?;
        let mut roles = req.roles.clone();
        roles.sort();
        roles.dedup();

        let key = KeyPair::generate().map_err(gen_err("a key"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, req.name.as_str());
        let dns = format!("{}.{}", req.name, self.index.domain);
        let dns = dns.try_into().map_err(gen_err("the certificate"))?;
        params.subject_alt_names = std::iter::once(SanType::DnsName(dns))
            .chain(req.ips.iter().map(|ip| SanType::IpAddress(*ip)))
            .collect();
        params.is_ca = IsCa::NoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.serial_number = Some(SerialNumber::from_slice(&random_serial()));
        params.not_before = not_before;
        params.not_after = not_after;
        params.use_authority_key_identifier_extension = true;
        params.custom_extensions = vec![CustomExtension::from_oid_content(
            PLACEHOLDER_OID,
            encode_extension_with_carriers(req.kind, &roles, req.carriers.as_deref()),
        )];

        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, OidSwappingKey(&self.key))
            .map_err(gen_err("the certificate"))?;
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(gen_err("the certificate"))?;
        let der = with_extension_oid(cert.der()).map_err(gen_err("the certificate"))?;
        let identity = identity_from_der(&der).map_err(gen_err("the certificate"))?;
        let cert_pem = pem::encode(&pem::Pem::new("CERTIFICATE", der));

        let out_dir = out_dir.as_ref();
        fs::create_dir_all(out_dir).map_err(|err| CertsError::Write {
            path: out_dir.to_path_buf(),
            err,
        })?;
        let cert_path = out_dir.join(format!("{}.pem", req.name));
        let key_path = out_dir.join(format!("{}.key", req.name));
        write_atomic(&key_path, key.serialize_pem().as_bytes(), true)?;
        write_atomic(&cert_path, cert_pem.as_bytes(), false)?;

        let entry = Entry {
            name: req.name.clone(),
            kind: req.kind,
            roles,
            ips: req.ips.clone(),
            serial: identity.serial.clone(),
            not_before: from_unix(identity.not_before),
            not_after: from_unix(identity.not_after),
            revoked: false,
            revoked_at: None,
        };
        self.index.certs.push(entry.clone());
        self.save_index()?;
        Ok(Issued {
            cert_path,
            key_path,
            identity,
            entry,
        })
    }

    /// Revokes the live certificate of `name`: re-signs `crl.pem` with every revoked serial
    /// (next CRL number, valid [`CRL_DAYS`]) and marks it revoked in `index.json`. Returns the
    /// revoked serial. Publishing the CRL is up to the caller.
    pub fn revoke(&mut self, name: &str) -> Result<Serial> {
        let Some(pos) = self
            .index
            .certs
            .iter()
            .position(|e| e.name == name && !e.revoked)
        else {
            return Err(if self.index.certs.iter().any(|e| e.name == name) {
                CertsError::AlreadyRevoked {
                    name: name.to_string(),
                }
            } else {
                CertsError::UnknownName {
                    name: name.to_string(),
                    dir: self.dir.clone(),
                }
            });
        };
        let previous = self.index.clone();
        {
            let entry = &mut self.index.certs[pos];
            entry.revoked = true;
            entry.revoked_at = Some(now());
        }
        let serial = self.index.certs[pos].serial.clone();
        if let Err(e) = self.sign_crl().and_then(|()| self.save_index()) {
            self.index = previous;
            return Err(e);
        }
        Ok(serial)
    }

    /// Re-signs `crl.pem` with a fresh number and validity, revoking nothing new (a CRL is
    /// current for [`CRL_DAYS`] only).
    pub fn refresh_crl(&mut self) -> Result<()> {
        self.sign_crl()?;
        self.save_index()
    }

    /// Re-signs `crl.pem` with a fresh number, revoking nothing new, with its next update at
    /// `next_update`. A next update in the past makes a stale list (for tests of what the
    /// daemons do with one): its this-update is then one day before the next update.
    pub fn refresh_crl_until(&mut self, next_update: OffsetDateTime) -> Result<()> {
        let now = now();
        let this_update = if next_update > now {
            now
        } else {
            next_update - Duration::days(1)
        };
        self.sign_crl_at(this_update, next_update)?;
        self.save_index()
    }

    /// The `nextUpdate` of the CRL in `crl.pem`.
    pub fn crl_next_update(&self) -> Option<OffsetDateTime> {
        let der = self.crl_der();
        let (_, crl) = CertificateRevocationList::from_der(&der).ok()?;
        crl.next_update().map(|t| t.to_datetime())
    }

    /// Signs and writes a CRL of every revoked certificate with the next CRL number.
    fn sign_crl(&mut self) -> Result<()> {
        let this_update = now();
        self.sign_crl_at(this_update, this_update + Duration::days(CRL_DAYS))
    }

    fn sign_crl_at(
        &mut self,
        this_update: OffsetDateTime,
        next_update: OffsetDateTime,
    ) -> Result<()> {
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &self.key)
            .map_err(gen_err("the revocation list"))?;
        let (_, ca) = X509Certificate::from_der(&self.cert_der)
            .map_err(|e| bad_file(&self.cert_path(), format!("not a certificate: {e}")))?;
        let key_identifier_method = ca
            .iter_extensions()
            .find_map(|ext| match ext.parsed_extension() {
                x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(id) => {
                    Some(KeyIdMethod::PreSpecified(id.0.to_vec()))
                }
                _ => None,
            })
            .unwrap_or(KeyIdMethod::Sha256);
        let number = self.index.crl_number + 1;
        let params = CertificateRevocationListParams {
            this_update,
            next_update,
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: self
                .index
                .certs
                .iter()
                .filter(|e| e.revoked)
                .map(|e| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(e.serial.as_bytes()),
                    revocation_time: e.revoked_at.unwrap_or(this_update),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method,
        };
        let crl = params
            .signed_by(&issuer)
            .map_err(gen_err("the revocation list"))?;
        let crl_pem = crl.pem().map_err(gen_err("the revocation list"))?;
        write_atomic(&self.crl_path(), crl_pem.as_bytes(), false)?;
        self.crl_pem = crl_pem;
        self.index.crl_number = number;
        Ok(())
    }

    fn save_index(&self) -> Result<()> {
        let mut json = serde_json::to_string_pretty(&self.index).map_err(|e| {
            bad_file(
                &ca_file(&self.dir, INDEX_FILE),
                format!("cannot encode: {e}"),
            )
        })?;
        json.push('\n');
        write_atomic(&ca_file(&self.dir, INDEX_FILE), json.as_bytes(), false)
    }
}

/// Whether a certificate is revoked, as far as `show` can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Revocation {
    /// No CA directory given.
    Unknown,
    /// The certificate was not signed by the given CA.
    NotIssuedByCa,
    /// Listed in the CA's revocation list.
    Revoked,
    /// Signed by the CA and not in its revocation list.
    NotRevoked,
}

/// What `show` reports about a certificate file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The file.
    pub path: PathBuf,
    /// The identity in the certificate.
    pub identity: Identity,
    /// DNS subject alternative names.
    pub dns_names: Vec<String>,
    /// IP subject alternative names.
    pub ips: Vec<IpAddr>,
    /// Whether the validity period is over.
    pub expired: bool,
    /// Whether the validity period has not started.
    pub not_yet_valid: bool,
    /// Revocation status.
    pub revocation: Revocation,
}

#[derive(Serialize)]
struct CertInfoJson<'a> {
    path: &'a Path,
    name: &'a str,
    kind: Kind,
    roles: &'a [Role],
    serial: &'a Serial,
    dns_names: &'a [String],
    ips: &'a [IpAddr],
    not_before: String,
    not_after: String,
    expired: bool,
    not_yet_valid: bool,
    revocation: Revocation,
}

impl CertInfo {
    /// The human-readable report printed by `show`.
    pub fn to_text(&self) -> String {
        let id = &self.identity;
        let roles = if id.roles.is_empty() {
            "-".to_string()
        } else {
            join_roles(&id.roles)
        };
        let mut sans: Vec<String> = self.dns_names.clone();
        sans.extend(self.ips.iter().map(|ip| ip.to_string()));
        let validity = if self.expired {
            " (expired)"
        } else if self.not_yet_valid {
            " (not yet valid)"
        } else {
            ""
        };
        let revocation = match self.revocation {
            Revocation::Unknown => "unknown (give --dir CA)",
            Revocation::NotIssuedByCa => "unknown (not issued by this CA)",
            Revocation::Revoked => "revoked",
            Revocation::NotRevoked => "not revoked",
        };
        format!(
            "file:        {}\nname:        {}\nkind:        {}\nroles:       {}\nserial:      {}\nnames:       {}\nnot before:  {}\nnot after:   {}{}\nrevocation:  {}\n",
            self.path.display(),
            id.name,
            id.kind,
            roles,
            id.serial,
            sans.join(", "),
            format_time(from_unix(id.not_before)),
            format_time(from_unix(id.not_after)),
            validity,
            revocation,
        )
    }

    /// The JSON report printed by `show --json`.
    pub fn to_json(&self) -> serde_json::Value {
        let id = &self.identity;
        serde_json::to_value(CertInfoJson {
            path: &self.path,
            name: &id.name,
            kind: id.kind,
            roles: &id.roles,
            serial: &id.serial,
            dns_names: &self.dns_names,
            ips: &self.ips,
            not_before: format_time(from_unix(id.not_before)),
            not_after: format_time(from_unix(id.not_after)),
            expired: self.expired,
            not_yet_valid: self.not_yet_valid,
            revocation: self.revocation,
        })
        .unwrap_or(serde_json::Value::Null)
    }
}

fn join_roles(roles: &[Role]) -> String {
    roles.iter().map(Role::as_str).collect::<Vec<_>>().join(",")
}

/// Reads a certificate file (PEM, or DER) and reports on it. With `ca_dir`, also checks that
/// the CA signed it and whether the CA's (signature-checked) CRL revokes it.
pub fn show(file: impl AsRef<Path>, ca_dir: Option<&Path>) -> Result<CertInfo> {
    let path = file.as_ref();
    let bytes = fs::read(path).map_err(|err| CertsError::Read {
        path: path.to_path_buf(),
        err,
    })?;
    let der =
        if bytes.starts_with(b"-----") || bytes.first().is_some_and(|b| b.is_ascii_whitespace()) {
            let text = String::from_utf8_lossy(&bytes);
            pem_block_der(path, &text, "CERTIFICATE")?
        } else {
            bytes
        };
    let identity = identity_from_der(&der).map_err(|e| bad_file(path, e))?;
    let (_, cert) = X509Certificate::from_der(&der).map_err(|e| bad_file(path, format!("{e}")))?;

    let mut dns_names = Vec::new();
    let mut ips = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => dns_names.push(d.to_string()),
                GeneralName::IPAddress(b) => {
                    if let Ok(v4) = <[u8; 4]>::try_from(*b) {
                        ips.push(IpAddr::from(v4));
                    } else if let Ok(v6) = <[u8; 16]>::try_from(*b) {
                        ips.push(IpAddr::from(v6));
                    }
                }
                _ => {}
            }
        }
    }

    let revocation = match ca_dir {
        None => Revocation::Unknown,
        Some(dir) => revocation_status(&cert, &identity, dir)?,
    };
    let at = now().unix_timestamp();
    Ok(CertInfo {
        path: path.to_path_buf(),
        expired: at > identity.not_after,
        not_yet_valid: at < identity.not_before,
        identity,
        dns_names,
        ips,
        revocation,
    })
}

fn revocation_status(
    cert: &X509Certificate<'_>,
    identity: &Identity,
    dir: &Path,
) -> Result<Revocation> {
    let ca_path = ca_file(dir, CA_CERT_FILE);
    let ca_der = pem_block_der(&ca_path, &load_ca_pem(dir)?, "CERTIFICATE")?;
    let (_, ca) = X509Certificate::from_der(&ca_der)
        .map_err(|e| bad_file(&ca_path, format!("not a certificate: {e}")))?;
    if cert.verify_signature(Some(ca.public_key())).is_err() {
        return Ok(Revocation::NotIssuedByCa);
    }
    let crl_path = ca_file(dir, CRL_FILE);
    let crl_der = pem_block_der(&crl_path, &load_crl_pem(dir)?, "X509 CRL")?;
    let (_, crl) = CertificateRevocationList::from_der(&crl_der)
        .map_err(|e| bad_file(&crl_path, format!("not a crl: {e}")))?;
    crl.verify_signature(ca.public_key())
        .map_err(|_| bad_file(&crl_path, "not signed by ca.pem"))?;
    let serials = crl_serials(&crl_der).map_err(|e: IdentityError| bad_file(&crl_path, e))?;
    Ok(if serials.contains(&identity.serial) {
        Revocation::Revoked
    } else {
        Revocation::NotRevoked
    })
}

/// The table printed by `list`: name, kind, roles, serial, not after, state at `at`.
pub fn format_list(entries: &[Entry], at: OffsetDateTime) -> String {
    let header = ["NAME", "KIND", "ROLES", "SERIAL", "NOT AFTER", "STATE"];
    let rows: Vec<[String; 6]> = entries
        .iter()
        .map(|e| {
            [
                e.name.clone(),
                e.kind.to_string(),
                if e.roles.is_empty() {
                    "-".to_string()
                } else {
                    join_roles(&e.roles)
                },
                e.serial.to_string(),
                format_time(e.not_after),
                e.state_at(at).to_string(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                l.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&header);
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        line(&cells);
    }
    out
}

/// The JSON printed by `list --json`: every entry with its state at `at`.
pub fn list_json(entries: &[Entry], at: OffsetDateTime) -> serde_json::Value {
    serde_json::Value::Array(
        entries
            .iter()
            .map(|e| {
                let mut v = serde_json::to_value(e).unwrap_or(serde_json::Value::Null);
                if let serde_json::Value::Object(map) = &mut v {
                    map.insert(
                        "state".to_string(),
                        serde_json::Value::String(e.state_at(at).to_string()),
                    );
                }
                v
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_are_checked() {
        assert_eq!(check_domain("Example.NET.").unwrap(), "example.net");
        assert!(check_domain("voip-1.example").is_ok());
        for bad in ["", "a..b", "-a.net", "a-.net", "a b.net", "a_b.net"] {
            assert!(check_domain(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn validity_windows() {
        let now = now();
        let req = IssueRequest::new("n", Kind::Node);
        assert_eq!(
            req.validity(now).unwrap(),
            (now, now + Duration::days(i64::from(DEFAULT_DAYS)))
        );
        let past = now - Duration::days(1);
        let req = IssueRequest {
            not_after: Some(past),
            ..IssueRequest::new("n", Kind::Node)
        };
        assert_eq!(
            req.validity(now).unwrap(),
            (past - Duration::days(i64::from(DEFAULT_DAYS)), past)
        );
        let req = IssueRequest {
            days: Some(0),
            ..IssueRequest::new("n", Kind::Node)
        };
        assert!(req.validity(now).is_err());
        let req = IssueRequest {
            days: Some(3),
            not_after: Some(now + Duration::days(1)),
            ..IssueRequest::new("n", Kind::Node)
        };
        assert!(req.validity(now).is_err());
    }

    #[test]
    fn list_table_aligns_columns() {
        let at = now();
        let entry = |name: &str, revoked| Entry {
            name: name.to_string(),
            kind: Kind::Node,
            roles: vec![Role::new("registrar").unwrap()],
            ips: vec![],
            serial: Serial(vec![0x0a]),
            not_before: at - Duration::days(1),
            not_after: at + Duration::days(1),
            revoked,
            revoked_at: None,
        };
        let table = format_list(&[entry("a", false), entry("long-name", true)], at);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("NAME       KIND"));
        assert!(lines[1].ends_with("valid"));
        assert!(lines[2].ends_with("revoked"));
        assert_eq!(lines[1].find("node"), lines[2].find("node"));
    }
}
