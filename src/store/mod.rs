//! Storage: one [`Store`] trait, implemented for SQLite ([`sqlite::SqliteStore`]) and
//! PostgreSQL ([`postgres::PgStore`]). Both implementations are generated from the same SQL by
//! the macro in [`sql`], so behaviour is identical by construction; each backend only supplies
//! how it connects, migrates and opens a write transaction.
//!
//! Every method that changes state takes the audit records describing the change and writes them
//! in the same database transaction: a change is never committed without its audit trail.
//! Every query on tenant business data (users, audit events) is parameterised by a tenant id;
//! sessions and refresh tokens are found by their unguessable id or token hash and carry their
//! tenant, which the caller checks against the token's claims.

pub mod postgres;
mod sql;
pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;

use crate::clock::Timestamp;
use crate::domain::audit::{AuditRecord, AuditSealer, NewAuditEvent};
use crate::domain::authz::Role;
use crate::domain::values::Email;
use crate::ids::{SessionId, TenantId, UserId};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique constraint refused the write.
    #[error("unique constraint violated: {constraint}")]
    Conflict { constraint: String },
    #[error("database error: {0}")]
    Database(String),
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
        StoreError::Database(e.to_string())
    }
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
    pub email: String,
    pub password_hash: String,
    /// Comma-separated role names.
    pub roles: String,
    /// `active` or `disabled`.
    pub status: String,
    pub created_at: i64,
    pub updated_at: i64,
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

#[derive(Debug, Clone)]
pub struct NewUser {
    pub id: UserId,
    pub tenant_id: Option<TenantId>,
    pub email: Email,
    pub password_hash: String,
    pub roles: Vec<Role>,
    pub created_at: Timestamp,
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

#[derive(Debug, Clone)]
pub struct NewRefreshToken {
    /// SHA-256 of the token; the token itself is never stored.
    pub token_hash: String,
    pub session_id: SessionId,
    pub tenant_id: Option<TenantId>,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
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

/// Everything Kasho persists.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;
    /// Applies pending migrations; returns the descriptions of those applied now.
    async fn migrate(&self) -> StoreResult<Vec<String>>;
    async fn ping(&self) -> StoreResult<()>;

    // Tenants (platform scope).
    async fn create_tenant(
        &self,
        tenant: &NewTenant,
        manager: &NewUser,
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

    // Users. `tenant = None` is the platform scope (platform admins).
    async fn create_user(&self, user: &NewUser, audit: &[NewAuditEvent]) -> StoreResult<()>;
    async fn get_user(
        &self,
        tenant: Option<&TenantId>,
        id: &UserId,
    ) -> StoreResult<Option<UserRecord>>;
    async fn find_user_by_email(
        &self,
        tenant: Option<&TenantId>,
        email: &Email,
    ) -> StoreResult<Option<UserRecord>>;
    /// `only`: restrict to one user (ownership scope).
    async fn list_users(
        &self,
        tenant: &TenantId,
        only: Option<&UserId>,
        page: &Page,
    ) -> StoreResult<Vec<UserRecord>>;
    async fn update_user(
        &self,
        tenant: &TenantId,
        id: &UserId,
        change: &UserChange,
        now: Timestamp,
        audit: &[NewAuditEvent],
    ) -> StoreResult<Option<UserRecord>>;

    // Sessions and refresh tokens.
    async fn create_session(
        &self,
        session: &NewSession,
        token: &NewRefreshToken,
        audit: &[NewAuditEvent],
    ) -> StoreResult<()>;
    async fn get_session(&self, id: &SessionId) -> StoreResult<Option<SessionView>>;
    /// Atomically spends a refresh token (a conditional update: of two concurrent callers, one
    /// wins and the other sees `AlreadyUsed`).
    async fn consume_refresh_token(
        &self,
        token_hash: &str,
        now: Timestamp,
    ) -> StoreResult<ConsumeOutcome>;
    async fn add_refresh_token(
        &self,
        token: &NewRefreshToken,
        audit: &[NewAuditEvent],
    ) -> StoreResult<()>;
    /// Revokes a session; `false` if it was already revoked or does not exist.
    async fn revoke_session(
        &self,
        id: &SessionId,
        reason: &str,
        now: Timestamp,
        audit: &[NewAuditEvent],
    ) -> StoreResult<bool>;

    // Audit log.
    async fn append_audit(&self, event: &NewAuditEvent) -> StoreResult<()>;
    /// One chain's records, newest first.
    async fn list_audit(
        &self,
        chain: &str,
        filter: &AuditFilter,
        page: &Page,
    ) -> StoreResult<Vec<AuditRecord>>;
    async fn audit_heads(&self) -> StoreResult<Vec<ChainHead>>;
    /// Up to `limit` records of `chain` with `seq > after_seq`, in order. Reads rows as stored,
    /// ordered by `seq` only, so verification sees gaps and reorderings.
    async fn audit_chain_after(
        &self,
        chain: &str,
        after_seq: i64,
        limit: i64,
    ) -> StoreResult<Vec<AuditRecord>>;
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
