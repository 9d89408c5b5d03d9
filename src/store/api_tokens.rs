//! Storage of API tokens, their secrets (as keyed hashes) and the nonces of signed requests.
//! Implemented once for both backends (any [`SqlStore`]).

use async_trait::async_trait;

use super::backend::{Backend, Paged, RowsAffected, SqlStore};
use super::{Page, StoreResult};
use crate::clock::Timestamp;
use crate::domain::audit::NewAuditEvent;
use crate::ids::{TenantId, UserId};

/// A new token with its first secret.
#[derive(Clone)]
pub struct NewApiToken {
    pub id: String,
    pub tenant_id: TenantId,
    pub user_id: UserId,
    pub name: String,
    /// `permission=own|all`, comma separated.
    pub scopes: String,
    /// CIDRs, comma separated ('' for any address).
    pub allowed_ips: String,
    pub secret_hash: String,
    /// The signing secret issued with it, sealed ([`crate::store::keys::API_TOKEN_SIGNING_SECRET`]).
    pub signing_secret: String,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    /// Its creator as the request was authorised, re-checked in the creating transaction.
    pub actor: Option<crate::store::ActorCheck>,
}

impl std::fmt::Debug for NewApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewApiToken")
            .field("id", &self.id)
            .field("tenant_id", &self.tenant_id)
            .field("user_id", &self.user_id)
            .field("name", &self.name)
            .field("scopes", &self.scopes)
            .field("created_at", &self.created_at)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// A token as listed (never a secret).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ApiTokenRecord {
    pub id: String,
    pub tenant_id: String,
    pub user_id: String,
    pub name: String,
    pub scopes: String,
    pub allowed_ips: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub last_used_at: Option<i64>,
    pub rotated_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

/// What presenting a secret finds: the token, the secret's own validity, and the creator and
/// tenant as they are now.
#[derive(Clone, sqlx::FromRow)]
pub struct ApiTokenAuthView {
    pub id: String,
    pub tenant_id: String,
    pub user_id: String,
    pub scopes: String,
    pub allowed_ips: String,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
    pub secret_hash: String,
    /// Set on a secret replaced by a rotation: the end of its overlap.
    pub valid_until: Option<i64>,
    /// The sealed signing secret issued with this secret; `None` for secrets issued before
    /// signing secrets existed (those sign with the bearer secret until a rotation).
    pub signing_secret: Option<String>,
    pub roles: String,
    pub user_status: String,
    /// Whether the creator has an active second factor.
    pub mfa_enabled: i64,
    pub tenant_status: String,
    pub policy: Option<String>,
}

impl std::fmt::Debug for ApiTokenAuthView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiTokenAuthView")
            .field("id", &self.id)
            .field("tenant_id", &self.tenant_id)
            .field("user_id", &self.user_id)
            .field("scopes", &self.scopes)
            .field("expires_at", &self.expires_at)
            .field("revoked_at", &self.revoked_at)
            .field("valid_until", &self.valid_until)
            .field(
                "signing_secret",
                &self.signing_secret.as_ref().map(|_| "(sealed)"),
            )
            .field("user_status", &self.user_status)
            .field("tenant_status", &self.tenant_status)
            .finish_non_exhaustive()
    }
}

#[async_trait]
#[allow(clippy::too_many_arguments)]
pub trait ApiTokenStore: Send + Sync {
    async fn create_api_token(&self, t: &NewApiToken, audit: &[NewAuditEvent]) -> StoreResult<()>;
    /// A token of the tenant (revoked ones included).
    async fn get_api_token(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> StoreResult<Option<ApiTokenRecord>>;
    /// The tenant's tokens that are not revoked, newest first; only `user`'s when given.
    async fn list_api_tokens(
        &self,
        tenant: &TenantId,
        user: Option<&UserId>,
        page: &Page,
    ) -> StoreResult<Vec<ApiTokenRecord>>;
    /// Revokes a live token (all its secrets stop at once). False when there was none.
    async fn revoke_api_token(
        &self,
        tenant: &TenantId,
        id: &str,
        by: &str,
        now: Timestamp,
        audit: &[NewAuditEvent],
    ) -> StoreResult<bool>;
    /// Adds a new current secret (with its sealed signing secret); the previous current one
    /// stays valid until `old_valid_until`, and older replaced secrets end now at the latest.
    /// False when the token is not live.
    async fn rotate_api_token(
        &self,
        tenant: &TenantId,
        id: &str,
        new_secret_hash: &str,
        new_signing_secret: &str,
        old_valid_until: Timestamp,
        now: Timestamp,
        audit: &[NewAuditEvent],
    ) -> StoreResult<bool>;
    /// The token a secret hash belongs to.
    async fn api_token_by_secret(&self, secret_hash: &str)
    -> StoreResult<Option<ApiTokenAuthView>>;
    /// Records use, at most once per `min_interval_seconds` (a conditional update).
    async fn touch_api_token(
        &self,
        id: &str,
        now: Timestamp,
        min_interval_seconds: i64,
    ) -> StoreResult<()>;
    /// Remembers a nonce of a token until `expires_at`; false when it is already remembered
    /// (a replay). Forgets expired nonces.
    async fn remember_nonce(
        &self,
        token_id: &str,
        nonce: &str,
        expires_at: Timestamp,
        now: Timestamp,
    ) -> StoreResult<bool>;
}

#[async_trait]
#[allow(clippy::too_many_arguments)]
impl<S: SqlStore<Db = B>, B: Backend> ApiTokenStore for S {
    async fn create_api_token(&self, t: &NewApiToken, audit: &[NewAuditEvent]) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        Self::authorise_change_tx(
            &mut tx,
            Some(&t.tenant_id),
            t.actor.as_ref(),
            t.created_at.as_micros(),
        )
        .await?;
        sqlx::query(
            "INSERT INTO api_tokens (id, tenant_id, user_id, name, scopes, allowed_ips, \
             created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&t.id)
        .bind(t.tenant_id.as_str())
        .bind(t.user_id.as_str())
        .bind(&t.name)
        .bind(&t.scopes)
        .bind(&t.allowed_ips)
        .bind(t.created_at.as_micros())
        .bind(t.expires_at.as_micros())
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO api_token_secrets (secret_hash, token_id, tenant_id, created_at, \
             signing_secret) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&t.secret_hash)
        .bind(&t.id)
        .bind(t.tenant_id.as_str())
        .bind(t.created_at.as_micros())
        .bind(&t.signing_secret)
        .execute(&mut *tx)
        .await?;
        self.append_audit_tx(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_api_token(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> StoreResult<Option<ApiTokenRecord>> {
        Ok(sqlx::query_as(
            "SELECT id, tenant_id, user_id, name, scopes, allowed_ips, created_at, \
             expires_at, last_used_at, rotated_at, revoked_at \
             FROM api_tokens WHERE tenant_id = $1 AND id = $2",
        )
        .bind(tenant.as_str())
        .bind(id)
        .fetch_optional(self.pool())
        .await?)
    }

    async fn list_api_tokens(
        &self,
        tenant: &TenantId,
        user: Option<&UserId>,
        page: &Page,
    ) -> StoreResult<Vec<ApiTokenRecord>> {
        Ok(sqlx::query_as(
            "SELECT id, tenant_id, user_id, name, scopes, allowed_ips, created_at, \
             expires_at, last_used_at, rotated_at, revoked_at \
             FROM api_tokens WHERE tenant_id = $1 AND revoked_at IS NULL \
             AND ($2 IS NULL OR user_id = $2) AND ($3 IS NULL OR id < $3) \
             ORDER BY id DESC LIMIT $4",
        )
        .bind(tenant.as_str())
        .bind(user.map(|u| u.as_str()))
        .page(page)
        .fetch_all(self.pool())
        .await?)
    }

    async fn revoke_api_token(
        &self,
        tenant: &TenantId,
        id: &str,
        by: &str,
        now: Timestamp,
        audit: &[NewAuditEvent],
    ) -> StoreResult<bool> {
        let mut tx = self.begin_write().await?;
        let n = sqlx::query(
            "UPDATE api_tokens SET revoked_at = $3, revoked_by = $4 \
             WHERE tenant_id = $1 AND id = $2 AND revoked_at IS NULL",
        )
        .bind(tenant.as_str())
        .bind(id)
        .bind(now.as_micros())
        .bind(by)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            return Ok(false);
        }
        self.append_audit_tx(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn rotate_api_token(
        &self,
        tenant: &TenantId,
        id: &str,
        new_secret_hash: &str,
        new_signing_secret: &str,
        old_valid_until: Timestamp,
        now: Timestamp,
        audit: &[NewAuditEvent],
    ) -> StoreResult<bool> {
        let mut tx = self.begin_write().await?;
        let n = sqlx::query(
            "UPDATE api_tokens SET rotated_at = $3 \
             WHERE tenant_id = $1 AND id = $2 AND revoked_at IS NULL AND expires_at > $3",
        )
        .bind(tenant.as_str())
        .bind(id)
        .bind(now.as_micros())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            return Ok(false);
        }
        // Secrets replaced by an earlier rotation end now at the latest: at most the
        // current secret and one predecessor are ever valid.
        sqlx::query(
            "UPDATE api_token_secrets SET valid_until = $2 \
             WHERE token_id = $1 AND valid_until IS NOT NULL AND valid_until > $2",
        )
        .bind(id)
        .bind(now.as_micros())
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE api_token_secrets SET valid_until = $2 \
             WHERE token_id = $1 AND valid_until IS NULL",
        )
        .bind(id)
        .bind(old_valid_until.as_micros())
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO api_token_secrets (secret_hash, token_id, tenant_id, created_at, \
             signing_secret) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(new_secret_hash)
        .bind(id)
        .bind(tenant.as_str())
        .bind(now.as_micros())
        .bind(new_signing_secret)
        .execute(&mut *tx)
        .await?;
        self.append_audit_tx(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn api_token_by_secret(
        &self,
        secret_hash: &str,
    ) -> StoreResult<Option<ApiTokenAuthView>> {
        Ok(sqlx::query_as(
            "SELECT t.id, t.tenant_id, t.user_id, t.scopes, t.allowed_ips, t.expires_at, \
                    t.revoked_at, t.last_used_at, s.secret_hash, s.valid_until, s.signing_secret, u.roles, \
                    u.status AS user_status, u.mfa_enabled, te.status AS tenant_status, ts.policy \
             FROM api_token_secrets s JOIN api_tokens t ON t.id = s.token_id \
             JOIN users u ON u.id = t.user_id \
             JOIN tenants te ON te.id = t.tenant_id \
             LEFT JOIN tenant_security ts ON ts.tenant_id = t.tenant_id \
             WHERE s.secret_hash = $1 AND u.tenant_id = t.tenant_id",
        )
        .bind(secret_hash)
        .fetch_optional(self.pool())
        .await?)
    }

    async fn touch_api_token(
        &self,
        id: &str,
        now: Timestamp,
        min_interval_seconds: i64,
    ) -> StoreResult<()> {
        let stale = now.plus_seconds(-min_interval_seconds).as_micros();
        sqlx::query(
            "UPDATE api_tokens SET last_used_at = $2 WHERE id = $1 \
             AND (last_used_at IS NULL OR last_used_at < $3)",
        )
        .bind(id)
        .bind(now.as_micros())
        .bind(stale)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn remember_nonce(
        &self,
        token_id: &str,
        nonce: &str,
        expires_at: Timestamp,
        now: Timestamp,
    ) -> StoreResult<bool> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM request_nonces WHERE expires_at <= $1")
            .bind(now.as_micros())
            .execute(&mut *tx)
            .await?;
        // Insert-or-fail on the primary key: two instances racing on one nonce cannot
        // both succeed.
        let n = sqlx::query(
            "INSERT INTO request_nonces (token_id, nonce, expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT (token_id, nonce) DO NOTHING",
        )
        .bind(token_id)
        .bind(nonce)
        .bind(expires_at.as_micros())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(n == 1)
    }
}
