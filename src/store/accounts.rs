//! Storage of ledger accounts: the rows written inside a change's transaction
//! ([`insert_account_tx`]) and the diagnosis of a refused conditional update ([`why_refused`]),
//! generic over the backend.

use sqlx::Transaction;

use super::backend::Backend;
use super::{NewAccount, StoreResult};
use crate::domain::ledger::Refusal;

/// Inserts an account (status `active`) inside `tx`.
pub(super) async fn insert_account_tx<B: Backend>(
    tx: &mut Transaction<'static, B>,
    a: &NewAccount,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO accounts (id, tenant_id, customer_id, kind, currency, status, overdraft_limit, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, 'active', $6, $7, $7)",
    )
    .bind(a.id.as_str())
    .bind(a.tenant_id.as_str())
    .bind(a.customer_id.as_ref().map(|c| c.as_str()))
    .bind(a.kind.as_str())
    .bind(&a.currency)
    .bind(a.overdraft_limit)
    .bind(a.created_at.as_micros())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Diagnoses why a conditional update on an account matched nothing.
pub(super) async fn why_refused<B: Backend>(
    tx: &mut Transaction<'static, B>,
    tenant: &str,
    account: &str,
    currency: &str,
    owner: Option<&str>,
    debit: bool,
) -> StoreResult<Refusal> {
    let row: Option<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT currency, status, customer_id FROM accounts WHERE tenant_id = $1 AND id = $2",
    )
    .bind(tenant)
    .bind(account)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(match row {
        None => Refusal::AccountNotFound(account.to_owned()),
        Some((_, _, cust)) if owner.is_some() && cust.as_deref() != owner => {
            Refusal::AccountNotFound(account.to_owned())
        }
        Some((cur, _, _)) if cur != currency => Refusal::CurrencyMismatch {
            account: account.to_owned(),
            account_currency: cur,
            currency: currency.to_owned(),
        },
        Some((_, status, _)) if status == "closed" => Refusal::AccountClosed(account.to_owned()),
        Some((_, status, _)) if status == "frozen" && debit => {
            Refusal::AccountFrozen(account.to_owned())
        }
        Some(_) => Refusal::InsufficientFunds(account.to_owned()),
    })
}
