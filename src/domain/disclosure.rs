//! What a customer may be shown about itself (tipping off).
//!
//! Staff act on customers in ways the customer must not learn of: a freeze while a suspicious
//! activity report is filed, a restriction, a screening review, a KYC rejection's real reason.
//! Everything a customer reads (its own data export, its KYC history, its transfers) passes
//! through the rules here, which keep staff notes, staff ids and compliance actions out:
//!
//! - an audit record the customer's own user made is shown as it is (its own actions);
//! - a record someone else made (staff, an API token, the system) is shown only if its action
//!   is one of [`CUSTOMER_VISIBLE_ACTIONS`] (the customer-facing facts of its relationship:
//!   its record, its accounts, its money movements, its own KYC submissions), and then without
//!   who made it, from where, or which request;
//! - everything else (freezes, unfreezes, closures, restrictions, KYC decisions, reads of its
//!   personal data or documents, staff notes, and any action added later) is left out.
//!
//! The rule is an allow-list so that a compliance action added later stays hidden until
//! someone decides otherwise. Records already in the immutable chain (some with free-text
//! reasons written before codes existed) are filtered when read, never rewritten.

use super::audit::AuditRecord;

/// Actions made by someone other than the customer that the customer is shown.
pub const CUSTOMER_VISIBLE_ACTIONS: &[&str] = &[
    "customer.create",
    "customer.update",
    "customer.export",
    "account.open",
    "account.overdraft.set",
    "transfer.create",
    "transfer.batch",
    "deposit.create",
    "withdrawal.create",
    "capture.create",
    "reversal.create",
    "hold.create",
    "hold.void",
    "kyc.submission.create",
    "kyc.document.upload",
];

/// `record` as the customer whose linked user is `subject_user` may see it, or `None` when it
/// must not be shown at all.
pub fn customer_audit_view(
    mut record: AuditRecord,
    subject_user: Option<&str>,
) -> Option<AuditRecord> {
    let own = subject_user.is_some() && record.actor_id.as_deref() == subject_user;
    if own {
        return Some(record);
    }
    if !CUSTOMER_VISIBLE_ACTIONS.contains(&record.action.as_str()) {
        return None;
    }
    // Who acted for the tenant, from where and in which request is the staff's business.
    record.actor_id = None;
    record.ip = None;
    record.request_id = None;
    Some(record)
}

/// A staff member's (or another credential's) id, shown to a customer only when it is the
/// customer's own user.
pub fn customer_actor(actor: Option<String>, subject_user: Option<&str>) -> Option<String> {
    actor.filter(|a| subject_user == Some(a.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(actor: &str, action: &str, reason: &str) -> AuditRecord {
        AuditRecord {
            id: "aud_1".into(),
            chain: "ten_1".into(),
            seq: 1,
            tenant_id: Some("ten_1".into()),
            occurred_at: 0,
            actor_type: "user".into(),
            actor_id: Some(actor.into()),
            action: action.into(),
            target_type: Some("account".into()),
            target_id: Some("acc_1".into()),
            outcome: "success".into(),
            reason: Some(reason.into()),
            ip: Some("192.0.2.1".into()),
            request_id: Some("req_1".into()),
            prev_hash: String::new(),
            hash: String::new(),
            security_event: None,
        }
    }

    #[test]
    fn compliance_actions_never_reach_the_customer() {
        let me = Some("usr_me");
        for action in [
            "account.freeze",
            "account.unfreeze",
            "account.close",
            "customer.restrict",
            "customer.unrestrict",
            "kyc.submission.reject",
            "kyc.submission.approve",
            "kyc.document.read",
            "customer.pii.read",
            "staff_note.read",
            "some.future.compliance_action",
        ] {
            let r = record("usr_staff", action, "SAR filed with FIU");
            assert!(customer_audit_view(r, me).is_none(), "{action}");
        }
    }

    #[test]
    fn visible_records_by_others_lose_who_where_and_which_request() {
        let r = customer_audit_view(record("usr_staff", "deposit.create", ""), Some("usr_me"));
        let r = r.unwrap_or_else(|| unreachable!("a deposit is shown"));
        assert_eq!(r.actor_id, None);
        assert_eq!(r.ip, None);
        assert_eq!(r.request_id, None);
        // The customer's own records stay whole.
        let own = customer_audit_view(record("usr_me", "auth.login", ""), Some("usr_me"));
        let own = own.unwrap_or_else(|| unreachable!("its own login"));
        assert_eq!(own.ip.as_deref(), Some("192.0.2.1"));
        // With no linked user, nothing is "its own".
        assert!(customer_audit_view(record("usr_me", "account.freeze", ""), None).is_none());
        assert_eq!(
            customer_actor(Some("usr_staff".into()), Some("usr_me")),
            None
        );
        assert_eq!(
            customer_actor(Some("usr_me".into()), Some("usr_me")).as_deref(),
            Some("usr_me")
        );
    }
}
