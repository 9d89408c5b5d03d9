//! A money movement request checked once: every value parsed into its type and every shape
//! rule applied, before anything is read or posted. The HTTP layer builds a
//! [`TransferRequest`] from the wire; `CheckedTransfer::try_from` is the only way to a
//! [`CheckedTransfer`], from which the service builds the [`TransferCommand`](super::TransferCommand).

use super::{Amount, MAX_CREDIT_LEGS, TransferDetails, TransferKind};
use crate::domain::currency::Currency;
use crate::ids::AccountId;

/// The longest transfer reference, in characters.
pub const MAX_REFERENCE_CHARS: usize = 128;

/// A transfer, deposit or withdrawal as received: strings and integers, nothing checked yet.
#[derive(Debug, Clone)]
pub struct TransferRequest {
    pub kind: TransferKind,
    pub currency: String,
    pub amount: i64,
    /// For a transfer, the debit account; deposits and withdrawals name the customer account.
    pub debit_account_id: String,
    /// A transfer's credit legs (deposits and withdrawals have none: the service adds the
    /// settlement leg).
    pub credits: Vec<(String, i64)>,
    pub reference: Option<String>,
    pub details: TransferDetails,
}

/// Why a request cannot become a movement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InvalidTransfer {
    /// A parameter's value is not acceptable (`parameter_invalid`, naming it).
    Param { param: String, message: String },
    /// A string that cannot be an account id: answered as the ledger answers an unknown account.
    UnknownAccount(String),
}

impl InvalidTransfer {
    fn param(param: impl Into<String>, message: impl Into<String>) -> Self {
        InvalidTransfer::Param {
            param: param.into(),
            message: message.into(),
        }
    }
}

/// A request whose every value is typed and within bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedTransfer {
    pub kind: TransferKind,
    pub currency: Currency,
    pub amount: Amount,
    pub debit: AccountId,
    pub credits: Vec<(AccountId, Amount)>,
    pub reference: Option<String>,
    pub details: TransferDetails,
}

fn account(raw: &str) -> Result<AccountId, InvalidTransfer> {
    AccountId::parse(raw).ok_or_else(|| InvalidTransfer::UnknownAccount(raw.to_owned()))
}

impl TryFrom<TransferRequest> for CheckedTransfer {
    type Error = InvalidTransfer;

    fn try_from(r: TransferRequest) -> Result<Self, InvalidTransfer> {
        let currency =
            Currency::parse(&r.currency).map_err(|m| InvalidTransfer::param("currency", m))?;
        let amount = Amount::parse(r.amount).map_err(|m| InvalidTransfer::param("amount", m))?;
        if let Some(reference) = &r.reference
            && (reference.is_empty()
                || reference.chars().count() > MAX_REFERENCE_CHARS
                || reference.chars().any(char::is_control))
        {
            return Err(InvalidTransfer::param(
                "reference",
                format!("must be 1 to {MAX_REFERENCE_CHARS} characters without control characters"),
            ));
        }
        r.details
            .validate()
            .map_err(|(param, message)| InvalidTransfer::Param { param, message })?;
        // A transfer names 1 to MAX_CREDIT_LEGS credit legs; a capture names the one it credits;
        // deposits and withdrawals name none (the service adds the settlement leg). Whatever
        // legs are named must be positive, must not credit the debit account, and must sum to
        // the amount.
        if r.kind == TransferKind::Transfer
            && (r.credits.is_empty() || r.credits.len() > MAX_CREDIT_LEGS)
        {
            return Err(InvalidTransfer::param(
                "credits",
                format!("between 1 and {MAX_CREDIT_LEGS} credit legs are required"),
            ));
        }
        let mut credits = Vec::with_capacity(r.credits.len());
        let mut total: i64 = 0;
        for (i, (acc, amt)) in r.credits.iter().enumerate() {
            let leg = Amount::parse(*amt)
                .map_err(|m| InvalidTransfer::param(format!("credits[{i}].amount"), m))?;
            if *acc == r.debit_account_id {
                return Err(InvalidTransfer::param(
                    format!("credits[{i}].account_id"),
                    "a transfer cannot credit its debit account",
                ));
            }
            total = total.saturating_add(leg.get());
            credits.push((acc, leg));
        }
        if !credits.is_empty() && total != amount.get() {
            return Err(InvalidTransfer::param(
                "credits",
                format!("the credit legs sum to {total}, not the amount {amount}"),
            ));
        }
        let debit = account(&r.debit_account_id)?;
        let credits = credits
            .into_iter()
            .map(|(a, n)| Ok((account(a)?, n)))
            .collect::<Result<Vec<_>, InvalidTransfer>>()?;
        Ok(CheckedTransfer {
            kind: r.kind,
            currency,
            amount,
            debit,
            credits,
            reference: r.reference,
            details: r.details,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acc(n: u8) -> String {
        format!("acc_{}", format!("{n:02x}").repeat(16))
    }

    fn request(credits: Vec<(String, i64)>, amount: i64) -> TransferRequest {
        TransferRequest {
            kind: TransferKind::Transfer,
            currency: "USD".into(),
            amount,
            debit_account_id: acc(1),
            credits,
            reference: None,
            details: TransferDetails::default(),
        }
    }

    fn param_of(r: TransferRequest) -> Option<String> {
        match CheckedTransfer::try_from(r) {
            Err(InvalidTransfer::Param { param, .. }) => Some(param),
            _ => None,
        }
    }

    #[test]
    fn a_well_formed_transfer_is_typed_once() {
        let t = CheckedTransfer::try_from(request(vec![(acc(2), 60), (acc(3), 40)], 100));
        let t = t.ok();
        assert_eq!(t.as_ref().map(|t| t.amount.get()), Some(100));
        assert_eq!(t.as_ref().map(|t| t.credits.len()), Some(2));
        assert_eq!(t.map(|t| t.currency.code()), Some("USD"));
    }

    #[test]
    fn every_shape_rule_names_its_parameter() {
        assert_eq!(param_of(request(vec![], 1)).as_deref(), Some("credits"));
        assert_eq!(
            param_of(request(vec![(acc(2), 60)], 100)).as_deref(),
            Some("credits")
        );
        assert_eq!(
            param_of(request(vec![(acc(2), 0)], 0)).as_deref(),
            Some("amount")
        );
        assert_eq!(
            param_of(request(vec![(acc(2), 50), (acc(3), -50)], 0)).as_deref(),
            Some("amount")
        );
        assert_eq!(
            param_of(request(vec![(acc(2), 150), (acc(3), -50)], 100)).as_deref(),
            Some("credits[1].amount")
        );
        assert_eq!(
            param_of(request(vec![(acc(1), 100)], 100)).as_deref(),
            Some("credits[0].account_id")
        );
        let legs = (0..=MAX_CREDIT_LEGS)
            .map(|_| (acc(2), 1))
            .collect::<Vec<_>>();
        let n = i64::try_from(legs.len()).unwrap_or(0);
        assert_eq!(param_of(request(legs, n)).as_deref(), Some("credits"));
        let mut r = request(vec![(acc(2), 1)], 1);
        r.currency = "XXX".into();
        assert_eq!(param_of(r).as_deref(), Some("currency"));
        let mut r = request(vec![(acc(2), 1)], 1);
        r.reference = Some("x".repeat(MAX_REFERENCE_CHARS + 1));
        assert_eq!(param_of(r).as_deref(), Some("reference"));
    }

    #[test]
    fn every_kind_keeps_the_legs_it_names() {
        let mut r = request(vec![(acc(2), 100)], 100);
        r.kind = TransferKind::Capture;
        let t = CheckedTransfer::try_from(r).ok();
        assert_eq!(
            t.map(|t| t.credits.len()),
            Some(1),
            "a capture's credit leg"
        );
        let mut r = request(vec![(acc(2), 60)], 100);
        r.kind = TransferKind::Capture;
        assert_eq!(param_of(r).as_deref(), Some("credits"));
    }

    #[test]
    fn a_string_that_cannot_be_an_account_is_an_unknown_account() {
        let r = request(vec![("acc_nope".into(), 1)], 1);
        assert_eq!(
            CheckedTransfer::try_from(r),
            Err(InvalidTransfer::UnknownAccount("acc_nope".into()))
        );
    }
}
