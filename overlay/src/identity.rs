//! Our certificate extension and the identity read back from a certificate.
//!
//! Every onehop certificate is issued by the provider's own CA and carries, besides its subject
//! common name (the member name), one private X.509 extension saying what its holder may be:
//!
//! ```text
//! OnehopIdentity ::= SEQUENCE {
//!     kind   UTF8String,               -- "eventserver", "manager", "dns", "node", ...
//!     roles  SEQUENCE OF UTF8String    -- sorted, no duplicates; empty unless kind is "node"
//! }
//! ```
//!
//! The extension is **non-critical**: webpki (and so rustls) rejects certificates with unknown
//! critical extensions, and the TLS layer must accept our certificates before the overlay reads
//! the extension.
//!
//! # The extension OID
//!
//! The OID is `2.25.189498613319885565815285215780081641375` ([`EXTENSION_OID_STR`]): the
//! `2.25` arc of ITU-T X.667 / RFC 4122 §4 where the next arc is a UUID read as one unsigned
//! 128-bit integer, here the random UUID `8e901afa-4434-4588-ac26-ed75d396279f`. That needs no
//! registration and cannot collide with anybody else's OID.
//!
//! The last arc does not fit a `u64`, so [`EXTENSION_OID`] lists the arcs as `u128` and
//! [`EXTENSION_OID_DER`] holds the hand-encoded DER content octets. Splitting the UUID into
//! several smaller arcs would not be a correct `2.25` OID, and an unregistered enterprise arc
//! would not be ours, so we keep the real OID and work around the one tool that cannot write
//! it: `rcgen::CustomExtension::from_oid_content` takes the arcs as `&[u64]`. A certificate
//! generator therefore writes the extension under [`PLACEHOLDER_OID`], whose DER encoding has
//! exactly the length of the real one, and [`with_extension_oid`] swaps the real OID in:
//! once in the to-be-signed bytes just before they are signed (a wrapper around the signing
//! key does this) and once in the finished certificate. As the swap keeps every length, no
//! DER length changes and the signature covers the bytes that end up in the certificate. The
//! placeholder never appears in an issued certificate; `onehop-certs` does all this.
//!
//! Parsing needs no such trick: x509-parser keeps OIDs as their encoded bytes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use x509_parser::certificate::X509Certificate;
use x509_parser::oid_registry::Oid;
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

use crate::status::{check_member_name, Kind, NameError, Role};

/// The arcs of our extension's OID, `2.25.189498613319885565815285215780081641375`.
///
/// `u128`, because the last arc (the UUID `8e901afa-4434-4588-ac26-ed75d396279f` as an integer)
/// does not fit a `u64`; see the module documentation.
pub const EXTENSION_OID: &[u128] = &[2, 25, 0x8e90_1afa_4434_4588_ac26_ed75_d396_279f];

/// Our extension's OID in dotted form.
pub const EXTENSION_OID_STR: &str = "2.25.189498613319885565815285215780081641375";

/// The DER content octets of our extension's OID (without the `06 14` tag and length):
/// `2.25` as the single octet `40 * 2 + 25`, then the UUID arc in base 128, high group first.
pub const EXTENSION_OID_DER: &[u8] = &[
    0x69, 0x82, 0x9d, 0x90, 0x8d, 0xbe, 0xc8, 0xc3, 0xa2, 0x96, 0x91, 0xac, 0x93, 0xbb, 0xae, 0xdd,
    0x9c, 0xd8, 0xcf, 0x1f,
];

/// A stand-in OID for certificate generators that only take `u64` arcs (rcgen): its DER
/// encoding is exactly as long as [`EXTENSION_OID_DER`], so [`with_extension_oid`] can swap the
/// real OID in without changing any length. Never appears in an issued certificate.
pub const PLACEHOLDER_OID: &[u64] = &[2, 25, 0xfeed_face_cafe_beef, 0x01de_adbe_efca_fe42];

/// The DER value of our extension: `SEQUENCE { kind UTF8String, roles SEQUENCE OF UTF8String }`,
/// with the roles sorted and deduplicated.
pub fn encode_extension(kind: Kind, roles: &[Role]) -> Vec<u8> {
    encode_extension_with_carriers(kind, roles, None)
}

/// DER tag of the optional carriers field: `[0] IMPLICIT SEQUENCE OF UTF8String`.
const TAG_CARRIERS: u8 = 0xA0;

/// Most carriers one `admin` certificate names, and most characters of one.
pub const MAX_CARRIERS: usize = 64;
/// Most characters of one carrier's OCN.
pub const MAX_CARRIER_LEN: usize = 16;

/// [`encode_extension`] with, for an `admin` certificate, the carriers (OCNs) it administers:
/// `SEQUENCE { kind, roles, carriers [0] IMPLICIT SEQUENCE OF UTF8String OPTIONAL }`. `None`
/// leaves the field out (a farm-wide administrator, and every other kind).
pub fn encode_extension_with_carriers(
    kind: Kind,
    roles: &[Role],
    carriers: Option<&[String]>,
) -> Vec<u8> {
    let mut sorted: Vec<&Role> = roles.iter().collect();
    sorted.sort();
    sorted.dedup();
    let mut role_seq = Vec::new();
    for role in sorted {
        role_seq.extend(der_tlv(TAG_UTF8_STRING, role.as_str().as_bytes()));
    }
    let mut body = der_tlv(TAG_UTF8_STRING, kind.as_str().as_bytes());
    body.extend(der_tlv(TAG_SEQUENCE, &role_seq));
    if let Some(carriers) = carriers {
        let mut sorted: Vec<&String> = carriers.iter().collect();
        sorted.sort();
        sorted.dedup();
        let mut seq = Vec::new();
        for c in sorted {
            seq.extend(der_tlv(TAG_UTF8_STRING, c.as_bytes()));
        }
        body.extend(der_tlv(TAG_CARRIERS, &seq));
    }
    der_tlv(TAG_SEQUENCE, &body)
}

/// Checks a carrier's OCN as certificates carry it: 1 to [`MAX_CARRIER_LEN`] upper-case
/// letters, digits, `-` or `_`.
pub fn check_carrier(ocn: &str) -> Result<(), String> {
    let ok = !ocn.is_empty()
        && ocn.len() <= MAX_CARRIER_LEN
        && ocn
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{ocn:?} is not a carrier OCN: 1 to {MAX_CARRIER_LEN} upper-case letters, digits, '-' or '_'"
        ))
    }
}

/// Parses the DER value of our extension into its kind and its roles (sorted, deduplicated).
///
/// Strict DER: definite minimal lengths, nothing after the value. Roles are only accepted on a
/// `node` certificate.
pub fn decode_extension(value: &[u8]) -> Result<(Kind, Vec<Role>), IdentityError> {
    decode_extension_with_carriers(value).map(|(k, r, _)| (k, r))
}

/// What [`decode_extension_with_carriers`] reads: the kind, the roles and the carriers.
pub type ExtensionFields = (Kind, Vec<Role>, Option<Vec<String>>);

/// [`decode_extension`] with the optional carriers field (`admin` certificates only; sorted,
/// deduplicated, at least one, at most [`MAX_CARRIERS`]).
pub fn decode_extension_with_carriers(value: &[u8]) -> Result<ExtensionFields, IdentityError> {
    let malformed = |what: &str| IdentityError::MalformedExtension(what.to_string());
    let (body, rest) = der_expect(value, TAG_SEQUENCE).map_err(|e| malformed(&e))?;
    if !rest.is_empty() {
        return Err(malformed("trailing bytes after the value"));
    }
    let (kind_bytes, rest) = der_expect(body, TAG_UTF8_STRING).map_err(|e| malformed(&e))?;
    let (mut role_seq, rest) = der_expect(rest, TAG_SEQUENCE).map_err(|e| malformed(&e))?;
    let carriers = if rest.is_empty() {
        None
    } else {
        let (mut seq, rest) = der_expect(rest, TAG_CARRIERS).map_err(|e| malformed(&e))?;
        if !rest.is_empty() {
            return Err(malformed("trailing bytes after the carriers"));
        }
        let mut carriers = Vec::new();
        while !seq.is_empty() {
            let (c, rest) = der_expect(seq, TAG_UTF8_STRING).map_err(|e| malformed(&e))?;
            seq = rest;
            let c = std::str::from_utf8(c).map_err(|_| malformed("a carrier is not utf-8"))?;
            check_carrier(c).map_err(|e| malformed(&e))?;
            carriers.push(c.to_string());
            if carriers.len() > MAX_CARRIERS {
                return Err(malformed("more than 64 carriers"));
            }
        }
        if carriers.is_empty() {
            return Err(malformed("an empty carrier list"));
        }
        carriers.sort();
        carriers.dedup();
        Some(carriers)
    };
    let kind_str =
        std::str::from_utf8(kind_bytes).map_err(|_| malformed("the kind is not valid utf-8"))?;
    let kind = kind_str
        .parse::<Kind>()
        .map_err(|_| IdentityError::UnknownKind(kind_str.to_string()))?;
    let mut roles = Vec::new();
    while !role_seq.is_empty() {
        let (role_bytes, rest) =
            der_expect(role_seq, TAG_UTF8_STRING).map_err(|e| malformed(&e))?;
        role_seq = rest;
        let role_str =
            std::str::from_utf8(role_bytes).map_err(|_| malformed("a role is not valid utf-8"))?;
        roles.push(Role::new(role_str).map_err(IdentityError::BadRole)?);
    }
    roles.sort();
    roles.dedup();
    if !roles.is_empty() && kind != Kind::Node {
        return Err(IdentityError::RolesOnNonNode(kind));
    }
    if carriers.is_some() && kind != Kind::Admin {
        return Err(malformed("only admin certificates name carriers"));
    }
    Ok((kind, roles, carriers))
}

/// Replaces the one occurrence of the encoded [`PLACEHOLDER_OID`] (tag, length and content) in
/// `der` with the encoded real extension OID. Lengths are unchanged.
///
/// Certificate generators call this on the to-be-signed bytes right before signing them and on
/// the finished certificate; see the module documentation. Fails unless the placeholder occurs
/// exactly once.
pub fn with_extension_oid(der: &[u8]) -> Result<Vec<u8>, IdentityError> {
    let placeholder = der_tlv(
        TAG_OID,
        &encode_oid_arcs(PLACEHOLDER_OID.iter().map(|&a| a as u128)),
    );
    let real = der_tlv(TAG_OID, EXTENSION_OID_DER);
    debug_assert_eq!(placeholder.len(), real.len());
    let hits: Vec<usize> = der
        .windows(placeholder.len())
        .enumerate()
        .filter(|(_, w)| *w == placeholder.as_slice())
        .map(|(i, _)| i)
        .collect();
    match hits.as_slice() {
        [at] => {
            let mut out = der.to_vec();
            out[*at..*at + real.len()].copy_from_slice(&real);
            Ok(out)
        }
        _ => Err(IdentityError::Placeholder(hits.len())),
    }
}

/// A certificate serial number: its big-endian bytes with leading zero bytes stripped (one
/// zero byte is kept for the serial 0), so a certificate's serial and a CRL entry compare equal.
///
/// Displayed, serialized and parsed as lowercase hex without separators, e.g. `0a1b2c`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Serial(pub Vec<u8>);

impl Serial {
    /// Normalises big-endian serial bytes (as found in a certificate or a CRL entry).
    pub fn from_be_bytes(bytes: &[u8]) -> Serial {
        let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
        let stripped = &bytes[start..];
        if stripped.is_empty() {
            Serial(vec![0])
        } else {
            Serial(stripped.to_vec())
        }
    }

    /// The normalised big-endian bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl FromStr for Serial {
    type Err = IdentityError;

    /// Parses hex, either case, with or without `:` separators (as OpenSSL prints serials).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits: Vec<u8> = s.bytes().filter(|&b| b != b':').collect();
        if digits.is_empty() {
            return Err(IdentityError::BadSerial(s.to_string()));
        }
        let mut nibbles = Vec::with_capacity(digits.len() + 1);
        if digits.len() % 2 == 1 {
            nibbles.push(0);
        }
        for d in digits {
            let v = (d as char)
                .to_digit(16)
                .ok_or_else(|| IdentityError::BadSerial(s.to_string()))?;
            nibbles.push(v as u8);
        }
        let bytes: Vec<u8> = nibbles.chunks(2).map(|p| (p[0] << 4) | p[1]).collect();
        Ok(Serial::from_be_bytes(&bytes))
    }
}

impl Serialize for Serial {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Serial {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Who a certificate says its holder is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The member name: the subject common name.
    pub name: String,
    /// The kind, from our extension.
    pub kind: Kind,
    /// The roles, from our extension; sorted, deduplicated, empty unless `kind` is `node`.
    pub roles: Vec<Role>,
    /// For an `admin` certificate: the carriers (OCNs) it administers, sorted; `None` for a
    /// farm-wide administrator and every other kind.
    pub carriers: Option<Vec<String>>,
    /// The certificate serial.
    pub serial: Serial,
    /// Start of validity, in seconds since the Unix epoch.
    pub not_before: i64,
    /// End of validity, in seconds since the Unix epoch.
    pub not_after: i64,
}

impl Identity {
    /// Whether the certificate is within its validity period at `unix_seconds`.
    pub fn is_valid_at(&self, unix_seconds: i64) -> bool {
        self.not_before <= unix_seconds && unix_seconds <= self.not_after
    }

    /// Whether the identity bears `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r.as_str() == role)
    }
}

/// Why a certificate, an extension value or a CRL was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The bytes are not a DER X.509 certificate.
    #[error("not a valid x509 certificate: {0}")]
    Certificate(String),
    /// The PEM text is malformed or holds no certificate.
    #[error("no certificate in the pem input: {0}")]
    Pem(String),
    /// The subject has no common name, or more than one.
    #[error("the certificate subject must have exactly one common name")]
    CommonName,
    /// The common name is not an acceptable member name.
    #[error("certificate common name: {0}")]
    BadName(NameError),
    /// The certificate lacks our extension.
    #[error("the certificate lacks the onehop identity extension ({EXTENSION_OID_STR})")]
    MissingExtension,
    /// The certificate carries our extension more than once.
    #[error("the certificate carries the onehop identity extension more than once")]
    DuplicateExtension,
    /// The extension value is not the expected DER structure.
    #[error("malformed onehop identity extension: {0}")]
    MalformedExtension(String),
    /// The extension names a kind we do not know.
    #[error("unknown kind {0:?} in the onehop identity extension")]
    UnknownKind(String),
    /// The extension carries an invalid role name.
    #[error("onehop identity extension: {0}")]
    BadRole(NameError),
    /// The extension carries roles on a certificate that is not a node's.
    #[error("the onehop identity extension gives roles to a {0} certificate: only node certificates carry roles")]
    RolesOnNonNode(Kind),
    /// The bytes are not a DER X.509 CRL.
    #[error("not a valid x509 crl: {0}")]
    Crl(String),
    /// A serial number string is not hex.
    #[error("invalid serial {0:?}: expected hex digits")]
    BadSerial(String),
    /// The placeholder OID did not occur exactly once (see [`with_extension_oid`]).
    #[error("the placeholder extension oid occurs {0} times instead of once")]
    Placeholder(usize),
}

/// Reads the identity from a parsed certificate (no signature or validity check).
pub fn identity_from_x509(cert: &X509Certificate<'_>) -> Result<Identity, IdentityError> {
    let mut cns = cert.subject().iter_common_name();
    let cn = cns.next().ok_or(IdentityError::CommonName)?;
    if cns.next().is_some() {
        return Err(IdentityError::CommonName);
    }
    let name = cn.as_str().map_err(|_| IdentityError::CommonName)?;
    check_member_name(name).map_err(IdentityError::BadName)?;

    let oid = Oid::new(EXTENSION_OID_DER.into());
    let mut ours = cert.extensions().iter().filter(|e| e.oid == oid);
    let ext = ours.next().ok_or(IdentityError::MissingExtension)?;
    if ours.next().is_some() {
        return Err(IdentityError::DuplicateExtension);
    }
    let (kind, roles, carriers) = decode_extension_with_carriers(ext.value)?;

    let validity = cert.validity();
    Ok(Identity {
        name: name.to_string(),
        kind,
        roles,
        carriers,
        serial: Serial::from_be_bytes(cert.raw_serial()),
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
    })
}

/// Reads the identity from a DER certificate (no signature or validity check: the TLS layer
/// has verified the chain already).
pub fn identity_from_der(cert_der: &[u8]) -> Result<Identity, IdentityError> {
    let (rest, cert) = X509Certificate::from_der(cert_der)
        .map_err(|e| IdentityError::Certificate(e.to_string()))?;
    if !rest.is_empty() {
        return Err(IdentityError::Certificate(
            "trailing bytes after the certificate".to_string(),
        ));
    }
    identity_from_x509(&cert)
}

/// Reads the identity from the first certificate in a PEM string (other blocks, such as keys,
/// are skipped).
pub fn identity_from_pem(pem: &str) -> Result<Identity, IdentityError> {
    identity_from_der(&first_certificate_der(pem)?)
}

/// The DER bytes of the first `CERTIFICATE` block in a PEM string.
pub fn first_certificate_der(pem: &str) -> Result<Vec<u8>, IdentityError> {
    let blocks = pem::parse_many(pem).map_err(|e| IdentityError::Pem(e.to_string()))?;
    blocks
        .into_iter()
        .find(|b| b.tag() == "CERTIFICATE")
        .map(|b| b.into_contents())
        .ok_or_else(|| IdentityError::Pem("no CERTIFICATE block".to_string()))
}

/// The serials a DER X.509 CRL revokes, normalised like [`Identity::serial`] (no signature
/// check: verify the CRL against the CA separately).
pub fn crl_serials(crl_der: &[u8]) -> Result<Vec<Serial>, IdentityError> {
    let (rest, crl) = CertificateRevocationList::from_der(crl_der)
        .map_err(|e| IdentityError::Crl(e.to_string()))?;
    if !rest.is_empty() {
        return Err(IdentityError::Crl(
            "trailing bytes after the crl".to_string(),
        ));
    }
    Ok(crl
        .iter_revoked_certificates()
        .map(|r| Serial::from_be_bytes(r.raw_serial()))
        .collect())
}

/// DER tag of an OBJECT IDENTIFIER.
const TAG_OID: u8 = 0x06;
/// DER tag of a UTF8String.
const TAG_UTF8_STRING: u8 = 0x0c;
/// DER tag of a (constructed) SEQUENCE.
const TAG_SEQUENCE: u8 = 0x30;

/// Encodes a DER tag-length-value with a single-octet tag.
fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes
            .iter()
            .position(|&b| b != 0)
            .unwrap_or(bytes.len() - 1);
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// Reads one DER element with the expected single-octet tag: returns its content and what
/// follows it.
fn der_expect(input: &[u8], tag: u8) -> Result<(&[u8], &[u8]), String> {
    let (&got, rest) = input
        .split_first()
        .ok_or_else(|| "unexpected end of the value".to_string())?;
    if got != tag {
        return Err(format!("expected tag 0x{tag:02x}, found 0x{got:02x}"));
    }
    let (&first, rest) = rest
        .split_first()
        .ok_or_else(|| "unexpected end of the value".to_string())?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return Err("unsupported or truncated length".to_string());
        }
        let (len_bytes, rest) = rest.split_at(n);
        if len_bytes[0] == 0 {
            return Err("non-minimal length".to_string());
        }
        let len = len_bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | b as usize);
        if len < 0x80 {
            return Err("non-minimal length".to_string());
        }
        (len, rest)
    };
    if rest.len() < len {
        return Err("truncated value".to_string());
    }
    Ok(rest.split_at(len))
}

/// DER content octets of an OID (at least two arcs, the first one 0, 1 or 2).
fn encode_oid_arcs(arcs: impl IntoIterator<Item = u128>) -> Vec<u8> {
    let mut arcs = arcs.into_iter();
    let first = arcs.next().unwrap_or(0);
    let second = arcs.next().unwrap_or(0);
    let mut out = Vec::new();
    for arc in std::iter::once(first * 40 + second).chain(arcs) {
        let mut groups = vec![(arc & 0x7f) as u8];
        let mut rest = arc >> 7;
        while rest > 0 {
            groups.push(0x80 | (rest & 0x7f) as u8);
            rest >>= 7;
        }
        out.extend(groups.iter().rev());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        CertificateParams, CertificateRevocationListParams, CustomExtension, DnType, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, PublicKeyData, RevokedCertParams, SerialNumber,
        SignatureAlgorithm, SigningKey,
    };

    /// Signs the to-be-signed bytes with the real OID swapped in.
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

    fn ca() -> (CertificateParams, KeyPair, Vec<u8>) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "test CA");
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let der = params.self_signed(&key).unwrap().der().to_vec();
        (params, key, der)
    }

    /// A leaf with our extension carrying `value`, signed by the CA; returns its DER.
    fn leaf(
        ca_params: &CertificateParams,
        ca_key: &KeyPair,
        name: &str,
        value: Vec<u8>,
    ) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![format!("{name}.example.net")]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.serial_number = Some(SerialNumber::from_slice(&[0x00, 0x0a, 0x1b, 0x2c]));
        params.custom_extensions = vec![CustomExtension::from_oid_content(PLACEHOLDER_OID, value)];
        let issuer = Issuer::from_params(ca_params, OidSwappingKey(ca_key));
        let cert = params.signed_by(&key, &issuer).unwrap();
        with_extension_oid(cert.der()).unwrap()
    }

    fn roles(names: &[&str]) -> Vec<Role> {
        names.iter().map(|n| Role::new(n).unwrap()).collect()
    }

    #[test]
    fn oid_constants_agree() {
        assert_eq!(
            encode_oid_arcs(EXTENSION_OID.iter().copied()),
            EXTENSION_OID_DER
        );
        let dotted: Vec<String> = EXTENSION_OID.iter().map(|a| a.to_string()).collect();
        assert_eq!(dotted.join("."), EXTENSION_OID_STR);
        let placeholder = encode_oid_arcs(PLACEHOLDER_OID.iter().map(|&a| a as u128));
        assert_eq!(placeholder.len(), EXTENSION_OID_DER.len());
    }

    #[test]
    fn extension_round_trips() {
        let value = encode_extension(Kind::Node, &roles(&["sip_proxy", "registrar", "sip_proxy"]));
        let (kind, got) = decode_extension(&value).unwrap();
        assert_eq!(kind, Kind::Node);
        assert_eq!(got, roles(&["registrar", "sip_proxy"]));
        let (kind, got) = decode_extension(&encode_extension(Kind::Manager, &[])).unwrap();
        assert_eq!((kind, got), (Kind::Manager, vec![]));
    }

    #[test]
    fn identity_is_read_back_from_a_signed_certificate() {
        let (ca_params, ca_key, ca_der) = ca();
        let value = encode_extension(Kind::Node, &roles(&["sip_proxy", "media_relay"]));
        let der = leaf(&ca_params, &ca_key, "node-1", value);

        let id = identity_from_der(&der).unwrap();
        assert_eq!(id.name, "node-1");
        assert_eq!(id.kind, Kind::Node);
        assert_eq!(id.roles, roles(&["media_relay", "sip_proxy"]));
        assert_eq!(id.serial, Serial(vec![0x0a, 0x1b, 0x2c]));
        assert_eq!(id.serial.to_string(), "0a1b2c");
        assert!(id.not_before < id.not_after);

        // The swapped certificate carries the real OID, is non-critical, and its signature
        // verifies against the CA.
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let oid = Oid::new(EXTENSION_OID_DER.into());
        let ext = cert.extensions().iter().find(|e| e.oid == oid).unwrap();
        assert!(!ext.critical);
        let (_, ca_cert) = X509Certificate::from_der(&ca_der).unwrap();
        cert.verify_signature(Some(ca_cert.public_key())).unwrap();

        let pem = pem::encode(&pem::Pem::new("CERTIFICATE", der.clone()));
        assert_eq!(identity_from_pem(&pem).unwrap(), id);
    }

    #[test]
    fn admin_extensions_carry_carriers() {
        let carriers = vec!["BETA".to_string(), "ACME".to_string(), "ACME".to_string()];
        let v = encode_extension_with_carriers(Kind::Admin, &[], Some(&carriers));
        let (kind, roles, got) = decode_extension_with_carriers(&v).unwrap();
        assert_eq!((kind, roles.len()), (Kind::Admin, 0));
        assert_eq!(got, Some(vec!["ACME".to_string(), "BETA".to_string()]));
        // The earlier decoder's view: kind and roles.
        assert_eq!(decode_extension(&v).unwrap().0, Kind::Admin);
        // No field: a farm-wide administrator.
        let v = encode_extension(Kind::Admin, &[]);
        assert_eq!(decode_extension_with_carriers(&v).unwrap().2, None);
        // Carriers only on admin certificates, never empty, valid OCNs only.
        let v = encode_extension_with_carriers(Kind::Node, &[], Some(&carriers));
        assert!(decode_extension_with_carriers(&v).is_err());
        let v = encode_extension_with_carriers(Kind::Admin, &[], Some(&[]));
        assert!(decode_extension_with_carriers(&v).is_err());
        let v = encode_extension_with_carriers(Kind::Admin, &[], Some(&["a b".to_string()]));
        assert!(decode_extension_with_carriers(&v).is_err());
        let mut v = encode_extension_with_carriers(Kind::Admin, &[], Some(&carriers));
        v.push(0);
        assert!(decode_extension_with_carriers(&v).is_err());
    }

    #[test]
    fn malformed_extension_values_are_rejected() {
        let (ca_params, ca_key, _) = ca();
        let der = leaf(
            &ca_params,
            &ca_key,
            "bad",
            vec![0x30, 0x03, 0x0c, 0x01, b'x'],
        );
        assert!(matches!(
            identity_from_der(&der),
            Err(IdentityError::MalformedExtension(_))
        ));

        assert!(matches!(
            decode_extension(&encode_extension(Kind::Node, &[])[..4]),
            Err(IdentityError::MalformedExtension(_))
        ));
        let mut trailing = encode_extension(Kind::Dns, &[]);
        trailing.push(0);
        assert!(matches!(
            decode_extension(&trailing),
            Err(IdentityError::MalformedExtension(_))
        ));

        // unknown kind
        let mut body = der_tlv(TAG_UTF8_STRING, b"router");
        body.extend(der_tlv(TAG_SEQUENCE, &[]));
        let value = der_tlv(TAG_SEQUENCE, &body);
        assert_eq!(
            decode_extension(&value),
            Err(IdentityError::UnknownKind("router".into()))
        );

        // bad role
        let mut body = der_tlv(TAG_UTF8_STRING, b"node");
        body.extend(der_tlv(
            TAG_SEQUENCE,
            &der_tlv(TAG_UTF8_STRING, b"Sip Proxy"),
        ));
        let value = der_tlv(TAG_SEQUENCE, &body);
        assert!(matches!(
            decode_extension(&value),
            Err(IdentityError::BadRole(_))
        ));

        // roles on a non-node
        let value = encode_extension(Kind::Monitor, &roles(&["registrar"]));
        assert_eq!(
            decode_extension(&value),
            Err(IdentityError::RolesOnNonNode(Kind::Monitor))
        );
    }

    #[test]
    fn missing_extension_and_bad_names_are_rejected() {
        let (ca_params, ca_key, _) = ca();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, "plain");
        let issuer = Issuer::from_params(&ca_params, &ca_key);
        let der = params.signed_by(&key, &issuer).unwrap().der().to_vec();
        assert_eq!(
            identity_from_der(&der),
            Err(IdentityError::MissingExtension)
        );

        let value = encode_extension(Kind::Dns, &[]);
        let der = leaf(&ca_params, &ca_key, "has.dot", value);
        assert!(matches!(
            identity_from_der(&der),
            Err(IdentityError::BadName(_))
        ));

        assert!(matches!(
            identity_from_der(b"not a certificate"),
            Err(IdentityError::Certificate(_))
        ));
        assert!(matches!(
            identity_from_pem("nothing"),
            Err(IdentityError::Pem(_))
        ));
    }

    #[test]
    fn crl_serials_lists_revoked_serials() {
        let (ca_params, ca_key, _) = ca();
        let value = encode_extension(Kind::Node, &roles(&["registrar"]));
        let der = leaf(&ca_params, &ca_key, "node-2", value);
        let id = identity_from_der(&der).unwrap();

        let now = time::OffsetDateTime::now_utc();
        let crl = CertificateRevocationListParams {
            this_update: now,
            next_update: now + time::Duration::days(7),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: vec![
                RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&[0x7f, 0x01]),
                    revocation_time: now,
                    reason_code: None,
                    invalidity_date: None,
                },
                RevokedCertParams {
                    serial_number: SerialNumber::from_slice(id.serial.as_bytes()),
                    revocation_time: now,
                    reason_code: None,
                    invalidity_date: None,
                },
            ],
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&Issuer::from_params(&ca_params, &ca_key))
        .unwrap();
        let serials = crl_serials(crl.der()).unwrap();
        assert_eq!(serials.len(), 2);
        assert!(serials.contains(&id.serial));
        assert!(serials.contains(&Serial(vec![0x7f, 0x01])));
        assert!(crl_serials(b"junk").is_err());
    }

    #[test]
    fn serials_normalise_and_parse() {
        assert_eq!(Serial::from_be_bytes(&[0, 0, 1, 2]), Serial(vec![1, 2]));
        assert_eq!(Serial::from_be_bytes(&[0, 0]), Serial(vec![0]));
        assert_eq!(
            "0A:1b:2C".parse::<Serial>().unwrap(),
            Serial(vec![0x0a, 0x1b, 0x2c])
        );
        assert_eq!("abc".parse::<Serial>().unwrap(), Serial(vec![0x0a, 0xbc]));
        assert!("xyz".parse::<Serial>().is_err());
        assert!("".parse::<Serial>().is_err());
        let json = serde_json::to_string(&Serial(vec![0x0a, 0xff])).unwrap();
        assert_eq!(json, "\"0aff\"");
        assert_eq!(
            serde_json::from_str::<Serial>(&json).unwrap(),
            Serial(vec![0x0a, 0xff])
        );
    }

    #[test]
    fn placeholder_must_occur_once() {
        assert_eq!(
            with_extension_oid(b"nothing here"),
            Err(IdentityError::Placeholder(0))
        );
    }
}
