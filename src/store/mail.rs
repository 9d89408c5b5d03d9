//! Storage of password-reset tokens (digests only) and of the mail outbox: a reset token and
//! its email are written in one transaction, and delivery workers claim due messages with a
//! conditional update, so several instances on one database never send a message twice at
//! once. Implemented once for both backends (any [`SqlStore`]).

use async_trait::async_trait;

use super::StoreResult;
use sqlx::Transaction;

use super::backend::{Backend, SqlStore};
use super::outbox::{self, Delivery};
use crate::clock::Timestamp;
use crate::domain::audit::NewAuditEvent;

/// A reset token to store: only the SHA-256 digest of the secret (which `Debug` omits too).
#[derive(Clone)]
pub struct NewPasswordReset {
    pub id: String,
    pub tenant_id: String,
    pub user_id: String,
    pub token_hash: String,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
}

impl std::fmt::Debug for NewPasswordReset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewPasswordReset")
            .field("id", &self.id)
            .field("tenant_id", &self.tenant_id)
            .field("user_id", &self.user_id)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// A message for the outbox; `message` is already sealed.
#[derive(Clone)]
pub struct NewOutboxMessage {
    pub id: String,
    pub tenant_id: String,
    pub kind: &'static str,
    pub message: String,
    pub created_at: Timestamp,
}

impl std::fmt::Debug for NewOutboxMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewOutboxMessage")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// At most `max` reset links per user created since `since` (more requests send nothing).
#[derive(Debug, Clone, Copy)]
pub struct ResetLimit {
    pub since: Timestamp,
    pub max: i64,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ResetTokenRecord {
    pub id: String,
    pub tenant_id: String,
    pub user_id: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub used_at: Option<i64>,
    pub invalidated_at: Option<i64>,
}

#[derive(Clone, sqlx::FromRow)]
pub struct OutboxRecord {
    pub id: String,
    pub tenant_id: String,
    pub kind: String,
    /// Sealed; `None` once the message was sent or given up on.
    pub message: Option<String>,
    /// `pending`, `sending`, `sent` or `failed`.
    pub status: String,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub lease_until: Option<i64>,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub finished_at: Option<i64>,
}

impl std::fmt::Debug for OutboxRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxRecord")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("status", &self.status)
            .field("attempts", &self.attempts)
            .field("last_error", &self.last_error)
            .finish_non_exhaustive()
    }
}

#[async_trait]
pub trait MailStore: Send + Sync {
    /// Stores a reset token and its email in one transaction, invalidating the user's older
    /// live tokens, unless the user already has `limit.max` tokens created since
    /// `limit.since`. Writes `audit_queued` or `audit_limited` accordingly, in the same
    /// transaction. Returns whether the token and message were stored.
    async fn queue_password_reset(
        &self,
        token: &NewPasswordReset,
        message: &NewOutboxMessage,
        limit: ResetLimit,
        audit_queued: &[NewAuditEvent],
        audit_limited: &[NewAuditEvent],
    ) -> StoreResult<bool>;
    /// The reset token with this digest, live or not.
    async fn password_reset_by_hash(
        &self,
        token_hash: &str,
    ) -> StoreResult<Option<ResetTokenRecord>>;
    /// Claims up to `limit` messages due at `now` (pending and due, or sending with an expired
    /// lease: a worker that died), counting one attempt each and leasing them until
    /// `lease_until`. A conditional update: concurrent workers never claim the same message.
    async fn claim_mail(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: i64,
    ) -> StoreResult<Vec<OutboxRecord>>;
    /// Records how the attempt on a claimed message ended (the sealed message is cleared when
    /// it is sent or failed). `false` if the message was not claimed any more.
    async fn finish_mail(&self, id: &str, now: Timestamp, outcome: &Delivery) -> StoreResult<bool>;
    /// One outbox message (tests and operators).
    async fn mail_message(&self, id: &str) -> StoreResult<Option<OutboxRecord>>;
}

#[async_trait]
impl<S: SqlStore<Db = B>, B: Backend> MailStore for S {
    async fn queue_password_reset(
        &self,
        token: &NewPasswordReset,
        message: &NewOutboxMessage,
        limit: ResetLimit,
        audit_queued: &[NewAuditEvent],
        audit_limited: &[NewAuditEvent],
    ) -> StoreResult<bool> {
        let mut tx = self.begin_write().await?;
        let (recent,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM password_reset_tokens WHERE user_id = $1 AND created_at >= $2",
        )
        .bind(&token.user_id)
        .bind(limit.since.as_micros())
        .fetch_one(&mut *tx)
        .await?;
        if recent >= limit.max {
            self.append_audit_tx(&mut tx, audit_limited).await?;
            tx.commit().await?;
            return Ok(false);
        }
        let now = token.created_at.as_micros();
        sqlx::query(
            "UPDATE password_reset_tokens SET invalidated_at = $2 \
             WHERE user_id = $1 AND used_at IS NULL AND invalidated_at IS NULL AND expires_at > $2",
        )
        .bind(&token.user_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO password_reset_tokens (id, tenant_id, user_id, token_hash, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&token.id)
        .bind(&token.tenant_id)
        .bind(&token.user_id)
        .bind(&token.token_hash)
        .bind(now)
        .bind(token.expires_at.as_micros())
        .execute(&mut *tx)
        .await?;
        insert_mail_tx(&mut tx, message).await?;
        self.append_audit_tx(&mut tx, audit_queued).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn password_reset_by_hash(
        &self,
        token_hash: &str,
    ) -> StoreResult<Option<ResetTokenRecord>> {
        Ok(sqlx::query_as(
            "SELECT id, tenant_id, user_id, created_at, expires_at, used_at, invalidated_at \
             FROM password_reset_tokens WHERE token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(self.pool())
        .await?)
    }

    async fn claim_mail(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: i64,
    ) -> StoreResult<Vec<OutboxRecord>> {
        outbox::claim(self, &outbox::MAIL, now, lease_until, limit).await
    }

    async fn finish_mail(&self, id: &str, now: Timestamp, outcome: &Delivery) -> StoreResult<bool> {
        outbox::finish(self, &outbox::MAIL, id, now, outcome).await
    }

    async fn mail_message(&self, id: &str) -> StoreResult<Option<OutboxRecord>> {
        Ok(sqlx::query_as("SELECT * FROM mail_outbox WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await?)
    }
}

/// Queues message `m` for delivery inside `tx` (the transaction of what it announces).
pub(super) async fn insert_mail_tx<B: Backend>(
    tx: &mut Transaction<'static, B>,
    m: &NewOutboxMessage,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO mail_outbox (id, tenant_id, kind, message, status, attempts, next_attempt_at, created_at) \
         VALUES ($1, $2, $3, $4, 'pending', 0, $5, $5)",
    )
    .bind(&m.id)
    .bind(&m.tenant_id)
    .bind(m.kind)
    .bind(&m.message)
    .bind(m.created_at.as_micros())
    .execute(&mut **tx)
    .await?;
    Ok(())
}
