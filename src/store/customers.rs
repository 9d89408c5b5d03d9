//! Storage of customers: the rows written inside a change's transaction (the blind-index
//! look-ups of a customer's searchable fields).

use async_trait::async_trait;
use sqlx::Transaction;

use super::backend::{Backend, Paged, RowsAffected, SqlStore};
use super::*;
use crate::domain::audit::NewAuditEvent;
use crate::ids::{TenantId, UserId};

/// Inserts a customer's blind-index rows inside `tx`.
pub(super) async fn insert_lookups_tx<B: Backend>(
    tx: &mut Transaction<'static, B>,
    tenant: &str,
    customer: &str,
    lookups: &[CustomerLookup],
) -> StoreResult<()> {
    for l in lookups {
        sqlx::query(
            "INSERT INTO customer_lookup (tenant_id, field, digest, customer_id, index_version) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT DO NOTHING",
        )
        .bind(tenant)
        .bind(&l.field)
        .bind(&l.digest)
        .bind(customer)
        .bind(l.index_version)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Customers.
#[async_trait]
pub trait CustomerStore: Send + Sync {
    async fn create_customer(
        &self,
        customer: &NewCustomer,
        audit: &[NewAuditEvent],
    ) -> StoreResult<()>;
    async fn get_customer(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> StoreResult<Option<CustomerRecord>>;
    async fn customer_for_user(
        &self,
        tenant: &TenantId,
        user: &UserId,
    ) -> StoreResult<Option<CustomerRecord>>;
    async fn list_customers(
        &self,
        tenant: &TenantId,
        only: Option<&str>,
        page: &Page,
    ) -> StoreResult<Vec<CustomerRecord>>;
    /// Customers with a blind-index row `(field, digest)` for any of `digests` (one per live
    /// index key version), newest first; `only` restricts to one customer (ownership scope).
    async fn search_customers(
        &self,
        tenant: &TenantId,
        field: &str,
        digests: &[String],
        only: Option<&str>,
        page: &Page,
    ) -> StoreResult<Vec<CustomerRecord>>;
    /// Replaces a customer's personal data and its blind-index rows in one transaction with the
    /// audit records, if it is still as read and the customer is not erased.
    async fn rectify_customer(
        &self,
        change: &Rectification,
        audit: &[NewAuditEvent],
    ) -> StoreResult<RectifyOutcome>;
}

#[async_trait]
impl<S: SqlStore<Db = B>, B: Backend> CustomerStore for S {
    async fn create_customer(&self, c: &NewCustomer, audit: &[NewAuditEvent]) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        if !crate::store::keys::index_versions_hold_tx(
            &mut tx,
            c.tenant_id.as_str(),
            &c.index_versions,
        )
        .await?
        {
            tx.rollback().await?;
            return Err(StoreError::IndexKeyChanged);
        }
        sqlx::query("INSERT INTO customers (id, tenant_id, user_id, external_ref, created_at, pii, updated_at, lookup_version) VALUES ($1, $2, $3, $4, $5, $6, $5, $7)")
            .bind(c.id.as_str())
            .bind(c.tenant_id.as_str())
            .bind(c.user_id.as_ref().map(|u| u.as_str()))
            .bind(&c.external_ref)
            .bind(c.created_at.as_micros())
            .bind(&c.pii)
            .bind(c.index_versions.last().copied().unwrap_or(0))
            .execute(&mut *tx)
            .await?;
        crate::store::customers::insert_lookups_tx(
            &mut tx,
            c.tenant_id.as_str(),
            c.id.as_str(),
            &c.lookups,
        )
        .await?;
        self.append_audit_tx(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_customer(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> StoreResult<Option<CustomerRecord>> {
        Ok(
            sqlx::query_as("SELECT * FROM customers WHERE tenant_id = $1 AND id = $2")
                .bind(tenant.as_str())
                .bind(id)
                .fetch_optional(self.pool())
                .await?,
        )
    }

    async fn customer_for_user(
        &self,
        tenant: &TenantId,
        user: &UserId,
    ) -> StoreResult<Option<CustomerRecord>> {
        Ok(
            sqlx::query_as("SELECT * FROM customers WHERE tenant_id = $1 AND user_id = $2")
                .bind(tenant.as_str())
                .bind(user.as_str())
                .fetch_optional(self.pool())
                .await?,
        )
    }

    async fn list_customers(
        &self,
        tenant: &TenantId,
        only: Option<&str>,
        page: &Page,
    ) -> StoreResult<Vec<CustomerRecord>> {
        Ok(sqlx::query_as(
            "SELECT * FROM customers WHERE tenant_id = $1 AND ($2 IS NULL OR id = $2) \
             AND ($3 IS NULL OR id < $3) ORDER BY id DESC LIMIT $4",
        )
        .bind(tenant.as_str())
        .bind(only)
        .page(page)
        .fetch_all(self.pool())
        .await?)
    }

    async fn search_customers(
        &self,
        tenant: &TenantId,
        field: &str,
        digests: &[String],
        only: Option<&str>,
        page: &Page,
    ) -> StoreResult<Vec<CustomerRecord>> {
        if digests.is_empty() {
            return Ok(Vec::new());
        }
        // One placeholder per live index version (one, or two during an index rotation).
        let list = (0..digests.len())
            .map(|i| format!("${}", i + 6))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT c.* FROM customers c WHERE c.tenant_id = $1 \
             AND EXISTS (SELECT 1 FROM customer_lookup l WHERE l.tenant_id = $1 AND l.field = $2 \
                         AND l.digest IN ({list}) AND l.customer_id = c.id) \
             AND ($3 IS NULL OR c.id = $3) AND ($4 IS NULL OR c.id < $4) \
             ORDER BY c.id DESC LIMIT $5"
        );
        let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(tenant.as_str())
            .bind(field)
            .bind(only)
            .page(page);
        for d in digests {
            q = q.bind(d);
        }
        Ok(q.fetch_all(self.pool()).await?)
    }

    async fn rectify_customer(
        &self,
        c: &Rectification,
        audit: &[NewAuditEvent],
    ) -> StoreResult<RectifyOutcome> {
        use RectifyOutcome;
        let mut tx = self.begin_write().await?;
        if !crate::store::keys::index_versions_hold_tx(
            &mut tx,
            c.tenant_id.as_str(),
            &c.index_versions,
        )
        .await?
        {
            tx.rollback().await?;
            return Err(StoreError::IndexKeyChanged);
        }
        // Compare-and-swap on the ciphertext read: a concurrent rectification or a
        // re-encryption in between makes this one stale instead of lost.
        let n = sqlx::query(
            "UPDATE customers SET pii = $3, updated_at = $4, lookup_version = $6 \
             WHERE tenant_id = $1 AND id = $2 AND status = 'active' AND COALESCE(pii, '') = $5",
        )
        .bind(c.tenant_id.as_str())
        .bind(&c.id)
        .bind(&c.pii)
        .bind(c.now.as_micros())
        .bind(c.expected_pii.as_deref().unwrap_or(""))
        .bind(c.index_versions.last().copied().unwrap_or(0))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            let status: Option<(String,)> =
                sqlx::query_as("SELECT status FROM customers WHERE tenant_id = $1 AND id = $2")
                    .bind(c.tenant_id.as_str())
                    .bind(&c.id)
                    .fetch_optional(&mut *tx)
                    .await?;
            tx.rollback().await?;
            return Ok(match status {
                None => RectifyOutcome::NotFound,
                Some((s,)) if s == "erased" => RectifyOutcome::Erased,
                Some(_) => RectifyOutcome::Stale,
            });
        }
        sqlx::query("DELETE FROM customer_lookup WHERE tenant_id = $1 AND customer_id = $2")
            .bind(c.tenant_id.as_str())
            .bind(&c.id)
            .execute(&mut *tx)
            .await?;
        crate::store::customers::insert_lookups_tx(
            &mut tx,
            c.tenant_id.as_str(),
            &c.id,
            &c.lookups,
        )
        .await?;
        self.append_audit_tx(&mut tx, audit).await?;
        let record: CustomerRecord =
            sqlx::query_as("SELECT * FROM customers WHERE tenant_id = $1 AND id = $2")
                .bind(c.tenant_id.as_str())
                .bind(&c.id)
                .fetch_one(&mut *tx)
                .await?;
        tx.commit().await?;
        Ok(RectifyOutcome::Updated(Box::new(record)))
    }
}
