//! Storage side of data-subject rights (`service::privacy`): a customer's privacy state, the
//! restriction of processing, the audit records about a customer, and the erasure
//! (`erase_customer`: one transaction, which releases the customer's expired holds through
//! `holds::expire_holds_tx` before it checks that nothing is left on its accounts).

use async_trait::async_trait;

use super::audit::AuditRow;
use super::backend::{Backend, RowsAffected, SqlStore, for_update};
use super::holds::expire_holds_tx;
use super::*;
use crate::clock::Timestamp;
use crate::domain::audit::NewAuditEvent;
use crate::ids::TenantId;

/// Data-subject rights (`service::privacy`).
#[async_trait]
pub trait PrivacyStore: Send + Sync {
    async fn customer_privacy(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> StoreResult<Option<CustomerPrivacyRecord>>;
    /// Sets or lifts the restriction of processing of an active (not erased) customer, with
    /// the staff note, if any, in the same transaction.
    async fn set_processing_restricted(
        &self,
        tenant: &TenantId,
        id: &str,
        restricted: bool,
        now: Timestamp,
        audit: &[NewAuditEvent],
        note: Option<&notes::NewStaffNote>,
    ) -> StoreResult<Option<CustomerPrivacyRecord>>;
    /// Records of `chain` after `after_seq` (in order) about a customer: those whose target is
    /// the customer, one of its accounts, holds or transfers, or its linked user, and those
    /// whose actor is its linked user.
    async fn audit_about_customer(
        &self,
        chain: &str,
        tenant: &TenantId,
        customer: &str,
        user: Option<&str>,
        after_seq: i64,
        limit: i64,
    ) -> StoreResult<Vec<AuditRecord>>;
    /// Erases a customer in one transaction: refused (nothing changed) while any of its
    /// accounts holds a balance or has pending debits/credits or an active hold; otherwise closes
    /// the accounts, deletes its blind-index rows, destroys every version of its data key
    /// (status `destroyed`, no key material), clears its personal data and external reference,
    /// and pseudonymises, disables and signs out its linked user, or, when that user holds a
    /// staff role, unlinks it and removes only its CUSTOMER role (its sessions end); with
    /// `audit`. `linked` is the linked user as the caller planned from: if it differs,
    /// nothing changes ([`ErasureOutcome::LinkedUserChanged`]).
    async fn erase_customer(
        &self,
        tenant: &TenantId,
        id: &str,
        linked: Option<&LinkedUser>,
        now: Timestamp,
        audit: &[NewAuditEvent],
    ) -> StoreResult<ErasureOutcome>;
}

#[async_trait]
impl<S: SqlStore<Db = B>, B: Backend> PrivacyStore for S {
    async fn customer_privacy(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> StoreResult<Option<CustomerPrivacyRecord>> {
        Ok(sqlx::query_as(
            "SELECT id, tenant_id, user_id, external_ref, status, pii, processing_restricted, created_at, updated_at, erased_at \
             FROM customers WHERE tenant_id = $1 AND id = $2",
        )
        .bind(tenant.as_str())
        .bind(id)
        .fetch_optional(self.pool())
        .await?)
    }

    async fn set_processing_restricted(
        &self,
        tenant: &TenantId,
        id: &str,
        restricted: bool,
        now: Timestamp,
        audit: &[NewAuditEvent],
        note: Option<&crate::store::notes::NewStaffNote>,
    ) -> StoreResult<Option<CustomerPrivacyRecord>> {
        let mut tx = self.begin_write().await?;
        let row: Option<CustomerPrivacyRecord> = sqlx::query_as(
            "UPDATE customers SET processing_restricted = $3, updated_at = $4 \
             WHERE tenant_id = $1 AND id = $2 AND status = 'active' \
             RETURNING id, tenant_id, user_id, external_ref, status, pii, processing_restricted, created_at, updated_at, erased_at",
        )
        .bind(tenant.as_str())
        .bind(id)
        .bind(i64::from(restricted))
        .bind(now.as_micros())
        .fetch_optional(&mut *tx)
        .await?;
        if row.is_none() {
            return Ok(None);
        }
        if let Some(n) = note {
            crate::store::notes::insert_staff_note_tx(&mut tx, n).await?;
        }
        self.append_audit_tx(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(row)
    }

    async fn audit_about_customer(
        &self,
        chain: &str,
        tenant: &TenantId,
        customer: &str,
        user: Option<&str>,
        after_seq: i64,
        limit: i64,
    ) -> StoreResult<Vec<crate::domain::audit::AuditRecord>> {
        let rows: Vec<AuditRow> = sqlx::query_as(
            "SELECT * FROM audit_events WHERE chain = $1 AND seq > $2 AND ( \
                target_id = $3 \
                OR ($4 IS NOT NULL AND (actor_id = $4 OR target_id = $4)) \
                OR target_id IN (SELECT a.id FROM accounts a WHERE a.tenant_id = $5 AND a.customer_id = $3) \
                OR target_id IN (SELECT h.id FROM holds h JOIN accounts a ON a.id = h.account_id OR a.id = h.credit_account_id \
                                 WHERE a.tenant_id = $5 AND a.customer_id = $3) \
                OR target_id IN (SELECT e.transfer_id FROM entries e JOIN accounts a ON a.id = e.account_id \
                                 WHERE a.tenant_id = $5 AND a.customer_id = $3) \
             ) ORDER BY seq LIMIT $6",
        )
        .bind(chain)
        .bind(after_seq)
        .bind(customer)
        .bind(user)
        .bind(tenant.as_str())
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    async fn erase_customer(
        &self,
        tenant: &TenantId,
        id: &str,
        linked: Option<&LinkedUser>,
        now: Timestamp,
        audit: &[NewAuditEvent],
    ) -> StoreResult<ErasureOutcome> {
        let t = tenant.as_str();
        let now = now.as_micros();
        let mut tx = self.begin_write().await?;
        // The customer's row first: every transaction that creates something for the
        // customer (an account, a KYC submission, a decision) locks it first too
        // (`lock_customer_tx`), so each either committed before (and is seen below) or
        // waits and then finds the customer erased.
        let customer: Option<(String, Option<String>)> = sqlx::query_as(for_update!(
            B,
            "SELECT status, user_id FROM customers WHERE tenant_id = $1 AND id = $2"
        ))
        .bind(t)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((status, user_id)) = customer else {
            return Ok(ErasureOutcome::NotFound);
        };
        if status == "erased" {
            return Ok(ErasureOutcome::AlreadyErased);
        }
        // Then the accounts, locked in id order like the ledger writer locks them, so
        // no movement can slip in between the checks and the closing (the ledger writer
        // never locks a customer row, so the order cannot deadlock with it).
        let accounts: Vec<(String,)> = sqlx::query_as(for_update!(
            B,
            "SELECT id FROM accounts WHERE tenant_id = $1 AND customer_id = $2 ORDER BY id"
        ))
        .bind(t)
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
        // The linked user must be as the caller planned from (who may affect it was
        // decided on its roles), read under the lock.
        let user_now: Option<(String,)> = match &user_id {
            Some(u) => {
                sqlx::query_as(for_update!(
                    B,
                    "SELECT roles FROM users WHERE tenant_id = $1 AND id = $2"
                ))
                .bind(t)
                .bind(u)
                .fetch_optional(&mut *tx)
                .await?
            }
            None => None,
        };
        let as_planned = match (&user_id, &user_now, linked) {
            (None, _, None) => true,
            (Some(u), Some((roles,)), Some(l)) => *u == l.id && *roles == l.roles,
            _ => false,
        };
        if !as_planned {
            tx.rollback().await?;
            return Ok(ErasureOutcome::LinkedUserChanged);
        }
        let staff = linked.filter(|l| l.is_staff());
        // Holds past their expiry stop counting first (as every other write does).
        for (account,) in &accounts {
            expire_holds_tx(&mut tx, t, account, now).await?;
        }
        let balances: Vec<(String, String, i64, i64, i64)> = sqlx::query_as(
            "SELECT id, currency, posted, pending_debits, pending_credits FROM accounts \
             WHERE tenant_id = $1 AND customer_id = $2 ORDER BY id",
        )
        .bind(t)
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
        let holds: Vec<(String, String, Option<String>)> = sqlx::query_as(
            "SELECT h.id, h.account_id, h.credit_account_id FROM holds h \
             WHERE h.tenant_id = $1 AND h.status = 'active' AND h.expires_at > $3 \
             AND (h.account_id IN (SELECT a.id FROM accounts a WHERE a.tenant_id = $1 AND a.customer_id = $2) \
                  OR h.credit_account_id IN (SELECT a.id FROM accounts a WHERE a.tenant_id = $1 AND a.customer_id = $2)) \
             ORDER BY h.id",
        )
        .bind(t)
        .bind(id)
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        let mut blocked = Vec::new();
        for (account, currency, posted, debits, credits) in &balances {
            if *posted != 0 {
                blocked.push(format!(
                    "account {account} has a balance of {posted} {currency} minor units"
                ));
            }
            if *debits != 0 {
                blocked.push(format!(
                    "account {account} has {debits} {currency} minor units reserved by open holds"
                ));
            }
            if *credits != 0 {
                blocked.push(format!("account {account} has {credits} {currency} minor units of pending credits from open holds"));
            }
        }
        for (hold, account, credit) in &holds {
            let side = if accounts.iter().any(|(a,)| a == account) {
                format!("on account {account}")
            } else {
                format!("towards account {}", credit.as_deref().unwrap_or(""))
            };
            blocked.push(format!("hold {hold} is still active {side}"));
        }
        if !blocked.is_empty() {
            // Nothing of the erasure is kept, not even the expiry releases above (they
            // are re-derived by the next write anyway).
            tx.rollback().await?;
            return Ok(ErasureOutcome::Blocked(blocked));
        }
        let closed: Vec<(String,)> = sqlx::query_as(
            "UPDATE accounts SET status = 'closed', updated_at = $3 \
             WHERE tenant_id = $1 AND customer_id = $2 AND status <> 'closed' RETURNING id",
        )
        .bind(t)
        .bind(id)
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        let lookups_deleted =
            sqlx::query("DELETE FROM customer_lookup WHERE tenant_id = $1 AND customer_id = $2")
                .bind(t)
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        // Crypto-shredding: every version loses its key material, so the ciphertexts
        // it sealed (here and in every backup) cannot be opened even with the master key.
        let keys_destroyed = sqlx::query(
            "UPDATE data_keys SET status = 'destroyed', wrapped = NULL, retired_at = COALESCE(retired_at, $3) \
             WHERE tenant_id = $1 AND owner = $2",
        )
        .bind(t)
        .bind(format!("customer:{id}"))
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query(
            "UPDATE customers SET pii = NULL, external_ref = NULL, status = 'erased', erased_at = $3, updated_at = $3 \
             WHERE tenant_id = $1 AND id = $2",
        )
        .bind(t)
        .bind(id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        // Staff notes about the customer and its KYC submissions: those sealed under
        // its key are shredded with it, and older ones sealed under the tenant's key
        // lose their text here. An empty note reads as gone (404) on every instance;
        // the rows stay (the audit chain names their ids). Notes about its accounts
        // (freezes, closures) are AML records the tenant keeps.
        sqlx::query(
            "UPDATE staff_notes SET note = '' WHERE tenant_id = $1 AND note <> '' AND ( \
                target_id = $2 \
                OR target_id IN (SELECT k.id FROM kyc_submissions k WHERE k.tenant_id = $1 AND k.customer_id = $2))",
        )
        .bind(t)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if let Some(l) = staff {
            // Staff who bank with their employer: the login is theirs as an employee.
            // It is unlinked and loses only its CUSTOMER role (its sessions end, as on
            // any role change); everything else about it stays.
            let roles: Vec<crate::domain::authz::Role> =
                crate::domain::authz::roles_from_storage(&l.roles)
                    .into_iter()
                    .filter(|r| *r != crate::domain::authz::Role::Customer)
                    .collect();
            sqlx::query("UPDATE customers SET user_id = NULL WHERE tenant_id = $1 AND id = $2")
                .bind(t)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "UPDATE users SET roles = $3, updated_at = $4 WHERE tenant_id = $1 AND id = $2",
            )
            .bind(t)
            .bind(&l.id)
            .bind(crate::domain::authz::roles_to_storage(&roles))
            .bind(now)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE sessions SET revoked_at = $3, revoked_reason = 'roles_changed' \
                 WHERE tenant_id = $1 AND user_id = $2 AND revoked_at IS NULL",
            )
            .bind(t)
            .bind(&l.id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        } else if let Some(user) = &user_id {
            // The login keeps its id (the audit trail names it) and nothing else: its
            // email was sealed under its own key, destroyed here with the customer's
            // (in every copy of the database), and its lookup hash goes.
            sqlx::query(
                "UPDATE data_keys SET status = 'destroyed', wrapped = NULL, retired_at = COALESCE(retired_at, $3) \
                 WHERE tenant_id = $1 AND owner = $2",
            )
            .bind(t)
            .bind(format!("login:{user}"))
            .bind(now)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE users SET status = 'disabled', email = $3, email_hash = NULL, password_hash = '!erased', updated_at = $4 \
                 WHERE tenant_id = $1 AND id = $2",
            )
            .bind(t)
            .bind(user)
            .bind(format!("erased+{user}@invalid"))
            .bind(now)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE sessions SET revoked_at = COALESCE(revoked_at, $3), \
                 revoked_reason = COALESCE(revoked_reason, 'customer_erased'), ip = NULL, user_agent = NULL, \
                 last_ip = NULL WHERE tenant_id = $1 AND user_id = $2",
            )
            .bind(t)
            .bind(user)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            // The device facts of its sign-in challenges go the same way.
            sqlx::query(
                "UPDATE mfa_challenges SET ip = NULL, user_agent = NULL WHERE user_id = $1 \
                 AND (ip IS NOT NULL OR user_agent IS NOT NULL)",
            )
            .bind(user)
            .execute(&mut *tx)
            .await?;
            // Stored answers of its requests (sealed, but they may carry details).
            sqlx::query("DELETE FROM idempotency_keys WHERE tenant_id = $1 AND principal_id = $2")
                .bind(t)
                .bind(user)
                .execute(&mut *tx)
                .await?;
        }
        self.append_audit_tx(&mut tx, audit).await?;
        tx.commit().await?;
        let (user_id, user_unlinked) = match staff {
            Some(l) => (None, Some(l.id.clone())),
            None => (user_id, None),
        };
        Ok(ErasureOutcome::Erased {
            accounts_closed: closed.into_iter().map(|(a,)| a).collect(),
            user_id,
            user_unlinked,
            keys_destroyed,
            lookups_deleted,
        })
    }
}
