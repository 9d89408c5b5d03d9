//! The checks every change of access and every creation for a customer makes first, inside its
//! own transaction: the acting user and credential re-read (and, on PostgreSQL, share-locked)
//! so a revocation either committed before and is seen or waits for this commit
//! ([`check_actor_tx`]), changes of access serialised per tenant ([`authorise_change_tx`]), and
//! the customer's row locked against its erasure ([`lock_customer_tx`]).

use sqlx::Transaction;

use super::backend::{Backend, for_share, for_update};
use super::{ActorCheck, ActorCredential, StoreError, StoreResult};
use crate::domain::authz::{ActorStanding, still_authorised};
use crate::ids::TenantId;

/// The standing of an actor (user and credential) as this transaction reads it: on PostgreSQL
/// the user's row and then the credential's are locked for share until the commit, so a
/// disable, role change, sign-out or revocation (each an UPDATE of one of them) either
/// committed before and is seen, or waits for this commit. The user row first, then the
/// credential's, as every change of both takes them.
pub(super) async fn actor_standing_tx<B: Backend>(
    tx: &mut Transaction<'static, B>,
    user: &str,
    credential: &ActorCredential,
    now: i64,
) -> StoreResult<Option<ActorStanding>> {
    let row: Option<(String, String)> = sqlx::query_as(for_share!(
        B,
        "SELECT status, roles FROM users WHERE id = $1"
    ))
    .bind(user)
    .fetch_optional(&mut **tx)
    .await?;
    let Some((user_status, roles)) = row else {
        return Ok(None);
    };
    let (sql, id) = match credential {
        ActorCredential::Session(id) => (
            for_share!(
                B,
                "SELECT revoked_at, expires_at, COALESCE((SELECT t.status FROM tenants t \
                 WHERE t.id = sessions.tenant_id), 'active'), authenticated_at \
                 FROM sessions WHERE id = $1 AND user_id = $2"
            ),
            id,
        ),
        ActorCredential::ApiToken(id) => (
            for_share!(
                B,
                "SELECT revoked_at, expires_at, COALESCE((SELECT t.status FROM tenants t \
                 WHERE t.id = api_tokens.tenant_id), 'active'), CAST(NULL AS BIGINT) \
                 FROM api_tokens WHERE id = $1 AND user_id = $2"
            ),
            id,
        ),
    };
    // The tenant's status is read by this later statement, after the user's row is locked: a
    // suspension (which locks its users' rows) either committed before and is seen, or waits
    // for this transaction.
    let live: Option<(Option<i64>, i64, String, Option<i64>)> = sqlx::query_as(sql)
        .bind(id)
        .bind(user)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(Some(ActorStanding {
        user_status,
        roles,
        credential_live: live
            .as_ref()
            .is_some_and(|(revoked, end, _, _)| revoked.is_none() && *end > now),
        authenticated_at: live.as_ref().and_then(|(_, _, _, at)| *at),
        tenant_active: live.is_none_or(|(_, _, tenant, _)| tenant == "active"),
    }))
}

/// The first step of every change of access (users' status and roles, second factors, API
/// tokens, invitations): the tenant's row is locked, so these changes are serialised per tenant
/// (two users changing each other at once, on two instances, cannot deadlock and the second
/// sees the first's change), then the actor is re-checked ([`check_actor_tx`]).
pub(super) async fn authorise_change_tx<B: Backend>(
    tx: &mut Transaction<'static, B>,
    tenant: Option<&TenantId>,
    actor: Option<&ActorCheck>,
    now: i64,
) -> StoreResult<()> {
    let Some(actor) = actor else {
        return Ok(());
    };
    if let Some(tenant) = tenant {
        sqlx::query("UPDATE tenants SET updated_at = updated_at WHERE id = $1")
            .bind(tenant.as_str())
            .execute(&mut **tx)
            .await?;
    }
    check_actor_tx(tx, actor, now).await
}

/// Refuses ([`StoreError::ActorRevoked`]) unless the actor may still act: its credential live,
/// its user active, its roles those the request was authorised with
/// (`domain::authz::still_authorised`).
pub(super) async fn check_actor_tx<B: Backend>(
    tx: &mut Transaction<'static, B>,
    actor: &ActorCheck,
    now: i64,
) -> StoreResult<()> {
    let standing = actor_standing_tx(tx, &actor.user_id, &actor.credential, now).await?;
    still_authorised(&actor.roles, standing.as_ref()).map_err(StoreError::ActorRevoked)
}

/// Locks customer `id`'s row inside `tx` and answers its KYC tier, or
/// `StoreError::CustomerErased` when it is erased or missing. Every transaction that creates
/// something for a customer (an account, a KYC submission and its documents, a KYC decision)
/// calls this first, and the erasure takes the same lock first: the two serialise on the row,
/// on either backend and whatever the instance, so nothing is ever created for an erased
/// customer (a read taken before the transaction is never trusted for this). On SQLite,
/// `BEGIN IMMEDIATE` already serialises writers.
pub(super) async fn lock_customer_tx<B: Backend>(
    tx: &mut Transaction<'static, B>,
    tenant: &str,
    id: &str,
) -> StoreResult<i64> {
    let row: Option<(String, i64)> = sqlx::query_as(for_update!(
        B,
        "SELECT status, kyc_tier FROM customers WHERE tenant_id = $1 AND id = $2"
    ))
    .bind(tenant)
    .bind(id)
    .fetch_optional(&mut **tx)
    .await?;
    match row {
        Some((status, tier)) if status == "active" => Ok(tier),
        _ => Err(StoreError::CustomerErased),
    }
}
