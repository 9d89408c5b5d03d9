//! Storage of tenants: their rows and their status (a suspension also revokes every session of
//! the tenant). A tenant is created with its first manager and its system accounts in one
//! transaction (`create_tenant`, through `users::insert_user_tx` and
//! `accounts::insert_account_tx`).

use async_trait::async_trait;

use super::backend::{Backend, Paged, SqlStore, for_update};
use super::*;
use crate::clock::Timestamp;
use crate::domain::audit::NewAuditEvent;
use crate::ids::TenantId;

/// Tenants (platform scope).
#[async_trait]
pub trait TenantStore: Send + Sync {
    /// Creates the tenant, its first manager (status `invited`: its invitation goes out next,
    /// sealed under the tenant's data key, which can only exist once the tenant does) and its
    /// system accounts in one transaction.
    async fn create_tenant(
        &self,
        tenant: &NewTenant,
        manager: &NewUser,
        system_accounts: &[NewAccount],
        audit: &[NewAuditEvent],
    ) -> StoreResult<()>;
    async fn get_tenant(&self, id: &TenantId) -> StoreResult<Option<TenantRecord>>;
    async fn get_tenant_by_slug(&self, slug: &str) -> StoreResult<Option<TenantRecord>>;
    async fn list_tenants(&self, page: &Page) -> StoreResult<Vec<TenantRecord>>;
    /// Sets `active`/`suspended`; suspension also revokes every session of the tenant.
    async fn set_tenant_status(
        &self,
        id: &TenantId,
        status: &'static str,
        now: Timestamp,
        audit: &[NewAuditEvent],
    ) -> StoreResult<Option<TenantRecord>>;
}

#[async_trait]
impl<S: SqlStore<Db = B>, B: Backend> TenantStore for S {
    async fn create_tenant(
        &self,
        t: &NewTenant,
        manager: &NewUser,
        system_accounts: &[NewAccount],
        audit: &[NewAuditEvent],
    ) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO tenants (id, slug, name, currencies, status, access_token_ttl_seconds, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, 'active', $5, $6, $6)",
        )
        .bind(t.id.as_str())
        .bind(&t.slug)
        .bind(&t.name)
        .bind(&t.currencies)
        .bind(t.access_token_ttl_seconds)
        .bind(t.created_at.as_micros())
        .execute(&mut *tx)
        .await?;
        users::insert_user_tx(&mut tx, manager, "invited").await?;
        for a in system_accounts {
            accounts::insert_account_tx(&mut tx, a).await?;
        }
        self.append_audit_tx(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_tenant(&self, id: &TenantId) -> StoreResult<Option<TenantRecord>> {
        Ok(sqlx::query_as("SELECT * FROM tenants WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(self.pool())
            .await?)
    }

    async fn get_tenant_by_slug(&self, slug: &str) -> StoreResult<Option<TenantRecord>> {
        Ok(sqlx::query_as("SELECT * FROM tenants WHERE slug = $1")
            .bind(slug)
            .fetch_optional(self.pool())
            .await?)
    }

    async fn list_tenants(&self, page: &Page) -> StoreResult<Vec<TenantRecord>> {
        Ok(sqlx::query_as(
            "SELECT * FROM tenants WHERE ($1 IS NULL OR id < $1) ORDER BY id DESC LIMIT $2",
        )
        .page(page)
        .fetch_all(self.pool())
        .await?)
    }

    async fn set_tenant_status(
        &self,
        id: &TenantId,
        status: &'static str,
        now: Timestamp,
        audit: &[NewAuditEvent],
    ) -> StoreResult<Option<TenantRecord>> {
        let mut tx = self.begin_write().await?;
        let row: Option<TenantRecord> = sqlx::query_as(
            "UPDATE tenants SET status = $2, updated_at = $3 WHERE id = $1 RETURNING *",
        )
        .bind(id.as_str())
        .bind(status)
        .bind(now.as_micros())
        .fetch_optional(&mut *tx)
        .await?;
        if row.is_none() {
            return Ok(None);
        }
        if status == "suspended" {
            // The tenant's users' rows, locked: a movement or change of access in flight
            // (which holds its actor's row for share until it commits) finishes first,
            // and one that starts now waits and then reads the tenant suspended.
            sqlx::query(for_update!(
                B,
                "SELECT id FROM users WHERE tenant_id = $1 ORDER BY id"
            ))
            .bind(id.as_str())
            .fetch_all(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE sessions SET revoked_at = $2, revoked_reason = 'tenant_suspended' \
                 WHERE tenant_id = $1 AND revoked_at IS NULL",
            )
            .bind(id.as_str())
            .bind(now.as_micros())
            .execute(&mut *tx)
            .await?;
        }
        self.append_audit_tx(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(row)
    }
}
