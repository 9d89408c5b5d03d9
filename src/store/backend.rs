//! What differs between the two SQL backends, and the one place that says what sqlx needs to
//! run the shared SQL on either. Every statement of `store/` is written once, in ordinary
//! generic code over a [`Backend`] (`Sqlite` or `Postgres`) or over a [`SqlStore`] (the
//! `SqliteStore` or `PgStore` holding the pool): `$n` placeholders and column types (TEXT,
//! BIGINT) mean the same on both, and the few differences are constants of the backend
//! ([`Backend::ROW_LOCKS`], [`Backend::MAX_MESSAGE`], ...) read where they matter.
//!
//! Why the helper traits below: sqlx code generic over the database needs bounds such as
//! `i64: Encode<'t, DB> + Type<DB>` or `for<'c> &'c mut DB::Connection: Executor<'c>`. Bounds
//! written as `where` clauses of a trait are not implied where the trait is used (rust-lang
//! issue 20671), so each generic function would have to repeat them all. Supertraits, and
//! bounds on associated types in supertrait position, *are* implied. [`Is<T>`] is the identity
//! on types (`<DB as Is<T>>::Ty` is `T`), so `Is<T, Ty = T> + Is<T, Ty: Bound>` states a bound
//! on the foreign type `T` as a supertrait of the backend: `B: Backend` is then the only bound a
//! generic store function needs.

use std::future::Future;

use sqlx::database::HasStatementCache;
use sqlx::migrate::Migrate;
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Transaction, Type};

use super::alerts::AlertHook;
use super::{ActorCheck, ActorCredential, actors, audit};
use super::{LedgerPort, Page, StoreResult};
use crate::domain::audit::{AuditSealer, NewAuditEvent};
use crate::domain::authz::ActorStanding;
use crate::ids::TenantId;

/// The identity on types: `<DB as Is<T>>::Ty` is `T`. It lets a supertrait bound name a type
/// other than `Self` (see the module comment).
pub trait Is<T: ?Sized> {
    type Ty: ?Sized;
}

impl<D, T: ?Sized> Is<T> for D {
    type Ty = T;
}

/// `T` can be bound to a statement of `Self` and decoded from its rows.
pub trait Column<T>:
    Database
    + Is<T, Ty = T>
    + Is<T, Ty: for<'t> Encode<'t, Self> + Type<Self> + for<'r> Decode<'r, Self>>
{
}

impl<DB: Database, T> Column<T> for DB where
    T: for<'t> Encode<'t, DB> + Type<DB> + for<'r> Decode<'r, DB>
{
}

/// `T` can be bound to a statement of `Self`, encoded for `'t` (a value holding a reference, such
/// as `Option<&'a str>`, is encoded for no longer than `'a`).
pub trait Binds<'t, T>:
    Database + Is<T, Ty = T> + Is<T, Ty: Encode<'t, Self> + Type<Self>>
{
}

impl<'t, DB: Database, T> Binds<'t, T> for DB where T: Encode<'t, DB> + Type<DB> {}

/// The number of rows a statement changed (an inherent method of each backend's result type).
pub trait RowsAffected {
    fn rows_affected(&self) -> u64;
}

impl RowsAffected for sqlx::sqlite::SqliteQueryResult {
    fn rows_affected(&self) -> u64 {
        sqlx::sqlite::SqliteQueryResult::rows_affected(self)
    }
}

impl RowsAffected for sqlx::postgres::PgQueryResult {
    fn rows_affected(&self) -> u64 {
        sqlx::postgres::PgQueryResult::rows_affected(self)
    }
}

/// A row of `Self` can be indexed by `I` (by position for tuples, by name for derived
/// `FromRow` structs).
pub trait Indexes<I>: Database + Is<I, Ty = I> + Is<I, Ty: ColumnIndex<Self::Row>> {}

impl<DB: Database, I: ColumnIndex<DB::Row>> Indexes<I> for DB {}

/// A connection of `Self`, borrowed for `'c`, runs statements (and so does `&Pool<Self>`).
pub trait Runs<'c>:
    Database
    + Is<&'c mut Self::Connection, Ty = &'c mut Self::Connection>
    + Is<&'c mut Self::Connection, Ty: Executor<'c, Database = Self>>
{
}

impl<'c, DB: Database> Runs<'c> for DB where &'c mut DB::Connection: Executor<'c, Database = DB> {}

/// A SQL backend Kasho runs on (`Sqlite`, `Postgres`): everything the shared SQL needs of it.
pub trait Backend:
    Database<Arguments: IntoArguments<Self>, Connection: Migrate, QueryResult: RowsAffected>
    + HasStatementCache
    + for<'c> Runs<'c>
    + Column<i64>
    + Column<i32>
    + Column<bool>
    + Column<String>
    + Column<Vec<u8>>
    + for<'a> Binds<'a, &'a str>
    + for<'a> Binds<'a, &'a [u8]>
    + for<'t> Binds<'t, Option<i64>>
    + for<'t> Binds<'t, Option<String>>
    + for<'a> Binds<'a, Option<&'a str>>
    + Indexes<usize>
    + for<'a> Indexes<&'a str>
{
    /// `sqlite` or `postgres` (what `Store::backend` answers).
    const KIND: &'static str;
    /// Whether `SELECT … FOR UPDATE` / `FOR SHARE` lock rows (PostgreSQL). SQLite has no row
    /// locks: its write transactions (`BEGIN IMMEDIATE`) already hold the database's write
    /// lock, and the suffixes are left out (see [`for_update!`] and [`for_share!`]).
    const ROW_LOCKS: bool;
    /// The largest statement, in bytes of parameters, a multi-row statement is cut to (see
    /// `posting::chunks_by_size`). No socket in between on SQLite: as large as the parameter
    /// limit allows.
    const MAX_MESSAGE: usize;
    /// Whether multi-row statements of varying shape are kept prepared (PostgreSQL keeps them;
    /// SQLite re-prepares them cheaply instead of filling its statement cache).
    const PERSIST: bool;
    /// A statement answering one row with the number of tables named `$1` in the schema in use.
    const TABLE_EXISTS: &'static str;
}

impl Backend for sqlx::Sqlite {
    const KIND: &'static str = "sqlite";
    const ROW_LOCKS: bool = false;
    const MAX_MESSAGE: usize = usize::MAX;
    const PERSIST: bool = false;
    const TABLE_EXISTS: &'static str =
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = $1";
}

impl Backend for sqlx::Postgres {
    const KIND: &'static str = "postgres";
    const ROW_LOCKS: bool = true;
    const MAX_MESSAGE: usize = 12_000;
    const PERSIST: bool = true;
    const TABLE_EXISTS: &'static str = "SELECT COUNT(*) FROM information_schema.tables \
         WHERE table_schema = current_schema() AND table_name = $1";
}

/// `$sql` with ` FOR UPDATE` appended on a backend with row locks: the rows read are locked
/// until the transaction ends. A `&'static str` either way (no allocation per statement).
macro_rules! for_update {
    ($b:ty, $sql:expr) => {
        if <$b as $crate::store::backend::Backend>::ROW_LOCKS {
            concat!($sql, " FOR UPDATE")
        } else {
            $sql
        }
    };
}

/// `$sql` with ` FOR SHARE` appended on a backend with row locks (see [`for_update!`]).
macro_rules! for_share {
    ($b:ty, $sql:expr) => {
        if <$b as $crate::store::backend::Backend>::ROW_LOCKS {
            concat!($sql, " FOR SHARE")
        } else {
            $sql
        }
    };
}

pub(crate) use {for_share, for_update};

/// A store on a SQL backend (`SqliteStore`, `PgStore`): what the shared SQL of every aggregate
/// needs of it. Each aggregate's store trait is implemented once for every store,
/// `impl<S: SqlStore<Db = B>, B: Backend> NotesStore for S`: naming the backend `B` (rather
/// than `S::Db`) lets the compiler use `Backend`'s implied bounds, which it does for a type
/// parameter but not for an associated type.
pub trait SqlStore: Send + Sync + 'static {
    type Db: Backend;
    /// The connection pool reads run on.
    fn pool(&self) -> &sqlx::Pool<Self::Db>;
    /// Seals each audit record appended.
    fn sealer(&self) -> &AuditSealer;
    /// Which security events become alerts.
    fn alert_hook(&self) -> &AlertHook;
    /// The migrations embedded for this backend.
    fn migrator(&self) -> &'static sqlx::migrate::Migrator;
    /// A write transaction (on SQLite, one holding the write lock from its start).
    fn begin_write(
        &self,
    ) -> impl Future<Output = StoreResult<Transaction<'static, Self::Db>>> + Send;
    /// A write transaction for KYC documents (see `SqliteStore::begin_document_write`).
    fn begin_document_write(
        &self,
    ) -> impl Future<Output = StoreResult<Transaction<'static, Self::Db>>> + Send;
    /// The one port money is posted through (`Store::ledger`): the SQLite writer thread, or
    /// the PostgreSQL writer over the pool.
    fn ledger_port(&self) -> &dyn LedgerPort;

    /// Appends `events` to their audit chains inside `tx` (see [`audit::append_tx`]).
    fn append_audit_tx(
        &self,
        tx: &mut Tx<Self>,
        events: &[NewAuditEvent],
    ) -> impl Future<Output = StoreResult<()>> + Send {
        audit::append_tx(self.sealer(), self.alert_hook(), tx, events)
    }

    /// See [`actors::actor_standing_tx`].
    fn actor_standing_tx<'a>(
        tx: &'a mut Tx<Self>,
        user: &'a str,
        credential: &'a ActorCredential,
        now: i64,
    ) -> impl Future<Output = StoreResult<Option<ActorStanding>>> + Send + 'a {
        actors::actor_standing_tx(tx, user, credential, now)
    }

    /// See [`actors::authorise_change_tx`].
    fn authorise_change_tx<'a>(
        tx: &'a mut Tx<Self>,
        tenant: Option<&'a TenantId>,
        actor: Option<&'a ActorCheck>,
        now: i64,
    ) -> impl Future<Output = StoreResult<()>> + Send + 'a {
        actors::authorise_change_tx(tx, tenant, actor, now)
    }

    /// See [`actors::check_actor_tx`].
    fn check_actor_tx<'a>(
        tx: &'a mut Tx<Self>,
        actor: &'a ActorCheck,
        now: i64,
    ) -> impl Future<Output = StoreResult<()>> + Send + 'a {
        actors::check_actor_tx(tx, actor, now)
    }

    /// See [`actors::lock_customer_tx`].
    fn lock_customer_tx<'a>(
        tx: &'a mut Tx<Self>,
        tenant: &'a str,
        id: &'a str,
    ) -> impl Future<Output = StoreResult<i64>> + Send + 'a {
        actors::lock_customer_tx(tx, tenant, id)
    }
}

/// Applies `migrator`, reporting which migrations were new (`Store::migrate`).
pub(super) async fn run_migrations<DB>(
    migrator: &sqlx::migrate::Migrator,
    pool: &sqlx::Pool<DB>,
) -> StoreResult<Vec<String>>
where
    DB: sqlx::Database,
    <DB as sqlx::Database>::Connection: sqlx::migrate::Migrate,
{
    let mut conn = pool.acquire().await?;
    let applied: Vec<i64> =
        sqlx::migrate::Migrate::list_applied_migrations(&mut *conn, &migrator.table_name)
            .await
            .map(|v| v.into_iter().map(|m| m.version).collect())
            .unwrap_or_default();
    drop(conn);
    migrator.run(pool).await?;
    Ok(migrator
        .iter()
        .filter(|m| !applied.contains(&m.version))
        .map(|m| format!("{} {}", m.version, m.description))
        .collect())
}

/// A write transaction of store `S`.
pub type Tx<S> = Transaction<'static, <S as SqlStore>::Db>;

impl Page {
    /// The rows a page's statement asks for: one more than the page holds, which tells whether
    /// a next page exists (`has_more`).
    pub fn fetch_limit(&self) -> i64 {
        i64::from(self.limit) + 1
    }
}

/// The keyset paging of every `list_*` statement, whose text ends with its last two
/// placeholders as `AND ($n IS NULL OR id > $n) ORDER BY id LIMIT $m` (oldest first; newest
/// first: `id < $n … ORDER BY id DESC`): binds the cursor (`starting_after`, NULL for the first
/// page) and one row more than the page holds, so the caller can tell whether a next page
/// exists (`has_more`) without a second query.
pub trait Paged<'q>: Sized {
    fn page(self, page: &'q Page) -> Self;
}

impl<'q, B: Backend, O> Paged<'q> for sqlx::query::QueryAs<'q, B, O, B::Arguments> {
    fn page(self, page: &'q Page) -> Self {
        self.bind(page.starting_after.as_deref())
            .bind(page.fetch_limit())
    }
}

impl<'q, B: Backend> Paged<'q> for sqlx::query::Query<'q, B, B::Arguments> {
    fn page(self, page: &'q Page) -> Self {
        self.bind(page.starting_after.as_deref())
            .bind(page.fetch_limit())
    }
}
