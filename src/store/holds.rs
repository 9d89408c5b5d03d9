//! Storage of holds: the release of expired holds every write on an account runs first
//! ([`expire_holds_tx`]), generic over the backend. A hold is captured by the ledger writers
//! (`LedgerPort`), not here.

use sqlx::Transaction;

use super::StoreResult;
use super::backend::Backend;

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
pub(super) async fn release_hold_tx<B: Backend>(
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
