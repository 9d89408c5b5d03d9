//! Storage of sessions and their refresh tokens: a session and its first token in one
//! transaction, a refresh token spent by one conditional update, revocation.

use async_trait::async_trait;
use sqlx::Transaction;

use super::backend::{Backend, RowsAffected, SqlStore};
use super::*;
use crate::clock::Timestamp;
use crate::domain::audit::NewAuditEvent;
use crate::ids::SessionId;

/// Sessions and refresh tokens.
#[async_trait]
pub trait SessionStore: Send + Sync {
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
}

#[async_trait]
impl<S: SqlStore<Db = B>, B: Backend> SessionStore for S {
    async fn create_session(
        &self,
        s: &NewSession,
        t: &NewRefreshToken,
        audit: &[NewAuditEvent],
    ) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO sessions (id, tenant_id, user_id, created_at, expires_at, ip, user_agent, \
             last_used_at, authenticated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $4, $4)",
        )
        .bind(s.id.as_str())
        .bind(s.tenant_id.as_ref().map(|t| t.as_str()))
        .bind(s.user_id.as_str())
        .bind(s.created_at.as_micros())
        .bind(s.expires_at.as_micros())
        .bind(&s.ip)
        .bind(&s.user_agent)
        .execute(&mut *tx)
        .await?;
        insert_refresh_tx(&mut tx, t).await?;
        self.append_audit_tx(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_session(&self, id: &SessionId) -> StoreResult<Option<SessionView>> {
        Ok(sqlx::query_as(
            "SELECT s.id AS session_id, s.tenant_id, s.user_id, u.roles, u.status AS user_status, \
                    t.status AS tenant_status, t.access_token_ttl_seconds, s.expires_at, s.revoked_at, \
                    s.created_at, s.last_used_at, s.authenticated_at, u.mfa_enabled, ts.policy, \
                    COALESCE(s.last_ip, s.ip) AS last_ip \
             FROM sessions s JOIN users u ON u.id = s.user_id \
             LEFT JOIN tenants t ON t.id = s.tenant_id \
             LEFT JOIN tenant_security ts ON ts.tenant_id = s.tenant_id \
             WHERE s.id = $1",
        )
        .bind(id.as_str())
        .fetch_optional(self.pool())
        .await?)
    }

    async fn consume_refresh_token(
        &self,
        token_hash: &str,
        now: Timestamp,
    ) -> StoreResult<ConsumeOutcome> {
        let mut tx = self.begin_write().await?;
        let spent: Option<(String, i64)> = sqlx::query_as(
            "UPDATE refresh_tokens SET used_at = $2 WHERE token_hash = $1 AND used_at IS NULL \
             RETURNING session_id, expires_at",
        )
        .bind(token_hash)
        .bind(now.as_micros())
        .fetch_optional(&mut *tx)
        .await?;
        let outcome = match spent {
            Some((session_id, expires_at)) => ConsumeOutcome::Consumed {
                session_id,
                expires_at,
            },
            None => {
                let used: Option<(String, Option<String>)> = sqlx::query_as(
                    "SELECT session_id, tenant_id FROM refresh_tokens WHERE token_hash = $1",
                )
                .bind(token_hash)
                .fetch_optional(&mut *tx)
                .await?;
                match used {
                    Some((session_id, tenant_id)) => ConsumeOutcome::AlreadyUsed {
                        session_id,
                        tenant_id,
                    },
                    None => ConsumeOutcome::Unknown,
                }
            }
        };
        tx.commit().await?;
        Ok(outcome)
    }

    async fn add_refresh_token(
        &self,
        t: &NewRefreshToken,
        audit: &[NewAuditEvent],
    ) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        insert_refresh_tx(&mut tx, t).await?;
        self.append_audit_tx(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn revoke_session(
        &self,
        id: &SessionId,
        reason: &str,
        now: Timestamp,
        audit: &[NewAuditEvent],
    ) -> StoreResult<bool> {
        let mut tx = self.begin_write().await?;
        let n = sqlx::query(
            "UPDATE sessions SET revoked_at = $2, revoked_reason = $3 WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind(id.as_str())
        .bind(now.as_micros())
        .bind(reason)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        self.append_audit_tx(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(n > 0)
    }
}

/// Inserts refresh token `t` inside `tx` (the transaction of its session or of the token it
/// replaces).
pub(super) async fn insert_refresh_tx<B: Backend>(
    tx: &mut Transaction<'static, B>,
    t: &NewRefreshToken,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO refresh_tokens (token_hash, session_id, tenant_id, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&t.token_hash)
    .bind(t.session_id.as_str())
    .bind(t.tenant_id.as_ref().map(|x| x.as_str()))
    .bind(t.created_at.as_micros())
    .bind(t.expires_at.as_micros())
    .execute(&mut **tx)
    .await?;
    Ok(())
}
