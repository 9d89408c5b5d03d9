//! Storage of customers: the rows written inside a change's transaction (the blind-index
//! look-ups of a customer's searchable fields).

use sqlx::Transaction;

use super::backend::Backend;
use super::{CustomerLookup, StoreResult};

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
