//! Storage of account security: tenants' security policies, security events (audit records
//! with a type), the sessions a user can see and end, step-up times, sign-in throttling and
//! password history. Implemented once for both backends (any [`SqlStore`]).

use async_trait::async_trait;

use super::audit::AuditRow;
use super::backend::{Backend, Paged, RowsAffected, SqlStore};
use super::{Page, StoreResult};
use crate::clock::Timestamp;
use crate::domain::audit::{AuditRecord, NewAuditEvent};
use crate::ids::{SessionId, TenantId, UserId};

/// A session as its owner sees it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SessionRecord {
    pub id: String,
    pub tenant_id: Option<String>,
    pub user_id: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
    pub revoked_reason: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub last_used_at: Option<i64>,
    pub authenticated_at: Option<i64>,
}

/// Failed sign-ins counted under one key.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ThrottleRecord {
    pub key: String,
    pub tenant_id: Option<String>,
    pub failures: i64,
    pub window_started_at: i64,
    /// When the last guess was counted (the column predates counting before the check).
    pub last_failed_at: i64,
    pub locked_until: Option<i64>,
    /// No guess is checked before this time (the progressive delay).
    pub next_attempt_at: Option<i64>,
}

/// How a failure is counted under a key.
#[derive(Debug, Clone, Copy)]
pub struct FailureRule {
    /// Failures older than this (since the first of the run) start a new count.
    pub window_seconds: i64,
    /// The count at which the key locks (and the count restarts).
    pub threshold: i64,
    pub lock_seconds: i64,
}

/// One key a credential guess is counted under, and how.
#[derive(Debug, Clone)]
pub struct GuessSlot {
    pub key: String,
    /// The threshold is the number of guesses a run may take; the one that takes the last
    /// locks the key for `lock_seconds` (a right guess gives its count back, and the lock).
    pub rule: FailureRule,
    /// Apply the progressive delay (`domain::security::progressive_delay_seconds`) after each
    /// guess: account keys do, address keys do not.
    pub progressive: bool,
}

/// What counting one guess did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuessReservation {
    /// Counted under every slot. `locked[i]`: this guess took slot i's last one and locked it.
    Admitted { locked: Vec<bool> },
    /// Counted nowhere, so nothing may be checked: `key` is locked, inside its delay, or out of
    /// guesses (its row as it stands).
    Refused(ThrottleRecord),
}

/// A live session of a tenant, with what the staff allow-list needs to judge it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SessionAddress {
    pub id: String,
    pub user_id: String,
    /// The user's roles (comma-separated, as stored).
    pub roles: String,
    /// The address it was last used from (the sign-in address until it is used).
    pub last_ip: Option<String>,
}

/// The SQL that counts one guess under one key (see [`SecurityStore::reserve_guess`]): a single
/// conditional upsert, so the decision and the count are one atomic step on both backends.
/// Parameters: $1 key, $2 tenant, $3 now, $4 start of the window (now - window), $5 threshold,
/// $6 lock end, $7 progressive (1/0), $8 lock of a first guess (threshold 1), $9 delay end of
/// a first guess. A row comes back only when the guess was counted.
static RESERVE_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    use crate::domain::security::{PROGRESSIVE_DELAY_SATURATES_AT, progressive_delay_seconds};
    const LOCKED: &str =
        "(login_throttle.locked_until IS NOT NULL AND login_throttle.locked_until > $3)";
    const WAITING: &str =
        "(login_throttle.next_attempt_at IS NOT NULL AND login_throttle.next_attempt_at > $3)";
    // Only read when not locked: a lock that ended, or a window that passed, starts a new run.
    const RESTART: &str =
        "(login_throttle.locked_until IS NOT NULL OR login_throttle.window_started_at < $4)";
    let n = format!("(CASE WHEN {RESTART} THEN 1 ELSE login_throttle.failures + 1 END)");
    let mut delay = format!("(CASE {n}");
    for g in 0..PROGRESSIVE_DELAY_SATURATES_AT {
        delay.push_str(&format!(
            " WHEN {g} THEN {}",
            progressive_delay_seconds(g) * 1_000_000
        ));
    }
    delay.push_str(&format!(
        " ELSE {} END)",
        progressive_delay_seconds(PROGRESSIVE_DELAY_SATURATES_AT) * 1_000_000
    ));
    format!(
        "INSERT INTO login_throttle (key, tenant_id, failures, window_started_at, last_failed_at, \
         locked_until, next_attempt_at) VALUES ($1, $2, 1, $3, $3, $8, $9) \
         ON CONFLICT (key) DO UPDATE SET \
           failures = {n}, \
           window_started_at = CASE WHEN {RESTART} THEN $3 ELSE login_throttle.window_started_at END, \
           last_failed_at = $3, \
           locked_until = CASE WHEN {n} >= $5 THEN $6 ELSE NULL END, \
           next_attempt_at = CASE WHEN $7 = 1 THEN $3 + {delay} ELSE NULL END \
         WHERE NOT {LOCKED} AND NOT {WAITING} AND ({RESTART} OR login_throttle.failures < $5) \
         RETURNING locked_until"
    )
});

/// The reservation statement (for the store implementations).
pub(crate) fn reserve_sql() -> &'static str {
    RESERVE_SQL.as_str()
}

/// Filters of `GET /v1/security-events`.
#[derive(Debug, Clone, Default)]
pub struct SecurityEventFilter {
    /// Event types (empty: all).
    pub types: Vec<String>,
    pub actor_id: Option<String>,
    pub ip: Option<String>,
    pub occurred_after: Option<Timestamp>,
    pub occurred_before: Option<Timestamp>,
}

/// A password change: the new hash replaces the current one, which joins the history. `Debug`
/// omits the hash.
#[derive(Clone)]
pub struct PasswordChange<'a> {
    pub tenant: Option<&'a TenantId>,
    pub user: &'a UserId,
    pub new_hash: String,
    /// How many previous hashes to keep.
    pub keep_history: u32,
    /// The session that stays signed in (a change from the account page); `None` ends all.
    pub keep_session: Option<&'a SessionId>,
    pub revoke_reason: &'a str,
    pub now: Timestamp,
    /// A password reset: the id of the reset token this change spends, in the same
    /// transaction (the change does not happen unless the token is still live and unspent).
    pub spend_reset_token: Option<&'a str>,
}

impl std::fmt::Debug for PasswordChange<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordChange")
            .field("tenant", &self.tenant)
            .field("user", &self.user)
            .field("keep_session", &self.keep_session)
            .field("revoke_reason", &self.revoke_reason)
            .finish_non_exhaustive()
    }
}

#[async_trait]
#[allow(clippy::too_many_arguments)]
pub trait SecurityStore: Send + Sync {
    /// The tenant's stored policy document, if it ever set one.
    async fn security_policy(&self, tenant: &TenantId) -> StoreResult<Option<String>>;
    /// Saves the policy document and, in the same transaction, rewrites the tenant's rows of
    /// the CORS look-up table from the document's `cors_allowed_origins`.
    async fn put_security_policy(
        &self,
        tenant: &TenantId,
        policy_json: &str,
        updated_by: &str,
        now: Timestamp,
        audit: &[NewAuditEvent],
    ) -> StoreResult<()>;
    /// Whether `origin` is on any tenant's CORS list (a preflight carries no credential).
    async fn cors_origin_known(&self, origin: &str) -> StoreResult<bool>;
    /// Security events of a chain, newest first.
    async fn list_security_events(
        &self,
        chain: &str,
        filter: &SecurityEventFilter,
        page: &Page,
    ) -> StoreResult<Vec<AuditRecord>>;

    /// A user's sessions that have not ended (not revoked, not past their absolute expiry),
    /// newest first.
    async fn list_user_sessions(
        &self,
        tenant: Option<&TenantId>,
        user: &UserId,
        now: Timestamp,
        page: &Page,
    ) -> StoreResult<Vec<SessionRecord>>;
    /// Revokes the user's live sessions: `only` one of them, or all but `except`. Returns how
    /// many were revoked.
    async fn revoke_user_sessions(
        &self,
        tenant: Option<&TenantId>,
        user: &UserId,
        only: Option<&SessionId>,
        except: Option<&SessionId>,
        reason: &str,
        now: Timestamp,
        audit: &[NewAuditEvent],
    ) -> StoreResult<u64>;
    /// Records use of a session from `ip`, at most once per `min_interval_seconds` unless the
    /// address changed (a conditional update, so busy sessions do not write on every request).
    async fn touch_session(
        &self,
        id: &SessionId,
        now: Timestamp,
        min_interval_seconds: i64,
        ip: Option<&str>,
    ) -> StoreResult<()>;
    /// The tenant's live sessions (not revoked, not expired) with their users' roles and last
    /// addresses.
    async fn live_session_addresses(
        &self,
        tenant: &TenantId,
        now: Timestamp,
    ) -> StoreResult<Vec<SessionAddress>>;
    /// Revokes the tenant's live sessions among `ids`, with `audit`, in one transaction.
    /// Returns how many were revoked.
    async fn revoke_tenant_sessions(
        &self,
        tenant: &TenantId,
        ids: &[String],
        reason: &str,
        now: Timestamp,
        audit: &[NewAuditEvent],
    ) -> StoreResult<u64>;
    /// The session a refresh token belongs to, without spending it (the caller checks what
    /// the session may do before the token is spent).
    async fn refresh_token_session(&self, token_hash: &str) -> StoreResult<Option<String>>;
    /// Records a fresh authentication of a live session (step-up).
    async fn set_session_authenticated(
        &self,
        id: &SessionId,
        now: Timestamp,
        audit: &[NewAuditEvent],
    ) -> StoreResult<bool>;

    /// The throttle rows of `keys` that exist.
    async fn login_throttle(&self, keys: &[String]) -> StoreResult<Vec<ThrottleRecord>>;
    /// Counts one credential guess under every slot BEFORE it is checked, in one transaction:
    /// under each key (in key order) one conditional upsert counts it unless the key is locked,
    /// inside its progressive delay, or has no guess left in its run; the guess that takes the
    /// last one locks the key at once. If any key refuses, nothing is counted anywhere. Of any
    /// number of concurrent callers, on any number of instances, at most `threshold` per run
    /// are admitted.
    async fn reserve_guess(
        &self,
        tenant: Option<&TenantId>,
        slots: &[GuessSlot],
        now: Timestamp,
    ) -> StoreResult<GuessReservation>;
    /// Settles an admitted, right guess in one transaction: the runs of `clear` end (their rows
    /// go), and under each of `refund` the guess is given back: one fewer counted, no delay,
    /// and no lock if the count is below the threshold again.
    async fn settle_guess(&self, clear: &[String], refund: &[GuessSlot]) -> StoreResult<()>;
    /// Forgets the failures under `key` (a successful sign-in, or a manager's unlock).
    /// Returns whether there were any.
    async fn clear_login_throttle(&self, key: &str, audit: &[NewAuditEvent]) -> StoreResult<bool>;

    /// The user's previous password hashes, newest first.
    async fn password_history(&self, user: &UserId, limit: u32) -> StoreResult<Vec<String>>;
    /// Replaces the password (the old hash joins the history, trimmed to `keep_history`) and
    /// revokes the user's sessions but `keep_session` and all the user's API tokens, in one
    /// transaction with `audit`.
    /// `false` if there is no such user in that scope (or the reset token it spends is not live).
    async fn set_user_password(
        &self,
        change: &PasswordChange<'_>,
        audit: &[NewAuditEvent],
    ) -> StoreResult<bool>;
}

#[async_trait]
#[allow(clippy::too_many_arguments)]
impl<S: SqlStore<Db = B>, B: Backend> SecurityStore for S {
    async fn security_policy(&self, tenant: &TenantId) -> StoreResult<Option<String>> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT policy FROM tenant_security WHERE tenant_id = $1")
                .bind(tenant.as_str())
                .fetch_optional(self.pool())
                .await?;
        Ok(row.map(|r| r.0))
    }

    async fn put_security_policy(
        &self,
        tenant: &TenantId,
        policy_json: &str,
        updated_by: &str,
        now: Timestamp,
        audit: &[NewAuditEvent],
    ) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO tenant_security (tenant_id, policy, updated_at, updated_by) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (tenant_id) DO UPDATE SET \
             policy = excluded.policy, updated_at = excluded.updated_at, \
             updated_by = excluded.updated_by",
        )
        .bind(tenant.as_str())
        .bind(policy_json)
        .bind(now.as_micros())
        .bind(updated_by)
        .execute(&mut *tx)
        .await?;
        // The look-up table is derived from the document (a document that does not
        // parse yields no origins, as `SecurityPolicy::from_storage` would).
        let origins = serde_json::from_str::<crate::domain::security::SecurityPolicy>(policy_json)
            .map(|p| p.cors_allowed_origins)
            .unwrap_or_default();
        sqlx::query("DELETE FROM tenant_cors_origins WHERE tenant_id = $1")
            .bind(tenant.as_str())
            .execute(&mut *tx)
            .await?;
        for origin in &origins {
            sqlx::query(
                "INSERT INTO tenant_cors_origins (tenant_id, origin) VALUES ($1, $2) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(tenant.as_str())
            .bind(origin.as_str())
            .execute(&mut *tx)
            .await?;
        }
        self.append_audit_tx(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn cors_origin_known(&self, origin: &str) -> StoreResult<bool> {
        let row: Option<(i32,)> =
            sqlx::query_as("SELECT 1 FROM tenant_cors_origins WHERE origin = $1 LIMIT 1")
                .bind(origin)
                .fetch_optional(self.pool())
                .await?;
        Ok(row.is_some())
    }

    async fn list_security_events(
        &self,
        chain: &str,
        f: &SecurityEventFilter,
        page: &Page,
    ) -> StoreResult<Vec<AuditRecord>> {
        let mut qb = sqlx::QueryBuilder::<B>::new("SELECT * FROM audit_events WHERE chain = ");
        qb.push_bind(chain.to_owned());
        qb.push(" AND security_event IS NOT NULL");
        if !f.types.is_empty() {
            qb.push(" AND security_event IN (");
            let mut sep = qb.separated(", ");
            for t in &f.types {
                sep.push_bind(t.clone());
            }
            qb.push(")");
        }
        if let Some(a) = &f.actor_id {
            qb.push(" AND actor_id = ").push_bind(a.clone());
        }
        if let Some(ip) = &f.ip {
            qb.push(" AND ip = ").push_bind(ip.clone());
        }
        if let Some(t) = f.occurred_after {
            qb.push(" AND occurred_at >= ").push_bind(t.as_micros());
        }
        if let Some(t) = f.occurred_before {
            qb.push(" AND occurred_at < ").push_bind(t.as_micros());
        }
        if let Some(after) = &page.starting_after {
            qb.push(" AND seq < (SELECT c.seq FROM audit_events c WHERE c.chain = ")
                .push_bind(chain.to_owned())
                .push(" AND c.id = ")
                .push_bind(after.clone())
                .push(")");
        }
        qb.push(" ORDER BY seq DESC LIMIT ")
            .push_bind(page.fetch_limit());
        let rows: Vec<AuditRow> = qb.build_query_as().fetch_all(self.pool()).await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    async fn list_user_sessions(
        &self,
        tenant: Option<&TenantId>,
        user: &UserId,
        now: Timestamp,
        page: &Page,
    ) -> StoreResult<Vec<SessionRecord>> {
        Ok(sqlx::query_as(
            "SELECT id, tenant_id, user_id, created_at, expires_at, revoked_at, revoked_reason, \
                    ip, user_agent, last_used_at, authenticated_at \
             FROM sessions WHERE COALESCE(tenant_id, '') = $1 AND user_id = $2 \
             AND revoked_at IS NULL AND expires_at > $3 \
             AND ($4 IS NULL OR id < $4) ORDER BY id DESC LIMIT $5",
        )
        .bind(tenant.map_or("", |t| t.as_str()))
        .bind(user.as_str())
        .bind(now.as_micros())
        .page(page)
        .fetch_all(self.pool())
        .await?)
    }

    async fn revoke_user_sessions(
        &self,
        tenant: Option<&TenantId>,
        user: &UserId,
        only: Option<&SessionId>,
        except: Option<&SessionId>,
        reason: &str,
        now: Timestamp,
        audit: &[NewAuditEvent],
    ) -> StoreResult<u64> {
        let mut tx = self.begin_write().await?;
        let n = sqlx::query(
            "UPDATE sessions SET revoked_at = $3, revoked_reason = $4 \
             WHERE COALESCE(tenant_id, '') = $1 AND user_id = $2 AND revoked_at IS NULL \
             AND ($5 IS NULL OR id = $5) AND ($6 IS NULL OR id <> $6)",
        )
        .bind(tenant.map_or("", |t| t.as_str()))
        .bind(user.as_str())
        .bind(now.as_micros())
        .bind(reason)
        .bind(only.map(|s| s.as_str()))
        .bind(except.map(|s| s.as_str()))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        self.append_audit_tx(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(n)
    }

    async fn touch_session(
        &self,
        id: &SessionId,
        now: Timestamp,
        min_interval_seconds: i64,
        ip: Option<&str>,
    ) -> StoreResult<()> {
        let stale = now.plus_seconds(-min_interval_seconds).as_micros();
        // One conditional statement, outside any lock-taking transaction: a busy
        // session writes at most once per interval, or when its address changes.
        sqlx::query(
            "UPDATE sessions SET last_used_at = $2, last_ip = COALESCE($4, last_ip) \
             WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $3 \
             OR COALESCE(last_ip, ip, '') <> COALESCE($4, last_ip, ip, ''))",
        )
        .bind(id.as_str())
        .bind(now.as_micros())
        .bind(stale)
        .bind(ip)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn live_session_addresses(
        &self,
        tenant: &TenantId,
        now: Timestamp,
    ) -> StoreResult<Vec<SessionAddress>> {
        Ok(sqlx::query_as(
            "SELECT s.id, s.user_id, u.roles, COALESCE(s.last_ip, s.ip) AS last_ip \
             FROM sessions s JOIN users u ON u.id = s.user_id \
             WHERE s.tenant_id = $1 AND s.revoked_at IS NULL AND s.expires_at > $2",
        )
        .bind(tenant.as_str())
        .bind(now.as_micros())
        .fetch_all(self.pool())
        .await?)
    }

    async fn revoke_tenant_sessions(
        &self,
        tenant: &TenantId,
        ids: &[String],
        reason: &str,
        now: Timestamp,
        audit: &[NewAuditEvent],
    ) -> StoreResult<u64> {
        let mut tx = self.begin_write().await?;
        let mut n = 0;
        for id in ids {
            n += sqlx::query(
                "UPDATE sessions SET revoked_at = $3, revoked_reason = $4 \
                 WHERE tenant_id = $1 AND id = $2 AND revoked_at IS NULL",
            )
            .bind(tenant.as_str())
            .bind(id)
            .bind(now.as_micros())
            .bind(reason)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        self.append_audit_tx(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(n)
    }

    async fn refresh_token_session(&self, token_hash: &str) -> StoreResult<Option<String>> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT session_id FROM refresh_tokens WHERE token_hash = $1")
                .bind(token_hash)
                .fetch_optional(self.pool())
                .await?;
        Ok(row.map(|r| r.0))
    }

    async fn set_session_authenticated(
        &self,
        id: &SessionId,
        now: Timestamp,
        audit: &[NewAuditEvent],
    ) -> StoreResult<bool> {
        let mut tx = self.begin_write().await?;
        let n = sqlx::query(
            "UPDATE sessions SET authenticated_at = $2, last_used_at = $2 \
             WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind(id.as_str())
        .bind(now.as_micros())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        self.append_audit_tx(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(n == 1)
    }

    async fn login_throttle(&self, keys: &[String]) -> StoreResult<Vec<ThrottleRecord>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut qb = sqlx::QueryBuilder::<B>::new("SELECT * FROM login_throttle WHERE key IN (");
        let mut sep = qb.separated(", ");
        for k in keys {
            sep.push_bind(k.clone());
        }
        qb.push(")");
        Ok(qb.build_query_as().fetch_all(self.pool()).await?)
    }

    async fn reserve_guess(
        &self,
        tenant: Option<&TenantId>,
        slots: &[GuessSlot],
        now: Timestamp,
    ) -> StoreResult<GuessReservation> {
        use crate::domain::security::progressive_delay_seconds;
        // Keys in one order, so two reservations sharing keys never wait on each other
        // in a cycle (PostgreSQL row locks).
        let mut order: Vec<usize> = (0..slots.len()).collect();
        order.sort_by(|a, b| slots[*a].key.cmp(&slots[*b].key));
        let mut locked = vec![false; slots.len()];
        let mut tx = self.begin_write().await?;
        for i in order {
            let s = &slots[i];
            let lock_until = now.plus_seconds(s.rule.lock_seconds).as_micros();
            let first_delay = if s.progressive {
                Some(now.plus_seconds(progressive_delay_seconds(1)).as_micros())
            } else {
                None
            };
            let row: Option<(Option<i64>,)> = sqlx::query_as(reserve_sql())
                .bind(&s.key)
                .bind(tenant.map(|t| t.as_str()))
                .bind(now.as_micros())
                .bind(now.plus_seconds(-s.rule.window_seconds).as_micros())
                .bind(s.rule.threshold)
                .bind(lock_until)
                .bind(i64::from(s.progressive))
                .bind((s.rule.threshold <= 1).then_some(lock_until))
                .bind(first_delay)
                .fetch_optional(&mut *tx)
                .await?;
            match row {
                Some((l,)) => locked[i] = l.is_some(),
                None => {
                    let row: ThrottleRecord =
                        sqlx::query_as("SELECT * FROM login_throttle WHERE key = $1")
                            .bind(&s.key)
                            .fetch_one(&mut *tx)
                            .await?;
                    tx.rollback().await?;
                    let live = |t: Option<i64>| t.filter(|t| *t > now.as_micros());
                    if live(row.locked_until).is_none() && live(row.next_attempt_at).is_none() {
                        // Out of guesses but not locked: the threshold was lowered
                        // below the count. Lock now, so the run ends like any other.
                        sqlx::query(
                            "UPDATE login_throttle SET locked_until = $2 WHERE key = $1 \
                             AND (locked_until IS NULL OR locked_until <= $3)",
                        )
                        .bind(&s.key)
                        .bind(lock_until)
                        .bind(now.as_micros())
                        .execute(self.pool())
                        .await?;
                        return Ok(GuessReservation::Refused(ThrottleRecord {
                            locked_until: Some(lock_until),
                            ..row
                        }));
                    }
                    return Ok(GuessReservation::Refused(row));
                }
            }
        }
        tx.commit().await?;
        Ok(GuessReservation::Admitted { locked })
    }

    async fn settle_guess(&self, clear: &[String], refund: &[GuessSlot]) -> StoreResult<()> {
        if clear.is_empty() && refund.is_empty() {
            return Ok(());
        }
        // Keys in one order (see `reserve_guess`).
        let mut work: Vec<(&str, Option<i64>)> = clear
            .iter()
            .map(|k| (k.as_str(), None))
            .chain(
                refund
                    .iter()
                    .map(|s| (s.key.as_str(), Some(s.rule.threshold))),
            )
            .collect();
        work.sort_by(|a, b| a.0.cmp(b.0));
        let mut tx = self.begin_write().await?;
        for (key, refund_below) in work {
            match refund_below {
                None => {
                    sqlx::query("DELETE FROM login_throttle WHERE key = $1")
                        .bind(key)
                        .execute(&mut *tx)
                        .await?;
                }
                Some(threshold) => {
                    sqlx::query(
                        "UPDATE login_throttle SET failures = failures - 1, next_attempt_at = NULL, \
                         locked_until = CASE WHEN failures - 1 < $2 THEN NULL ELSE locked_until END \
                         WHERE key = $1 AND failures > 0",
                    )
                    .bind(key)
                    .bind(threshold)
                    .execute(&mut *tx)
                    .await?;
                }
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn clear_login_throttle(&self, key: &str, audit: &[NewAuditEvent]) -> StoreResult<bool> {
        let mut tx = self.begin_write().await?;
        let n = sqlx::query("DELETE FROM login_throttle WHERE key = $1")
            .bind(key)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        self.append_audit_tx(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(n > 0)
    }

    async fn password_history(&self, user: &UserId, limit: u32) -> StoreResult<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT password_hash FROM password_history WHERE user_id = $1 \
             ORDER BY created_at DESC, id DESC LIMIT $2",
        )
        .bind(user.as_str())
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    async fn set_user_password(
        &self,
        c: &PasswordChange<'_>,
        audit: &[NewAuditEvent],
    ) -> StoreResult<bool> {
        let scope = c.tenant.map_or("", |t| t.as_str());
        let mut tx = self.begin_write().await?;
        if let Some(token) = c.spend_reset_token {
            // Spent by a conditional update: of two concurrent resets, one changes
            // nothing.
            let spent = sqlx::query(
                "UPDATE password_reset_tokens SET used_at = $3 WHERE id = $1 AND user_id = $2 \
                 AND used_at IS NULL AND invalidated_at IS NULL AND expires_at > $3",
            )
            .bind(token)
            .bind(c.user.as_str())
            .bind(c.now.as_micros())
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if spent != 1 {
                return Ok(false);
            }
        }
        let old: Option<(String,)> = sqlx::query_as(
            "SELECT password_hash FROM users WHERE COALESCE(tenant_id, '') = $1 AND id = $2",
        )
        .bind(scope)
        .bind(c.user.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let Some((old,)) = old else {
            return Ok(false);
        };
        sqlx::query(
            "UPDATE users SET password_hash = $3, password_changed_at = $4, updated_at = $4 \
             WHERE COALESCE(tenant_id, '') = $1 AND id = $2",
        )
        .bind(scope)
        .bind(c.user.as_str())
        .bind(&c.new_hash)
        .bind(c.now.as_micros())
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO password_history (id, user_id, tenant_id, password_hash, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(c.user.as_str())
        .bind(c.tenant.map(|t| t.as_str()))
        .bind(old)
        .bind(c.now.as_micros())
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM password_history WHERE user_id = $1 AND id NOT IN \
             (SELECT id FROM password_history WHERE user_id = $1 \
              ORDER BY created_at DESC, id DESC LIMIT $2)",
        )
        .bind(c.user.as_str())
        .bind(i64::from(c.keep_history))
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE sessions SET revoked_at = $3, revoked_reason = $4 \
             WHERE COALESCE(tenant_id, '') = $1 AND user_id = $2 AND revoked_at IS NULL \
             AND ($5 IS NULL OR id <> $5)",
        )
        .bind(scope)
        .bind(c.user.as_str())
        .bind(c.now.as_micros())
        .bind(c.revoke_reason)
        .bind(c.keep_session.map(|s| s.as_str()))
        .execute(&mut *tx)
        .await?;
        // The user's API tokens end with the password (issue 13 item 17): whoever
        // learnt the old password may have minted one, and a reset is how an owner
        // takes an account back.
        sqlx::query(
            "UPDATE api_tokens SET revoked_at = $3, revoked_by = $4 \
             WHERE tenant_id = $1 AND user_id = $2 AND revoked_at IS NULL",
        )
        .bind(scope)
        .bind(c.user.as_str())
        .bind(c.now.as_micros())
        .bind(c.revoke_reason)
        .execute(&mut *tx)
        .await?;
        self.append_audit_tx(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(true)
    }
}
