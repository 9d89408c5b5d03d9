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
    AccountKind, Amount, CheckedTransfer, InvalidTransfer, LedgerCommand, OUTCOME_PREFIX, Refusal,
    StoredOutcome, TransferDetails, TransferKind, TransferRequest,
};
use crate::error::{AppError, AppResult};
use crate::ids::{AccountId, CustomerId, TenantId, TransferId};
use crate::store::{
    AccountRecord, CustomerRecord, EntryRecord, NewAccount, NewIdempotency, Page, PostResult,
    PostedTransfer, Store, StoreError, TransferCommand, TransferFilter,
};

mod accounts;
mod batch;
mod holds;
mod idempotency;
mod movements;
mod reversals;
mod writer;

pub use accounts::*;
pub use batch::*;
pub use holds::*;
pub use idempotency::*;
pub use movements::*;
pub use reversals::*;
pub use writer::*;

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

/// What a money-moving request produced. The HTTP layer renders each (once).
pub enum MovementOutcome {
    Posted(Box<PostedTransfer>),
    /// A retry of a request that posted: the transfer it posted, read back (transfers and their
    /// entries are append-only, so it shows the balances right after the movement).
    Replayed(Box<PostedTransfer>),
    /// A retry of a request the ledger refused: the same refusal.
    ReplayedRefusal(Refusal),
    /// A pre-commit check sent the movement to review: nothing posted, and this hold reserves
    /// its money until the review decides (`replayed`: a retry's answer).
    Reviewed {
        hold: Box<crate::store::HoldRecord>,
        replayed: bool,
    },
    /// A retry answered from a body rendered and stored by a version before stored outcomes.
    ReplayedBody {
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

/// The API error for a request that cannot become a movement.
fn invalid_transfer(e: InvalidTransfer) -> AppError {
    match e {
        InvalidTransfer::Param { param, message } => AppError::invalid(param, message),
        // Answered exactly as the ledger answers an account it does not hold.
        InvalidTransfer::UnknownAccount(id) => refusal_error(Refusal::AccountNotFound(id)),
    }
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
        Refusal::StepUpRequired { session: true } => AppError::StepUpRequired,
        Refusal::StepUpRequired { session: false } => AppError::StepUpImpossible,
        Refusal::KycLimit { param, message } => AppError::Refused {
            code: crate::domain::ledger::KYC_LIMIT_CODE,
            param: Some(param),
            message,
        },
        other => AppError::Unprocessable {
            code: other.code(),
            message,
        },
    }
}
