//! The provisioning data: domains, subscriber accounts, aliases, the change log, and the
//! commands that change them (replicated through the managers' Raft log).
//!
//! Everything here is plain data with serde (bincode in the Raft log and the database, JSON in
//! the API). Enum variants are only appended, never reordered: the Raft log on disk holds them.
//! Credentials exist only as HA1 digests (`H(user:realm:password)` for MD5 and SHA-256, the
//! realm being the account's domain); a password never enters a command, a record or a log.

use std::fmt;

use onehop_overlay::provision::DialPlan;
use serde::{Deserialize, Serialize};

use super::numbers::{Actor, Block, Carrier, Number, NumberPatch, PinProof, Want};

/// Most characters of a user part.
pub const MAX_USER: usize = 64;
/// Most characters of a display name.
pub const MAX_DISPLAY: usize = 128;
/// Most characters of a domain name.
pub const MAX_DOMAIN: usize = 253;
/// Most accounts (and aliases) in one import batch (one Raft entry).
pub const MAX_IMPORT_BATCH: usize = 1_000;

/// HA1 digests of one account, one per algorithm the farm offers.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
pub struct Ha1 {
    /// `MD5(user:realm:password)`.
    pub md5: [u8; 16],
    /// `SHA-256(user:realm:password)`.
    pub sha256: [u8; 32],
}

impl fmt::Debug for Ha1 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Ha1(<redacted>)")
    }
}

impl Ha1 {
    /// The digests of `user`'s `password` in `realm` (the account's domain), computed by the
    /// SIP crate's digest module (the one the proxies verify with).
    pub fn from_password(user: &str, realm: &str, password: &str) -> Ha1 {
        use onehop_sip::digest::{ha1, Algorithm};
        let mut out = Ha1 {
            md5: [0; 16],
            sha256: [0; 32],
        };
        out.md5
            .copy_from_slice(ha1(Algorithm::Md5, user, realm, password).as_bytes());
        out.sha256
            .copy_from_slice(ha1(Algorithm::Sha256, user, realm, password).as_bytes());
        out
    }

    /// Digests given in hex (32 and 64 hex digits), as exported from another registrar.
    pub fn from_hex(md5: &str, sha256: &str) -> Result<Ha1, ProvError> {
        Ok(Ha1 {
            md5: hex_array(md5).ok_or_else(|| {
                ProvError::invalid("ha1_md5", "must be 32 hexadecimal digits (an MD5 HA1)")
            })?,
            sha256: hex_array(sha256).ok_or_else(|| {
                ProvError::invalid(
                    "ha1_sha256",
                    "must be 64 hexadecimal digits (a SHA-256 HA1)",
                )
            })?,
        })
    }
}

fn hex_array<const N: usize>(s: &str) -> Option<[u8; N]> {
    let b = s.as_bytes();
    if b.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        let hi = (b[2 * i] as char).to_digit(16)?;
        let lo = (b[2 * i + 1] as char).to_digit(16)?;
        *o = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// A provisioned domain.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Domain {
    /// The domain name, lower case.
    pub name: String,
    /// Change version that added it.
    pub version: u64,
    /// When it was added (ms since the Unix epoch, the proposing manager's clock).
    pub at_ms: u64,
}

/// A subscriber account, as stored (HA1 digests included).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Account {
    /// The user part (case-sensitive).
    pub user: String,
    /// The domain (lower case), also the digest realm.
    pub domain: String,
    /// Shown to callees.
    pub display_name: Option<String>,
    /// A blocked account (false) is refused registration and calls.
    pub enabled: bool,
    /// Credentials.
    pub ha1: Ha1,
    /// Other AORs that reach this account, sorted.
    pub aliases: Vec<String>,
    /// Change version that created it.
    pub created_version: u64,
    /// Change version of its latest change.
    pub updated_version: u64,
    /// When it was created (ms since the Unix epoch).
    pub created_ms: u64,
    /// When it last changed (ms since the Unix epoch).
    pub updated_ms: u64,
}

impl Account {
    /// `user@domain`.
    pub fn aor(&self) -> String {
        format!("{}@{}", self.user, self.domain)
    }
}

/// What a new account is made of (validated before it is proposed).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct NewAccount {
    /// The user part.
    pub user: String,
    /// The domain (lower case).
    pub domain: String,
    /// Shown to callees.
    pub display_name: Option<String>,
    /// Enabled (true) or blocked.
    pub enabled: bool,
    /// Credentials.
    pub ha1: Ha1,
}

/// A change to an account; absent fields stay as they are.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct AccountPatch {
    /// `Some(None)` clears the display name.
    pub display_name: Option<Option<String>>,
    /// Enable or block.
    pub enabled: Option<bool>,
    /// New credentials (a password change).
    pub ha1: Option<Ha1>,
}

/// One provisioning command.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum ProvisionOp {
    /// Add a domain (409 if it exists).
    AddDomain { name: String },
    /// Remove a domain (404 if unknown, 409 while it has accounts or aliases).
    RemoveDomain { name: String },
    /// Add an account (404 if its domain is not provisioned, 409 if the AOR is taken).
    AddAccount { account: NewAccount },
    /// Change an account (404 if unknown).
    UpdateAccount { aor: String, patch: AccountPatch },
    /// Remove an account and its aliases (404 if unknown).
    RemoveAccount { aor: String },
    /// Make `alias` reach the account `aor` (404, 409 if the alias is an account or an alias).
    AddAlias { alias: String, aor: String },
    /// Remove an alias (404 if unknown).
    RemoveAlias { alias: String },
    /// Add many accounts, each with its row number in the import; each row succeeds or fails on
    /// its own. `batch` identifies the batch: a batch applied once is never applied again, and
    /// proposing it again returns the first outcome (an import that is retried after a failover
    /// neither loses nor doubles a row).
    Import {
        batch: String,
        rows: Vec<(u64, NewAccount)>,
    },
    /// Add a carrier (farm-wide administrators; 409 if its OCN exists).
    AddCarrier {
        ocn: String,
        name: String,
        actor: Actor,
    },
    /// Remove a carrier (farm-wide; 409 while it holds blocks or numbers).
    RemoveCarrier { ocn: String, actor: Actor },
    /// Add a block of numbers for a carrier (farm-wide; 409 if it overlaps another block).
    AddBlock {
        first: String,
        last: String,
        carrier: String,
        actor: Actor,
    },
    /// Remove a block (farm-wide; 409 while numbers are allocated from it).
    RemoveBlock { first: String, actor: Actor },
    /// Allocate a number (the block's carrier's administrators). `request` makes it
    /// idempotent: proposing it again returns the first outcome.
    Allocate {
        want: Want,
        patch: NumberPatch,
        actor: Actor,
        request: Option<String>,
    },
    /// Change a number's assignee, routing, properties or PIN (its carrier's administrators).
    UpdateNumber {
        number: String,
        patch: NumberPatch,
        actor: Actor,
        request: Option<String>,
    },
    /// Release a number back to its block (its carrier's administrators).
    ReleaseNumber {
        number: String,
        actor: Actor,
        request: Option<String>,
    },
    /// Port a number to `carrier` (that carrier's administrators), proven with the
    /// subscriber's PIN; `patch` sets its routing and assignee at the new carrier.
    PortNumber {
        number: String,
        carrier: String,
        proof: PinProof,
        patch: NumberPatch,
        actor: Actor,
        request: Option<String>,
    },
    /// Set (or with `None` clear) how a domain's subscribers write local numbers (farm-wide).
    SetDialPlan {
        domain: String,
        plan: Option<DialPlan>,
        actor: Actor,
    },
}

/// A command with the time it was proposed at (the proposer's clock, so that every manager
/// applies the same value).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ProvisionCommand {
    /// ms since the Unix epoch.
    pub at_ms: u64,
    /// The command.
    pub op: ProvisionOp,
}

/// Why a command was refused. `status` is the HTTP status the API answers with.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ProvError {
    /// 404, 409, 422, ...
    pub status: u16,
    /// `not_found`, `exists`, `invalid`, `conflict`, ...
    pub code: String,
    /// The request field at fault, if one is.
    pub field: Option<String>,
    /// What is wrong, for a person.
    pub message: String,
}

impl ProvError {
    /// 422: `field` is invalid.
    pub fn invalid(field: &str, message: impl Into<String>) -> ProvError {
        ProvError {
            status: 422,
            code: "invalid".into(),
            field: Some(field.into()),
            message: message.into(),
        }
    }

    /// 404: the thing `field` names does not exist.
    pub fn not_found(field: &str, message: impl Into<String>) -> ProvError {
        ProvError {
            status: 404,
            code: "not_found".into(),
            field: Some(field.into()),
            message: message.into(),
        }
    }

    /// 409: the thing `field` names exists already.
    pub fn exists(field: &str, message: impl Into<String>) -> ProvError {
        ProvError {
            status: 409,
            code: "exists".into(),
            field: Some(field.into()),
            message: message.into(),
        }
    }

    /// 409: the state forbids it (a domain that still has accounts).
    pub fn conflict(field: &str, message: impl Into<String>) -> ProvError {
        ProvError {
            status: 409,
            code: "conflict".into(),
            field: Some(field.into()),
            message: message.into(),
        }
    }
}

impl fmt::Display for ProvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{} ({}): {}", self.code, field, self.message),
            None => write!(f, "{}: {}", self.code, self.message),
        }
    }
}

impl std::error::Error for ProvError {}

/// The outcome of one row of an import.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RowOutcome {
    /// The row number the client gave.
    pub row: u64,
    /// `None`: the account was added (by this batch). `Some`: why not.
    pub error: Option<ProvError>,
}

/// What an applied command did.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// A domain was added.
    Domain(Domain),
    /// An account was added or changed; its state now.
    Account(Box<Account>),
    /// Something was removed.
    Removed,
    /// An alias was added to the account (its state now).
    Alias(Box<Account>),
    /// An import batch: one outcome per row, and whether this is the first application (false:
    /// the batch had been applied before and these are the outcomes recorded then).
    Import { rows: Vec<RowOutcome>, first: bool },
    /// A carrier was added.
    Carrier(Carrier),
    /// A block was added.
    Block(Block),
    /// A number was allocated, changed or ported; its state now (the API shows whether a PIN
    /// is set, never its hash).
    Number(Box<Number>),
    /// A domain's dial plan was set.
    DialPlan(Option<DialPlan>),
}

/// The answer to a [`ProvisionCommand`]: what it did and the change version after it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ProvisionResult {
    /// The outcome.
    pub outcome: Result<Applied, ProvError>,
    /// The store's change version after the command.
    pub version: u64,
}

/// One entry of the change log.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// Its version (1, 2, ...; gapless).
    pub version: u64,
    /// When (ms since the Unix epoch, the proposer's clock).
    pub at_ms: u64,
    /// What changed.
    pub what: ChangeKind,
}

/// What a change did. Account changes carry the whole account as it is after the change (the
/// nodes that verify credentials need nothing else); the API redacts the digests.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    /// A domain was added.
    DomainAdded { name: String },
    /// A domain was removed.
    DomainRemoved { name: String },
    /// An account was created or changed.
    AccountPut { account: Box<Account> },
    /// An account was removed (its aliases with it).
    AccountRemoved { aor: String, aliases: Vec<String> },
    /// An alias now reaches `aor`.
    AliasAdded { alias: String, aor: String },
    /// An alias was removed.
    AliasRemoved { alias: String, aor: String },
    /// A carrier was added.
    CarrierAdded { carrier: Carrier },
    /// A carrier was removed.
    CarrierRemoved { ocn: String },
    /// A block was added (as it was then).
    BlockAdded { block: Block },
    /// A block was removed.
    BlockRemoved { first: String, carrier: String },
    /// A number was allocated, changed or ported: its state now, without its PIN hash.
    NumberPut { number: Box<Number> },
    /// A number was released.
    NumberReleased { number: String, carrier: String },
    /// A domain's dial plan was set or cleared.
    DialPlanSet {
        domain: String,
        plan: Option<DialPlan>,
    },
}

/// Lower-cases and checks a domain name (RFC 1035 host name: letters, digits, hyphens, dots).
pub fn check_domain(field: &str, name: &str) -> Result<String, ProvError> {
    let d = name.trim_end_matches('.').to_ascii_lowercase();
    if d.is_empty() {
        return Err(ProvError::invalid(field, "a domain name is required"));
    }
    if d.len() > MAX_DOMAIN {
        return Err(ProvError::invalid(
            field,
            format!("longer than {MAX_DOMAIN} characters"),
        ));
    }
    for label in d.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(ProvError::invalid(
                field,
                format!("{name:?}: every label must have 1 to 63 characters"),
            ));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            || label.starts_with('-')
            || label.ends_with('-')
        {
            return Err(ProvError::invalid(
                field,
                format!(
                    "{name:?}: labels are letters, digits and inner hyphens (a host name, RFC 1035)"
                ),
            ));
        }
    }
    Ok(d)
}

/// Checks a SIP user part (RFC 3261 section 25: unreserved, escaped and user-unreserved
/// characters), case kept.
pub fn check_user(field: &str, user: &str) -> Result<(), ProvError> {
    if user.is_empty() {
        return Err(ProvError::invalid(field, "a user name is required"));
    }
    if user.chars().count() > MAX_USER {
        return Err(ProvError::invalid(
            field,
            format!("longer than {MAX_USER} characters"),
        ));
    }
    let b = user.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'%' {
            let hex = |j: usize| b.get(j).is_some_and(u8::is_ascii_hexdigit);
            let ok = hex(i + 1) && hex(i + 2);
            if !ok {
                return Err(ProvError::invalid(
                    field,
                    format!("{user:?}: '%' must start an escape of two hexadecimal digits"),
                ));
            }
            i += 3;
            continue;
        }
        let allowed = c.is_ascii_alphanumeric() || b"-_.!~*'()&=+$,;?/".contains(&c);
        if !allowed {
            return Err(ProvError::invalid(
                field,
                format!(
                    "{user:?}: {:?} is not allowed in a SIP user part (RFC 3261 section 25)",
                    c as char
                ),
            ));
        }
        i += 1;
    }
    Ok(())
}

/// Checks a display name.
pub fn check_display(field: &str, name: &str) -> Result<(), ProvError> {
    if name.chars().count() > MAX_DISPLAY {
        return Err(ProvError::invalid(
            field,
            format!("longer than {MAX_DISPLAY} characters"),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(ProvError::invalid(
            field,
            "control characters are not allowed",
        ));
    }
    Ok(())
}

/// Splits and checks `user@domain`; the domain comes back lower-cased.
pub fn parse_aor(field: &str, aor: &str) -> Result<(String, String), ProvError> {
    let aor = aor.strip_prefix("sip:").unwrap_or(aor);
    let Some((user, domain)) = aor.rsplit_once('@') else {
        return Err(ProvError::invalid(
            field,
            format!("{aor:?} is not user@domain"),
        ));
    };
    check_user(field, user)?;
    let domain = check_domain(field, domain)?;
    Ok((user.to_string(), domain))
}

/// Checks a password given to the API (it is turned into HA1 digests at once).
pub fn check_password(field: &str, password: &str) -> Result<(), ProvError> {
    if password.len() < 8 {
        return Err(ProvError::invalid(field, "must have at least 8 characters"));
    }
    if password.len() > 256 {
        return Err(ProvError::invalid(
            field,
            "must have at most 256 characters",
        ));
    }
    if password.chars().any(char::is_control) {
        return Err(ProvError::invalid(
            field,
            "control characters are not allowed",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ha1_matches_rfc2617_formula() {
        // MD5("Mufasa:testrealm@host.com:Circle Of Life"), RFC 2617 section 3.5's HA1.
        let h = Ha1::from_password("Mufasa", "testrealm@host.com", "Circle Of Life");
        let hex: String = h.md5.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "939e7578ed9e3c518a452acee763bce9");
        // SHA-256 of the same string, computed with Python's hashlib.sha256.
        let hex: String = h.sha256.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "3ba6cd94661c5ef34598040c868f13b8775df29109986be50ad35ae537dd3aa4"
        );
        assert_eq!(format!("{h:?}"), "Ha1(<redacted>)");
    }

    #[test]
    fn hex_ha1_is_checked() {
        let h = Ha1::from_password("a", "b", "c");
        let md5: String = h.md5.iter().map(|b| format!("{b:02X}")).collect();
        let sha: String = h.sha256.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(Ha1::from_hex(&md5, &sha).unwrap(), h);
        assert_eq!(
            Ha1::from_hex("abc", &sha).unwrap_err().field.as_deref(),
            Some("ha1_md5")
        );
        assert_eq!(
            Ha1::from_hex(&md5, &sha[1..]).unwrap_err().field.as_deref(),
            Some("ha1_sha256")
        );
        let mut bad = sha.clone();
        bad.replace_range(0..1, "g");
        assert!(Ha1::from_hex(&md5, &bad).is_err());
    }

    #[test]
    fn domains_users_and_aors_are_checked() {
        assert_eq!(check_domain("d", "Example.TEST.").unwrap(), "example.test");
        for bad in ["", "a..b", "-a.b", "a-.b", "a_b.c", "a b", &"a".repeat(64)] {
            assert_eq!(check_domain("d", bad).unwrap_err().status, 422, "{bad:?}");
        }
        for good in [
            "alice",
            "Alice.Smith",
            "+15550100",
            "a%20b",
            "x-y_z!~*'()&=+$,;?/",
        ] {
            check_user("u", good).unwrap_or_else(|e| panic!("{good:?}: {e}"));
        }
        for bad in [
            "",
            "a b",
            "a@b",
            "a:b",
            "%2",
            "%zz",
            "a%",
            "é",
            &"a".repeat(65),
        ] {
            assert_eq!(check_user("u", bad).unwrap_err().status, 422, "{bad:?}");
        }
        assert_eq!(
            parse_aor("aor", "sip:Alice@Example.test").unwrap(),
            ("Alice".to_string(), "example.test".to_string())
        );
        assert_eq!(
            parse_aor("aor", "alice").unwrap_err().field.as_deref(),
            Some("aor")
        );
        check_password("password", "long enough").unwrap();
        assert!(check_password("password", "short").is_err());
        assert!(check_display("display_name", "Alice\n").is_err());
    }
}
