//! Storage side of retention: the checkpoints of pruned audit chains, where a chain may be
//! pruned up to, and the purge of everything past its retention period in one transaction.

use async_trait::async_trait;

use super::backend::{Backend, RowsAffected, SqlStore};
use super::*;
use crate::clock::Timestamp;

/// Retention.
#[async_trait]
pub trait RetentionStore: Send + Sync {
    /// Every chain's pruning checkpoint.
    async fn audit_checkpoints(&self) -> StoreResult<Vec<crate::domain::audit::AuditCheckpoint>>;
    /// The highest seq `p >= after_seq` such that every record of `chain` with
    /// `after_seq < seq <= p` occurred before `before`, and none of them that records a money
    /// movement or account change ([`crate::domain::processing::FINANCIAL_AUDIT_ACTIONS`])
    /// occurred at or after `financial_before` (`after_seq` when there is no such `p`).
    async fn audit_prune_point(
        &self,
        chain: &str,
        after_seq: i64,
        before: Timestamp,
        financial_before: Timestamp,
    ) -> StoreResult<i64>;
    /// Deletes what `plan` names in one transaction, with the records `audit` builds from the
    /// counts. An audit prune that would delete anything else than exactly its range of records
    /// older than `plan.audit_cutoff`, or whose checkpoint moved meanwhile, rolls everything back.
    async fn purge_expired(
        &self,
        plan: &RetentionPlan,
        audit: PurgeAudit<'_>,
    ) -> StoreResult<PurgeCounts>;
}

#[async_trait]
impl<S: SqlStore<Db = B>, B: Backend> RetentionStore for S {
    async fn audit_checkpoints(&self) -> StoreResult<Vec<crate::domain::audit::AuditCheckpoint>> {
        let rows: Vec<(String, i64, String, i64, String)> = sqlx::query_as(
            "SELECT chain, seq, hash, pruned_at, mac FROM audit_checkpoints ORDER BY chain",
        )
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(chain, seq, hash, pruned_at, mac)| crate::domain::audit::AuditCheckpoint {
                    chain,
                    seq,
                    hash,
                    pruned_at,
                    mac,
                },
            )
            .collect())
    }

    async fn audit_prune_point(
        &self,
        chain: &str,
        after_seq: i64,
        before: Timestamp,
        financial_before: Timestamp,
    ) -> StoreResult<i64> {
        // The newest unpruned record older than the cutoff, found through the
        // (chain, occurred_at) index among the old records only; then the first young
        // record below it, if clocks ever put one there, bounds the prefix. Both scan
        // only what is about to be pruned, not the year of records that stays.
        let (candidate,): (Option<i64>,) = sqlx::query_as(
            "SELECT MAX(seq) FROM audit_events WHERE chain = $1 AND seq > $2 AND occurred_at < $3",
        )
        .bind(chain)
        .bind(after_seq)
        .bind(before.as_micros())
        .fetch_one(self.pool())
        .await?;
        let Some(candidate) = candidate else {
            return Ok(after_seq);
        };
        let (young,): (Option<i64>,) = sqlx::query_as(
            "SELECT MIN(seq) FROM audit_events WHERE chain = $1 AND seq > $2 AND seq <= $3 AND occurred_at >= $4",
        )
        .bind(chain)
        .bind(after_seq)
        .bind(candidate)
        .bind(before.as_micros())
        .fetch_one(self.pool())
        .await?;
        let candidate = young.map_or(candidate, |y| y - 1).max(after_seq);
        // Financial records stay at least five years: the prefix stops before the
        // first one younger than that.
        let (financial,): (Option<i64>,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT MIN(seq) FROM audit_events WHERE chain = $1 AND seq > $2 AND seq <= $3 \
             AND occurred_at >= $4 AND action IN ({})",
            crate::store::financial_actions_sql()
        )))
        .bind(chain)
        .bind(after_seq)
        .bind(candidate)
        .bind(financial_before.as_micros())
        .fetch_one(self.pool())
        .await?;
        Ok(financial.map_or(candidate, |f| f - 1).max(after_seq))
    }

    async fn purge_expired(
        &self,
        plan: &RetentionPlan,
        audit: PurgeAudit<'_>,
    ) -> StoreResult<PurgeCounts> {
        let mut counts = PurgeCounts::default();
        let mut tx = self.begin_write().await?;
        // A session's refresh tokens go with it (spent ones included: while a session
        // lives they are what detects a replayed token).
        counts.refresh_tokens = sqlx::query(
            "DELETE FROM refresh_tokens WHERE session_id IN \
             (SELECT id FROM sessions WHERE expires_at < $1 OR (revoked_at IS NOT NULL AND revoked_at < $1))",
        )
        .bind(plan.sessions_ended_before.as_micros())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        counts.sessions = sqlx::query(
            "DELETE FROM sessions WHERE expires_at < $1 OR (revoked_at IS NOT NULL AND revoked_at < $1)",
        )
            .bind(plan.sessions_ended_before.as_micros())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        counts.idempotency_keys =
            sqlx::query("DELETE FROM idempotency_keys WHERE expires_at <= $1")
                .bind(plan.idempotency_expired_before.as_micros())
                .execute(&mut *tx)
                .await?
                .rows_affected();
        counts.reset_tokens =
            sqlx::query("DELETE FROM password_reset_tokens WHERE expires_at < $1")
                .bind(plan.reset_tokens_expired_before.as_micros())
                .execute(&mut *tx)
                .await?
                .rows_affected();
        counts.mail_messages = sqlx::query(
            "DELETE FROM mail_outbox WHERE status IN ('sent', 'failed') AND finished_at < $1",
        )
        .bind(plan.mail_finished_before.as_micros())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        counts.security_alerts = sqlx::query(
            "DELETE FROM security_alerts WHERE status IN ('delivered', 'failed') AND finished_at < $1",
        )
        .bind(plan.alerts_finished_before.as_micros())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        counts.login_throttle = sqlx::query(
            "DELETE FROM login_throttle WHERE last_failed_at < $1 \
             AND (locked_until IS NULL OR locked_until < $1)",
        )
        .bind(plan.throttle_quiet_before.as_micros())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        counts.ledger_counters = sqlx::query("DELETE FROM ledger_counters WHERE window_start < $1")
            .bind(plan.counters_started_before.as_micros())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        for prune in &plan.audit_prunes {
            let cp = &prune.checkpoint;
            let expected = u64::try_from(cp.seq - prune.from_seq).unwrap_or(0);
            if expected == 0 {
                continue;
            }
            // The new checkpoint must name the last pruned record as it is stored now.
            let last: Option<(String,)> =
                sqlx::query_as("SELECT hash FROM audit_events WHERE chain = $1 AND seq = $2")
                    .bind(&cp.chain)
                    .bind(cp.seq)
                    .fetch_optional(&mut *tx)
                    .await?;
            if last.map(|(h,)| h).as_deref() != Some(cp.hash.as_str()) {
                return Err(StoreError::Database(format!(
                    "audit chain {}: record {} changed since it was verified; nothing was purged",
                    cp.chain, cp.seq
                )));
            }
            // A money movement's record younger than five years is never deleted: it is
            // left out here, so the count below differs and the run is refused.
            let deleted = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM audit_events WHERE chain = $1 AND seq > $2 AND seq <= $3 AND occurred_at < $4 \
                 AND NOT (occurred_at >= $5 AND action IN ({}))",
                crate::store::financial_actions_sql()
            )))
            .bind(&cp.chain)
            .bind(prune.from_seq)
            .bind(cp.seq)
            .bind(plan.audit_cutoff.as_micros())
            .bind(plan.financial_audit_cutoff.as_micros())
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if deleted != expected {
                return Err(StoreError::Database(format!(
                    "audit chain {}: expected to prune {expected} records older than the cutoff, found {deleted}; nothing was purged",
                    cp.chain
                )));
            }
            let moved = if prune.from_seq == 0 {
                sqlx::query(
                    "INSERT INTO audit_checkpoints (chain, seq, hash, pruned_at, mac) VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(&cp.chain)
                .bind(cp.seq)
                .bind(&cp.hash)
                .bind(cp.pruned_at)
                .bind(&cp.mac)
                .execute(&mut *tx)
                .await?
                .rows_affected()
            } else {
                sqlx::query(
                    "UPDATE audit_checkpoints SET seq = $2, hash = $3, pruned_at = $4, mac = $5 WHERE chain = $1 AND seq = $6",
                )
                .bind(&cp.chain)
                .bind(cp.seq)
                .bind(&cp.hash)
                .bind(cp.pruned_at)
                .bind(&cp.mac)
                .bind(prune.from_seq)
                .execute(&mut *tx)
                .await?
                .rows_affected()
            };
            if moved != 1 {
                return Err(StoreError::Database(format!(
                    "audit chain {}: its checkpoint moved during the run; nothing was purged",
                    cp.chain
                )));
            }
            counts.audit_events += deleted;
            counts.audit_chains += 1;
        }
        let events = audit(&counts);
        self.append_audit_tx(&mut tx, &events).await?;
        tx.commit().await?;
        Ok(counts)
    }
}
