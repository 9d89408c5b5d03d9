//! Batches of up to 1,000 transfers, independent or atomic.

use super::*;

/// Most transfers in one batch request.
pub const MAX_BATCH_TRANSFERS: usize = 1000;

/// Each transfer of a batch: its outcome, or why it was refused.
pub type BatchItem = Result<MovementOutcome, MoveError>;

/// Posts up to [`MAX_BATCH_TRANSFERS`] transfers. Each item has its own idempotency key
/// (`<key>#<index>`) when the request has one. Without `atomic`, each transfer stands alone and
/// gets its own result. With `atomic`, all are posted in one transaction or none is; the result
/// says whether the batch committed.
pub async fn move_money_batch(
    core: &Core,
    meta: &RequestMeta,
    actor: &Principal,
    inputs: Vec<(TransferInput, Option<IdempotencyKey>)>,
    atomic: bool,
) -> Result<(bool, Vec<BatchItem>), MoveError> {
    if inputs.is_empty() || inputs.len() > MAX_BATCH_TRANSFERS {
        return Err(AppError::invalid(
            "transfers",
            format!("between 1 and {MAX_BATCH_TRANSFERS} transfers are required"),
        )
        .into());
    }
    refuse_if_over_budget(core, actor)?;
    let result = post_batch(core, meta, actor, inputs, atomic).await;
    // Every refusal of the batch, as one audit record with counts per refusal code (a batch of
    // a thousand refusals adds one row to the chain, not a thousand), counted against the
    // credential's refusal budget.
    let mut codes: std::collections::BTreeMap<&'static str, i64> = Default::default();
    match &result {
        Ok((_, items)) => {
            for item in items {
                if let Err(e) = item {
                    *codes.entry(e.error.code()).or_default() += 1;
                }
            }
        }
        Err(e) => *codes.entry(e.error.code()).or_default() += 1,
    }
    let refused: i64 = codes.values().sum();
    if refused > 0 {
        let reason = codes
            .iter()
            .map(|(c, n)| format!("{c}={n}"))
            .collect::<Vec<_>>()
            .join(",");
        crate::service::audit::record(
            core,
            &AuditBuilder::new(core, meta, Some(actor)).own(
                "transfer.batch",
                None,
                Outcome::Failure,
                Some(&reason),
            ),
        )
        .await;
        count_refusals(core, meta, actor, refused).await;
    }
    result
}

pub(super) async fn post_batch(
    core: &Core,
    meta: &RequestMeta,
    actor: &Principal,
    inputs: Vec<(TransferInput, Option<IdempotencyKey>)>,
    atomic: bool,
) -> Result<(bool, Vec<BatchItem>), MoveError> {
    let tenant = &actor.tenant()?.clone();
    let mut prepared = Vec::with_capacity(inputs.len());
    let mut keys = Vec::with_capacity(inputs.len());
    for (input, key) in inputs {
        let p = prepare(core, meta, actor, input, key.as_ref(), true).await;
        if atomic && let Err(e) = p {
            // One invalid transfer fails an atomic batch before anything is posted.
            return Err(e);
        }
        prepared.push(p);
        keys.push(key);
    }
    if atomic {
        let mut movements = Vec::new();
        let mut slots = Vec::new();
        let mut items: Vec<Option<BatchItem>> = Vec::with_capacity(prepared.len());
        let mut guards = Vec::new();
        for (i, p) in prepared.into_iter().enumerate() {
            match p {
                Ok(Prepared::Replay(o)) => items.push(Some(Ok(o))),
                Ok(Prepared::Ready(m, g)) => {
                    movements.push(*m);
                    slots.push(i);
                    guards.push(g);
                    items.push(None);
                }
                Err(e) => items.push(Some(Err(e))),
            }
        }
        let (committed, results) = core.ledger.post_atomic(movements).await?;
        for (slot, r) in slots.into_iter().zip(results) {
            let item = match (committed, r) {
                (true, r) | (false, r @ PostResult::DuplicateKey(_)) => {
                    settle(
                        core,
                        tenant,
                        &actor.idempotency_scope(),
                        keys[slot].as_ref(),
                        r,
                    )
                    .await
                }
                (false, PostResult::Refused(refusal)) => Err(MoveError {
                    error: refusal_error(refusal),
                    audited: false,
                }),
                (false, _) => Err(AppError::Unprocessable {
                    code: "batch_aborted",
                    message: "not posted: another transfer of this atomic batch was refused".into(),
                }
                .into()),
            };
            items[slot] = Some(item);
        }
        drop(guards);
        let items = items
            .into_iter()
            .map(|i| {
                i.unwrap_or_else(|| Err(AppError::internal("batch item without a result").into()))
            })
            .collect();
        return Ok((committed, items));
    }
    // Independent transfers: queue them all (the writer groups them), then collect.
    let mut pending = Vec::with_capacity(prepared.len());
    let mut guards = Vec::new();
    for p in prepared {
        pending.push(match p {
            Ok(Prepared::Replay(o)) => Err(Some(Ok(o))),
            Ok(Prepared::Ready(m, g)) => {
                guards.push(g);
                Ok(core.ledger.enqueue(*m).await?)
            }
            Err(e) => Err(Some(Err(e))),
        });
    }
    let mut items = Vec::with_capacity(pending.len());
    for (i, p) in pending.into_iter().enumerate() {
        items.push(match p {
            Err(done) => done
                .unwrap_or_else(|| Err(AppError::internal("batch item without a result").into())),
            Ok(rx) => match rx.await {
                Ok(Ok(r)) => {
                    settle(
                        core,
                        tenant,
                        &actor.idempotency_scope(),
                        keys[i].as_ref(),
                        r,
                    )
                    .await
                }
                Ok(Err(e)) => Err(AppError::from(e).into()),
                Err(_) => Err(AppError::internal("the ledger writer dropped a movement").into()),
            },
        });
    }
    drop(guards);
    Ok((true, items))
}
