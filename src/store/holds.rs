//! Storage of holds: reading them, and the release of expired holds every write on an account
//! runs first ([`expire_holds_tx`]). A hold is placed, voided and captured by the ledger core
//! through the ledger writers (`LedgerPort`), like every other change to balances and
//! reservations, not here.

use async_trait::async_trait;
use sqlx::Transaction;

use super::backend::{Backend, Paged, SqlStore};
use super::*;
use crate::clock::Timestamp;
use crate::ids::TenantId;

/// Holds on accounts.
#[async_trait]
pub trait HoldStore: Send + Sync {
    async fn get_hold(&self, tenant: &TenantId, id: &str) -> StoreResult<Option<HoldRecord>>;
    async fn list_holds(
        &self,
        tenant: &TenantId,
        account: &str,
        page: &Page,
    ) -> StoreResult<Vec<HoldRecord>>;
    /// The totals of holds past expiry but not yet released, on the account (pending debits)
    /// and towards it (pending credits).
    async fn expired_holds(
        &self,
        tenant: &TenantId,
        account: &str,
        now: Timestamp,
    ) -> StoreResult<(i64, i64)>;
}

#[async_trait]
impl<S: SqlStore<Db = B>, B: Backend> HoldStore for S {
    async fn get_hold(&self, tenant: &TenantId, id: &str) -> StoreResult<Option<HoldRecord>> {
        Ok(
            sqlx::query_as("SELECT * FROM holds WHERE tenant_id = $1 AND id = $2")
                .bind(tenant.as_str())
                .bind(id)
                .fetch_optional(self.pool())
                .await?,
        )
    }

    async fn list_holds(
        &self,
        tenant: &TenantId,
        account: &str,
        page: &Page,
    ) -> StoreResult<Vec<HoldRecord>> {
        Ok(sqlx::query_as(
            "SELECT * FROM holds WHERE tenant_id = $1 AND account_id = $2 AND ($3 IS NULL OR id < $3) ORDER BY id DESC LIMIT $4",
        )
        .bind(tenant.as_str())
        .bind(account)
        .page(page)
        .fetch_all(self.pool())
        .await?)
    }

    async fn expired_holds(
        &self,
        tenant: &TenantId,
        account: &str,
        now: Timestamp,
    ) -> StoreResult<(i64, i64)> {
        let (debits, credits): (i64, i64) = sqlx::query_as(
            "SELECT CAST(COALESCE(SUM(CASE WHEN account_id = $2 THEN amount ELSE 0 END), 0) AS BIGINT), \
                    CAST(COALESCE(SUM(CASE WHEN credit_account_id = $2 THEN amount ELSE 0 END), 0) AS BIGINT) FROM holds \
             WHERE tenant_id = $1 AND (account_id = $2 OR credit_account_id = $2) AND status = 'active' AND expires_at <= $3",
        )
        .bind(tenant.as_str())
        .bind(account)
        .bind(now.as_micros())
        .fetch_one(self.pool())
        .await?;
        Ok((debits, credits))
    }
}

/// Releases the holds on (or towards) an account that have expired: they stop counting
/// against the available balance, and as pending credits, at their expiry, whether or not
/// anything else has run since.
pub(super) async fn expire_holds_tx<B: Backend>(
    tx: &mut Transaction<'static, B>,
    tenant: &str,
    account: &str,
    now: i64,
) -> StoreResult<()> {
    let expired: Vec<(String, Option<String>, i64)> = sqlx::query_as(
        "UPDATE holds SET status = 'expired', updated_at = $3 \
         WHERE tenant_id = $1 AND (account_id = $2 OR credit_account_id = $2) AND status = 'active' AND expires_at <= $3 \
         RETURNING account_id, credit_account_id, amount",
    )
    .bind(tenant)
    .bind(account)
    .bind(now)
    .fetch_all(&mut **tx)
    .await?;
    for (debit, credit, amount) in expired {
        release_hold_tx(tx, tenant, &debit, credit.as_deref(), amount).await?;
    }
    Ok(())
}

/// Takes a released hold off its account's pending debits and its destination's pending
/// credits.
async fn release_hold_tx<B: Backend>(
    tx: &mut Transaction<'static, B>,
    tenant: &str,
    debit: &str,
    credit: Option<&str>,
    amount: i64,
) -> StoreResult<()> {
    sqlx::query(
        "UPDATE accounts SET pending_debits = pending_debits - $3 WHERE tenant_id = $1 AND id = $2",
    )
    .bind(tenant)
    .bind(debit)
    .bind(amount)
    .execute(&mut **tx)
    .await?;
    if let Some(credit) = credit {
        sqlx::query(
            "UPDATE accounts SET pending_credits = pending_credits - $3 WHERE tenant_id = $1 AND id = $2",
        )
        .bind(tenant)
        .bind(credit)
        .bind(amount)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}
