//! The embedded backend: one SQLite file in WAL mode with `synchronous=FULL` (a 2xx means the
//! change is on disk), foreign keys on, and write transactions opened with `BEGIN IMMEDIATE` so
//! concurrent writers queue on the lock instead of failing mid-transaction, and `secure_delete`
//! on every connection (deleted content is zeroed, see docs/SECURITY.md).

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool, Transaction};

use super::alerts::AlertHook;
use super::backend::SqlStore;
use super::{StoreError, StoreResult};
use crate::domain::audit::AuditSealer;

pub struct SqliteStore {
    pool: SqlitePool,
    sealer: AuditSealer,
    /// Which security events become alerts (set once by the core).
    alerts: std::sync::Arc<AlertHook>,
    /// The ledger writer thread: the one place money is posted on this backend.
    writer: super::sqlite_writer::SqliteWriter,
    /// The page cap every connection applies (see [`SqliteStore::limit_pages`]).
    page_limit: std::sync::Arc<PageLimit>,
    /// One connection with a small page cache for writing KYC documents (see
    /// `begin_document_write`).
    documents: SqlitePool,
}

/// A cap on the database's size in pages, for every connection to apply before its next use.
#[derive(Debug, Default)]
pub(super) struct PageLimit(std::sync::atomic::AtomicU64);

impl PageLimit {
    /// SQLite's own maximum page count: what "no cap" sets.
    const NONE: u64 = 4_294_967_294;

    fn set(&self, pages: Option<u32>) {
        let v = pages.map_or(Self::NONE, |p| u64::from(p.max(1)));
        self.0.store(v, std::sync::atomic::Ordering::Release);
    }

    /// The cap to apply, once one was ever set (0: never set, nothing to apply).
    pub(super) fn pages(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }

    async fn apply_sqlx(&self, conn: &mut sqlx::SqliteConnection) -> Result<(), sqlx::Error> {
        let pages = self.pages();
        if pages != 0 {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "PRAGMA max_page_count = {pages}"
            )))
            .execute(conn)
            .await?;
        }
        Ok(())
    }
}

impl SqlStore for SqliteStore {
    type Db = Sqlite;

    fn pool(&self) -> &SqlitePool {
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

    async fn begin_write(&self) -> StoreResult<Transaction<'static, Sqlite>> {
        SqliteStore::begin_write(self).await
    }

    async fn begin_document_write(&self) -> StoreResult<Transaction<'static, Sqlite>> {
        SqliteStore::begin_document_write(self).await
    }

    /// Movements are posted on the writer thread (one synchronous transaction per batch).
    fn ledger_port(&self) -> &dyn super::LedgerPort {
        &self.writer
    }
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

impl SqliteStore {
    pub async fn connect(
        url: &str,
        max_connections: u32,
        sealer: AuditSealer,
    ) -> StoreResult<Self> {
        let opts = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Database(format!("invalid SQLite URL: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10))
            // 32 MiB of page cache per connection: the ledger's hot pages (accounts, index
            // interiors) stay in memory instead of being read back through the OS.
            .pragma("cache_size", "-32768")
            // Deleted and overwritten content is zeroed in the file, not left in free space:
            // an erasure's old values (the linked login's email, session addresses) do not
            // survive in the database file or, after a checkpoint, in the WAL. Per connection:
            // every pool connection gets it here, the ledger writer's in `sqlite_writer::open`.
            .pragma("secure_delete", "ON");
        if let Some(dir) = opts.get_filename().parent()
            && !dir.as_os_str().is_empty()
        {
            // The database holds password hashes: its directory is private.
            crate::crypto::keys::create_private_dir(dir).map_err(|e| {
                StoreError::Database(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let file = opts.get_filename().to_path_buf();
        // The ledger writer thread opens the database through a connection of its own, which an
        // in-memory database would not share: the embedded database is always a file.
        if file.as_os_str().is_empty() || file.to_string_lossy().contains(":memory:") {
            return Err(StoreError::Database(
                "the embedded database must be a file (an in-memory database cannot be shared \
                 with the ledger writer)"
                    .into(),
            ));
        }
        make_private(&file)?;
        let page_limit = std::sync::Arc::new(PageLimit::default());
        let (on_connect, on_acquire) = (page_limit.clone(), page_limit.clone());
        let documents_opts = opts.clone().pragma("cache_size", "-2048");
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections)
            .after_connect(move |conn, _| {
                let limit = on_connect.clone();
                Box::pin(async move { limit.apply_sqlx(conn).await })
            })
            .before_acquire(move |conn, _| {
                let limit = on_acquire.clone();
                Box::pin(async move {
                    if !super::connection_is_clean(conn).await {
                        return Ok(false);
                    }
                    limit.apply_sqlx(conn).await?;
                    Ok(true)
                })
            })
            .after_release(|conn, _| {
                Box::pin(async move { Ok(super::connection_is_clean(conn).await) })
            })
            .connect_with(opts)
            .await?;
        let documents = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_lazy_with(documents_opts);
        let alerts = std::sync::Arc::new(AlertHook::default());
        let writer = super::sqlite_writer::SqliteWriter::start(
            file,
            sealer.clone(),
            alerts.clone(),
            page_limit.clone(),
        )?;
        Ok(Self {
            pool,
            sealer,
            alerts,
            writer,
            page_limit,
            documents,
        })
    }

    /// Caps the database file at `pages` pages (`PRAGMA max_page_count`, which SQLite keeps per
    /// connection) on every connection of this store, the ledger writer's included, from their
    /// next use; `None` lifts the cap. A cap below the current size holds the file at its
    /// current size: to SQLite, that is a full disk (`SQLITE_FULL`). The storage fault tests
    /// use it; nothing sets it in normal operation.
    pub fn limit_pages(&self, pages: Option<u32>) {
        self.page_limit.set(pages);
    }

    async fn begin_write(&self) -> StoreResult<Transaction<'static, Sqlite>> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// A write transaction for KYC documents (up to about 27 MiB of ciphertext), on a connection
    /// of its own with a 2 MiB page cache: the documents' pages would otherwise fill the 32 MiB
    /// cache of whichever pool connection wrote them, keeping that memory and evicting the
    /// ledger's hot pages. SQLite has one writer at a time anyway, so one connection is enough.
    async fn begin_document_write(&self) -> StoreResult<Transaction<'static, Sqlite>> {
        Ok(self.documents.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// The pool, for tests and tools that inspect the database directly.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

/// Makes the database file and its companions (`-wal`, `-shm`, `-journal`) readable by the
/// owner only (0600), whatever the directory they are in and the umask: the file is created
/// 0600 before SQLite opens it, existing ones are narrowed, and SQLite creates the companions
/// with the database file's mode. They hold password hashes and (sealed) personal data.
fn make_private(file: &std::path::Path) -> StoreResult<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let err = |p: &std::path::Path, e: std::io::Error| {
            StoreError::Database(format!("cannot make {} private: {e}", p.display()))
        };
        // Created here with 0600 if missing (never world-readable, not even for an instant).
        if let Err(e) = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(file)
            && e.kind() != std::io::ErrorKind::AlreadyExists
        {
            return Err(err(file, e));
        }
        let mut paths = vec![file.to_path_buf()];
        for suffix in ["-wal", "-shm", "-journal"] {
            let mut name = file.as_os_str().to_owned();
            name.push(suffix);
            paths.push(std::path::PathBuf::from(name));
        }
        for p in paths {
            match std::fs::metadata(&p) {
                Ok(m) if m.permissions().mode() & 0o077 != 0 => {
                    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))
                        .map_err(|e| err(&p, e))?;
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(err(&p, e)),
            }
        }
    }
    #[cfg(not(unix))]
    let _ = file;
    Ok(())
}
