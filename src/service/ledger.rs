//! The ledger's use cases: accounts, and money movements (transfers, deposits, withdrawals) with
//! idempotency keys. Customers themselves live in `service::customers`.
//!
//! Movements go through the [`LedgerWriter`]: one task per process that takes the movements
//! waiting in its queue and posts them in one database transaction, so a commit's fsync is
//! shared by everything that arrived meanwhile (group commit). The store reads every row the
//! batch touches under lock and applies the rules to them in order (`store::posting`), which
//! keeps balances correct even with several Kasho instances writing to one PostgreSQL.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use super::{AuditBuilder, Core, Listed, Principal, RequestMeta};
use crate::domain::audit::Outcome;
use crate::domain::authz::{Permission, Scope};
use crate::domain::currency::Currency;
use crate::domain::ledger::{
    AccountKind, Amount, CheckDecision, HOLD_MAX_SECONDS, HOLD_MIN_SECONDS, MAX_CREDIT_LEGS,
    MovementView, Refusal, TransferDetails, TransferKind,
};
use crate::error::{AppError, AppResult};
use crate::ids::{AccountId, CustomerId, TenantId, TransferId};
use crate::store::{
    AccountRecord, CustomerRecord, EntryRecord, NewAccount, NewIdempotency, NewMovement, Page,
    PostResult, PostedTransfer, RenderOutcome, Store, StoreError, TransferFilter,
};

/// Most movements posted in one transaction.
const MAX_BATCH: usize = 512;

type Job = (NewMovement, oneshot::Sender<Result<PostResult, StoreError>>);

/// The single writer of money movements in this process.
#[derive(Clone)]
pub struct LedgerWriter {
    queue: mpsc::Sender<Job>,
}

impl LedgerWriter {
    /// Starts the writer task on the current runtime.
    pub fn start(store: Arc<dyn Store>) -> Self {
        let (queue, mut rx) = mpsc::channel::<Job>(16 * MAX_BATCH);
        tokio::spawn(async move {
            let mut jobs: Vec<Job> = Vec::with_capacity(MAX_BATCH);
            while rx.recv_many(&mut jobs, MAX_BATCH).await > 0 {
                let (batch, replies): (Vec<NewMovement>, Vec<_>) = jobs.drain(..).unzip();
                let started = std::time::Instant::now();
                let r = store.post_movements(&batch).await;
                tracing::debug!(
                    size = batch.len(),
                    elapsed_us = started.elapsed().as_micros(),
                    "ledger batch committed"
                );
                match r {
                    Ok(results) => {
                        for (reply, r) in replies.into_iter().zip(results) {
                            let _ = reply.send(Ok(r));
                        }
                    }
                    // Storage cannot write (a full disk, a lost connection): every movement of
                    // the batch gets that answer (503), none is retried here. Retrying would
                    // fail the same way, and a commit whose answer was lost with its connection
                    // may have gone through: only the client's retry, with its idempotency key,
                    // can tell.
                    Err(StoreError::Unavailable(e)) => {
                        crate::warn_limited!(e, "ledger batch failed: storage unavailable");
                        for reply in replies {
                            let _ = reply.send(Err(StoreError::Unavailable(e.clone())));
                        }
                    }
                    // The batch rolled back as a whole (e.g. a deadlock or a key taken by
                    // another instance): retry each movement alone so one failure does not fail
                    // its neighbours.
                    Err(batch_err) => {
                        crate::warn_limited!(
                            batch_err,
                            size = batch.len(),
                            "ledger batch failed; retrying one by one"
                        );
                        for (m, reply) in batch.iter().zip(replies) {
                            let r = store
                                .post_movements(std::slice::from_ref(m))
                                .await
                                .and_then(|mut v| {
                                    v.pop().ok_or_else(|| {
                                        StoreError::Database("empty result".to_owned())
                                    })
                                });
                            let _ = reply.send(r);
                        }
                    }
                }
            }
        });
        Self { queue }
    }

    async fn post(&self, m: NewMovement) -> AppResult<PostResult> {
        let rx = self.enqueue(m).await?;
        rx.await
            .map_err(|_| AppError::internal("the ledger writer dropped a movement"))?
            .map_err(AppError::from)
    }
}

impl LedgerWriter {
    /// Queues a movement; the receiver yields its result once its batch has committed.
    async fn enqueue(
        &self,
        m: NewMovement,
    ) -> AppResult<oneshot::Receiver<Result<PostResult, StoreError>>> {
        let (tx, rx) = oneshot::channel();
        self.queue
            .send((m, tx))
            .await
            .map_err(|_| AppError::internal("the ledger writer has stopped"))?;
        Ok(rx)
    }
}

/// 429 `refusal_budget_exhausted` while the caller's budget of refused movements is spent.
fn refuse_if_over_budget(core: &Core, actor: &Principal) -> AppResult<()> {
    super::budgets::refuse_if_spent(core, super::budgets::Budget::Refusals, actor)
}

/// Counts `n` refused movements against the caller's budget (`service::budgets`): the request
/// that spends it raises a security event, and the credential's movements answer 429 for the
/// rest of the window.
async fn count_refusals(core: &Core, meta: &RequestMeta, actor: &Principal, n: i64) {
    super::budgets::spend(core, meta, super::budgets::Budget::Refusals, actor, n).await;
}

/// Idempotency keys of requests being processed in this process (for 409 while in flight).
#[derive(Default)]
pub struct InFlight(Mutex<HashSet<String>>);

struct InFlightGuard<'a> {
    set: &'a InFlight,
    key: String,
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut s) = self.set.0.lock() {
            s.remove(&self.key);
        }
    }
}

impl InFlight {
    fn claim(&self, key: String) -> Option<InFlightGuard<'_>> {
        // The lock is released before a guard can exist: a guard's drop takes it again.
        let inserted = self.0.lock().ok()?.insert(key.clone());
        inserted.then(|| InFlightGuard { set: self, key })
    }

    /// Claims `key` for this tenant and principal, or 409 `idempotency_key_in_flight` while
    /// another request of this process holds it.
    fn claim_key(
        &self,
        tenant: &TenantId,
        principal: &str,
        key: &IdempotencyKey,
    ) -> AppResult<InFlightGuard<'_>> {
        self.claim(format!("{tenant}/{principal}/{}", key.key))
            .ok_or_else(in_flight)
    }
}

/// An `Idempotency-Key` and the fingerprint of the request it came with.
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    pub key: String,
    pub request_hash: String,
}

impl IdempotencyKey {
    pub fn parse(raw: &str, request_hash: String) -> AppResult<Self> {
        if raw.is_empty() || raw.len() > 255 || !raw.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(AppError::invalid(
                "Idempotency-Key",
                "must be 1 to 255 printable ASCII characters",
            ));
        }
        Ok(Self {
            key: raw.to_owned(),
            request_hash,
        })
    }
}

/// A refused money movement; `audited` when the refusal's audit record is already written.
#[derive(Debug)]
pub struct MoveError {
    pub error: AppError,
    pub audited: bool,
}

impl From<AppError> for MoveError {
    fn from(error: AppError) -> Self {
        Self {
            error,
            audited: false,
        }
    }
}

impl From<StoreError> for MoveError {
    fn from(e: StoreError) -> Self {
        AppError::from(e).into()
    }
}

/// What a money-moving request produced.
pub enum MovementOutcome {
    Posted(Box<PostedTransfer>),
    /// The stored response of an earlier request with the same key.
    Replayed {
        status: u16,
        body: String,
    },
}

// ---------------------------------------------------------------- ownership

/// The customer record the caller owns (for `Own`-scoped permissions).
async fn own_customer(core: &Core, actor: &Principal) -> AppResult<Option<CustomerRecord>> {
    core.store
        .customer_for_user(actor.tenant()?, &actor.user_id)
        .await
        .map_err(Into::into)
}

/// The customer-id restriction a permission's scope imposes: `Some(id)` under `Own` (an
/// impossible id when the caller owns no customer record), `None` under `All`.
pub(crate) async fn owner_filter(
    core: &Core,
    actor: &Principal,
    perm: Permission,
) -> AppResult<Option<String>> {
    Ok(match actor.scope(perm)? {
        Scope::All => None,
        Scope::Own => Some(
            own_customer(core, actor)
                .await?
                .map_or_else(|| "cus_none".to_owned(), |c| c.id),
        ),
    })
}

// ---------------------------------------------------------------- accounts

pub async fn open_account(
    core: &Core,
    meta: &RequestMeta,
    actor: &Principal,
    customer_id: &str,
    currency: &str,
) -> AppResult<AccountRecord> {
    let tenant_id = actor.tenant()?;
    let currency = Currency::parse(currency).map_err(|m| AppError::invalid("currency", m))?;
    let tenant = core
        .store
        .get_tenant(tenant_id)
        .await?
        .ok_or(AppError::NotFound("tenant"))?;
    if !tenant.currencies.split(',').any(|c| c == currency.code()) {
        return Err(AppError::invalid(
            "currency",
            format!(
                "this tenant does not hold {currency}; allowed: {}",
                tenant.currencies
            ),
        ));
    }
    let customer = CustomerId::parse(customer_id)
        .ok_or_else(|| AppError::invalid("customer_id", "no such customer"))?;
    if core
        .store
        .get_customer(tenant_id, customer.as_str())
        .await?
        .is_none()
    {
        return Err(AppError::invalid("customer_id", "no such customer"));
    }
    super::privacy::refuse_if_erased(core, tenant_id, customer.as_str()).await?;
    let id = AccountId::generate();
    let account = NewAccount {
        id: id.clone(),
        tenant_id: tenant_id.clone(),
        customer_id: Some(customer),
        kind: AccountKind::Customer,
        currency: currency.code().to_owned(),
        overdraft_limit: 0,
        created_at: core.clock.now(),
    };
    let ev = AuditBuilder::new(core, meta, Some(actor)).own(
        "account.open",
        Some(("account", id.as_str())),
        Outcome::Success,
        None,
    );
    match core.store.open_account(&account, &[ev]).await {
        Ok(()) => {}
        Err(StoreError::Conflict { .. }) => {
            return Err(AppError::Conflict {
                code: "account_exists",
                param: Some("currency".into()),
                message: format!("this customer already has a {currency} account"),
            });
        }
        Err(e) => return Err(e.into()),
    }
    core.store
        .get_account(tenant_id, id.as_str())
        .await?
        .ok_or(AppError::NotFound("account"))
}

/// An account the caller may see under `perm` (404 otherwise, as for a missing one).
async fn visible_account(
    core: &Core,
    actor: &Principal,
    id: &str,
    perm: Permission,
) -> AppResult<AccountRecord> {
    let owner = owner_filter(core, actor, perm).await?;
    let account = match AccountId::parse(id) {
        Some(_) => core.store.get_account(actor.tenant()?, id).await?,
        None => None,
    }
    .ok_or(AppError::NotFound("account"))?;
    if owner.is_some() && account.customer_id != owner {
        return Err(AppError::NotFound("account"));
    }
    // System accounts exist only for holders of `accounts:read_system`.
    if account.kind != AccountKind::Customer.as_str() && !sees_system(actor) {
        return Err(AppError::NotFound("account"));
    }
    Ok(account)
}

/// Whether the caller may see system accounts (settlement, fees, suspense) by id.
pub fn sees_system(actor: &Principal) -> bool {
    actor.permissions.scope(Permission::AccountsReadSystem) == Some(Scope::All)
}

pub async fn get_account(core: &Core, actor: &Principal, id: &str) -> AppResult<AccountRecord> {
    let a = visible_account(core, actor, id, Permission::AccountsRead).await?;
    with_expired_released(core, actor.tenant()?, a).await
}

pub async fn list_accounts(
    core: &Core,
    actor: &Principal,
    customer: Option<&str>,
    page: &Page,
) -> AppResult<Listed<AccountRecord>> {
    let owner = owner_filter(core, actor, Permission::AccountsRead).await?;
    let filter = match (owner, customer) {
        (Some(o), Some(c)) if o != c => {
            return Ok(Listed {
                data: vec![],
                has_more: false,
            });
        }
        (Some(o), _) => Some(o),
        (None, c) => c.map(str::to_owned),
    };
    let tenant = actor.tenant()?;
    let mut rows = Vec::new();
    for a in core
        .store
        .list_accounts(tenant, filter.as_deref(), sees_system(actor), page)
        .await?
    {
        rows.push(with_expired_released(core, tenant, a).await?);
    }
    Ok(Listed::from_rows(rows, page))
}

pub async fn list_entries(
    core: &Core,
    actor: &Principal,
    account: &str,
    page: &Page,
) -> AppResult<Listed<EntryRecord>> {
    let account = visible_account(core, actor, account, Permission::AccountsRead).await?;
    let rows = core
        .store
        .list_entries(actor.tenant()?, &account.id, page)
        .await?;
    Ok(Listed::from_rows(rows, page))
}

/// Freeze (`frozen`), unfreeze (`active`) or close (`closed`) an account. A reason code is
/// required to freeze (`FreezeReason`) or unfreeze (`UnfreezeReason`) and optional to close
/// (`CloseReason`; required with a note). The audit record carries the code and the note's id;
/// the note itself is sealed, staff-only, and written in the same transaction.
pub async fn set_status(
    core: &Core,
    meta: &RequestMeta,
    actor: &Principal,
    id: &str,
    status: &'static str,
    reason: Option<String>,
    note: Option<String>,
) -> AppResult<AccountRecord> {
    use crate::domain::reasons::{CloseReason, FreezeReason, ReasonCode, UnfreezeReason};
    let perm = if status == "closed" {
        Permission::AccountsConfigure
    } else {
        Permission::AccountsFreeze
    };
    let account = visible_account(core, actor, id, perm).await?;
    fn code<T: ReasonCode>(raw: Option<&str>) -> AppResult<Option<&'static str>> {
        raw.map(|r| {
            T::parse(r)
                .map(T::as_str)
                .map_err(|m| AppError::invalid("reason", m))
        })
        .transpose()
    }
    let raw = reason.as_deref();
    let code = match status {
        "frozen" => code::<FreezeReason>(raw)?,
        "active" => code::<UnfreezeReason>(raw)?,
        _ => code::<CloseReason>(raw)?,
    };
    let note = super::staff_notes::parse_note(note.as_deref())?;
    let code = match (code, status, &note) {
        (Some(c), _, _) => Some(c),
        (None, "closed", None) => None,
        (None, "frozen", _) => {
            return Err(AppError::invalid(
                "reason",
                format!("required: one of {}", FreezeReason::codes().join(", ")),
            ));
        }
        (None, "active", _) => {
            return Err(AppError::invalid(
                "reason",
                format!("required: one of {}", UnfreezeReason::codes().join(", ")),
            ));
        }
        (None, _, _) => {
            return Err(AppError::invalid(
                "reason",
                format!(
                    "required with a note: one of {}",
                    CloseReason::codes().join(", ")
                ),
            ));
        }
    };
    if account.kind != "customer" {
        return Err(AppError::Unprocessable {
            code: "system_account",
            message: "system accounts cannot change status".into(),
        });
    }
    let action = match status {
        "frozen" => "account.freeze",
        "active" => "account.unfreeze",
        _ => "account.close",
    };
    let sealed = match code {
        Some(c) => {
            super::staff_notes::seal(
                core,
                actor,
                ("account", &account.id),
                // An account's freeze or closure note is an AML record the tenant keeps after
                // an erasure: under the tenant's key (docs/SECURITY.md, Tipping off).
                None,
                action,
                c,
                note.as_ref(),
            )
            .await?
        }
        None => None,
    };
    let audit_reason = code
        .map(|c| crate::domain::reasons::audit_reason(c, sealed.as_ref().map(|n| n.id.as_str())));
    let ev = AuditBuilder::new(core, meta, Some(actor)).own(
        action,
        Some(("account", &account.id)),
        Outcome::Success,
        audit_reason.as_deref(),
    );
    let tenant = actor.tenant()?;
    match core
        .store
        .set_account_status(
            tenant,
            &account.id,
            status,
            core.clock.now(),
            &[ev],
            sealed.as_ref(),
        )
        .await?
    {
        Some(a) => Ok(a),
        None if account.status == "closed" => Err(AppError::Unprocessable {
            code: "account_closed",
            message: "the account is closed".into(),
        }),
        None => Err(AppError::Unprocessable {
            code: "account_not_empty",
            message: "an account closes only at zero balance with nothing pending".into(),
        }),
    }
}

pub async fn set_overdraft(
    core: &Core,
    meta: &RequestMeta,
    actor: &Principal,
    id: &str,
    limit: i64,
) -> AppResult<AccountRecord> {
    if !(0..=crate::domain::ledger::MAX_AMOUNT).contains(&limit) {
        return Err(AppError::invalid(
            "overdraft_limit",
            "must be between 0 and 10^15 minor units",
        ));
    }
    let account = visible_account(core, actor, id, Permission::AccountsConfigure).await?;
    let ev = AuditBuilder::new(core, meta, Some(actor)).own(
        "account.overdraft.set",
        Some(("account", &account.id)),
        Outcome::Success,
        Some(&limit.to_string()),
    );
    core.store
        .set_overdraft(actor.tenant()?, &account.id, limit, core.clock.now(), &[ev])
        .await?
        .ok_or_else(|| AppError::Unprocessable {
            code: "overdraft_below_balance",
            message:
                "the account's balance is already below that limit, or it is not a customer account"
                    .into(),
        })
}

// ---------------------------------------------------------------- movements

/// A transfer request, already parsed from the wire.
pub struct TransferInput {
    pub kind: TransferKind,
    pub currency: String,
    pub amount: i64,
    /// For `Transfer`: the debit account. Deposits and withdrawals name the customer account.
    pub debit_account_id: String,
    pub credits: Vec<(String, i64)>,
    pub reference: Option<String>,
    /// Description, metadata, counterparty: sealed at rest.
    pub details: TransferDetails,
    /// For reversals: the original and the legs given back.
    pub reverses: Option<ReversalLegs>,
    /// For captures: the hold being captured.
    pub capture_hold: Option<String>,
}

/// What a reversal gives back: per account, the amount it debits, and what each leg of the
/// original received (the ceiling across all reversals).
pub struct ReversalLegs {
    pub link: crate::store::Reverses,
    pub debits: Vec<(String, i64)>,
}

/// A movement ready for the writer, or the stored answer of an earlier identical request.
enum Prepared<'a> {
    Replay(MovementOutcome),
    /// The movement, its idempotency key's in-flight claim and its KYC reservation: both are
    /// held until the movement is settled.
    Ready(
        Box<NewMovement>,
        Option<InFlightGuard<'a>>,
        Option<super::kyc::Reservation>,
    ),
}

pub async fn move_money(
    core: &Core,
    meta: &RequestMeta,
    actor: &Principal,
    input: TransferInput,
    idempotency: Option<IdempotencyKey>,
    render: RenderOutcome,
) -> Result<MovementOutcome, MoveError> {
    refuse_if_over_budget(core, actor)?;
    let outcome = move_one(core, meta, actor, input, idempotency, render).await;
    match outcome {
        Err(e) => {
            count_refusals(core, meta, actor, 1).await;
            Err(e)
        }
        Ok(MovementOutcome::Replayed { status, body }) if (200..300).contains(&status) => {
            Ok(rendered_for_replayer(core, actor, status, body, render).await)
        }
        other => other,
    }
}

/// A replayed success, rendered for the credential replaying it (its read rights today), not
/// as stored for whoever posted it: the transfer is read back and rendered again. Falls back
/// to the stored body only if it names no transfer this tenant holds.
async fn rendered_for_replayer(
    core: &Core,
    actor: &Principal,
    status: u16,
    body: String,
    render: RenderOutcome,
) -> MovementOutcome {
    let id = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["id"].as_str().map(str::to_owned));
    let (Some(id), Ok(tenant)) = (id, actor.tenant()) else {
        return MovementOutcome::Replayed { status, body };
    };
    let Ok(Some(mut p)) = core.store.get_transfer(tenant, &id).await else {
        return MovementOutcome::Replayed { status, body };
    };
    if open_details(core, &mut p).await.is_err() {
        return MovementOutcome::Replayed { status, body };
    }
    let (_, body) = render(&Ok(p));
    MovementOutcome::Replayed { status, body }
}

async fn move_one(
    core: &Core,
    meta: &RequestMeta,
    actor: &Principal,
    input: TransferInput,
    idempotency: Option<IdempotencyKey>,
    render: RenderOutcome,
) -> Result<MovementOutcome, MoveError> {
    match prepare(
        core,
        meta,
        actor,
        input,
        idempotency.as_ref(),
        render,
        false,
    )
    .await?
    {
        Prepared::Replay(o) => {
            crate::observability::transfer("replayed");
            Ok(o)
        }
        Prepared::Ready(m, _guard, _kyc) => {
            let r = core.ledger.post(*m).await?;
            settle(
                core,
                actor.tenant()?,
                &actor.idempotency_scope(),
                idempotency.as_ref(),
                r,
            )
            .await
        }
    }
}

/// Validates a movement and builds it for the writer, claiming its idempotency key in this
/// process; posts nothing.
///
/// A retry is not looked up here: the writer reads the key under lock in the posting
/// transaction anyway and answers a duplicate with the stored response, which saves a read on
/// every new request. Only when the request would fail before reaching the writer is the key
/// looked up first, so a retry still gets the first answer whatever has changed since.
async fn prepare<'a>(
    core: &'a Core,
    meta: &RequestMeta,
    actor: &Principal,
    input: TransferInput,
    idempotency: Option<&IdempotencyKey>,
    render: RenderOutcome,
    batch: bool,
) -> Result<Prepared<'a>, MoveError> {
    let tenant = actor.tenant()?.clone();
    let principal_key = actor.idempotency_scope();
    let guard = match idempotency {
        None => None,
        Some(k) => Some(core.inflight.claim_key(&tenant, &principal_key, k)?),
    };
    match build_movement(core, meta, actor, input, idempotency, render, batch).await {
        Ok(Prepared::Ready(m, _, kyc)) => Ok(Prepared::Ready(m, guard, kyc)),
        Ok(replayed) => Ok(replayed),
        Err(e) => {
            if let Some(k) = idempotency
                && let Some(stored) = replay(core, &tenant, &principal_key, k).await?
            {
                return Ok(Prepared::Replay(stored));
            }
            Err(e)
        }
    }
}

/// The movement for the writer, or why it cannot be posted.
async fn build_movement(
    core: &Core,
    meta: &RequestMeta,
    actor: &Principal,
    input: TransferInput,
    idempotency: Option<&IdempotencyKey>,
    render: RenderOutcome,
    batch: bool,
) -> Result<Prepared<'static>, MoveError> {
    let tenant = actor.tenant()?.clone();
    let principal_key = actor.user_id.to_string();
    let key_scope = actor.idempotency_scope();
    let currency =
        Currency::parse(&input.currency).map_err(|m| AppError::invalid("currency", m))?;
    let amount = Amount::parse(input.amount).map_err(|m| AppError::invalid("amount", m))?;
    // Money leaving an account above the tenant's threshold needs a recent authentication.
    if matches!(
        input.kind,
        TransferKind::Transfer | TransferKind::Withdrawal | TransferKind::Capture
    ) && actor
        .policy
        .transfer_needs_step_up(currency.code(), amount.get())
    {
        super::security::require_step_up(core, meta, actor).await?;
    }
    if let Some(r) = &input.reference
        && (r.is_empty() || r.len() > 128 || r.chars().any(char::is_control))
    {
        return Err(AppError::invalid(
            "reference",
            "must be 1 to 128 characters without control characters",
        )
        .into());
    }
    input
        .details
        .validate()
        .map_err(|(param, message)| AppError::invalid(param, message))?;
    let (debits, credits, debit_owner) = match input.kind {
        TransferKind::Reversal => {
            let debits = input
                .reverses
                .as_ref()
                .map(|r| r.debits.clone())
                .unwrap_or_default();
            (debits, input.credits.clone(), None)
        }
        TransferKind::Capture => (
            vec![(input.debit_account_id.clone(), amount.get())],
            input.credits.clone(),
            None,
        ),
        TransferKind::Transfer => {
            if input.credits.is_empty() || input.credits.len() > MAX_CREDIT_LEGS {
                return Err(AppError::invalid(
                    "credits",
                    format!("between 1 and {MAX_CREDIT_LEGS} credit legs are required"),
                )
                .into());
            }
            let mut total: i64 = 0;
            for (i, (acc, amt)) in input.credits.iter().enumerate() {
                Amount::parse(*amt)
                    .map_err(|m| AppError::invalid(format!("credits[{i}].amount"), m))?;
                if *acc == input.debit_account_id {
                    return Err(AppError::invalid(
                        format!("credits[{i}].account_id"),
                        "a transfer cannot credit its debit account",
                    )
                    .into());
                }
                total = total.saturating_add(*amt);
            }
            if total != amount.get() {
                return Err(AppError::invalid(
                    "credits",
                    format!("the credit legs sum to {total}, not the amount {amount}"),
                )
                .into());
            }
            let owner = match actor.scope(Permission::TransfersCreate)? {
                Scope::All => None,
                Scope::Own => Some(
                    own_customer(core, actor)
                        .await?
                        .map_or_else(|| "cus_none".to_owned(), |c| c.id),
                ),
            };
            (
                vec![(input.debit_account_id.clone(), amount.get())],
                input.credits.clone(),
                owner,
            )
        }
        TransferKind::Deposit | TransferKind::Withdrawal => {
            let settlement = core
                .store
                .system_account(&tenant, AccountKind::Settlement.as_str(), currency.code())
                .await?
                .ok_or_else(|| {
                    AppError::invalid("currency", format!("this tenant does not hold {currency}"))
                })?;
            if input.kind == TransferKind::Deposit {
                (
                    vec![(settlement.id, amount.get())],
                    vec![(input.debit_account_id.clone(), amount.get())],
                    None,
                )
            } else {
                (
                    vec![(input.debit_account_id.clone(), amount.get())],
                    vec![(settlement.id, amount.get())],
                    None,
                )
            }
        }
    };

    // Restriction of processing (GDPR Art. 18: no new movement may touch a restricted
    // customer's account; a reversal is a correction and stays allowed) is checked by the
    // posting engine on the accounts it loads under lock: exact, and no extra query.

    // The pre-commit check point (KYC limits and monitoring rules plug in here).
    let view = MovementView {
        tenant_id: tenant.as_str(),
        kind: input.kind,
        currency,
        amount,
        debit_account_id: debits.first().map_or("", |(a, _)| a.as_str()),
        credit_account_ids: credits.iter().map(|(a, _)| a.as_str()).collect(),
        initiator: &principal_key,
    };
    let mut refusal = None;
    for check in &core.checks {
        match check.check(&view) {
            CheckDecision::Allow => {}
            CheckDecision::Refuse { code, message } => {
                refusal = Some(Refusal::CheckRefused { code, message });
                break;
            }
            CheckDecision::Review { reason } => {
                refusal = Some(Refusal::CheckRefused {
                    code: "held_for_review",
                    message: format!("held for review by {}: {reason}", check.name()),
                });
                break;
            }
        }
    }
    let mut refusal = refusal.map(refusal_error);
    // The KYC check: tier limits of the customer accounts debited and credited (async: it
    // reads totals). What it reserves is held until the movement is settled.
    let mut kyc_reservation = None;
    if refusal.is_none() {
        match super::kyc::check_movement(
            core,
            &tenant,
            input.kind,
            currency,
            amount.get(),
            &debits,
            &credits,
        )
        .await?
        {
            super::kyc::KycDecision::Allow(r) => kyc_reservation = r,
            super::kyc::KycDecision::Refuse(e) => refusal = Some(e),
        }
    }
    let id = TransferId::generate();
    let now = core.clock.now();
    let audit = AuditBuilder::new(core, meta, Some(actor)).own(
        &format!("{}.create", input.kind.as_str()),
        Some(("transfer", id.as_str())),
        Outcome::Success,
        None,
    );
    if let Some(error) = refusal {
        // A retry of a request that went through answers as it did, not with today's check.
        if let Some(k) = idempotency
            && let Some(stored) = replay(core, &tenant, &key_scope, k).await?
        {
            return Ok(Prepared::Replay(stored));
        }
        // A batch audits its refusals together (one record with counts per code).
        if !batch {
            super::auth::record(
                core,
                &crate::domain::audit::NewAuditEvent {
                    outcome: Outcome::Failure,
                    reason: Some(error.code().to_owned()),
                    ..audit
                },
            )
            .await;
        }
        return Err(MoveError {
            error,
            audited: true,
        });
    }
    // Details and the stored answer are sealed here, before the writer: it never sees a key
    // it has to fetch, and nothing reaches storage in the clear.
    let seal_key = if input.details.is_empty() && idempotency.is_none() {
        None
    } else {
        Some(
            reply_key(
                core,
                &tenant,
                i64::from(!input.details.is_empty()) + i64::from(idempotency.is_some()),
            )
            .await?,
        )
    };
    let details = match (&seal_key, input.details.is_empty()) {
        (Some(key), false) => {
            let col = crate::store::keys::TRANSFER_DETAILS;
            let json = zeroize::Zeroizing::new(
                serde_json::to_vec(&input.details).map_err(AppError::internal)?,
            );
            let sealed = key
                .seal(&col.at(tenant.as_str(), id.as_str()), &json)
                .map_err(AppError::internal)?;
            Some(sealed)
        }
        _ => None,
    };
    let movement = NewMovement {
        id,
        tenant_id: tenant.clone(),
        kind: input.kind,
        currency: currency.code().to_owned(),
        amount: amount.get(),
        debits,
        debit_owner,
        credits,
        reference: input.reference,
        details,
        details_clear: (!input.details.is_empty()).then(|| Box::new(input.details)),
        created_by: principal_key.clone(),
        created_at: now,
        audit,
        idempotency: idempotency.map(|k| NewIdempotency {
            principal_id: key_scope.clone(),
            key: k.key.clone(),
            request_hash: k.request_hash.clone(),
            expires_at: now.plus_seconds(core.settings.idempotency_ttl_seconds),
            seal: seal_key.clone(),
        }),
        render,
        reverses: input.reverses.map(|r| r.link),
        capture_hold: input.capture_hold,
        quiet_refusal: batch,
        actor: Some(actor.actor_check()),
    };
    Ok(Prepared::Ready(Box::new(movement), None, kyc_reservation))
}

/// Turns the writer's result into the request's outcome.
async fn settle(
    core: &Core,
    tenant: &TenantId,
    principal: &str,
    idempotency: Option<&IdempotencyKey>,
    result: PostResult,
) -> Result<MovementOutcome, MoveError> {
    crate::observability::transfer(match &result {
        PostResult::Posted(_) => "posted",
        PostResult::Refused(_) => "refused",
        PostResult::DuplicateKey(_) => "replayed",
    });
    match result {
        PostResult::Posted(p) => Ok(MovementOutcome::Posted(Box::new(p))),
        PostResult::Refused(r) => Err(MoveError {
            error: refusal_error(r),
            audited: true,
        }),
        PostResult::DuplicateKey(stored) => match idempotency {
            Some(k) => Ok(stored_answer(core, tenant, principal, stored, k).await?),
            None => Err(AppError::internal("duplicate key without a key").into()),
        },
    }
}

async fn replay(
    core: &Core,
    tenant: &TenantId,
    principal: &str,
    k: &IdempotencyKey,
) -> AppResult<Option<MovementOutcome>> {
    let Some(stored) = core
        .store
        .get_idempotency(tenant, principal, &k.key, core.clock.now())
        .await?
    else {
        return Ok(None);
    };
    stored_answer(core, tenant, principal, stored, k)
        .await
        .map(Some)
}

/// The stored answer to a key, if the request is the same one; 422 if the key was used with a
/// different request.
async fn stored_answer(
    core: &Core,
    tenant: &TenantId,
    principal: &str,
    stored: crate::store::IdempotencyRecord,
    k: &IdempotencyKey,
) -> AppResult<MovementOutcome> {
    if !crate::crypto::constant_time_eq(stored.request_hash.as_bytes(), k.request_hash.as_bytes()) {
        return Err(AppError::Unprocessable {
            code: "idempotency_key_reused",
            message: "this idempotency key was used with a different request".into(),
        });
    }
    // The stored answer is sealed under the tenant's data key (it may carry transfer details).
    let row = format!("{principal}/{}", k.key);
    let col = crate::store::keys::IDEMPOTENCY_RESPONSES;
    let ctx = col.at(tenant.as_str(), &row);
    let body = core.keyring.open_text(&ctx, &stored.response_body).await?;
    Ok(MovementOutcome::Replayed {
        status: u16::try_from(stored.response_status).unwrap_or(500),
        body: body.to_string(),
    })
}

/// A tenant data key for sealing a stored answer (and the details), `n` encryptions reserved.
async fn reply_key(
    core: &Core,
    tenant: &TenantId,
    n: i64,
) -> AppResult<Arc<crate::crypto::envelope::DataKey>> {
    core.keyring
        .encryption_key(tenant, &super::keys::KeyOwner::Tenant, n)
        .await
}

/// Opens a stored transfer's details (a legacy plaintext description reads as a description).
pub(crate) async fn open_details(core: &Core, p: &mut PostedTransfer) -> AppResult<()> {
    let Some(stored) = p.transfer.details.as_deref() else {
        return Ok(());
    };
    let col = crate::store::keys::TRANSFER_DETAILS;
    let ctx = col.at(&p.transfer.tenant_id, &p.transfer.id);
    if !crate::crypto::envelope::is_ciphertext(stored) {
        p.details = Some(Box::new(TransferDetails::described(stored.to_owned())));
        return Ok(());
    }
    let text = core.keyring.open_text(&ctx, stored).await?;
    p.details = Some(
        serde_json::from_str(&text)
            .map_err(|e| AppError::internal(format!("transfer details: {e}")))?,
    );
    Ok(())
}

/// The API error for a ledger refusal.
pub fn refusal_error(r: Refusal) -> AppError {
    let message = r.to_string();
    match r {
        Refusal::AccountNotFound(_) => AppError::Invalid {
            code: "account_not_found",
            param: None,
            message,
        },
        Refusal::ActorRevoked(r) => r.into(),
        other => AppError::Unprocessable {
            code: other.code(),
            message,
        },
    }
}

/// A transfer and the accounts whose resulting balances the caller may see (`None`: all).
/// Under the `Own` scope a transfer is visible only if one of the caller's accounts is a leg.
pub async fn get_transfer(
    core: &Core,
    actor: &Principal,
    id: &str,
) -> AppResult<(PostedTransfer, Option<HashSet<String>>)> {
    let owner = owner_filter(core, actor, Permission::TransfersRead).await?;
    let tenant = actor.tenant()?;
    let t = match TransferId::parse(id) {
        Some(_) => core.store.get_transfer(tenant, id).await?,
        None => None,
    }
    .ok_or(AppError::NotFound("transfer"))?;
    let mut t = t;
    open_details(core, &mut t).await?;
    let Some(owner) = owner else {
        return Ok((t, None));
    };
    let mut mine = HashSet::new();
    for e in &t.entries {
        if let Some(a) = core.store.get_account(tenant, &e.account_id).await?
            && a.customer_id.as_deref() == Some(owner.as_str())
        {
            mine.insert(a.id);
        }
    }
    if mine.is_empty() {
        return Err(AppError::NotFound("transfer"));
    }
    // A customer sees no staff ids (tipping off): only its own, when it made the transfer.
    t.transfer.created_by = crate::domain::disclosure::customer_actor(
        t.transfer.created_by.take(),
        Some(actor.user_id.as_str()),
    );
    Ok((t, Some(mine)))
}

pub async fn list_transfers(
    core: &Core,
    actor: &Principal,
    mut filter: TransferFilter,
    page: &Page,
) -> AppResult<Listed<PostedTransfer>> {
    filter.customer_id = owner_filter(core, actor, Permission::TransfersRead).await?;
    let own_scope = filter.customer_id.is_some();
    let tenant = actor.tenant()?;
    let mut rows = Vec::new();
    for t in core.store.list_transfers(tenant, &filter, page).await? {
        // The legs (at most 101 entries each) so a list shows who was credited.
        let entries = core
            .store
            .get_transfer(tenant, &t.id)
            .await?
            .map(|p| p.entries)
            .unwrap_or_default();
        let mut p = PostedTransfer {
            transfer: t,
            entries,
            details: None,
        };
        open_details(core, &mut p).await?;
        if own_scope {
            // A customer sees no staff ids (tipping off).
            p.transfer.created_by = crate::domain::disclosure::customer_actor(
                p.transfer.created_by.take(),
                Some(actor.user_id.as_str()),
            );
        }
        rows.push(p);
    }
    Ok(Listed::from_rows(rows, page))
}

/// Most transfers in one batch request.
pub const MAX_BATCH_TRANSFERS: usize = 1000;

/// Each transfer of a batch: its outcome, or why it was refused.
pub type BatchItem = Result<MovementOutcome, MoveError>;

/// Posts up to [`MAX_BATCH_TRANSFERS`] transfers. Each item has its own idempotency key
/// (`<key>#<index>`) when the request has one. Without `atomic`, each transfer stands alone and
/// gets its own result. With `atomic`, all are posted in one transaction or none is; the result
/// says whether the batch committed.
pub async fn move_money_batch(
    core: &Core,
    meta: &RequestMeta,
    actor: &Principal,
    inputs: Vec<(TransferInput, Option<IdempotencyKey>)>,
    atomic: bool,
    render: RenderOutcome,
) -> Result<(bool, Vec<BatchItem>), MoveError> {
    if inputs.is_empty() || inputs.len() > MAX_BATCH_TRANSFERS {
        return Err(AppError::invalid(
            "transfers",
            format!("between 1 and {MAX_BATCH_TRANSFERS} transfers are required"),
        )
        .into());
    }
    refuse_if_over_budget(core, actor)?;
    let result = post_batch(core, meta, actor, inputs, atomic, render).await;
    // Every refusal of the batch, as one audit record with counts per refusal code (a batch of
    // a thousand refusals adds one row to the chain, not a thousand), counted against the
    // credential's refusal budget.
    let mut codes: std::collections::BTreeMap<&'static str, i64> = Default::default();
    match &result {
        Ok((_, items)) => {
            for item in items {
                if let Err(e) = item {
                    *codes.entry(e.error.code()).or_default() += 1;
                }
            }
        }
        Err(e) => *codes.entry(e.error.code()).or_default() += 1,
    }
    let refused: i64 = codes.values().sum();
    if refused > 0 {
        let reason = codes
            .iter()
            .map(|(c, n)| format!("{c}={n}"))
            .collect::<Vec<_>>()
            .join(",");
        super::auth::record(
            core,
            &AuditBuilder::new(core, meta, Some(actor)).own(
                "transfer.batch",
                None,
                Outcome::Failure,
                Some(&reason),
            ),
        )
        .await;
        count_refusals(core, meta, actor, refused).await;
    }
    result
}

async fn post_batch(
    core: &Core,
    meta: &RequestMeta,
    actor: &Principal,
    inputs: Vec<(TransferInput, Option<IdempotencyKey>)>,
    atomic: bool,
    render: RenderOutcome,
) -> Result<(bool, Vec<BatchItem>), MoveError> {
    let tenant = &actor.tenant()?.clone();
    let mut prepared = Vec::with_capacity(inputs.len());
    let mut keys = Vec::with_capacity(inputs.len());
    for (input, key) in inputs {
        let p = prepare(core, meta, actor, input, key.as_ref(), render, true).await;
        if atomic && let Err(e) = p {
            // One invalid transfer fails an atomic batch before anything is posted.
            return Err(e);
        }
        prepared.push(p);
        keys.push(key);
    }
    if atomic {
        let mut movements = Vec::new();
        let mut slots = Vec::new();
        let mut items: Vec<Option<BatchItem>> = Vec::with_capacity(prepared.len());
        let mut guards = Vec::new();
        for (i, p) in prepared.into_iter().enumerate() {
            match p {
                Ok(Prepared::Replay(o)) => items.push(Some(Ok(o))),
                Ok(Prepared::Ready(m, g, kyc)) => {
                    movements.push(*m);
                    slots.push(i);
                    guards.push((g, kyc));
                    items.push(None);
                }
                Err(e) => items.push(Some(Err(e))),
            }
        }
        let (committed, results) = core.store.post_movements_atomic(&movements).await?;
        for (slot, r) in slots.into_iter().zip(results) {
            let item = match (committed, r) {
                (true, r) | (false, r @ PostResult::DuplicateKey(_)) => {
                    settle(
                        core,
                        tenant,
                        &actor.idempotency_scope(),
                        keys[slot].as_ref(),
                        r,
                    )
                    .await
                }
                (false, PostResult::Refused(refusal)) => Err(MoveError {
                    error: refusal_error(refusal),
                    audited: false,
                }),
                (false, _) => Err(AppError::Unprocessable {
                    code: "batch_aborted",
                    message: "not posted: another transfer of this atomic batch was refused".into(),
                }
                .into()),
            };
            items[slot] = Some(item);
        }
        drop(guards);
        let items = items
            .into_iter()
            .map(|i| {
                i.unwrap_or_else(|| Err(AppError::internal("batch item without a result").into()))
            })
            .collect();
        return Ok((committed, items));
    }
    // Independent transfers: queue them all (the writer groups them), then collect.
    let mut pending = Vec::with_capacity(prepared.len());
    let mut guards = Vec::new();
    for p in prepared {
        pending.push(match p {
            Ok(Prepared::Replay(o)) => Err(Some(Ok(o))),
            Ok(Prepared::Ready(m, g, kyc)) => {
                guards.push((g, kyc));
                Ok(core.ledger.enqueue(*m).await?)
            }
            Err(e) => Err(Some(Err(e))),
        });
    }
    let mut items = Vec::with_capacity(pending.len());
    for (i, p) in pending.into_iter().enumerate() {
        items.push(match p {
            Err(done) => done
                .unwrap_or_else(|| Err(AppError::internal("batch item without a result").into())),
            Ok(rx) => match rx.await {
                Ok(Ok(r)) => {
                    settle(
                        core,
                        tenant,
                        &actor.idempotency_scope(),
                        keys[i].as_ref(),
                        r,
                    )
                    .await
                }
                Ok(Err(e)) => Err(AppError::from(e).into()),
                Err(_) => Err(AppError::internal("the ledger writer dropped a movement").into()),
            },
        });
    }
    drop(guards);
    Ok((true, items))
}

/// What to reverse: everything left (neither given), an amount (a transfer with one credit
/// leg, or everything left of one with several), or chosen legs with their amounts.
pub struct ReverseInput {
    pub amount: Option<i64>,
    pub legs: Option<Vec<(String, i64)>>,
}

/// Reverses all or part of a transfer (what is left of it at most) with a new, linked transfer
/// that debits the original's credit legs and credits its debit account.
pub async fn reverse(
    core: &Core,
    meta: &RequestMeta,
    actor: &Principal,
    id: &str,
    what: ReverseInput,
    idempotency: Option<IdempotencyKey>,
    render: RenderOutcome,
) -> Result<MovementOutcome, MoveError> {
    let tenant = actor.tenant()?;
    // A retry of a reversal that went through replays it, before "nothing is left" applies.
    if let Some(k) = &idempotency
        && let Some(stored) = replay(core, tenant, &actor.idempotency_scope(), k).await?
    {
        return Ok(stored);
    }
    let original = match TransferId::parse(id) {
        Some(_) => core.store.get_transfer(tenant, id).await?,
        None => None,
    }
    .ok_or(AppError::NotFound("transfer"))?;
    let t = &original.transfer;
    if t.kind == "reversal" {
        return Err(AppError::Unprocessable {
            code: "reversal_not_supported",
            message: "a reversal cannot itself be reversed; post a new transfer".into(),
        }
        .into());
    }
    // What each credit leg received (an account credited twice counts once, summed).
    let mut ceilings: Vec<(String, i64)> = Vec::new();
    for e in original.entries.iter().filter(|e| e.direction == "credit") {
        match ceilings.iter_mut().find(|(a, _)| *a == e.account_id) {
            Some((_, n)) => *n += e.amount,
            None => ceilings.push((e.account_id.clone(), e.amount)),
        }
    }
    let done = core.store.reversed_legs(tenant, &t.id).await?;
    let left = |account: &str| -> i64 {
        let ceiling = ceilings
            .iter()
            .find(|(a, _)| a == account)
            .map_or(0, |(_, n)| *n);
        ceiling
            - done
                .iter()
                .find(|(a, _)| a == account)
                .map_or(0, |(_, n)| *n)
    };
    let remaining: Vec<(String, i64)> = ceilings
        .iter()
        .map(|(a, _)| (a.clone(), left(a)))
        .filter(|(_, n)| *n > 0)
        .collect();
    let remaining_total: i64 = remaining.iter().map(|(_, n)| n).sum();
    if remaining_total <= 0 {
        return Err(refusal_error(Refusal::ReversalExceedsOriginal).into());
    }
    let debits = match (what.amount, what.legs) {
        (_, Some(legs)) => {
            if legs.is_empty() || legs.len() > ceilings.len() {
                return Err(AppError::invalid(
                    "legs",
                    "name between one and all of the original's credit legs",
                )
                .into());
            }
            for (i, (account, amount)) in legs.iter().enumerate() {
                Amount::parse(*amount)
                    .map_err(|m| AppError::invalid(format!("legs[{i}].amount"), m))?;
                if !ceilings.iter().any(|(a, _)| a == account) {
                    return Err(AppError::invalid(
                        format!("legs[{i}].account_id"),
                        "not a credit leg of the original transfer",
                    )
                    .into());
                }
                if legs.iter().filter(|(a, _)| a == account).count() > 1 {
                    return Err(AppError::invalid(
                        format!("legs[{i}].account_id"),
                        "each leg may be named once",
                    )
                    .into());
                }
                if *amount > left(account) {
                    return Err(refusal_error(Refusal::ReversalExceedsOriginal).into());
                }
            }
            let sum: i64 = legs.iter().map(|(_, n)| n).sum();
            if let Some(a) = what.amount
                && a != sum
            {
                return Err(AppError::invalid(
                    "amount",
                    format!("the legs sum to {sum}, not the amount {a}"),
                )
                .into());
            }
            legs
        }
        (None, None) => remaining,
        (Some(amount), None) => {
            Amount::parse(amount).map_err(|m| AppError::invalid("amount", m))?;
            if amount > remaining_total {
                return Err(refusal_error(Refusal::ReversalExceedsOriginal).into());
            }
            match remaining.as_slice() {
                [(account, _)] => vec![(account.clone(), amount)],
                _ if amount == remaining_total => remaining,
                _ => {
                    return Err(AppError::invalid(
                        "legs",
                        "the transfer has several credit legs: say how much each gives back",
                    )
                    .into());
                }
            }
        }
    };
    let amount: i64 = debits.iter().map(|(_, n)| n).sum();
    let input = TransferInput {
        kind: TransferKind::Reversal,
        currency: t.currency.clone(),
        amount,
        debit_account_id: debits.first().map(|(a, _)| a.clone()).unwrap_or_default(),
        credits: vec![(t.debit_account_id.clone(), amount)],
        reference: None,
        details: TransferDetails::described(format!("reversal of {}", t.id)),
        reverses: Some(ReversalLegs {
            link: crate::store::Reverses {
                original: t.id.clone(),
                // An unknown stored kind reverses as a plain transfer (touches no system account).
                original_kind: TransferKind::parse(&t.kind).unwrap_or(TransferKind::Transfer),
                ceilings,
            },
            debits,
        }),
        capture_hold: None,
    };
    move_money(core, meta, actor, input, idempotency, render).await
}

/// A hold request, parsed from the wire.
pub struct HoldInput {
    pub account_id: String,
    /// The account a capture will credit by default; it shows the amount as pending credits.
    pub credit_account_id: Option<String>,
    pub currency: String,
    pub amount: i64,
    pub expires_in_seconds: i64,
    pub reference: Option<String>,
}

/// What creating a hold answered: the hold, or the stored answer of an earlier identical request.
pub enum HoldOutcome {
    Created(Box<crate::store::HoldRecord>),
    Replayed { status: u16, body: String },
}

/// Reserves part of an account's available balance until its expiry. With an idempotency key,
/// a retry answers what the first request answered and reserves nothing more.
pub async fn create_hold(
    core: &Core,
    meta: &RequestMeta,
    actor: &Principal,
    input: HoldInput,
    idempotency: Option<IdempotencyKey>,
    render: fn(&crate::store::HoldRecord) -> (u16, String),
) -> AppResult<HoldOutcome> {
    let tenant = actor.tenant()?;
    refuse_if_over_budget(core, actor)?;
    let principal_key = actor.user_id.to_string();
    let key_scope = actor.idempotency_scope();
    let _guard = match &idempotency {
        None => None,
        Some(k) => {
            if let Some(MovementOutcome::Replayed { status, body }) =
                replay(core, tenant, &key_scope, k).await?
            {
                return Ok(HoldOutcome::Replayed { status, body });
            }
            Some(core.inflight.claim_key(tenant, &key_scope, k)?)
        }
    };
    let currency =
        Currency::parse(&input.currency).map_err(|m| AppError::invalid("currency", m))?;
    let amount = Amount::parse(input.amount).map_err(|m| AppError::invalid("amount", m))?;
    // A hold is a money movement in waiting: the same step-up threshold as a transfer.
    if actor
        .policy
        .transfer_needs_step_up(currency.code(), amount.get())
    {
        super::security::require_step_up(core, meta, actor).await?;
    }
    if !(HOLD_MIN_SECONDS..=HOLD_MAX_SECONDS).contains(&input.expires_in_seconds) {
        return Err(AppError::invalid(
            "expires_in_seconds",
            format!("must be between {HOLD_MIN_SECONDS} and {HOLD_MAX_SECONDS}"),
        ));
    }
    for (param, id) in [
        ("account_id", Some(&input.account_id)),
        ("credit_account_id", input.credit_account_id.as_ref()),
    ] {
        if let Some(id) = id
            && AccountId::parse(id).is_none()
        {
            return Err(AppError::Invalid {
                code: "account_not_found",
                param: Some(param.into()),
                message: "no such account".into(),
            });
        }
    }
    if input.credit_account_id.as_ref() == Some(&input.account_id) {
        return Err(AppError::invalid(
            "credit_account_id",
            "a hold cannot be destined for the held account",
        ));
    }
    let mut touched = vec![input.account_id.as_str()];
    touched.extend(input.credit_account_id.as_deref());
    super::privacy::refuse_if_restricted(core, tenant, &touched).await?;
    let now = core.clock.now();
    let id = crate::ids::HoldId::generate();
    let hold = crate::store::NewHold {
        id: id.clone(),
        tenant_id: tenant.clone(),
        account_id: input.account_id,
        owner: None,
        credit_account_id: input.credit_account_id,
        currency: currency.code().to_owned(),
        amount: amount.get(),
        expires_at: now.plus_seconds(input.expires_in_seconds),
        reference: input.reference,
        created_by: principal_key.clone(),
        created_at: now,
        actor: Some(actor.actor_check()),
    };
    let ev = AuditBuilder::new(core, meta, Some(actor)).own(
        "hold.create",
        Some(("hold", id.as_str())),
        Outcome::Success,
        None,
    );
    let seal_key = match &idempotency {
        Some(_) => Some(reply_key(core, tenant, 1).await?),
        None => None,
    };
    let key = idempotency.as_ref().map(|k| crate::store::HoldKey {
        key: NewIdempotency {
            principal_id: key_scope.clone(),
            key: k.key.clone(),
            request_hash: k.request_hash.clone(),
            expires_at: now.plus_seconds(core.settings.idempotency_ttl_seconds),
            seal: seal_key.clone(),
        },
        render,
    });
    match core.store.create_hold(&hold, key.as_ref(), &[ev]).await {
        Ok(Ok(h)) => Ok(HoldOutcome::Created(Box::new(h))),
        Ok(Err(refusal)) => {
            count_refusals(core, meta, actor, 1).await;
            Err(refusal_error(refusal))
        }
        // Another instance committed this key first: answer what it answered.
        Err(StoreError::Conflict { .. }) if idempotency.is_some() => match idempotency.as_ref() {
            Some(k) => match replay(core, tenant, &key_scope, k).await? {
                Some(MovementOutcome::Replayed { status, body }) => {
                    Ok(HoldOutcome::Replayed { status, body })
                }
                _ => Err(AppError::internal(
                    "idempotency key vanished after a conflict",
                )),
            },
            None => Err(AppError::internal("conflict without a key")),
        },
        Err(e) => Err(e.into()),
    }
}

fn in_flight() -> AppError {
    AppError::Conflict {
        code: "idempotency_key_in_flight",
        param: None,
        message: "a request with this idempotency key is still being processed; retry later".into(),
    }
}

/// An active hold past its expiry reads as expired.
fn effective_hold(
    mut h: crate::store::HoldRecord,
    now: crate::clock::Timestamp,
) -> crate::store::HoldRecord {
    if h.status == "active" && h.expires_at <= now.as_micros() {
        h.status = "expired".into();
    }
    h
}

pub async fn get_hold(
    core: &Core,
    actor: &Principal,
    id: &str,
) -> AppResult<crate::store::HoldRecord> {
    let hold = match crate::ids::HoldId::parse(id) {
        Some(_) => core.store.get_hold(actor.tenant()?, id).await?,
        None => None,
    }
    .ok_or(AppError::NotFound("hold"))?;
    // Visible only to those who may see its account.
    visible_account(core, actor, &hold.account_id, Permission::AccountsRead)
        .await
        .map_err(|_| AppError::NotFound("hold"))?;
    Ok(effective_hold(hold, core.clock.now()))
}

pub async fn void_hold(
    core: &Core,
    meta: &RequestMeta,
    actor: &Principal,
    id: &str,
) -> AppResult<crate::store::HoldRecord> {
    let hold = get_hold(core, actor, id).await?;
    let ev = AuditBuilder::new(core, meta, Some(actor)).own(
        "hold.void",
        Some(("hold", &hold.id)),
        Outcome::Success,
        None,
    );
    core.store
        .void_hold(
            actor.tenant()?,
            &hold.id,
            core.clock.now(),
            Some(&actor.actor_check()),
            &[ev],
        )
        .await?
        .ok_or_else(|| refusal_error(Refusal::HoldNotActive))
}

/// Captures all or part of a hold into a transfer to `credit_account_id`; the rest is released.
#[allow(clippy::too_many_arguments)]
pub async fn capture_hold(
    core: &Core,
    meta: &RequestMeta,
    actor: &Principal,
    id: &str,
    credit_account_id: Option<String>,
    amount: Option<i64>,
    idempotency: Option<IdempotencyKey>,
    render: RenderOutcome,
) -> Result<MovementOutcome, MoveError> {
    let hold = get_hold(core, actor, id).await?;
    let amount = amount.unwrap_or(hold.amount);
    // A hold that names its destination is captured there and nowhere else: the destination
    // was part of what was authorised when the hold was placed.
    if let (Some(named), Some(asked)) = (&hold.credit_account_id, &credit_account_id)
        && named != asked
    {
        return Err(AppError::invalid(
            "credit_account_id",
            "the hold names the account it is captured to; a capture cannot redirect it",
        )
        .into());
    }
    let Some(credit_account_id) = credit_account_id.or_else(|| hold.credit_account_id.clone())
    else {
        return Err(AppError::invalid(
            "credit_account_id",
            "required: the hold names no account to credit",
        )
        .into());
    };
    if credit_account_id == hold.account_id {
        return Err(AppError::invalid(
            "credit_account_id",
            "a capture cannot credit the held account",
        )
        .into());
    }
    let input = TransferInput {
        kind: TransferKind::Capture,
        currency: hold.currency.clone(),
        amount,
        debit_account_id: hold.account_id.clone(),
        credits: vec![(credit_account_id, amount)],
        reference: None,
        details: TransferDetails::described(format!("capture of {}", hold.id)),
        reverses: None,
        capture_hold: Some(hold.id.clone()),
    };
    move_money(core, meta, actor, input, idempotency, render).await
}

/// Holds past expiry stop counting against the available balance (and as pending credits) at
/// once, even before the next movement on the account releases them.
async fn with_expired_released(
    core: &Core,
    tenant: &TenantId,
    mut a: AccountRecord,
) -> AppResult<AccountRecord> {
    let (debits, credits) = core
        .store
        .expired_holds(tenant, &a.id, core.clock.now())
        .await?;
    a.pending_debits -= debits;
    a.pending_credits -= credits;
    Ok(a)
}

/// The system accounts a tenant gets for each of its currencies.
pub fn system_accounts(
    tenant: &TenantId,
    currencies: &[Currency],
    now: crate::clock::Timestamp,
) -> Vec<NewAccount> {
    currencies
        .iter()
        .flat_map(|c| {
            AccountKind::SYSTEM.into_iter().map(move |kind| NewAccount {
                id: AccountId::generate(),
                tenant_id: tenant.clone(),
                customer_id: None,
                kind,
                currency: c.code().to_owned(),
                overdraft_limit: kind.initial_overdraft(),
                created_at: now,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_in_flight_key_is_held_until_its_guard_drops() {
        let set = InFlight::default();
        let first = set.claim("k".into());
        assert!(first.is_some());
        // A second claim fails without disturbing the first (and without deadlocking).
        assert!(set.claim("k".into()).is_none());
        assert!(set.claim("k".into()).is_none());
        drop(first);
        assert!(set.claim("k".into()).is_some());
    }
}
