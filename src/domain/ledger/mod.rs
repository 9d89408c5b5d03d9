//! Ledger rules: amounts, account kinds and states, and the reasons a money movement is refused.
//!
//! Every transfer debits one account and credits one or more accounts of the same currency by
//! the same total, so the sum of all balances per tenant and currency stays zero. Entries are
//! never changed; corrections are new transfers.

use std::collections::BTreeMap;
use std::fmt;

mod command;
pub mod engine;
pub mod extension;
mod request;

pub use command::{
    EntryRecord, HoldCommand, IdempotencyRecord, LedgerCommand, NewIdempotency, PlacedHold,
    PostResult, PostedTransfer, Reverses, TransferCommand, TransferRecord, VoidHoldCommand,
};
pub use extension::{
    CheckContext, CheckDecision, Checks, CounterKey, KycLimits, Period, PreCommitCheck, SideWrite,
    Verdict,
};
pub use request::{CheckedTransfer, InvalidTransfer, MAX_REFERENCE_CHARS, TransferRequest};

/// The largest single amount accepted, in minor units (10^15: ten trillion of a 2-decimal
/// currency). Keeps every sum far from i64 overflow.
pub const MAX_AMOUNT: i64 = 1_000_000_000_000_000;

/// The overdraft of system settlement accounts: money entering the platform is drawn from them,
/// so they go as negative as the platform's total deposits.
pub const SETTLEMENT_OVERDRAFT: i64 = 4_000_000_000_000_000_000;

/// The most credit legs one transfer may have (`credits`; at least one).
pub const MAX_CREDIT_LEGS: usize = 100;

/// Limits of a hold's lifetime (`expires_in_seconds`): a minute to 30 days.
pub const HOLD_MIN_SECONDS: i64 = 60;
pub const HOLD_MAX_SECONDS: i64 = 30 * 86_400;

/// A positive amount in minor units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Amount(i64);

impl Amount {
    pub fn parse(v: i64) -> Result<Self, String> {
        if v <= 0 {
            Err("must be a positive integer number of minor units".into())
        } else if v > MAX_AMOUNT {
            Err(format!("must be at most {MAX_AMOUNT} minor units"))
        } else {
            Ok(Self(v))
        }
    }

    pub const fn get(self) -> i64 {
        self.0
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What an account is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountKind {
    Customer,
    /// Money entering and leaving the platform.
    Settlement,
    Fees,
    Suspense,
}

impl AccountKind {
    pub fn parse(s: &str) -> Option<AccountKind> {
        [
            AccountKind::Customer,
            AccountKind::Settlement,
            AccountKind::Fees,
            AccountKind::Suspense,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }

    pub const fn is_system(self) -> bool {
        !matches!(self, AccountKind::Customer)
    }

    pub const SYSTEM: [AccountKind; 3] = [
        AccountKind::Settlement,
        AccountKind::Fees,
        AccountKind::Suspense,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            AccountKind::Customer => "customer",
            AccountKind::Settlement => "settlement",
            AccountKind::Fees => "fees",
            AccountKind::Suspense => "suspense",
        }
    }

    /// The overdraft a new account of this kind starts with.
    pub const fn initial_overdraft(self) -> i64 {
        match self {
            AccountKind::Settlement => SETTLEMENT_OVERDRAFT,
            _ => 0,
        }
    }
}

/// How a transfer came about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferKind {
    Transfer,
    Deposit,
    Withdrawal,
    Reversal,
    Capture,
}

impl TransferKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            TransferKind::Transfer => "transfer",
            TransferKind::Deposit => "deposit",
            TransferKind::Withdrawal => "withdrawal",
            TransferKind::Reversal => "reversal",
            TransferKind::Capture => "capture",
        }
    }
}

/// A kind of money movement, as the account rules see it: the transfer kinds, a hold (which
/// reserves without posting), and a reversal together with the kind it reverses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Movement {
    Transfer,
    Deposit,
    Withdrawal,
    Hold,
    Capture,
    /// The reversal of a transfer of the given kind.
    Reversal(TransferKind),
}

/// THE table of which movement kinds may touch which system accounts (debit, credit or hold):
/// every other pair is refused by the posting engine, whatever the credential. Customer
/// accounts take every movement. Later kinds (fees, FX, remittance) extend this table.
pub const SYSTEM_ACCOUNT_MOVEMENTS: &[(AccountKind, &[Movement])] = &[
    (
        AccountKind::Settlement,
        &[
            Movement::Deposit,
            Movement::Withdrawal,
            Movement::Reversal(TransferKind::Deposit),
            Movement::Reversal(TransferKind::Withdrawal),
        ],
    ),
    (AccountKind::Fees, &[]),
    (AccountKind::Suspense, &[]),
];

impl Movement {
    /// The movement a transfer of `kind` is (`original` is what a reversal reverses).
    pub fn of(kind: TransferKind, original: Option<TransferKind>) -> Movement {
        match kind {
            TransferKind::Transfer => Movement::Transfer,
            TransferKind::Deposit => Movement::Deposit,
            TransferKind::Withdrawal => Movement::Withdrawal,
            TransferKind::Capture => Movement::Capture,
            TransferKind::Reversal => {
                Movement::Reversal(original.unwrap_or(TransferKind::Reversal))
            }
        }
    }

    /// Whether this movement may debit, credit or hold an account of `kind`.
    pub fn may_touch(self, kind: AccountKind) -> bool {
        if !kind.is_system() {
            return true;
        }
        SYSTEM_ACCOUNT_MOVEMENTS
            .iter()
            .find(|(k, _)| *k == kind)
            .is_some_and(|(_, allowed)| allowed.contains(&self))
    }
}

impl TransferKind {
    /// Whether this kind sends money out of a (customer) account: what the step-up threshold
    /// and KYC's outgoing limits and totals weigh.
    pub const fn sends_money_out(self) -> bool {
        matches!(
            self,
            TransferKind::Transfer | TransferKind::Withdrawal | TransferKind::Capture
        )
    }

    /// Whether this kind brings money into a (customer) account: what KYC's balance ceiling
    /// weighs.
    pub const fn brings_money_in(self) -> bool {
        matches!(
            self,
            TransferKind::Transfer | TransferKind::Deposit | TransferKind::Capture
        )
    }

    pub fn parse(s: &str) -> Option<TransferKind> {
        [
            TransferKind::Transfer,
            TransferKind::Deposit,
            TransferKind::Withdrawal,
            TransferKind::Reversal,
            TransferKind::Capture,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// Why the ledger refused a movement. Each has a stable API code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no such account: {0}")]
    AccountNotFound(String),
    #[error("account {account} holds {account_currency}, not {currency}")]
    CurrencyMismatch {
        account: String,
        account_currency: String,
        currency: String,
    },
    #[error("account {0} has insufficient available funds")]
    InsufficientFunds(String),
    #[error("account {0} is frozen and refuses debits")]
    AccountFrozen(String),
    #[error("account {0} is closed")]
    AccountClosed(String),
    #[error("a transfer with reference `{0}` already exists")]
    DuplicateReference(String),
    #[error("{message}")]
    CheckRefused { code: &'static str, message: String },
    /// A KYC tier limit (`param` names the amount or leg at fault, or `currency` when the
    /// customer's tier may not use the currency at all).
    #[error("{message}")]
    KycLimit { param: String, message: String },
    /// A movement's explicit subject customer is not an active customer of the tenant.
    #[error("no such customer: {0}")]
    SubjectNotFound(String),
    /// The hold reserves a movement under review: only the review decides it.
    #[error("the hold reserves a movement under review; only the review can release it")]
    HoldUnderReview,
    #[error("the reversal exceeds what is left of the original transfer")]
    ReversalExceedsOriginal,
    #[error("the hold is not active (captured, voided or expired)")]
    HoldNotActive,
    #[error("the capture exceeds the hold")]
    CaptureExceedsHold,
    #[error(
        "processing is restricted for the customer of account {0}: no new money movement may touch it"
    )]
    ProcessingRestricted(String),
    /// A system account named by a movement kind not declared for it (only deposits and
    /// withdrawals, and their reversals, move money through settlement).
    #[error(
        "account {0} is a system account: only the movement kinds declared for it may touch it (deposits and withdrawals through settlement, and their reversals)"
    )]
    SystemAccount(String),
    /// A movement whose legs do not balance (debits and credits each summing to its amount, at
    /// least one of each): the core never posts one, whoever built it.
    #[error("the movement's legs do not balance")]
    Unbalanced,
    /// Money leaving an account above the tenant's step-up threshold, by a credential that did
    /// not authenticate recently enough (`session`: whether it could step up at all; an API
    /// token cannot).
    #[error("this movement needs a recent authentication (step up)")]
    StepUpRequired { session: bool },
    /// The actor's credential, status or roles changed between the request's authorisation and
    /// the posting transaction (re-checked there): 401 or 403, as the middleware would answer.
    #[error("the actor is no longer authorised")]
    ActorRevoked(super::authz::ActorRevoked),
}

impl Refusal {
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::AccountNotFound(_) => "account_not_found",
            Refusal::CurrencyMismatch { .. } => "currency_mismatch",
            Refusal::InsufficientFunds(_) => "insufficient_funds",
            Refusal::AccountFrozen(_) => "account_frozen",
            Refusal::AccountClosed(_) => "account_closed",
            Refusal::DuplicateReference(_) => "reference_taken",
            Refusal::CheckRefused { code, .. } => code,
            Refusal::KycLimit { .. } => KYC_LIMIT_CODE,
            Refusal::SubjectNotFound(_) => "customer_not_found",
            Refusal::HoldUnderReview => "hold_under_review",
            Refusal::ReversalExceedsOriginal => "reversal_exceeds_original",
            Refusal::HoldNotActive => "hold_not_active",
            Refusal::CaptureExceedsHold => "capture_exceeds_hold",
            Refusal::ProcessingRestricted(_) => "processing_restricted",
            Refusal::SystemAccount(_) => "system_account",
            Refusal::Unbalanced => "movement_unbalanced",
            Refusal::ActorRevoked(r) => r.code(),
            Refusal::StepUpRequired { .. } => "step_up_required",
        }
    }
}

/// The refusal code of every KYC limit.
pub const KYC_LIMIT_CODE: &str = "kyc_limit_exceeded";

/// The codes of pre-commit checks whose refusals may be stored with an idempotency key (a
/// check's code is a `&'static str`; a stored one is matched back against this list).
pub const CHECK_CODES: &[&str] = &["held_for_review", "kyc_limit_exceeded"];

/// What an idempotent request's first answer was, as stored with its key: the small facts the
/// HTTP layer renders again on a replay, never a rendered body. A posted transfer is re-read
/// (transfers and their entries are append-only, so the replay shows the balances right after
/// the movement, as the first answer did); a refusal keeps its typed reason, so a replay
/// answers the same code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredOutcome {
    Transfer(String),
    Hold(String),
    Refused(Refusal),
}

/// The stored form's prefix (a rendered body of an older version never starts with it).
pub const OUTCOME_PREFIX: &str = "o1:";

#[derive(Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct OutcomeWire {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    transfer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hold: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refused: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    account: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    account_currency: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    currency: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reference: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    param: Option<String>,
}

impl StoredOutcome {
    /// The stored text: the prefix and a compact JSON object.
    pub fn encode(&self) -> String {
        let mut w = OutcomeWire::default();
        match self {
            StoredOutcome::Transfer(id) => w.transfer = Some(id.clone()),
            StoredOutcome::Hold(id) => w.hold = Some(id.clone()),
            StoredOutcome::Refused(r) => {
                w.refused = Some(r.code().to_owned());
                match r {
                    Refusal::AccountNotFound(a)
                    | Refusal::InsufficientFunds(a)
                    | Refusal::AccountFrozen(a)
                    | Refusal::AccountClosed(a)
                    | Refusal::ProcessingRestricted(a)
                    | Refusal::SystemAccount(a) => w.account = Some(a.clone()),
                    Refusal::CurrencyMismatch {
                        account,
                        account_currency,
                        currency,
                    } => {
                        w.account = Some(account.clone());
                        w.account_currency = Some(account_currency.clone());
                        w.currency = Some(currency.clone());
                    }
                    Refusal::DuplicateReference(r) => w.reference = Some(r.clone()),
                    Refusal::CheckRefused { message, .. } => w.message = Some(message.clone()),
                    Refusal::KycLimit { param, message } => {
                        w.param = Some(param.clone());
                        w.message = Some(message.clone());
                    }
                    Refusal::SubjectNotFound(c) => w.account = Some(c.clone()),
                    Refusal::ReversalExceedsOriginal
                    | Refusal::Unbalanced
                    | Refusal::HoldNotActive
                    | Refusal::HoldUnderReview
                    | Refusal::CaptureExceedsHold
                    | Refusal::ActorRevoked(_)
                    | Refusal::StepUpRequired { .. } => {}
                }
            }
        }
        // Serialising a struct of strings cannot fail.
        format!(
            "{OUTCOME_PREFIX}{}",
            serde_json::to_string(&w).unwrap_or_default()
        )
    }

    /// Reads a stored outcome back; `None` when `s` is not one (an older rendered body) or
    /// names a reason this version does not know.
    pub fn decode(s: &str) -> Option<StoredOutcome> {
        let w: OutcomeWire = serde_json::from_str(s.strip_prefix(OUTCOME_PREFIX)?).ok()?;
        if let Some(id) = w.transfer {
            return Some(StoredOutcome::Transfer(id));
        }
        if let Some(id) = w.hold {
            return Some(StoredOutcome::Hold(id));
        }
        let code = w.refused?;
        let account = || w.account.clone();
        let r = match code.as_str() {
            "account_not_found" => Refusal::AccountNotFound(account()?),
            "insufficient_funds" => Refusal::InsufficientFunds(account()?),
            "account_frozen" => Refusal::AccountFrozen(account()?),
            "account_closed" => Refusal::AccountClosed(account()?),
            "processing_restricted" => Refusal::ProcessingRestricted(account()?),
            "system_account" => Refusal::SystemAccount(account()?),
            "currency_mismatch" => Refusal::CurrencyMismatch {
                account: account()?,
                account_currency: w.account_currency?,
                currency: w.currency?,
            },
            "reference_taken" => Refusal::DuplicateReference(w.reference?),
            "reversal_exceeds_original" => Refusal::ReversalExceedsOriginal,
            "hold_not_active" => Refusal::HoldNotActive,
            "capture_exceeds_hold" => Refusal::CaptureExceedsHold,
            "movement_unbalanced" => Refusal::Unbalanced,
            "hold_under_review" => Refusal::HoldUnderReview,
            "customer_not_found" => Refusal::SubjectNotFound(account()?),
            KYC_LIMIT_CODE if w.param.is_some() => Refusal::KycLimit {
                param: w.param?,
                message: w.message?,
            },
            other => Refusal::CheckRefused {
                code: CHECK_CODES.iter().find(|c| **c == other)?,
                message: w.message?,
            },
        };
        Some(StoredOutcome::Refused(r))
    }
}

/// The free-text and structured details of a transfer: a description, the integrator's metadata
/// and the counterparty outside the platform. They may carry personal data, so they are sealed at
/// rest under the tenant's data key and never printed.
#[derive(Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferDetails {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counterparty: Option<Counterparty>,
}

/// Who is on the other side of a deposit, withdrawal or payout, outside the platform.
#[derive(Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Counterparty {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Their account number or IBAN at `institution`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub institution: Option<String>,
}

impl fmt::Debug for TransferDetails {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TransferDetails([REDACTED])")
    }
}

impl fmt::Debug for Counterparty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Counterparty([REDACTED])")
    }
}

/// Metadata limits (Stripe's, which integrators know).
pub const MAX_METADATA_KEYS: usize = 50;
pub const MAX_METADATA_KEY_LEN: usize = 40;
pub const MAX_METADATA_VALUE_LEN: usize = 500;
/// A movement's free-text description, in characters.
pub const MAX_DESCRIPTION_LEN: usize = 500;
/// Each counterparty field (name, account, institution), in characters.
pub const MAX_COUNTERPARTY_FIELD_LEN: usize = 140;

fn check_text(param: &str, v: &str, max: usize) -> Result<(), (String, String)> {
    if v.is_empty() || v.chars().count() > max || v.chars().any(char::is_control) {
        return Err((
            param.to_owned(),
            format!("must be 1 to {max} characters without control characters"),
        ));
    }
    Ok(())
}

impl TransferDetails {
    pub fn is_empty(&self) -> bool {
        self.description.is_none() && self.metadata.is_empty() && self.counterparty.is_none()
    }

    /// Checks the limits; the error names the offending parameter.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if let Some(d) = &self.description {
            check_text("description", d, MAX_DESCRIPTION_LEN)?;
        }
        if self.metadata.len() > MAX_METADATA_KEYS {
            return Err((
                "metadata".into(),
                format!("at most {MAX_METADATA_KEYS} keys"),
            ));
        }
        for (k, v) in &self.metadata {
            check_text("metadata", k, MAX_METADATA_KEY_LEN)?;
            check_text(&format!("metadata.{k}"), v, MAX_METADATA_VALUE_LEN)?;
        }
        if let Some(c) = &self.counterparty {
            if c.name.is_none() && c.account.is_none() && c.institution.is_none() {
                return Err((
                    "counterparty".into(),
                    "name at least one of name, account, institution".into(),
                ));
            }
            for (param, v) in [
                ("counterparty.name", &c.name),
                ("counterparty.account", &c.account),
                ("counterparty.institution", &c.institution),
            ] {
                if let Some(v) = v {
                    check_text(param, v, MAX_COUNTERPARTY_FIELD_LEN)?;
                }
            }
        }
        Ok(())
    }

    pub fn described(text: String) -> Self {
        Self {
            description: Some(text),
            ..Self::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_positive_and_bounded() {
        assert!(Amount::parse(0).is_err());
        assert!(Amount::parse(-5).is_err());
        assert!(Amount::parse(MAX_AMOUNT + 1).is_err());
        assert_eq!(Amount::parse(1).map(Amount::get), Ok(1));
        // Even the settlement floor minus the largest amount stays representable.
        assert!((-SETTLEMENT_OVERDRAFT).checked_sub(MAX_AMOUNT).is_some());
    }

    #[test]
    fn stored_outcomes_read_back_as_written() {
        let all = [
            StoredOutcome::Transfer("trf_1".into()),
            StoredOutcome::Hold("hld_1".into()),
            StoredOutcome::Refused(Refusal::AccountNotFound("acc_1".into())),
            StoredOutcome::Refused(Refusal::InsufficientFunds("acc_1".into())),
            StoredOutcome::Refused(Refusal::AccountFrozen("acc_1".into())),
            StoredOutcome::Refused(Refusal::AccountClosed("acc_1".into())),
            StoredOutcome::Refused(Refusal::ProcessingRestricted("acc_1".into())),
            StoredOutcome::Refused(Refusal::SystemAccount("acc_1".into())),
            StoredOutcome::Refused(Refusal::CurrencyMismatch {
                account: "acc_1".into(),
                account_currency: "EUR".into(),
                currency: "USD".into(),
            }),
            StoredOutcome::Refused(Refusal::DuplicateReference("inv-1".into())),
            StoredOutcome::Refused(Refusal::ReversalExceedsOriginal),
            StoredOutcome::Refused(Refusal::HoldNotActive),
            StoredOutcome::Refused(Refusal::CaptureExceedsHold),
            StoredOutcome::Refused(Refusal::Unbalanced),
            StoredOutcome::Refused(Refusal::HoldUnderReview),
            StoredOutcome::Refused(Refusal::SubjectNotFound("cus_1".into())),
            StoredOutcome::Refused(Refusal::KycLimit {
                param: "credits[1].amount".into(),
                message: "over the limit".into(),
            }),
            StoredOutcome::Refused(Refusal::CheckRefused {
                code: "kyc_limit_exceeded",
                message: "over the limit".into(),
            }),
        ];
        for o in all {
            let stored = o.encode();
            assert!(
                stored.starts_with(OUTCOME_PREFIX) && stored.len() < 120,
                "{stored}"
            );
            assert_eq!(StoredOutcome::decode(&stored), Some(o));
        }
        // An older rendered body, a foreign check code and garbage are not outcomes.
        assert_eq!(StoredOutcome::decode(r#"{"id":"trf_1"}"#), None);
        assert_eq!(
            StoredOutcome::decode(r#"o1:{"refused":"made_up","message":"x"}"#),
            None
        );
        assert_eq!(StoredOutcome::decode("o1:{"), None);
    }
}
