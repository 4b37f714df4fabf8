//! The routes of the provisioning API (see `docs/provisioning.md`).

use std::collections::HashSet;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use onehop_overlay::status::Kind;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;

use super::numbers;
use super::views::*;
use super::{ApiState, Caller};
use crate::provision::db::MAX_PAGE;
use crate::provision::model::*;
use crate::raft::{Request, WriteError};

/// Largest request body (an import is sent in chunks of this much at most).
pub const MAX_BODY: usize = 16 << 20;

/// An error answer.
pub struct ApiError {
    status: StatusCode,
    body: ErrorBody,
    retry_after: Option<u32>,
}

impl ApiError {
    fn new(
        status: StatusCode,
        code: &str,
        field: Option<&str>,
        message: impl Into<String>,
    ) -> Self {
        ApiError {
            status,
            body: ErrorBody {
                code: code.into(),
                message: message.into(),
                field: field.map(str::to_string),
            },
            retry_after: None,
        }
    }

    /// 413: the body is too big.
    pub(super) fn too_large(message: impl Into<String>) -> Self {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            Some("body"),
            message,
        )
    }

    pub(super) fn internal(e: impl std::fmt::Display) -> Self {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            None,
            e.to_string(),
        )
    }
}

impl From<ProvError> for ApiError {
    fn from(e: ProvError) -> Self {
        ApiError {
            status: StatusCode::from_u16(e.status).unwrap_or(StatusCode::UNPROCESSABLE_ENTITY),
            body: ErrorBody::from(&e),
            retry_after: None,
        }
    }
}

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> Self {
        let (code, message) = match &e {
            WriteError::NoLeader(_) | WriteError::ForwardToLeader { .. } => (
                "unavailable",
                format!("{e}; nothing was written, try again"),
            ),
            _ => (
                "unavailable",
                format!("{e}; the change may or may not have been made: read it back before trying again"),
            ),
        };
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            body: ErrorBody {
                code: code.into(),
                message,
                field: None,
            },
            retry_after: Some(1),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, Json(self.body)).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}

pub(super) type ApiResult<T> = Result<T, ApiError>;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Parses a JSON body; a 422 names the field serde complains about.
pub(super) fn parse<T: DeserializeOwned>(body: &Bytes) -> ApiResult<T> {
    serde_json::from_slice(body).map_err(|e| {
        let text = e.to_string();
        let field = text
            .split('`')
            .nth(1)
            .filter(|_| text.contains("field"))
            .map(str::to_string);
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            field.as_deref().or(Some("body")),
            format!("the body is not the JSON this request takes: {text}"),
        )
    })
}

pub(super) async fn propose(s: &ApiState, op: ProvisionOp) -> ApiResult<ProvisionResult> {
    let req = Request::Provision(Box::new(ProvisionCommand {
        at_ms: now_ms(),
        op,
    }));
    let resp = s.raft.propose(req).await?;
    resp.provision
        .ok_or_else(|| ApiError::internal("the state machine gave no provisioning result"))
}

fn io<T>(r: std::io::Result<T>) -> ApiResult<T> {
    r.map_err(ApiError::internal)
}

/// Runs a blocking read of the database off the runtime's threads.
pub(super) async fn read<T: Send + 'static>(
    s: &ApiState,
    f: impl FnOnce(&crate::provision::db::ProvisionDb) -> std::io::Result<T> + Send + 'static,
) -> ApiResult<T> {
    let db = s.raft.store().db().clone();
    match tokio::task::spawn_blocking(move || f(&db)).await {
        Ok(r) => io(r),
        Err(e) => Err(ApiError::internal(e)),
    }
}

/// `user@domain` from a path parameter, checked, with the domain lower-cased.
fn aor_param(field: &str, raw: &str) -> ApiResult<String> {
    let (user, domain) = parse_aor(field, raw)?;
    Ok(format!("{user}@{domain}"))
}

/// A query string, or 422 naming it.
pub(super) fn query<T>(
    q: Result<Query<T>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<T> {
    q.map(|Query(q)| q).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            Some("query"),
            e.body_text(),
        )
    })
}

/// Only `admin` certificates may use the API.
async fn admins_only(
    Extension(Caller(id)): Extension<Caller>,
    State(s): State<ApiState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let scoped_out =
        id.carriers.is_some() && !super::numbers::carrier_admin_may(req.method(), req.uri().path());
    let resp = if scoped_out {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            None,
            format!(
                "{} administers carriers {} only: it may use the number registry, not the farm's domains and accounts",
                id.name,
                id.carriers.as_deref().unwrap_or_default().join(",")
            ),
        )
        .into_response()
    } else if id.kind != Kind::Admin {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            None,
            format!(
                "{} holds a certificate of kind {}; the provisioning API takes admin certificates only",
                id.name, id.kind
            ),
        )
        .into_response()
    } else {
        next.run(req).await
    };
    let c = &s.counters;
    match resp.status().as_u16() {
        200..=299 => c.ok.inc(),
        400..=499 => c.client_errors.inc(),
        _ => c.server_errors.inc(),
    }
    resp
}

/// The API's routes over `state`.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/domains", get(list_domains).post(add_domain))
        .route("/v1/domains/{name}", get(get_domain).delete(remove_domain))
        .route("/v1/accounts", get(list_accounts).post(add_account))
        .route(
            "/v1/accounts/{aor}",
            get(get_account)
                .patch(update_account)
                .delete(remove_account),
        )
        .route("/v1/accounts/{aor}/aliases", post(add_alias))
        .route("/v1/aliases/{alias}", get(get_alias).delete(remove_alias))
        .route("/v1/import", post(import))
        .route("/v1/changes", get(changes))
        .route(
            "/v1/carriers",
            get(numbers::list_carriers).post(numbers::add_carrier),
        )
        .route(
            "/v1/carriers/{ocn}",
            get(numbers::get_carrier).delete(numbers::remove_carrier),
        )
        .route(
            "/v1/blocks",
            get(numbers::list_blocks).post(numbers::add_block),
        )
        .route(
            "/v1/blocks/{first}",
            get(numbers::get_block).delete(numbers::remove_block),
        )
        .route(
            "/v1/numbers",
            get(numbers::list_numbers).post(numbers::allocate),
        )
        .route("/v1/numbers/changes", get(numbers::number_changes))
        .route(
            "/v1/numbers/{number}",
            get(numbers::get_number)
                .patch(numbers::update_number)
                .delete(numbers::release_number),
        )
        .route("/v1/numbers/{number}/whois", get(numbers::whois))
        .route("/v1/numbers/{number}/history", get(numbers::history))
        .route("/v1/numbers/{number}/port", post(numbers::port_number))
        .route(
            "/v1/domains/{name}/dial-plan",
            get(numbers::get_dial_plan)
                .put(numbers::set_dial_plan)
                .delete(numbers::clear_dial_plan),
        )
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                None,
                "this path does not take that method (see docs/provisioning.md)",
            )
        })
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                None,
                "no such resource (see docs/provisioning.md)",
            )
        })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            admins_only,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

async fn status(State(s): State<ApiState>) -> ApiResult<Json<serde_json::Value>> {
    let counts = read(&s, |db| db.counts()).await?;
    let l = s.raft.current_leadership();
    let m = s.raft.raft().metrics().borrow().clone();
    let leader = l.leader.and_then(|id| {
        m.membership_config
            .nodes()
            .find(|(k, _)| **k == id)
            .map(|(_, n)| n.name.clone())
    });
    Ok(Json(json!({
        "manager": s.name,
        "term": l.term,
        "leader": leader,
        "active": l.is_me,
        "applied_index": m.last_applied.map(|x| x.index),
        "domains": counts.domains,
        "accounts": counts.accounts,
        "aliases": counts.aliases,
        "version": counts.version,
    })))
}

async fn list_domains(State(s): State<ApiState>) -> ApiResult<Json<serde_json::Value>> {
    let ds = read(&s, |db| db.domains()).await?;
    let views: Vec<DomainView> = ds.iter().map(DomainView::from).collect();
    Ok(Json(json!({ "domains": views })))
}

async fn get_domain(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> ApiResult<Json<DomainView>> {
    let name = check_domain("name", &name)?;
    let n = name.clone();
    match read(&s, move |db| db.domain(&n)).await? {
        Some(d) => Ok(Json(DomainView::from(&d))),
        None => {
            Err(ProvError::not_found("name", format!("domain {name} is not provisioned")).into())
        }
    }
}

async fn add_domain(State(s): State<ApiState>, body: Bytes) -> ApiResult<Response> {
    let b: DomainBody = parse(&body)?;
    let name = check_domain("name", &b.name)?;
    let r = propose(&s, ProvisionOp::AddDomain { name }).await?;
    match r.outcome? {
        Applied::Domain(d) => Ok((StatusCode::CREATED, Json(DomainView::from(&d))).into_response()),
        other => Err(ApiError::internal(format!("unexpected outcome {other:?}"))),
    }
}

async fn remove_domain(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    let name = check_domain("name", &name)?;
    propose(&s, ProvisionOp::RemoveDomain { name })
        .await?
        .outcome?;
    Ok(StatusCode::NO_CONTENT)
}

/// Credentials from a password or from both HA1 digests; `None` when neither is given.
fn credentials(
    user: &str,
    domain: &str,
    password: Option<&str>,
    md5: Option<&str>,
    sha: Option<&str>,
) -> Result<Option<Ha1>, ProvError> {
    match (password, md5, sha) {
        (Some(p), None, None) => {
            check_password("password", p)?;
            Ok(Some(Ha1::from_password(user, domain, p)))
        }
        (None, Some(m), Some(s)) => Ha1::from_hex(m, s).map(Some),
        (None, None, None) => Ok(None),
        (Some(_), _, _) => Err(ProvError::invalid(
            "password",
            "give either a password or both HA1 digests, not both",
        )),
        (None, Some(_), None) => Err(ProvError::invalid(
            "ha1_sha256",
            "both HA1 digests are needed (MD5 and SHA-256): the farm offers both algorithms",
        )),
        (None, None, Some(_)) => Err(ProvError::invalid(
            "ha1_md5",
            "both HA1 digests are needed (MD5 and SHA-256): the farm offers both algorithms",
        )),
    }
}

fn new_account(b: AccountBody) -> Result<NewAccount, ProvError> {
    check_user("user", &b.user)?;
    let domain = check_domain("domain", &b.domain)?;
    if let Some(d) = &b.display_name {
        check_display("display_name", d)?;
    }
    let ha1 = credentials(
        &b.user,
        &domain,
        b.password.as_deref(),
        b.ha1_md5.as_deref(),
        b.ha1_sha256.as_deref(),
    )?
    .ok_or_else(|| {
        ProvError::invalid("password", "a password (or both HA1 digests) is required")
    })?;
    Ok(NewAccount {
        user: b.user,
        domain,
        display_name: b.display_name,
        enabled: b.enabled,
        ha1,
    })
}

async fn add_account(State(s): State<ApiState>, body: Bytes) -> ApiResult<Response> {
    let b: AccountBody = parse(&body)?;
    let account = new_account(b)?;
    let r = propose(&s, ProvisionOp::AddAccount { account }).await?;
    match r.outcome? {
        Applied::Account(a) => {
            Ok((StatusCode::CREATED, Json(AccountView::from(&*a))).into_response())
        }
        other => Err(ApiError::internal(format!("unexpected outcome {other:?}"))),
    }
}

async fn get_account(
    State(s): State<ApiState>,
    Path(aor): Path<String>,
) -> ApiResult<Json<AccountView>> {
    let key = aor_param("aor", &aor)?;
    let k = key.clone();
    match read(&s, move |db| db.account(&k)).await? {
        Some(a) => Ok(Json(AccountView::from(&a))),
        None => Err(ProvError::not_found("aor", format!("no account {key}")).into()),
    }
}

async fn update_account(
    State(s): State<ApiState>,
    Path(aor): Path<String>,
    body: Bytes,
) -> ApiResult<Json<AccountView>> {
    let (user, domain) = parse_aor("aor", &aor)?;
    let b: PatchBody = parse(&body)?;
    if let Some(Some(d)) = &b.display_name {
        check_display("display_name", d)?;
    }
    let ha1 = credentials(
        &user,
        &domain,
        b.password.as_deref(),
        b.ha1_md5.as_deref(),
        b.ha1_sha256.as_deref(),
    )?;
    let patch = AccountPatch {
        display_name: b.display_name,
        enabled: b.enabled,
        ha1,
    };
    let r = propose(
        &s,
        ProvisionOp::UpdateAccount {
            aor: format!("{user}@{domain}"),
            patch,
        },
    )
    .await?;
    match r.outcome? {
        Applied::Account(a) => Ok(Json(AccountView::from(&*a))),
        other => Err(ApiError::internal(format!("unexpected outcome {other:?}"))),
    }
}

async fn remove_account(
    State(s): State<ApiState>,
    Path(aor): Path<String>,
) -> ApiResult<StatusCode> {
    let aor = aor_param("aor", &aor)?;
    propose(&s, ProvisionOp::RemoveAccount { aor })
        .await?
        .outcome?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/accounts` query.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    domain: Option<String>,
    #[serde(default)]
    prefix: String,
    after: Option<String>,
    limit: Option<usize>,
}

async fn list_accounts(
    State(s): State<ApiState>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let q = query(q)?;
    let domain = match &q.domain {
        Some(d) => Some(check_domain("domain", d)?),
        None => None,
    };
    if let Some(a) = &q.after {
        parse_aor("after", a)?;
    }
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ProvError::invalid("limit", format!("must be 1 to {MAX_PAGE}")).into());
    }
    let page = read(&s, move |db| {
        db.accounts(domain.as_deref(), &q.prefix, q.after.as_deref(), limit)
    })
    .await?;
    let views: Vec<AccountView> = page.accounts.iter().map(AccountView::from).collect();
    Ok(Json(json!({ "accounts": views, "next": page.next })))
}

async fn add_alias(
    State(s): State<ApiState>,
    Path(aor): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let aor = aor_param("aor", &aor)?;
    let b: AliasBody = parse(&body)?;
    let alias = aor_param("alias", &b.alias)?;
    let r = propose(&s, ProvisionOp::AddAlias { alias, aor }).await?;
    match r.outcome? {
        Applied::Alias(a) => {
            Ok((StatusCode::CREATED, Json(AccountView::from(&*a))).into_response())
        }
        other => Err(ApiError::internal(format!("unexpected outcome {other:?}"))),
    }
}

async fn get_alias(
    State(s): State<ApiState>,
    Path(alias): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let alias = aor_param("alias", &alias)?;
    let a = alias.clone();
    match read(&s, move |db| db.alias(&a)).await? {
        Some(aor) => Ok(Json(json!({ "alias": alias, "aor": aor }))),
        None => Err(ProvError::not_found("alias", format!("no alias {alias}")).into()),
    }
}

async fn remove_alias(
    State(s): State<ApiState>,
    Path(alias): Path<String>,
) -> ApiResult<StatusCode> {
    let alias = aor_param("alias", &alias)?;
    propose(&s, ProvisionOp::RemoveAlias { alias })
        .await?
        .outcome?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/changes` query.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangesQuery {
    #[serde(default)]
    since: u64,
    limit: Option<usize>,
}

/// A page of the change log after `since`, at most `limit` (default 1,000; 422 outside 1 to
/// 10,000).
pub(super) async fn read_changes(
    s: &ApiState,
    since: u64,
    limit: Option<usize>,
) -> ApiResult<crate::provision::db::ChangePage> {
    let limit = limit.unwrap_or(1000);
    if limit == 0 || limit > 10 * MAX_PAGE {
        return Err(ProvError::invalid("limit", format!("must be 1 to {}", 10 * MAX_PAGE)).into());
    }
    read(s, move |db| db.changes(since, limit)).await
}

async fn changes(
    State(s): State<ApiState>,
    q: Result<Query<ChangesQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let q = query(q)?;
    let page = read_changes(&s, q.since, q.limit).await?;
    let views: Vec<ChangeView> = page.changes.iter().map(ChangeView::from).collect();
    Ok(Json(json!({
        "version": page.version,
        "first": page.first,
        "truncated": page.truncated,
        "changes": views,
    })))
}

/// `POST /v1/import` query.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportQuery {
    #[serde(default)]
    dry_run: bool,
    import: Option<String>,
    #[serde(default = "one")]
    first_row: u64,
}

fn one() -> u64 {
    1
}

/// The columns an import takes.
const COLUMNS: [&str; 7] = [
    "user",
    "domain",
    "password",
    "display_name",
    "enabled",
    "ha1_md5",
    "ha1_sha256",
];

fn row_error(row: u64, e: &ProvError) -> RowError {
    RowError {
        row,
        code: e.code.clone(),
        field: e.field.clone(),
        message: e.message.clone(),
    }
}

/// Parses an import's CSV: a header row naming the columns (any order; `user` and `domain`
/// required, and `password` or both HA1 columns), then one account per row. Rows are numbered
/// from `first_row`. Each row becomes an account or an error.
pub(crate) fn parse_csv(
    body: &[u8],
    first_row: u64,
) -> ApiResult<Vec<(u64, Result<NewAccount, ProvError>)>> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(body);
    let headers = rdr
        .headers()
        .map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid",
                Some("header"),
                format!("the CSV header row cannot be read: {e}"),
            )
        })?
        .clone();
    let mut col = [None; COLUMNS.len()];
    for (i, h) in headers.iter().enumerate() {
        match COLUMNS.iter().position(|c| c.eq_ignore_ascii_case(h)) {
            Some(k) if col[k].is_none() => col[k] = Some(i),
            Some(_) => {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid",
                    Some("header"),
                    format!("column {h:?} appears twice"),
                ))
            }
            None => {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid",
                    Some("header"),
                    format!(
                        "unknown column {h:?}; the columns are {}",
                        COLUMNS.join(", ")
                    ),
                ))
            }
        }
    }
    if col[0].is_none() || col[1].is_none() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            Some("header"),
            "the header row must name the columns user and domain",
        ));
    }
    if col[2].is_none() && (col[5].is_none() || col[6].is_none()) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            Some("header"),
            "the header row must name a password column, or both ha1_md5 and ha1_sha256",
        ));
    }
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for (i, rec) in rdr.records().enumerate() {
        let row = first_row + i as u64;
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                out.push((
                    row,
                    Err(ProvError::invalid("row", format!("not a CSV row: {e}"))),
                ));
                continue;
            }
        };
        if rec.len() != headers.len() {
            out.push((
                row,
                Err(ProvError::invalid(
                    "row",
                    format!(
                        "{} fields where the header has {}",
                        rec.len(),
                        headers.len()
                    ),
                )),
            ));
            continue;
        }
        let get = |k: usize| col[k].map(|i| &rec[i]).filter(|v| !v.is_empty());
        let enabled = match get(4).map(str::to_ascii_lowercase).as_deref() {
            None | Some("true") | Some("yes") | Some("1") => true,
            Some("false") | Some("no") | Some("0") => false,
            Some(other) => {
                out.push((
                    row,
                    Err(ProvError::invalid(
                        "enabled",
                        format!("{other:?} is not true or false"),
                    )),
                ));
                continue;
            }
        };
        let body = AccountBody {
            user: get(0).unwrap_or_default().to_string(),
            domain: get(1).unwrap_or_default().to_string(),
            password: get(2).map(str::to_string),
            ha1_md5: get(5).map(str::to_string),
            ha1_sha256: get(6).map(str::to_string),
            display_name: get(3).map(str::to_string),
            enabled,
        };
        let result = new_account(body).and_then(|a| {
            if seen.insert((a.user.clone(), a.domain.clone())) {
                Ok(a)
            } else {
                Err(ProvError::exists(
                    "user",
                    format!("{}@{} appears twice in this import", a.user, a.domain),
                ))
            }
        });
        out.push((row, result));
    }
    Ok(out)
}

fn check_import_id(id: &str) -> Result<(), ProvError> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(ProvError::invalid(
            "import",
            "1 to 64 letters, digits, '.', '_' or '-'",
        ));
    }
    Ok(())
}

async fn import(
    State(s): State<ApiState>,
    q: Result<Query<ImportQuery>, axum::extract::rejection::QueryRejection>,
    body: Bytes,
) -> ApiResult<Json<ImportReport>> {
    let q = query(q)?;
    let import = match q.import {
        Some(id) => {
            check_import_id(&id)?;
            id
        }
        None => format!("{:016x}", rand::random::<u64>()),
    };
    if q.first_row == 0 {
        return Err(ProvError::invalid("first_row", "rows are numbered from 1").into());
    }
    let first_row = q.first_row;
    let rows = tokio::task::spawn_blocking(move || parse_csv(&body, first_row))
        .await
        .map_err(ApiError::internal)??;
    let mut report = ImportReport {
        import: import.clone(),
        dry_run: q.dry_run,
        rows: rows.len() as u64,
        ..Default::default()
    };
    // Batches by position: rows first_row + k*MAX_IMPORT_BATCH .. are batch `import:ROW`, so a
    // retried chunk maps to the same batches.
    let mut batches: Vec<(String, Vec<(u64, NewAccount)>)> = Vec::new();
    for (i, (row, r)) in rows.into_iter().enumerate() {
        match r {
            Err(e) => {
                report.failed += 1;
                report.errors.push(row_error(row, &e));
            }
            Ok(a) => {
                let k = i / MAX_IMPORT_BATCH;
                let id = format!("{import}:{}", first_row + (k * MAX_IMPORT_BATCH) as u64);
                match batches.last_mut() {
                    Some((b, v)) if *b == id => v.push((row, a)),
                    _ => batches.push((id, vec![(row, a)])),
                }
            }
        }
    }
    if q.dry_run {
        let checked = read(&s, move |db| {
            let mut out = Vec::new();
            for (_, rows) in batches {
                for (row, a) in rows {
                    let aor = format!("{}@{}", a.user, a.domain);
                    let err = if db.domain(&a.domain)?.is_none() {
                        Some(ProvError::not_found(
                            "domain",
                            format!("domain {} is not provisioned", a.domain),
                        ))
                    } else if db.account(&aor)?.is_some() {
                        Some(ProvError::exists(
                            "user",
                            format!("account {aor} exists already"),
                        ))
                    } else {
                        db.alias(&aor)?.map(|owner| {
                            ProvError::exists(
                                "user",
                                format!("{aor} is an alias of {owner} already"),
                            )
                        })
                    };
                    out.push((row, err));
                }
            }
            Ok(out)
        })
        .await?;
        for (row, err) in checked {
            match err {
                None => report.added += 1,
                Some(e) => {
                    report.failed += 1;
                    report.errors.push(row_error(row, &e));
                }
            }
        }
    } else {
        for (batch, rows) in batches {
            let r = propose(&s, ProvisionOp::Import { batch, rows }).await?;
            match r.outcome? {
                Applied::Import { rows, first } => {
                    if !first {
                        report.replayed_batches += 1;
                    }
                    for o in rows {
                        match o.error {
                            None => report.added += 1,
                            Some(e) => {
                                report.failed += 1;
                                report.errors.push(row_error(o.row, &e));
                            }
                        }
                    }
                }
                other => return Err(ApiError::internal(format!("unexpected outcome {other:?}"))),
            }
        }
        s.counters.imported.add(report.added as i64);
    }
    report.errors.sort_by_key(|e| e.row);
    Ok(Json(report))
}
