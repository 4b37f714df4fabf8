//! The JSON shapes of the API: what it answers (never an HA1 digest) and what it takes.

use serde::{Deserialize, Deserializer, Serialize};

use crate::provision::model::{Account, Change, ChangeKind, Domain, ProvError};

/// An error answer: `{"code": ..., "message": ..., "field": ...}`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ErrorBody {
    /// `invalid`, `not_found`, `exists`, `conflict`, `forbidden`, `unavailable`, ...
    pub code: String,
    /// What is wrong, for a person.
    pub message: String,
    /// The request field at fault.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl From<&ProvError> for ErrorBody {
    fn from(e: &ProvError) -> Self {
        ErrorBody {
            code: e.code.clone(),
            message: e.message.clone(),
            field: e.field.clone(),
        }
    }
}

/// A domain.
#[derive(Serialize, Debug)]
pub struct DomainView {
    pub name: String,
    pub version: u64,
    pub created_ms: u64,
}

impl From<&Domain> for DomainView {
    fn from(d: &Domain) -> Self {
        DomainView {
            name: d.name.clone(),
            version: d.version,
            created_ms: d.at_ms,
        }
    }
}

/// An account, without its credentials.
#[derive(Serialize, Debug)]
pub struct AccountView {
    pub aor: String,
    pub user: String,
    pub domain: String,
    pub display_name: Option<String>,
    pub enabled: bool,
    pub aliases: Vec<String>,
    pub created_version: u64,
    pub updated_version: u64,
    pub created_ms: u64,
    pub updated_ms: u64,
}

impl From<&Account> for AccountView {
    fn from(a: &Account) -> Self {
        AccountView {
            aor: a.aor(),
            user: a.user.clone(),
            domain: a.domain.clone(),
            display_name: a.display_name.clone(),
            enabled: a.enabled,
            aliases: a.aliases.clone(),
            created_version: a.created_version,
            updated_version: a.updated_version,
            created_ms: a.created_ms,
            updated_ms: a.updated_ms,
        }
    }
}

/// One change of the log, credentials left out.
#[derive(Serialize, Debug)]
pub struct ChangeView {
    pub version: u64,
    pub at_ms: u64,
    #[serde(flatten)]
    pub what: ChangeWhat,
}

/// What a change did.
#[derive(Serialize, Debug)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ChangeWhat {
    DomainAdded { name: String },
    DomainRemoved { name: String },
    AccountPut { account: AccountView },
    AccountRemoved { aor: String, aliases: Vec<String> },
    AliasAdded { alias: String, aor: String },
    AliasRemoved { alias: String, aor: String },
}

impl From<&Change> for ChangeView {
    fn from(c: &Change) -> Self {
        let what = match &c.what {
            ChangeKind::DomainAdded { name } => ChangeWhat::DomainAdded { name: name.clone() },
            ChangeKind::DomainRemoved { name } => ChangeWhat::DomainRemoved { name: name.clone() },
            ChangeKind::AccountPut { account } => ChangeWhat::AccountPut {
                account: AccountView::from(&**account),
            },
            ChangeKind::AccountRemoved { aor, aliases } => ChangeWhat::AccountRemoved {
                aor: aor.clone(),
                aliases: aliases.clone(),
            },
            ChangeKind::AliasAdded { alias, aor } => ChangeWhat::AliasAdded {
                alias: alias.clone(),
                aor: aor.clone(),
            },
            ChangeKind::AliasRemoved { alias, aor } => ChangeWhat::AliasRemoved {
                alias: alias.clone(),
                aor: aor.clone(),
            },
        };
        ChangeView {
            version: c.version,
            at_ms: c.at_ms,
            what,
        }
    }
}

/// `POST /v1/domains`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainBody {
    pub name: String,
}

fn yes() -> bool {
    true
}

/// `POST /v1/accounts`. No `Debug`: it holds a password.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountBody {
    pub user: String,
    pub domain: String,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub ha1_md5: Option<String>,
    #[serde(default)]
    pub ha1_sha256: Option<String>,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default = "yes")]
    pub enabled: bool,
}

/// Present-but-null is `Some(None)`, absent is `None`.
fn double<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// `PATCH /v1/accounts/{aor}`. No `Debug`: it may hold a password.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchBody {
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub ha1_md5: Option<String>,
    #[serde(default)]
    pub ha1_sha256: Option<String>,
    #[serde(default, deserialize_with = "double")]
    pub display_name: Option<Option<String>>,
    #[serde(default)]
    pub enabled: Option<bool>,
}

/// `POST /v1/accounts/{aor}/aliases`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AliasBody {
    pub alias: String,
}

/// One refused row of an import.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    pub row: u64,
    pub code: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub message: String,
}

/// The answer to an import chunk.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct ImportReport {
    /// The import's id (batches are `ID:ROW`).
    pub import: String,
    pub dry_run: bool,
    /// Data rows in the chunk.
    pub rows: u64,
    /// Rows added (or that would be, in a dry run).
    pub added: u64,
    /// Rows refused.
    pub failed: u64,
    /// Batches that had been applied before (a retried chunk): their rows are counted as they
    /// were then, and nothing was added twice.
    pub replayed_batches: u64,
    /// One entry per refused row.
    pub errors: Vec<RowError>,
}
