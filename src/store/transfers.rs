//! Storage reads of posted money (transfers, their entries, the legs reversals gave back) and
//! the records kept around a movement: idempotency keys (their stored outcomes) and the
//! per-credential budget counters. Money is posted only through `LedgerPort`
//! (`store::sqlite_writer`, `store::postgres::writer`), never here.

use async_trait::async_trait;

use super::backend::{Backend, Paged, RowsAffected, SqlStore};
use super::*;
use crate::clock::Timestamp;
use crate::ids::TenantId;

/// Posted transfers and the records kept around a movement.
#[async_trait]
pub trait TransferStore: Send + Sync {
    async fn get_idempotency(
        &self,
        tenant: &TenantId,
        principal: &str,
        key: &str,
        now: Timestamp,
    ) -> StoreResult<Option<IdempotencyRecord>>;
    /// Deletes expired idempotency keys; returns how many.
    async fn purge_idempotency(&self, now: Timestamp) -> StoreResult<u64>;
    /// Adds `n` to a credential's count for the window starting at `window_start`
    /// (microseconds), atomically, and returns the window's total; earlier windows of the
    /// credential are dropped. Every per-credential budget counts here (`service::budgets`):
    /// refused movements under the bare credential, searches under `search:<credential>`.
    async fn add_refusals(
        &self,
        tenant: &TenantId,
        credential: &str,
        window_start: i64,
        n: i64,
    ) -> StoreResult<i64>;
    async fn get_transfer(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> StoreResult<Option<PostedTransfer>>;
    async fn list_transfers(
        &self,
        tenant: &TenantId,
        filter: &TransferFilter,
        page: &Page,
    ) -> StoreResult<Vec<TransferRecord>>;
    /// An account's entries, newest first.
    async fn list_entries(
        &self,
        tenant: &TenantId,
        account: &str,
        page: &Page,
    ) -> StoreResult<Vec<EntryRecord>>;
    /// How much each leg (account) of a transfer has given back through reversals.
    async fn reversed_legs(
        &self,
        tenant: &TenantId,
        transfer: &str,
    ) -> StoreResult<Vec<(String, i64)>>;
}

#[async_trait]
impl<S: SqlStore<Db = B>, B: Backend> TransferStore for S {
    async fn get_idempotency(
        &self,
        tenant: &TenantId,
        principal: &str,
        key: &str,
        now: Timestamp,
    ) -> StoreResult<Option<IdempotencyRecord>> {
        Ok(sqlx::query_as(
            "SELECT request_hash, response_status, response_body FROM idempotency_keys \
             WHERE tenant_id = $1 AND principal_id = $2 AND idem_key = $3 AND expires_at > $4",
        )
        .bind(tenant.as_str())
        .bind(principal)
        .bind(key)
        .bind(now.as_micros())
        .fetch_optional(self.pool())
        .await?)
    }

    async fn purge_idempotency(&self, now: Timestamp) -> StoreResult<u64> {
        let mut tx = self.begin_write().await?;
        let n = sqlx::query("DELETE FROM idempotency_keys WHERE expires_at <= $1")
            .bind(now.as_micros())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n)
    }

    async fn add_refusals(
        &self,
        tenant: &TenantId,
        credential: &str,
        window_start: i64,
        n: i64,
    ) -> StoreResult<i64> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "DELETE FROM refusal_budgets WHERE tenant_id = $1 AND credential = $2 AND window_start < $3",
        )
        .bind(tenant.as_str())
        .bind(credential)
        .bind(window_start)
        .execute(&mut *tx)
        .await?;
        let (total,): (i64,) = sqlx::query_as(
            "INSERT INTO refusal_budgets (tenant_id, credential, window_start, refused) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (tenant_id, credential, window_start) DO UPDATE SET refused = refusal_budgets.refused + excluded.refused \
             RETURNING refused",
        )
        .bind(tenant.as_str())
        .bind(credential)
        .bind(window_start)
        .bind(n)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(total)
    }

    async fn get_transfer(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> StoreResult<Option<PostedTransfer>> {
        let transfer: Option<TransferRecord> =
            sqlx::query_as("SELECT * FROM transfers WHERE tenant_id = $1 AND id = $2")
                .bind(tenant.as_str())
                .bind(id)
                .fetch_optional(self.pool())
                .await?;
        let Some(transfer) = transfer else {
            return Ok(None);
        };
        let entries = sqlx::query_as(
            "SELECT e.*, CASE WHEN a.kind = 'customer' THEN NULL ELSE a.kind END AS system \
             FROM entries e JOIN accounts a ON a.id = e.account_id \
             WHERE e.tenant_id = $1 AND e.transfer_id = $2 ORDER BY e.id",
        )
        .bind(tenant.as_str())
        .bind(id)
        .fetch_all(self.pool())
        .await?;
        Ok(Some(PostedTransfer {
            transfer,
            entries,
            details: None,
        }))
    }

    async fn list_transfers(
        &self,
        tenant: &TenantId,
        f: &TransferFilter,
        page: &Page,
    ) -> StoreResult<Vec<TransferRecord>> {
        Ok(sqlx::query_as(
            "SELECT t.* FROM transfers t WHERE t.tenant_id = $1 \
             AND ($2 IS NULL OR EXISTS (SELECT 1 FROM entries e WHERE e.transfer_id = t.id AND e.account_id = $2)) \
             AND ($3 IS NULL OR EXISTS (SELECT 1 FROM entries e JOIN accounts a ON a.id = e.account_id \
                                        WHERE e.transfer_id = t.id AND a.customer_id = $3)) \
             AND ($4 IS NULL OR t.created_at >= $4) AND ($5 IS NULL OR t.created_at < $5) \
             AND ($6 IS NULL OR t.id < $6) ORDER BY t.id DESC LIMIT $7",
        )
        .bind(tenant.as_str())
        .bind(f.account_id.as_deref())
        .bind(f.customer_id.as_deref())
        .bind(f.created_after.map(|t| t.as_micros()))
        .bind(f.created_before.map(|t| t.as_micros()))
        .page(page)
        .fetch_all(self.pool())
        .await?)
    }

    async fn list_entries(
        &self,
        tenant: &TenantId,
        account: &str,
        page: &Page,
    ) -> StoreResult<Vec<EntryRecord>> {
        Ok(sqlx::query_as(
            "SELECT * FROM entries WHERE tenant_id = $1 AND account_id = $2 \
             AND ($3 IS NULL OR account_seq < (SELECT c.account_seq FROM entries c WHERE c.account_id = $2 AND c.id = $3)) \
             ORDER BY account_seq DESC LIMIT $4",
        )
        .bind(tenant.as_str())
        .bind(account)
        .page(page)
        .fetch_all(self.pool())
        .await?)
    }

    async fn reversed_legs(
        &self,
        tenant: &TenantId,
        transfer: &str,
    ) -> StoreResult<Vec<(String, i64)>> {
        Ok(sqlx::query_as(
            "SELECT r.account_id, r.reversed FROM reversal_legs r JOIN transfers t ON t.id = r.transfer_id \
             WHERE t.tenant_id = $1 AND r.transfer_id = $2 ORDER BY r.account_id",
        )
        .bind(tenant.as_str())
        .bind(transfer)
        .fetch_all(self.pool())
        .await?)
    }
}
