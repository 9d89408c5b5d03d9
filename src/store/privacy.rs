//! Storage side of data-subject rights (`service::privacy`): a customer's privacy state, the
//! restriction of processing, and the audit records about a customer. The erasure itself
//! (`Store::erase_customer`) stays next to the ledger, whose holds it releases.

use async_trait::async_trait;

use super::audit::AuditRow;
use super::backend::{Backend, SqlStore};
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
    /// The first of `accounts` whose customer's processing is restricted, if any (one indexed
    /// look-up: accounts by id, joined to their customers).
    async fn restricted_account(
        &self,
        tenant: &TenantId,
        accounts: &[&str],
    ) -> StoreResult<Option<String>>;
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

    async fn restricted_account(
        &self,
        tenant: &TenantId,
        accounts: &[&str],
    ) -> StoreResult<Option<String>> {
        if accounts.is_empty() {
            return Ok(None);
        }
        let mut qb = sqlx::QueryBuilder::<B>::new(
            "SELECT a.id FROM accounts a JOIN customers c ON c.id = a.customer_id \
             WHERE c.processing_restricted <> 0 AND a.tenant_id = ",
        );
        qb.push_bind(tenant.as_str());
        qb.push(" AND a.id IN (");
        let mut ids = qb.separated(", ");
        for a in accounts {
            ids.push_bind(*a);
        }
        qb.push(") ORDER BY a.id LIMIT 1");
        let row: Option<(String,)> = qb
            .build_query_as()
            .persistent(B::PERSIST)
            .fetch_optional(self.pool())
            .await?;
        Ok(row.map(|(id,)| id))
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
}
