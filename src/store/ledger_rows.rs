//! How the ledger core's records are read from rows: the core (`domain::ledger`) knows no SQL,
//! so the mapping lives here, once for both backends.

use sqlx::{ColumnIndex, Decode, FromRow, Row, Type};

use crate::domain::ledger::engine::{AccountState, HoldState};
use crate::domain::ledger::{EntryRecord, IdempotencyRecord, TransferRecord};

impl<'r, R: Row> FromRow<'r, R> for TransferRecord
where
    &'r str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
{
    fn from_row(row: &'r R) -> sqlx::Result<Self> {
        // Selected by `SELECT *`; a query naming its columns may leave it out.
        let subject_customer_id = match row.try_get("subject_customer_id") {
            Ok(v) => v,
            Err(sqlx::Error::ColumnNotFound(_)) => None,
            Err(e) => return Err(e),
        };
        Ok(TransferRecord {
            subject_customer_id,
            id: row.try_get("id")?,
            tenant_id: row.try_get("tenant_id")?,
            kind: row.try_get("kind")?,
            currency: row.try_get("currency")?,
            amount: row.try_get("amount")?,
            debit_account_id: row.try_get("debit_account_id")?,
            reference: row.try_get("reference")?,
            details: row.try_get("details")?,
            reverses_id: row.try_get("reverses_id")?,
            created_by: row.try_get("created_by")?,
            created_at: row.try_get("created_at")?,
        })
    }
}

impl<'r, R: Row> FromRow<'r, R> for EntryRecord
where
    &'r str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
{
    fn from_row(row: &'r R) -> sqlx::Result<Self> {
        // `system` is not a column: it is selected joined with the account where the caller
        // needs it, and absent otherwise.
        let system = match row.try_get("system") {
            Ok(v) => v,
            Err(sqlx::Error::ColumnNotFound(_)) => None,
            Err(e) => return Err(e),
        };
        Ok(EntryRecord {
            id: row.try_get("id")?,
            tenant_id: row.try_get("tenant_id")?,
            transfer_id: row.try_get("transfer_id")?,
            account_id: row.try_get("account_id")?,
            direction: row.try_get("direction")?,
            amount: row.try_get("amount")?,
            balance_after: row.try_get("balance_after")?,
            account_seq: row.try_get("account_seq")?,
            created_at: row.try_get("created_at")?,
            system,
        })
    }
}

impl<'r, R: Row> FromRow<'r, R> for IdempotencyRecord
where
    &'r str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
{
    fn from_row(row: &'r R) -> sqlx::Result<Self> {
        Ok(IdempotencyRecord {
            request_hash: row.try_get("request_hash")?,
            response_status: row.try_get("response_status")?,
            response_body: row.try_get("response_body")?,
        })
    }
}

impl<'r, R: Row> FromRow<'r, R> for AccountState
where
    &'r str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
{
    fn from_row(row: &'r R) -> sqlx::Result<Self> {
        Ok(AccountState {
            id: row.try_get("id")?,
            tenant_id: row.try_get("tenant_id")?,
            customer_id: row.try_get("customer_id")?,
            kind: row.try_get("kind")?,
            currency: row.try_get("currency")?,
            status: row.try_get("status")?,
            posted: row.try_get("posted")?,
            pending_debits: row.try_get("pending_debits")?,
            pending_credits: row.try_get("pending_credits")?,
            overdraft_limit: row.try_get("overdraft_limit")?,
            entry_count: row.try_get("entry_count")?,
            restricted: row.try_get("restricted")?,
            kyc_tier: row.try_get("kyc_tier")?,
        })
    }
}

impl<'r, R: Row> FromRow<'r, R> for HoldState
where
    &'r str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
{
    fn from_row(row: &'r R) -> sqlx::Result<Self> {
        Ok(HoldState {
            id: row.try_get("id")?,
            tenant_id: row.try_get("tenant_id")?,
            account_id: row.try_get("account_id")?,
            credit_account_id: row.try_get("credit_account_id")?,
            amount: row.try_get("amount")?,
            status: row.try_get("status")?,
            expires_at: row.try_get("expires_at")?,
            purpose: row.try_get("purpose")?,
        })
    }
}
