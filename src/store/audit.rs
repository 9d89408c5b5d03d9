//! Storage of the audit trail: the one row type of `audit_events` ([`AuditRow`]), the append of
//! records to their hash chains inside the change's own transaction ([`append_tx`], which also
//! passes each record to the alert hook), and the seal of the next record of a chain.

use async_trait::async_trait;
use sqlx::Transaction;

use super::StoreResult;
use super::alerts::{AlertHook, on_record};
use super::backend::{Backend, Paged, SqlStore};
use super::posting::chunks_by_size;
use super::{AuditFilter, ChainHead, Page};
use crate::domain::audit::{AuditRecord, AuditSealer, GENESIS_HASH, NewAuditEvent};
use crate::ids::AuditEventId;

/// The columns of `audit_events`, in the order [`push_audit_values`] binds them.
pub(super) const AUDIT_COLUMNS: &str = "id, chain, seq, tenant_id, occurred_at, actor_type, \
     actor_id, action, target_type, target_id, outcome, reason, ip, request_id, prev_hash, hash, \
     security_event";

/// An audit row as selected: the one definition of an `audit_events` row.
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
    pub security_event: Option<String>,
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
            security_event: r.security_event,
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
        security_event: ev.security_event.map(|e| e.as_str().to_owned()),
    };
    r.hash = sealer.seal(&r);
    r
}

/// Splits `events` into runs of consecutive events of one chain: each run moves its chain's head
/// once.
pub(super) fn chain_runs(events: &[NewAuditEvent]) -> Vec<(String, &[NewAuditEvent])> {
    let mut runs = Vec::new();
    let mut start = 0;
    while start < events.len() {
        let chain = events[start].chain();
        let mut end = start + 1;
        while end < events.len() && events[end].chain() == chain {
            end += 1;
        }
        runs.push((chain, &events[start..end]));
        start = end;
    }
    runs
}

/// Estimated encoded size of a bound text value.
pub(super) fn text_len(s: &str) -> usize {
    s.len() + 8
}

pub(super) fn opt_len(s: Option<&str>) -> usize {
    s.map_or(4, text_len)
}

/// Estimated encoded size of a record's parameters.
fn record_len(r: &AuditRecord) -> usize {
    text_len(&r.id)
        + text_len(&r.chain)
        + opt_len(r.tenant_id.as_deref())
        + text_len(&r.actor_type)
        + opt_len(r.actor_id.as_deref())
        + text_len(&r.action)
        + opt_len(r.target_type.as_deref())
        + opt_len(r.target_id.as_deref())
        + text_len(&r.outcome)
        + opt_len(r.reason.as_deref())
        + opt_len(r.ip.as_deref())
        + opt_len(r.request_id.as_deref())
        + text_len(&r.prev_hash)
        + text_len(&r.hash)
        + 32
}

/// Appends `events` inside `tx`. The head row is bumped with an UPDATE first, which takes its
/// row lock (PostgreSQL) or the write lock (SQLite), so concurrent writers to one chain
/// serialise and the chain never forks. Each record passes the alert hook (`hook`), in its
/// transaction.
pub(super) async fn append_tx<B: Backend>(
    sealer: &AuditSealer,
    hook: &AlertHook,
    tx: &mut Transaction<'static, B>,
    events: &[NewAuditEvent],
) -> StoreResult<()> {
    // Events of one chain are appended as a run: the head is moved once by the whole run and
    // the records go in with multi-row INSERTs, so a batch of movements costs a handful of
    // statements, not four per record.
    for (chain, run) in chain_runs(events) {
        let n = i64::try_from(run.len()).unwrap_or(i64::MAX);
        sqlx::query(
            "INSERT INTO audit_heads (chain, seq, hash) VALUES ($1, 0, $2) \
             ON CONFLICT (chain) DO NOTHING",
        )
        .bind(&chain)
        .bind(GENESIS_HASH)
        .execute(&mut **tx)
        .await?;
        let mut head: (i64, String) = sqlx::query_as(
            "UPDATE audit_heads SET seq = seq + $2 WHERE chain = $1 RETURNING seq - $2, hash",
        )
        .bind(&chain)
        .bind(n)
        .fetch_one(&mut **tx)
        .await?;
        let mut records = Vec::with_capacity(run.len());
        for ev in run {
            let record = next_record(sealer, ev, head.clone());
            head = (record.seq, record.hash.clone());
            records.push(record);
        }
        sqlx::query("UPDATE audit_heads SET hash = $2 WHERE chain = $1")
            .bind(&chain)
            .bind(&head.1)
            .execute(&mut **tx)
            .await?;
        // 17 columns x 50 rows stays under every backend's bind-parameter limit.
        for chunk in chunks_by_size(&records, 50, B::MAX_MESSAGE, record_len) {
            let mut qb = sqlx::QueryBuilder::<B>::new("INSERT INTO audit_events (");
            qb.push(AUDIT_COLUMNS).push(") ");
            qb.push_values(chunk, |mut b, r| {
                b.push_bind(r.id.clone())
                    .push_bind(r.chain.clone())
                    .push_bind(r.seq)
                    .push_bind(r.tenant_id.clone())
                    .push_bind(r.occurred_at)
                    .push_bind(r.actor_type.clone())
                    .push_bind(r.actor_id.clone())
                    .push_bind(r.action.clone())
                    .push_bind(r.target_type.clone())
                    .push_bind(r.target_id.clone())
                    .push_bind(r.outcome.clone())
                    .push_bind(r.reason.clone())
                    .push_bind(r.ip.clone())
                    .push_bind(r.request_id.clone())
                    .push_bind(r.prev_hash.clone())
                    .push_bind(r.hash.clone())
                    .push_bind(r.security_event.clone());
            });
            qb.build().persistent(B::PERSIST).execute(&mut **tx).await?;
        }
        // The alert hook: every security event passes here, in its transaction.
        for alert in records.iter().filter_map(|r| on_record(hook, r)) {
            sqlx::query(
                "INSERT INTO security_alerts (id, audit_event_id, tenant_id, event_type, \
                 severity, payload, status, attempts, next_attempt_at, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, 'pending', 0, $7, $7)",
            )
            .bind(alert.id)
            .bind(alert.audit_event_id)
            .bind(alert.tenant_id)
            .bind(alert.event_type)
            .bind(alert.severity)
            .bind(alert.payload)
            .bind(alert.created_at)
            .execute(&mut **tx)
            .await?;
        }
    }
    Ok(())
}

/// The audit log.
#[async_trait]
pub trait AuditStore: Send + Sync {
    async fn append_audit(&self, event: &NewAuditEvent) -> StoreResult<()>;
    /// Appends several records in one transaction (e.g. one per customer of an unmasked list).
    async fn append_audits(&self, events: &[NewAuditEvent]) -> StoreResult<()>;
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

#[async_trait]
impl<S: SqlStore<Db = B>, B: Backend> AuditStore for S {
    async fn append_audit(&self, ev: &NewAuditEvent) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        self.append_audit_tx(&mut tx, std::slice::from_ref(ev))
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn append_audits(&self, events: &[NewAuditEvent]) -> StoreResult<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        self.append_audit_tx(&mut tx, events).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn list_audit(
        &self,
        chain: &str,
        f: &AuditFilter,
        page: &Page,
    ) -> StoreResult<Vec<crate::domain::audit::AuditRecord>> {
        let rows: Vec<AuditRow> = sqlx::query_as(
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
        .page(page)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    async fn audit_heads(&self) -> StoreResult<Vec<ChainHead>> {
        Ok(
            sqlx::query_as("SELECT chain, seq, hash FROM audit_heads ORDER BY chain")
                .fetch_all(self.pool())
                .await?,
        )
    }

    async fn audit_chain_after(
        &self,
        chain: &str,
        after_seq: i64,
        limit: i64,
    ) -> StoreResult<Vec<crate::domain::audit::AuditRecord>> {
        let rows: Vec<AuditRow> = sqlx::query_as(
            "SELECT * FROM audit_events WHERE chain = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(chain)
        .bind(after_seq)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }
}
