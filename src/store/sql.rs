//! What is left of the whole-impl macro: `impl_store!` expands the `Store` trait's own methods
//! (backend, migrate, ping, as_any, ledger) for SQLite and PostgreSQL. Money is posted only
//! through `LedgerPort` (`store::sqlite_writer`, `store::postgres::writer`). Every aggregate is
//! ordinary generic code in its own module (see `store::backend`).

// The audit helpers the ledger's SQL below (and the SQLite ledger writer) still name here.
pub(super) use super::audit::{chain_runs, next_record, opt_len, text_len};

macro_rules! impl_store {
    ($store:ty, $backend:literal, $lock:literal, $share:literal, $max_message:expr, $persist:literal) => {
        #[async_trait::async_trait]
        impl $crate::store::Store for $store {
            fn backend(&self) -> &'static str {
                $backend
            }

            async fn migrate(&self) -> $crate::store::StoreResult<Vec<String>> {
                self.run_migrations().await
            }

            async fn ping(&self) -> $crate::store::StoreResult<()> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }

            fn as_any(&self) -> &dyn std::any::Any {
                self
            }

            fn ledger(&self) -> &dyn $crate::store::LedgerPort {
                self.ledger_port()
            }
        }
    };
}

pub(super) use impl_store;
