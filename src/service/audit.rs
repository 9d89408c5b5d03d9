//! Writing audit records outside a business transaction ([`record`]), reading the audit log
//! and verifying its hash chains.

use super::{Core, Listed, Principal};
use crate::domain::audit::{
    AuditCheckpoint, AuditRecord, AuditSealer, ChainError, ChainVerifier, NewAuditEvent, chain_for,
};
use crate::error::AppResult;
use crate::store::{AuditFilter, ChainHead, Page, Store, StoreError};

/// Writes an audit record outside any business transaction (failures and refusals). A failure
/// to write is logged loudly; it must not turn a refusal into a success.
pub async fn record(core: &Core, ev: &NewAuditEvent) {
    if let Err(e) = core.store.append_audit(ev).await {
        // While storage is down every refusal fails to be recorded alike: limited.
        crate::error_limited!(e, action = %ev.action, "failed to write audit record");
    }
}

/// The caller's chain (its tenant's, or the platform's for platform admins), newest first.
pub async fn list(
    core: &Core,
    actor: &Principal,
    filter: &AuditFilter,
    page: &Page,
) -> AppResult<Listed<AuditRecord>> {
    let chain = chain_for(actor.tenant_id.as_ref());
    let rows = core.store.list_audit(&chain, filter, page).await?;
    Ok(Listed::from_rows(rows, page))
}

/// The first problem found, with the chain it is in.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("audit chain `{chain}`: {error}")]
    Broken { chain: String, error: ChainError },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Totals of a successful verification.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct VerifyReport {
    pub chains: u64,
    pub records: u64,
}

/// Walks every chain in `seq` order, from genesis or, for a pruned chain, from its sealed
/// checkpoint. `total` is told the number of records up front and `progress` is called after
/// each batch, for a progress bar.
pub async fn verify_all(
    store: &dyn Store,
    sealer: &AuditSealer,
    mut total: impl FnMut(u64),
    mut progress: impl FnMut(u64),
) -> Result<VerifyReport, VerifyError> {
    let heads = store.audit_heads().await?;
    let mut checkpoints: std::collections::BTreeMap<String, AuditCheckpoint> = store
        .audit_checkpoints()
        .await?
        .into_iter()
        .map(|c| (c.chain.clone(), c))
        .collect();
    total(
        heads
            .iter()
            .map(|h| {
                let start = checkpoints.get(&h.chain).map_or(0, |c| c.seq);
                u64::try_from(h.seq - start).unwrap_or(0)
            })
            .sum(),
    );
    let broken = |chain: &str, error| VerifyError::Broken {
        chain: chain.to_owned(),
        error,
    };
    let mut report = VerifyReport::default();
    for head in heads {
        let mut start = checkpoints.remove(&head.chain);
        let mut retried = false;
        loop {
            match verify_chain(store, sealer, &head, start.as_ref(), &mut progress).await? {
                Ok(n) => {
                    report.records += n;
                    break;
                }
                Err(error) => {
                    // A retention run that pruned this chain meanwhile moved its checkpoint:
                    // walk it again, once, from the new one.
                    let moved = store
                        .audit_checkpoints()
                        .await?
                        .into_iter()
                        .find(|c| c.chain == head.chain);
                    if !retried && moved != start {
                        start = moved;
                        retried = true;
                        continue;
                    }
                    return Err(broken(&head.chain, error));
                }
            }
        }
        report.chains += 1;
    }
    // A checkpoint left without its chain's head: the head row (and the chain) was removed.
    if let Some((chain, cp)) = checkpoints.into_iter().next() {
        return Err(broken(&chain, ChainError::HeadMissing { seq: cp.seq }));
    }
    Ok(report)
}

/// Walks one chain from `start` (a checkpoint, or genesis) to its head; the number of records.
async fn verify_chain(
    store: &dyn Store,
    sealer: &AuditSealer,
    head: &ChainHead,
    start: Option<&AuditCheckpoint>,
    progress: &mut impl FnMut(u64),
) -> Result<Result<u64, ChainError>, StoreError> {
    const BATCH: i64 = 1000;
    let mut verifier = match start {
        // A checkpoint only counts with its seal: a forged one would hide deleted records.
        Some(cp) if !sealer.checkpoint_is_genuine(cp) => {
            return Ok(Err(ChainError::CheckpointAltered { seq: cp.seq }));
        }
        Some(cp) => ChainVerifier::resume(sealer, cp.seq, &cp.hash),
        None => ChainVerifier::new(sealer),
    };
    let mut after = start.map_or(0, |c| c.seq);
    let mut records = 0;
    loop {
        let batch = store.audit_chain_after(&head.chain, after, BATCH).await?;
        let Some(last) = batch.last() else { break };
        after = last.seq;
        for r in &batch {
            if let Err(e) = verifier.push(r) {
                return Ok(Err(e));
            }
        }
        let n = u64::try_from(batch.len()).unwrap_or(0);
        records += n;
        progress(n);
    }
    Ok(verifier.finish(head.seq, &head.hash).map(|_| records))
}
