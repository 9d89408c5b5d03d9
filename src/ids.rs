//! Prefixed, time-ordered identifiers (`ten_…`, `usr_…`): a type prefix so an id is
//! recognisable in logs and support tickets, and a UUIDv7 body so ids sort by creation time
//! (which is what cursor pagination relies on).

use uuid::Uuid;

macro_rules! prefixed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            /// A fresh id.
            pub fn generate() -> Self {
                Self(format!("{}_{}", $prefix, Uuid::now_v7().simple()))
            }

            /// Accepts only a well-formed id of this type.
            pub fn parse(s: &str) -> Option<Self> {
                let body = s.strip_prefix($prefix)?.strip_prefix('_')?;
                (body.len() == 32 && body.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
                    .then(|| Self(s.to_owned()))
            }

            /// For values read back from storage, which only ever holds ids this type wrote.
            pub fn from_trusted(s: String) -> Self {
                Self(s)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

prefixed_id!(
    /// A tenant: one fintech business on the platform.
    TenantId,
    "ten"
);
prefixed_id!(
    /// A user (staff or customer login) of a tenant, or a platform admin.
    UserId,
    "usr"
);
prefixed_id!(
    /// A login session: every access and refresh token descends from one.
    SessionId,
    "ses"
);
prefixed_id!(
    /// One audit record.
    AuditEventId,
    "aud"
);
prefixed_id!(
    /// One HTTP request, echoed in `X-Request-Id` and in error bodies.
    RequestId,
    "req"
);
prefixed_id!(
    /// One access token (its `jti`).
    TokenId,
    "tok"
);

prefixed_id!(
    /// An end customer of a tenant.
    CustomerId,
    "cus"
);
prefixed_id!(
    /// A ledger account (one per customer and currency, plus system accounts).
    AccountId,
    "acc"
);
prefixed_id!(
    /// A money movement.
    TransferId,
    "trf"
);
prefixed_id!(
    /// A hold on part of an account's available balance.
    HoldId,
    "hld"
);
prefixed_id!(
    /// One ledger entry (a debit or credit line of a transfer).
    EntryId,
    "ent"
);
prefixed_id!(
    /// A KYC verification submission.
    KycSubmissionId,
    "kyc"
);
prefixed_id!(
    /// An identity document of a KYC submission.
    KycDocumentId,
    "kyd"
);
prefixed_id!(
    /// A break-glass request: a platform admin asks to restore a tenant's administration.
    BreakGlassId,
    "brk"
);
prefixed_id!(
    /// A staff-only note attached to a staff action (sealed; see `service::staff_notes`).
    StaffNoteId,
    "stn"
);
prefixed_id!(
    /// A security alert delivered to the alert webhook (its `Kasho-Event-Id`, for the
    /// receiver's de-duplication).
    SecurityAlertId,
    "evt"
);
prefixed_id!(
    /// An event a movement committed with it (a pre-commit check's side write, in
    /// `ledger_events`).
    LedgerEventId,
    "lev"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_reject_other_types() {
        let id = TenantId::generate();
        assert!(id.as_str().starts_with("ten_"));
        assert_eq!(TenantId::parse(id.as_str()), Some(id.clone()));
        assert_eq!(UserId::parse(id.as_str()), None);
        assert_eq!(TenantId::parse("ten_' OR 1=1 --"), None);
    }

    #[test]
    fn ids_are_time_ordered() {
        let a = UserId::generate();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = UserId::generate();
        assert!(a < b);
    }
}
