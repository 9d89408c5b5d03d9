//! Storage of ledger accounts: opening (under the customer row's lock), reading, paging, status
//! and overdraft changes (each a conditional update, after the account's expired holds are
//! released), the double-entry check's sums, and the rows written inside a change's transaction
//! ([`insert_account_tx`], which `create_tenant` calls for the system accounts). Balances change
//! only through the ledger writers (`LedgerPort`) and holds (`store::holds`).

use async_trait::async_trait;
use sqlx::Transaction;

use super::backend::{Backend, Paged, SqlStore};
use super::holds::expire_holds_tx;
use super::*;
use crate::clock::Timestamp;
use crate::domain::audit::NewAuditEvent;
use crate::ids::TenantId;

/// Ledger accounts.
#[async_trait]
pub trait AccountStore: Send + Sync {
    async fn open_account(&self, account: &NewAccount, audit: &[NewAuditEvent]) -> StoreResult<()>;
    async fn get_account(&self, tenant: &TenantId, id: &str) -> StoreResult<Option<AccountRecord>>;
    async fn system_account(
        &self,
        tenant: &TenantId,
        kind: &str,
        currency: &str,
    ) -> StoreResult<Option<AccountRecord>>;
    /// `customer`: only that customer's accounts (ownership scope).
    /// Accounts of the tenant, newest first; system accounts only when `include_system`.
    async fn list_accounts(
        &self,
        tenant: &TenantId,
        customer: Option<&str>,
        include_system: bool,
        page: &Page,
    ) -> StoreResult<Vec<AccountRecord>>;
    /// Sets the status; `closed` only applies at zero balance with nothing pending. The staff
    /// note, if any, is written in the same transaction.
    async fn set_account_status(
        &self,
        tenant: &TenantId,
        id: &str,
        status: &'static str,
        now: Timestamp,
        audit: &[NewAuditEvent],
        note: Option<&notes::NewStaffNote>,
    ) -> StoreResult<Option<AccountRecord>>;
    /// Sets the overdraft limit if the current balance stays within it.
    async fn set_overdraft(
        &self,
        tenant: &TenantId,
        id: &str,
        limit: i64,
        now: Timestamp,
        audit: &[NewAuditEvent],
    ) -> StoreResult<Option<AccountRecord>>;
    /// Sum of all posted balances per currency for a tenant (the double-entry invariant: zero).
    async fn balance_sums(&self, tenant: &TenantId) -> StoreResult<Vec<(String, i64)>>;
}

#[async_trait]
impl<S: SqlStore<Db = B>, B: Backend> AccountStore for S {
    async fn open_account(&self, a: &NewAccount, audit: &[NewAuditEvent]) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        if let Some(customer) = &a.customer_id {
            Self::lock_customer_tx(&mut tx, a.tenant_id.as_str(), customer.as_str()).await?;
        }
        insert_account_tx(&mut tx, a).await?;
        self.append_audit_tx(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_account(&self, tenant: &TenantId, id: &str) -> StoreResult<Option<AccountRecord>> {
        Ok(
            sqlx::query_as("SELECT * FROM accounts WHERE tenant_id = $1 AND id = $2")
                .bind(tenant.as_str())
                .bind(id)
                .fetch_optional(self.pool())
                .await?,
        )
    }

    async fn system_account(
        &self,
        tenant: &TenantId,
        kind: &str,
        currency: &str,
    ) -> StoreResult<Option<AccountRecord>> {
        Ok(sqlx::query_as(
            "SELECT * FROM accounts WHERE tenant_id = $1 AND customer_id IS NULL AND kind = $2 AND currency = $3",
        )
        .bind(tenant.as_str())
        .bind(kind)
        .bind(currency)
        .fetch_optional(self.pool())
        .await?)
    }

    async fn list_accounts(
        &self,
        tenant: &TenantId,
        customer: Option<&str>,
        include_system: bool,
        page: &Page,
    ) -> StoreResult<Vec<AccountRecord>> {
        Ok(sqlx::query_as(
            "SELECT * FROM accounts WHERE tenant_id = $1 AND ($2 IS NULL OR customer_id = $2) \
             AND ($3 IS NULL OR id < $3) AND ($5 OR kind = 'customer') ORDER BY id DESC LIMIT $4",
        )
        .bind(tenant.as_str())
        .bind(customer)
        .page(page)
        .bind(include_system)
        .fetch_all(self.pool())
        .await?)
    }

    async fn set_account_status(
        &self,
        tenant: &TenantId,
        id: &str,
        status: &'static str,
        now: Timestamp,
        audit: &[NewAuditEvent],
        note: Option<&notes::NewStaffNote>,
    ) -> StoreResult<Option<AccountRecord>> {
        let mut tx = self.begin_write().await?;
        expire_holds_tx(&mut tx, tenant.as_str(), id, now.as_micros()).await?;
        // Closing needs a zero balance and nothing pending; a closed account stays closed.
        let row: Option<AccountRecord> = sqlx::query_as(
            "UPDATE accounts SET status = $3, updated_at = $4 \
             WHERE tenant_id = $1 AND id = $2 AND status <> 'closed' \
             AND ($3 <> 'closed' OR (posted = 0 AND pending_debits = 0 AND pending_credits = 0)) \
             RETURNING *",
        )
        .bind(tenant.as_str())
        .bind(id)
        .bind(status)
        .bind(now.as_micros())
        .fetch_optional(&mut *tx)
        .await?;
        if row.is_none() {
            return Ok(None);
        }
        if let Some(n) = note {
            notes::insert_staff_note_tx(&mut tx, n).await?;
        }
        self.append_audit_tx(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(row)
    }

    async fn set_overdraft(
        &self,
        tenant: &TenantId,
        id: &str,
        limit: i64,
        now: Timestamp,
        audit: &[NewAuditEvent],
    ) -> StoreResult<Option<AccountRecord>> {
        let mut tx = self.begin_write().await?;
        expire_holds_tx(&mut tx, tenant.as_str(), id, now.as_micros()).await?;
        let row: Option<AccountRecord> = sqlx::query_as(
            "UPDATE accounts SET overdraft_limit = $3, updated_at = $4 \
             WHERE tenant_id = $1 AND id = $2 AND kind = 'customer' AND status <> 'closed' \
             AND posted - pending_debits >= -$3 RETURNING *",
        )
        .bind(tenant.as_str())
        .bind(id)
        .bind(limit)
        .bind(now.as_micros())
        .fetch_optional(&mut *tx)
        .await?;
        if row.is_none() {
            return Ok(None);
        }
        self.append_audit_tx(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(row)
    }

    async fn balance_sums(&self, tenant: &TenantId) -> StoreResult<Vec<(String, i64)>> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT currency, CAST(COALESCE(SUM(posted), 0) AS BIGINT) FROM accounts WHERE tenant_id = $1 GROUP BY currency ORDER BY currency",
        )
        .bind(tenant.as_str())
        .fetch_all(self.pool())
        .await?;
        Ok(rows)
    }
}

/// Inserts an account (status `active`) inside `tx`.
pub(super) async fn insert_account_tx<B: Backend>(
    tx: &mut Transaction<'static, B>,
    a: &NewAccount,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO accounts (id, tenant_id, customer_id, kind, currency, status, overdraft_limit, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, 'active', $6, $7, $7)",
    )
    .bind(a.id.as_str())
    .bind(a.tenant_id.as_str())
    .bind(a.customer_id.as_ref().map(|c| c.as_str()))
    .bind(a.kind.as_str())
    .bind(&a.currency)
    .bind(a.overdraft_limit)
    .bind(a.created_at.as_micros())
    .execute(&mut **tx)
    .await?;
    Ok(())
}
