//! Storage of multi-factor authentication: users' TOTP secrets (sealed) and the last time step
//! each accepted, single-use recovery codes (hashed), and sign-in challenges (hashed tokens).
//! Implemented once for both backends (any [`SqlStore`]).
//!
//! Every spend is one conditional statement (a later step only, an unused code only, a live
//! challenge only), so two concurrent requests presenting the same proof cannot both pass.

use async_trait::async_trait;

use super::StoreResult;
use super::backend::{Backend, RowsAffected, SqlStore};
use crate::clock::Timestamp;
use crate::domain::audit::NewAuditEvent;
use crate::ids::{TenantId, UserId};

/// A user's TOTP row. Secrets are ciphertexts (see `ENCRYPTED_COLUMNS`).
#[derive(Clone, sqlx::FromRow)]
pub struct TotpRecord {
    pub user_id: String,
    pub tenant_id: Option<String>,
    /// The active secret, once an enrolment was confirmed.
    pub secret: Option<String>,
    /// An enrolment awaiting its first code.
    pub pending_secret: Option<String>,
    pub pending_created_at: Option<i64>,
    pub enabled_at: Option<i64>,
    /// The last accepted time step (only later ones are accepted).
    pub last_step: Option<i64>,
    pub updated_at: i64,
}

impl std::fmt::Debug for TotpRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TotpRecord")
            .field("user_id", &self.user_id)
            .field("tenant_id", &self.tenant_id)
            .field("enabled_at", &self.enabled_at)
            .field("last_step", &self.last_step)
            .finish_non_exhaustive()
    }
}

/// The second step of a sign-in. `Debug` omits the token's hash.
#[derive(Clone, sqlx::FromRow)]
pub struct MfaChallengeRecord {
    pub token_hash: String,
    pub user_id: String,
    pub tenant_id: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
    pub used_at: Option<i64>,
    pub failures: i64,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

impl std::fmt::Debug for MfaChallengeRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MfaChallengeRecord")
            .field("user_id", &self.user_id)
            .field("tenant_id", &self.tenant_id)
            .field("expires_at", &self.expires_at)
            .field("used_at", &self.used_at)
            .field("failures", &self.failures)
            .finish_non_exhaustive()
    }
}

/// A confirmed enrolment: the pending secret becomes the active one. `Debug` omits the sealed
/// secrets and the recovery-code hashes.
#[derive(Clone)]
pub struct TotpConfirmation<'a> {
    pub tenant: Option<&'a TenantId>,
    pub user: &'a UserId,
    /// The pending ciphertext the code was checked against (a restarted enrolment meanwhile
    /// makes the confirmation fail).
    pub pending_secret: &'a str,
    /// The same secret sealed for the active column (the AAD names the column, so a
    /// ciphertext cannot simply move from one to the other).
    pub secret: &'a str,
    /// The step of the code that confirmed it (it cannot be used again).
    pub step: i64,
    /// Hashes of the new recovery codes (any older ones are deleted).
    pub recovery_hashes: &'a [String],
    pub now: Timestamp,
}

impl std::fmt::Debug for TotpConfirmation<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TotpConfirmation")
            .field("tenant", &self.tenant)
            .field("user", &self.user)
            .field("step", &self.step)
            .field("recovery_codes", &self.recovery_hashes.len())
            .finish_non_exhaustive()
    }
}

#[async_trait]
#[allow(clippy::too_many_arguments)]
pub trait MfaStore: Send + Sync {
    /// The user's TOTP row, if any.
    async fn totp(&self, user: &UserId) -> StoreResult<Option<TotpRecord>>;
    /// Starts (or restarts) an enrolment: stores the sealed pending secret, leaving any active
    /// one in place until the new one is confirmed.
    async fn start_totp_enrolment(
        &self,
        tenant: Option<&TenantId>,
        user: &UserId,
        pending_secret: &str,
        now: Timestamp,
        audit: &[NewAuditEvent],
    ) -> StoreResult<()>;
    /// Activates the pending secret, replaces the recovery codes and sets `users.mfa_enabled`,
    /// in one transaction. `false` if the pending secret changed meanwhile.
    async fn confirm_totp(
        &self,
        c: &TotpConfirmation<'_>,
        audit: &[NewAuditEvent],
    ) -> StoreResult<bool>;
    /// Accepts `step` for the user's active secret if it is later than every step accepted
    /// before (one conditional UPDATE).
    async fn accept_totp_step(&self, user: &UserId, step: i64) -> StoreResult<bool>;
    /// Spends an unused recovery code (one conditional UPDATE).
    async fn spend_recovery_code(
        &self,
        user: &UserId,
        code_hash: &str,
        now: Timestamp,
    ) -> StoreResult<bool>;
    /// How many unused recovery codes the user has.
    async fn recovery_codes_remaining(&self, user: &UserId) -> StoreResult<i64>;
    /// Replaces the recovery codes of a user whose MFA is active. `false` if it is not.
    async fn replace_recovery_codes(
        &self,
        tenant: Option<&TenantId>,
        user: &UserId,
        hashes: &[String],
        now: Timestamp,
        audit: &[NewAuditEvent],
    ) -> StoreResult<bool>;
    /// Removes the user's second factor, recovery codes and open challenges and clears
    /// `users.mfa_enabled`. `false` if MFA was not active.
    /// With `actor`, the acting user is re-checked first in the same transaction
    /// (`authorise_change_tx`).
    async fn disable_mfa(
        &self,
        tenant: Option<&TenantId>,
        user: &UserId,
        now: Timestamp,
        actor: Option<&crate::store::ActorCheck>,
        audit: &[NewAuditEvent],
    ) -> StoreResult<bool>;

    /// Stores a new challenge (and forgets challenges that expired a day ago).
    async fn create_mfa_challenge(
        &self,
        c: &MfaChallengeRecord,
        audit: &[NewAuditEvent],
    ) -> StoreResult<()>;
    async fn mfa_challenge(&self, token_hash: &str) -> StoreResult<Option<MfaChallengeRecord>>;
    /// Spends a challenge that is unused, unexpired and has had fewer than `max_failures` codes
    /// counted (the caller passes one more than the cap: its own code was counted first).
    async fn consume_mfa_challenge(
        &self,
        token_hash: &str,
        now: Timestamp,
        max_failures: i64,
    ) -> StoreResult<bool>;
    /// Counts a code against a challenge BEFORE it is checked (one conditional update): `false`
    /// when the challenge is spent, expired or has had `max_attempts` codes already, and then
    /// the code must not be checked. Of any number of concurrent callers at most
    /// `max_attempts` get `true`.
    async fn count_mfa_attempt(
        &self,
        token_hash: &str,
        now: Timestamp,
        max_attempts: i64,
    ) -> StoreResult<bool>;
}

#[async_trait]
#[allow(clippy::too_many_arguments)]
impl<S: SqlStore<Db = B>, B: Backend> MfaStore for S {
    async fn totp(&self, user: &UserId) -> StoreResult<Option<TotpRecord>> {
        Ok(sqlx::query_as(
            "SELECT user_id, tenant_id, secret, pending_secret, pending_created_at, \
                    enabled_at, last_step, updated_at \
             FROM mfa_totp WHERE user_id = $1",
        )
        .bind(user.as_str())
        .fetch_optional(self.pool())
        .await?)
    }

    async fn start_totp_enrolment(
        &self,
        tenant: Option<&TenantId>,
        user: &UserId,
        pending_secret: &str,
        now: Timestamp,
        audit: &[NewAuditEvent],
    ) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO mfa_totp (user_id, tenant_id, pending_secret, pending_created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $4) ON CONFLICT (user_id) DO UPDATE SET \
             pending_secret = excluded.pending_secret, \
             pending_created_at = excluded.pending_created_at, \
             updated_at = excluded.updated_at",
        )
        .bind(user.as_str())
        .bind(tenant.map(|t| t.as_str()))
        .bind(pending_secret)
        .bind(now.as_micros())
        .execute(&mut *tx)
        .await?;
        self.append_audit_tx(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn confirm_totp(
        &self,
        c: &TotpConfirmation<'_>,
        audit: &[NewAuditEvent],
    ) -> StoreResult<bool> {
        let scope = c.tenant.map_or("", |t| t.as_str());
        let mut tx = self.begin_write().await?;
        let n = sqlx::query(
            "UPDATE mfa_totp SET secret = $5, pending_secret = NULL, \
             pending_created_at = NULL, enabled_at = $3, last_step = $4, updated_at = $3 \
             WHERE user_id = $1 AND pending_secret = $2",
        )
        .bind(c.user.as_str())
        .bind(c.pending_secret)
        .bind(c.now.as_micros())
        .bind(c.step)
        .bind(c.secret)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n != 1 {
            return Ok(false);
        }
        let n = sqlx::query(
            "UPDATE users SET mfa_enabled = 1, updated_at = $3 \
             WHERE COALESCE(tenant_id, '') = $1 AND id = $2",
        )
        .bind(scope)
        .bind(c.user.as_str())
        .bind(c.now.as_micros())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n != 1 {
            return Ok(false);
        }
        sqlx::query("DELETE FROM mfa_recovery_codes WHERE user_id = $1")
            .bind(c.user.as_str())
            .execute(&mut *tx)
            .await?;
        for h in c.recovery_hashes {
            sqlx::query(
                "INSERT INTO mfa_recovery_codes (id, user_id, tenant_id, code_hash, created_at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(uuid::Uuid::now_v7().to_string())
            .bind(c.user.as_str())
            .bind(c.tenant.map(|t| t.as_str()))
            .bind(h)
            .bind(c.now.as_micros())
            .execute(&mut *tx)
            .await?;
        }
        self.append_audit_tx(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn accept_totp_step(&self, user: &UserId, step: i64) -> StoreResult<bool> {
        let mut tx = self.begin_write().await?;
        let n = sqlx::query(
            "UPDATE mfa_totp SET last_step = $2 WHERE user_id = $1 \
             AND secret IS NOT NULL AND (last_step IS NULL OR last_step < $2)",
        )
        .bind(user.as_str())
        .bind(step)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(n == 1)
    }

    async fn spend_recovery_code(
        &self,
        user: &UserId,
        code_hash: &str,
        now: Timestamp,
    ) -> StoreResult<bool> {
        let mut tx = self.begin_write().await?;
        let n = sqlx::query(
            "UPDATE mfa_recovery_codes SET used_at = $3 \
             WHERE user_id = $1 AND code_hash = $2 AND used_at IS NULL",
        )
        .bind(user.as_str())
        .bind(code_hash)
        .bind(now.as_micros())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(n == 1)
    }

    async fn recovery_codes_remaining(&self, user: &UserId) -> StoreResult<i64> {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM mfa_recovery_codes WHERE user_id = $1 AND used_at IS NULL",
        )
        .bind(user.as_str())
        .fetch_one(self.pool())
        .await?;
        Ok(n)
    }

    async fn replace_recovery_codes(
        &self,
        tenant: Option<&TenantId>,
        user: &UserId,
        hashes: &[String],
        now: Timestamp,
        audit: &[NewAuditEvent],
    ) -> StoreResult<bool> {
        let mut tx = self.begin_write().await?;
        let active: Option<(String,)> = sqlx::query_as(
            "SELECT user_id FROM mfa_totp WHERE user_id = $1 AND secret IS NOT NULL",
        )
        .bind(user.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        if active.is_none() {
            return Ok(false);
        }
        sqlx::query("DELETE FROM mfa_recovery_codes WHERE user_id = $1")
            .bind(user.as_str())
            .execute(&mut *tx)
            .await?;
        for h in hashes {
            sqlx::query(
                "INSERT INTO mfa_recovery_codes (id, user_id, tenant_id, code_hash, created_at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(uuid::Uuid::now_v7().to_string())
            .bind(user.as_str())
            .bind(tenant.map(|t| t.as_str()))
            .bind(h)
            .bind(now.as_micros())
            .execute(&mut *tx)
            .await?;
        }
        self.append_audit_tx(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn disable_mfa(
        &self,
        tenant: Option<&TenantId>,
        user: &UserId,
        now: Timestamp,
        actor: Option<&crate::store::ActorCheck>,
        audit: &[NewAuditEvent],
    ) -> StoreResult<bool> {
        let scope = tenant.map_or("", |t| t.as_str());
        let mut tx = self.begin_write().await?;
        Self::authorise_change_tx(&mut tx, tenant, actor, now.as_micros()).await?;
        let n = sqlx::query(
            "DELETE FROM mfa_totp WHERE user_id = $1 AND secret IS NOT NULL \
             AND COALESCE(tenant_id, '') = $2",
        )
        .bind(user.as_str())
        .bind(scope)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n != 1 {
            return Ok(false);
        }
        sqlx::query("DELETE FROM mfa_recovery_codes WHERE user_id = $1")
            .bind(user.as_str())
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM mfa_challenges WHERE user_id = $1")
            .bind(user.as_str())
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE users SET mfa_enabled = 0, updated_at = $3 \
             WHERE COALESCE(tenant_id, '') = $1 AND id = $2",
        )
        .bind(scope)
        .bind(user.as_str())
        .bind(now.as_micros())
        .execute(&mut *tx)
        .await?;
        self.append_audit_tx(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn create_mfa_challenge(
        &self,
        c: &MfaChallengeRecord,
        audit: &[NewAuditEvent],
    ) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM mfa_challenges WHERE expires_at < $1")
            .bind(c.created_at - 86_400_000_000)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO mfa_challenges (token_hash, user_id, tenant_id, created_at, \
             expires_at, used_at, failures, ip, user_agent) \
             VALUES ($1, $2, $3, $4, $5, NULL, 0, $6, $7)",
        )
        .bind(&c.token_hash)
        .bind(&c.user_id)
        .bind(c.tenant_id.as_deref())
        .bind(c.created_at)
        .bind(c.expires_at)
        .bind(c.ip.as_deref())
        .bind(c.user_agent.as_deref())
        .execute(&mut *tx)
        .await?;
        self.append_audit_tx(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn mfa_challenge(&self, token_hash: &str) -> StoreResult<Option<MfaChallengeRecord>> {
        Ok(sqlx::query_as(
            "SELECT token_hash, user_id, tenant_id, created_at, expires_at, used_at, \
                    failures, ip, user_agent \
             FROM mfa_challenges WHERE token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(self.pool())
        .await?)
    }

    async fn consume_mfa_challenge(
        &self,
        token_hash: &str,
        now: Timestamp,
        max_failures: i64,
    ) -> StoreResult<bool> {
        let mut tx = self.begin_write().await?;
        let n = sqlx::query(
            "UPDATE mfa_challenges SET used_at = $2 WHERE token_hash = $1 \
             AND used_at IS NULL AND expires_at > $2 AND failures < $3",
        )
        .bind(token_hash)
        .bind(now.as_micros())
        .bind(max_failures)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(n == 1)
    }

    async fn count_mfa_attempt(
        &self,
        token_hash: &str,
        now: Timestamp,
        max_attempts: i64,
    ) -> StoreResult<bool> {
        let mut tx = self.begin_write().await?;
        let n = sqlx::query(
            "UPDATE mfa_challenges SET failures = failures + 1 WHERE token_hash = $1 \
             AND used_at IS NULL AND expires_at > $2 AND failures < $3",
        )
        .bind(token_hash)
        .bind(now.as_micros())
        .bind(max_attempts)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(n == 1)
    }
}
