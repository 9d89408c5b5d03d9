//! Reversals of all or part of a transfer, built from the original's typed records.

use super::*;

/// What to reverse: everything left (neither given), an amount (a transfer with one credit
/// leg, or everything left of one with several), or chosen legs with their amounts.
pub struct ReverseInput {
    pub amount: Option<i64>,
    pub legs: Option<Vec<(String, i64)>>,
}

/// Reverses all or part of a transfer (what is left of it at most) with a new, linked transfer
/// that debits the original's credit legs and credits its debit account.
pub async fn reverse(
    core: &Core,
    meta: &RequestMeta,
    actor: &Principal,
    id: &str,
    what: ReverseInput,
    idempotency: Option<IdempotencyKey>,
) -> Result<MovementOutcome, MoveError> {
    let tenant = actor.tenant()?;
    // A retry of a reversal that went through replays it, before "nothing is left" applies.
    if let Some(k) = &idempotency
        && let Some(stored) = replay(core, tenant, &actor.idempotency_scope(), k).await?
    {
        return Ok(stored);
    }
    let original = match TransferId::parse(id) {
        Some(_) => core.store.get_transfer(tenant, id).await?,
        None => None,
    }
    .ok_or(AppError::NotFound("transfer"))?;
    let t = &original.transfer;
    if t.kind == "reversal" {
        return Err(AppError::Unprocessable {
            code: "reversal_not_supported",
            message: "a reversal cannot itself be reversed; post a new transfer".into(),
        }
        .into());
    }
    // What each credit leg received (an account credited twice counts once, summed).
    let mut ceilings: Vec<(String, i64)> = Vec::new();
    for e in original.entries.iter().filter(|e| e.direction == "credit") {
        match ceilings.iter_mut().find(|(a, _)| *a == e.account_id) {
            Some((_, n)) => *n += e.amount,
            None => ceilings.push((e.account_id.clone(), e.amount)),
        }
    }
    let done = core.store.reversed_legs(tenant, &t.id).await?;
    let left = |account: &str| -> i64 {
        let ceiling = ceilings
            .iter()
            .find(|(a, _)| a == account)
            .map_or(0, |(_, n)| *n);
        ceiling
            - done
                .iter()
                .find(|(a, _)| a == account)
                .map_or(0, |(_, n)| *n)
    };
    let remaining: Vec<(String, i64)> = ceilings
        .iter()
        .map(|(a, _)| (a.clone(), left(a)))
        .filter(|(_, n)| *n > 0)
        .collect();
    let remaining_total: i64 = remaining.iter().map(|(_, n)| n).sum();
    if remaining_total <= 0 {
        return Err(refusal_error(Refusal::ReversalExceedsOriginal).into());
    }
    let debits = match (what.amount, what.legs) {
        (_, Some(legs)) => {
            if legs.is_empty() || legs.len() > ceilings.len() {
                return Err(AppError::invalid(
                    "legs",
                    "name between one and all of the original's credit legs",
                )
                .into());
            }
            for (i, (account, amount)) in legs.iter().enumerate() {
                Amount::parse(*amount)
                    .map_err(|m| AppError::invalid(format!("legs[{i}].amount"), m))?;
                if !ceilings.iter().any(|(a, _)| a == account) {
                    return Err(AppError::invalid(
                        format!("legs[{i}].account_id"),
                        "not a credit leg of the original transfer",
                    )
                    .into());
                }
                if legs.iter().filter(|(a, _)| a == account).count() > 1 {
                    return Err(AppError::invalid(
                        format!("legs[{i}].account_id"),
                        "each leg may be named once",
                    )
                    .into());
                }
                if *amount > left(account) {
                    return Err(refusal_error(Refusal::ReversalExceedsOriginal).into());
                }
            }
            let sum: i64 = legs.iter().map(|(_, n)| n).sum();
            if let Some(a) = what.amount
                && a != sum
            {
                return Err(AppError::invalid(
                    "amount",
                    format!("the legs sum to {sum}, not the amount {a}"),
                )
                .into());
            }
            legs
        }
        (None, None) => remaining,
        (Some(amount), None) => {
            Amount::parse(amount).map_err(|m| AppError::invalid("amount", m))?;
            if amount > remaining_total {
                return Err(refusal_error(Refusal::ReversalExceedsOriginal).into());
            }
            match remaining.as_slice() {
                [(account, _)] => vec![(account.clone(), amount)],
                _ if amount == remaining_total => remaining,
                _ => {
                    return Err(AppError::invalid(
                        "legs",
                        "the transfer has several credit legs: say how much each gives back",
                    )
                    .into());
                }
            }
        }
    };
    let amount: i64 = debits.iter().map(|(_, n)| n).sum();
    // The reversal is built from the original's records: its legs name the original's accounts.
    let typed = |legs: Vec<(String, i64)>| -> AppResult<Vec<(AccountId, Amount)>> {
        legs.into_iter()
            .map(|(a, n)| {
                let n = Amount::parse(n).map_err(|m| AppError::invalid("amount", m))?;
                Ok((AccountId::from_trusted(a), n))
            })
            .collect()
    };
    let debit_legs = typed(debits)?;
    let input = TransferInput {
        kind: TransferKind::Reversal,
        currency: t.currency.clone(),
        amount,
        debit_account_id: t.debit_account_id.clone(),
        credits: Vec::new(),
        reference: None,
        details: TransferDetails::described(format!("reversal of {}", t.id)),
        reverses: Some(ReversalLegs {
            link: crate::store::Reverses {
                original: TransferId::from_trusted(t.id.clone()),
                // An unknown stored kind reverses as a plain transfer (touches no system account).
                original_kind: TransferKind::parse(&t.kind).unwrap_or(TransferKind::Transfer),
                ceilings: ceilings
                    .into_iter()
                    .map(|(a, n)| (AccountId::from_trusted(a), n))
                    .collect(),
            },
            debits: debit_legs,
        }),
        capture_hold: None,
    };
    move_money(core, meta, actor, input, idempotency).await
}
