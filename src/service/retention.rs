//! Retention: the job that deletes personal data once its period is over, and the records of
//! processing that declare those periods.
//!
//! [`run_once`] purges, in one transaction, sessions that ended more than
//! `session_retention_days` ago with their refresh tokens, idempotency records expired more than
//! `idempotency_retention_hours` ago, and the oldest audit records of each chain once they are
//! older than the effective audit retention (never less than 12 months), but never past an
//! audit record of a money movement or account change younger than five years
//! ([`FINANCIAL_RETENTION_DAYS`](crate::domain::processing::FINANCIAL_RETENTION_DAYS)): a chain
//! is pruned only as a prefix, so such a record also keeps everything after it. An audit chain is
//! pruned only up to a record that verifies from the chain's current start, and its new start is
//! a checkpoint sealed with the audit key, so `kasho audit verify` keeps detecting tampering. A
//! run that deletes anything writes one `retention.purge` record in the platform chain with the
//! counts. `kasho serve` runs it every `retention_interval_seconds`; `kasho retention run` runs
//! it once.

use std::collections::BTreeMap;

use super::Core;
use crate::clock::Timestamp;
use crate::domain::audit::{
    ActorType, AuditCheckpoint, AuditSealer, ChainError, ChainVerifier, NewAuditEvent, Outcome,
};
use crate::domain::processing::{ProcessingRecord, REGISTRY, RetentionPolicy};
use crate::store::{AuditPrune, ChainHead, PurgeCounts, RetentionPlan, Store, StoreError};

const DAY: i64 = 86_400;

/// What one run did.
#[derive(Debug, Clone)]
pub struct RetentionReport {
    pub ran_at: Timestamp,
    pub counts: PurgeCounts,
    /// Sessions that ended before this were purged.
    pub sessions_cutoff: Timestamp,
    /// Idempotency records that expired at or before this were purged.
    pub idempotency_cutoff: Timestamp,
    /// Audit records older than this may be pruned (now minus the effective audit retention).
    pub audit_cutoff: Timestamp,
    /// The audit retention applied, in days (at least 366).
    pub audit_days: u32,
    /// Chains whose old records were kept because they do not verify: pruning them would hide
    /// the tampering.
    pub refused_chains: Vec<(String, ChainError)>,
    /// Password-reset tokens (digests) purged: those expired more than
    /// [`RESET_TOKEN_RETENTION_SECONDS`] ago, spent or not (also in `counts`).
    pub reset_tokens: Option<u64>,
    /// Reset tokens that expired before this were purged.
    pub reset_tokens_cutoff: Timestamp,
    /// Outbox messages sent or failed before this were purged.
    pub mail_cutoff: Timestamp,
    /// Security alerts delivered or failed before this were purged.
    pub alerts_cutoff: Timestamp,
}

/// How long an expired or spent reset token's digest is kept (to answer "my link did not
/// work" with the audit trail): one day after its expiry.
pub const RESET_TOKEN_RETENTION_SECONDS: i64 = DAY;
/// How long a delivered or failed outbox message (its sealed text already cleared) is kept.
pub const MAIL_RETENTION_SECONDS: i64 = 7 * DAY;
/// How long a delivered or failed security alert (its payload names an address) is kept in the
/// outbox; the event itself stays in the audit trail.
pub const ALERT_RETENTION_SECONDS: i64 = 30 * DAY;

/// How long a running total (`ledger_counters`: a customer's day or month in one currency) is
/// kept after its window started: limits read only today's and this month's, and monitoring's
/// windows are shorter than this.
pub const COUNTER_RETENTION_SECONDS: i64 = 100 * DAY;

/// The cut-off times of a run at `now`.
pub fn cutoffs(policy: &RetentionPolicy, now: Timestamp) -> (Timestamp, Timestamp, Timestamp) {
    let sessions = now.plus_seconds(-i64::from(policy.session_days) * DAY);
    let idempotency = now.plus_seconds(-i64::from(policy.idempotency_hours) * 3600);
    let audit = now.plus_seconds(-i64::from(policy.audit_days_effective()) * DAY);
    (sessions, idempotency, audit)
}

/// The compact, machine-readable summary stored as the `retention.purge` record's reason.
pub fn summary(counts: &PurgeCounts, refused_chains: usize) -> String {
    let mut s = format!(
        "sessions={},refresh_tokens={},idempotency_keys={},audit_events={},audit_chains={}",
        counts.sessions,
        counts.refresh_tokens,
        counts.idempotency_keys,
        counts.audit_events,
        counts.audit_chains
    );
    if counts.reset_tokens > 0 || counts.mail_messages > 0 {
        s.push_str(&format!(
            ",reset_tokens={},mail_messages={}",
            counts.reset_tokens, counts.mail_messages
        ));
    }
    if counts.security_alerts > 0 {
        s.push_str(&format!(",security_alerts={}", counts.security_alerts));
    }
    if counts.login_throttle > 0 {
        s.push_str(&format!(",login_throttle={}", counts.login_throttle));
    }
    if counts.ledger_counters > 0 {
        s.push_str(&format!(",ledger_counters={}", counts.ledger_counters));
    }
    if refused_chains > 0 {
        s.push_str(&format!(",refused_chains={refused_chains}"));
    }
    s
}

/// Runs the retention job once at `now` (the core's clock in the server; tests move it).
pub async fn run_once(core: &Core, now: Timestamp) -> Result<RetentionReport, StoreError> {
    let policy = core.settings.retention;
    let (sessions_cutoff, idempotency_cutoff, audit_cutoff) = cutoffs(&policy, now);
    let financial_audit_cutoff =
        now.plus_seconds(-i64::from(crate::domain::processing::FINANCIAL_RETENTION_DAYS) * DAY);
    let (audit_prunes, refused_chains) = plan_audit_prunes(
        core.store.as_ref(),
        &core.sealer,
        (audit_cutoff, financial_audit_cutoff),
        now,
    )
    .await?;
    for (chain, error) in &refused_chains {
        tracing::error!(
            security_event = "audit_chain_unverifiable",
            chain = %chain,
            error = %error,
            "audit chain fails verification; its old records are kept, not pruned"
        );
    }
    let reset_tokens_cutoff = now.plus_seconds(-RESET_TOKEN_RETENTION_SECONDS);
    let mail_cutoff = now.plus_seconds(-MAIL_RETENTION_SECONDS);
    let alerts_cutoff = now.plus_seconds(-ALERT_RETENTION_SECONDS);
    let plan = RetentionPlan {
        sessions_ended_before: sessions_cutoff,
        idempotency_expired_before: idempotency_cutoff,
        audit_cutoff,
        audit_prunes,
        reset_tokens_expired_before: reset_tokens_cutoff,
        mail_finished_before: mail_cutoff,
        alerts_finished_before: alerts_cutoff,
        throttle_quiet_before: now.plus_seconds(-86_400),
        counters_started_before: now.plus_seconds(-COUNTER_RETENTION_SECONDS),
        financial_audit_cutoff,
    };
    let refused = refused_chains.len();
    let record = move |counts: &PurgeCounts| -> Vec<NewAuditEvent> {
        if counts.total() == 0 && refused == 0 {
            return Vec::new();
        }
        vec![NewAuditEvent {
            tenant_id: None,
            occurred_at: now,
            actor_type: ActorType::System,
            actor_id: None,
            action: "retention.purge".into(),
            target_type: None,
            target_id: None,
            outcome: if refused == 0 {
                Outcome::Success
            } else {
                Outcome::Failure
            },
            reason: Some(summary(counts, refused)),
            ip: None,
            request_id: None,
            security_event: None,
        }]
    };
    let counts = core.store.purge_expired(&plan, &record).await?;
    if counts.total() > 0 {
        tracing::info!(
            sessions = counts.sessions,
            refresh_tokens = counts.refresh_tokens,
            idempotency_keys = counts.idempotency_keys,
            audit_events = counts.audit_events,
            audit_chains = counts.audit_chains,
            reset_tokens = counts.reset_tokens,
            mail_messages = counts.mail_messages,
            security_alerts = counts.security_alerts,
            "retention job purged expired records"
        );
    }
    Ok(RetentionReport {
        ran_at: now,
        counts,
        sessions_cutoff,
        idempotency_cutoff,
        audit_cutoff,
        audit_days: policy.audit_days_effective(),
        refused_chains,
        reset_tokens: Some(counts.reset_tokens),
        reset_tokens_cutoff,
        mail_cutoff,
        alerts_cutoff,
    })
}

/// For each chain: how far its records are old enough to prune, verified from the chain's
/// current start through the first record kept.
async fn plan_audit_prunes(
    store: &dyn Store,
    sealer: &AuditSealer,
    (cutoff, financial_cutoff): (Timestamp, Timestamp),
    now: Timestamp,
) -> Result<(Vec<AuditPrune>, Vec<(String, ChainError)>), StoreError> {
    const BATCH: i64 = 1000;
    let checkpoints: BTreeMap<String, AuditCheckpoint> = store
        .audit_checkpoints()
        .await?
        .into_iter()
        .map(|c| (c.chain.clone(), c))
        .collect();
    let mut prunes = Vec::new();
    let mut refused = Vec::new();
    for head in store.audit_heads().await? {
        let current = checkpoints.get(&head.chain);
        if let Some(cp) = current
            && !sealer.checkpoint_is_genuine(cp)
        {
            refused.push((
                head.chain.clone(),
                ChainError::CheckpointAltered { seq: cp.seq },
            ));
            continue;
        }
        let from = current.map_or(0, |c| c.seq);
        let up_to = store
            .audit_prune_point(&head.chain, from, cutoff, financial_cutoff)
            .await?;
        if up_to <= from {
            continue;
        }
        match verify_through(store, sealer, &head, current, up_to, BATCH).await? {
            Ok(hash) => prunes.push(AuditPrune {
                from_seq: from,
                checkpoint: AuditCheckpoint {
                    chain: head.chain.clone(),
                    seq: up_to,
                    mac: sealer.seal_checkpoint(&head.chain, up_to, &hash, now.as_micros()),
                    hash,
                    pruned_at: now.as_micros(),
                },
            }),
            Err(e) => refused.push((head.chain.clone(), e)),
        }
    }
    Ok((prunes, refused))
}

/// Verifies `head.chain` from its start (the checkpoint, or genesis) through record `up_to`
/// and the link to the record after it (or the head, when `up_to` is the last record).
/// Returns the hash of record `up_to`, the new checkpoint's hash.
async fn verify_through(
    store: &dyn Store,
    sealer: &AuditSealer,
    head: &ChainHead,
    start: Option<&AuditCheckpoint>,
    up_to: i64,
    batch: i64,
) -> Result<Result<String, ChainError>, StoreError> {
    let mut verifier = match start {
        Some(cp) => ChainVerifier::resume(sealer, cp.seq, &cp.hash),
        None => ChainVerifier::new(sealer),
    };
    let mut after = start.map_or(0, |c| c.seq);
    let mut cut: Option<String> = None;
    loop {
        let records = store.audit_chain_after(&head.chain, after, batch).await?;
        let Some(last) = records.last() else { break };
        after = last.seq;
        for r in &records {
            if let Err(e) = verifier.push(r) {
                return Ok(Err(e));
            }
            let (seq, hash) = verifier.position();
            if seq == up_to {
                cut = Some(hash.to_owned());
            } else if seq > up_to {
                // The first record kept links to the last one pruned: done.
                return Ok(cut.ok_or(ChainError::Gap {
                    id: r.id.clone(),
                    seq: r.seq,
                    expected_prev: up_to,
                }));
            }
        }
    }
    // Every record is pruned: the chain's head must then be the last one.
    match verifier.finish(head.seq, &head.hash) {
        Ok(_) => Ok(cut.ok_or(ChainError::Truncated {
            last_seq: after,
            head_seq: head.seq,
        })),
        Err(e) => Ok(Err(e)),
    }
}

/// The records of processing and the retention in force, as published.
#[derive(Debug, Clone)]
pub struct RecordsOfProcessing {
    pub records: &'static [ProcessingRecord],
    pub policy: RetentionPolicy,
    pub idempotency_ttl_seconds: i64,
}

pub fn records_of_processing(core: &Core) -> RecordsOfProcessing {
    RecordsOfProcessing {
        records: REGISTRY,
        policy: core.settings.retention,
        idempotency_ttl_seconds: core.settings.idempotency_ttl_seconds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cutoffs_follow_the_policy_and_the_audit_floor() {
        let now = Timestamp::from_unix_seconds(1_000 * DAY);
        let p = RetentionPolicy {
            session_days: 30,
            idempotency_hours: 2,
            audit_days: 1,
            interval_seconds: 3600,
        };
        let (s, i, a) = cutoffs(&p, now);
        assert_eq!(s, Timestamp::from_unix_seconds(970 * DAY));
        assert_eq!(i, Timestamp::from_unix_seconds(1_000 * DAY - 7200));
        // One configured day is raised to 366.
        assert_eq!(a, Timestamp::from_unix_seconds(634 * DAY));
    }

    #[test]
    fn summary_is_compact_and_names_refusals() {
        let c = PurgeCounts {
            sessions: 1,
            refresh_tokens: 2,
            idempotency_keys: 3,
            audit_events: 4,
            audit_chains: 1,
            ..Default::default()
        };
        assert_eq!(
            summary(&c, 0),
            "sessions=1,refresh_tokens=2,idempotency_keys=3,audit_events=4,audit_chains=1"
        );
        assert!(summary(&c, 2).ends_with(",refused_chains=2"));
        let m = PurgeCounts {
            reset_tokens: 5,
            mail_messages: 6,
            login_throttle: 0,
            ..c
        };
        assert!(summary(&m, 0).ends_with(",reset_tokens=5,mail_messages=6"));
    }
}
