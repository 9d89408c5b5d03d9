//! Staff reasons: why a staff member froze, unfroze or closed an account, or rejected a KYC
//! submission, as a code from a fixed list, and the optional staff-only note that may go with
//! it ([`StaffNote`]).
//!
//! Reasons were free text once, and free text ends up where it must not: a freeze reason
//! ("SAR filed, do not tell the customer") was shown to the customer in its own data export,
//! which in most jurisdictions is the offence of tipping off. A code is safe to keep in the
//! tamper-evident audit chain (it is never personal data and never a narrative); whatever a
//! staff member wants to add goes into a note, sealed under the tenant's data key and
//! readable only by staff holding `staff_notes:read` (see `service::staff_notes`).
//!
//! The codes are written for staff: they may be candid (`suspicious_activity`), because a
//! customer never sees them. The one place a customer is told a reason is a rejected KYC
//! submission, and it is told [`KycRejection::customer_code`], a separate, customer-facing
//! code that never reveals suspicion (`unable_to_verify` covers fraud, sanctions and risk).

/// A closed list of reason codes for one kind of staff action.
pub trait ReasonCode: Copy + Sized + 'static {
    /// Every code, in the order the documentation lists them.
    const ALL: &'static [Self];
    fn as_str(self) -> &'static str;

    /// The code named `raw`. The error lists the valid codes and never repeats what was sent
    /// (it may be a narrative that must not reach a log or a response).
    fn parse(raw: &str) -> Result<Self, String> {
        Self::ALL
            .iter()
            .copied()
            .find(|c| c.as_str() == raw)
            .ok_or_else(|| format!("must be one of: {}", Self::codes().join(", ")))
    }

    /// Every code as text (for error messages and the OpenAPI document).
    fn codes() -> Vec<&'static str> {
        Self::ALL.iter().map(|c| c.as_str()).collect()
    }
}

/// Why an account is frozen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreezeReason {
    /// The customer asked (a lost card, a trip, a suspected compromise it reported).
    CustomerRequest,
    SuspectedFraud,
    /// Suspicious activity under review or reported (AML).
    SuspiciousActivity,
    /// A possible match against a sanctions or watch list.
    SanctionsScreening,
    /// A court, regulator or law-enforcement order.
    LegalOrder,
    /// Verification is outstanding or has expired.
    KycReview,
    /// The customer's credentials or device are believed compromised.
    AccountCompromised,
    Deceased,
    /// A dispute or an operational error is being resolved.
    Dispute,
    Other,
}

impl ReasonCode for FreezeReason {
    const ALL: &'static [Self] = &[
        Self::CustomerRequest,
        Self::SuspectedFraud,
        Self::SuspiciousActivity,
        Self::SanctionsScreening,
        Self::LegalOrder,
        Self::KycReview,
        Self::AccountCompromised,
        Self::Deceased,
        Self::Dispute,
        Self::Other,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::CustomerRequest => "customer_request",
            Self::SuspectedFraud => "suspected_fraud",
            Self::SuspiciousActivity => "suspicious_activity",
            Self::SanctionsScreening => "sanctions_screening",
            Self::LegalOrder => "legal_order",
            Self::KycReview => "kyc_review",
            Self::AccountCompromised => "account_compromised",
            Self::Deceased => "deceased",
            Self::Dispute => "dispute",
            Self::Other => "other",
        }
    }
}

/// Why a frozen account is released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnfreezeReason {
    ReviewCompleted,
    CustomerRequest,
    LegalOrderLifted,
    KycCompleted,
    FrozenInError,
    Other,
}

impl ReasonCode for UnfreezeReason {
    const ALL: &'static [Self] = &[
        Self::ReviewCompleted,
        Self::CustomerRequest,
        Self::LegalOrderLifted,
        Self::KycCompleted,
        Self::FrozenInError,
        Self::Other,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::ReviewCompleted => "review_completed",
            Self::CustomerRequest => "customer_request",
            Self::LegalOrderLifted => "legal_order_lifted",
            Self::KycCompleted => "kyc_completed",
            Self::FrozenInError => "frozen_in_error",
            Self::Other => "other",
        }
    }
}

/// Why an account is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    CustomerRequest,
    /// The tenant ends the relationship (de-risking).
    RiskDecision,
    Dormant,
    Deceased,
    LegalOrder,
    Other,
}

impl ReasonCode for CloseReason {
    const ALL: &'static [Self] = &[
        Self::CustomerRequest,
        Self::RiskDecision,
        Self::Dormant,
        Self::Deceased,
        Self::LegalOrder,
        Self::Other,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::CustomerRequest => "customer_request",
            Self::RiskDecision => "risk_decision",
            Self::Dormant => "dormant",
            Self::Deceased => "deceased",
            Self::LegalOrder => "legal_order",
            Self::Other => "other",
        }
    }
}

/// Why a KYC submission is rejected (the staff's code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KycRejection {
    DocumentUnreadable,
    DocumentExpired,
    DocumentNotAccepted,
    /// Names, dates or numbers differ between the documents and the customer record.
    DetailsMismatch,
    SelfieMismatch,
    IncompleteSubmission,
    SuspectedFraud,
    SanctionsMatch,
    /// The tenant's risk assessment.
    HighRisk,
    Other,
}

impl ReasonCode for KycRejection {
    const ALL: &'static [Self] = &[
        Self::DocumentUnreadable,
        Self::DocumentExpired,
        Self::DocumentNotAccepted,
        Self::DetailsMismatch,
        Self::SelfieMismatch,
        Self::IncompleteSubmission,
        Self::SuspectedFraud,
        Self::SanctionsMatch,
        Self::HighRisk,
        Self::Other,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::DocumentUnreadable => "document_unreadable",
            Self::DocumentExpired => "document_expired",
            Self::DocumentNotAccepted => "document_not_accepted",
            Self::DetailsMismatch => "details_mismatch",
            Self::SelfieMismatch => "selfie_mismatch",
            Self::IncompleteSubmission => "incomplete_submission",
            Self::SuspectedFraud => "suspected_fraud",
            Self::SanctionsMatch => "sanctions_match",
            Self::HighRisk => "high_risk",
            Self::Other => "other",
        }
    }
}

impl KycRejection {
    /// What the customer is told. Anything that would reveal a suspicion, a screening hit or
    /// a risk decision is told as `unable_to_verify`.
    pub const fn customer_code(self) -> CustomerKycCode {
        match self {
            Self::DocumentUnreadable => CustomerKycCode::DocumentUnreadable,
            Self::DocumentExpired => CustomerKycCode::DocumentExpired,
            Self::DocumentNotAccepted => CustomerKycCode::DocumentNotAccepted,
            Self::DetailsMismatch => CustomerKycCode::DetailsMismatch,
            Self::SelfieMismatch => CustomerKycCode::SelfieMismatch,
            Self::IncompleteSubmission => CustomerKycCode::DocumentsMissing,
            Self::SuspectedFraud | Self::SanctionsMatch | Self::HighRisk | Self::Other => {
                CustomerKycCode::UnableToVerify
            }
        }
    }
}

/// The reason a customer is shown for a rejected KYC submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CustomerKycCode {
    DocumentUnreadable,
    DocumentExpired,
    DocumentNotAccepted,
    DetailsMismatch,
    SelfieMismatch,
    DocumentsMissing,
    UnableToVerify,
}

impl ReasonCode for CustomerKycCode {
    const ALL: &'static [Self] = &[
        Self::DocumentUnreadable,
        Self::DocumentExpired,
        Self::DocumentNotAccepted,
        Self::DetailsMismatch,
        Self::SelfieMismatch,
        Self::DocumentsMissing,
        Self::UnableToVerify,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::DocumentUnreadable => "document_unreadable",
            Self::DocumentExpired => "document_expired",
            Self::DocumentNotAccepted => "document_not_accepted",
            Self::DetailsMismatch => "details_mismatch",
            Self::SelfieMismatch => "selfie_mismatch",
            Self::DocumentsMissing => "documents_missing",
            Self::UnableToVerify => "unable_to_verify",
        }
    }
}

/// The code of a KYC approval's audit record and staff note (approvals take no reason).
pub const KYC_APPROVAL_CODE: &str = "approved";

/// Longest staff note, in characters.
pub const MAX_NOTE_CHARS: usize = 2000;

/// A staff-only note: 1 to [`MAX_NOTE_CHARS`] characters, not blank, no control characters
/// but line breaks and tabs. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct StaffNote(String);

impl StaffNote {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let ok = !raw.trim().is_empty()
            && raw.chars().count() <= MAX_NOTE_CHARS
            && !raw
                .chars()
                .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'));
        ok.then(|| Self(raw.to_owned())).ok_or_else(|| {
            format!(
                "a note is 1 to {MAX_NOTE_CHARS} characters, not blank, without control characters"
            )
        })
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for StaffNote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StaffNote(<redacted>)")
    }
}

/// The audit record's `reason` of a staff action: its code, and the note's id when there is a
/// note (never its text).
pub fn audit_reason(code: &str, note_id: Option<&str>) -> String {
    match note_id {
        Some(id) => format!("{code};note={id}"),
        None => code.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_parse_and_an_unknown_one_is_refused_without_echo() {
        assert_eq!(
            FreezeReason::parse("suspicious_activity"),
            Ok(FreezeReason::SuspiciousActivity)
        );
        let err = match FreezeReason::parse("SAR filed, do not tell") {
            Err(e) => e,
            Ok(c) => unreachable!("{c:?}"),
        };
        assert!(!err.contains("SAR"), "{err}");
        assert!(err.contains("suspicious_activity"), "{err}");
        // Each list is its own: an unfreeze code does not freeze.
        assert!(FreezeReason::parse("frozen_in_error").is_err());
        for codes in [
            FreezeReason::codes(),
            UnfreezeReason::codes(),
            CloseReason::codes(),
            KycRejection::codes(),
            CustomerKycCode::codes(),
        ] {
            let mut sorted = codes.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), codes.len(), "{codes:?}");
        }
    }

    #[test]
    fn a_customer_is_never_told_of_a_suspicion() {
        for r in [
            KycRejection::SuspectedFraud,
            KycRejection::SanctionsMatch,
            KycRejection::HighRisk,
            KycRejection::Other,
        ] {
            assert_eq!(r.customer_code(), CustomerKycCode::UnableToVerify);
        }
        // Every staff code maps to some customer code, none to a staff-only word.
        for r in KycRejection::ALL {
            let shown = r.customer_code().as_str();
            assert!(
                !["fraud", "sanction", "risk", "suspic"]
                    .iter()
                    .any(|w| shown.contains(w)),
                "{shown}"
            );
        }
    }

    #[test]
    fn notes_are_bounded_and_never_print() {
        let n = StaffNote::parse("SAR filed with FIU:\n\tsuspected structuring")
            .unwrap_or_else(|e| unreachable!("{e}"));
        assert!(!format!("{n:?}").contains("SAR"));
        assert!(StaffNote::parse("   ").is_err());
        assert!(StaffNote::parse("bell\u{7}").is_err());
        assert!(StaffNote::parse(&"x".repeat(MAX_NOTE_CHARS)).is_ok());
        assert!(StaffNote::parse(&"x".repeat(MAX_NOTE_CHARS + 1)).is_err());
        assert_eq!(
            audit_reason("suspicious_activity", Some("stn_1")),
            "suspicious_activity;note=stn_1"
        );
        assert_eq!(audit_reason("other", None), "other");
    }
}
