//! The SQL shared by both backends. `impl_store!` expands the same method bodies for SQLite and
//! PostgreSQL: every statement uses `$n` placeholders and column types (TEXT, BIGINT) that mean
//! the same on both. Each backend type provides `pool`, `sealer`, `begin_write()` and
//! `run_migrations()`.

use crate::domain::audit::{AuditRecord, AuditSealer, NewAuditEvent};
use crate::ids::AuditEventId;

/// An audit row as selected.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct AuditRow {
    pub id: String,
    pub chain: String,
    pub seq: i64,
    pub tenant_id: Option<String>,
    pub occurred_at: i64,
    pub actor_type: String,
    pub actor_id: Option<String>,
    pub action: String,
    pub target_type: Option<String>,
    pub target_id: Option<String>,
    pub outcome: String,
    pub reason: Option<String>,
    pub ip: Option<String>,
    pub request_id: Option<String>,
    pub prev_hash: String,
    pub hash: String,
}

impl From<AuditRow> for AuditRecord {
    fn from(r: AuditRow) -> Self {
        AuditRecord {
            id: r.id,
            chain: r.chain,
            seq: r.seq,
            tenant_id: r.tenant_id,
            occurred_at: r.occurred_at,
            actor_type: r.actor_type,
            actor_id: r.actor_id,
            action: r.action,
            target_type: r.target_type,
            target_id: r.target_id,
            outcome: r.outcome,
            reason: r.reason,
            ip: r.ip,
            request_id: r.request_id,
            prev_hash: r.prev_hash,
            hash: r.hash,
        }
    }
}

/// Builds the next record of a chain from its head and seals it.
pub(super) fn next_record(
    sealer: &AuditSealer,
    ev: &NewAuditEvent,
    (prev_seq, prev_hash): (i64, String),
) -> AuditRecord {
    let mut r = AuditRecord {
        id: AuditEventId::generate().to_string(),
        chain: ev.chain(),
        seq: prev_seq + 1,
        tenant_id: ev.tenant_id.as_ref().map(|t| t.to_string()),
        occurred_at: ev.occurred_at.as_micros(),
        actor_type: ev.actor_type.as_str().to_owned(),
        actor_id: ev.actor_id.clone(),
        action: ev.action.clone(),
        target_type: ev.target_type.clone(),
        target_id: ev.target_id.clone(),
        outcome: ev.outcome.as_str().to_owned(),
        reason: ev.reason.clone(),
        ip: ev.ip.clone(),
        request_id: ev.request_id.clone(),
        prev_hash,
        hash: String::new(),
    };
    r.hash = sealer.seal(&r);
    r
}

macro_rules! impl_store {
    ($store:ty, $backend:literal) => {
        impl $store {
            /// Appends `events` inside `tx`. The head row is bumped with an UPDATE first, which
            /// takes its row lock (PostgreSQL) or the write lock (SQLite), so concurrent writers to
            /// one chain serialise and the chain never forks.
            async fn append_audit_tx(
                &self,
                tx: &mut sqlx::Transaction<'static, $crate::store::sql::Db<$store>>,
                events: &[$crate::domain::audit::NewAuditEvent],
            ) -> $crate::store::StoreResult<()> {
                for ev in events {
                    let chain = ev.chain();
                    sqlx::query(
                        "INSERT INTO audit_heads (chain, seq, hash) VALUES ($1, 0, $2) ON CONFLICT (chain) DO NOTHING",
                    )
                    .bind(&chain)
                    .bind($crate::domain::audit::GENESIS_HASH)
                    .execute(&mut **tx)
                    .await?;
                    let head: (i64, String) = sqlx::query_as(
                        "UPDATE audit_heads SET seq = seq + 1 WHERE chain = $1 RETURNING seq - 1, hash",
                    )
                    .bind(&chain)
                    .fetch_one(&mut **tx)
                    .await?;
                    let record = $crate::store::sql::next_record(&self.sealer, ev, head);
                    sqlx::query("UPDATE audit_heads SET hash = $2 WHERE chain = $1")
                        .bind(&chain)
                        .bind(&record.hash)
                        .execute(&mut **tx)
                        .await?;
                    sqlx::query(
                        "INSERT INTO audit_events (id, chain, seq, tenant_id, occurred_at, actor_type, actor_id, action, target_type, target_id, outcome, reason, ip, request_id, prev_hash, hash) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
                    )
                    .bind(&record.id)
                    .bind(&record.chain)
                    .bind(record.seq)
                    .bind(&record.tenant_id)
                    .bind(record.occurred_at)
                    .bind(&record.actor_type)
                    .bind(&record.actor_id)
                    .bind(&record.action)
                    .bind(&record.target_type)
                    .bind(&record.target_id)
                    .bind(&record.outcome)
                    .bind(&record.reason)
                    .bind(&record.ip)
                    .bind(&record.request_id)
                    .bind(&record.prev_hash)
                    .bind(&record.hash)
                    .execute(&mut **tx)
                    .await?;
                }
                Ok(())
            }

            async fn insert_user_tx(
                tx: &mut sqlx::Transaction<'static, $crate::store::sql::Db<$store>>,
                u: &$crate::store::NewUser,
            ) -> $crate::store::StoreResult<()> {
                sqlx::query(
                    "INSERT INTO users (id, tenant_id, email, password_hash, roles, status, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, 'active', $6, $6)",
                )
                .bind(u.id.as_str())
                .bind(u.tenant_id.as_ref().map(|t| t.as_str()))
                .bind(u.email.as_str())
                .bind(&u.password_hash)
                .bind($crate::domain::authz::roles_to_storage(&u.roles))
                .bind(u.created_at.as_micros())
                .execute(&mut **tx)
                .await?;
                Ok(())
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::Store for $store {
            fn backend(&self) -> &'static str {
                $backend
            }

            async fn migrate(&self) -> $crate::store::StoreResult<Vec<String>> {
                self.run_migrations().await
            }

            async fn ping(&self) -> $crate::store::StoreResult<()> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }

            async fn create_tenant(
                &self,
                t: &$crate::store::NewTenant,
                manager: &$crate::store::NewUser,
                audit: &[$crate::domain::audit::NewAuditEvent],
            ) -> $crate::store::StoreResult<()> {
                let mut tx = self.begin_write().await?;
                sqlx::query(
                    "INSERT INTO tenants (id, slug, name, currencies, status, access_token_ttl_seconds, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, 'active', $5, $6, $6)",
                )
                .bind(t.id.as_str())
                .bind(&t.slug)
                .bind(&t.name)
                .bind(&t.currencies)
                .bind(t.access_token_ttl_seconds)
                .bind(t.created_at.as_micros())
                .execute(&mut *tx)
                .await?;
                Self::insert_user_tx(&mut tx, manager).await?;
                self.append_audit_tx(&mut tx, audit).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn get_tenant(&self, id: &$crate::ids::TenantId) -> $crate::store::StoreResult<Option<$crate::store::TenantRecord>> {
                Ok(sqlx::query_as("SELECT * FROM tenants WHERE id = $1")
                    .bind(id.as_str())
                    .fetch_optional(&self.pool)
                    .await?)
            }

            async fn get_tenant_by_slug(&self, slug: &str) -> $crate::store::StoreResult<Option<$crate::store::TenantRecord>> {
                Ok(sqlx::query_as("SELECT * FROM tenants WHERE slug = $1")
                    .bind(slug)
                    .fetch_optional(&self.pool)
                    .await?)
            }

            async fn list_tenants(&self, page: &$crate::store::Page) -> $crate::store::StoreResult<Vec<$crate::store::TenantRecord>> {
                Ok(sqlx::query_as(
                    "SELECT * FROM tenants WHERE ($1 IS NULL OR id < $1) ORDER BY id DESC LIMIT $2",
                )
                .bind(page.starting_after.as_deref())
                .bind(i64::from(page.limit) + 1)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn set_tenant_status(
                &self,
                id: &$crate::ids::TenantId,
                status: &'static str,
                now: $crate::clock::Timestamp,
                audit: &[$crate::domain::audit::NewAuditEvent],
            ) -> $crate::store::StoreResult<Option<$crate::store::TenantRecord>> {
                let mut tx = self.begin_write().await?;
                let row: Option<$crate::store::TenantRecord> = sqlx::query_as(
                    "UPDATE tenants SET status = $2, updated_at = $3 WHERE id = $1 RETURNING *",
                )
                .bind(id.as_str())
                .bind(status)
                .bind(now.as_micros())
                .fetch_optional(&mut *tx)
                .await?;
                if row.is_none() {
                    return Ok(None);
                }
                if status == "suspended" {
                    sqlx::query(
                        "UPDATE sessions SET revoked_at = $2, revoked_reason = 'tenant_suspended' \
                         WHERE tenant_id = $1 AND revoked_at IS NULL",
                    )
                    .bind(id.as_str())
                    .bind(now.as_micros())
                    .execute(&mut *tx)
                    .await?;
                }
                self.append_audit_tx(&mut tx, audit).await?;
                tx.commit().await?;
                Ok(row)
            }

            async fn create_user(
                &self,
                u: &$crate::store::NewUser,
                audit: &[$crate::domain::audit::NewAuditEvent],
            ) -> $crate::store::StoreResult<()> {
                let mut tx = self.begin_write().await?;
                Self::insert_user_tx(&mut tx, u).await?;
                self.append_audit_tx(&mut tx, audit).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn get_user(
                &self,
                tenant: Option<&$crate::ids::TenantId>,
                id: &$crate::ids::UserId,
            ) -> $crate::store::StoreResult<Option<$crate::store::UserRecord>> {
                Ok(sqlx::query_as(
                    "SELECT * FROM users WHERE COALESCE(tenant_id, '') = $1 AND id = $2",
                )
                .bind(tenant.map_or("", |t| t.as_str()))
                .bind(id.as_str())
                .fetch_optional(&self.pool)
                .await?)
            }

            async fn find_user_by_email(
                &self,
                tenant: Option<&$crate::ids::TenantId>,
                email: &$crate::domain::values::Email,
            ) -> $crate::store::StoreResult<Option<$crate::store::UserRecord>> {
                Ok(sqlx::query_as(
                    "SELECT * FROM users WHERE COALESCE(tenant_id, '') = $1 AND email = $2",
                )
                .bind(tenant.map_or("", |t| t.as_str()))
                .bind(email.as_str())
                .fetch_optional(&self.pool)
                .await?)
            }

            async fn list_users(
                &self,
                tenant: &$crate::ids::TenantId,
                only: Option<&$crate::ids::UserId>,
                page: &$crate::store::Page,
            ) -> $crate::store::StoreResult<Vec<$crate::store::UserRecord>> {
                Ok(sqlx::query_as(
                    "SELECT * FROM users WHERE tenant_id = $1 AND ($2 IS NULL OR id = $2) \
                     AND ($3 IS NULL OR id < $3) ORDER BY id DESC LIMIT $4",
                )
                .bind(tenant.as_str())
                .bind(only.map(|u| u.as_str()))
                .bind(page.starting_after.as_deref())
                .bind(i64::from(page.limit) + 1)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn update_user(
                &self,
                tenant: &$crate::ids::TenantId,
                id: &$crate::ids::UserId,
                change: &$crate::store::UserChange,
                now: $crate::clock::Timestamp,
                audit: &[$crate::domain::audit::NewAuditEvent],
            ) -> $crate::store::StoreResult<Option<$crate::store::UserRecord>> {
                let mut tx = self.begin_write().await?;
                let row: Option<$crate::store::UserRecord> = match change {
                    $crate::store::UserChange::Status(status) => {
                        sqlx::query_as(
                            "UPDATE users SET status = $3, updated_at = $4 WHERE tenant_id = $1 AND id = $2 RETURNING *",
                        )
                        .bind(tenant.as_str())
                        .bind(id.as_str())
                        .bind(*status)
                        .bind(now.as_micros())
                        .fetch_optional(&mut *tx)
                        .await?
                    }
                    $crate::store::UserChange::Roles(roles) => {
                        sqlx::query_as(
                            "UPDATE users SET roles = $3, updated_at = $4 WHERE tenant_id = $1 AND id = $2 RETURNING *",
                        )
                        .bind(tenant.as_str())
                        .bind(id.as_str())
                        .bind($crate::domain::authz::roles_to_storage(roles))
                        .bind(now.as_micros())
                        .fetch_optional(&mut *tx)
                        .await?
                    }
                };
                if row.is_none() {
                    return Ok(None);
                }
                if matches!(change, $crate::store::UserChange::Status("disabled")) {
                    sqlx::query(
                        "UPDATE sessions SET revoked_at = $3, revoked_reason = 'user_disabled' \
                         WHERE tenant_id = $1 AND user_id = $2 AND revoked_at IS NULL",
                    )
                    .bind(tenant.as_str())
                    .bind(id.as_str())
                    .bind(now.as_micros())
                    .execute(&mut *tx)
                    .await?;
                }
                self.append_audit_tx(&mut tx, audit).await?;
                tx.commit().await?;
                Ok(row)
            }

            async fn create_session(
                &self,
                s: &$crate::store::NewSession,
                t: &$crate::store::NewRefreshToken,
                audit: &[$crate::domain::audit::NewAuditEvent],
            ) -> $crate::store::StoreResult<()> {
                let mut tx = self.begin_write().await?;
                sqlx::query(
                    "INSERT INTO sessions (id, tenant_id, user_id, created_at, expires_at, ip, user_agent) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
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
                Self::insert_refresh_tx(&mut tx, t).await?;
                self.append_audit_tx(&mut tx, audit).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn get_session(&self, id: &$crate::ids::SessionId) -> $crate::store::StoreResult<Option<$crate::store::SessionView>> {
                Ok(sqlx::query_as(
                    "SELECT s.id AS session_id, s.tenant_id, s.user_id, u.roles, u.status AS user_status, \
                            t.status AS tenant_status, t.access_token_ttl_seconds, s.expires_at, s.revoked_at \
                     FROM sessions s JOIN users u ON u.id = s.user_id \
                     LEFT JOIN tenants t ON t.id = s.tenant_id \
                     WHERE s.id = $1",
                )
                .bind(id.as_str())
                .fetch_optional(&self.pool)
                .await?)
            }

            async fn consume_refresh_token(
                &self,
                token_hash: &str,
                now: $crate::clock::Timestamp,
            ) -> $crate::store::StoreResult<$crate::store::ConsumeOutcome> {
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
                    Some((session_id, expires_at)) => $crate::store::ConsumeOutcome::Consumed { session_id, expires_at },
                    None => {
                        let used: Option<(String, Option<String>)> = sqlx::query_as(
                            "SELECT session_id, tenant_id FROM refresh_tokens WHERE token_hash = $1",
                        )
                        .bind(token_hash)
                        .fetch_optional(&mut *tx)
                        .await?;
                        match used {
                            Some((session_id, tenant_id)) => $crate::store::ConsumeOutcome::AlreadyUsed { session_id, tenant_id },
                            None => $crate::store::ConsumeOutcome::Unknown,
                        }
                    }
                };
                tx.commit().await?;
                Ok(outcome)
            }

            async fn add_refresh_token(
                &self,
                t: &$crate::store::NewRefreshToken,
                audit: &[$crate::domain::audit::NewAuditEvent],
            ) -> $crate::store::StoreResult<()> {
                let mut tx = self.begin_write().await?;
                Self::insert_refresh_tx(&mut tx, t).await?;
                self.append_audit_tx(&mut tx, audit).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn revoke_session(
                &self,
                id: &$crate::ids::SessionId,
                reason: &str,
                now: $crate::clock::Timestamp,
                audit: &[$crate::domain::audit::NewAuditEvent],
            ) -> $crate::store::StoreResult<bool> {
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

            async fn append_audit(&self, ev: &$crate::domain::audit::NewAuditEvent) -> $crate::store::StoreResult<()> {
                let mut tx = self.begin_write().await?;
                self.append_audit_tx(&mut tx, std::slice::from_ref(ev)).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn list_audit(
                &self,
                chain: &str,
                f: &$crate::store::AuditFilter,
                page: &$crate::store::Page,
            ) -> $crate::store::StoreResult<Vec<$crate::domain::audit::AuditRecord>> {
                let rows: Vec<$crate::store::sql::AuditRow> = sqlx::query_as(
                    "SELECT * FROM audit_events WHERE chain = $1 \
                     AND ($2 IS NULL OR actor_id = $2) AND ($3 IS NULL OR action = $3) \
                     AND ($4 IS NULL OR occurred_at >= $4) AND ($5 IS NULL OR occurred_at < $5) \
                     AND ($6 IS NULL OR seq < (SELECT c.seq FROM audit_events c WHERE c.chain = $1 AND c.id = $6)) \
                     ORDER BY seq DESC LIMIT $7",
                )
                .bind(chain)
                .bind(f.actor_id.as_deref())
                .bind(f.action.as_deref())
                .bind(f.occurred_after.map(|t| t.as_micros()))
                .bind(f.occurred_before.map(|t| t.as_micros()))
                .bind(page.starting_after.as_deref())
                .bind(i64::from(page.limit) + 1)
                .fetch_all(&self.pool)
                .await?;
                Ok(rows.into_iter().map(Into::into).collect())
            }

            async fn audit_heads(&self) -> $crate::store::StoreResult<Vec<$crate::store::ChainHead>> {
                Ok(sqlx::query_as("SELECT chain, seq, hash FROM audit_heads ORDER BY chain")
                    .fetch_all(&self.pool)
                    .await?)
            }

            async fn audit_chain_after(
                &self,
                chain: &str,
                after_seq: i64,
                limit: i64,
            ) -> $crate::store::StoreResult<Vec<$crate::domain::audit::AuditRecord>> {
                let rows: Vec<$crate::store::sql::AuditRow> = sqlx::query_as(
                    "SELECT * FROM audit_events WHERE chain = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                )
                .bind(chain)
                .bind(after_seq)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
                Ok(rows.into_iter().map(Into::into).collect())
            }
        }

        impl $store {
            async fn insert_refresh_tx(
                tx: &mut sqlx::Transaction<'static, $crate::store::sql::Db<$store>>,
                t: &$crate::store::NewRefreshToken,
            ) -> $crate::store::StoreResult<()> {
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
        }
    };
}

pub(super) use impl_store;

/// Maps a store type to its sqlx database.
pub(super) trait HasDb {
    type Db: sqlx::Database;
}

pub(super) type Db<S> = <S as HasDb>::Db;
