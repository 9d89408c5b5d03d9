//! Storage: one [`Store`] trait, implemented for SQLite ([`sqlite::SqliteStore`]) and
//! PostgreSQL ([`postgres::PgStore`]). It is split by aggregate into supertraits (accounts,
//! transfers, holds, tenants, users…), each written once as generic code over
//! [`backend::SqlStore`] in its module, so behaviour is identical by construction; each backend
//! only supplies how it connects, migrates, opens a write transaction and posts money.
//!
//! Every method that changes state takes the audit records describing the change and writes them
//! in the same database transaction: a change is never committed without its audit trail.
//! Every query on tenant business data (users, audit events) is parameterised by a tenant id;
//! sessions and refresh tokens are found by their unguessable id or token hash and carry their
//! tenant, which the caller checks against the token's claims.

pub mod accounts;
mod actors;
pub mod alerts;
pub mod api_tokens;
pub mod audit;
pub mod backend;
pub mod customers;
pub mod holds;
pub mod identity;
pub mod keys;
pub mod kyc;
mod ledger_rows;
pub mod mail;
pub mod mfa;
pub mod notes;
pub mod outbox;
pub mod postgres;
pub mod posting;
pub mod privacy;
pub mod retention;
pub mod security;
pub mod sessions;
pub mod sqlite;
mod sqlite_writer;
pub mod tenants;
pub mod transfers;
pub mod users;

use std::sync::Arc;

use async_trait::async_trait;

use crate::clock::Timestamp;
use crate::domain::audit::{AuditRecord, AuditSealer, NewAuditEvent};
use crate::domain::authz::Role;
pub use crate::domain::authz::{ActorCheck, ActorCredential};
pub use crate::domain::ledger::engine::OUTCOME_STATUS;
pub use crate::domain::ledger::{
    EntryRecord, IdempotencyRecord, NewIdempotency, PostResult, PostedTransfer, Reverses,
    TransferCommand, TransferRecord,
};
use crate::domain::values::Email;
use crate::ids::{SessionId, TenantId, UserId};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique constraint refused the write.
    #[error("unique constraint violated: {constraint}")]
    Conflict { constraint: String },
    #[error("database error: {0}")]
    Database(String),
    /// Storage cannot serve now: the disk is full, an I/O error, the connection was lost or
    /// terminated, no connection came free in time. The operation did not complete (though a
    /// commit whose answer was lost may have: a retry with the same idempotency key is safe).
    /// The API answers 503 `storage_unavailable` with `Retry-After`.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The change would leave the tenant without an active MANAGER (checked inside the
    /// change's own transaction); nothing was changed.
    #[error("the tenant's last active manager cannot lose the role or be disabled")]
    LastManager,
    /// The customer something was to be created for is erased (or gone), as read under its
    /// row's lock inside the creating transaction (see `lock_customer_tx`); nothing was
    /// written. The API answers 422 `customer_erased`.
    #[error("the customer has been erased")]
    CustomerErased,
    /// The tenant's blind-index key versions changed (an index rotation) between computing a
    /// customer's blind-index rows and writing them; nothing was changed, recompute and retry.
    #[error("the tenant's blind-index key changed meanwhile")]
    IndexKeyChanged,
    /// The actor's credential, status or roles changed after the request was authorised
    /// (re-checked inside the change's own transaction); nothing was changed.
    #[error("the actor is no longer authorised: {0:?}")]
    ActorRevoked(crate::domain::authz::ActorRevoked),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &e
            && db.is_unique_violation()
        {
            return StoreError::Conflict {
                constraint: db
                    .constraint()
                    .map_or_else(|| db.message().to_owned(), str::to_owned),
            };
        }
        if unavailable(&e) {
            return StoreError::Unavailable(e.to_string());
        }
        StoreError::Database(e.to_string())
    }
}

/// Whether `e` says that storage cannot serve now (rather than that a statement is wrong or a
/// write was refused): the connection or the disk, not the request.
fn unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        // A connection left inside a transaction (the pool discards such connections, see
        // `connection_is_clean`).
        | sqlx::Error::InvalidSavePointStatement
        | sqlx::Error::BeginFailed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| match c.parse::<i32>() {
            // SQLite reports its (extended) result code as a number.
            Ok(code) => sqlite_code_unavailable(code),
            // PostgreSQL reports an SQLSTATE.
            Err(_) => sqlstate_unavailable(&c),
        }),
        _ => false,
    }
}

/// Whether a connection may be used again: outside any transaction. A transaction dropped
/// without commit or rollback (an error on the way, a cancelled request) queues its ROLLBACK; if
/// that ROLLBACK fails too (after a COMMIT that SQLite had already rolled back itself on a full
/// disk or an I/O error, it finds no transaction), sqlx still counts the connection inside one,
/// and every later `BEGIN` on it fails ("attempted to call begin_with at non-zero transaction
/// depth") until the process restarts. Such a connection is closed instead: the pool opens a
/// fresh one when it needs it. Runs when a connection goes back to the pool and again before one
/// is handed out; costs nothing unless a transaction was left open.
pub(crate) async fn connection_is_clean<C: sqlx::Connection>(conn: &mut C) -> bool {
    if !conn.is_in_transaction() {
        return true;
    }
    // Run the queued ROLLBACK now, then look again.
    conn.ping().await.is_ok() && !conn.is_in_transaction()
}

/// SQLite result codes (primary part of an extended code) that mean storage cannot serve now:
/// BUSY and LOCKED past the busy timeout, NOMEM, READONLY (a file system remounted read-only),
/// IOERR, FULL, CANTOPEN, PROTOCOL.
pub(crate) fn sqlite_code_unavailable(code: i32) -> bool {
    matches!(code & 0xff, 5 | 6 | 7 | 8 | 10 | 13 | 14 | 15)
}

/// PostgreSQL SQLSTATEs that mean storage cannot serve now: connection exceptions (class 08),
/// the server shutting down or the backend terminated (57P01 to 57P05, e.g. by
/// `pg_terminate_backend`), insufficient resources (class 53: disk full, out of memory, too many
/// connections), system errors (class 58: I/O), and a read-only transaction (25006: a standby
/// after a fail-over).
fn sqlstate_unavailable(state: &str) -> bool {
    state.starts_with("08")
        || state.starts_with("53")
        || state.starts_with("58")
        || state.starts_with("57P0")
        || state == "25006"
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        StoreError::Database(format!("migration failed: {e}"))
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TenantRecord {
    pub id: String,
    pub slug: String,
    pub name: String,
    /// Comma-separated ISO 4217 codes.
    pub currencies: String,
    /// `active` or `suspended`.
    pub status: String,
    pub access_token_ttl_seconds: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Clone, sqlx::FromRow)]
pub struct UserRecord {
    pub id: String,
    pub tenant_id: Option<String>,
    /// `users.email` as stored: sealed for a customer's login. Read the address through
    /// `service::users::email_of` (or a record `service::users::opened` returned).
    #[sqlx(rename = "email")]
    pub stored_email: String,
    pub password_hash: String,
    /// Comma-separated role names.
    pub roles: String,
    /// `active` or `disabled`.
    pub status: String,
    pub created_at: i64,
    pub updated_at: i64,
    /// 1 once the user has an active second factor.
    pub mfa_enabled: i64,
    pub password_changed_at: Option<i64>,
}

impl std::fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRecord")
            .field("id", &self.id)
            .field("tenant_id", &self.tenant_id)
            .field("roles", &self.roles)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub struct NewTenant {
    pub id: TenantId,
    pub slug: String,
    pub name: String,
    pub currencies: String,
    pub access_token_ttl_seconds: Option<i64>,
    pub created_at: Timestamp,
}

/// `Debug` omits the email and the password hash (issue 13 item 17).
#[derive(Clone)]
pub struct NewUser {
    pub id: UserId,
    pub tenant_id: Option<TenantId>,
    /// What `users.email` holds: the address in clear for a staff login, sealed under the
    /// login's own data key for a customer's (`service::users::stored_email`).
    pub email: String,
    /// The keyed hash of the email (`users.email_hash`), by which the login is looked up and
    /// kept unique in its tenant.
    pub email_hash: String,
    pub password_hash: String,
    pub roles: Vec<Role>,
    pub created_at: Timestamp,
}

impl std::fmt::Debug for NewUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewUser")
            .field("id", &self.id)
            .field("tenant_id", &self.tenant_id)
            .field("roles", &self.roles)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub struct NewSession {
    pub id: SessionId,
    pub tenant_id: Option<TenantId>,
    pub user_id: UserId,
    pub created_at: Timestamp,
    /// Absolute end of the session: no refresh after this.
    pub expires_at: Timestamp,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

/// `Debug` omits the token's hash.
#[derive(Clone)]
pub struct NewRefreshToken {
    /// SHA-256 of the token; the token itself is never stored.
    pub token_hash: String,
    pub session_id: SessionId,
    pub tenant_id: Option<TenantId>,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
}

impl std::fmt::Debug for NewRefreshToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewRefreshToken")
            .field("session_id", &self.session_id)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// A session joined with its user and tenant: what every authenticated request checks.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SessionView {
    pub session_id: String,
    pub tenant_id: Option<String>,
    pub user_id: String,
    pub roles: String,
    pub user_status: String,
    pub tenant_status: Option<String>,
    pub access_token_ttl_seconds: Option<i64>,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    /// The last password (or MFA) proof in this session, for step-up.
    pub authenticated_at: Option<i64>,
    /// Whether the user has an active second factor.
    pub mfa_enabled: i64,
    /// The tenant's stored security policy, if any (JSON).
    pub policy: Option<String>,
    /// The address the session was last used from (its sign-in address until then).
    pub last_ip: Option<String>,
}

/// What presenting a refresh token did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsumeOutcome {
    /// The token was live and is now spent.
    Consumed { session_id: String, expires_at: i64 },
    /// The token had been spent before: a replay.
    AlreadyUsed {
        session_id: String,
        tenant_id: Option<String>,
    },
    /// No such token.
    Unknown,
}

/// A change to a user.
#[derive(Debug, Clone)]
pub enum UserChange {
    /// `disabled` also revokes every session of the user.
    Status(&'static str),
    Roles(Vec<Role>),
}

/// Cursor page request: `limit` rows after the cursor id (newest first).
#[derive(Debug, Clone)]
pub struct Page {
    pub limit: u32,
    pub starting_after: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub actor_id: Option<String>,
    pub action: Option<String>,
    pub occurred_after: Option<Timestamp>,
    pub occurred_before: Option<Timestamp>,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ChainHead {
    pub chain: String,
    pub seq: i64,
    pub hash: String,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CustomerRecord {
    pub id: String,
    pub tenant_id: String,
    pub user_id: Option<String>,
    pub external_ref: Option<String>,
    pub created_at: i64,
    /// The customer's personal data (`domain::personal::CustomerProfile` as JSON) sealed under
    /// the customer's own data key, AAD row = the customer id; `None` without personal data.
    pub pii: Option<String>,
    /// `active` or `erased`.
    pub status: String,
    /// 1 while processing is restricted (GDPR art. 18), else 0.
    pub processing_restricted: i64,
    pub updated_at: Option<i64>,
    pub erased_at: Option<i64>,
}

/// One blind-index row of a customer: the HMAC of a normalised value under the tenant's
/// per-field index key (`field` is `email`, `phone` or `national_id:<TYPE>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerLookup {
    pub field: String,
    pub digest: String,
    /// The index key version the digest was computed under.
    pub index_version: i64,
}

/// A rectification of a customer's personal data: the new ciphertext and blind-index rows,
/// applied only if the stored ciphertext is still `expected_pii` (what the change was computed
/// from) and the customer is not erased.
#[derive(Debug, Clone)]
pub struct Rectification {
    pub tenant_id: TenantId,
    pub id: String,
    pub expected_pii: Option<String>,
    pub pii: Option<String>,
    pub lookups: Vec<CustomerLookup>,
    /// The tenant's live index versions the lookups were computed under (oldest first); the
    /// write is refused with [`StoreError::IndexKeyChanged`] if they changed meanwhile.
    pub index_versions: Vec<i64>,
    pub now: Timestamp,
}

/// What a rectification did.
#[derive(Debug, Clone)]
pub enum RectifyOutcome {
    Updated(Box<CustomerRecord>),
    NotFound,
    Erased,
    /// The personal data changed since it was read (another rectification, a re-encryption).
    Stale,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AccountRecord {
    pub id: String,
    pub tenant_id: String,
    pub customer_id: Option<String>,
    pub kind: String,
    pub currency: String,
    pub status: String,
    pub posted: i64,
    pub pending_debits: i64,
    pub pending_credits: i64,
    pub overdraft_limit: i64,
    pub entry_count: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

impl AccountRecord {
    /// Posted balance minus pending debits (holds).
    pub fn available(&self) -> i64 {
        self.posted - self.pending_debits
    }
}

#[derive(Debug, Clone)]
pub struct NewCustomer {
    pub id: crate::ids::CustomerId,
    pub tenant_id: TenantId,
    pub user_id: Option<UserId>,
    pub external_ref: Option<String>,
    pub created_at: Timestamp,
    /// The sealed personal data (see [`CustomerRecord::pii`]).
    pub pii: Option<String>,
    /// Its blind-index rows, inserted in the same transaction.
    pub lookups: Vec<CustomerLookup>,
    /// The live index versions the lookups were computed under (see [`Rectification`]).
    pub index_versions: Vec<i64>,
}

#[derive(Debug, Clone)]
pub struct NewAccount {
    pub id: crate::ids::AccountId,
    pub tenant_id: TenantId,
    pub customer_id: Option<crate::ids::CustomerId>,
    pub kind: crate::domain::ledger::AccountKind,
    pub currency: String,
    pub overdraft_limit: i64,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct HoldRecord {
    pub id: String,
    pub tenant_id: String,
    pub account_id: String,
    /// The account a capture will credit, when the hold names one (it shows the amount as
    /// pending credits meanwhile).
    pub credit_account_id: Option<String>,
    pub currency: String,
    pub amount: i64,
    /// `active`, `captured`, `voided` or `expired` (an `active` hold past `expires_at` is expired).
    pub status: String,
    pub expires_at: i64,
    pub reference: Option<String>,
    pub captured_transfer_id: Option<String>,
    pub created_by: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    /// `payment` (placed through the holds API) or `review` (a movement a pre-commit check
    /// sent to review: the holds API neither captures nor voids it).
    pub purpose: String,
}

#[derive(Debug, Clone, Default)]
pub struct TransferFilter {
    pub account_id: Option<String>,
    /// Only transfers touching an account of this customer (ownership scope).
    pub customer_id: Option<String>,
    pub created_after: Option<Timestamp>,
    pub created_before: Option<Timestamp>,
}

/// What one retention run deletes, as decided by `service::retention`.
#[derive(Debug, Clone)]
pub struct RetentionPlan {
    /// Sessions that ended (expired or were revoked) before this go, with their refresh tokens.
    pub sessions_ended_before: Timestamp,
    /// Idempotency records that expired before this go.
    pub idempotency_expired_before: Timestamp,
    /// No audit record that occurred at or after this is deleted (at least 12 months ago).
    pub audit_cutoff: Timestamp,
    /// The audit chains to prune, each verified up to its new checkpoint by the caller.
    pub audit_prunes: Vec<AuditPrune>,
    /// Password-reset tokens (digests) that expired before this go, spent or not.
    pub reset_tokens_expired_before: Timestamp,
    /// Outbox messages sent or given up on before this go.
    pub mail_finished_before: Timestamp,
    /// Security alerts delivered or given up on before this go.
    pub alerts_finished_before: Timestamp,
    /// Sign-in failure counters whose last failure (and any lock) ended before this go: a day
    /// of quiet resets them anyway, so deleting them changes no answer.
    pub throttle_quiet_before: Timestamp,
    /// Running totals (`ledger_counters`) whose window started before this go: no limit or
    /// check reads a window that long closed, and a missing one is seeded again from the ledger.
    pub counters_started_before: Timestamp,
    /// No audit record of a money movement or account change that occurred at or after this
    /// is deleted (at least [`crate::domain::processing::FINANCIAL_RETENTION_DAYS`] ago): the
    /// deletion refuses the whole run if a planned prune would.
    pub financial_audit_cutoff: Timestamp,
}

/// `'account.open', 'account.freeze', …`: the financial audit actions as an SQL list (the
/// constants are lower-case words and dots, so quoting them is safe).
pub(crate) fn financial_actions_sql() -> String {
    crate::domain::processing::FINANCIAL_AUDIT_ACTIONS
        .iter()
        .filter(|a| {
            a.chars()
                .all(|c| c.is_ascii_lowercase() || c == '.' || c == '_')
        })
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Prune one audit chain's oldest records: those with `from_seq < seq <= checkpoint.seq`.
#[derive(Debug, Clone)]
pub struct AuditPrune {
    /// The chain's current checkpoint (0: none, the chain starts at genesis).
    pub from_seq: i64,
    /// The sealed checkpoint that replaces it.
    pub checkpoint: crate::domain::audit::AuditCheckpoint,
}

/// How many rows one retention run deleted, per class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PurgeCounts {
    pub sessions: u64,
    pub refresh_tokens: u64,
    pub idempotency_keys: u64,
    pub audit_events: u64,
    /// Chains that got a new checkpoint.
    pub audit_chains: u64,
    pub reset_tokens: u64,
    pub mail_messages: u64,
    pub login_throttle: u64,
    pub security_alerts: u64,
    pub ledger_counters: u64,
}

impl PurgeCounts {
    pub fn total(&self) -> u64 {
        self.sessions
            + self.refresh_tokens
            + self.idempotency_keys
            + self.audit_events
            + self.reset_tokens
            + self.mail_messages
            + self.login_throttle
            + self.security_alerts
            + self.ledger_counters
    }
}

/// Builds the audit records of a retention run from its counts, inside its transaction.
pub type PurgeAudit<'a> = &'a (dyn Fn(&PurgeCounts) -> Vec<NewAuditEvent> + Send + Sync);
/// A customer's data-protection state: lifecycle status, the sealed personal data, and the
/// restriction-of-processing flag (data-subject rights, `service::privacy`).
#[derive(Clone, sqlx::FromRow)]
pub struct CustomerPrivacyRecord {
    pub id: String,
    pub tenant_id: String,
    pub user_id: Option<String>,
    pub external_ref: Option<String>,
    /// `active` or `erased`.
    pub status: String,
    /// One ciphertext under the customer's own data key; `None` when none was given or after
    /// erasure.
    pub pii: Option<String>,
    /// 0 or 1.
    pub processing_restricted: i64,
    pub created_at: i64,
    pub updated_at: Option<i64>,
    pub erased_at: Option<i64>,
}

impl std::fmt::Debug for CustomerPrivacyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CustomerPrivacyRecord")
            .field("id", &self.id)
            .field("tenant_id", &self.tenant_id)
            .field("status", &self.status)
            .field("processing_restricted", &self.processing_restricted)
            .finish_non_exhaustive()
    }
}

/// The customer's linked user as the erasure was planned from: the store erases only if it is
/// still so (its roles decide what happens to it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkedUser {
    pub id: String,
    /// The roles as read (storage form).
    pub roles: String,
}

impl LinkedUser {
    /// Whether the user works for the tenant too: then the erasure only unlinks it and takes
    /// its CUSTOMER role away, instead of disabling and pseudonymising the login.
    pub fn is_staff(&self) -> bool {
        crate::domain::authz::roles_from_storage(&self.roles)
            .iter()
            .any(|r| r.is_staff())
    }
}

/// What an erasure request did, decided inside its one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErasureOutcome {
    /// Everything was erased; the accounts it closed and the linked user it disabled (a
    /// customer-only login) or unlinked (a staff user, which keeps its other roles).
    Erased {
        accounts_closed: Vec<String>,
        user_id: Option<String>,
        user_unlinked: Option<String>,
        keys_destroyed: u64,
        lookups_deleted: u64,
    },
    /// Refused: an account still holds money or has something pending. Each reason names the
    /// account (ids and amounts only). Nothing was changed.
    Blocked(Vec<String>),
    /// The customer was erased before.
    AlreadyErased,
    NotFound,
    /// The linked user is not as planned (another user, or its roles changed meanwhile).
    /// Nothing was changed.
    LinkedUserChanged,
}

/// Everything Kasho persists.
/// The one port money is posted through, with exactly one implementation per backend: the
/// SQLite writer thread (`sqlite_writer`, rusqlite) and the PostgreSQL writer
/// (`postgres::writer`, sqlx). Each loads what a batch touches under lock, has the ledger core
/// plan it (`domain::ledger::engine`) and writes the plan, in one transaction. Nothing else in
/// Kasho posts; the service's group-commit queue (`service::ledger::LedgerWriter`) is its one
/// caller.
#[async_trait]
pub trait LedgerPort: Send + Sync {
    /// Posts `batch` in one transaction, in order. Each movement is applied all or nothing; a
    /// refused one changes nothing but its idempotency record and its audit record. With
    /// `atomic`, every movement posts or none does: if any is refused the transaction rolls
    /// back (a movement whose key is already taken is a retry and answers with its stored
    /// outcome). Returns whether it committed, with each movement's result.
    async fn post(
        &self,
        batch: &[crate::domain::ledger::LedgerCommand],
        atomic: bool,
        checks: &crate::domain::ledger::Checks,
    ) -> StoreResult<(bool, Vec<PostResult>)>;
}

#[async_trait]
pub trait Store:
    keys::KeyStore
    + kyc::KycStore
    + security::SecurityStore
    + mfa::MfaStore
    + mail::MailStore
    + api_tokens::ApiTokenStore
    + alerts::AlertStore
    + identity::IdentityStore
    + notes::NotesStore
    + tenants::TenantStore
    + users::UserStore
    + sessions::SessionStore
    + customers::CustomerStore
    + audit::AuditStore
    + retention::RetentionStore
    + privacy::PrivacyStore
    + accounts::AccountStore
    + transfers::TransferStore
    + holds::HoldStore
    + Send
    + Sync
    + 'static
{
    /// `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;
    /// Applies pending migrations; returns the descriptions of those applied now.
    async fn migrate(&self) -> StoreResult<Vec<String>>;
    async fn ping(&self) -> StoreResult<()>;
    /// The concrete store, for tests and tools that reach below the trait (e.g. the fault
    /// tests' [`sqlite::SqliteStore::limit_pages`]).
    fn as_any(&self) -> &dyn std::any::Any;

    /// The one port money is posted through (see [`LedgerPort`]).
    fn ledger(&self) -> &dyn LedgerPort;
}

/// `Store`'s own methods, once for every store on a SQL backend (each aggregate's trait is
/// implemented in its module the same way).
#[async_trait]
impl<S: backend::SqlStore<Db = B>, B: backend::Backend> Store for S {
    fn backend(&self) -> &'static str {
        B::KIND
    }

    async fn migrate(&self) -> StoreResult<Vec<String>> {
        backend::run_migrations(self.migrator(), self.pool()).await
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(self.pool()).await?;
        Ok(())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn ledger(&self) -> &dyn LedgerPort {
        self.ledger_port()
    }
}

/// Opens the store named by `url` (`sqlite:` or `postgres://`).
pub async fn connect(
    url: &str,
    max_connections: u32,
    sealer: AuditSealer,
) -> StoreResult<Arc<dyn Store>> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(
            sqlite::SqliteStore::connect(url, max_connections, sealer).await?,
        ))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(
            postgres::PgStore::connect(url, max_connections, sealer).await?,
        ))
    } else {
        Err(StoreError::Database(
            "unsupported database URL scheme".into(),
        ))
    }
}
