//! The PostgreSQL backend, for several Kasho instances sharing one database. The URL's
//! `sslmode` (`require`, `verify-ca`, `verify-full`) and `sslrootcert` are honoured through
//! rustls. A URL may pin a schema with `options=-c search_path=…` (the tests do).

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, Transaction};

mod writer;

use super::alerts::AlertHook;
use super::backend::SqlStore;
use super::{StoreError, StoreResult};
use crate::domain::audit::AuditSealer;

pub struct PgStore {
    pool: PgPool,
    sealer: AuditSealer,
    /// Which security events become alerts (set once by the core).
    alerts: AlertHook,
}

impl SqlStore for PgStore {
    type Db = Postgres;

    fn pool(&self) -> &PgPool {
        &self.pool
    }

    fn sealer(&self) -> &AuditSealer {
        &self.sealer
    }

    fn alert_hook(&self) -> &AlertHook {
        &self.alerts
    }

    fn migrator(&self) -> &'static sqlx::migrate::Migrator {
        &MIGRATOR
    }

    async fn begin_write(&self) -> StoreResult<Transaction<'static, Postgres>> {
        PgStore::begin_write(self).await
    }

    async fn begin_document_write(&self) -> StoreResult<Transaction<'static, Postgres>> {
        PgStore::begin_document_write(self).await
    }

    /// Movements are posted with the shared load–plan–write over the pool.
    fn ledger_port(&self) -> &dyn super::LedgerPort {
        self
    }
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

impl PgStore {
    pub async fn connect(
        url: &str,
        max_connections: u32,
        sealer: AuditSealer,
    ) -> StoreResult<Self> {
        let opts = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Database(format!("invalid PostgreSQL URL: {e}")))?
            // Room for the writer's multi-row statements in their usual sizes besides the rest.
            .statement_cache_capacity(1_000);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            // A connection is never reused inside a transaction (see `connection_is_clean`);
            // one whose backend was terminated fails sqlx's own ping and is discarded.
            .before_acquire(|conn, _| {
                Box::pin(async move { Ok(super::connection_is_clean(conn).await) })
            })
            .after_release(|conn, _| {
                Box::pin(async move { Ok(super::connection_is_clean(conn).await) })
            })
            .connect_with(opts)
            .await?;
        Ok(Self {
            pool,
            sealer,
            alerts: AlertHook::default(),
        })
    }

    async fn begin_write(&self) -> StoreResult<Transaction<'static, Postgres>> {
        Ok(self.pool.begin().await?)
    }

    /// A write transaction for KYC documents: on PostgreSQL, an ordinary one (the server keeps
    /// the pages; only the statement's buffer passes through this process).
    async fn begin_document_write(&self) -> StoreResult<Transaction<'static, Postgres>> {
        self.begin_write().await
    }

    /// The pool, for tests and tools that inspect the database directly.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}
