//! The number registry's routes: carriers, blocks, numbers (allocate, update, release, port,
//! whois, history, changes) and domain dial plans (see `docs/provisioning.md`).
//!
//! Who may do what follows the caller's `admin` certificate: one that names carriers
//! (`onehop-certs issue --carriers`) changes the numbers of those carriers only; one that
//! names none is a farm-wide administrator (carriers, blocks, dial plans, every number).
//! Anyone may read a number's public properties (whois), the carriers and the blocks. The
//! checks that depend on the registry's state are made by the state machine, with the state
//! the command changes, so a concurrent change cannot slip between check and write.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use onehop_overlay::provision::{DialPlan, NumberRoute};
use serde::Deserialize;
use serde_json::json;

use super::routes::{parse, propose, query, read, read_changes, ApiError, ApiResult};
use super::views::*;
use super::{ApiState, Caller};
use crate::provision::db::MAX_PAGE;
use crate::provision::model::*;
use crate::provision::number_store::MAX_REQUEST_ID;
use crate::provision::numbers::*;

/// Largest body of a number request (they are small; anything bigger is refused with 413).
pub const MAX_NUMBER_BODY: usize = 16 << 10;
/// How long an answer to a wrong PIN is held back (so PINs cannot be guessed fast).
pub const WRONG_PIN_DELAY: Duration = Duration::from_secs(1);

fn actor(c: &Caller) -> Actor {
    Actor {
        name: c.0.name.clone(),
        carriers: c.0.carriers.clone(),
    }
}

/// Whether a carrier-scoped administrator may use `method` on `path` at all (the registry's
/// routes; the farm's domains and accounts are the farm-wide administrators').
pub fn carrier_admin_may(method: &axum::http::Method, path: &str) -> bool {
    let get = method == axum::http::Method::GET;
    path.starts_with("/v1/numbers")
        || (get && (path == "/v1/status" || path.starts_with("/v1/carriers")))
        || (get && path.starts_with("/v1/blocks"))
}

fn small(body: &Bytes) -> ApiResult<()> {
    if body.len() > MAX_NUMBER_BODY {
        return Err(ApiError::too_large(format!(
            "the body has {} bytes; number requests take at most {MAX_NUMBER_BODY}",
            body.len()
        )));
    }
    Ok(())
}

/// The `Idempotency-Key` header: a retried request with the same key is applied once.
fn request_id(h: &HeaderMap) -> ApiResult<Option<String>> {
    let Some(v) = h.get("idempotency-key") else {
        return Ok(None);
    };
    let ok = v.len() <= MAX_REQUEST_ID
        && !v.is_empty()
        && v.as_bytes().iter().all(|b| b.is_ascii_graphic());
    if !ok {
        return Err(ProvError::invalid(
            "Idempotency-Key",
            format!("1 to {MAX_REQUEST_ID} visible ASCII characters"),
        )
        .into());
    }
    Ok(v.to_str().ok().map(str::to_string))
}

/// The fields a number's body may have (besides `number`/`block`, or `carrier`/`pin`).
const NUMBER_FIELDS: &[&str] = &[
    "assignee",
    "route",
    "caller_name",
    "location",
    "service_type",
    "pin",
];

/// 422 naming the first field of `body` that is not one of `extra` or [`NUMBER_FIELDS`]
/// (serde cannot refuse unknown fields of a flattened struct).
fn known_fields(body: &Bytes, extra: &[&str]) -> ApiResult<()> {
    let v: serde_json::Value = parse(body)?;
    let Some(map) = v.as_object() else {
        return Err(ProvError::invalid("body", "a JSON object is expected").into());
    };
    for k in map.keys() {
        if !extra.contains(&k.as_str()) && !NUMBER_FIELDS.contains(&k.as_str()) {
            return Err(ProvError::invalid(
                k,
                format!(
                    "unknown field `{k}`: a number takes {}",
                    NUMBER_FIELDS.join(", ")
                ),
            )
            .into());
        }
    }
    Ok(())
}

fn opt_text(field: &str, v: &Option<Option<String>>) -> Result<(), ProvError> {
    if let Some(Some(t)) = v {
        check_text(field, t)?;
    }
    Ok(())
}

/// Checks the fields and hashes a new PIN (slow: off the runtime's threads).
async fn patch_of(f: NumberFields) -> ApiResult<NumberPatch> {
    opt_text("assignee", &f.assignee)?;
    opt_text("caller_name", &f.caller_name)?;
    opt_text("location", &f.location)?;
    let service_type = match f.service_type {
        Some(Some(t)) => Some(Some(check_service_type("service_type", &t)?)),
        other => other,
    };
    let route = match f.route {
        Some(Some(RouteView::Account(aor))) => {
            let (user, domain) = parse_aor("route.account", &aor)?;
            Some(Some(NumberRoute::Account(format!("{user}@{domain}"))))
        }
        Some(Some(RouteView::Uri(uri))) => {
            Some(Some(NumberRoute::Uri(check_route_uri("route.uri", &uri)?)))
        }
        Some(None) => Some(None),
        None => None,
    };
    let pin = match f.pin {
        Some(Some(p)) => {
            check_pin("pin", &p)?;
            let h = tokio::task::spawn_blocking(move || PinHash::new(&p))
                .await
                .map_err(ApiError::internal)?;
            Some(Some(h))
        }
        Some(None) => Some(None),
        None => None,
    };
    Ok(NumberPatch {
        assignee: f.assignee,
        route,
        caller_name: f.caller_name,
        location: f.location,
        service_type,
        pin,
    })
}

fn number_answer(r: ProvisionResult, created: bool) -> ApiResult<Response> {
    match r.outcome? {
        Applied::Number(n) => {
            let code = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok((code, Json(NumberView::from(&*n))).into_response())
        }
        other => Err(ApiError::internal(format!("unexpected outcome {other:?}"))),
    }
}

/// `GET /v1/carriers`.
pub async fn list_carriers(State(s): State<ApiState>) -> ApiResult<Json<serde_json::Value>> {
    let cs = read(&s, |db| db.carriers()).await?;
    Ok(Json(json!({ "carriers": cs })))
}

/// `POST /v1/carriers`.
pub async fn add_carrier(
    State(s): State<ApiState>,
    Extension(c): Extension<Caller>,
    body: Bytes,
) -> ApiResult<Response> {
    small(&body)?;
    let b: CarrierBody = parse(&body)?;
    let ocn = check_ocn("ocn", &b.ocn)?;
    check_text("name", &b.name)?;
    let r = propose(
        &s,
        ProvisionOp::AddCarrier {
            ocn,
            name: b.name,
            actor: actor(&c),
        },
    )
    .await?;
    match r.outcome? {
        Applied::Carrier(c) => Ok((StatusCode::CREATED, Json(c)).into_response()),
        other => Err(ApiError::internal(format!("unexpected outcome {other:?}"))),
    }
}

/// `GET /v1/carriers/{ocn}`.
pub async fn get_carrier(
    State(s): State<ApiState>,
    Path(ocn): Path<String>,
) -> ApiResult<Json<Carrier>> {
    let ocn = check_ocn("ocn", &ocn)?;
    let o = ocn.clone();
    match read(&s, move |db| db.carrier(&o)).await? {
        Some(c) => Ok(Json(c)),
        None => Err(ProvError::not_found("ocn", format!("no carrier {ocn}")).into()),
    }
}

/// `DELETE /v1/carriers/{ocn}`.
pub async fn remove_carrier(
    State(s): State<ApiState>,
    Extension(c): Extension<Caller>,
    Path(ocn): Path<String>,
) -> ApiResult<StatusCode> {
    let ocn = check_ocn("ocn", &ocn)?;
    propose(
        &s,
        ProvisionOp::RemoveCarrier {
            ocn,
            actor: actor(&c),
        },
    )
    .await?
    .outcome?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/blocks`.
pub async fn list_blocks(State(s): State<ApiState>) -> ApiResult<Json<serde_json::Value>> {
    let bs = read(&s, |db| db.blocks()).await?;
    let views: Vec<BlockView> = bs.iter().map(BlockView::from).collect();
    Ok(Json(json!({ "blocks": views })))
}

/// `POST /v1/blocks`.
pub async fn add_block(
    State(s): State<ApiState>,
    Extension(c): Extension<Caller>,
    body: Bytes,
) -> ApiResult<Response> {
    small(&body)?;
    let b: BlockBody = parse(&body)?;
    let (first, last) = check_block(&b.first, &b.last)?;
    let carrier = check_ocn("carrier", &b.carrier)?;
    let r = propose(
        &s,
        ProvisionOp::AddBlock {
            first,
            last,
            carrier,
            actor: actor(&c),
        },
    )
    .await?;
    match r.outcome? {
        Applied::Block(b) => Ok((StatusCode::CREATED, Json(BlockView::from(&b))).into_response()),
        other => Err(ApiError::internal(format!("unexpected outcome {other:?}"))),
    }
}

/// `GET /v1/blocks/{first}`.
pub async fn get_block(
    State(s): State<ApiState>,
    Path(first): Path<String>,
) -> ApiResult<Json<BlockView>> {
    let first = check_number("first", &first)?;
    let f = first.clone();
    match read(&s, move |db| db.block(&f)).await? {
        Some(b) => Ok(Json(BlockView::from(&b))),
        None => Err(ProvError::not_found("first", format!("no block starts at {first}")).into()),
    }
}

/// `DELETE /v1/blocks/{first}`.
pub async fn remove_block(
    State(s): State<ApiState>,
    Extension(c): Extension<Caller>,
    Path(first): Path<String>,
) -> ApiResult<StatusCode> {
    let first = check_number("first", &first)?;
    propose(
        &s,
        ProvisionOp::RemoveBlock {
            first,
            actor: actor(&c),
        },
    )
    .await?
    .outcome?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/numbers`: a given number, or the next free one of a block.
pub async fn allocate(
    State(s): State<ApiState>,
    Extension(c): Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    small(&body)?;
    let request = request_id(&headers)?;
    known_fields(&body, &["number", "block"])?;
    let b: AllocateBody = parse(&body)?;
    let want =
        match (b.number, b.block) {
            (Some(n), None) => Want::Number(check_number("number", &n)?),
            (None, Some(first)) => Want::NextFree(check_number("block", &first)?),
            _ => return Err(ProvError::invalid(
                "number",
                "give either a number or a block (its first number) to take the next free one from",
            )
            .into()),
        };
    let patch = patch_of(b.fields).await?;
    let r = propose(
        &s,
        ProvisionOp::Allocate {
            want,
            patch,
            actor: actor(&c),
            request,
        },
    )
    .await?;
    number_answer(r, true)
}

/// `GET /v1/numbers` query.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NumbersQuery {
    block: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
}

/// `GET /v1/numbers`: a page, of one block or of every block; a carrier-scoped administrator
/// sees its carriers' numbers only.
pub async fn list_numbers(
    State(s): State<ApiState>,
    Extension(c): Extension<Caller>,
    q: Result<Query<NumbersQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let q = query(q)?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ProvError::invalid("limit", format!("must be 1 to {MAX_PAGE}")).into());
    }
    let block = q
        .block
        .as_deref()
        .map(|b| check_number("block", b))
        .transpose()?;
    let after = q
        .after
        .as_deref()
        .map(|a| check_number("after", a))
        .transpose()?;
    let who = actor(&c);
    let (page, missing) = read(&s, move |db| {
        let block = match &block {
            Some(f) => match db.block(f)? {
                Some(b) => Some(b),
                None => return Ok((None, Some(f.clone()))),
            },
            None => None,
        };
        db.numbers(block.as_ref(), after.as_deref(), limit)
            .map(|p| (Some(p), None))
    })
    .await?;
    if let Some(f) = missing {
        return Err(ProvError::not_found("block", format!("no block starts at {f}")).into());
    }
    let page = page.unwrap_or(crate::provision::number_store::NumberPage {
        numbers: Vec::new(),
        next: None,
    });
    let views: Vec<NumberView> = page
        .numbers
        .iter()
        .filter(|n| who.administers(&n.carrier))
        .map(NumberView::from)
        .collect();
    Ok(Json(json!({ "numbers": views, "next": page.next })))
}

async fn read_number(s: &ApiState, raw: &str) -> ApiResult<Number> {
    let number = check_number("number", raw)?;
    let n = number.clone();
    match read(s, move |db| db.number(&n)).await? {
        Some(n) => Ok(n),
        None => Err(ProvError::not_found("number", format!("{number} is not allocated")).into()),
    }
}

/// `GET /v1/numbers/{number}`: everything but the PIN (its carrier's administrators).
pub async fn get_number(
    State(s): State<ApiState>,
    Extension(c): Extension<Caller>,
    Path(number): Path<String>,
) -> ApiResult<Json<NumberView>> {
    let n = read_number(&s, &number).await?;
    actor(&c).may_change(&n.carrier, "number", &n.number)?;
    Ok(Json(NumberView::from(&n)))
}

/// `GET /v1/numbers/{number}/whois`: the public properties (any administrator).
pub async fn whois(
    State(s): State<ApiState>,
    Path(number): Path<String>,
) -> ApiResult<Json<WhoisView>> {
    let n = read_number(&s, &number).await?;
    let ocn = n.carrier.clone();
    let carrier = read(&s, move |db| db.carrier(&ocn)).await?;
    Ok(Json(WhoisView {
        number: n.number,
        carrier: n.carrier,
        carrier_name: carrier.map(|c| c.name),
        caller_name: n.props.caller_name,
        location: n.props.location,
        service_type: n.props.service_type,
        routed: n.route.is_some(),
    }))
}

/// `GET /v1/numbers/{number}/history` (the carrier's administrators; kept after release for
/// farm-wide administrators).
pub async fn history(
    State(s): State<ApiState>,
    Extension(c): Extension<Caller>,
    Path(number): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let number = check_number("number", &number)?;
    let n = number.clone();
    let (held, events) = read(&s, move |db| Ok((db.number(&n)?, db.number_history(&n)?))).await?;
    let who = actor(&c);
    match &held {
        Some(h) => who.may_change(&h.carrier, "number", &number)?,
        None if events.is_empty() => {
            return Err(ProvError::not_found("number", format!("{number} has no history")).into())
        }
        None => who.farm_wide("the history of a released number")?,
    }
    let views: Vec<EventView> = events.iter().map(EventView::from).collect();
    Ok(Json(json!({ "number": number, "history": views })))
}

/// `PATCH /v1/numbers/{number}`.
pub async fn update_number(
    State(s): State<ApiState>,
    Extension(c): Extension<Caller>,
    Path(number): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    small(&body)?;
    let number = check_number("number", &number)?;
    let request = request_id(&headers)?;
    let f: NumberFields = parse(&body)?;
    let patch = patch_of(f).await?;
    let r = propose(
        &s,
        ProvisionOp::UpdateNumber {
            number,
            patch,
            actor: actor(&c),
            request,
        },
    )
    .await?;
    number_answer(r, false)
}

/// `DELETE /v1/numbers/{number}`: release.
pub async fn release_number(
    State(s): State<ApiState>,
    Extension(c): Extension<Caller>,
    Path(number): Path<String>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    let number = check_number("number", &number)?;
    let request = request_id(&headers)?;
    propose(
        &s,
        ProvisionOp::ReleaseNumber {
            number,
            actor: actor(&c),
            request,
        },
    )
    .await?
    .outcome?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/numbers/{number}/port`: to another carrier, with the subscriber's PIN.
pub async fn port_number(
    State(s): State<ApiState>,
    Extension(c): Extension<Caller>,
    Path(number): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    small(&body)?;
    let request = request_id(&headers)?;
    known_fields(&body, &["carrier", "pin"])?;
    let b: PortBody = parse(&body)?;
    let carrier = check_ocn("carrier", &b.carrier)?;
    check_pin("pin", &b.pin)?;
    let who = actor(&c);
    who.may_change(&carrier, "carrier", &format!("porting to {carrier}"))?;
    let n = read_number(&s, &number).await?;
    let Some(salt) = n.pin.as_ref().map(|p| p.salt) else {
        return Err(ProvError::conflict(
            "pin",
            format!(
                "{} has no porting PIN; its carrier sets one first",
                n.number
            ),
        )
        .into());
    };
    let mut fields = b.fields;
    if fields.pin.is_some() {
        return Err(ProvError::invalid(
            "pin",
            "a port takes the current PIN only; the new carrier sets a new one afterwards",
        )
        .into());
    }
    fields.pin = None;
    let patch = patch_of(fields).await?;
    let pin = b.pin;
    let proof = tokio::task::spawn_blocking(move || PinProof::derive(salt, &pin))
        .await
        .map_err(ApiError::internal)?;
    let r = propose(
        &s,
        ProvisionOp::PortNumber {
            number: n.number,
            carrier,
            proof,
            patch,
            actor: who,
            request,
        },
    )
    .await?;
    if matches!(&r.outcome, Err(e) if e.code == "wrong_pin") {
        tokio::time::sleep(WRONG_PIN_DELAY).await;
    }
    number_answer(r, false)
}

/// `GET /v1/numbers/changes` query.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NumberChangesQuery {
    #[serde(default)]
    since: u64,
    limit: Option<usize>,
}

/// `GET /v1/numbers/changes?since=V`: the registry's changes after V (carriers, blocks,
/// numbers with their routing and public properties, never an assignee or a PIN), for any
/// administrator: a party that was away catches up from the version it last saw.
pub async fn number_changes(
    State(s): State<ApiState>,
    q: Result<Query<NumberChangesQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let q = query(q)?;
    let limit = q.limit.unwrap_or(1000);
    let page = read_changes(&s, q.since, Some(limit)).await?;
    let mut out = Vec::new();
    let mut upto = q.since;
    for c in &page.changes {
        upto = c.version;
        let entry = match &c.what {
            ChangeKind::NumberPut { number } => json!({
                "kind": "number_put",
                "number": number.number,
                "carrier": number.carrier,
                "block": number.block,
                "sip_uri": number.route.as_ref().map(NumberRoute::sip_uri),
                "caller_name": number.props.caller_name,
                "location": number.props.location,
                "service_type": number.props.service_type,
            }),
            ChangeKind::NumberReleased { number, carrier } => json!({
                "kind": "number_released",
                "number": number,
                "carrier": carrier,
            }),
            ChangeKind::CarrierAdded { carrier } => json!({
                "kind": "carrier_added",
                "ocn": carrier.ocn,
                "name": carrier.name,
            }),
            ChangeKind::CarrierRemoved { ocn } => json!({ "kind": "carrier_removed", "ocn": ocn }),
            ChangeKind::BlockAdded { block } => json!({
                "kind": "block_added",
                "first": block.first,
                "last": block.last,
                "carrier": block.carrier,
            }),
            ChangeKind::BlockRemoved { first, carrier } => json!({
                "kind": "block_removed",
                "first": first,
                "carrier": carrier,
            }),
            _ => continue,
        };
        let mut entry = entry;
        entry["version"] = json!(c.version);
        entry["at_ms"] = json!(c.at_ms);
        out.push(entry);
    }
    let complete = page.changes.len() < limit;
    Ok(Json(json!({
        "version": if complete { page.version.max(upto) } else { upto },
        "more": !complete,
        "first": page.first,
        "truncated": page.truncated,
        "changes": out,
    })))
}

/// `GET /v1/domains/{name}/dial-plan`.
pub async fn get_dial_plan(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let name = check_domain("name", &name)?;
    let n = name.clone();
    let (domain, plan) = read(&s, move |db| Ok((db.domain(&n)?, db.dial_plan(&n)?))).await?;
    if domain.is_none() {
        return Err(
            ProvError::not_found("name", format!("domain {name} is not provisioned")).into(),
        );
    }
    Ok(Json(json!({
        "domain": name,
        "dial_plan": plan.as_ref().map(DialPlanView::from),
    })))
}

fn digits(field: &str, s: &str, max: usize, required: bool) -> Result<(), ProvError> {
    if (required && s.is_empty()) || s.len() > max || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ProvError::invalid(
            field,
            format!("{}up to {max} digits", if required { "1 to " } else { "" }),
        ));
    }
    Ok(())
}

/// `PUT /v1/domains/{name}/dial-plan`: how the domain's subscribers write local numbers.
pub async fn set_dial_plan(
    State(s): State<ApiState>,
    Extension(c): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Json<serde_json::Value>> {
    small(&body)?;
    let domain = check_domain("name", &name)?;
    let b: DialPlanView = parse(&body)?;
    digits("country_code", &b.country_code, 3, true)?;
    if b.country_code.starts_with('0') {
        return Err(ProvError::invalid("country_code", "no country code starts with 0").into());
    }
    digits("national_prefix", &b.national_prefix, 4, false)?;
    digits("international_prefix", &b.international_prefix, 4, false)?;
    let plan = DialPlan {
        country_code: b.country_code,
        national_prefix: b.national_prefix,
        international_prefix: b.international_prefix,
    };
    let r = propose(
        &s,
        ProvisionOp::SetDialPlan {
            domain: domain.clone(),
            plan: Some(plan),
            actor: actor(&c),
        },
    )
    .await?;
    match r.outcome? {
        Applied::DialPlan(p) => Ok(Json(json!({
            "domain": domain,
            "dial_plan": p.as_ref().map(DialPlanView::from),
        }))),
        other => Err(ApiError::internal(format!("unexpected outcome {other:?}"))),
    }
}

/// `DELETE /v1/domains/{name}/dial-plan`.
pub async fn clear_dial_plan(
    State(s): State<ApiState>,
    Extension(c): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    let domain = check_domain("name", &name)?;
    propose(
        &s,
        ProvisionOp::SetDialPlan {
            domain,
            plan: None,
            actor: actor(&c),
        },
    )
    .await?
    .outcome?;
    Ok(StatusCode::NO_CONTENT)
}
