//! Storage of users: the rows written inside a change's transaction (a new user, active or
//! invited) and the rule that a tenant keeps an active MANAGER.

use sqlx::Transaction;

use super::backend::Backend;
use super::{NewUser, StoreError, StoreResult};
use crate::ids::{TenantId, UserId};

/// Refuses (rolling back) a change that would leave `tenant` without an active
/// MANAGER, when `id` is one: the tenant's row is locked first by a no-op update
/// (a lock that, on PostgreSQL, does not wait for the key-share locks every insert
/// referencing the tenant takes), so of two such changes the second sees the first.
pub(super) async fn keep_a_manager_tx<B: Backend>(
    tx: &mut Transaction<'static, B>,
    tenant: &TenantId,
    id: &UserId,
) -> StoreResult<()> {
    sqlx::query("UPDATE tenants SET updated_at = updated_at WHERE id = $1")
        .bind(tenant.as_str())
        .execute(&mut **tx)
        .await?;
    let (others,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM users WHERE tenant_id = $1 AND id <> $2 \
         AND status = 'active' AND (',' || roles || ',') LIKE '%,MANAGER,%'",
    )
    .bind(tenant.as_str())
    .bind(id.as_str())
    .fetch_one(&mut **tx)
    .await?;
    if others > 0 {
        return Ok(());
    }
    let target: Option<(i32,)> = sqlx::query_as(
        "SELECT 1 FROM users WHERE tenant_id = $1 AND id = $2 \
         AND status = 'active' AND (',' || roles || ',') LIKE '%,MANAGER,%'",
    )
    .bind(tenant.as_str())
    .bind(id.as_str())
    .fetch_optional(&mut **tx)
    .await?;
    if target.is_some() {
        return Err(StoreError::LastManager);
    }
    Ok(())
}

/// Inserts a user inside `tx` with `status`: `active` (its password already set, as a
/// platform admin's) or `invited` (no password of its own until it accepts a link).
pub(super) async fn insert_user_tx<B: Backend>(
    tx: &mut Transaction<'static, B>,
    u: &NewUser,
    status: &'static str,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO users (id, tenant_id, email, password_hash, roles, status, created_at, updated_at, email_hash) \
         VALUES ($1, $2, $3, $4, $5, $8, $6, $6, $7)",
    )
    .bind(u.id.as_str())
    .bind(u.tenant_id.as_ref().map(|t| t.as_str()))
    .bind(u.email.as_str())
    .bind(&u.password_hash)
    .bind(crate::domain::authz::roles_to_storage(&u.roles))
    .bind(u.created_at.as_micros())
    .bind(&u.email_hash)
    .bind(status)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
