//! Storage of holds: reserving part of an account's available balance (a conditional update,
//! shown as pending credits of the destination when the hold names one), voiding, reading, and
//! the release of expired holds every write on an account runs first ([`expire_holds_tx`]).
//! A hold is captured by the ledger writers (`LedgerPort`), not here.

use async_trait::async_trait;
use sqlx::Transaction;

use super::backend::{Backend, Paged, RowsAffected, SqlStore};
use super::*;
use crate::clock::Timestamp;
use crate::domain::audit::NewAuditEvent;
use crate::domain::ledger::{AccountKind, Movement, Refusal, StoredOutcome};
use crate::ids::TenantId;

/// Holds on accounts.
#[async_trait]
pub trait HoldStore: Send + Sync {
    /// Reserves `amount` of the account's available balance (a conditional update), and shows
    /// it as pending credits of the destination when the hold names one. With a key, the key
    /// is recorded in the same transaction; `Conflict` means another request took it first.
    async fn create_hold(
        &self,
        hold: &NewHold,
        idempotency: Option<&NewIdempotency>,
        audit: &[NewAuditEvent],
    ) -> StoreResult<Result<HoldRecord, Refusal>>;
    /// Releases an active, unexpired hold.
    async fn void_hold(
        &self,
        tenant: &TenantId,
        id: &str,
        now: Timestamp,
        actor: Option<&ActorCheck>,
        audit: &[NewAuditEvent],
    ) -> StoreResult<Option<HoldRecord>>;
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
    async fn create_hold(
        &self,
        h: &NewHold,
        idempotency: Option<&NewIdempotency>,
        audit: &[NewAuditEvent],
    ) -> StoreResult<Result<HoldRecord, Refusal>> {
        let now = h.created_at.as_micros();
        let mut tx = self.begin_write().await?;
        // A hold may rest on (or be destined for) only accounts whose kind takes holds:
        // the posting engine's table, so no credential can reserve system money.
        for account in std::iter::once(&h.account_id).chain(h.credit_account_id.iter()) {
            let kind: Option<(String,)> =
                sqlx::query_as("SELECT kind FROM accounts WHERE tenant_id = $1 AND id = $2")
                    .bind(h.tenant_id.as_str())
                    .bind(account)
                    .fetch_optional(&mut *tx)
                    .await?;
            if let Some((kind,)) = kind
                && !AccountKind::parse(&kind).is_some_and(|k| Movement::Hold.may_touch(k))
            {
                return Ok(Err(Refusal::SystemAccount(account.clone())));
            }
        }
        expire_holds_tx(&mut tx, h.tenant_id.as_str(), &h.account_id, now).await?;
        let reserved: Option<(String,)> = sqlx::query_as(
            "UPDATE accounts SET pending_debits = pending_debits + $3, updated_at = $4 \
             WHERE tenant_id = $1 AND id = $2 AND currency = $5 AND status = 'active' \
             AND ($6 IS NULL OR customer_id = $6) \
             AND posted - pending_debits - $3 >= -overdraft_limit RETURNING id",
        )
        .bind(h.tenant_id.as_str())
        .bind(&h.account_id)
        .bind(h.amount)
        .bind(now)
        .bind(&h.currency)
        .bind(h.owner.as_deref())
        .fetch_optional(&mut *tx)
        .await?;
        if reserved.is_none() {
            let why = accounts::why_refused(
                &mut tx,
                h.tenant_id.as_str(),
                &h.account_id,
                &h.currency,
                h.owner.as_deref(),
                true,
            )
            .await?;
            return Ok(Err(why));
        }
        if let Some(credit) = &h.credit_account_id {
            expire_holds_tx(&mut tx, h.tenant_id.as_str(), credit, now).await?;
            let shown: Option<(String,)> = sqlx::query_as(
                "UPDATE accounts SET pending_credits = pending_credits + $3, updated_at = $4 \
                 WHERE tenant_id = $1 AND id = $2 AND currency = $5 AND status <> 'closed' RETURNING id",
            )
            .bind(h.tenant_id.as_str())
            .bind(credit)
            .bind(h.amount)
            .bind(now)
            .bind(&h.currency)
            .fetch_optional(&mut *tx)
            .await?;
            if shown.is_none() {
                let why = accounts::why_refused(
                    &mut tx,
                    h.tenant_id.as_str(),
                    credit,
                    &h.currency,
                    None,
                    false,
                )
                .await?;
                return Ok(Err(why));
            }
        }
        // The actor, after the accounts (the posting transaction's order): a hold placed
        // by someone whose right ended meanwhile reserves nothing.
        if let Some(actor) = &h.actor {
            let standing =
                Self::actor_standing_tx(&mut tx, &actor.user_id, &actor.credential, now).await?;
            if let Err(r) = crate::domain::authz::still_authorised(&actor.roles, standing.as_ref())
            {
                return Ok(Err(Refusal::ActorRevoked(r)));
            }
        }
        let record: HoldRecord = sqlx::query_as(
            "INSERT INTO holds (id, tenant_id, account_id, credit_account_id, currency, amount, status, expires_at, reference, created_by, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, 'active', $7, $8, $9, $10, $10) RETURNING *",
        )
        .bind(h.id.as_str())
        .bind(h.tenant_id.as_str())
        .bind(&h.account_id)
        .bind(&h.credit_account_id)
        .bind(&h.currency)
        .bind(h.amount)
        .bind(h.expires_at.as_micros())
        .bind(&h.reference)
        .bind(&h.created_by)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        if let Some(k) = idempotency {
            let body = StoredOutcome::Hold(record.id.clone()).encode();
            let inserted = sqlx::query(
                "INSERT INTO idempotency_keys (tenant_id, principal_id, idem_key, request_hash, response_status, response_body, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                 ON CONFLICT (tenant_id, principal_id, idem_key) DO UPDATE SET \
                 request_hash = excluded.request_hash, response_status = excluded.response_status, \
                 response_body = excluded.response_body, created_at = excluded.created_at, expires_at = excluded.expires_at \
                 WHERE idempotency_keys.expires_at <= excluded.created_at",
            )
            .bind(h.tenant_id.as_str())
            .bind(&k.principal_id)
            .bind(&k.key)
            .bind(&k.request_hash)
            .bind(OUTCOME_STATUS)
            .bind(&body)
            .bind(now)
            .bind(k.expires_at.as_micros())
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if inserted == 0 {
                // Another request with this key committed first: this one changes nothing.
                tx.rollback().await?;
                return Err(StoreError::Conflict {
                    constraint: "idempotency_keys".into(),
                });
            }
        }
        self.append_audit_tx(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(Ok(record))
    }

    async fn void_hold(
        &self,
        tenant: &TenantId,
        id: &str,
        now: Timestamp,
        actor: Option<&ActorCheck>,
        audit: &[NewAuditEvent],
    ) -> StoreResult<Option<HoldRecord>> {
        let mut tx = self.begin_write().await?;
        let row: Option<HoldRecord> = sqlx::query_as(
            "UPDATE holds SET status = 'voided', updated_at = $3 \
             WHERE tenant_id = $1 AND id = $2 AND status = 'active' AND expires_at > $3 RETURNING *",
        )
        .bind(tenant.as_str())
        .bind(id)
        .bind(now.as_micros())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else { return Ok(None) };
        release_hold_tx(
            &mut tx,
            tenant.as_str(),
            &row.account_id,
            row.credit_account_id.as_deref(),
            row.amount,
        )
        .await?;
        // The actor after the accounts, as the posting transaction takes them.
        if let Some(actor) = actor {
            Self::check_actor_tx(&mut tx, actor, now.as_micros()).await?;
        }
        self.append_audit_tx(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(Some(row))
    }

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
