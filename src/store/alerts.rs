//! Storage of the security-alert outbox, and the hook every appended audit record passes.
//!
//! The hook ([`on_record`]) is called by the audit append of both backends for each record it
//! writes, inside the record's transaction: a security event at or above the configured
//! severity is logged at `warn` (target `kasho::alert`), counted, and, while a webhook is
//! configured, becomes an outbox row in the same transaction, so an event is never committed
//! without its alert. Delivery workers claim due alerts with a conditional update, so several
//! instances on one database never send an alert twice at once. Also: the small operational
//! queries readiness and metrics need (pool size, migrations applied).

use std::collections::BTreeSet;
use std::sync::OnceLock;

use async_trait::async_trait;

use super::backend::{Backend, SqlStore};
use super::outbox::{self, Delivery};
use super::{StoreError, StoreResult};
use crate::clock::Timestamp;
use crate::domain::audit::AuditRecord;
use crate::domain::security::{SecurityEvent, Severity};
use crate::ids::SecurityAlertId;

/// Which security events become alerts, and whether they go to the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlertRouting {
    /// Events at or above this severity are alerts (logged and counted).
    pub min_severity: Severity,
    /// A webhook is configured: alerts are also written to the outbox for delivery.
    pub outbox: bool,
}

impl Default for AlertRouting {
    fn default() -> Self {
        Self {
            min_severity: Severity::High,
            outbox: false,
        }
    }
}

/// The routing of one store, set once when the core is built (stores opened by tools keep the
/// default: high-severity events are logged, nothing is queued).
#[derive(Debug, Default)]
pub struct AlertHook(OnceLock<AlertRouting>);

impl AlertHook {
    /// Sets the routing; `false` if it was already set (the first setting stays).
    pub fn set(&self, routing: AlertRouting) -> bool {
        self.0.set(routing).is_ok()
    }

    pub fn routing(&self) -> AlertRouting {
        self.0.get().copied().unwrap_or_default()
    }
}

/// An outbox row to insert with its audit record.
#[derive(Debug, Clone)]
pub struct NewAlert {
    pub id: String,
    pub audit_event_id: String,
    pub tenant_id: Option<String>,
    pub event_type: &'static str,
    pub severity: &'static str,
    /// The webhook body (JSON), fixed now so that every attempt sends the same bytes.
    pub payload: String,
    pub created_at: i64,
}

/// The hook: called for each audit record as it is appended, inside its transaction. Returns the
/// outbox row to insert, if any.
pub fn on_record(hook: &AlertHook, record: &AuditRecord) -> Option<NewAlert> {
    let kind = SecurityEvent::parse(record.security_event.as_deref()?)?;
    crate::observability::security_event(kind);
    let routing = hook.routing();
    let severity = kind.severity();
    if severity < routing.min_severity {
        return None;
    }
    let id = SecurityAlertId::generate().to_string();
    crate::observability::security_alert(severity);
    // Type, severity and ids only: the record's reason and target stay in the audit trail.
    tracing::warn!(
        target: "kasho::alert",
        alert_id = %id,
        security_event = kind.as_str(),
        severity = severity.as_str(),
        audit_event_id = %record.id,
        tenant_id = record.tenant_id.as_deref(),
        "security alert"
    );
    if !routing.outbox {
        return None;
    }
    Some(NewAlert {
        payload: alert_payload(&id, kind, record),
        id,
        audit_event_id: record.id.clone(),
        tenant_id: record.tenant_id.clone(),
        event_type: kind.as_str(),
        severity: severity.as_str(),
        created_at: record.occurred_at,
    })
}

/// The webhook body of an alert: ids, type, severity, time, address, request id, and the
/// record's action, outcome and reason code. No emails, names or secrets are ever part of an
/// audit record's fields used here.
pub fn alert_payload(id: &str, kind: SecurityEvent, r: &AuditRecord) -> String {
    serde_json::json!({
        "id": id,
        "object": "security_alert",
        "type": kind.as_str(),
        "severity": kind.severity().as_str(),
        "occurred_at": Timestamp::from_micros(r.occurred_at).to_rfc3339(),
        "tenant_id": r.tenant_id,
        "actor_id": r.actor_id,
        "ip": r.ip,
        "request_id": r.request_id,
        "details": {
            "audit_event_id": r.id,
            "action": r.action,
            "outcome": r.outcome,
            "reason": r.reason,
            "target_type": r.target_type,
            "target_id": r.target_id,
        },
    })
    .to_string()
}

/// One outbox row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AlertRecord {
    pub id: String,
    pub audit_event_id: String,
    pub tenant_id: Option<String>,
    pub event_type: String,
    pub severity: String,
    pub payload: String,
    /// `pending`, `sending`, `delivered` or `failed`.
    pub status: String,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub lease_until: Option<i64>,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub finished_at: Option<i64>,
}

/// Database pool occupancy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    pub connections: u32,
    pub idle: u32,
}

#[async_trait]
pub trait AlertStore: Send + Sync {
    /// Sets which security events become alerts (once; later calls are ignored).
    fn set_alert_routing(&self, routing: AlertRouting);
    /// The routing in force.
    fn alert_routing(&self) -> AlertRouting;
    /// Claims up to `limit` alerts due at `now` (pending and due, or sending with an expired
    /// lease: a worker that died), counting one attempt each and leasing them until
    /// `lease_until`. A conditional update: concurrent workers never claim the same alert.
    async fn claim_alerts(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: i64,
    ) -> StoreResult<Vec<AlertRecord>>;
    /// Records how the attempt on a claimed alert ended. `false` if it was not claimed any more.
    async fn finish_alert(&self, id: &str, now: Timestamp, outcome: &Delivery)
    -> StoreResult<bool>;
    /// One alert (tests and operators).
    async fn security_alert(&self, id: &str) -> StoreResult<Option<AlertRecord>>;
    /// Every alert, oldest first (tests and operators).
    async fn security_alerts(&self, limit: i64) -> StoreResult<Vec<AlertRecord>>;
    /// Open and idle connections of the pool.
    fn pool_stats(&self) -> PoolStats;
    /// Whether every embedded migration is applied (a schema ahead of the binary is current).
    async fn migrations_current(&self) -> StoreResult<bool>;
}

#[async_trait]
impl<S: SqlStore<Db = B>, B: Backend> AlertStore for S {
    fn set_alert_routing(&self, routing: AlertRouting) {
        if !self.alert_hook().set(routing) {
            tracing::debug!("alert routing already set; keeping the first");
        }
    }

    fn alert_routing(&self) -> AlertRouting {
        self.alert_hook().routing()
    }

    async fn claim_alerts(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: i64,
    ) -> StoreResult<Vec<AlertRecord>> {
        outbox::claim(self, &outbox::ALERTS, now, lease_until, limit).await
    }

    async fn finish_alert(
        &self,
        id: &str,
        now: Timestamp,
        outcome: &Delivery,
    ) -> StoreResult<bool> {
        outbox::finish(self, &outbox::ALERTS, id, now, outcome).await
    }

    async fn security_alert(&self, id: &str) -> StoreResult<Option<AlertRecord>> {
        Ok(
            sqlx::query_as("SELECT * FROM security_alerts WHERE id = $1")
                .bind(id)
                .fetch_optional(self.pool())
                .await?,
        )
    }

    async fn security_alerts(&self, limit: i64) -> StoreResult<Vec<AlertRecord>> {
        Ok(
            sqlx::query_as("SELECT * FROM security_alerts ORDER BY id LIMIT $1")
                .bind(limit)
                .fetch_all(self.pool())
                .await?,
        )
    }

    fn pool_stats(&self) -> PoolStats {
        PoolStats {
            connections: self.pool().size(),
            idle: u32::try_from(self.pool().num_idle()).unwrap_or(u32::MAX),
        }
    }

    async fn migrations_current(&self) -> StoreResult<bool> {
        let migrator = self.migrator();
        let mut conn = self.pool().acquire().await?;
        let applied: BTreeSet<i64> =
            sqlx::migrate::Migrate::list_applied_migrations(&mut *conn, &migrator.table_name)
                .await
                .map_err(|e| StoreError::Database(e.to_string()))?
                .into_iter()
                .map(|m| m.version)
                .collect();
        let embedded: BTreeSet<i64> = migrator
            .iter()
            .filter(|m| m.migration_type.is_up_migration())
            .map(|m| m.version)
            .collect();
        // Every migration this binary needs is applied. A schema ahead of it (a newer instance
        // migrated first in a rolling deploy) keeps it ready: migrations are additive for one
        // release (expand, then contract), see ARCHITECTURE.md.
        Ok(embedded.is_subset(&applied))
    }
}
