//! The ledger's movement types: the command the core applies, and the records it produces.
//! Plain data: no I/O, no HTTP, no SQL (the store maps rows to these types).

use super::Amount;
use crate::clock::Timestamp;
use crate::domain::audit::NewAuditEvent;
use crate::domain::authz::ActorCheck;
use crate::domain::currency::Currency;
use crate::ids::{AccountId, CustomerId, HoldId, TenantId, TransferId};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferRecord {
    pub id: String,
    pub tenant_id: String,
    pub kind: String,
    pub currency: String,
    pub amount: i64,
    pub debit_account_id: String,
    pub reference: Option<String>,
    /// The transfer's details (description, metadata, counterparty) sealed under the tenant's
    /// data key; see `service::ledger::TransferDetails`.
    pub details: Option<String>,
    pub reverses_id: Option<String>,
    pub created_by: Option<String>,
    pub created_at: i64,
    /// The customer the movement was counted against when its accounts do not say (see
    /// `TransferCommand::subject`); `None` otherwise.
    pub subject_customer_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryRecord {
    pub id: String,
    pub tenant_id: String,
    pub transfer_id: String,
    pub account_id: String,
    /// `debit` or `credit`.
    pub direction: String,
    pub amount: i64,
    pub balance_after: i64,
    pub account_seq: i64,
    pub created_at: i64,
    /// The kind of a system account (`settlement`, …) when the leg is on one; `None` for a
    /// customer account. Not a column: read joined with the account, so views can hide system
    /// ids from callers without `accounts:read_system`.
    pub system: Option<String>,
}

/// A stored idempotent response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    pub request_hash: String,
    pub response_status: i64,
    pub response_body: String,
}

/// The idempotency key to record with a movement, in the same transaction. The key's row keeps
/// the outcome's facts (`domain::ledger::StoredOutcome`: the transfer or hold it created, or the
/// typed refusal), never a rendered answer: they carry no personal data, so they are stored as
/// they are, and a replay renders them again.
#[derive(Debug, Clone)]
pub struct NewIdempotency {
    pub principal_id: String,
    pub key: String,
    pub request_hash: String,
    pub expires_at: Timestamp,
}

/// A transfer as posted, with the balances it left.
#[derive(Debug, Clone)]
pub struct PostedTransfer {
    pub transfer: TransferRecord,
    pub entries: Vec<EntryRecord>,
    /// The details in the clear, in memory only: set by the writer from the movement, or by
    /// the service after opening `transfer.details`.
    pub details: Option<Box<super::TransferDetails>>,
}

/// One money movement, as the ledger core applies it: built once from a request (a transfer,
/// a deposit or withdrawal, a batch item, a capture or a reversal) and posted by the writer.
#[derive(Debug, Clone)]
pub struct TransferCommand {
    pub id: crate::ids::TransferId,
    pub tenant_id: TenantId,
    pub kind: super::TransferKind,
    pub currency: Currency,
    /// The transfer's total.
    pub amount: Amount,
    /// The debit legs: one for every kind but the reversal of a transfer with several credit
    /// legs, which debits each of them back.
    pub debits: Vec<(AccountId, Amount)>,
    /// When set, the debit account must belong to this customer (ownership).
    pub debit_owner: Option<CustomerId>,
    pub credits: Vec<(AccountId, Amount)>,
    pub reference: Option<String>,
    /// The details, already sealed under the tenant's data key for this transfer's row.
    pub details: Option<String>,
    /// The same details in the clear, for rendering the answer; never stored.
    pub details_clear: Option<Box<super::TransferDetails>>,
    pub created_by: String,
    pub created_at: Timestamp,
    pub audit: NewAuditEvent,
    pub idempotency: Option<NewIdempotency>,
    /// Set for a reversal: what it reverses, and how much each debited leg may take back.
    pub reverses: Option<Reverses>,
    /// Set for a hold capture: the hold released by this movement.
    pub capture_hold: Option<HoldId>,
    /// A refusal of this movement writes no audit record of its own: it is part of a batch,
    /// whose refusals are audited as one record with counts per code.
    pub quiet_refusal: bool,
    /// Who moves the money, re-checked in the posting transaction (`None`: no principal).
    pub actor: Option<ActorCheck>,
    /// The tenant's KYC limits for `currency`, when it has any (`None`: no KYC limit applies).
    /// The engine applies them to the tiers, balances and running totals it reads under lock.
    pub kyc: Option<std::sync::Arc<super::KycLimits>>,
    /// The customer limits and running totals count this movement against when its accounts
    /// do not say (cash paid in at a counter by a walk-in customer). It must be a customer of
    /// the tenant; the movement then counts as that customer's outgoing money.
    pub subject: Option<CustomerId>,
}

/// What the ledger core applies: a money movement, or a hold placed or voided. Every change
/// to balances and reservations is one of these, posted through the one writer.
#[derive(Debug, Clone)]
pub enum LedgerCommand {
    Transfer(TransferCommand),
    PlaceHold(HoldCommand),
    VoidHold(VoidHoldCommand),
}

impl From<TransferCommand> for LedgerCommand {
    fn from(m: TransferCommand) -> Self {
        LedgerCommand::Transfer(m)
    }
}

impl LedgerCommand {
    pub fn tenant_id(&self) -> &TenantId {
        match self {
            LedgerCommand::Transfer(m) => &m.tenant_id,
            LedgerCommand::PlaceHold(h) => &h.tenant_id,
            LedgerCommand::VoidHold(v) => &v.tenant_id,
        }
    }

    pub fn created_at(&self) -> Timestamp {
        match self {
            LedgerCommand::Transfer(m) => m.created_at,
            LedgerCommand::PlaceHold(h) => h.created_at,
            LedgerCommand::VoidHold(v) => v.created_at,
        }
    }

    pub fn actor(&self) -> Option<&ActorCheck> {
        match self {
            LedgerCommand::Transfer(m) => m.actor.as_ref(),
            LedgerCommand::PlaceHold(h) => h.actor.as_ref(),
            LedgerCommand::VoidHold(v) => v.actor.as_ref(),
        }
    }

    pub fn idempotency(&self) -> Option<&NewIdempotency> {
        match self {
            LedgerCommand::Transfer(m) => m.idempotency.as_ref(),
            LedgerCommand::PlaceHold(h) => h.idempotency.as_ref(),
            LedgerCommand::VoidHold(_) => None,
        }
    }

    pub fn audit(&self) -> &NewAuditEvent {
        match self {
            LedgerCommand::Transfer(m) => &m.audit,
            LedgerCommand::PlaceHold(h) => &h.audit,
            LedgerCommand::VoidHold(v) => &v.audit,
        }
    }

    /// The money leaving an account that the step-up rule weighs: a transfer out of an account
    /// (a transfer, withdrawal or capture) or a hold (a movement in waiting).
    pub fn outgoing(&self) -> Option<(Currency, Amount)> {
        match self {
            LedgerCommand::Transfer(m) => {
                m.kind.sends_money_out().then_some((m.currency, m.amount))
            }
            LedgerCommand::PlaceHold(h) => Some((h.currency, h.amount)),
            LedgerCommand::VoidHold(_) => None,
        }
    }
}

/// A hold to place: reserves `amount` of `account_id`'s available balance (and shows it as
/// pending credits on `credit_account_id`) until it expires, is captured or is voided.
#[derive(Debug, Clone)]
pub struct HoldCommand {
    pub id: HoldId,
    pub tenant_id: TenantId,
    pub account_id: AccountId,
    /// When set, the held account must belong to this customer.
    pub owner: Option<CustomerId>,
    pub credit_account_id: Option<AccountId>,
    pub currency: Currency,
    pub amount: Amount,
    pub expires_at: Timestamp,
    pub reference: Option<String>,
    pub created_by: String,
    pub created_at: Timestamp,
    pub audit: NewAuditEvent,
    /// Recorded only when the hold is placed (a refused hold can be retried with its key).
    pub idempotency: Option<NewIdempotency>,
    pub actor: Option<ActorCheck>,
}

/// A hold to void: its reservation is released.
#[derive(Debug, Clone)]
pub struct VoidHoldCommand {
    pub tenant_id: TenantId,
    pub hold: HoldId,
    pub created_at: Timestamp,
    pub audit: NewAuditEvent,
    pub actor: Option<ActorCheck>,
}

/// A hold the core placed: a payment hold (`HoldCommand`), or a review hold reserving the money
/// of a movement a pre-commit check sent to review (nothing was posted; the money stays
/// reserved on its debit account, and shown on its credit account when it has one, until the
/// review decides).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedHold {
    pub id: String,
    pub tenant_id: String,
    pub account_id: String,
    /// The credit account (a review hold's, when the movement had exactly one).
    pub credit_account_id: Option<String>,
    pub currency: String,
    pub amount: i64,
    pub expires_at: i64,
    pub reference: Option<String>,
    pub created_by: String,
    pub created_at: i64,
    /// `payment` or `review`.
    pub purpose: &'static str,
    /// For a review hold: the check that asked for review, and why.
    pub review: Option<(&'static str, String)>,
}

/// A reversal's link to its original: per account, what that leg received in the original (the
/// most it can ever give back across all reversals).
#[derive(Debug, Clone)]
pub struct Reverses {
    pub original: TransferId,
    /// The original's kind: which system accounts the reversal may touch follows from it.
    pub original_kind: super::TransferKind,
    pub ceilings: Vec<(AccountId, i64)>,
}

/// What posting one movement did.
#[derive(Debug, Clone)]
pub enum PostResult {
    Posted(PostedTransfer),
    Refused(super::Refusal),
    /// A pre-commit check sent the movement to review: the hold that reserves its money.
    Reviewed(PlacedHold),
    /// A hold placed (`LedgerCommand::PlaceHold`).
    HoldPlaced(PlacedHold),
    /// A hold voided (`LedgerCommand::VoidHold`): its id.
    HoldVoided(String),
    /// Another request with the same idempotency key committed first: its stored answer.
    DuplicateKey(IdempotencyRecord),
}
