//! Reading the audit log and verifying its hash chains.

use super::{Core, Listed, Principal};
use crate::domain::audit::{AuditRecord, AuditSealer, ChainError, ChainVerifier, chain_for};
use crate::error::AppResult;
use crate::store::{AuditFilter, Page, Store, StoreError};

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

/// Walks every chain in `seq` order. `total` is told the number of records up front and
/// `progress` is called after each batch, for a progress bar.
pub async fn verify_all(
    store: &dyn Store,
    sealer: &AuditSealer,
    mut total: impl FnMut(u64),
    mut progress: impl FnMut(u64),
) -> Result<VerifyReport, VerifyError> {
    const BATCH: i64 = 1000;
    let heads = store.audit_heads().await?;
    total(
        heads
            .iter()
            .map(|h| u64::try_from(h.seq).unwrap_or(0))
            .sum(),
    );
    let mut report = VerifyReport::default();
    for head in heads {
        let mut verifier = ChainVerifier::new(sealer);
        let mut after = 0;
        loop {
            let batch = store.audit_chain_after(&head.chain, after, BATCH).await?;
            let Some(last) = batch.last() else { break };
            after = last.seq;
            for r in &batch {
                verifier.push(r).map_err(|error| VerifyError::Broken {
                    chain: head.chain.clone(),
                    error,
                })?;
            }
            let n = u64::try_from(batch.len()).unwrap_or(0);
            report.records += n;
            progress(n);
        }
        verifier
            .finish(head.seq, &head.hash)
            .map_err(|error| VerifyError::Broken {
                chain: head.chain.clone(),
                error,
            })?;
        report.chains += 1;
    }
    Ok(report)
}
