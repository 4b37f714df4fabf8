//! The JSON shapes of the API: what it answers (never an HA1 digest) and what it takes.

use serde::{Deserialize, Deserializer, Serialize};

use onehop_overlay::provision::{DialPlan, NumberRoute};

use crate::provision::model::{Account, Change, ChangeKind, Domain, ProvError};
use crate::provision::numbers::{Block, Carrier, Number, NumberEvent};

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
    DomainAdded {
        name: String,
    },
    DomainRemoved {
        name: String,
    },
    AccountPut {
        account: AccountView,
    },
    AccountRemoved {
        aor: String,
        aliases: Vec<String>,
    },
    AliasAdded {
        alias: String,
        aor: String,
    },
    AliasRemoved {
        alias: String,
        aor: String,
    },
    CarrierAdded {
        carrier: Carrier,
    },
    CarrierRemoved {
        ocn: String,
    },
    BlockAdded {
        block: BlockView,
    },
    BlockRemoved {
        first: String,
        carrier: String,
    },
    NumberPut {
        number: NumberView,
    },
    NumberReleased {
        number: String,
        carrier: String,
    },
    DialPlanSet {
        domain: String,
        dial_plan: Option<DialPlanView>,
    },
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
            ChangeKind::CarrierAdded { carrier } => ChangeWhat::CarrierAdded {
                carrier: carrier.clone(),
            },
            ChangeKind::CarrierRemoved { ocn } => ChangeWhat::CarrierRemoved { ocn: ocn.clone() },
            ChangeKind::BlockAdded { block } => ChangeWhat::BlockAdded {
                block: BlockView::from(block),
            },
            ChangeKind::BlockRemoved { first, carrier } => ChangeWhat::BlockRemoved {
                first: first.clone(),
                carrier: carrier.clone(),
            },
            ChangeKind::NumberPut { number } => ChangeWhat::NumberPut {
                number: NumberView::from(&**number),
            },
            ChangeKind::NumberReleased { number, carrier } => ChangeWhat::NumberReleased {
                number: number.clone(),
                carrier: carrier.clone(),
            },
            ChangeKind::DialPlanSet { domain, plan } => ChangeWhat::DialPlanSet {
                domain: domain.clone(),
                dial_plan: plan.as_ref().map(DialPlanView::from),
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

/// Where calls to a number go: `{"account": "alice@example.test"}` or `{"uri": "sip:..."}`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum RouteView {
    /// One of the farm's accounts.
    Account(String),
    /// A SIP URI of any network.
    Uri(String),
}

impl From<&NumberRoute> for RouteView {
    fn from(r: &NumberRoute) -> Self {
        match r {
            NumberRoute::Account(a) => RouteView::Account(a.clone()),
            NumberRoute::Uri(u) => RouteView::Uri(u.clone()),
        }
    }
}

/// A block, with its size.
#[derive(Serialize, Debug)]
pub struct BlockView {
    pub first: String,
    pub last: String,
    pub carrier: String,
    pub size: u64,
    pub allocated: u64,
    pub version: u64,
    pub created_ms: u64,
}

impl From<&Block> for BlockView {
    fn from(b: &Block) -> Self {
        BlockView {
            first: b.first.clone(),
            last: b.last.clone(),
            carrier: b.carrier.clone(),
            size: b.size(),
            allocated: b.allocated,
            version: b.version,
            created_ms: b.at_ms,
        }
    }
}

/// A number as its carrier's administrators see it (never the PIN hash).
#[derive(Serialize, Debug)]
pub struct NumberView {
    pub number: String,
    pub block: String,
    pub carrier: String,
    pub assignee: Option<String>,
    pub route: Option<RouteView>,
    /// The SIP URI that ENUM and the proxies send calls to.
    pub sip_uri: Option<String>,
    pub caller_name: Option<String>,
    pub location: Option<String>,
    pub service_type: Option<String>,
    pub has_pin: bool,
    pub created_version: u64,
    pub updated_version: u64,
    pub created_ms: u64,
    pub updated_ms: u64,
}

impl From<&Number> for NumberView {
    fn from(n: &Number) -> Self {
        NumberView {
            number: n.number.clone(),
            block: n.block.clone(),
            carrier: n.carrier.clone(),
            assignee: n.assignee.clone(),
            route: n.route.as_ref().map(RouteView::from),
            sip_uri: n.route.as_ref().map(NumberRoute::sip_uri),
            caller_name: n.props.caller_name.clone(),
            location: n.props.location.clone(),
            service_type: n.props.service_type.clone(),
            has_pin: n.pin.is_some(),
            created_version: n.created_version,
            updated_version: n.updated_version,
            created_ms: n.created_ms,
            updated_ms: n.updated_ms,
        }
    }
}

/// What anyone may read of a number ("whois").
#[derive(Serialize, Debug)]
pub struct WhoisView {
    pub number: String,
    pub carrier: String,
    pub carrier_name: Option<String>,
    pub caller_name: Option<String>,
    pub location: Option<String>,
    pub service_type: Option<String>,
    pub routed: bool,
}

/// One entry of a number's history.
#[derive(Serialize, Debug)]
pub struct EventView {
    pub version: u64,
    pub at_ms: u64,
    pub by: String,
    pub action: String,
    pub detail: String,
    pub carrier: String,
    pub route: Option<RouteView>,
}

impl From<&NumberEvent> for EventView {
    fn from(e: &NumberEvent) -> Self {
        EventView {
            version: e.version,
            at_ms: e.at_ms,
            by: e.by.clone(),
            action: e.action.clone(),
            detail: e.detail.clone(),
            carrier: e.carrier.clone(),
            route: e.route.as_ref().map(RouteView::from),
        }
    }
}

/// A domain's dial plan.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DialPlanView {
    pub country_code: String,
    #[serde(default)]
    pub national_prefix: String,
    #[serde(default)]
    pub international_prefix: String,
}

impl From<&DialPlan> for DialPlanView {
    fn from(p: &DialPlan) -> Self {
        DialPlanView {
            country_code: p.country_code.clone(),
            national_prefix: p.national_prefix.clone(),
            international_prefix: p.international_prefix.clone(),
        }
    }
}

/// `POST /v1/carriers`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CarrierBody {
    pub ocn: String,
    #[serde(default)]
    pub name: String,
}

/// `POST /v1/blocks`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockBody {
    pub first: String,
    pub last: String,
    pub carrier: String,
}

/// Present-but-null is `Some(None)`, absent is `None` (any type).
fn double_of<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// The fields of a number that `POST /v1/numbers`, `PATCH /v1/numbers/{n}` and a port set.
/// No `Debug`: it may hold a PIN.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NumberFields {
    #[serde(default, deserialize_with = "double_of")]
    pub assignee: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_of")]
    pub route: Option<Option<RouteView>>,
    #[serde(default, deserialize_with = "double_of")]
    pub caller_name: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_of")]
    pub location: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_of")]
    pub service_type: Option<Option<String>>,
    /// A new porting PIN; `null` removes it.
    #[serde(default, deserialize_with = "double_of")]
    pub pin: Option<Option<String>>,
}

/// `POST /v1/numbers`: a number or a block to take the next free one from, and its fields.
#[derive(Deserialize)]
pub struct AllocateBody {
    #[serde(default)]
    pub number: Option<String>,
    #[serde(default)]
    pub block: Option<String>,
    #[serde(flatten)]
    pub fields: NumberFields,
}

/// `POST /v1/numbers/{n}/port`. No `Debug`: it holds a PIN.
#[derive(Deserialize)]
pub struct PortBody {
    pub carrier: String,
    pub pin: String,
    #[serde(flatten)]
    pub fields: NumberFields,
}
