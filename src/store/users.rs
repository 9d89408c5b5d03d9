//! Storage of users: the rows written inside a change's transaction (a new user, active or
//! invited) and the rule that a tenant keeps an active MANAGER.

use async_trait::async_trait;
use sqlx::Transaction;

use super::backend::{Backend, Paged, RowsAffected, SqlStore};
use super::*;
use crate::clock::Timestamp;
use crate::domain::audit::NewAuditEvent;
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

/// Users. `tenant = None` is the platform scope (platform admins).
#[async_trait]
pub trait UserStore: Send + Sync {
    async fn create_user(&self, user: &NewUser, audit: &[NewAuditEvent]) -> StoreResult<()>;
    async fn get_user(
        &self,
        tenant: Option<&TenantId>,
        id: &UserId,
    ) -> StoreResult<Option<UserRecord>>;
    /// The login whose `email_hash` is `hash` (a row the start-up pass has not hashed yet is
    /// matched on its clear `email`).
    async fn find_user_by_email(
        &self,
        tenant: Option<&TenantId>,
        hash: &str,
        email: &Email,
    ) -> StoreResult<Option<UserRecord>>;
    /// Logins without an `email_hash` yet (written before it existed), by id.
    async fn users_without_email_hash(
        &self,
        after: Option<&str>,
        limit: i64,
    ) -> StoreResult<Vec<UserRecord>>;
    /// Sets a login's stored email and hash if its email is still `old` (compare-and-swap).
    async fn set_user_email(
        &self,
        id: &str,
        old: &str,
        email: &str,
        hash: &str,
    ) -> StoreResult<bool>;
    /// `only`: restrict to one user (ownership scope).
    async fn list_users(
        &self,
        tenant: &TenantId,
        only: Option<&UserId>,
        page: &Page,
    ) -> StoreResult<Vec<UserRecord>>;
    /// Applies `change`; refused with [`StoreError::LastManager`] (nothing changed) when it would
    /// take the MANAGER role from, or disable, the tenant's last active MANAGER: checked inside
    /// the transaction with the tenant's row locked, so two managers demoting each other at
    /// once cannot both succeed.
    /// With `actor`, the acting user's credential, status and roles are re-checked first in the
    /// same transaction, the tenant's row locked, so two users changing each other at once are
    /// serialised and the second sees the first's change ([`StoreError::ActorRevoked`]).
    async fn update_user(
        &self,
        tenant: &TenantId,
        id: &UserId,
        change: &UserChange,
        now: Timestamp,
        actor: Option<&ActorCheck>,
        audit: &[NewAuditEvent],
    ) -> StoreResult<Option<UserRecord>>;
}

#[async_trait]
impl<S: SqlStore<Db = B>, B: Backend> UserStore for S {
    async fn create_user(&self, u: &NewUser, audit: &[NewAuditEvent]) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        crate::store::users::insert_user_tx(&mut tx, u, "active").await?;
        self.append_audit_tx(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_user(
        &self,
        tenant: Option<&TenantId>,
        id: &UserId,
    ) -> StoreResult<Option<UserRecord>> {
        Ok(
            sqlx::query_as("SELECT * FROM users WHERE COALESCE(tenant_id, '') = $1 AND id = $2")
                .bind(tenant.map_or("", |t| t.as_str()))
                .bind(id.as_str())
                .fetch_optional(self.pool())
                .await?,
        )
    }

    async fn find_user_by_email(
        &self,
        tenant: Option<&TenantId>,
        hash: &str,
        email: &crate::domain::values::Email,
    ) -> StoreResult<Option<UserRecord>> {
        Ok(sqlx::query_as(
            "SELECT * FROM users WHERE COALESCE(tenant_id, '') = $1 \
             AND (email_hash = $2 OR (email_hash IS NULL AND email = $3)) \
             ORDER BY email_hash IS NULL LIMIT 1",
        )
        .bind(tenant.map_or("", |t| t.as_str()))
        .bind(hash)
        .bind(email.as_str())
        .fetch_optional(self.pool())
        .await?)
    }

    async fn users_without_email_hash(
        &self,
        after: Option<&str>,
        limit: i64,
    ) -> StoreResult<Vec<UserRecord>> {
        Ok(sqlx::query_as(
            "SELECT * FROM users WHERE email_hash IS NULL AND ($1 IS NULL OR id > $1) \
             ORDER BY id LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(self.pool())
        .await?)
    }

    async fn set_user_email(
        &self,
        id: &str,
        old: &str,
        email: &str,
        hash: &str,
    ) -> StoreResult<bool> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "UPDATE users SET email = $3, email_hash = $4 WHERE id = $1 AND email = $2",
        )
        .bind(id)
        .bind(old)
        .bind(email)
        .bind(hash)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            > 0;
        tx.commit().await?;
        Ok(done)
    }

    async fn list_users(
        &self,
        tenant: &TenantId,
        only: Option<&UserId>,
        page: &Page,
    ) -> StoreResult<Vec<UserRecord>> {
        Ok(sqlx::query_as(
            "SELECT * FROM users WHERE tenant_id = $1 AND ($2 IS NULL OR id = $2) \
             AND ($3 IS NULL OR id < $3) ORDER BY id DESC LIMIT $4",
        )
        .bind(tenant.as_str())
        .bind(only.map(|u| u.as_str()))
        .page(page)
        .fetch_all(self.pool())
        .await?)
    }

    async fn update_user(
        &self,
        tenant: &TenantId,
        id: &UserId,
        change: &UserChange,
        now: Timestamp,
        actor: Option<&ActorCheck>,
        audit: &[NewAuditEvent],
    ) -> StoreResult<Option<UserRecord>> {
        let mut tx = self.begin_write().await?;
        Self::authorise_change_tx(&mut tx, Some(tenant), actor, now.as_micros()).await?;
        let may_remove_manager = match change {
            UserChange::Status(status) => *status != "active",
            UserChange::Roles(roles) => !roles.contains(&crate::domain::authz::Role::Manager),
        };
        if may_remove_manager {
            crate::store::users::keep_a_manager_tx(&mut tx, tenant, id).await?;
        }
        let row: Option<UserRecord> = match change {
            UserChange::Status(status) => {
                // Enabling a user that never accepted its invitation (it has one and
                // never set a password) puts it back to `invited`, not `active`: only
                // accepting a link gives it a password and activates it.
                sqlx::query_as(
                    "UPDATE users SET status = CASE WHEN $3 = 'active' AND password_changed_at IS NULL \
                     AND EXISTS (SELECT 1 FROM user_invitations i WHERE i.user_id = users.id) \
                     THEN 'invited' ELSE $3 END, updated_at = $4 \
                     WHERE tenant_id = $1 AND id = $2 RETURNING *",
                )
                .bind(tenant.as_str())
                .bind(id.as_str())
                .bind(*status)
                .bind(now.as_micros())
                .fetch_optional(&mut *tx)
                .await?
            }
            UserChange::Roles(roles) => {
                sqlx::query_as(
                    "UPDATE users SET roles = $3, updated_at = $4 WHERE tenant_id = $1 AND id = $2 RETURNING *",
                )
                .bind(tenant.as_str())
                .bind(id.as_str())
                .bind(crate::domain::authz::roles_to_storage(roles))
                .bind(now.as_micros())
                .fetch_optional(&mut *tx)
                .await?
            }
        };
        if row.is_none() {
            return Ok(None);
        }
        // Disabling a user or changing their roles ends their sessions: tokens carry
        // roles, and a demoted user must not keep acting under the old ones.
        let revoke = match change {
            UserChange::Status("disabled") => Some("user_disabled"),
            UserChange::Roles(_) => Some("roles_changed"),
            UserChange::Status(_) => None,
        };
        if let Some(reason) = revoke {
            sqlx::query(
                "UPDATE sessions SET revoked_at = $3, revoked_reason = $4 \
                 WHERE tenant_id = $1 AND user_id = $2 AND revoked_at IS NULL",
            )
            .bind(tenant.as_str())
            .bind(id.as_str())
            .bind(now.as_micros())
            .bind(reason)
            .execute(&mut *tx)
            .await?;
        }
        self.append_audit_tx(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(row)
    }
}
