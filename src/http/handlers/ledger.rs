//! Accounts, transfers, deposits and withdrawals (customers: `handlers::customers`).
//!
//! Money-moving POSTs accept an `Idempotency-Key` header: a retry with the same key and body
//! returns the stored response with `Idempotency-Replayed: true`; the same key with another
//! body answers 422 `idempotency_key_reused`; a retry while the first is still running answers
//! 409 `idempotency_key_in_flight`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::Recorded;
use crate::clock::Timestamp;
use crate::domain::authz::{Permission, Scope};
use crate::domain::ledger::{Counterparty, Refusal, TransferDetails, TransferKind};
use crate::http::context::AuditRecorded;
use crate::http::error::{ApiError, ApiResult, ErrorBody};
use crate::http::extract::{ApiJson, ApiQuery};
use crate::http::state::AppState;
use crate::http::views::{List, ListQuery, page, time_param};
use crate::ids::{AccountId, TransferId};
use crate::service::ledger::{self, IdempotencyKey, MovementOutcome, TransferInput};
use crate::service::{Principal, RequestMeta};
use crate::store::{AccountRecord, EntryRecord, PostedTransfer, TransferFilter};

fn ts(micros: i64) -> String {
    Timestamp::from_micros(micros).to_rfc3339()
}

// ---------------------------------------------------------------- wire types

#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenAccountRequest {
    pub customer_id: String,
    /// ISO 4217 code; one of the tenant's currencies.
    pub currency: String,
}

#[derive(Serialize, ToSchema)]
pub struct AccountView {
    /// Always `account`.
    pub object: &'static str,
    pub id: String,
    /// Absent for system accounts.
    pub customer_id: Option<String>,
    /// `customer`, `settlement`, `fees` or `suspense`.
    pub kind: String,
    pub currency: String,
    /// `active`, `frozen` (refuses debits) or `closed`.
    pub status: String,
    /// Posted balance, minor units.
    pub posted_balance: i64,
    pub pending_debits: i64,
    pub pending_credits: i64,
    /// Posted balance minus pending debits.
    pub available_balance: i64,
    /// How far below zero the account may go (0 unless a MANAGER set it).
    pub overdraft_limit: i64,
    pub created_at: String,
    pub updated_at: String,
}

impl From<AccountRecord> for AccountView {
    fn from(a: AccountRecord) -> Self {
        Self {
            object: "account",
            available_balance: a.available(),
            id: a.id,
            customer_id: a.customer_id,
            kind: a.kind,
            currency: a.currency,
            status: a.status,
            posted_balance: a.posted,
            pending_debits: a.pending_debits,
            pending_credits: a.pending_credits,
            overdraft_limit: a.overdraft_limit,
            created_at: ts(a.created_at),
            updated_at: ts(a.updated_at),
        }
    }
}

/// Why an account is frozen: a code (the audit trail keeps it) and an optional staff-only note
/// (sealed; readable with `staff_notes:read` only, never shown to the customer).
#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FreezeRequest {
    /// `customer_request`, `suspected_fraud`, `suspicious_activity`, `sanctions_screening`,
    /// `legal_order`, `kyc_review`, `account_compromised`, `deceased`, `dispute` or `other`.
    pub reason: String,
    /// Free text for staff, 1 to 2000 characters (line breaks allowed).
    pub note: Option<String>,
}

/// Why a frozen account is released: a code and an optional staff-only note.
#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UnfreezeRequest {
    /// `review_completed`, `customer_request`, `legal_order_lifted`, `kyc_completed`,
    /// `frozen_in_error` or `other`.
    pub reason: String,
    /// Free text for staff, 1 to 2000 characters (line breaks allowed).
    pub note: Option<String>,
}

/// Why an account is closed: an optional code (required with a note) and an optional
/// staff-only note.
#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CloseRequest {
    /// `customer_request`, `risk_decision`, `dormant`, `deceased`, `legal_order` or `other`.
    pub reason: Option<String>,
    /// Free text for staff, 1 to 2000 characters (line breaks allowed).
    pub note: Option<String>,
}

/// What the freeze, unfreeze and close handlers read, every field optional: the use case
/// requires and checks the reason (so another tenant's account still answers 404 before the
/// body's content is judged, and a missing reason is answered with the list of codes).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusChange {
    pub reason: Option<String>,
    pub note: Option<String>,
}

#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OverdraftRequest {
    /// Minor units the account may go below zero (0 to 10^15).
    pub overdraft_limit: i64,
}

#[derive(Serialize, ToSchema)]
pub struct EntryView {
    /// Always `entry`.
    pub object: &'static str,
    pub id: String,
    pub transfer_id: String,
    pub account_id: String,
    /// `debit` or `credit`.
    pub direction: String,
    pub amount: i64,
    /// The account's posted balance right after this entry.
    pub balance_after: i64,
    pub created_at: String,
}

impl From<EntryRecord> for EntryView {
    fn from(e: EntryRecord) -> Self {
        Self {
            object: "entry",
            id: e.id,
            transfer_id: e.transfer_id,
            account_id: e.account_id,
            direction: e.direction,
            amount: e.amount,
            balance_after: e.balance_after,
            created_at: ts(e.created_at),
        }
    }
}

#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreditLeg {
    pub account_id: String,
    pub amount: i64,
}

#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTransferRequest {
    /// Minor units (> 0).
    pub amount: i64,
    pub currency: String,
    pub debit_account_id: String,
    /// One credit account for the whole amount...
    pub credit_account_id: Option<String>,
    /// ...or several legs summing to `amount`, posted all or nothing.
    pub credits: Option<Vec<CreditLeg>>,
    /// Unique per tenant when given.
    pub reference: Option<String>,
    /// Up to 500 characters. Sealed at rest, like `metadata` and `counterparty`.
    pub description: Option<String>,
    /// Up to 50 keys of at most 40 characters, values of at most 500.
    pub metadata: Option<BTreeMap<String, String>>,
    pub counterparty: Option<CounterpartyBody>,
}

/// The other side of a movement, outside the platform.
#[derive(Deserialize, Serialize, ToSchema, Clone)]
#[serde(deny_unknown_fields)]
pub struct CounterpartyBody {
    pub name: Option<String>,
    /// Their account number or IBAN.
    pub account: Option<String>,
    pub institution: Option<String>,
}

fn details_of(
    description: Option<String>,
    metadata: Option<BTreeMap<String, String>>,
    counterparty: Option<CounterpartyBody>,
) -> TransferDetails {
    TransferDetails {
        description,
        metadata: metadata.unwrap_or_default(),
        counterparty: counterparty.map(|c| Counterparty {
            name: c.name,
            account: c.account,
            institution: c.institution,
        }),
    }
}

#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CashRequest {
    /// The customer account credited (deposit) or debited (withdrawal).
    pub account_id: String,
    pub amount: i64,
    pub currency: String,
    pub reference: Option<String>,
    pub description: Option<String>,
    pub metadata: Option<BTreeMap<String, String>>,
    pub counterparty: Option<CounterpartyBody>,
}

/// One leg. A leg on a system account shows `system` (its kind) instead of `account_id` unless
/// the caller holds `accounts:read_system`.
#[derive(Serialize, ToSchema)]
pub struct LegView {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    /// `settlement`, `fees` or `suspense` when the leg is on a system account.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    pub amount: i64,
}

#[derive(Serialize, ToSchema)]
pub struct BalanceView {
    pub account_id: String,
    /// Posted balance right after this transfer.
    pub balance_after: i64,
}

#[derive(Serialize, ToSchema)]
pub struct TransferView {
    /// Always `transfer`.
    pub object: &'static str,
    pub id: String,
    /// `transfer`, `deposit`, `withdrawal`, `reversal` or `capture`.
    pub kind: String,
    pub currency: String,
    pub amount: i64,
    /// The (first) debited account; `null` when it is a system account the caller may not see
    /// (its leg in `debits` then names only its kind).
    pub debit_account_id: Option<String>,
    /// Every debit leg: one, except for the reversal of a transfer with several credit legs.
    pub debits: Vec<LegView>,
    pub credits: Vec<LegView>,
    /// For a reversal: the transfer it reverses.
    pub reverses_id: Option<String>,
    pub reference: Option<String>,
    pub description: Option<String>,
    /// The integrator's key-value metadata (empty when none was given).
    pub metadata: BTreeMap<String, String>,
    pub counterparty: Option<CounterpartyBody>,
    pub created_by: Option<String>,
    pub created_at: String,
    /// Resulting balances of the accounts the caller may see.
    pub balances: Vec<BalanceView>,
}

fn legs(p: &PostedTransfer, direction: &str, sees_system: bool) -> Vec<LegView> {
    p.entries
        .iter()
        .filter(|e| e.direction == direction)
        .map(|e| match &e.system {
            Some(kind) if !sees_system => LegView {
                account_id: None,
                system: Some(kind.clone()),
                amount: e.amount,
            },
            system => LegView {
                account_id: Some(e.account_id.clone()),
                system: system.clone(),
                amount: e.amount,
            },
        })
        .collect()
}

/// Renders a transfer; `visible` decides whose resulting balances are shown, `sees_system`
/// whether system account ids (and balances) are (the caller holds `accounts:read_system`).
pub(crate) fn transfer_view(
    p: &PostedTransfer,
    sees_system: bool,
    visible: impl Fn(&str) -> bool,
) -> TransferView {
    let t = &p.transfer;
    let hidden = |account: &str| {
        !sees_system
            && p.entries
                .iter()
                .any(|e| e.account_id == account && e.system.is_some())
    };
    TransferView {
        object: "transfer",
        id: t.id.clone(),
        kind: t.kind.clone(),
        currency: t.currency.clone(),
        amount: t.amount,
        debit_account_id: (!hidden(&t.debit_account_id)).then(|| t.debit_account_id.clone()),
        debits: legs(p, "debit", sees_system),
        credits: legs(p, "credit", sees_system),
        reverses_id: t.reverses_id.clone(),
        reference: t.reference.clone(),
        description: p.details.as_ref().and_then(|d| d.description.clone()),
        metadata: p
            .details
            .as_ref()
            .map(|d| d.metadata.clone())
            .unwrap_or_default(),
        counterparty: p
            .details
            .as_ref()
            .and_then(|d| d.counterparty.as_ref())
            .map(|c| CounterpartyBody {
                name: c.name.clone(),
                account: c.account.clone(),
                institution: c.institution.clone(),
            }),
        created_by: t.created_by.clone(),
        created_at: ts(t.created_at),
        balances: p
            .entries
            .iter()
            .filter(|e| visible(&e.account_id) && (sees_system || e.system.is_none()))
            .map(|e| BalanceView {
                account_id: e.account_id.clone(),
                balance_after: e.balance_after,
            })
            .collect(),
    }
}

fn render_error(r: &Refusal) -> (u16, String) {
    let (status, body) = error_value(ApiError::from(ledger::refusal_error(r.clone())));
    (status, body.to_string())
}

/// How a posted transfer is shown to a caller: its legs and the resulting balances it may see.
type RenderTransfer = fn(&PostedTransfer) -> String;

/// Staff with `accounts:read_system` see every leg and resulting balance.
fn render_all_system(p: &PostedTransfer) -> String {
    serde_json::to_string(&transfer_view(p, true, |_| true)).unwrap_or_default()
}

/// Other staff see every customer leg's resulting balance; system legs show only their kind.
fn render_all(p: &PostedTransfer) -> String {
    serde_json::to_string(&transfer_view(p, false, |_| true)).unwrap_or_default()
}

/// A customer sees only its own (debit) account's resulting balance.
fn render_debit_only(p: &PostedTransfer) -> String {
    let debit = p.transfer.debit_account_id.clone();
    serde_json::to_string(&transfer_view(p, false, |a| a == debit)).unwrap_or_default()
}

/// How a movement's answer is rendered for `principal` (a replay is rendered for the
/// credential replaying it, with its read rights of today).
fn render_for(principal: &Principal) -> RenderTransfer {
    match principal.scope(Permission::TransfersRead) {
        Ok(Scope::All) if ledger::sees_system(principal) => render_all_system,
        Ok(Scope::All) => render_all,
        _ => render_debit_only,
    }
}

// ---------------------------------------------------------------- idempotency plumbing

fn idempotency(
    headers: &HeaderMap,
    path: &str,
    body: &impl Serialize,
) -> ApiResult<Option<IdempotencyKey>> {
    let Some(raw) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let raw = raw.to_str().map_err(|_| {
        ApiError::invalid(
            "parameter_invalid",
            Some("Idempotency-Key".into()),
            "Idempotency-Key must be printable ASCII",
        )
    })?;
    let canonical = serde_json::to_vec(body).unwrap_or_default();
    let mut fingerprint = path.as_bytes().to_vec();
    fingerprint.push(0);
    fingerprint.extend_from_slice(&canonical);
    Ok(Some(IdempotencyKey::parse(
        raw,
        crate::crypto::sha256_hex(&fingerprint),
    )?))
}

/// The one place a movement's answer is rendered: a new posting, or a retry's stored outcome.
fn respond(outcome: MovementOutcome, render: RenderTransfer) -> Response {
    match outcome {
        MovementOutcome::Posted(p) => json_response(201, render(&p), false),
        MovementOutcome::Replayed(p) => json_response(201, render(&p), true),
        MovementOutcome::ReplayedRefusal(r) => {
            let (status, body) = render_error(&r);
            json_response(status, body, true)
        }
        MovementOutcome::ReplayedBody { status, body } => json_response(status, body, true),
        // Accepted, not posted: the hold that reserves the money under review.
        MovementOutcome::Reviewed { hold, replayed } => {
            json_response(202, render_hold(*hold), replayed)
        }
    }
}

/// A JSON answer already rendered (or stored for an idempotent replay); audited by the service.
fn json_response(status: u16, body: String, replayed: bool) -> Response {
    let mut resp = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        body,
    )
        .into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if replayed {
        h.insert("idempotency-replayed", HeaderValue::from_static("true"));
    }
    resp.extensions_mut().insert(AuditRecorded);
    resp
}

async fn run_movement(
    state: &AppState,
    meta: &RequestMeta,
    principal: &Principal,
    input: TransferInput,
    key: Option<IdempotencyKey>,
) -> ApiResult<Response> {
    let render = render_for(principal);
    match ledger::move_money(&state.core, meta, principal, input, key).await {
        Ok(outcome) => Ok(respond(outcome, render)),
        Err(e) => Err(e.into()),
    }
}

// ---------------------------------------------------------------- handlers

/// Open an account for a customer in one of the tenant's currencies (one per currency).
#[utoipa::path(post, path = "/v1/accounts", operation_id = "openAccount", tag = "ledger", security(("bearer" = [])), request_body = OpenAccountRequest, responses(
    (status = 201, body = AccountView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody),
    (status = 422, description = "The customer was erased (`customer_erased`)", body = ErrorBody),
))]
pub async fn open_account(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    principal: Principal,
    ApiJson(body): ApiJson<OpenAccountRequest>,
) -> ApiResult<Recorded<Json<AccountView>>> {
    let a = ledger::open_account(
        &state.core,
        &meta,
        &principal,
        &body.customer_id,
        &body.currency,
    )
    .await?;
    Ok(Recorded(StatusCode::CREATED, Json(a.into())))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AccountListQuery {
    /// 1 to 100 (default 20).
    pub limit: Option<u32>,
    pub starting_after: Option<String>,
    /// Only this customer's accounts.
    pub customer_id: Option<String>,
}

/// List accounts, newest first, with balances.
#[utoipa::path(get, path = "/v1/accounts", operation_id = "listAccounts", tag = "ledger", security(("bearer" = [])), params(AccountListQuery), responses(
    (status = 200, body = List<AccountView>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
))]
pub async fn list_accounts(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    ApiQuery(q): ApiQuery<AccountListQuery>,
) -> ApiResult<Json<List<AccountView>>> {
    let page = page(q.limit, q.starting_after, |c| AccountId::parse(c).is_some())?;
    let listed =
        ledger::list_accounts(&state.core, &principal, q.customer_id.as_deref(), &page).await?;
    Ok(Json(List::from(listed, AccountView::from)))
}

/// Get one account with its posted, pending and available balances.
#[utoipa::path(get, path = "/v1/accounts/{id}", operation_id = "getAccount", tag = "ledger", security(("bearer" = [])), params(("id" = String, Path, description = "Account id (`acc_…`)")), responses(
    (status = 200, body = AccountView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
))]
pub async fn get_account(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<AccountView>> {
    Ok(Json(
        ledger::get_account(&state.core, &principal, &id)
            .await?
            .into(),
    ))
}

/// An account's entries, newest first, each with the balance right after it.
#[utoipa::path(get, path = "/v1/accounts/{id}/entries", operation_id = "listAccountEntries", tag = "ledger", security(("bearer" = [])), params(("id" = String, Path, description = "Account id"), ListQuery), responses(
    (status = 200, body = List<EntryView>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
))]
pub async fn list_entries(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<List<EntryView>>> {
    let page = page(q.limit, q.starting_after, |c| {
        crate::ids::EntryId::parse(c).is_some()
    })?;
    Ok(Json(List::from(
        ledger::list_entries(&state.core, &principal, &id, &page).await?,
        EntryView::from,
    )))
}

/// Freeze an account: it refuses debits until unfrozen. A reason code is required; a note is
/// optional, sealed and staff-only (see `GET /v1/staff-notes`).
#[utoipa::path(post, path = "/v1/accounts/{id}/freeze", operation_id = "freezeAccount", tag = "ledger", security(("bearer" = [])), params(("id" = String, Path, description = "Account id")), request_body = FreezeRequest, responses(
    (status = 200, body = AccountView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody),
))]
pub async fn freeze(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    principal: Principal,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<StatusChange>,
) -> ApiResult<Recorded<Json<AccountView>>> {
    let a = ledger::set_status(
        &state.core,
        &meta,
        &principal,
        &id,
        "frozen",
        body.reason,
        body.note,
    )
    .await?;
    Ok(Recorded(StatusCode::OK, Json(a.into())))
}

/// Unfreeze an account. A reason code is required; a note is optional and staff-only.
#[utoipa::path(post, path = "/v1/accounts/{id}/unfreeze", operation_id = "unfreezeAccount", tag = "ledger", security(("bearer" = [])), params(("id" = String, Path, description = "Account id")), request_body = UnfreezeRequest, responses(
    (status = 200, body = AccountView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody),
))]
pub async fn unfreeze(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    principal: Principal,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<StatusChange>,
) -> ApiResult<Recorded<Json<AccountView>>> {
    let a = ledger::set_status(
        &state.core,
        &meta,
        &principal,
        &id,
        "active",
        body.reason,
        body.note,
    )
    .await?;
    Ok(Recorded(StatusCode::OK, Json(a.into())))
}

/// Close an account (only at zero balance with nothing pending). Closing is final. A reason
/// code is optional (required with a note); a note is staff-only.
#[utoipa::path(post, path = "/v1/accounts/{id}/close", operation_id = "closeAccount", tag = "ledger", security(("bearer" = [])), params(("id" = String, Path, description = "Account id")), request_body = CloseRequest, responses(
    (status = 200, body = AccountView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody),
))]
pub async fn close(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    principal: Principal,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<StatusChange>,
) -> ApiResult<Recorded<Json<AccountView>>> {
    let a = ledger::set_status(
        &state.core,
        &meta,
        &principal,
        &id,
        "closed",
        body.reason,
        body.note,
    )
    .await?;
    Ok(Recorded(StatusCode::OK, Json(a.into())))
}

/// Set how far below zero an account may go (default 0).
#[utoipa::path(put, path = "/v1/accounts/{id}/overdraft", operation_id = "setAccountOverdraft", tag = "ledger", security(("bearer" = [])), params(("id" = String, Path, description = "Account id")), request_body = OverdraftRequest, responses(
    (status = 200, body = AccountView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody),
))]
pub async fn set_overdraft(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    principal: Principal,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<OverdraftRequest>,
) -> ApiResult<Recorded<Json<AccountView>>> {
    let a =
        ledger::set_overdraft(&state.core, &meta, &principal, &id, body.overdraft_limit).await?;
    Ok(Recorded(StatusCode::OK, Json(a.into())))
}

/// Move money from one account to one or several others of the same currency, atomically.
#[utoipa::path(post, path = "/v1/transfers", operation_id = "createTransfer", tag = "ledger", security(("bearer" = [])), request_body = CreateTransferRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe: same key and body, same response")),
    responses(
        (status = 201, body = TransferView), (status = 202, description = "Held for review by a pre-commit check: nothing posted; the review hold that reserves the money", body = HoldView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, description = "Same idempotency key still in flight", body = ErrorBody),
        (status = 422, description = "Refused: insufficient_funds, currency_mismatch, account_frozen, account_closed, reference_taken, idempotency_key_reused", body = ErrorBody),
))]
pub async fn create_transfer(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    principal: Principal,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateTransferRequest>,
) -> ApiResult<Response> {
    let key = idempotency(&headers, "/v1/transfers", &body)?;
    let credits = match (&body.credit_account_id, &body.credits) {
        (Some(a), None) => vec![(a.clone(), body.amount)],
        (None, Some(legs)) => legs
            .iter()
            .map(|l| (l.account_id.clone(), l.amount))
            .collect(),
        _ => {
            return Err(ApiError::invalid(
                "parameter_invalid",
                Some("credits".into()),
                "give exactly one of credit_account_id or credits",
            ));
        }
    };
    let input = TransferInput {
        kind: TransferKind::Transfer,
        currency: body.currency,
        amount: body.amount,
        debit_account_id: body.debit_account_id,
        credits,
        reference: body.reference,
        details: details_of(body.description, body.metadata, body.counterparty),
        reverses: None,
        capture_hold: None,
    };
    run_movement(&state, &meta, &principal, input, key).await
}

async fn cash(
    state: &AppState,
    meta: &RequestMeta,
    principal: &Principal,
    headers: &HeaderMap,
    path: &str,
    kind: TransferKind,
    body: CashRequest,
) -> ApiResult<Response> {
    let key = idempotency(headers, path, &body)?;
    let input = TransferInput {
        kind,
        currency: body.currency,
        amount: body.amount,
        debit_account_id: body.account_id,
        credits: Vec::new(),
        reference: body.reference,
        details: details_of(body.description, body.metadata, body.counterparty),
        reverses: None,
        capture_hold: None,
    };
    run_movement(state, meta, principal, input, key).await
}

/// Cash in: credit a customer account from the tenant's settlement account.
#[utoipa::path(post, path = "/v1/deposits", operation_id = "createDeposit", tag = "ledger", security(("bearer" = [])), request_body = CashRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe")),
    responses((status = 201, body = TransferView), (status = 202, description = "Held for review by a pre-commit check: nothing posted; the review hold that reserves the money", body = HoldView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn deposit(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    principal: Principal,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CashRequest>,
) -> ApiResult<Response> {
    cash(
        &state,
        &meta,
        &principal,
        &headers,
        "/v1/deposits",
        TransferKind::Deposit,
        body,
    )
    .await
}

/// Cash out: debit a customer account into the tenant's settlement account.
#[utoipa::path(post, path = "/v1/withdrawals", operation_id = "createWithdrawal", tag = "ledger", security(("bearer" = [])), request_body = CashRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe")),
    responses((status = 201, body = TransferView), (status = 202, description = "Held for review by a pre-commit check: nothing posted; the review hold that reserves the money", body = HoldView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn withdraw(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    principal: Principal,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CashRequest>,
) -> ApiResult<Response> {
    cash(
        &state,
        &meta,
        &principal,
        &headers,
        "/v1/withdrawals",
        TransferKind::Withdrawal,
        body,
    )
    .await
}

/// Get one transfer.
#[utoipa::path(get, path = "/v1/transfers/{id}", operation_id = "getTransfer", tag = "ledger", security(("bearer" = [])), params(("id" = String, Path, description = "Transfer id (`trf_…`)")), responses(
    (status = 200, body = TransferView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
))]
pub async fn get_transfer(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<TransferView>> {
    let (p, visible) = ledger::get_transfer(&state.core, &principal, &id).await?;
    Ok(Json(transfer_view(
        &p,
        ledger::sees_system(&principal),
        |a| visible.as_ref().is_none_or(|v| v.contains(a)),
    )))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TransferListQuery {
    /// 1 to 100 (default 20).
    pub limit: Option<u32>,
    pub starting_after: Option<String>,
    /// Only transfers with a leg on this account.
    pub account_id: Option<String>,
    /// RFC 3339; only transfers at or after this time.
    pub created_after: Option<String>,
    /// RFC 3339; only transfers before this time.
    pub created_before: Option<String>,
}

/// List transfers, newest first, by account and time.
#[utoipa::path(get, path = "/v1/transfers", operation_id = "listTransfers", tag = "ledger", security(("bearer" = [])), params(TransferListQuery), responses(
    (status = 200, body = List<TransferView>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
))]
pub async fn list_transfers(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    ApiQuery(q): ApiQuery<TransferListQuery>,
) -> ApiResult<Json<List<TransferView>>> {
    let page = page(q.limit, q.starting_after, |c| {
        TransferId::parse(c).is_some()
    })?;
    let filter = TransferFilter {
        account_id: q.account_id,
        customer_id: None,
        created_after: time_param("created_after", q.created_after)?,
        created_before: time_param("created_before", q.created_before)?,
    };
    let listed = ledger::list_transfers(&state.core, &principal, filter, &page).await?;
    // Lists carry the legs; resulting balances are on the single-transfer view.
    let sees_system = ledger::sees_system(&principal);
    Ok(Json(List::from(listed, |p| {
        transfer_view(&p, sees_system, |_| false)
    })))
}

// ---------------------------------------------------------------- reversals and holds

#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReverseRequest {
    /// Minor units to reverse; default: all that is left of the original. For a transfer with
    /// several credit legs an amount alone must be everything left; otherwise give `legs`.
    pub amount: Option<i64>,
    /// How much each named credit leg of the original gives back (each at most what it has
    /// left).
    pub legs: Option<Vec<CreditLeg>>,
}

/// Reverse all or part of a transfer with a new transfer linked to it (never more than what is left).
#[utoipa::path(post, path = "/v1/transfers/{id}/reverse", operation_id = "reverseTransfer", tag = "ledger", security(("bearer" = [])),
    params(("id" = String, Path, description = "Transfer id"), ("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe")),
    request_body = ReverseRequest,
    responses((status = 201, body = TransferView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn reverse(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    principal: Principal,
    headers: HeaderMap,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ReverseRequest>,
) -> ApiResult<Response> {
    let key = idempotency(&headers, &format!("/v1/transfers/{id}/reverse"), &body)?;
    match ledger::reverse(
        &state.core,
        &meta,
        &principal,
        &id,
        ledger::ReverseInput {
            amount: body.amount,
            legs: body
                .legs
                .as_ref()
                .map(|l| l.iter().map(|l| (l.account_id.clone(), l.amount)).collect()),
        },
        key,
    )
    .await
    {
        Ok(outcome) => Ok(respond(outcome, render_for(&principal))),
        Err(e) => Err(e.into()),
    }
}

#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateHoldRequest {
    pub account_id: String,
    /// The account a capture credits by default; it shows the amount as pending credits while
    /// the hold is active.
    pub credit_account_id: Option<String>,
    pub amount: i64,
    pub currency: String,
    /// 60 s to 30 days.
    pub expires_in_seconds: i64,
    pub reference: Option<String>,
}

#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CaptureRequest {
    /// Default: the account the hold names.
    pub credit_account_id: Option<String>,
    /// Default: the whole hold. Whatever is not captured is released.
    pub amount: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct HoldView {
    /// Always `hold`.
    pub object: &'static str,
    pub id: String,
    pub account_id: String,
    pub credit_account_id: Option<String>,
    pub currency: String,
    pub amount: i64,
    /// `active`, `captured`, `voided` or `expired`.
    pub status: String,
    pub expires_at: String,
    pub reference: Option<String>,
    pub captured_transfer_id: Option<String>,
    pub created_at: String,
    /// `payment` (placed through this API), or `review`: a movement a pre-commit check sent to
    /// review (answered `202`); its money stays reserved until the review decides, and this API
    /// neither captures nor voids it.
    pub purpose: String,
}

impl From<crate::store::HoldRecord> for HoldView {
    fn from(h: crate::store::HoldRecord) -> Self {
        Self {
            object: "hold",
            id: h.id,
            account_id: h.account_id,
            credit_account_id: h.credit_account_id,
            currency: h.currency,
            amount: h.amount,
            purpose: h.purpose,
            status: h.status,
            expires_at: ts(h.expires_at),
            reference: h.reference,
            captured_transfer_id: h.captured_transfer_id,
            created_at: ts(h.created_at),
        }
    }
}

fn render_hold(h: crate::store::HoldRecord) -> String {
    serde_json::to_string(&HoldView::from(h)).unwrap_or_default()
}

/// Reserve part of an account's available balance until the hold expires, is captured or voided.
#[utoipa::path(post, path = "/v1/holds", operation_id = "createHold", tag = "ledger", security(("bearer" = [])), request_body = CreateHoldRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe")),
    responses(
    (status = 201, body = HoldView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody),
))]
pub async fn create_hold(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    principal: Principal,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateHoldRequest>,
) -> ApiResult<Response> {
    let key = idempotency(&headers, "/v1/holds", &body)?;
    let input = ledger::HoldInput {
        account_id: body.account_id,
        credit_account_id: body.credit_account_id,
        currency: body.currency,
        amount: body.amount,
        expires_in_seconds: body.expires_in_seconds,
        reference: body.reference,
    };
    let outcome = ledger::create_hold(&state.core, &meta, &principal, input, key).await?;
    Ok(match outcome {
        ledger::HoldOutcome::Created(h) => json_response(201, render_hold(*h), false),
        ledger::HoldOutcome::Replayed(h) => json_response(201, render_hold(*h), true),
        ledger::HoldOutcome::ReplayedBody { status, body } => json_response(status, body, true),
    })
}

/// Get one hold.
#[utoipa::path(get, path = "/v1/holds/{id}", operation_id = "getHold", tag = "ledger", security(("bearer" = [])), params(("id" = String, Path, description = "Hold id (`hld_…`)")), responses(
    (status = 200, body = HoldView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
))]
pub async fn get_hold(
    State(state): State<Arc<AppState>>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<HoldView>> {
    Ok(Json(
        ledger::get_hold(&state.core, &principal, &id).await?.into(),
    ))
}

/// Capture all or part of a hold into a transfer; the rest of the hold is released.
#[utoipa::path(post, path = "/v1/holds/{id}/capture", operation_id = "captureHold", tag = "ledger", security(("bearer" = [])),
    params(("id" = String, Path, description = "Hold id"), ("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe")),
    request_body = CaptureRequest,
    responses((status = 201, body = TransferView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn capture_hold(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    principal: Principal,
    headers: HeaderMap,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<CaptureRequest>,
) -> ApiResult<Response> {
    let key = idempotency(&headers, &format!("/v1/holds/{id}/capture"), &body)?;
    match ledger::capture_hold(
        &state.core,
        &meta,
        &principal,
        &id,
        body.credit_account_id,
        body.amount,
        key,
    )
    .await
    {
        Ok(outcome) => Ok(respond(outcome, render_for(&principal))),
        Err(e) => Err(e.into()),
    }
}

/// Release a hold without moving money.
#[utoipa::path(post, path = "/v1/holds/{id}/void", operation_id = "voidHold", tag = "ledger", security(("bearer" = [])), params(("id" = String, Path, description = "Hold id")), responses(
    (status = 200, body = HoldView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody),
))]
pub async fn void_hold(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Recorded<Json<HoldView>>> {
    let h = ledger::void_hold(&state.core, &meta, &principal, &id).await?;
    Ok(Recorded(StatusCode::OK, Json(h.into())))
}

// ---------------------------------------------------------------- batches

#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// 1 to 1,000 transfers, each as for `POST /v1/transfers`.
    pub transfers: Vec<CreateTransferRequest>,
    /// All or nothing (default false: each transfer stands alone).
    #[serde(default)]
    pub atomic: bool,
}

#[derive(Serialize, ToSchema)]
pub struct BatchItemView {
    pub index: usize,
    /// The HTTP status this transfer alone would have had (201, 4xx).
    pub status: u16,
    /// The transfer, when posted.
    #[schema(value_type = Option<Object>)]
    pub transfer: Option<Value>,
    /// Why not, when refused.
    #[schema(value_type = Option<Object>)]
    pub error: Option<Value>,
    /// The review hold, when a pre-commit check sent the transfer to review (status 202).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub hold: Option<Value>,
}

#[derive(Serialize, ToSchema)]
pub struct BatchView {
    /// Always `transfer_batch`.
    pub object: &'static str,
    pub atomic: bool,
    pub results: Vec<BatchItemView>,
}

fn error_value(e: ApiError) -> (u16, Value) {
    let status = e.status.as_u16();
    (
        status,
        serde_json::to_value(e.into_body()).unwrap_or(Value::Null),
    )
}

/// Post up to 1,000 transfers in one request: each with its own result, or with `atomic` all or none.
/// With an `Idempotency-Key`, transfer `i` is keyed `<key>#<i>`, so a retried batch replays.
#[utoipa::path(post, path = "/v1/transfers/batch", operation_id = "createBatchTransfers", tag = "ledger", security(("bearer" = [])), request_body = BatchRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe; each transfer is keyed <key>#<index>")),
    responses(
        (status = 200, description = "Independent transfers: one result each", body = BatchView),
        (status = 201, description = "Atomic batch posted", body = BatchView),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 422, description = "Atomic batch refused (`batch_failed`, `param` names the transfer); nothing was posted", body = ErrorBody),
))]
pub async fn create_batch(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    principal: Principal,
    headers: HeaderMap,
    ApiJson(body): ApiJson<BatchRequest>,
) -> ApiResult<Response> {
    let raw_key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| {
                    ApiError::invalid(
                        "parameter_invalid",
                        Some("Idempotency-Key".into()),
                        "Idempotency-Key must be printable ASCII",
                    )
                })?
                .to_owned(),
        ),
    };
    let mut inputs = Vec::with_capacity(body.transfers.len());
    for (i, t) in body.transfers.iter().enumerate() {
        let key = match &raw_key {
            None => None,
            Some(k) => {
                let fingerprint = [
                    b"/v1/transfers/batch\0".as_slice(),
                    &serde_json::to_vec(t).unwrap_or_default(),
                ]
                .concat();
                Some(
                    IdempotencyKey::parse(
                        &format!("{k}#{i}"),
                        crate::crypto::sha256_hex(&fingerprint),
                    )
                    .map_err(ApiError::from)?,
                )
            }
        };
        let credits = match (&t.credit_account_id, &t.credits) {
            (Some(a), None) => vec![(a.clone(), t.amount)],
            (None, Some(legs)) => legs
                .iter()
                .map(|l| (l.account_id.clone(), l.amount))
                .collect(),
            _ => {
                return Err(ApiError::invalid(
                    "parameter_invalid",
                    Some(format!("transfers[{i}].credits")),
                    "give exactly one of credit_account_id or credits",
                ));
            }
        };
        inputs.push((
            TransferInput {
                kind: TransferKind::Transfer,
                currency: t.currency.clone(),
                amount: t.amount,
                debit_account_id: t.debit_account_id.clone(),
                credits,
                reference: t.reference.clone(),
                details: details_of(
                    t.description.clone(),
                    t.metadata.clone(),
                    t.counterparty.clone(),
                ),
                reverses: None,
                capture_hold: None,
            },
            key,
        ));
    }
    let render = render_for(&principal);
    let (committed, items) =
        match ledger::move_money_batch(&state.core, &meta, &principal, inputs, body.atomic).await {
            Ok(r) => r,
            Err(e) => {
                let api = ApiError::from(e.error);
                return Err(if e.audited { api.audited() } else { api });
            }
        };
    let mut results = Vec::with_capacity(items.len());
    for (index, item) in items.into_iter().enumerate() {
        let mut reviewed: Option<Option<Value>> = None;
        let (status, transfer, error) = match item {
            Ok(MovementOutcome::Posted(p) | MovementOutcome::Replayed(p)) => {
                (201, serde_json::from_str(&render(&p)).ok(), None)
            }
            Ok(MovementOutcome::ReplayedRefusal(r)) => {
                let (s, v) = error_value(ApiError::from(ledger::refusal_error(r)));
                (s, None, Some(v))
            }
            Ok(MovementOutcome::Reviewed { hold, .. }) => {
                reviewed = Some(serde_json::from_str(&render_hold(*hold)).ok());
                (202, None, None)
            }
            Ok(MovementOutcome::ReplayedBody { status, body }) => {
                let v: Option<Value> = serde_json::from_str(&body).ok();
                if status < 300 {
                    (status, v, None)
                } else {
                    (status, None, v)
                }
            }
            Err(e) => {
                let (s, v) = error_value(ApiError::from(e.error));
                (s, None, Some(v))
            }
        };
        results.push(BatchItemView {
            index,
            status,
            transfer,
            error,
            hold: reviewed.flatten(),
        });
    }
    if body.atomic && !committed {
        let first = results.iter().find(|r| {
            r.error
                .as_ref()
                .is_some_and(|e| e["error"]["code"] != "batch_aborted")
        });
        let (param, detail) = first.map_or((None, String::new()), |r| {
            (
                Some(format!("transfers[{}]", r.index)),
                r.error
                    .as_ref()
                    .map(|e| e["error"]["message"].as_str().unwrap_or("").to_owned())
                    .unwrap_or_default(),
            )
        });
        let mut err = ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request_error",
            "batch_failed",
            format!("nothing was posted: {detail}"),
        );
        err.param = param;
        return Err(err);
    }
    let status = if body.atomic {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut resp = (
        status,
        Json(BatchView {
            object: "transfer_batch",
            atomic: body.atomic,
            results,
        }),
    )
        .into_response();
    resp.extensions_mut().insert(AuditRecorded);
    Ok(resp)
}
